// esp-bench: an asynchronous etcd v3 load generator (gRPC callback API, no thread per request).
//
// Every answer is checked: a wrong answer counts as an error, so a wrong server cannot look fast.
// Keys are <key-prefix><8-digit index>; the value of key i is a fixed pattern derived from i, so
// get/range/txn can verify what they read (run --mode preload, or let those modes preload).
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <iostream>
#include <limits>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "etcdserverpb/rpc.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace pb = etcdserverpb;

struct Options {
  std::string endpoints = "127.0.0.1:2379";
  int conns = 4;
  int inflight = 50;
  int64_t total = 0;
  double duration = 0;
  int64_t key_space = 1000;
  int value_size = 256;
  std::string key_prefix = "esp-bench/";
  std::string mode = "put";
  std::string consistency = "l";
  int range_keys = 20;
  bool spanning = false;
  bool no_preload = false;
  int watchers = 10;
  int lease_ttl = 60;
  int hold = 1000;              // hold-watches / hold-leases: how many
  int watches_per_stream = 1;   // hold-watches
  int rss_pid = 0;              // hold-*: the process whose VmRSS is reported (the proxy)
  int timeout_s = 10;
  std::string token;  // etcd auth token sent with every measured request (metadata `token`)
  int max_errors = 100;
  bool json = false;
};

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

std::string Key(const Options& o, int64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%08lld", static_cast<long long>(i));
  return o.key_prefix + buf;
}

// Deterministic value of key i: "v<index>." repeated, cut to value_size.
std::string Value(const Options& o, int64_t i) {
  char buf[32];
  const int n = std::snprintf(buf, sizeof(buf), "v%lld.", static_cast<long long>(i));
  std::string v;
  v.reserve(o.value_size);
  while (static_cast<int>(v.size()) < o.value_size) v.append(buf, n);
  v.resize(o.value_size);
  return v;
}

// Watch writer values: 16 hex digits of the send time (steady clock ns), padded.
std::string StampValue(const Options& o, int64_t ns) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(ns));
  std::string v(buf, 16);
  if (o.value_size > 16) v.append(o.value_size - 16, '.');
  return v;
}

std::string PrefixEnd(std::string p) {
  while (!p.empty()) {
    if (static_cast<unsigned char>(p.back()) < 0xff) {
      p.back() = static_cast<char>(static_cast<unsigned char>(p.back()) + 1);
      return p;
    }
    p.pop_back();
  }
  return std::string(1, '\0');
}

uint64_t NextRandom(uint64_t& s) {  // xorshift64*
  s ^= s >> 12;
  s ^= s << 25;
  s ^= s >> 27;
  return s * 2685821657736338717ULL;
}

// Shared run state: tickets (bounded by count and time), errors, completion.
class RunState {
 public:
  RunState(int64_t total, std::optional<Clock::time_point> deadline, int max_errors)
      : total_(total), deadline_(deadline), max_errors_(max_errors) {}

  // Returns the sequence number of the next request, or nullopt when the run is over.
  std::optional<int64_t> Ticket() {
    if (stop_.load(std::memory_order_relaxed)) return std::nullopt;
    if (deadline_ && Clock::now() >= *deadline_) return std::nullopt;
    const int64_t n = issued_.fetch_add(1, std::memory_order_relaxed);
    if (n >= total_) return std::nullopt;
    return n;
  }
  void Error(const std::string& what) {
    const int64_t n = errors_.fetch_add(1) + 1;
    {
      std::lock_guard lock(mu_);
      if (first_error_.empty()) first_error_ = what;
    }
    if (n >= max_errors_) stop_ = true;
  }
  void Ok() { ok_.fetch_add(1, std::memory_order_relaxed); }
  void AddWorker() { ++active_; }
  void WorkerDone() {
    std::lock_guard lock(mu_);
    if (--active_ == 0) {
      last_done_ = Clock::now();
      cv_.notify_all();
    }
  }
  void Wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return active_ == 0; });
  }
  int64_t ok() const { return ok_; }
  int64_t errors() const { return errors_; }
  std::string first_error() {
    std::lock_guard lock(mu_);
    return first_error_;
  }
  Clock::time_point last_done() {
    std::lock_guard lock(mu_);
    return last_done_;
  }

 private:
  const int64_t total_;
  const std::optional<Clock::time_point> deadline_;
  const int max_errors_;
  std::atomic<int64_t> issued_{0};
  std::atomic<int64_t> ok_{0};
  std::atomic<int64_t> errors_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  int active_ = 0;
  std::string first_error_;
  Clock::time_point last_done_ = Clock::now();
};

std::string StatusText(const grpc::Status& s) {
  return "rpc code " + std::to_string(s.error_code()) + ": " + s.error_message();
}

struct Stubs {
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<pb::KV::Stub>> kv;
  std::vector<std::unique_ptr<pb::Watch::Stub>> watch;
  std::vector<std::unique_ptr<pb::Lease::Stub>> lease;
};

