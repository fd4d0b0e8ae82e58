#pragma once
// A client workload for history checks (support/history.h), through the proxy: clients that put
// unique values, read, delete and compare-and-swap counters, and watchers that log what they get.
// Used by the history test and the range-move tests.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "support/differential.h"
#include "support/fixtures.h"
#include "support/history.h"
#include "support/watch_client.h"

namespace esp::test {

using etcdserverpb::Compare;

inline constexpr auto kRpcTimeout = std::chrono::milliseconds(2000);
inline constexpr int kRegistersPerShard = 5;
inline constexpr int kCountersPerShard = 2;

// What a finished call tells about its effect: only a definite refusal is kFailed.
inline Outcome OutcomeOf(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return Outcome::kOk;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::UNIMPLEMENTED:
      return Outcome::kFailed;
    default:  // timeouts, unavailable, broken connections: the request may have been applied
      return Outcome::kUnknown;
  }
}

// One client: a thread with its own channel to one proxy, recording every operation.
class Client {
 public:
  // `prefixes`: one per key group (e.g. one per shard); register keys "<prefix>/reg/<i>",
  // counters "<prefix>/ctr/<i>". Deletes take register 0 of a group only.
  Client(int id, const std::string& proxy, History& history,
         std::vector<std::string> prefixes = {"a", "m", "t"})
      : id_(id), kv_(etcdserverpb::KV::NewStub(Connect(proxy))), history_(history), rng_(Seed() + id),
        prefixes_(std::move(prefixes)) {}

  void Run(HistoryClock::time_point until) {
    while (History::Now() < until) {
      const int dice = Pick(0, 99);
      if (dice < 45) {
        Put();
      } else if (dice < 75) {
        Get();
      } else if (dice < 80) {
        Delete();
      } else {
        CasIncrement();
      }
    }
  }

 private:
  int Pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  int AnyGroup() { return Pick(0, static_cast<int>(prefixes_.size()) - 1); }
  std::string Register(int group, int i) const { return prefixes_[group] + "/reg/" + std::to_string(i); }
  std::string AnyRegister() { return Register(AnyGroup(), Pick(0, kRegistersPerShard - 1)); }

  Operation Begin(OpKind kind, const std::string& key) {
    Operation op;
    op.process = id_;
    op.kind = kind;
    op.key = key;
    op.invoke = History::Now();
    return op;
  }
  void End(Operation op, const grpc::Status& status, std::int64_t revision) {
    op.complete = History::Now();
    if (op.outcome != Outcome::kFailed) op.outcome = OutcomeOf(status);
    op.revision = status.ok() ? revision : 0;
    history_.Record(std::move(op));
  }

  void Put() {
    auto op = Begin(OpKind::kPut, AnyRegister());
    op.value = "c" + std::to_string(id_) + "-" + std::to_string(++seq_);  // unique in the run
    PutRequest req;
    req.set_key(op.key);
    req.set_value(op.value);
    PutResponse resp;
    const auto status = kv_->Put(Ctx(kRpcTimeout).get(), req, &resp);
    End(std::move(op), status, resp.header().revision());
  }

  void Get() {
    auto op = Begin(OpKind::kGet, AnyRegister());
    RangeRequest req;
    req.set_key(op.key);
    RangeResponse resp;
    const auto status = kv_->Range(Ctx(kRpcTimeout).get(), req, &resp);
    if (!status.ok()) return;  // a read that failed observed nothing
    if (resp.kvs_size() > 0) {
      op.found = true;
      op.value = resp.kvs(0).value();
      op.mod_revision = resp.kvs(0).mod_revision();
    }
    End(std::move(op), status, resp.header().revision());
  }

  void Delete() {
    auto op = Begin(OpKind::kDelete, Register(AnyGroup(), 0));
    DeleteRangeRequest req;
    req.set_key(op.key);
    DeleteRangeResponse resp;
    const auto status = kv_->DeleteRange(Ctx(kRpcTimeout).get(), req, &resp);
    End(std::move(op), status, resp.header().revision());
  }

