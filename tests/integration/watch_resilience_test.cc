// Watch against real etcd shards where one shard has three members: etcd's progress
// notifications (with a short --experimental-watch-progress-notify-interval) through single-shard
// and spanning watches, and exact delivery while that shard's members are killed (SIGKILL) and
// restarted one after another under a running writer.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "support/watch_client.h"
#include "support/fixtures.h"

namespace esp::test {
namespace {

std::size_t ShardOf(const std::string& key) { return key < "i" ? 0 : key < "s" ? 1 : 2; }

class WatchResilienceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setup_ = std::make_unique<ShardedSetup>(
        std::vector<int>{3, 1, 1}, std::vector<std::string>{},
        std::vector<std::string>{"--experimental-watch-progress-notify-interval", "300ms"});
  }
  static void TearDownTestSuite() {
    if (::testing::UnitTest::GetInstance()->failed_test_count() > 0) {
      std::cerr << "proxy log:\n" << setup_->proxy().process().Log() << std::endl;
    }
    setup_.reset();
  }
  void SetUp() override { kv_ = etcdserverpb::KV::NewStub(Connect(proxy())); }

  static std::string proxy() { return setup_->proxy().address(); }
  static std::string member(std::size_t shard, std::size_t m = 0) {
    return setup_->shard(shard).member(m).client_address();
  }

  std::int64_t Put(const std::string& key, const std::string& value) {
    etcdserverpb::PutRequest req;
    req.set_key(key);
    req.set_value(value);
    etcdserverpb::PutResponse resp;
    EXPECT_TRUE(kv_->Put(Ctx().get(), req, &resp).ok());
    return resp.header().revision();
  }
  static std::int64_t ShardRevision(std::size_t shard) {
    auto kv = etcdserverpb::KV::NewStub(Connect(member(shard)));
    etcdserverpb::RangeRequest req;
    req.set_key(kAll);
    req.set_count_only(true);
    etcdserverpb::RangeResponse resp;
    EXPECT_TRUE(kv->Range(Ctx().get(), req, &resp).ok());
    return resp.header().revision();
  }
  static WatchResponse CreateAndAwait(WatchClient& client, WatchCreateRequest create) {
    client.Create(std::move(create));
    WatchResponse created = client.Expect();
    EXPECT_TRUE(created.created() && !created.canceled()) << created.cancel_reason();
    return created;
  }
  static WatchCreateRequest Range(const std::string& key, const std::string& end, bool progress_notify = false) {
    WatchCreateRequest create;
    create.set_key(key);
    create.set_range_end(end);
    create.set_progress_notify(progress_notify);
    return create;
  }

  static std::unique_ptr<ShardedSetup> setup_;
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
};
std::unique_ptr<ShardedSetup> WatchResilienceTest::setup_;

TEST_F(WatchResilienceTest, ProgressNotifyOnASingleShardWatch) {
  WatchClient client(proxy());
  const auto created = CreateAndAwait(client, Range("a-pn", "", true));
  const std::int64_t revision = Put("b-pn", "elsewhere on shard 0");  // no event for the watch
  // etcd's notification: watch_id of the watch, no events, the shard's revision.
  bool notified = false;
  while (!notified) {
    const auto r = client.Next(5s);
    ASSERT_TRUE(r.has_value()) << "no progress notification";
    ASSERT_FALSE(r->canceled()) << r->cancel_reason();
    EXPECT_EQ(r->events_size(), 0);
    EXPECT_EQ(r->watch_id(), created.watch_id());
    notified = r->header().revision() >= revision;
  }
}

TEST_F(WatchResilienceTest, ProgressNotifyOnASpanningWatchComesFromEveryShard) {
  WatchClient client(proxy());
  const auto created = CreateAndAwait(client, Range("a-pn", "z-pn", true));
  // Each shard notifies with its own header: three distinct clusters, all under the watch's id.
  std::set<std::uint64_t> clusters;
  while (clusters.size() < 3) {
    const auto r = client.Next(5s);
    ASSERT_TRUE(r.has_value()) << "progress from " << clusters.size() << " shards only";
    ASSERT_EQ(r->events_size(), 0);
    EXPECT_EQ(r->watch_id(), created.watch_id());
    clusters.insert(r->header().cluster_id());
  }
}