// ---------------------------------------------------------------------------------------------
// Unary workloads: `inflight` slots, each issuing its next request from the previous one's
// completion callback.
// ---------------------------------------------------------------------------------------------
// kStampEach: key i = seq (each key once), value = send time (hold-watches' one event per watch).
enum class Op { kPreload, kPut, kGet, kRange, kTxn, kLeaseGrant, kWatchPut, kStampEach };

class UnaryRunner;

struct Slot {
  UnaryRunner* runner = nullptr;
  pb::KV::Stub* kv = nullptr;
  pb::Lease::Stub* lease = nullptr;
  uint64_t rng = 0;
  int64_t index = 0;
  int64_t seq = 0;
  Clock::time_point start;
  std::optional<grpc::ClientContext> ctx;
  pb::PutRequest put_req;
  pb::PutResponse put_resp;
  pb::RangeRequest range_req;
  pb::RangeResponse range_resp;
  pb::TxnRequest txn_req;
  pb::TxnResponse txn_resp;
  pb::LeaseGrantRequest grant_req;
  pb::LeaseGrantResponse grant_resp;
  std::vector<int64_t> latencies_ns;
  std::vector<int64_t> granted;  // lease-grant: the ids answered
};

class UnaryRunner {
 public:
  UnaryRunner(const Options& o, Stubs& stubs, Op op, int64_t total, std::optional<Clock::time_point> deadline,
              int inflight)
      : o_(o), op_(op), state_(total, deadline, o.max_errors) {
    for (int i = 0; i < inflight; ++i) {
      auto slot = std::make_unique<Slot>();
      slot->runner = this;
      const size_t c = static_cast<size_t>(i) % stubs.kv.size();
      slot->kv = stubs.kv[c].get();
      slot->lease = stubs.lease[c].get();
      slot->rng = 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(i + 1);
      slots_.push_back(std::move(slot));
    }
    if (op_ == Op::kGet || op_ == Op::kRange) {
      // Fields that do not change between requests.
      for (auto& s : slots_) s->range_req.set_serializable(o_.consistency == "s");
    }
  }

  void Run() {
    start_ = Clock::now();
    for (size_t i = 0; i < slots_.size(); ++i) state_.AddWorker();
    for (auto& s : slots_) Next(s.get());
    state_.Wait();
  }

  RunState& state() { return state_; }
  Clock::time_point start() const { return start_; }
  std::vector<int64_t> GrantedLeases() const {
    std::vector<int64_t> all;
    for (auto& s : slots_) all.insert(all.end(), s->granted.begin(), s->granted.end());
    return all;
  }
  std::vector<int64_t> Latencies() const {
    std::vector<int64_t> all;
    for (auto& s : slots_) all.insert(all.end(), s->latencies_ns.begin(), s->latencies_ns.end());
    return all;
  }

 private:
  int64_t RandomIndex(Slot* s) { return static_cast<int64_t>(NextRandom(s->rng) % static_cast<uint64_t>(o_.key_space)); }

