// Differential test of Watch and Lease: the same random watches, writes and lease operations go
// to one plain etcd and to the proxy over three etcd shards (split at "i" and "s"); answers must
// agree modulo revisions and lease ids the servers picked. Watch events are compared per shard
// (a spanning watch may interleave shards differently from one etcd). Every run prints its seed;
// ESP_DIFF_SEED=<seed> replays one. The setup, keys and helpers shared with differential_test:
// support/differential.h; the Watch streams are support/watch_client.h's.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/differential.h"
#include "support/watch_client.h"

namespace esp::test {
namespace {

using mvccpb::Event;

bool InRange(const std::string& key, const std::string& begin, const std::string& end) {
  if (end.empty()) return key == begin;
  if (end == kAll) return key >= begin;
  return key >= begin && key < end;
}

// An event as both sides must agree on it: type, key, value, version, lease, prev_kv, and
// whether it created the key (create_revision == mod_revision), revisions themselves left out.
std::string DescribeEvent(const Event& e) {
  std::string out = e.type() == Event::PUT ? "PUT" : "DELETE";
  out += Describe(e.kv());
  if (e.type() == Event::PUT && e.kv().create_revision() == e.kv().mod_revision()) out += " new";
  if (e.has_prev_kv()) out += " prev" + Describe(e.prev_kv());
  return out;
}

class Gen : public RandomGen {
 public:
  using RandomGen::RandomGen;
  std::string Value() { return "v" + std::to_string(Int(0, 99)) + (Chance(10) ? std::string(1, '\0') : ""); }
};

// One Watch stream (a WatchClient) whose event responses are kept per watch id; the others
// (created, canceled) go to the queue the test awaits in order with NextControl.
class WatchStream {
 public:
  explicit WatchStream(const std::string& address)
      : client_(address, "", [this](const WatchResponse& response) { return Keep(response); }) {}

  void Write(const WatchRequest& request) { EXPECT_TRUE(client_.Write(request)) << "watch stream broken"; }
  std::optional<WatchResponse> NextControl(std::chrono::milliseconds timeout = 10s) { return client_.Next(timeout); }
  // Waits until watch `id` has received at least `count` events; returns them all.
  std::vector<WatchResponse> AwaitEvents(int64_t id, std::size_t count, std::chrono::milliseconds timeout = 10s) {
    return client_.AwaitThen([&] { return event_count_[id] >= count; }, timeout, [&] { return events_[id]; });
  }
  // Waits until the event responses of watch `id` satisfy `done`; returns them all.
  std::vector<WatchResponse> AwaitUntil(int64_t id, const std::function<bool(const std::vector<WatchResponse>&)>& done,
                                        std::chrono::milliseconds timeout = 10s) {
    return client_.AwaitThen([&] { return done(events_[id]); }, timeout, [&] { return events_[id]; });
  }
  // Event responses that arrived for a watch after its `canceled` (etcd never sends one).
  int EventsAfterCancel() {
    return client_.Locked([&] { return after_cancel_; });
  }
  std::vector<WatchResponse> Events(int64_t id) {
    return client_.Locked([&] { return events_[id]; });
  }

 private:
  // On the client's reader thread, under its lock.
  bool Keep(const WatchResponse& response) {
    if (response.events_size() > 0) {
      event_count_[response.watch_id()] += static_cast<std::size_t>(response.events_size());
      events_[response.watch_id()].push_back(response);
      if (canceled_.count(response.watch_id())) ++after_cancel_;
      return false;
    }
    if (response.canceled()) canceled_.insert(response.watch_id());
    return response.created() || response.canceled();  // progress notifications carry nothing to compare
  }

  std::map<int64_t, std::vector<WatchResponse>> events_;
  std::map<int64_t, std::size_t> event_count_;
  std::set<int64_t> canceled_;
  int after_cancel_ = 0;
  WatchClient client_;  // last: its reader thread starts once the state above exists, and ends first
};

class DifferentialWatchLeaseTest : public DifferentialFixture {};

// ---------------------------------------------------------------------------------------------
// Watch

struct WatchSpec {
  std::string key;
  std::string end;
  bool no_put = false;
  bool no_delete = false;
  bool prev_kv = false;
  std::string Text() const {
    return "[" + Printable(key) + ", " + Printable(end) + ")" + (no_put ? " NOPUT" : "") +
           (no_delete ? " NODELETE" : "") + (prev_kv ? " prev_kv" : "");
  }
  bool Empty() const { return !end.empty() && end != kAll && end <= key; }
  // Whether [key, end) lies in one shard (asked of non-empty ranges only).
  bool SingleShard() const {
    const auto [first, last] = ShardSpan(key, end);
    return first == last;
  }
  bool Matches(const Event& e) const {
    if (!InRange(e.kv().key(), key, end)) return false;
    return e.type() == Event::PUT ? !no_put : !no_delete;
  }
  WatchRequest Request() const {
    WatchRequest req;
    auto* c = req.mutable_create_request();
    c->set_key(key);
    c->set_range_end(end);
    c->set_prev_kv(prev_kv);
    if (no_put) c->add_filters(WatchCreateRequest::NOPUT);
    if (no_delete) c->add_filters(WatchCreateRequest::NODELETE);
    return req;
  }
};

WatchSpec RandomWatchSpec(Gen& gen) {
  WatchSpec s;
  switch (gen.Int(0, 9)) {
    case 0:
    case 1:
      s.key = gen.Key();
      break;
    case 2:
    case 3: {
      const auto& p = kDiffPrefixes[gen.Int(0, static_cast<int>(kDiffPrefixes.size()) - 1)];
      s.key = p;
      s.end = PrefixEnd(p);
      break;
    }
    case 4: {  // inside one shard
      const int shard = gen.Int(0, 2);
      std::string a = gen.KeyIn(shard);
      std::string b = gen.KeyIn(shard);
      if (b < a) std::swap(a, b);
      s.key = a;
      s.end = b == a ? PrefixEnd(a) : b;
      break;
    }
    case 5:
    case 6: {  // any range: spanning ones mostly, rarely an empty one
      std::string a = gen.Key();
      std::string b = gen.Key();
      if (!gen.Chance(10) && b < a) std::swap(a, b);
      s.key = a;
      s.end = b;
      if (s.end.empty()) s.end = "\xff";
      break;
    }
    case 7:
    case 8:
      s.key = gen.Key();
      s.end = kAll;
      break;
    default:
      s.key = kAll;
      s.end = kAll;
      break;
  }
  s.no_put = gen.Chance(15);
  s.no_delete = gen.Chance(15);
  s.prev_kv = gen.Chance(50);
  return s;
}

// A member's current revision, asked of it directly.
int64_t CurrentRevision(const std::string& address) {
  auto kv = KV::NewStub(Connect(address));
  RangeRequest req;
  req.set_key(kAll);
  req.set_count_only(true);
  RangeResponse resp;
  EXPECT_TRUE(kv->Range(Ctx().get(), req, &resp).ok());
  return resp.header().revision();
}

// A watch of every key with prev_kv (watch id 0) on a new stream to `address`; null (and a test
// failure) when it is not created.
std::unique_ptr<WatchStream> OpenReference(const std::string& address, int64_t* created_revision = nullptr) {
  auto stream = std::make_unique<WatchStream>(address);
  WatchRequest req;
  req.mutable_create_request()->set_key(kAll);
  req.mutable_create_request()->set_range_end(kAll);
  req.mutable_create_request()->set_prev_kv(true);
  stream->Write(req);
  const auto created = stream->NextControl();
  EXPECT_TRUE(created && created->created() && created->watch_id() == 0) << "reference watch on " << address;
  if (!created || !created->created()) return nullptr;
  if (created_revision) *created_revision = created->header().revision();
  return stream;
}

// Watch streams side by side: stream i to the plain etcd and stream i to the proxy carry the
// same watches.
struct StreamPairs {
  using Answers = std::pair<std::optional<WatchResponse>, std::optional<WatchResponse>>;