// The writer does random puts and deletes over keys on all shards while shard 0's members are
// SIGKILLed and restarted one after another (whichever member the proxy's upstream stream uses,
// it breaks at least once). Every watcher through the proxy (a spanning one and two coalesced
// ones on shard 0) must then hold exactly each shard's history for its range: compared with a
// watch opened on each shard directly afterwards, from the revision before the writer started.
TEST_F(WatchResilienceTest, ZzExactWhileShardMembersAreKilledAndRestarted) {
  std::int64_t start[3];
  for (std::size_t s = 0; s < 3; ++s) start[s] = ShardRevision(s);
  WatchClient everything(proxy());
  WatchClient shard0_a(proxy());
  WatchClient shard0_b(proxy());
  CreateAndAwait(everything, Range(kAll, kAll));
  CreateAndAwait(shard0_a, Range("a", "i"));
  CreateAndAwait(shard0_b, Range("a", "i"));

  std::atomic<int> ops{0};
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    auto kv = etcdserverpb::KV::NewStub(Connect(proxy()));
    std::mt19937 rng(7);
    const std::string letters = "abcdefghijklmnopqrstuvwxyz";
    while (!stop || ops < 300) {
      const std::string key = std::string(1, letters[rng() % letters.size()]) + "-k" + std::to_string(rng() % 5);
      // A failed call (member just killed) may or may not have applied: the shard's history is
      // the reference either way.
      if (rng() % 3 == 0) {
        etcdserverpb::DeleteRangeRequest req;
        req.set_key(key);
        etcdserverpb::DeleteRangeResponse resp;
        kv->DeleteRange(Ctx(2s).get(), req, &resp);
      } else {
        etcdserverpb::PutRequest req;
        req.set_key(key);
        req.set_value(std::to_string(ops.load()));
        etcdserverpb::PutResponse resp;
        kv->Put(Ctx(2s).get(), req, &resp);
      }
      ++ops;
    }
  });
  for (std::size_t m = 0; m < 3; ++m) {
    const int mark = ops.load();
    ASSERT_TRUE(WaitFor([&] { return ops >= mark + 40; }, 20s));
    setup_->shard(0).KillMember(m);
    const int killed_at = ops.load();
    ASSERT_TRUE(WaitFor([&] { return ops >= killed_at + 40; }, 20s));  // writes go on meanwhile
    setup_->shard(0).StartMember(m);
    setup_->shard(0).WaitReady();
  }
  stop = true;
  writer.join();

  using Seen = std::vector<std::tuple<int, std::string, std::string, std::int64_t>>;
  std::int64_t last[3];
  for (std::size_t s = 0; s < 3; ++s) last[s] = ShardRevision(s);
  // Reads a client until each shard in `shards` has reached its last revision.
  auto drain = [&](WatchClient& client, const std::set<std::size_t>& shards) {
    std::map<std::size_t, Seen> seen;
    std::map<std::size_t, std::int64_t> reached;
    for (const std::size_t s : shards) reached[s] = start[s];
    auto done = [&] {
      for (const std::size_t s : shards) {
        if (reached[s] < last[s]) return false;
      }
      return true;
    };
    while (!done()) {
      const auto r = client.Next(15s);
      if (!r) break;
      EXPECT_FALSE(r->canceled()) << r->cancel_reason();
      for (const auto& e : r->events()) {
        const std::size_t s = ShardOf(e.kv().key());
        seen[s].emplace_back(e.type(), e.kv().key(), e.kv().value(), e.kv().mod_revision());
        reached[s] = std::max(reached[s], e.kv().mod_revision());
      }
    }
    return seen;
  };
  std::map<std::size_t, Seen> reference;
  for (std::size_t s = 0; s < 3; ++s) {
    WatchClient direct(member(s));
    WatchCreateRequest create = Range(kAll, kAll);
    create.set_start_revision(start[s] + 1);
    CreateAndAwait(direct, create);
    reference[s] = drain(direct, {s})[s];
  }
  const auto all = drain(everything, {0, 1, 2});
  for (std::size_t s = 0; s < 3; ++s) {
    EXPECT_EQ(all.count(s) ? all.at(s) : Seen{}, reference[s]) << "spanning watch, shard " << s;
  }
  EXPECT_EQ(drain(shard0_a, {0})[0], reference[0]) << "coalesced watch a";
  EXPECT_EQ(drain(shard0_b, {0})[0], reference[0]) << "coalesced watch b";
  std::cout << "writer ops " << ops.load() << ", shard 0 events " << reference[0].size() << std::endl;
  EXPECT_GT(reference[0].size(), 50u);
}

}  // namespace
}  // namespace esp::test