  void Next(Slot* s) {
    const auto ticket = state_.Ticket();
    if (!ticket) {
      state_.WorkerDone();
      return;
    }
    s->seq = *ticket;
    s->ctx.emplace();
    s->start = Clock::now();
    s->ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(o_.timeout_s));
    if (!o_.token.empty()) s->ctx->AddMetadata("token", o_.token);
    auto done = [s](grpc::Status status) { s->runner->Done(s, std::move(status)); };
    switch (op_) {
      case Op::kPreload:
      case Op::kPut:
      case Op::kWatchPut:
      case Op::kStampEach: {
        const bool each = op_ == Op::kPreload || op_ == Op::kStampEach;
        const bool stamp = op_ == Op::kWatchPut || op_ == Op::kStampEach;
        s->index = each ? s->seq : RandomIndex(s);
        s->put_req.set_key(Key(o_, s->index));
        s->put_req.set_value(stamp ? StampValue(o_, NowNs()) : Value(o_, s->index));
        s->put_resp.Clear();
        s->kv->async()->Put(&*s->ctx, &s->put_req, &s->put_resp, std::move(done));
        break;
      }
      case Op::kGet: {
        s->index = RandomIndex(s);
        s->range_req.set_key(Key(o_, s->index));
        s->range_resp.Clear();
        s->kv->async()->Range(&*s->ctx, &s->range_req, &s->range_resp, std::move(done));
        break;
      }
      case Op::kRange: {
        const int64_t starts = o_.key_space - o_.range_keys + 1;
        s->index = o_.spanning ? 0 : static_cast<int64_t>(NextRandom(s->rng) % static_cast<uint64_t>(starts));
        s->range_req.set_key(Key(o_, s->index));
        s->range_req.set_range_end(Key(o_, s->index + o_.range_keys));
        s->range_resp.Clear();
        s->kv->async()->Range(&*s->ctx, &s->range_req, &s->range_resp, std::move(done));
        break;
      }
      case Op::kTxn: {
        // CAS on the value: even requests compare with the true value (must succeed and put),
        // odd ones with a wrong value (must fail and return the key through the else branch).
        s->index = RandomIndex(s);
        const std::string key = Key(o_, s->index);
        const std::string value = Value(o_, s->index);
        s->txn_req.Clear();
        auto* cmp = s->txn_req.add_compare();
        cmp->set_key(key);
        cmp->set_target(pb::Compare::VALUE);
        cmp->set_result(pb::Compare::EQUAL);
        cmp->set_value((s->seq % 2 == 0) ? value : std::string("not-the-value"));
        auto* put = s->txn_req.add_success()->mutable_request_put();
        put->set_key(key);
        put->set_value(value);
        s->txn_req.add_failure()->mutable_request_range()->set_key(key);
        s->txn_resp.Clear();
        s->kv->async()->Txn(&*s->ctx, &s->txn_req, &s->txn_resp, std::move(done));
        break;
      }
      case Op::kLeaseGrant: {
        s->grant_req.set_ttl(o_.lease_ttl);
        s->grant_resp.Clear();
        s->lease->async()->LeaseGrant(&*s->ctx, &s->grant_req, &s->grant_resp, std::move(done));
        break;
      }
    }
  }

  // Empty string = the answer is right.
  std::string Check(Slot* s) {
    switch (op_) {
      case Op::kPreload:
      case Op::kPut:
      case Op::kWatchPut:
      case Op::kStampEach:
        if (!s->put_resp.has_header() || s->put_resp.header().revision() <= 0) return "put: no header revision";
        return {};
      case Op::kGet: {
        const auto& r = s->range_resp;
        if (r.kvs_size() != 1) return "get " + Key(o_, s->index) + ": " + std::to_string(r.kvs_size()) + " kvs";
        if (r.kvs(0).key() != s->range_req.key()) return "get: wrong key";
        if (r.kvs(0).value() != Value(o_, s->index)) return "get " + Key(o_, s->index) + ": wrong value";
        if (r.header().revision() <= 0) return "get: no header revision";
        return {};
      }
      case Op::kRange: {
        const auto& r = s->range_resp;
        if (r.kvs_size() != o_.range_keys || r.count() != o_.range_keys || r.more())
          return "range: " + std::to_string(r.kvs_size()) + " kvs, count " + std::to_string(r.count()) +
                 ", expected " + std::to_string(o_.range_keys);
        for (int i = 0; i < r.kvs_size(); ++i) {
          if (r.kvs(i).key() != Key(o_, s->index + i)) return "range: wrong key or order at " + std::to_string(i);
          if (r.kvs(i).value() != Value(o_, s->index + i)) return "range: wrong value at " + std::to_string(i);
        }
        return {};
      }
      case Op::kTxn: {
        const auto& r = s->txn_resp;
        const bool want = s->seq % 2 == 0;
        if (r.succeeded() != want) return std::string("txn: succeeded=") + (r.succeeded() ? "true" : "false");
        if (r.responses_size() != 1) return "txn: wrong number of responses";
        if (want) {
          if (!r.responses(0).has_response_put()) return "txn: expected a put response";
        } else {
          if (!r.responses(0).has_response_range()) return "txn: expected a range response";
          const auto& rr = r.responses(0).response_range();
          if (rr.kvs_size() != 1 || rr.kvs(0).value() != Value(o_, s->index)) return "txn: else branch read wrong";
        }
        return {};
      }
      case Op::kLeaseGrant:
        if (s->grant_resp.id() == 0 || s->grant_resp.ttl() < o_.lease_ttl || !s->grant_resp.error().empty())
          return "lease grant: id " + std::to_string(s->grant_resp.id()) + " ttl " + std::to_string(s->grant_resp.ttl());
        return {};
    }
    return {};
  }

  void Done(Slot* s, grpc::Status status) {
    const auto now = Clock::now();
    if (!status.ok()) {
      state_.Error(StatusText(status));
    } else if (std::string err = Check(s); !err.empty()) {
      state_.Error(err);
    } else {
      state_.Ok();
      if (op_ == Op::kLeaseGrant) s->granted.push_back(s->grant_resp.id());
      s->latencies_ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(now - s->start).count());
    }
    Next(s);
  }

  const Options& o_;
  const Op op_;
  RunState state_;
  std::vector<std::unique_ptr<Slot>> slots_;
  Clock::time_point start_;
};

