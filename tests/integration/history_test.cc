// The history checker (support/history.h) on real runs: four clients put unique values, read,
// delete and compare-and-swap counters through two proxies over three shards while two watchers
// watch; afterwards CheckHistory must find nothing. Then the same run broken on purpose: the test
// deletes acknowledged keys on a shard behind the proxies' backs (a mover that lost writes), and
// CheckHistory must report exactly those lost writes. Issue #16's mover tests build on this.
#include "support/history.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/differential.h"
#include "support/fixtures.h"
#include "support/history_workload.h"
#include "support/watch_client.h"

namespace esp::test {
namespace {

constexpr int kClients = 4;
constexpr auto kWorkload = std::chrono::seconds(3);

// Per shard ("a" < "i" <= "m" < "s" <= "t"): register keys and counter keys. Clients delete only
// register key 0 of each shard, so the broken run can pick keys no client ever deleted: their
// absence can only be a lost write.
const std::vector<std::string> kShardPrefixes = {"a", "m", "t"};

std::string RegisterKey(int shard, int i) { return kShardPrefixes[shard] + "/reg/" + std::to_string(i); }
std::string CounterKey(int shard, int i) { return kShardPrefixes[shard] + "/ctr/" + std::to_string(i); }

// A history's parts, to check mutated copies of a real run.
struct Parts {
  std::vector<Operation> ops;
  std::vector<WatchLog> watches;
  std::vector<std::pair<std::string, std::string>> scan;
  std::map<int, std::vector<WatchEvent>> logs;
};

Parts PartsOf(const History& h) {
  return Parts{h.operations(), h.watches(), h.final_scan().value_or(decltype(Parts::scan){}), h.shard_logs()};
}

HistoryReport CheckParts(const Parts& parts) {
  History h;
  for (const auto& op : parts.ops) h.Record(op);
  for (const auto& w : parts.watches) h.RecordWatch(w);
  h.RecordFinalScan(parts.scan);
  for (const auto& [space, events] : parts.logs) h.RecordShardLog(space, events);
  return CheckHistory(h);
}

// Exactly one violation, of `kind`, naming `key`.
void ExpectOne(const HistoryReport& report, ViolationKind kind, const std::string& key) {
  ASSERT_EQ(report.violations.size(), 1u) << report.ToString();
  EXPECT_EQ(report.violations[0].kind, kind) << report.ToString();
  EXPECT_EQ(report.violations[0].key, key) << report.ToString();
}

class HistoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::vector<std::pair<std::string, std::string>> bounds = {{"", "i"}, {"i", "s"}, {"s", ""}};
    std::vector<ShardSpec> specs;
    for (std::size_t i = 0; i < 3; ++i)
      specs.push_back({bounds[i].first, bounds[i].second, setup_.shard(i).ClientAddresses()});
    second_ = std::make_unique<ProxyProcess>(specs);
    second_->Start();
  }

  std::string Proxy(int i) { return i == 0 ? setup_.proxy().address() : second_->address(); }
  std::string Member(int shard) { return setup_.shard(shard).member(0).client_address(); }

  // The workload: clients alternate between the two proxies; watcher 1 watches shard 0's keys
  // through one proxy, watcher 2 shard 2's through the other, each from the shard's next revision.
  void RunWorkload() {
    watchers_.push_back(std::make_unique<Watcher>(1, Proxy(0), "a", "i", ShardRevision(Member(0)) + 1));
    watchers_.push_back(std::make_unique<Watcher>(2, Proxy(1), "s", kAll, ShardRevision(Member(2)) + 1));
    const auto until = History::Now() + kWorkload;
    std::vector<std::thread> threads;
    for (int c = 0; c < kClients; ++c) {
      threads.emplace_back([this, c, until] { Client(c, Proxy(c % 2), history_).Run(until); });
    }
    for (auto& t : threads) t.join();
  }

  // After the workload (and any sabotage): the shards' logs, the watchers caught up with them,
  // and the final scan through a proxy.
  void RecordEnd() {
    std::map<int, std::int64_t> revision;
    for (int s = 0; s < 3; ++s) {
      revision[s] = ShardRevision(Member(s));
      history_.RecordShardLog(s, ShardLog(s, Member(s), revision[s]));
    }
    const std::vector<int> watched_space = {0, 2};
    const auto logs = history_.shard_logs();
    for (std::size_t w = 0; w < watchers_.size(); ++w) {
      const int space = watched_space[w];
      // The last event of the watched range: the watcher must get it (a gap otherwise).
      std::int64_t last = 0;
      for (const auto& e : logs.at(space)) {
        if (e.key >= watchers_[w]->key() && (watchers_[w]->range_end() == kAll || e.key < watchers_[w]->range_end())) {
          last = e.mod_revision;
        }
      }
      if (last > 0) watchers_[w]->AwaitRevision(last, 10s);
      history_.RecordWatch(watchers_[w]->Finish(space, revision[space]));
    }
    watchers_.clear();
    auto kv = etcdserverpb::KV::NewStub(Connect(Proxy(0)));
    RangeRequest req;
    req.set_key("a");
    req.set_range_end(kAll);
    RangeResponse resp;
    const auto status = kv->Range(Ctx().get(), req, &resp);
    ASSERT_TRUE(status.ok()) << status.error_message();
    std::vector<std::pair<std::string, std::string>> scan;
    for (const auto& kv_pair : resp.kvs()) scan.emplace_back(kv_pair.key(), kv_pair.value());
    history_.RecordFinalScan(std::move(scan));
  }