  StreamPairs(const std::string& plain_address, const std::string& proxy_address, int n) {
    for (int i = 0; i < n; ++i) {
      plain.push_back(std::make_unique<WatchStream>(plain_address));
      proxy.push_back(std::make_unique<WatchStream>(proxy_address));
    }
  }
  int size() const { return static_cast<int>(plain.size()); }
  // Sends one request on stream `i` of each side; returns the next control answer of each.
  Answers Send(int i, const WatchRequest& to_plain, const WatchRequest& to_proxy) {
    plain[static_cast<std::size_t>(i)]->Write(to_plain);
    proxy[static_cast<std::size_t>(i)]->Write(to_proxy);
    auto a = plain[static_cast<std::size_t>(i)]->NextControl();
    auto b = proxy[static_cast<std::size_t>(i)]->NextControl();
    return {std::move(a), std::move(b)};
  }
  Answers Cancel(int i, int64_t plain_id, int64_t proxy_id) {
    WatchRequest a;
    a.mutable_cancel_request()->set_watch_id(plain_id);
    WatchRequest b;
    b.mutable_cancel_request()->set_watch_id(proxy_id);
    return Send(i, a, b);
  }
  void ExpectNoEventsAfterCancel() {
    for (int i = 0; i < size(); ++i) {
      EXPECT_EQ(plain[static_cast<std::size_t>(i)]->EventsAfterCancel(), 0) << "plain stream " << i;
      EXPECT_EQ(proxy[static_cast<std::size_t>(i)]->EventsAfterCancel(), 0)
          << "proxy stream " << i << ": events after `canceled`";
    }
  }

  std::vector<std::unique_ptr<WatchStream>> plain;
  std::vector<std::unique_ptr<WatchStream>> proxy;
};

// A few leases with client-chosen ids, the same on both sides, so that keys attached to them
// (and the deletes their revoke causes on every shard) show up in the watches identically.
class LeasePool {
 public:
  LeasePool(Gen& gen, const std::string& plain_address, const std::string& proxy_address)
      : plain_(etcdserverpb::Lease::NewStub(Connect(plain_address))),
        proxy_(etcdserverpb::Lease::NewStub(Connect(proxy_address))) {
    for (int i = 0; i < 3; ++i) {
      ids_.push_back(gen.Int64(int64_t{1} << 50, int64_t{1} << 60));
      live_.push_back(false);
      Grant(static_cast<std::size_t>(i));
    }
  }
  // A live lease id, or 0.
  int64_t AnyLive(Gen& gen) const {
    const auto i = static_cast<std::size_t>(gen.Int(0, static_cast<int>(ids_.size()) - 1));
    return live_[i] ? ids_[i] : 0;
  }
  // Revokes a live lease on both sides (its keys go), or grants a revoked one again.
  void Toggle(Gen& gen, const std::string& where) {
    const auto i = static_cast<std::size_t>(gen.Int(0, static_cast<int>(ids_.size()) - 1));
    if (!live_[i]) {
      Grant(i);
      return;
    }
    etcdserverpb::LeaseRevokeRequest req;
    req.set_id(ids_[i]);
    etcdserverpb::LeaseRevokeResponse a, b;
    const auto sa = plain_->LeaseRevoke(Ctx().get(), req, &a);
    const auto sb = proxy_->LeaseRevoke(Ctx().get(), req, &b);
    EXPECT_TRUE(sa.ok() && sb.ok()) << where << " revoke: plain '" << sa.error_message() << "' proxy '"
                                    << sb.error_message() << "'";
    live_[i] = false;
    ++revokes_;
  }
  int revokes() const { return revokes_; }