// ---------------------------------------------------------------------------------------------
// Watch: N watchers on the prefix (one stream each, spread over the channels), one writer.
// ---------------------------------------------------------------------------------------------
class Watcher : public grpc::ClientBidiReactor<pb::WatchRequest, pb::WatchResponse> {
 public:
  using Range = std::pair<std::string, std::string>;  // [key, range_end); one key when range_end is empty
  // One stream carrying one watch per range (created one after the other, as clientv3 does).
  Watcher(std::vector<Range> ranges, pb::Watch::Stub* stub, std::atomic<int64_t>& events, std::atomic<int>& created,
          std::function<void(const std::string&)> error)
      : ranges_(std::move(ranges)), events_(events), created_(created), error_(std::move(error)) {
    stub->async()->Watch(&ctx_, this);
    WriteCreate();
    StartRead(&resp_);
    StartCall();
  }
  void OnWriteDone(bool ok) override {
    if (ok && next_ < ranges_.size()) WriteCreate();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    const int64_t now = NowNs();
    if (resp_.created()) {
      if (resp_.canceled()) error_("watch create canceled: " + resp_.cancel_reason());
      created_.fetch_add(1);
    } else if (resp_.canceled()) {
      error_("watch canceled: " + resp_.cancel_reason());
    }
    for (const auto& ev : resp_.events()) {
      if (ev.type() != mvccpb::Event::PUT || ev.kv().value().size() < 16) {
        error_("watch: unexpected event");
        continue;
      }
      int64_t& last = last_rev_[resp_.watch_id()];
      if (ev.kv().mod_revision() <= last) error_("watch: revision not increasing");
      last = ev.kv().mod_revision();
      const int64_t sent = static_cast<int64_t>(std::stoull(ev.kv().value().substr(0, 16), nullptr, 16));
      latencies_ns.push_back(now - sent);
      events_.fetch_add(1, std::memory_order_relaxed);
    }
    resp_.Clear();
    StartRead(&resp_);
  }
  void OnDone(const grpc::Status&) override {
    std::lock_guard lock(mu_);
    done_ = true;
    cv_.notify_all();
  }
  void Cancel() { ctx_.TryCancel(); }
  void WaitDone() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return done_; });
  }
  std::vector<int64_t> latencies_ns;

 private:
  // Called from the constructor and from OnWriteDone, never while a write is in flight.
  void WriteCreate() {
    auto* c = req_.mutable_create_request();
    c->set_key(ranges_[next_].first);
    c->set_range_end(ranges_[next_].second);
    ++next_;
    StartWrite(&req_);
  }
  const std::vector<Range> ranges_;
  size_t next_ = 0;
  grpc::ClientContext ctx_;
  pb::WatchRequest req_;
  pb::WatchResponse resp_;
  std::atomic<int64_t>& events_;
  std::atomic<int>& created_;
  std::function<void(const std::string&)> error_;
  std::unordered_map<int64_t, int64_t> last_rev_;  // per watch id
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
};

// ---------------------------------------------------------------------------------------------
// Lease keep-alive: `inflight` leases, one keep-alive outstanding per lease, one stream per
// channel.
// ---------------------------------------------------------------------------------------------
class KeepAliveStream : public grpc::ClientBidiReactor<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse> {
 public:
  // `hold`: stay open once every lease is answered (the caller measures, then cancels).
  KeepAliveStream(pb::Lease::Stub* stub, RunState& state, int64_t ttl, bool hold = false)
      : state_(state), ttl_(ttl), hold_(hold) {
    stub->async()->LeaseKeepAlive(&ctx_, this);
  }
  void AddLease(int64_t id) { leases_.push_back(id); }
  void Begin() {
    StartRead(&resp_);
    StartCall();
    for (int64_t id : leases_) {
      if (!Send(id)) break;
    }
    MaybeFinish();
  }
  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mu_);
    if (!ok || queue_.empty()) {
      writing_ = false;
      return;
    }
    req_.set_id(queue_.front());
    queue_.pop_front();
    StartWrite(&req_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    const auto now = Clock::now();
    const int64_t id = resp_.id();
    std::optional<Clock::time_point> sent;
    {
      std::lock_guard lock(mu_);
      auto it = outstanding_.find(id);
      if (it != outstanding_.end()) {
        sent = it->second;
        outstanding_.erase(it);
      }
    }
    if (!sent) {
      state_.Error("keepalive: response for a lease with nothing outstanding: " + std::to_string(id));
    } else if (resp_.ttl() != ttl_) {
      state_.Error("keepalive: ttl " + std::to_string(resp_.ttl()) + " for lease " + std::to_string(id));
    } else {
      state_.Ok();
      latencies_ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(now - *sent).count());
    }
    if (sent) Send(id);
    if (!MaybeFinish()) StartRead(&resp_);
  }
  void OnDone(const grpc::Status& status) override {
    if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED) state_.Error(StatusText(status));
    std::lock_guard lock(mu_);
    unanswered_ = static_cast<int64_t>(outstanding_.size());
    done_ = true;
    cv_.notify_all();
  }
  void Cancel() { ctx_.TryCancel(); }
  void WaitDone() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return done_; });
  }
  int64_t unanswered() {
    std::lock_guard lock(mu_);
    return unanswered_;
  }
  bool done() {
    std::lock_guard lock(mu_);
    return done_;
  }
  std::vector<int64_t> latencies_ns;

 private:
  bool Send(int64_t id) {
    if (!state_.Ticket()) return false;
    std::lock_guard lock(mu_);
    outstanding_[id] = Clock::now();
    if (writing_) {
      queue_.push_back(id);
    } else {
      writing_ = true;
      req_.set_id(id);
      StartWrite(&req_);
    }
    return true;
  }
  // When nothing is outstanding any more, the stream is finished.
  bool MaybeFinish() {
    if (hold_) return false;
    std::lock_guard lock(mu_);
    if (!outstanding_.empty() || finishing_) return finishing_;
    finishing_ = true;
    ctx_.TryCancel();
    return true;
  }
  RunState& state_;
  const int64_t ttl_;
  const bool hold_;
  grpc::ClientContext ctx_;
  pb::LeaseKeepAliveRequest req_;
  pb::LeaseKeepAliveResponse resp_;
  std::vector<int64_t> leases_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int64_t> queue_;
  std::unordered_map<int64_t, Clock::time_point> outstanding_;
  bool writing_ = false;
  bool finishing_ = false;
  bool done_ = false;
  int64_t unanswered_ = 0;
};