  // Counts of acknowledged operations by kind, so a run that did nothing cannot pass.
  void ExpectBusyRun() {
    std::map<OpKind, int> acked;
    for (const auto& op : history_.operations()) acked[op.kind] += op.outcome == Outcome::kOk;
    std::printf("acknowledged: %d puts, %d gets, %d deletes, %d increments\n", acked[OpKind::kPut], acked[OpKind::kGet],
                acked[OpKind::kDelete], acked[OpKind::kCasIncrement]);
    EXPECT_GT(acked[OpKind::kPut], 50);
    EXPECT_GT(acked[OpKind::kGet], 30);
    EXPECT_GT(acked[OpKind::kCasIncrement], 10);
    for (const auto& w : history_.watches()) {
      EXPECT_GT(w.events.size(), 10u) << "watcher " << w.watcher;
      EXPECT_EQ(w.end, WatchEnd::kOpen) << "watcher " << w.watcher << ": " << w.error;
    }
  }

  ShardedSetup setup_;
  std::unique_ptr<ProxyProcess> second_;
  History history_;
  std::vector<std::unique_ptr<Watcher>> watchers_;
};

TEST_F(HistoryTest, CorrectRunHasNoViolations) {
  RunWorkload();
  RecordEnd();
  ExpectBusyRun();
  const auto report = CheckHistory(history_);
  EXPECT_TRUE(report.ok()) << report.ToString();

  // The rules are live on this run's data: one dropped watch event, one counter short by one.
  const Parts parts = PartsOf(history_);
  {
    Parts gap = parts;
    auto& events = gap.watches.at(0).events;
    ASSERT_GT(events.size(), 2u);
    const auto dropped = events[events.size() / 2];
    events.erase(events.begin() + static_cast<std::ptrdiff_t>(events.size() / 2));
    ExpectOne(CheckParts(gap), ViolationKind::kWatchGap, dropped.key);
  }
  {
    Parts short_counter = parts;
    for (auto& [key, value] : short_counter.scan) {
      if (key.find("/ctr/") == std::string::npos) continue;
      value = std::to_string(std::stoll(value) - 1);
      ExpectOne(CheckParts(short_counter), ViolationKind::kCounter, key);
      break;
    }
  }
}

// A "mover" that loses writes: acknowledged keys deleted on their shard behind the proxies' backs.
// The checker must report exactly those keys as lost writes (nothing else: the watchers see the
// deletes, which are in the shards' logs).
TEST_F(HistoryTest, LostWritesOfBrokenMoverAreReported) {
  RunWorkload();
  std::map<std::string, std::string> lost;  // key -> the value it held
  for (int s = 0; s < 3; ++s) {
    auto kv = etcdserverpb::KV::NewStub(Connect(Member(s)));
    for (int i = 1; i <= 2; ++i) {  // never deleted by clients (see kShardPrefixes)
      DeleteRangeRequest req;
      req.set_key(RegisterKey(s, i));
      req.set_prev_kv(true);
      DeleteRangeResponse resp;
      ASSERT_TRUE(kv->DeleteRange(Ctx().get(), req, &resp).ok());
      if (resp.prev_kvs_size() > 0) lost[req.key()] = resp.prev_kvs(0).value();
    }
  }
  ASSERT_GE(lost.size(), 3u) << "the workload wrote too few keys";
  RecordEnd();
  ExpectBusyRun();
  const auto report = CheckHistory(history_);
  std::printf("%s", report.ToString().c_str());  // what a mover that loses writes looks like
  SCOPED_TRACE(report.ToString());
  std::set<std::string> reported;
  for (const auto& v : report.violations) {
    EXPECT_EQ(v.kind, ViolationKind::kLostWrite) << v.message;
    reported.insert(v.key);
    if (lost.contains(v.key)) {
      EXPECT_NE(v.message.find("\"" + lost[v.key] + "\""), std::string::npos)
          << "the report should name the lost value " << lost[v.key] << ": " << v.message;
    }
  }
  std::set<std::string> expected;
  for (const auto& [key, value] : lost) expected.insert(key);
  EXPECT_EQ(reported, expected);
}

}  // namespace
}  // namespace esp::test