 private:
  void Grant(std::size_t i) {
    etcdserverpb::LeaseGrantRequest req;
    req.set_id(ids_[i]);
    req.set_ttl(600);
    etcdserverpb::LeaseGrantResponse a, b;
    const auto sa = plain_->LeaseGrant(Ctx().get(), req, &a);
    const auto sb = proxy_->LeaseGrant(Ctx().get(), req, &b);
    EXPECT_TRUE(sa.ok() && sb.ok()) << "grant: plain '" << sa.error_message() << "' proxy '" << sb.error_message()
                                    << "'";
    live_[i] = true;
  }
  std::unique_ptr<etcdserverpb::Lease::Stub> plain_;
  std::unique_ptr<etcdserverpb::Lease::Stub> proxy_;
  std::vector<int64_t> ids_;
  std::vector<bool> live_;
  int revokes_ = 0;
};

// One random write (Put, maybe with a lease; DeleteRange; a Txn inside one shard; a lease
// revoke or grant), sent to the plain etcd and then the same to the proxy; returns the plain
// etcd's revision after it.
int64_t RandomWrite(Gen& gen, LeasePool& leases, KV::Stub& plain, KV::Stub& proxy, const std::string& where,
                    const std::string& plain_address) {
  int64_t rev = 0;
  const int kind = gen.Int(0, 99);
  if (kind >= 95) {
    leases.Toggle(gen, where);
    return CurrentRevision(plain_address);  // a revoke deletes its keys: the revision after that
  }
  if (kind < 50) {
    PutRequest req;
    req.set_key(gen.Key());
    req.set_value(gen.Value());
    if (gen.Chance(25)) req.set_lease(leases.AnyLive(gen));
    PutResponse a, b;
    EXPECT_TRUE(plain.Put(Ctx().get(), req, &a).ok()) << where;
    EXPECT_TRUE(proxy.Put(Ctx().get(), req, &b).ok()) << where;
    rev = a.header().revision();
  } else if (kind < 70) {
    DeleteRangeRequest req;
    req.set_key(gen.Key());
    if (gen.Chance(40)) {
      std::string e = gen.Key();
      if (e < req.key()) e = kAll;
      req.set_range_end(e);
    }
    DeleteRangeResponse a, b;
    EXPECT_TRUE(plain.DeleteRange(Ctx().get(), req, &a).ok()) << where;
    EXPECT_TRUE(proxy.DeleteRange(Ctx().get(), req, &b).ok()) << where;
    EXPECT_EQ(a.deleted(), b.deleted()) << where;
    rev = a.header().revision();
  } else {  // a txn inside one shard, puts and deletes in either branch
    const int shard = gen.Int(0, 2);
    TxnRequest req;
    auto* cmp = req.add_compare();
    cmp->set_key(gen.KeyIn(shard));
    cmp->set_target(etcdserverpb::Compare::VERSION);
    cmp->set_result(etcdserverpb::Compare::GREATER);
    cmp->set_version(0);
    for (auto* ops : {req.mutable_success(), req.mutable_failure()}) {
      std::set<std::string> used;
      const int n = gen.Int(1, 3);
      for (int i = 0; i < n; ++i) {
        const std::string k = gen.KeyIn(shard);
        if (!used.insert(k).second) continue;
        if (gen.Chance(70)) {
          auto* put = ops->Add()->mutable_request_put();
          put->set_key(k);
          put->set_value(gen.Value());
        } else {
          ops->Add()->mutable_request_delete_range()->set_key(k);
        }
      }
    }
    TxnResponse a, b;
    EXPECT_TRUE(plain.Txn(Ctx().get(), req, &a).ok()) << where;
    EXPECT_TRUE(proxy.Txn(Ctx().get(), req, &b).ok()) << where;
    EXPECT_EQ(a.succeeded(), b.succeeded()) << where;
    rev = a.header().revision();
  }
  return rev;
}

struct WatchState {
  WatchSpec spec;
  int stream = 0;
  int64_t plain_id = 0;
  int64_t proxy_id = 0;
  int64_t start_rev = 0;                   // plain revision at creation: events after it count
  int64_t end_rev = INT64_MAX;             // plain revision at cancel
  bool canceled = false;
};

TEST_F(DifferentialWatchLeaseTest, RandomWatchesSeeTheSameEventsPerShard) {
  const std::uint32_t seed = Seed("watch");
  SCOPED_TRACE(SeedTrace(seed));
  Gen gen(seed);
  const auto deadline = std::chrono::steady_clock::now() + 25s;

  // The reference: every event of the plain etcd, with prev_kv, in revision order.
  int64_t reference_start = 0;
  const auto reference = OpenReference(plain_address(), &reference_start);
  ASSERT_TRUE(reference);
  const int64_t kReferenceId = 0;
  std::vector<Event> history;  // the plain etcd's events
  std::vector<int64_t> history_rev;
  int64_t plain_rev = 0;  // latest plain revision a write reached
  auto sync_reference = [&] {
    // Waits until the reference watch has delivered every event up to `plain_rev`.
    for (;;) {
      std::size_t have = history.size();
      if (std::max(reference_start, history_rev.empty() ? 0 : history_rev.back()) >= plain_rev) return;
      const auto responses = reference->AwaitEvents(kReferenceId, have + 1);
      std::size_t seen = 0;
      for (const auto& r : responses) {
        for (const auto& e : r.events()) {
          if (seen++ < have) continue;
          history.push_back(e);
          history_rev.push_back(e.kv().mod_revision());
        }
      }
      if (history.size() == have) {
        ADD_FAILURE() << "reference watch stalled below revision " << plain_rev;
        return;
      }
    }
  };

  const int kStreams = 3;
  StreamPairs streams(plain_address(), proxy_address(), kStreams);
  LeasePool lease_pool(gen, plain_address(), proxy_address());
  std::vector<WatchState> watches;
  int empty_ranges = 0;
  int coalesce_candidates = 0;
  int spanning = 0;
  int cancels = 0;
  int early_starts = 0;  // watch parts that also saw writes from before their create

  auto expected_events = [&](const WatchState& w) {
    std::vector<Event> out;
    for (std::size_t i = 0; i < history.size(); ++i) {
      if (history_rev[i] <= w.start_rev || history_rev[i] > w.end_rev) continue;
      if (!w.spec.Matches(history[i])) continue;
      Event e = history[i];
      if (!w.spec.prev_kv) e.clear_prev_kv();
      out.push_back(e);
    }
    return out;
  };

  auto create_watch = [&](const std::string& what) {
    WatchState w;
    if (!watches.empty() && gen.Chance(30)) {
      // The same range and options again (maybe on another stream): the proxy may share one
      // upstream watcher between them, which must not change what either sees.
      w.spec = watches[static_cast<std::size_t>(gen.Int(0, static_cast<int>(watches.size()) - 1))].spec;
      ++coalesce_candidates;
    } else {
      w.spec = RandomWatchSpec(gen);
    }
    w.stream = gen.Int(0, kStreams - 1);
    const auto [a, b] = streams.Send(w.stream, w.spec.Request(), w.spec.Request());
    const std::string where = what + " create " + w.spec.Text() + " on stream " + std::to_string(w.stream);
    if (!a || !b) {
      ADD_FAILURE() << where << ": no created answer (plain " << a.has_value() << ", proxy " << b.has_value()
                    << ")";
      return;
    }
    EXPECT_EQ(a->created(), b->created()) << where;
    EXPECT_EQ(a->canceled(), b->canceled()) << where;
    EXPECT_EQ(a->watch_id(), b->watch_id()) << where;
    EXPECT_EQ(a->cancel_reason(), b->cancel_reason()) << where;
    if (w.spec.Empty()) {
      ++empty_ranges;
      EXPECT_TRUE(a->canceled()) << where;
      return;
    }
    if (!a->created() || a->canceled() || b->canceled()) return;
    if (!w.spec.SingleShard()) ++spanning;
    w.plain_id = a->watch_id();
    w.proxy_id = b->watch_id();
    // Every write so far is at or below the plain revision the watch started from.
    w.start_rev = a->header().revision();
    EXPECT_GE(w.start_rev, plain_rev) << where;
    watches.push_back(w);
  };

  // Compares what one watch received on both sides with the model; `final` also requires
  // that nothing beyond the model arrived.
  auto check_watch = [&](const WatchState& w, const std::string& what) {
    const std::vector<Event> expected = expected_events(w);
    // The same watch started at the very beginning: a watch that joins a shared upstream watcher
    // may start a little earlier than asked (see below).
    WatchState from_start = w;
    from_start.start_rev = 0;
    const std::vector<Event> expected_from_start = expected_events(from_start);
    auto project = [](const std::vector<Event>& events, int shard) {
      std::vector<std::string> out;
      for (const auto& e : events) {
        if (ShardOf(e.kv().key()) == shard) out.push_back(DescribeEvent(e));
      }
      return out;
    };
    auto ends_with = [](const std::vector<std::string>& v, const std::vector<std::string>& tail) {
      return v.size() >= tail.size() && std::equal(tail.rbegin(), tail.rend(), v.rbegin());
    };
    const auto plain = streams.plain[w.stream]->AwaitEvents(w.plain_id, expected.size());
    const auto proxy = streams.proxy[w.stream]->AwaitUntil(w.proxy_id, [&](const std::vector<WatchResponse>& rs) {
      std::vector<Event> got;
      for (const auto& r : rs) got.insert(got.end(), r.events().begin(), r.events().end());
      for (int shard = 0; shard < 3; ++shard) {
        if (!ends_with(project(got, shard), project(expected, shard))) return false;
      }
      return true;
    });
    const std::string where = what + " watch " + w.spec.Text() + " id " + std::to_string(w.proxy_id);
    // The plain etcd against the model: checks the harness itself.
    std::vector<std::string> want;
    for (const auto& e : expected) want.push_back(DescribeEvent(e));
    std::vector<std::string> plain_got;
    for (const auto& r : plain) {
      for (const auto& e : r.events()) plain_got.push_back(DescribeEvent(e));
    }
    EXPECT_EQ(plain_got, want) << where << " (plain etcd against the reference watch)";
    // The proxy, shard by shard: the same events in the same order, none lost or duplicated,
    // each response from one shard, revisions increasing within the shard.
    for (int shard = 0; shard < 3; ++shard) {
      std::vector<std::string> a;
      for (const auto& e : expected) {
        if (ShardOf(e.kv().key()) == shard) a.push_back(DescribeEvent(e));
      }
      std::vector<std::string> b;
      int64_t last_rev = 0;
      std::map<std::string, int64_t> create_rev;  // per key while it lives, as seen by the watch
      for (const auto& r : proxy) {
        if (ShardOf(r.events(0).kv().key()) != shard) continue;
        int64_t response_max = 0;
        for (int i = 0; i < r.events_size(); ++i) {
          const Event& e = r.events(i);
          const KeyValue& kv = e.kv();
          EXPECT_EQ(ShardOf(kv.key()), shard) << where << ": a response mixes shards: " << r.ShortDebugString();
          EXPECT_GT(kv.mod_revision(), last_rev) << where << ": revisions not increasing in shard " << shard;
          if (i > 0) EXPECT_GE(kv.mod_revision(), r.events(i - 1).kv().mod_revision()) << where;
          response_max = std::max(response_max, kv.mod_revision());
          if (e.type() == Event::PUT) {
            EXPECT_LE(kv.create_revision(), kv.mod_revision()) << where;
            EXPECT_EQ(kv.version() == 1, kv.create_revision() == kv.mod_revision()) << where << " " << Describe(kv);
            const auto it = create_rev.find(kv.key());
            if (it != create_rev.end() && kv.version() > 1) {
              EXPECT_EQ(it->second, kv.create_revision()) << where << ": create_revision changed";
            }
            create_rev[kv.key()] = kv.create_revision();
          } else {
            create_rev.erase(kv.key());
          }
          if (e.has_prev_kv()) {
            EXPECT_LT(e.prev_kv().mod_revision(), kv.mod_revision()) << where;
            if (e.type() == Event::PUT && kv.version() > 1) {
              EXPECT_EQ(e.prev_kv().create_revision(), kv.create_revision()) << where;
            }
          }
          b.push_back(DescribeEvent(e));
        }
        EXPECT_GE(r.header().revision(), response_max) << where << ": header behind its events";
        last_rev = response_max;
      }
      if (b.size() > a.size() && ends_with(b, a) && ends_with(project(expected_from_start, shard), b)) {
        // A watch that joined a shared upstream watcher starts where that watcher has delivered
        // up to (docs/semantics.md, Coalescing), which may be before writes that completed
        // before this watch was created: etcd would not send those. Allowed, if the extra events
        // are exactly the shard's events just before (nothing skipped, nothing repeated).
        ++early_starts;
        continue;
      }
      EXPECT_EQ(a, b) << where << " shard " << shard;
    }
  };

  for (int i = 0; i < 8; ++i) create_watch("initial");
  int op = 0;
  int writes = 0;
  for (; op < 1200 && std::chrono::steady_clock::now() < deadline && !HasFailure(); ++op) {
    const std::string where = "op " + std::to_string(op);
    const int kind = gen.Int(0, 99);
    if (kind < 8) {
      create_watch(where);
      continue;
    }
    if (kind < 12) {
      std::vector<std::size_t> live;
      for (std::size_t i = 0; i < watches.size(); ++i) {
        if (!watches[i].canceled) live.push_back(i);
      }
      if (live.empty()) continue;
      WatchState& w = watches[live[static_cast<std::size_t>(gen.Int(0, static_cast<int>(live.size()) - 1))]];
      // Everything written so far must have arrived before the cancel, on both sides.
      sync_reference();
      w.end_rev = plain_rev;
      check_watch(w, where + " before cancel");
      const auto [ra, rb] = streams.Cancel(w.stream, w.plain_id, w.proxy_id);
      ASSERT_TRUE(ra && rb) << where << " no cancel answer";
      EXPECT_TRUE(ra->canceled() && rb->canceled()) << where;
      EXPECT_EQ(ra->watch_id(), w.plain_id);
      EXPECT_EQ(rb->watch_id(), w.proxy_id) << where;
      w.canceled = true;
      ++cancels;
      continue;
    }
    // A write, the same on both sides.
    ++writes;
    const int64_t rev = RandomWrite(gen, lease_pool, *plain_kv_, *proxy_kv_, where, plain_address());
    plain_rev = std::max(plain_rev, rev);
  }
  sync_reference();
  for (const auto& w : watches) check_watch(w, "final");
  streams.ExpectNoEventsAfterCancel();
  std::printf(
      "watch seed %u: %d ops (%d writes, %zu events), %zu watches (%d spanning, %d repeated specs, %d empty "
      "ranges), %d cancels\n",
      seed, op, writes, history.size(), watches.size(), spanning, coalesce_candidates, empty_ranges, cancels);
  std::printf("watch seed %u: %d lease revokes deleting keys, %d watch parts started before their create\n", seed,
              lease_pool.revokes(), early_starts);
  EXPECT_GT(writes, 50);
  EXPECT_GT(spanning, 0);
}

// Found by the random test: a single-key watch on "s\0" and a watch from "s" onwards
// (range_end "\0") are different ranges and must not share an upstream watcher, whatever
// encoding the proxy uses to group identical watches.
TEST_F(DifferentialWatchLeaseTest, KeysWithNulBytesDoNotMakeDifferentRangesShareAWatcher) {
  for (const std::string shard_key : {"s", "i"}) {
    const std::string nul_key = shard_key + std::string(1, '\0');
    WatchStream plain(plain_address());
    WatchStream proxy(proxy_address());
    auto create = [&](WatchStream& stream, const std::string& key, const std::string& end) {
      WatchRequest req;
      req.mutable_create_request()->set_key(key);
      req.mutable_create_request()->set_range_end(end);
      stream.Write(req);
      const auto created = stream.NextControl();
      EXPECT_TRUE(created && created->created() && !created->canceled());
      return created ? created->watch_id() : -1;
    };
    for (auto* stream : {&plain, &proxy}) {
      const int64_t from_key = create(*stream, shard_key, kAll);  // every key from `shard_key` on
      const int64_t single = create(*stream, nul_key, "");        // the one key "<shard_key>\0"
      auto* kv = stream == &plain ? plain_kv_.get() : proxy_kv_.get();
      for (const std::string& key : {shard_key, std::string("t"), nul_key}) {
        PutRequest put;
        put.set_key(key);
        put.set_value("x");
        PutResponse resp;
        ASSERT_TRUE(kv->Put(Ctx().get(), put, &resp).ok());
      }
      const auto all = stream->AwaitEvents(from_key, 3);
      const auto one = stream->AwaitEvents(single, 1);
      const std::string side = stream == &plain ? "plain etcd" : "proxy";
      std::vector<std::string> keys;
      for (const auto& r : one) {
        for (const auto& e : r.events()) keys.push_back(Printable(e.kv().key()));
      }
      EXPECT_EQ(keys, std::vector<std::string>{Printable(nul_key)})
          << side << ": the watch on the single key " << Printable(nul_key) << " saw other keys";
      std::size_t n = 0;
      for (const auto& r : all) n += static_cast<std::size_t>(r.events_size());
      EXPECT_EQ(n, 3u) << side;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Watches created and canceled while a writer runs

// The events of reference watch 0 on `stream`, once they reach revision `upto`.
std::vector<Event> History(WatchStream& stream, int64_t upto) {
  auto flatten = [](const std::vector<WatchResponse>& responses) {
    std::vector<Event> out;
    for (const auto& r : responses) out.insert(out.end(), r.events().begin(), r.events().end());
    return out;
  };
  const auto responses = stream.AwaitUntil(0, [&](const std::vector<WatchResponse>& rs) {
    return !rs.empty() && rs.back().events(rs.back().events_size() - 1).kv().mod_revision() >= upto;
  });
  std::vector<Event> events = flatten(responses);
  EXPECT_TRUE(!events.empty() && events.back().kv().mod_revision() >= upto) << "reference watch stalled";
  return events;
}

// Where a watch can start or end without a definite revision: somewhere in (lo, hi].
struct Window {
  int64_t lo = 0;
  int64_t hi = 0;
};

// `got` (one shard's events of one watch, in order) must be exactly the shard's `history`
// filtered by `spec`, from a start revision S in [start.lo, start.hi] to an end E in
// [end.lo, end.hi]: nothing lost, duplicated or reordered in between. `bare_prev_kv_ok`: an
// event may lack its prev_kv (etcd 3.4 reads prev_kv when it sends and forgets that the watch
// wants it as soon as a cancel arrives: events sent around a cancel come without).
bool MatchesHistory(const std::vector<Event>& got, const std::vector<Event>& history, const WatchSpec& spec,
                    Window start, Window end, std::string* why, bool bare_prev_kv_ok = false) {
  std::vector<Event> filtered;
  for (Event e : history) {
    if (!spec.Matches(e)) continue;
    if (!spec.prev_kv) e.clear_prev_kv();
    filtered.push_back(e);
  }
  std::vector<std::string> want;
  std::vector<std::string> bare;  // without prev_kv
  for (const auto& e : filtered) {
    want.push_back(DescribeEvent(e));
    Event b = e;
    b.clear_prev_kv();
    bare.push_back(DescribeEvent(b));
  }
  std::vector<std::string> g;
  for (const auto& e : got) g.push_back(DescribeEvent(e));
  std::vector<int64_t> starts = {start.lo};
  for (const auto& e : filtered) {
    if (e.kv().mod_revision() > start.lo && e.kv().mod_revision() <= start.hi) starts.push_back(e.kv().mod_revision());
  }
  const std::size_t n = g.size();
  for (const int64_t s : starts) {
    // The events after S, as many as were received; then an end E in the end window that takes
    // exactly those (E never splits a revision's events).
    std::size_t i0 = 0;
    while (i0 < filtered.size() && filtered[i0].kv().mod_revision() <= s) ++i0;
    if (i0 + n > filtered.size()) continue;
    bool same = true;
    for (std::size_t i = 0; i < n && same; ++i) {
      same = g[i] == want[i0 + i] || (bare_prev_kv_ok && !got[i].has_prev_kv() && g[i] == bare[i0 + i]);
    }
    if (!same) continue;
    const int64_t low = std::max(n > 0 ? filtered[i0 + n - 1].kv().mod_revision() : s, end.lo);
    const int64_t high = std::min(i0 + n < filtered.size() ? filtered[i0 + n].kv().mod_revision() - 1 : INT64_MAX, end.hi);
    if (low <= high) return true;
  }
  std::ostringstream os;
  os << "start in (" << start.lo << ", " << start.hi << "], end in (" << end.lo << ", " << end.hi << "]\ngot:";
  for (const auto& e : got) os << "\n  @" << e.kv().mod_revision() << " " << DescribeEvent(e);
  os << "\nhistory matching the watch:";
  for (const auto& e : filtered) os << "\n  @" << e.kv().mod_revision() << " " << DescribeEvent(e);
  *why = os.str();
  return false;
}

struct LiveWatch {
  WatchSpec spec;
  int stream = 0;
  int64_t plain_id = 0;
  int64_t proxy_id = 0;
  int64_t plain_start = 0;            // plain created revision: etcd's exact start
  int64_t proxy_created_rev = 0;      // the proxy's created header revision
  std::array<Window, 3> start{};      // per shard, where the proxy's watch may start
  Window plain_end{INT64_MAX, INT64_MAX};
  std::array<Window, 3> end{{{INT64_MAX, INT64_MAX}, {INT64_MAX, INT64_MAX}, {INT64_MAX, INT64_MAX}}};
  bool single_shard = false;
  bool canceled = false;
};

TEST_F(DifferentialWatchLeaseTest, WatchesCreatedAndCanceledWhileAWriterRunsMissNothing) {
  const std::uint32_t seed = Seed("concurrent watch");
  SCOPED_TRACE(SeedTrace(seed, "; the interleaving with the writer is not replayed"));
  Gen gen(seed);
  auto shard_address = [](int s) { return sharded_->shard(static_cast<std::size_t>(s)).member(0).client_address(); };

  // References: every event of the plain etcd, and of each shard asked directly.
  const auto plain_ref = OpenReference(plain_address());
  ASSERT_TRUE(plain_ref);
  std::vector<std::unique_ptr<WatchStream>> shard_refs;
  for (int s = 0; s < 3; ++s) {
    shard_refs.push_back(OpenReference(shard_address(s)));
    ASSERT_TRUE(shard_refs.back());
  }

  const int kStreams = 3;
  StreamPairs streams(plain_address(), proxy_address(), kStreams);
  auto shard_revisions = [&] {
    std::array<int64_t, 3> out{};
    for (int s = 0; s < 3; ++s) out[static_cast<std::size_t>(s)] = CurrentRevision(shard_address(s));
    return out;
  };

  std::atomic<bool> stop{false};
  std::atomic<int> writes{0};
  std::thread writer([&] {
    Gen wgen(seed ^ 0x9e3779b9u);
    LeasePool lease_pool(wgen, plain_address(), proxy_address());
    auto plain_kv = KV::NewStub(Connect(plain_address()));
    auto proxy_kv = KV::NewStub(Connect(proxy_address()));
    while (!stop) {
      RandomWrite(wgen, lease_pool, *plain_kv, *proxy_kv, "concurrent write " + std::to_string(writes.load()),
                  plain_address());
      ++writes;
    }
  });

  std::vector<LiveWatch> watches;
  int repeated = 0;
  int cancels = 0;
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < until && watches.size() < 150 && !HasFailure()) {
    std::vector<std::size_t> live;
    for (std::size_t i = 0; i < watches.size(); ++i) {
      if (!watches[i].canceled) live.push_back(i);
    }
    if (!live.empty() && gen.Chance(25)) {  // cancel one
      LiveWatch& w = watches[live[static_cast<std::size_t>(gen.Int(0, static_cast<int>(live.size()) - 1))]];
      const auto [ra, rb] = streams.Cancel(w.stream, w.plain_id, w.proxy_id);
      ASSERT_TRUE(ra && rb && ra->canceled() && rb->canceled()) << "cancel " << w.spec.Text();
      EXPECT_EQ(rb->watch_id(), w.proxy_id);
      const auto hi = shard_revisions();
      // etcd drops the events still queued for a watch when its cancel goes out, so a canceled
      // watch may end anywhere before the cancel was answered (`lo` only tells when it was sent).
      w.plain_end = {0, CurrentRevision(plain_address())};
      for (std::size_t s = 0; s < 3; ++s) w.end[s] = {0, hi[s]};
      w.canceled = true;
      ++cancels;
      continue;
    }
    LiveWatch w;
    if (!watches.empty() && gen.Chance(40)) {
      // The same range and options as a watch that is running: the proxy may attach it to
      // that watch's upstream watcher, mid-stream.
      w.spec = watches[static_cast<std::size_t>(gen.Int(0, static_cast<int>(watches.size()) - 1))].spec;
      ++repeated;
    } else {
      do {
        w.spec = RandomWatchSpec(gen);
      } while (w.spec.Empty());
    }
    w.stream = gen.Int(0, kStreams - 1);
    const WatchRequest req = w.spec.Request();
    const auto lo = shard_revisions();
    const auto [a, b] = streams.Send(w.stream, req, req);
    const auto hi = shard_revisions();
    ASSERT_TRUE(a && b && a->created() && b->created() && !a->canceled() && !b->canceled())
        << "create " << w.spec.Text();
    EXPECT_EQ(a->watch_id(), b->watch_id()) << w.spec.Text();
    w.plain_id = a->watch_id();
    w.proxy_id = b->watch_id();
    w.plain_start = a->header().revision();
    w.proxy_created_rev = b->header().revision();
    for (std::size_t s = 0; s < 3; ++s) w.start[s] = {lo[s], hi[s]};
    const int first = ShardOf(w.spec.key);
    w.single_shard = w.spec.SingleShard();
    watches.push_back(w);
  }
  stop = true;
  writer.join();

  // A fence every watch sees: a put and a delete of every key, after the writer stopped.
  for (const auto& k : kDiffKeys) {
    PutRequest put;
    put.set_key(k);
    put.set_value("fence");
    PutResponse pa, pb;
    ASSERT_TRUE(plain_kv_->Put(Ctx().get(), put, &pa).ok());
    ASSERT_TRUE(proxy_kv_->Put(Ctx().get(), put, &pb).ok());
  }
  for (const auto& k : kDiffKeys) {
    DeleteRangeRequest del;
    del.set_key(k);
    DeleteRangeResponse da, db;
    ASSERT_TRUE(plain_kv_->DeleteRange(Ctx().get(), del, &da).ok());
    ASSERT_TRUE(proxy_kv_->DeleteRange(Ctx().get(), del, &db).ok());
  }
  const std::vector<Event> plain_history = History(*plain_ref, CurrentRevision(plain_address()));
  std::array<std::vector<Event>, 3> shard_history;
  for (int s = 0; s < 3; ++s) {
    shard_history[static_cast<std::size_t>(s)] = History(*shard_refs[static_cast<std::size_t>(s)],
                                                         CurrentRevision(shard_address(s)));
  }
  // The writes themselves: each shard's history is the plain history projected on it.
  for (std::size_t s = 0; s < 3; ++s) {
    std::vector<std::string> a, b;
    for (const auto& e : plain_history) {
      if (ShardOf(e.kv().key()) == static_cast<int>(s)) a.push_back(DescribeEvent(e));
    }
    for (const auto& e : shard_history[s]) b.push_back(DescribeEvent(e));
    EXPECT_EQ(a, b) << "shard " << s << " history";
  }

  int coalesced_checked = 0;
  int created_behind = 0;  // single-shard watches whose created revision lags the shard
  int early_events = 0;    // watch parts that saw writes completed before their create was sent
  for (const auto& w : watches) {
    const std::string where = "watch " + w.spec.Text() + " id " + std::to_string(w.proxy_id) + " stream " +
                              std::to_string(w.stream);
    // Await the fence (the last event in range) on both sides; canceled watches have what they get.
    auto last_rev = [&](const std::vector<Event>& history, int shard) -> int64_t {
      int64_t last = 0;
      for (const auto& e : history) {
        if (w.spec.Matches(e) && (shard < 0 || ShardOf(e.kv().key()) == shard)) last = e.kv().mod_revision();
      }
      return last;
    };
    const bool live = !w.canceled;
    auto reached = [](const std::vector<WatchResponse>& rs, const std::function<bool(const Event&)>& pred, int64_t rev) {
      for (const auto& r : rs) {
        for (const auto& e : r.events()) {
          if (pred(e) && e.kv().mod_revision() >= rev) return true;
        }
      }
      return rev == 0;
    };
    std::vector<WatchResponse> plain_got = streams.plain[w.stream]->Events(w.plain_id);
    std::vector<WatchResponse> proxy_got = streams.proxy[w.stream]->Events(w.proxy_id);
    if (live) {
      const int64_t want = last_rev(plain_history, -1);
      plain_got = streams.plain[w.stream]->AwaitUntil(
          w.plain_id, [&](const auto& rs) { return reached(rs, [](const Event&) { return true; }, want); });
      for (int s = 0; s < 3; ++s) {
        const int64_t want_s = last_rev(shard_history[static_cast<std::size_t>(s)], s);
        proxy_got = streams.proxy[w.stream]->AwaitUntil(w.proxy_id, [&](const auto& rs) {
          return reached(rs, [&](const Event& e) { return ShardOf(e.kv().key()) == s; }, want_s);
        });
      }
    }
    // The plain etcd: from its created revision exactly.
    std::vector<Event> plain_events;
    for (const auto& r : plain_got) plain_events.insert(plain_events.end(), r.events().begin(), r.events().end());
    std::string why;
    EXPECT_TRUE(MatchesHistory(plain_events, plain_history, w.spec, {w.plain_start, w.plain_start}, w.plain_end, &why,
                               w.canceled))
        << where << " (plain etcd)\n" << why;
    // The proxy, shard by shard.
    for (int s = 0; s < 3; ++s) {
      const auto su = static_cast<std::size_t>(s);
      std::vector<Event> got;
      int64_t last = 0;
      for (const auto& r : proxy_got) {
        if (ShardOf(r.events(0).kv().key()) != s) continue;
        EXPECT_GT(r.events(0).kv().mod_revision(), last) << where << ": shard " << s << " revisions go back";
        for (const auto& e : r.events()) {
          EXPECT_EQ(ShardOf(e.kv().key()), s) << where << ": a response mixes shards";
          got.push_back(e);
          last = std::max(last, e.kv().mod_revision());
        }
      }
      // A watch that joins a shared upstream watcher starts at the revision that watcher has
      // delivered up to (docs/semantics.md, Coalescing): possibly below the shard's revision
      // when the create was sent, so it may see writes that completed before it was asked for
      // (etcd would not deliver those; its grpc-proxy has the same limitation). What must hold:
      // from its start on, every event of the shard in range, in order, once.
      Window start{0, w.start[su].hi};
      if (w.single_shard && s == ShardOf(w.spec.key)) {
        // One shard: the created revision is that start, exactly.
        EXPECT_LE(w.proxy_created_rev, w.start[su].hi) << where;
        if (w.proxy_created_rev < w.start[su].lo) ++created_behind;
        start = {w.proxy_created_rev, w.proxy_created_rev};
      }
      EXPECT_TRUE(MatchesHistory(got, shard_history[su], w.spec, start, w.end[su], &why, w.canceled))
          << where << " (proxy, shard " << s << ")\n" << why;
      if (!got.empty() && got.front().kv().mod_revision() <= w.start[su].lo) ++early_events;
    }
    ++coalesced_checked;
  }
  streams.ExpectNoEventsAfterCancel();
  std::printf(
      "concurrent watch seed %u: %d writes during %zu watch creations (%d repeated specs), %d cancels; %d created "
      "revisions behind the shard, %d watch parts saw writes from before their create\n",
      seed, writes.load(), watches.size(), repeated, cancels, created_behind, early_events);
  EXPECT_GT(writes.load(), 50);
  EXPECT_GT(repeated, 3);
  EXPECT_EQ(coalesced_checked, static_cast<int>(watches.size()));
}

// ---------------------------------------------------------------------------------------------
// Lease

struct LeaseState {
  int64_t plain_id = 0;
  int64_t proxy_id = 0;
  int64_t ttl = 0;
  bool client_chosen = false;
  bool revoked = false;
};

TEST_F(DifferentialWatchLeaseTest, RandomLeaseOperationsAgreeWithOneEtcd) {
  const std::uint32_t seed = Seed("lease");
  SCOPED_TRACE(SeedTrace(seed));
  Gen gen(seed);
  const auto deadline = std::chrono::steady_clock::now() + 25s;
  auto plain = etcdserverpb::Lease::NewStub(Connect(plain_address()));
  auto proxy = etcdserverpb::Lease::NewStub(Connect(proxy_address()));

  // Start without leases on either side.
  for (auto* stub : {plain.get(), proxy.get()}) {
    etcdserverpb::LeaseLeasesResponse leases;
    ASSERT_TRUE(stub->LeaseLeases(Ctx().get(), {}, &leases).ok());
    for (const auto& l : leases.leases()) {
      etcdserverpb::LeaseRevokeRequest req;
      req.set_id(l.id());
      etcdserverpb::LeaseRevokeResponse resp;
      EXPECT_TRUE(stub->LeaseRevoke(Ctx().get(), req, &resp).ok());
    }
  }

  std::vector<LeaseState> leases;
  std::map<int64_t, int64_t> proxy_to_plain;
  auto to_plain = [&](int64_t proxy_id) {
    const auto it = proxy_to_plain.find(proxy_id);
    return it == proxy_to_plain.end() ? -proxy_id : it->second;  // unknown ids show up negated
  };
  auto compare_keyspace = [&](const std::string& where) {
    RangeRequest all;
    all.set_key(kAll);
    all.set_range_end(kAll);
    RangeResponse a, b;
    ASSERT_TRUE(plain_kv_->Range(Ctx().get(), all, &a).ok());
    ASSERT_TRUE(proxy_kv_->Range(Ctx().get(), all, &b).ok());
    EXPECT_EQ(KvStrings(a.kvs()), KvStrings(b.kvs(), to_plain)) << where << " keyspace";
  };
  // A lease from the table (live or revoked), or an id neither side knows.
  auto pick = [&]() -> LeaseState {
    if (leases.empty() || gen.Chance(8)) {
      LeaseState unknown;
      unknown.plain_id = unknown.proxy_id = gen.Int64(1, int64_t{1} << 40);
      unknown.revoked = true;
      return unknown;
    }
    return leases[static_cast<std::size_t>(gen.Int(0, static_cast<int>(leases.size()) - 1))];
  };
  auto ttl_close = [](int64_t a, int64_t b) { return std::abs(a - b) <= 2; };

  std::map<std::string, int> counts;
  int op = 0;
  for (; op < 800 && std::chrono::steady_clock::now() < deadline && !HasFailure(); ++op) {
    const std::string where = "op " + std::to_string(op);
    const int kind = gen.Int(0, 99);
    if (kind < 20) {  // LeaseGrant
      etcdserverpb::LeaseGrantRequest req;
      req.set_ttl(gen.Int(60, 600));
      LeaseState* reuse = nullptr;
      if (gen.Chance(10) && !leases.empty()) {
        // An id given before (live: etcd refuses it; revoked: granted afresh).
        auto& l = leases[static_cast<std::size_t>(gen.Int(0, static_cast<int>(leases.size()) - 1))];
        if (l.client_chosen) {
          reuse = &l;
          req.set_id(l.plain_id);
        }
      } else if (gen.Chance(50)) {
        req.set_id(gen.Int64(1, int64_t{1} << 62));
      }
      if (gen.Chance(3)) req.set_ttl(9000000001);  // above etcd's maximum
      etcdserverpb::LeaseGrantResponse a, b;
      const auto sa = plain->LeaseGrant(Ctx().get(), req, &a);
      const auto sb = proxy->LeaseGrant(Ctx().get(), req, &b);
      const std::string what = where + " grant " + req.ShortDebugString();
      CompareStatus(sa, sb, what);
      EXPECT_EQ(a.error(), b.error()) << what;
      if (!sa.ok() || !sb.ok()) {
        ++counts["grant refused"];
        continue;
      }
      EXPECT_EQ(a.ttl(), b.ttl()) << what;
      if (req.id() != 0) EXPECT_EQ(b.id(), req.id()) << what;
      proxy_to_plain[b.id()] = a.id();
      if (reuse) {
        reuse->revoked = false;
        reuse->ttl = req.ttl();
      } else {
        leases.push_back({a.id(), b.id(), req.ttl(), req.id() != 0, false});
      }
      ++counts["grant"];
    } else if (kind < 50) {  // Put with a lease, sometimes without, sometimes a delete
      const LeaseState l = pick();
      PutRequest ra;
      ra.set_key(gen.Key());
      ra.set_value(gen.Value());
      if (gen.Chance(15)) {
        DeleteRangeRequest del;
        del.set_key(ra.key());
        DeleteRangeResponse a, b;
        ASSERT_TRUE(plain_kv_->DeleteRange(Ctx().get(), del, &a).ok());
        ASSERT_TRUE(proxy_kv_->DeleteRange(Ctx().get(), del, &b).ok());
        EXPECT_EQ(a.deleted(), b.deleted()) << where;
        ++counts["delete"];
      } else {
        PutRequest rb = ra;
        if (!gen.Chance(10)) {
          ra.set_lease(l.plain_id);
          rb.set_lease(l.proxy_id);
        }
        PutResponse a, b;
        const auto sa = plain_kv_->Put(Ctx().get(), ra, &a);
        const auto sb = proxy_kv_->Put(Ctx().get(), rb, &b);
        CompareStatus(sa, sb, where + " put " + Printable(ra.key()) + " lease " + std::to_string(rb.lease()));
        ++counts[sa.ok() ? "put" : "put refused"];
      }
    } else if (kind < 62) {  // LeaseRevoke
      const LeaseState l = pick();
      etcdserverpb::LeaseRevokeRequest ra, rb;
      ra.set_id(l.plain_id);
      rb.set_id(l.proxy_id);
      etcdserverpb::LeaseRevokeResponse a, b;
      const auto sa = plain->LeaseRevoke(Ctx().get(), ra, &a);
      const auto sb = proxy->LeaseRevoke(Ctx().get(), rb, &b);
      CompareStatus(sa, sb, where + " revoke " + std::to_string(l.proxy_id) + (l.revoked ? " (revoked)" : ""));
      for (auto& s : leases) {
        if (s.proxy_id == l.proxy_id) s.revoked = true;
      }
      ++counts[sa.ok() ? "revoke" : "revoke not found"];
    } else if (kind < 80) {  // LeaseTimeToLive
      const LeaseState l = pick();
      etcdserverpb::LeaseTimeToLiveRequest ra, rb;
      ra.set_id(l.plain_id);
      rb.set_id(l.proxy_id);
      ra.set_keys(gen.Chance(60));
      rb.set_keys(ra.keys());
      etcdserverpb::LeaseTimeToLiveResponse a, b;
      const auto sa = plain->LeaseTimeToLive(Ctx().get(), ra, &a);
      const auto sb = proxy->LeaseTimeToLive(Ctx().get(), rb, &b);
      const std::string what = where + " timetolive " + std::to_string(l.proxy_id) + (l.revoked ? " (revoked)" : "");
      CompareStatus(sa, sb, what);
      if (sa.ok() && sb.ok()) {
        EXPECT_EQ(a.id(), l.plain_id) << what;
        EXPECT_EQ(b.id(), l.proxy_id) << what;
        EXPECT_TRUE(ttl_close(a.ttl(), b.ttl())) << what << ": TTL plain " << a.ttl() << " proxy " << b.ttl();
        EXPECT_EQ(a.ttl() == -1, b.ttl() == -1) << what;
        EXPECT_EQ(a.grantedttl(), b.grantedttl()) << what;
        std::vector<std::string> ka(a.keys().begin(), a.keys().end());
        std::vector<std::string> kb(b.keys().begin(), b.keys().end());
        std::sort(ka.begin(), ka.end());
        EXPECT_EQ(ka, kb) << what << " (proxy keys in key order)";
      }
      ++counts["timetolive"];
    } else if (kind < 90) {  // LeaseLeases
      etcdserverpb::LeaseLeasesResponse a, b;
      ASSERT_TRUE(plain->LeaseLeases(Ctx().get(), {}, &a).ok());
      ASSERT_TRUE(proxy->LeaseLeases(Ctx().get(), {}, &b).ok());
      std::set<int64_t> ia, ib;
      for (const auto& s : a.leases()) ia.insert(s.id());
      for (const auto& s : b.leases()) ib.insert(to_plain(s.id()));
      EXPECT_EQ(ia, ib) << where << " leases";
      ++counts["leases"];
    } else {  // one keep-alive
      const LeaseState l = pick();
      auto once = [](etcdserverpb::Lease::Stub& stub, int64_t id, etcdserverpb::LeaseKeepAliveResponse* out) {
        auto ctx = Ctx();
        auto stream = stub.LeaseKeepAlive(ctx.get());
        etcdserverpb::LeaseKeepAliveRequest req;
        req.set_id(id);
        const bool ok = stream->Write(req) && stream->Read(out);
        stream->WritesDone();
        ctx->TryCancel();
        stream->Finish();
        return ok;
      };
      etcdserverpb::LeaseKeepAliveResponse a, b;
      const std::string what = where + " keepalive " + std::to_string(l.proxy_id) + (l.revoked ? " (revoked)" : "");
      ASSERT_TRUE(once(*plain, l.plain_id, &a)) << what;
      ASSERT_TRUE(once(*proxy, l.proxy_id, &b)) << what;
      EXPECT_EQ(a.id(), l.plain_id) << what;
      EXPECT_EQ(b.id(), l.proxy_id) << what;
      EXPECT_TRUE(ttl_close(a.ttl(), b.ttl())) << what << ": TTL plain " << a.ttl() << " proxy " << b.ttl();
      EXPECT_EQ(a.ttl() == 0, b.ttl() == 0) << what;
      if (!l.revoked) EXPECT_EQ(b.ttl(), l.ttl) << what << ": a renewal restarts the granted TTL";
      ++counts["keepalive"];
    }
    compare_keyspace(where);
  }
  std::string summary;
  for (const auto& [k, n] : counts) summary += " " + k + "=" + std::to_string(n);
  std::printf("lease seed %u: %d ops:%s\n", seed, op, summary.c_str());
  EXPECT_GT(counts["grant"], 5);
  EXPECT_GT(counts["revoke"], 2);
  EXPECT_GT(counts["put"], 10);
}

}  // namespace
}  // namespace esp::test