// ---------------------------------------------------------------------------------------------
struct Result {
  std::string mode;
  int64_t ok = 0;
  int64_t errors = 0;
  int64_t events = 0;  // watch: events delivered (ok = puts)
  double seconds = 0;
  std::vector<int64_t> latencies_ns;
  std::string first_error;
  // hold-*: how many watches / leases were held, and the --rss-pid process's VmRSS (kB) before
  // opening them and while they were all held.
  int64_t held = 0;
  int64_t rss_before_kb = -1;
  int64_t rss_held_kb = -1;
};

double Percentile(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(q * static_cast<double>(sorted.size()));
  if (i >= sorted.size()) i = sorted.size() - 1;
  return static_cast<double>(sorted[i]) / 1000.0;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.rfind("http://", 0) == 0) item = item.substr(7);
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

Stubs Connect(const Options& o) {
  Stubs stubs;
  const auto endpoints = Split(o.endpoints);
  if (endpoints.empty()) throw std::runtime_error("no endpoints");
  for (int i = 0; i < o.conns; ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a TCP connection of its own
    args.SetMaxReceiveMessageSize(-1);
    auto ch = grpc::CreateCustomChannel(endpoints[static_cast<size_t>(i) % endpoints.size()],
                                        grpc::InsecureChannelCredentials(), args);
    if (!ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(o.timeout_s)))
      throw std::runtime_error("cannot connect to " + endpoints[static_cast<size_t>(i) % endpoints.size()]);
    stubs.kv.push_back(pb::KV::NewStub(ch));
    stubs.watch.push_back(pb::Watch::NewStub(ch));
    stubs.lease.push_back(pb::Lease::NewStub(ch));
    stubs.channels.push_back(std::move(ch));
  }
  return stubs;
}

std::optional<Clock::time_point> Deadline(const Options& o) {
  if (o.duration > 0)
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.duration));
  return std::nullopt;
}

int64_t Total(const Options& o) {
  if (o.total > 0) return o.total;
  return o.duration > 0 ? std::numeric_limits<int64_t>::max() : 10000;
}

// Writes key 0..key_space-1 with their values.
Result RunUnary(const Options& o, Stubs& stubs, Op op, int64_t total, std::optional<Clock::time_point> deadline) {
  UnaryRunner runner(o, stubs, op, total, deadline, o.inflight);
  runner.Run();
  Result r;
  r.ok = runner.state().ok();
  r.errors = runner.state().errors();
  r.first_error = runner.state().first_error();
  r.seconds = std::chrono::duration<double>(runner.state().last_done() - runner.start()).count();
  r.latencies_ns = runner.Latencies();
  return r;
}