  // Reads the counter, then puts value + 1 if its mod_revision is still the one read (0: absent,
  // which etcd compares as 0).
  void CasIncrement() {
    const auto key = prefixes_[AnyGroup()] + "/ctr/" + std::to_string(Pick(0, kCountersPerShard - 1));
    RangeRequest read;
    read.set_key(key);
    RangeResponse current;
    if (!kv_->Range(Ctx(kRpcTimeout).get(), read, &current).ok()) return;  // nothing was attempted
    const bool found = current.kvs_size() > 0;
    const std::int64_t value = found ? std::stoll(current.kvs(0).value()) : 0;
    auto op = Begin(OpKind::kCasIncrement, key);
    op.expected = found ? current.kvs(0).value() : "";
    op.value = std::to_string(value + 1);
    TxnRequest txn;
    auto* cmp = txn.add_compare();
    cmp->set_key(key);
    cmp->set_target(Compare::MOD);
    cmp->set_result(Compare::EQUAL);
    cmp->set_mod_revision(found ? current.kvs(0).mod_revision() : 0);
    auto* put = txn.add_success()->mutable_request_put();
    put->set_key(key);
    put->set_value(op.value);
    TxnResponse resp;
    const auto status = kv_->Txn(Ctx(kRpcTimeout).get(), txn, &resp);
    if (status.ok() && !resp.succeeded()) op.outcome = Outcome::kFailed;  // compare failed: not applied
    End(std::move(op), status, resp.header().revision());
  }

  const int id_;
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
  History& history_;
  std::mt19937 rng_;
  std::vector<std::string> prefixes_;
  int seq_ = 0;
};

// A watcher through a proxy, logging what it receives (under the WatchClient's lock).
class Watcher {
 public:
  // `space`: the revision space (shard) its events come from; -1: ShardOf(key) of each event.
  Watcher(int id, const std::string& proxy, std::string key, std::string range_end, std::int64_t start, int space = -1)
      : space_(space), client_(proxy, "", [this](const WatchResponse& r) { return Log(r); }) {
    log_.watcher = id;
    log_.key = std::move(key);
    log_.range_end = std::move(range_end);
    log_.start_revision = start;
    client_.Create(log_.key, log_.range_end, 0, start);
  }

  // Waits (bounded) until it has an event at `revision` or later, or its watch ended.
  bool AwaitRevision(std::int64_t revision, std::chrono::milliseconds timeout) {
    return client_.AwaitThen(
        [&] {
          return log_.end != WatchEnd::kOpen || (!log_.events.empty() && log_.events.back().mod_revision >= revision);
        },
        timeout, [&] { return !log_.events.empty() && log_.events.back().mod_revision >= revision; });
  }
  const std::string& key() const { return log_.key; }  // set before the watch began
  const std::string& range_end() const { return log_.range_end; }
  WatchLog Finish(int space, std::int64_t synced_through) {
    return client_.Locked([&] {
      WatchLog log = log_;
      log.synced_through[space] = synced_through;
      return log;
    });
  }

  bool ended() { return client_.Locked([&] { return log_.end != WatchEnd::kOpen; }); }
  WatchLog Snapshot() { return client_.Locked([&] { return log_; }); }

 private:
  bool Log(const WatchResponse& r) {
    for (const auto& e : r.events()) {
      const auto type = e.type() == mvccpb::Event::DELETE ? EventType::kDelete : EventType::kPut;
      log_.events.push_back(
          WatchEvent{space_ >= 0 ? space_ : ShardOf(e.kv().key()), type, e.kv().key(), e.kv().value(), e.kv().mod_revision()});
    }
    if (r.canceled()) {
      log_.end = r.compact_revision() > 0 ? WatchEnd::kCompacted : WatchEnd::kError;
      log_.compact_revision = r.compact_revision();
      log_.error = r.cancel_reason();
    }
    return false;  // all is in the log
  }

 private:
  const int space_;
  WatchLog log_;  // guarded by client_'s lock; declared first: the client's reader writes it
  WatchClient client_;
};

inline std::int64_t ShardRevision(const std::string& member) {
  auto kv = etcdserverpb::KV::NewStub(Connect(member));
  RangeRequest req;
  req.set_key("a");
  RangeResponse resp;
  const auto status = kv->Range(Ctx().get(), req, &resp);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return resp.header().revision();
}

// Every event of a shard up to `revision`, read from the shard itself (nothing is compacted).
// Every event of a shard from revision `from` up to `revision`, read from the shard itself
// (nothing there compacted).
inline std::vector<WatchEvent> ShardLog(int space, const std::string& member, std::int64_t revision,
                                        std::int64_t from = 1) {
  std::vector<WatchEvent> events;
  WatchClient client(member, "", [&](const WatchResponse& r) {
    for (const auto& e : r.events()) {
      const auto type = e.type() == mvccpb::Event::DELETE ? EventType::kDelete : EventType::kPut;
      events.push_back(WatchEvent{space, type, e.kv().key(), e.kv().value(), e.kv().mod_revision()});
    }
    return false;
  });
  client.Create(kAll, kAll, 0, from);
  const auto reached = [&] { return revision < std::max<std::int64_t>(from, 2) || (!events.empty() && events.back().mod_revision >= revision); };
  const bool complete = client.AwaitThen(reached, 30s, reached);
  EXPECT_TRUE(complete) << "shard " << space << "'s log did not reach revision " << revision;
  return client.Locked([&] { return events; });
}


}  // namespace esp::test
