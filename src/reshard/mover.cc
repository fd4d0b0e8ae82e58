#include "reshard/mover.h"

#include <nlohmann/json.hpp>
#include <openssl/rand.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "common/base64.h"
#include "shard/moving_range.h"
#include "shard/shard_map.h"

namespace esp::reshard {
namespace {

namespace pb = etcdserverpb;
using meta::CommandIo;
using meta::EtcdClient;
using meta::EtcdClientOptions;
using meta::MapDocument;
using meta::MapStore;
using meta::MoveRecord;
using meta::StoredMap;
using Json = nlohmann::ordered_json;
using SteadyClock = std::chrono::steady_clock;

constexpr int kMaxTxnOps = 128;  // etcd's default --max-txn-ops: every shard accepts this many

// A refusal or a failure that stops the command; the message says what to do.
class MoveFailed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The source compacted past the copy's position: the copy starts again from a clean target.
class SourceCompacted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::string EtcdEnd(const std::string& end) { return end.empty() ? std::string("\0", 1) : end; }

std::string NewMoveId() {
  unsigned char bytes[8];
  RAND_bytes(bytes, sizeof bytes);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id;
  for (const unsigned char b : bytes) {
    id += kHex[b >> 4];
    id += kHex[b & 15];
  }
  return id;
}

std::string MoverName() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return std::string(host) + ":" + std::to_string(getpid());
}

// Test hook (tests/integration/reshard_test.cc): ESP_MOVER_CRASH_AFTER=<step> kills the mover
// with SIGKILL right after that step, as `kill -9` would.
void CrashPoint(const char* step, CommandIo io) {
  const char* wanted = std::getenv("ESP_MOVER_CRASH_AFTER");
  if (wanted != nullptr && std::string(wanted) == step) {
    io.out.flush();
    io.err.flush();
    raise(SIGKILL);
  }
}

// Test hook: ESP_MOVER_BREAK=skip-tail makes a deliberately broken mover that copies the snapshot
// but drops every change made during the copy (the history checker must catch it).
bool BrokenSkipTail() {
  const char* broken = std::getenv("ESP_MOVER_BREAK");
  return broken != nullptr && std::string(broken) == "skip-tail";
}

// Test hooks: pages of ESP_MOVER_PAGE_KEYS keys with ESP_MOVER_PAGE_PAUSE_MS between them (a slow
// copy, so that clients write behind it); ESP_MOVER_COMPACT_SOURCE_AFTER_COPY=1 compacts the
// source once right after the copy (as an operator's compaction at that moment would).
std::int64_t EnvNumber(const char* name, std::int64_t otherwise) {
  const char* text = std::getenv(name);
  return text != nullptr ? std::atoll(text) : otherwise;
}

void Check(const grpc::Status& status, const std::string& what) {
  if (status.ok()) return;
  if (status.error_message().find("required revision has been compacted") != std::string::npos) {
    throw SourceCompacted(what + ": " + status.error_message());
  }
  throw MoveFailed(what + ": " + meta::DescribeStatus(status));
}

std::unique_ptr<EtcdClient> ShardClient(const ShardConfig& shard, const MoverOptions& options) {
  EtcdClientOptions c;
  c.endpoints = shard.endpoints;
  c.tls = shard.tls;
  c.user = options.user;
  c.password = options.password;
  c.call_timeout = options.call_timeout;
  return std::make_unique<EtcdClient>(std::move(c));
}

std::int64_t CurrentRevision(EtcdClient& client, const std::string& key, const std::string& what) {
  pb::RangeRequest request;
  request.set_key(key);
  request.set_count_only(true);
  pb::RangeResponse response;
  Check(client.Range(request, &response), what);
  return response.header().revision();
}

// Merges neighbouring entries of one owner with the same floor: what a finished or aborted move
// split up comes back together.
void JoinRanges(MapDocument& doc) {
  std::vector<meta::MapRange> joined;
  for (auto& r : doc.ranges) {
    if (!joined.empty() && joined.back().shard == r.shard && joined.back().min_revision == r.min_revision &&
        joined.back().end == r.start) {
      joined.back().end = r.end;
    } else {
      joined.push_back(std::move(r));
    }
  }
  doc.ranges = std::move(joined);
}

// The meta store's lock for one mover at a time, under a lease renewed by a thread of its own.
// `Held()` turns false a margin before the lease could have expired: the mover then stops before
// another mover can take over.
class MoverLock {
 public:
  MoverLock(EtcdClient& meta, const MapStore& store, std::chrono::seconds ttl, CommandIo io)
      : meta_(meta), key_(store.MoverLockKey()), ttl_(ttl) {
    pb::LeaseGrantRequest grant;
    grant.set_ttl(ttl.count());
    pb::LeaseGrantResponse granted;
    const auto deadline = SteadyClock::now() + 2 * ttl + std::chrono::seconds(1);
    bool told = false;
    for (;;) {
      const auto sent = SteadyClock::now();
      if (lease_ == 0) {
        Check(meta_.LeaseGrant(grant, &granted), "meta store " + meta_.EndpointList() + ": lease for the mover's lock");
        lease_ = granted.id();
      }
      pb::TxnRequest take;
      auto* free = take.add_compare();
      free->set_key(key_);
      free->set_target(pb::Compare::CREATE);
      free->set_result(pb::Compare::EQUAL);
      free->set_create_revision(0);
      auto* put = take.add_success()->mutable_request_put();
      put->set_key(key_);
      put->set_value(MoverName());
      put->set_lease(lease_);
      take.add_failure()->mutable_request_range()->set_key(key_);
      pb::TxnResponse taken;
      const auto status = meta_.Txn(take, &taken);
      if (status.error_message().find("requested lease not found") != std::string::npos) {
        lease_ = 0;  // ours ended while we waited for the lock: take a new one
        continue;
      }
      Check(status, "meta store: the mover's lock");
      if (taken.succeeded()) {
        valid_until_ = sent + ttl - Margin();
        break;
      }
      std::string holder = "?";
      if (taken.responses_size() > 0 && taken.responses(0).response_range().kvs_size() > 0) {
        holder = taken.responses(0).response_range().kvs(0).value();
      }
      if (SteadyClock::now() > deadline) {
        Release();
        throw MoveFailed("another mover holds the lock (" + holder + "); wait for it to finish, or stop it");
      }
      if (!told) {
        io.out << "waiting up to " << (2 * ttl + std::chrono::seconds(1)).count()
               << " s for the lock held by " << holder << " (a mover that was killed leaves it until its lease ends)\n";
        told = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    renewer_ = std::thread([this] { Renew(); });
  }

  ~MoverLock() {
    {
      const std::lock_guard lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (renewer_.joinable()) renewer_.join();
    Release();
  }

  // Throws when the lock may have been lost: nothing more may be written.
  void Ensure() const {
    const std::lock_guard lock(mu_);
    if (SteadyClock::now() >= valid_until_) {
      throw MoveFailed("lost the mover's lock in the meta store (renewals failed); stopped. Run the command again");
    }
  }

 private:
  std::chrono::milliseconds Margin() const { return std::max<std::chrono::milliseconds>(ttl_ / 5, std::chrono::milliseconds(500)); }

  void Renew() {
    std::unique_lock lock(mu_);
    while (!wake_.wait_for(lock, ttl_ / 3, [this] { return stopping_; })) {
      lock.unlock();
      const auto sent = SteadyClock::now();
      bool ok = false;
      {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + ttl_ / 3);
        if (auto stream = meta_.LeaseKeepAlive(context)) {
          pb::LeaseKeepAliveRequest request;
          request.set_id(lease_);
          pb::LeaseKeepAliveResponse response;
          ok = stream->Write(request) && stream->Read(&response) && response.ttl() > 0;
          stream->WritesDone();
          stream->Finish();
        }
      }
      lock.lock();
      if (ok) valid_until_ = sent + ttl_ - Margin();
    }
  }

  void Release() {
    if (lease_ == 0) return;
    pb::LeaseRevokeRequest revoke;
    revoke.set_id(lease_);
    pb::LeaseRevokeResponse revoked;
    meta_.LeaseRevoke(revoke, &revoked);  // best effort: the lease ends by itself otherwise
    lease_ = 0;
  }

  EtcdClient& meta_;
  std::string key_;
  std::chrono::seconds ttl_;
  std::int64_t lease_ = 0;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  SteadyClock::time_point valid_until_{};
  std::thread renewer_;
};

// Applies source keys and changes to the target: puts keep value and lease; a lease the target
// lacks is granted there with its id and the source's remaining TTL (leases exist on every shard,
// but one may have been missed while the target was down), or dropped if it has ended on the
// source too (its keys' deletion then follows in the source's changes).
class TargetWriter {
 public:
  TargetWriter(EtcdClient& source, EtcdClient& target) : source_(source), target_(target) {}

  // One Txn of `ops` (at most kMaxTxnOps); returns the target's revision after it.
  std::int64_t Apply(std::vector<pb::RequestOp> ops) {
    for (int attempt = 0;; ++attempt) {
      pb::TxnRequest txn;
      for (const auto& op : ops) *txn.add_success() = op;
      pb::TxnResponse response;
      const auto status = target_.Txn(txn, &response);
      if (status.ok()) return response.header().revision();
      if (attempt == 0 && status.error_message().find("requested lease not found") != std::string::npos) {
        RepairLeases(ops);
        continue;
      }
      Check(status, "writing to the target shard");
    }
  }

 private:
  void RepairLeases(std::vector<pb::RequestOp>& ops) {
    std::set<std::int64_t> leases;
    for (const auto& op : ops) {
      if (op.has_request_put() && op.request_put().lease() != 0) leases.insert(op.request_put().lease());
    }
    std::set<std::int64_t> ended;
    for (const std::int64_t id : leases) {
      pb::LeaseTimeToLiveRequest ask;
      ask.set_id(id);
      pb::LeaseTimeToLiveResponse there;
      Check(target_.LeaseTimeToLive(ask, &there), "asking the target for a lease");
      if (there.ttl() > 0) continue;
      pb::LeaseTimeToLiveResponse here;
      Check(source_.LeaseTimeToLive(ask, &here), "asking the source for a lease");
      if (here.ttl() <= 0) {
        ended.insert(id);
        continue;
      }
      pb::LeaseGrantRequest grant;
      grant.set_id(id);
      grant.set_ttl(here.ttl() + 1);  // etcd truncates: never shorter than the source's
      pb::LeaseGrantResponse granted;
      const auto status = target_.LeaseGrant(grant, &granted);
      if (!status.ok() && status.error_message().find("lease already exists") == std::string::npos) {
        Check(status, "granting a lease on the target");
      }
    }
    for (auto& op : ops) {
      if (op.has_request_put() && ended.contains(op.request_put().lease())) op.mutable_request_put()->set_lease(0);
    }
  }

  EtcdClient& source_;
  EtcdClient& target_;
};

// "[#########-----------]  45%" for a terminal.
std::string Bar(std::int64_t done, std::int64_t total) {
  constexpr int kWidth = 30;
  const double part = total > 0 ? std::min(1.0, static_cast<double>(done) / static_cast<double>(total)) : 0.0;
  const int filled = static_cast<int>(part * kWidth);
  char percent[8];
  std::snprintf(percent, sizeof percent, "%3d%%", static_cast<int>(part * 100));
  return "[" + std::string(filled, '#') + std::string(kWidth - filled, '-') + "] " + percent;
}

// Reads a watch stream on a thread of its own, so that the mover can wait for the next response
// with a timeout (the blocking stream cannot).
class WatchReader {
 public:
  explicit WatchReader(meta::WatchStream& stream) : stream_(stream), thread_([this] { Loop(); }) {}
  ~WatchReader() { thread_.join(); }  // the owner cancels the stream's context first

  // The next response; nullopt when the stream ended, or (timed_out set) when none came in time.
  std::optional<pb::WatchResponse> Next(std::chrono::milliseconds timeout, bool* timed_out) {
    std::unique_lock lock(mu_);
    const bool ready = wake_.wait_for(lock, timeout, [this] { return !queue_.empty() || ended_; });
    if (timed_out != nullptr) *timed_out = !ready;
    if (queue_.empty()) return std::nullopt;
    auto response = std::move(queue_.front());
    queue_.pop_front();
    return response;
  }

 private:
  void Loop() {
    pb::WatchResponse response;
    while (stream_.Read(&response)) {
      const std::lock_guard lock(mu_);
      queue_.push_back(std::move(response));
      wake_.notify_one();
    }
    const std::lock_guard lock(mu_);
    ended_ = true;
    wake_.notify_one();
  }

  meta::WatchStream& stream_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<pb::WatchResponse> queue_;
  bool ended_ = false;
  std::thread thread_;
};

class Mover {
 public:
  Mover(MapStore& store, EtcdClient& meta, const MoverOptions& options, CommandIo io)
      : store_(store), meta_(meta), options_(options), io_(io) {}

  // Starts the move `spec` (or resumes the one in progress when spec is null) and runs it to the end.
  int Run(const std::optional<MoveRecord>& spec) {
    MoverLock lock(meta_, store_, options_.lock_ttl, io_);
    lock_ = &lock;
    auto stored = Load();
    MoveRecord move;
    if (stored.doc.move) {
      move = *stored.doc.move;
      if (spec && (spec->start != move.start || spec->end != move.end || spec->to != move.to)) {
        throw MoveFailed("a move is already in progress: " + Describe(move) +
                         "; run `reshard move` with its arguments (or without any) to resume it, or `reshard abort`");
      }
      io_.out << "resuming " << Describe(move) << " (" << move.state << ")\n";
    } else {
      if (!spec) throw MoveFailed("no move in progress");
      move = Start(stored, *spec);
      stored = Load();
    }
    source_ = ShardClient(*stored.doc.FindShard(move.from), options_);
    target_ = ShardClient(*stored.doc.FindShard(move.to), options_);
    if (move.state == "copying") move = CopyAndSwitch(move);
    Cleanup(move);
    io_.out << "moved " << DescribeRange(move.start, move.end) << " from " << move.from << " to " << move.to << "\n";
    return 0;
  }

  int Abort() {
    MoverLock lock(meta_, store_, options_.lock_ttl, io_);
    lock_ = &lock;
    auto stored = Load();
    if (!stored.doc.move) throw MoveFailed("no move in progress");
    const MoveRecord move = *stored.doc.move;
    if (move.state != "copying") {
      throw MoveFailed("the cut-over of " + Describe(move) + " has happened (" + move.to +
                       " serves the range): it can only be finished; run `reshard move` to do so");
    }
    source_ = ShardClient(*stored.doc.FindShard(move.from), options_);
    target_ = ShardClient(*stored.doc.FindShard(move.to), options_);
    if (FenceStands(move)) {
      throw MoveFailed("the cut-over of " + Describe(move) + " has begun (the source is fenced): it can only be "
                       "finished; run `reshard move` to do so");
    }
    for (;;) {
      MapDocument next = stored.doc;
      next.move.reset();
      JoinRanges(next);
      next.change = "reshard abort " + Describe(move);
      lock_->Ensure();
      if (store_.CompareAndSwap(stored, next).outcome == meta::CasOutcome::kWritten) break;
      stored = Load();
      if (!stored.doc.move || stored.doc.move->id != move.id) throw MoveFailed("the map changed under the abort; look at `reshard status`");
    }
    ClearTarget(move);
    DeleteProgress();
    io_.out << "aborted " << Describe(move) << ": " << move.from << " keeps the range; the copy on " << move.to
            << " was deleted\n";
    return 0;
  }

 private:
  static std::string Describe(const MoveRecord& m) {
    return "move of " + DescribeRange(m.start, m.end) + " from " + m.from + " to " + m.to;
  }

  StoredMap Load() {
    auto stored = store_.Load();
    if (!stored) throw MoveFailed("the meta store holds no shard map (run `map init`)");
    return std::move(*stored);
  }

  // Step 1: checks, then the map with the range as its own entry and the move record.
  MoveRecord Start(StoredMap& stored, MoveRecord spec) {
    const MapDocument& doc = stored.doc;
    if (!spec.end.empty() && spec.end <= spec.start) {
      throw MoveFailed("empty range " + DescribeRange(spec.start, spec.end) + ": END must be after START");
    }
    const auto owner = std::find_if(doc.ranges.begin(), doc.ranges.end(), [&](const meta::MapRange& r) {
      return r.start <= spec.start && (r.end.empty() || (!spec.end.empty() && spec.end <= r.end));
    });
    if (owner == doc.ranges.end()) {
      const auto map = ShardMap(doc.ShardNames(), doc.OwnedRanges());
      std::string owners;
      for (const std::size_t s : map.ShardsForRange(spec.start, EtcdEnd(spec.end))) owners += (owners.empty() ? "" : ", ") + map.shard(s).name;
      throw MoveFailed("the range " + DescribeRange(spec.start, spec.end) + " spans shards (" + owners +
                       "): a move takes a range inside one shard");
    }
    spec.from = owner->shard;
    if (doc.FindShard(spec.to) == nullptr) throw MoveFailed("unknown shard '" + spec.to + "' (see `map show`)");
    if (spec.to == spec.from) throw MoveFailed("the range already belongs to " + spec.to);
    spec.id = NewMoveId();
    if (!spec.end.empty() && FenceKey(spec.start, spec.id) >= spec.end) {
      throw MoveFailed("the range " + DescribeRange(spec.start, spec.end) +
                       " is too narrow to hold the move's fence key (START + \"\\0etcd-sharding-proxy/...\"); move a wider range");
    }
    source_ = ShardClient(*doc.FindShard(spec.from), options_);
    target_ = ShardClient(*doc.FindShard(spec.to), options_);
    CurrentRevision(*source_, spec.start, "the source shard " + spec.from);
    CheckTargetEmpty(spec);

    MapDocument next = doc;
    std::vector<meta::MapRange> ranges;
    for (const auto& r : doc.ranges) {
      if (&r != &*owner) {
        ranges.push_back(r);
        continue;
      }
      if (r.start < spec.start) ranges.push_back({r.start, spec.start, r.shard, r.min_revision});
      ranges.push_back({spec.start, spec.end, r.shard, r.min_revision});
      if (!spec.end.empty() && (r.end.empty() || spec.end < r.end)) ranges.push_back({spec.end, r.end, r.shard, r.min_revision});
    }
    next.ranges = std::move(ranges);
    spec.state = "copying";
    spec.started_at = meta::NowRfc3339();
    next.move = spec;
    next.change = "reshard " + Describe(spec) + ": copying";
    lock_->Ensure();
    if (store_.CompareAndSwap(stored, next).outcome != meta::CasOutcome::kWritten) {
      throw MoveFailed("the map changed while the move was being checked; run the command again");
    }
    WriteProgress(spec, "started", {});
    io_.out << "started " << Describe(spec) << " (move " << spec.id << ")\n";
    CrashPoint("started", io_);
    return spec;
  }

  void CheckTargetEmpty(const MoveRecord& m) {
    // Fence keys a past move out of this shard left behind are not data: they go.
    pb::RangeRequest list;
    list.set_key(m.start);
    list.set_range_end(EtcdEnd(m.end));
    list.set_keys_only(true);
    list.set_limit(1000);
    pb::RangeResponse listed;
    Check(target_->Range(list, &listed), "the target shard " + m.to);
    std::int64_t data = 0;
    for (const auto& kv : listed.kvs()) {
      if (!IsFenceKey(kv.key())) ++data;
    }
    if (data > 0 || listed.count() > listed.kvs_size()) {
      throw MoveFailed("the target shard " + m.to + " already holds " + std::to_string(listed.count()) +
                       " key(s) in " + DescribeRange(m.start, m.end) + "; a move needs the range empty there");
    }
    for (const auto& kv : listed.kvs()) {
      pb::DeleteRangeRequest stale;
      stale.set_key(kv.key());
      pb::DeleteRangeResponse deleted;
      Check(target_->DeleteRange(stale, &deleted), "removing an old fence key on " + m.to);
    }
  }

  bool FenceStands(const MoveRecord& m) {
    pb::RangeRequest read;
    read.set_key(FenceKey(m.start, m.id));
    read.set_count_only(true);
    pb::RangeResponse answer;
    Check(source_->Range(read, &answer), "reading the fence on the source shard " + m.from);
    return answer.count() > 0;
  }

  // Steps 2-6.
  MoveRecord CopyAndSwitch(MoveRecord move) {
    if (FenceStands(move)) {
      // Killed after the cut-over began: the source's range is frozen (every proxy's requests
      // to it are guarded), so a fresh copy of it is its final state.
      io_.out << "the source is fenced already: copying its final state\n";
      CopyAll(move);
      return Switch(move);
    }
    WaitForProxies(Load().doc.version, "the move's start");
    WriteProgress(move, "acked", {});
    CrashPoint("acked", io_);
    for (;;) {
      try {
        const std::int64_t snapshot = CopyAll(move);
        CrashPoint("copied", io_);
        CompactSourceOnceForTests(move);
        TailAndFence(move, snapshot);
        break;
      } catch (const SourceCompacted& e) {
        io_.out << "the source was compacted past the copy's position (" << e.what() << "): copying again\n";
      }
    }
    CrashPoint("fenced", io_);
    return Switch(move);
  }

  void CompactSourceOnceForTests(const MoveRecord& m) {
    static bool done = false;
    if (done || EnvNumber("ESP_MOVER_COMPACT_SOURCE_AFTER_COPY", 0) == 0) return;
    done = true;
    // A write first, so that the compaction passes the copy's revision.
    pb::PutRequest put;
    put.set_key(m.start);
    put.set_value("written before the test's compaction");
    pb::PutResponse written;
    Check(source_->Put(put, &written), "test hook: write");
    pb::DeleteRangeRequest drop;
    drop.set_key(m.start);
    pb::DeleteRangeResponse dropped;
    Check(source_->DeleteRange(drop, &dropped), "test hook: delete");
    pb::CompactionRequest compact;
    compact.set_revision(dropped.header().revision());
    pb::CompactionResponse compacted;
    Check(source_->Compact(compact, &compacted), "test hook: compaction");
  }

  void ClearTarget(const MoveRecord& m) {
    lock_->Ensure();
    pb::DeleteRangeRequest clear;
    clear.set_key(m.start);
    clear.set_range_end(EtcdEnd(m.end));
    pb::DeleteRangeResponse cleared;
    Check(target_->DeleteRange(clear, &cleared), "clearing the range on the target shard " + m.to);
  }

  // Step 3: the source's range at one revision, onto a cleared target. Returns that revision.
  std::int64_t CopyAll(const MoveRecord& m) {
    ClearTarget(m);
    const std::int64_t snapshot = CurrentRevision(*source_, m.start, "the source shard " + m.from);
    TargetWriter writer(*source_, *target_);
    copied_keys_ = copied_bytes_ = 0;
    {
      pb::RangeRequest count;
      count.set_key(m.start);
      count.set_range_end(EtcdEnd(m.end));
      count.set_revision(snapshot);
      count.set_count_only(true);
      pb::RangeResponse counted;
      Check(source_->Range(count, &counted), "counting the range on the source shard " + m.from);
      keys_total_ = counted.count();
    }
    std::string from = m.start;
    for (;;) {
      pb::RangeRequest page;
      page.set_key(from);
      page.set_range_end(EtcdEnd(m.end));
      page.set_revision(snapshot);
      page.set_limit(EnvNumber("ESP_MOVER_PAGE_KEYS", options_.page_keys));
      pb::RangeResponse answer;
      Check(source_->Range(page, &answer), "reading the source shard " + m.from);
      std::vector<pb::RequestOp> ops;
      for (const auto& kv : answer.kvs()) {
        if (IsFenceKey(kv.key())) continue;
        auto* put = ops.emplace_back().mutable_request_put();
        put->set_key(kv.key());
        put->set_value(kv.value());
        put->set_lease(kv.lease());
        copied_bytes_ += kv.key().size() + kv.value().size();
        if (ops.size() == kMaxTxnOps) {
          lock_->Ensure();
          writer.Apply(std::move(ops));
          ops.clear();
        }
      }
      if (!ops.empty()) {
        lock_->Ensure();
        writer.Apply(std::move(ops));
      }
      copied_keys_ += answer.kvs_size();
      WriteProgress(m, "copying", {{"snapshot_revision", snapshot}});
      if (!answer.more() || answer.kvs_size() == 0) break;
      from = answer.kvs(answer.kvs_size() - 1).key() + std::string("\0", 1);
      if (const auto pause = EnvNumber("ESP_MOVER_PAGE_PAUSE_MS", 0); pause > 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(pause));
      }
    }
    WriteProgress(m, "copied", {{"snapshot_revision", snapshot}});
    return snapshot;
  }

  // Steps 4-5: the source's changes after `snapshot`, then the fence, then the changes up to it.
  void TailAndFence(const MoveRecord& m, std::int64_t snapshot) {
    grpc::ClientContext context;
    auto stream = source_->Watch(context);
    if (!stream) throw MoveFailed("cannot watch the source shard " + m.from);
    pb::WatchRequest create;
    auto* c = create.mutable_create_request();
    c->set_key(m.start);
    c->set_range_end(EtcdEnd(m.end));
    c->set_start_revision(snapshot + 1);
    if (!stream->Write(create)) throw MoveFailed("cannot watch the source shard " + m.from);
    TargetWriter writer(*source_, *target_);
    const std::string fence = FenceKey(m.start, m.id);
    std::int64_t applied = snapshot;
    WatchReader reader(*stream);
    // Cancels the stream (ending the reader's thread) however this function is left.
    struct Cancel {
      grpc::ClientContext& context;
      ~Cancel() { context.TryCancel(); }
    } cancel{context};
    // Reads responses, applying their events (coalesced per key), until `stop(fence_seen)` says so. With
    // `quiet` set, a pause of that long in the stream also stops it (returns false).
    const auto tail = [&](auto stop, std::optional<std::chrono::milliseconds> quiet) {
      for (;;) {
        bool timed_out = false;
        auto next = reader.Next(quiet.value_or(std::chrono::hours(1)), &timed_out);
        if (!next) {
          if (timed_out && quiet) return false;
          if (timed_out) continue;
          break;
        }
        const pb::WatchResponse& response = *next;
        if (response.canceled()) {
          if (response.compact_revision() != 0) {
            throw SourceCompacted("compacted at " + std::to_string(response.compact_revision()));
          }
          throw MoveFailed("the source shard canceled the mover's watch: " + response.cancel_reason());
        }
        bool fence_seen = false;
        // The target's state before the switch is read by no one: changes of several source
        // revisions go as one Txn, the last change of each key only, at most kMaxTxnOps keys.
        std::map<std::string, pb::RequestOp> pending;
        const auto flush = [&] {
          if (pending.empty()) return;
          lock_->Ensure();
          std::vector<pb::RequestOp> ops;
          ops.reserve(pending.size());
          for (auto& [key, op] : pending) ops.push_back(std::move(op));
          pending.clear();
          if (!BrokenSkipTail()) writer.Apply(std::move(ops));
        };
        for (const auto& event : response.events()) {
          const auto& kv = event.kv();
          if (kv.key() == fence) {
            fence_seen = true;
            continue;
          }
          if (IsFenceKey(kv.key())) continue;
          if (pending.size() == kMaxTxnOps && !pending.contains(kv.key())) flush();
          pb::RequestOp op;
          if (event.type() == mvccpb::Event::DELETE) {
            op.mutable_request_delete_range()->set_key(kv.key());
          } else {
            auto* put = op.mutable_request_put();
            put->set_key(kv.key());
            put->set_value(kv.value());
            put->set_lease(kv.lease());
          }
          pending[kv.key()] = std::move(op);
          applied = kv.mod_revision();
        }
        flush();
        if (stop(fence_seen)) return true;
      }
      throw MoveFailed("the source shard " + m.from + " ended the mover's watch");
    };
    // Caught up (nearly) before the fence, so that the pause after it stays short: the tail has
    // applied the range's newest change as of now (read once; a progress request cannot serve:
    // etcd 3.5 defers its answer while the watch catches up, and 3.4 answers before the backlog,
    // etcd #15220). Bounded: a stream quiet for 300 ms, or 10 s in all, ends it too. Only the
    // pause depends on this: correctness comes from the fence below.
    std::int64_t source_revision = snapshot;
    {
      pb::RangeRequest newest;
      newest.set_key(m.start);
      newest.set_range_end(EtcdEnd(m.end));
      newest.set_sort_order(pb::RangeRequest::DESCEND);
      newest.set_sort_target(pb::RangeRequest::MOD);
      newest.set_limit(1);
      newest.set_keys_only(true);
      pb::RangeResponse answer;
      Check(source_->Range(newest, &answer), "reading the source shard " + m.from);
      source_revision = answer.header().revision();
      const std::int64_t wanted = answer.kvs_size() > 0 ? answer.kvs(0).mod_revision() : 0;
      const auto give_up = SteadyClock::now() + std::chrono::seconds(10);
      if (wanted > applied) {
        tail([&](bool) { return applied >= wanted || SteadyClock::now() > give_up; }, std::chrono::milliseconds(300));
      }
    }
    WriteProgress(m, "tailing", {{"snapshot_revision", snapshot}, {"applied_revision", applied},
                                 {"source_revision", source_revision}, {"lag", source_revision - applied}});
    CrashPoint("caught-up", io_);

    // The cut-over: from this write on, the source refuses every guarded request to the range.
    lock_->Ensure();
    pb::PutRequest put;
    put.set_key(fence);
    put.set_value("etcd-sharding-proxy: " + Describe(m) + " (move " + m.id + ")");
    pb::PutResponse fenced;
    Check(source_->Put(put, &fenced), "writing the fence on the source shard " + m.from);
    const auto fenced_at = SteadyClock::now();
    tail([](bool fence_seen) { return fence_seen; }, std::nullopt);
    context.TryCancel();
    WriteProgress(m, "fenced", {{"fence_revision", fenced.header().revision()},
                                {"applied_revision", applied},
                                {"tail_after_fence_ms", std::chrono::duration<double, std::milli>(SteadyClock::now() - fenced_at).count()}});
  }

  // Step 6: the target owns the range from the map's next version on.
  MoveRecord Switch(MoveRecord move) {
    const std::int64_t floor = CurrentRevision(*target_, move.start, "the target shard " + move.to);
    for (;;) {
      auto stored = Load();
      if (!stored.doc.move || stored.doc.move->id != move.id) throw MoveFailed("the map lost the move record; see `reshard status`");
      MapDocument next = stored.doc;
      const auto index = next.FindRange(move.start, move.end);
      if (!index) throw MoveFailed("the map lost the moving range's entry");
      next.ranges[*index].shard = move.to;
      next.ranges[*index].min_revision = floor;
      next.move->state = "cleanup";
      next.change = "reshard " + Describe(move) + ": switched";
      lock_->Ensure();
      if (store_.CompareAndSwap(stored, next).outcome == meta::CasOutcome::kWritten) {
        move = *next.move;
        break;
      }
    }
    WriteProgress(move, "switched", {{"floor_revision", floor}});
    io_.out << "switched: " << move.to << " serves " << DescribeRange(move.start, move.end) << " from revision "
            << floor << "\n";
    CrashPoint("switched", io_);
    return move;
  }

  // Step 7.
  void Cleanup(const MoveRecord& move) {
    WaitForProxies(Load().doc.version, "the switch");
    lock_->Ensure();
    const std::string fence = FenceKey(move.start, move.id);
    for (const auto& [from, to] : {std::pair{move.start, fence}, std::pair{fence + std::string("\0", 1), EtcdEnd(move.end)}}) {
      pb::DeleteRangeRequest drop;
      drop.set_key(from);
      drop.set_range_end(to);
      pb::DeleteRangeResponse dropped;
      Check(source_->DeleteRange(drop, &dropped), "deleting the moved keys on the source shard " + move.from);
    }
    CrashPoint("cleaned", io_);
    for (;;) {
      auto stored = Load();
      if (!stored.doc.move || stored.doc.move->id != move.id) break;  // done by an earlier run
      MapDocument next = stored.doc;
      next.move.reset();
      JoinRanges(next);
      next.change = "reshard " + Describe(move) + ": done";
      lock_->Ensure();
      if (store_.CompareAndSwap(stored, next).outcome == meta::CasOutcome::kWritten) break;
    }
    DeleteProgress();
  }

  // Every live proxy serves `version` or later; a proxy that vanished fenced itself first.
  void WaitForProxies(std::int64_t version, const char* what) {
    const auto deadline = SteadyClock::now() + options_.ack_timeout;
    std::string last_said;
    for (;;) {
      std::string lagging;
      for (const auto& p : store_.Proxies()) {
        if (p.map_version < version) lagging += (lagging.empty() ? "" : ", ") + p.name + " (version " + std::to_string(p.map_version) + ")";
      }
      if (lagging.empty()) return;
      if (SteadyClock::now() > deadline) {
        throw MoveFailed(std::string("proxies still serve a map older than ") + what + " (version " +
                         std::to_string(version) + ") after " + std::to_string(options_.ack_timeout.count()) +
                         " s: " + lagging + ". Run the command again to resume");
      }
      if (lagging != last_said) {
        io_.out << "waiting for proxies to serve map version " << version << ": " << lagging << "\n";
        last_said = lagging;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  void WriteProgress(const MoveRecord& m, const std::string& step, Json extra) {
    Json j{{"id", m.id},
           {"range", DescribeRange(m.start, m.end)},
           {"from", m.from},
           {"to", m.to},
           {"step", step},
           {"keys_copied", copied_keys_},
           {"keys_total", keys_total_},
           {"bytes_copied", copied_bytes_},
           {"mover", MoverName()},
           {"updated_at", meta::NowRfc3339()}};
    for (auto& [k, v] : extra.items()) j[k] = v;
    pb::PutRequest put;
    put.set_key(store_.MoveProgressKey());
    put.set_value(j.dump());
    pb::PutResponse written;
    Check(meta_.Put(put, &written), "meta store: the move's progress");
    if (options_.progress_bar) {
      io_.out << "\r" << Bar(copied_keys_, keys_total_) << " " << step << ": " << copied_keys_ << "/" << keys_total_
              << " keys, " << copied_bytes_ / 1024 << " KiB copied   " << std::flush;
      if (step != "copying") io_.out << "\n";
    }
  }

  void DeleteProgress() {
    pb::DeleteRangeRequest drop;
    drop.set_key(store_.MoveProgressKey());
    pb::DeleteRangeResponse dropped;
    Check(meta_.DeleteRange(drop, &dropped), "meta store: the move's progress");
  }

  MapStore& store_;
  EtcdClient& meta_;
  const MoverOptions& options_;
  CommandIo io_;
  MoverLock* lock_ = nullptr;
  std::unique_ptr<EtcdClient> source_;
  std::unique_ptr<EtcdClient> target_;
  std::int64_t copied_keys_ = 0;
  std::int64_t copied_bytes_ = 0;
  std::int64_t keys_total_ = 0;  // in the range at the copy's revision
};


template <class F>
int Guarded(CommandIo io, F run) {
  try {
    return run();
  } catch (const MoveFailed& e) {
    io.err << "error: " << e.what() << "\n";
  } catch (const SourceCompacted& e) {
    io.err << "error: " << e.what() << "\n";
  } catch (const meta::MetaError& e) {
    io.err << "error: " << e.what() << " (the move stopped; run the command again once the meta store answers)\n";
  } catch (const ConfigError& e) {
    io.err << "error: " << e.what() << "\n";
  }
  return 1;
}

}  // namespace

int Move(MapStore& store, const std::string& start, const std::string& end, const std::string& to,
         const MoverOptions& options, CommandIo io) {
  return Guarded(io, [&] {
    Mover mover(store, store.client(), options, io);
    if (to.empty()) return mover.Run(std::nullopt);
    MoveRecord spec;
    spec.start = start;
    spec.end = end;
    spec.to = to;
    return mover.Run(spec);
  });
}

int Split(MapStore& store, const std::string& at, const std::string& to, const MoverOptions& options, CommandIo io) {
  return Guarded(io, [&] {
    const auto stored = store.Load();
    if (!stored) throw MoveFailed("the meta store holds no shard map (run `map init`)");
    for (const auto& r : stored->doc.ranges) {
      if (r.start <= at && (r.end.empty() || at < r.end)) {
        MoveRecord spec;
        spec.start = at;
        spec.end = r.end;
        spec.to = to;
        Mover mover(store, store.client(), options, io);
        return mover.Run(spec);
      }
    }
    throw MoveFailed("no range holds the key");
  });
}

int Abort(MapStore& store, const MoverOptions& options, CommandIo io) {
  return Guarded(io, [&] {
    Mover mover(store, store.client(), options, io);
    return mover.Abort();
  });
}

int Status(MapStore& store, meta::OutputFormat format, CommandIo io) {
  return Guarded(io, [&] {
    const auto stored = store.Load();
    if (!stored) throw MoveFailed("the meta store holds no shard map (run `map init`)");
    pb::RangeRequest read;
    read.set_key(store.MoveProgressKey());
    pb::RangeResponse answer;
    Check(store.client().Range(read, &answer), "meta store");
    Json progress = answer.kvs_size() > 0 ? Json::parse(answer.kvs(0).value(), nullptr, false) : Json::object();
    if (progress.is_discarded()) progress = Json::object();
    const auto& move = stored->doc.move;
    if (format == meta::OutputFormat::kJson) {
      Json j{{"map_version", stored->doc.version}, {"state", move ? move->state : "none"}};
      if (move) {
        j["id"] = move->id;
        j["start"] = move->start;
        j["end"] = move->end;
        j["start_base64"] = EncodeBase64(move->start);
        j["end_base64"] = EncodeBase64(move->end);
        j["from"] = move->from;
        j["to"] = move->to;
        j["started_at"] = move->started_at;
        j["progress"] = progress;
      }
      io.out << j.dump(2) << "\n";
      return 0;
    }
    if (!move) {
      io.out << "no move in progress (map version " << stored->doc.version << ")\n";
      return 0;
    }
    io.out << "move " << move->id << ": " << DescribeRange(move->start, move->end) << " from " << move->from << " to "
           << move->to << "\n  state: " << move->state << " (map version " << stored->doc.version << "), started "
           << move->started_at << "\n";
    if (!progress.empty()) {
      const std::int64_t copied = progress.value("keys_copied", 0);
      const std::int64_t total = progress.value("keys_total", 0);
      if (isatty(STDOUT_FILENO) != 0) io.out << "  " << Bar(copied, total) << "\n";
      io.out << "  step: " << progress.value("step", "?") << ", keys copied: " << copied << " of " << total
             << ", bytes copied: " << progress.value("bytes_copied", 0);
      if (progress.contains("lag")) io.out << ", revisions behind: " << progress["lag"].get<std::int64_t>();
      io.out << "\n  mover: " << progress.value("mover", "?") << ", updated " << progress.value("updated_at", "?") << "\n";
    }
    return 0;
  });
}

}  // namespace esp::reshard