Result RunWatch(const Options& o, Stubs& stubs) {
  std::atomic<int64_t> events{0};
  std::atomic<int> created{0};
  std::mutex err_mu;
  int64_t watch_errors = 0;
  std::string first_error;
  auto on_error = [&](const std::string& e) {
    std::lock_guard lock(err_mu);
    ++watch_errors;
    if (first_error.empty()) first_error = e;
  };
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int i = 0; i < o.watchers; ++i)
    watchers.push_back(std::make_unique<Watcher>(std::vector<Watcher::Range>{{o.key_prefix, PrefixEnd(o.key_prefix)}},
                                                 stubs.watch[static_cast<size_t>(i) % stubs.watch.size()].get(),
                                                 events, created, on_error));
  const auto create_deadline = Clock::now() + std::chrono::seconds(o.timeout_s);
  while (created.load() < o.watchers && Clock::now() < create_deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  Result r;
  if (created.load() < o.watchers) on_error("watch: only " + std::to_string(created.load()) + " watchers created");

  UnaryRunner writer(o, stubs, Op::kWatchPut, Total(o), Deadline(o), o.inflight);
  writer.Run();
  const int64_t expected = writer.state().ok() * o.watchers;
  const auto drain_deadline = Clock::now() + std::chrono::seconds(o.timeout_s);
  while (events.load() < expected && Clock::now() < drain_deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const auto end = Clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // catch duplicates
  for (auto& w : watchers) w->Cancel();
  for (auto& w : watchers) w->WaitDone();
  const int64_t got = events.load();
  if (got != expected) on_error("watch: " + std::to_string(got) + " events delivered, expected " + std::to_string(expected));

  r.ok = writer.state().ok();
  r.events = got;
  r.errors = writer.state().errors() + watch_errors + (got < expected ? expected - got : 0);
  r.first_error = !writer.state().first_error().empty() ? writer.state().first_error() : first_error;
  r.seconds = std::chrono::duration<double>(end - writer.start()).count();
  for (auto& w : watchers) r.latencies_ns.insert(r.latencies_ns.end(), w->latencies_ns.begin(), w->latencies_ns.end());
  return r;
}

Result RunKeepAlive(const Options& o, Stubs& stubs) {
  Result r;
  // Grant the leases first (not measured).
  std::vector<int64_t> ids;
  for (int i = 0; i < o.inflight; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(o.timeout_s));
    pb::LeaseGrantRequest req;
    req.set_ttl(o.lease_ttl);
    pb::LeaseGrantResponse resp;
    const auto st = stubs.lease[static_cast<size_t>(i) % stubs.lease.size()]->LeaseGrant(&ctx, req, &resp);
    if (!st.ok() || resp.id() == 0) {
      r.errors = 1;
      r.first_error = "lease grant before keepalive: " + (st.ok() ? std::string("no id") : StatusText(st));
      return r;
    }
    ids.push_back(resp.id());
  }
  RunState state(Total(o), Deadline(o), o.max_errors);
  std::vector<std::unique_ptr<KeepAliveStream>> streams;
  for (auto& stub : stubs.lease) streams.push_back(std::make_unique<KeepAliveStream>(stub.get(), state, o.lease_ttl));
  for (size_t i = 0; i < ids.size(); ++i) streams[i % streams.size()]->AddLease(ids[i]);
  const auto start = Clock::now();
  for (auto& s : streams) s->Begin();
  // Streams finish when their last answer arrives; a stream that stops answering is cut off.
  const auto hard = (Deadline(o) ? *Deadline(o) : Clock::now() + std::chrono::hours(1)) + std::chrono::seconds(o.timeout_s);
  auto all_done = [&] {
    for (auto& s : streams)
      if (!s->done()) return false;
    return true;
  };
  while (!all_done() && Clock::now() < hard) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (!all_done())
    for (auto& s : streams) s->Cancel();
  for (auto& s : streams) s->WaitDone();
  const auto end = Clock::now();
  int64_t unanswered = 0;
  for (auto& s : streams) unanswered += s->unanswered();
  r.ok = state.ok();
  r.errors = state.errors() + unanswered;
  r.first_error = state.first_error();
  if (r.first_error.empty() && unanswered > 0) r.first_error = "keepalive: " + std::to_string(unanswered) + " unanswered";
  r.seconds = std::chrono::duration<double>(end - start).count();
  for (auto& s : streams) r.latencies_ns.insert(r.latencies_ns.end(), s->latencies_ns.begin(), s->latencies_ns.end());
  return r;
}

// VmRSS of `pid` in kB from /proc, -1 when there is no such process (or no pid was given).
int64_t RssKb(int pid) {
  if (pid <= 0) return -1;
  std::FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "r");
  if (f == nullptr) return -1;
  char line[256];
  int64_t kb = -1;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    long long v = 0;
    if (std::sscanf(line, "VmRSS: %lld kB", &v) == 1) {
      kb = v;
      break;
    }
  }
  std::fclose(f);
  return kb;
}

// Waits (polling: the answers arrive on gRPC's threads) until `done` holds or the timeout passes.
bool AwaitTrue(const std::function<bool()>& done, int timeout_s) {
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// Opens --hold watches, each on a key of its own (nothing can be shared), --watches-per-stream on
// each stream (1: a stream per watch, the costly case for a proxy), reads the target's RSS once all are created, then proves they are live:
// one put per key must reach its watcher exactly once.
Result RunHoldWatches(const Options& o, Stubs& stubs) {
  Result r;
  r.rss_before_kb = RssKb(o.rss_pid);
  std::atomic<int64_t> events{0};
  std::atomic<int> created{0};
  std::mutex err_mu;
  int64_t watch_errors = 0;
  auto on_error = [&](const std::string& e) {
    std::lock_guard lock(err_mu);
    ++watch_errors;
    if (r.first_error.empty()) r.first_error = e;
  };
  std::vector<std::unique_ptr<Watcher>> watchers;
  for (int first = 0; first < o.hold; first += o.watches_per_stream) {
    std::vector<Watcher::Range> ranges;
    for (int i = first; i < std::min(o.hold, first + o.watches_per_stream); ++i) ranges.emplace_back(Key(o, i), "");
    const size_t channel = watchers.size() % stubs.watch.size();
    watchers.push_back(std::make_unique<Watcher>(std::move(ranges), stubs.watch[channel].get(), events, created, on_error));
  }
  if (AwaitTrue([&] { return created.load() >= o.hold; }, o.timeout_s)) {
    r.held = o.hold;
    r.rss_held_kb = RssKb(o.rss_pid);
  } else {
    on_error("hold-watches: only " + std::to_string(created.load()) + " of " + std::to_string(o.hold) + " created");
  }
  UnaryRunner writer(o, stubs, Op::kStampEach, o.hold, std::nullopt, o.inflight);
  writer.Run();
  const int64_t expected = writer.state().ok();
  AwaitTrue([&] { return events.load() >= expected; }, o.timeout_s);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // a duplicate would arrive now
  for (auto& w : watchers) w->Cancel();
  for (auto& w : watchers) w->WaitDone();
  const int64_t got = events.load();
  if (got != expected) on_error("hold-watches: " + std::to_string(got) + " events, expected " + std::to_string(expected));
  r.ok = expected;
  r.events = got;
  r.errors = writer.state().errors() + watch_errors;
  if (r.first_error.empty()) r.first_error = writer.state().first_error();
  for (auto& w : watchers) r.latencies_ns.insert(r.latencies_ns.end(), w->latencies_ns.begin(), w->latencies_ns.end());
  return r;
}

// Grants --hold leases, keeps every one alive once over one keep-alive stream per connection,
// and reads the target's RSS while the streams are still open with every lease answered.
Result RunHoldLeases(const Options& o, Stubs& stubs) {
  Result r;
  r.rss_before_kb = RssKb(o.rss_pid);
  UnaryRunner granter(o, stubs, Op::kLeaseGrant, o.hold, std::nullopt, o.inflight);
  granter.Run();
  const auto ids = granter.GrantedLeases();
  if (granter.state().errors() > 0 || static_cast<int>(ids.size()) != o.hold) {
    r.errors = granter.state().errors() + 1;
    r.first_error = "hold-leases: granted " + std::to_string(ids.size()) + ": " + granter.state().first_error();
    return r;
  }
  RunState state(o.hold, std::nullopt, o.max_errors);
  std::vector<std::unique_ptr<KeepAliveStream>> streams;
  for (auto& stub : stubs.lease)
    streams.push_back(std::make_unique<KeepAliveStream>(stub.get(), state, o.lease_ttl, /*hold=*/true));
  for (size_t i = 0; i < ids.size(); ++i) streams[i % streams.size()]->AddLease(ids[i]);
  const auto start = Clock::now();
  for (auto& s : streams) s->Begin();
  if (AwaitTrue([&] { return state.ok() + state.errors() >= o.hold; }, o.timeout_s)) {
    r.held = state.ok();
    r.rss_held_kb = RssKb(o.rss_pid);
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (auto& s : streams) s->Cancel();
  for (auto& s : streams) s->WaitDone();
  int64_t unanswered = 0;
  for (auto& s : streams) unanswered += s->unanswered();
  r.ok = state.ok();
  r.errors = state.errors() + unanswered;
  r.first_error = state.first_error();
  if (r.first_error.empty() && unanswered > 0) r.first_error = "hold-leases: " + std::to_string(unanswered) + " unanswered";
  for (auto& s : streams) r.latencies_ns.insert(r.latencies_ns.end(), s->latencies_ns.begin(), s->latencies_ns.end());
  return r;
}

void Print(const Options& o, Result& r) {
  std::sort(r.latencies_ns.begin(), r.latencies_ns.end());
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const double client_cpu_us = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
                               static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  const int64_t units = r.mode == "watch" ? r.events : r.ok;
  const double tput = r.seconds > 0 ? static_cast<double>(units) / r.seconds : 0;
  const double p50 = Percentile(r.latencies_ns, 0.50), p90 = Percentile(r.latencies_ns, 0.90),
               p99 = Percentile(r.latencies_ns, 0.99),
               mx = r.latencies_ns.empty() ? 0 : static_cast<double>(r.latencies_ns.back()) / 1000.0;
  if (o.json) {
    const nlohmann::ordered_json out{{"mode", r.mode},       {"consistency", o.consistency}, {"endpoints", o.endpoints},
                                     {"conns", o.conns},     {"inflight", o.inflight},       {"ok", r.ok},
                                     {"events", r.events},   {"errors", r.errors},           {"seconds", r.seconds},
                                     {"throughput", tput},   {"p50_us", p50},                {"p90_us", p90},
                                     {"p99_us", p99},        {"max_us", mx},                 {"client_cpu_us", client_cpu_us},
                                     {"held", r.held},
                                     {"rss_before_kb", r.rss_before_kb}, {"rss_held_kb", r.rss_held_kb},
                                     {"first_error", r.first_error}};
    // An error message may carry bytes that are not UTF-8: replaced, not fatal.
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("mode %s against %s (%d conns, %d in flight)\n", r.mode.c_str(), o.endpoints.c_str(), o.conns,
                o.inflight);
    std::printf("  ok %lld  errors %lld  in %.3f s\n", static_cast<long long>(r.ok), static_cast<long long>(r.errors),
                r.seconds);
    if (r.mode == "watch")
      std::printf("  events delivered %lld (%d watchers)\n", static_cast<long long>(r.events), o.watchers);
    std::printf("  throughput %.1f %s/s\n", tput, r.mode == "watch" ? "events" : "req");
    std::printf("  latency us: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f\n", p50, p90, p99, mx);
    std::printf("  client CPU %.0f us\n", client_cpu_us);
    if (r.held > 0)
      std::printf("  held %lld; RSS of pid %d: %lld kB before, %lld kB held\n", static_cast<long long>(r.held),
                  o.rss_pid, static_cast<long long>(r.rss_before_kb), static_cast<long long>(r.rss_held_kb));
    if (!r.first_error.empty()) std::printf("  first error: %s\n", r.first_error.c_str());
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"esp-bench: asynchronous etcd v3 load generator that checks every answer"};
  app.add_option("--endpoints", o.endpoints, "comma list of host:port; connections are spread over them")
      ->capture_default_str();
  app.add_option("--conns", o.conns, "gRPC channels (distinct TCP connections)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--inflight", o.inflight, "requests in flight in total (keepalive: leases)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--total", o.total, "requests to send (watch: puts); default 10000 unless --duration");
  app.add_option("--duration", o.duration, "seconds to run");
  app.add_option("--key-space", o.key_space, "number of distinct keys")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--value-size", o.value_size, "value bytes")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--key-prefix", o.key_prefix, "prefix of every key")->capture_default_str();
  app.add_option("--mode", o.mode, "preload, put, get, range, txn, watch, lease-grant, lease-keepalive, hold-watches, hold-leases")
      ->capture_default_str()
      ->check(CLI::IsMember({"preload", "put", "get", "range", "txn", "watch", "lease-grant", "lease-keepalive",
                                     "hold-watches", "hold-leases"}));
  app.add_option("--consistency", o.consistency, "get/range: l (linearizable) or s (serializable)")
      ->capture_default_str()
      ->check(CLI::IsMember({"l", "s"}));
  app.add_option("--range-keys", o.range_keys, "range: keys per range")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_flag("--spanning", o.spanning,
               "range: read the whole key space [key 0, key N) with N = --range-keys (place shard boundaries inside it)");
  app.add_flag("--no-preload", o.no_preload, "get/range/txn: the keys are already written (--mode preload)");
  app.add_option("--watchers", o.watchers, "watch: watchers on the key prefix")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--lease-ttl", o.lease_ttl, "lease TTL in seconds")->capture_default_str();
  app.add_option("--token", o.token, "auth token for put/get/range/txn requests (from Authenticate)");
  app.add_option("--hold", o.hold, "hold-watches / hold-leases: watches (one stream each) or kept-alive leases")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--watches-per-stream", o.watches_per_stream, "hold-watches: watches created on each stream")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--rss-pid", o.rss_pid, "hold-*: report this process's VmRSS before and while holding");
  app.add_option("--timeout", o.timeout_s, "per-request deadline and connect timeout, seconds")->capture_default_str();
  app.add_option("--max-errors", o.max_errors, "stop after this many errors")->capture_default_str();
  app.add_flag("--json", o.json, "print one JSON object");
  CLI11_PARSE(app, argc, argv);

  if (o.mode == "range") {
    if (o.spanning) o.key_space = o.range_keys;
    if (o.range_keys > o.key_space) {
      std::cerr << "--range-keys must not exceed --key-space\n";
      return 2;
    }
  }
  try {
    Stubs stubs = Connect(o);
    Result r;
    const bool needs_keys = o.mode == "get" || o.mode == "range" || o.mode == "txn";
    if (o.mode == "preload" || (needs_keys && !o.no_preload)) {
      Result pre = RunUnary(o, stubs, Op::kPreload, o.key_space, std::nullopt);
      if (pre.errors > 0 || o.mode == "preload") {
        pre.mode = "preload";
        Print(o, pre);
        return pre.errors > 0 ? 1 : 0;
      }
    }
    if (o.mode == "put") r = RunUnary(o, stubs, Op::kPut, Total(o), Deadline(o));
    else if (o.mode == "get") r = RunUnary(o, stubs, Op::kGet, Total(o), Deadline(o));
    else if (o.mode == "range") r = RunUnary(o, stubs, Op::kRange, Total(o), Deadline(o));
    else if (o.mode == "txn") r = RunUnary(o, stubs, Op::kTxn, Total(o), Deadline(o));
    else if (o.mode == "lease-grant") r = RunUnary(o, stubs, Op::kLeaseGrant, Total(o), Deadline(o));
    else if (o.mode == "watch") r = RunWatch(o, stubs);
    else if (o.mode == "lease-keepalive") r = RunKeepAlive(o, stubs);
    else if (o.mode == "hold-watches") r = RunHoldWatches(o, stubs);
    else if (o.mode == "hold-leases") r = RunHoldLeases(o, stubs);
    r.mode = o.mode;
    Print(o, r);
    return r.errors > 0 ? 1 : 0;
  } catch (const std::exception& e) {
    std::cerr << "esp-bench: " << e.what() << "\n";
    return 2;
  }
}
