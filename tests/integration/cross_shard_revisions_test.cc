// Revisions across shards (issue #17): Compact across shards, and list-then-watch, against three
// real etcd shards split at "i" and "s" (docs/semantics.md, "Revisions across shards", Compact).
// Each shard has its own revision counter; the tests first push the counters apart so that a
// revision from one shard lies in another's future or past.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "support/fixtures.h"
#include "support/watch_client.h"

namespace esp::test {
namespace {

using etcdserverpb::CompactionRequest;
using etcdserverpb::CompactionResponse;
using etcdserverpb::RangeRequest;
using etcdserverpb::RangeResponse;
using namespace std::chrono_literals;

constexpr char kCompacted[] = "etcdserver: mvcc: required revision has been compacted";
constexpr char kFutureRev[] = "etcdserver: mvcc: required revision is a future revision";

class CrossShardRevisionsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // No retention: a Compact takes effect at once, as on one etcd (the retention has a test of its own).
    setup_ = std::make_unique<ShardedSetup>(std::vector<int>{1, 1, 1},
                                            std::vector<std::string>{"--compaction-retention=0"});
  }
  static void TearDownTestSuite() {
    if (::testing::UnitTest::GetInstance()->failed_test_count() > 0) {
      std::cerr << "proxy log:\n" << setup_->proxy().process().Log() << std::endl;
    }
    setup_.reset();
  }
  void SetUp() override { kv_ = etcdserverpb::KV::NewStub(Connect(proxy())); }

  static std::string proxy() { return setup_->proxy().address(); }
  static std::string member(std::size_t shard) { return setup_->shard(shard).member(0).client_address(); }

  std::int64_t Put(const std::string& key, const std::string& value = "v") {
    etcdserverpb::PutRequest req;
    req.set_key(key);
    req.set_value(value);
    etcdserverpb::PutResponse resp;
    EXPECT_TRUE(kv_->Put(Ctx().get(), req, &resp).ok());
    return resp.header().revision();
  }
  // A shard's current revision, asked of the shard itself.
  static std::int64_t ShardRevision(std::size_t shard) {
    auto kv = etcdserverpb::KV::NewStub(Connect(member(shard)));
    RangeRequest req;
    req.set_key("x");
    RangeResponse resp;
    EXPECT_TRUE(kv->Range(Ctx().get(), req, &resp).ok());
    return resp.header().revision();
  }
  // Puts into shard `shard` (keys under `prefix`) until its revision is at least `revision`.
  std::int64_t RaiseTo(const std::string& prefix, std::int64_t revision) {
    std::int64_t now = 0;
    for (int i = 0; now < revision; ++i) now = Put(prefix + std::to_string(i));
    return now;
  }
  // Reads `key` at `revision` straight from `shard`.
  static grpc::Status ReadAt(std::size_t shard, const std::string& key, std::int64_t revision) {
    auto kv = etcdserverpb::KV::NewStub(Connect(member(shard)));
    RangeRequest req;
    req.set_key(key);
    req.set_revision(revision);
    RangeResponse resp;
    return kv->Range(Ctx().get(), req, &resp);
  }
  grpc::Status Compact(std::int64_t revision, bool physical = false, const std::string& address = "") {
    auto kv = address.empty() ? nullptr : etcdserverpb::KV::NewStub(Connect(address));
    CompactionRequest req;
    req.set_revision(revision);
    req.set_physical(physical);
    CompactionResponse resp;
    return (kv ? kv : kv_)->Compact(Ctx().get(), req, &resp);
  }

  static std::unique_ptr<ShardedSetup> setup_;
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
};
std::unique_ptr<ShardedSetup> CrossShardRevisionsTest::setup_;

// Kubernetes' compactor (etcd-facts.md fact 4): a CAS Txn on the unprefixed compact_rev_key (in
// shard 0 here), then Compact at that Txn's header revision. Shard 1's counter is ahead of it,
// shard 2's behind.
TEST_F(CrossShardRevisionsTest, CompactCompactsEveryShardThatReachedTheRevision) {
  const std::int64_t old0 = Put("cmp-a");  // shard 0, read back after the compaction
  const std::int64_t old2 = Put("t-cmp");  // shard 2
  RaiseTo("cmp-a-", std::max(ShardRevision(2), old0) + 5);
  RaiseTo("k-cmp-", ShardRevision(0) + 10);  // shard 1 well ahead

  etcdserverpb::TxnRequest txn;
  auto* cmp = txn.add_compare();
  cmp->set_key("compact_rev_key");
  cmp->set_target(etcdserverpb::Compare::VERSION);
  cmp->set_result(etcdserverpb::Compare::EQUAL);
  cmp->set_version(0);
  auto* put = txn.add_success()->mutable_request_put();
  put->set_key("compact_rev_key");
  put->set_value("0");
  txn.add_failure()->mutable_request_range()->set_key("compact_rev_key");
  etcdserverpb::TxnResponse txn_resp;
  ASSERT_TRUE(kv_->Txn(Ctx().get(), txn, &txn_resp).ok());
  const std::int64_t rev = txn_resp.header().revision();
  ASSERT_LT(ShardRevision(2), rev) << "shard 2 must be behind the compaction revision";
  ASSERT_GT(ShardRevision(1), rev) << "shard 1 must be ahead of it";

  const grpc::Status first = Compact(rev, /*physical=*/true);
  ASSERT_TRUE(first.ok()) << first.error_message();
  // Shard 0 (where the revision came from) and shard 1 (ahead) are compacted at it: reading
  // below it fails there, reading at it works.
  for (std::size_t shard : {0, 1}) {
    SCOPED_TRACE("shard " + std::to_string(shard));
    EXPECT_EQ(ReadAt(shard, "x", rev - 1).error_message(), kCompacted);
    EXPECT_TRUE(ReadAt(shard, "x", rev).ok());
  }
  EXPECT_EQ(ReadAt(0, "cmp-a", old0).error_message(), kCompacted);
  // Shard 2 had not reached it: left alone, its history still there.
  EXPECT_TRUE(ReadAt(2, "t-cmp", old2).ok());

  // Again: etcd's ErrCompacted, exactly (clientv3 and Kubernetes match on the message).
  const grpc::Status again = Compact(rev);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_EQ(again.error_message(), kCompacted);
  // A watch from before the compaction is canceled with compact_revision, as on etcd.
  WatchClient client(proxy());
  client.Create("cmp-a", "", 0, old0);
  const WatchResponse created = client.Expect();
  EXPECT_TRUE(created.created());
  const WatchResponse canceled = client.Expect();
  EXPECT_TRUE(canceled.canceled());
  EXPECT_EQ(canceled.compact_revision(), rev);
  // A revision no shard has reached: etcd's ErrFutureRev.
  const std::int64_t highest = std::max({ShardRevision(0), ShardRevision(1), ShardRevision(2)});
  const grpc::Status future = Compact(highest + 1000);
  EXPECT_EQ(future.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_EQ(future.error_message(), kFutureRev);
}

TEST_F(CrossShardRevisionsTest, EtcdctlCompaction) {
  const std::int64_t rev = Put("ctl-compact");
  const auto first = Etcdctl(proxy(), "compaction " + std::to_string(rev));
  EXPECT_EQ(first.exit_code, 0) << first.output;
  EXPECT_NE(first.output.find("compacted revision " + std::to_string(rev)), std::string::npos) << first.output;
  const auto again = Etcdctl(proxy(), "compaction " + std::to_string(rev));
  EXPECT_NE(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("required revision has been compacted"), std::string::npos) << again.output;
  const std::int64_t later = Put("ctl-compact");
  const auto physical = Etcdctl(proxy(), "compaction --physical " + std::to_string(later));
  EXPECT_EQ(physical.exit_code, 0) << physical.output;
  EXPECT_EQ(ReadAt(0, "ctl-compact", later - 1).error_message(), kCompacted);
}

// With a retention, no shard is compacted past the revision it had that long ago, whatever the
// client asks: every revision a client got within the retention stays readable.
TEST_F(CrossShardRevisionsTest, RetentionKeepsRecentHistoryOfEveryShard) {
  constexpr auto kRetention = 4s;
  const std::int64_t before = Put("b-ret");  // shard 0
  ASSERT_TRUE(ReadAt(0, "x", before - 1).ok());
  std::vector<ShardSpec> specs;
  const std::vector<std::pair<std::string, std::string>> bounds = {{"", "i"}, {"i", "s"}, {"s", ""}};
  for (std::size_t i = 0; i < bounds.size(); ++i) specs.push_back({bounds[i].first, bounds[i].second, {member(i)}});
  const auto spawned = std::chrono::steady_clock::now();
  ProxyProcess retaining(specs, {"--compaction-retention=4s"});
  retaining.Start();

  // Just started: the proxy has not seen any shard's revision 4 s ago, so nothing is compacted.
  const std::int64_t now = Put("b-ret");
  const grpc::Status early = Compact(now, false, retaining.address());
  if (std::chrono::steady_clock::now() - spawned < kRetention) {
    EXPECT_EQ(early.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << early.error_message();
    EXPECT_NE(early.error_message().find("--compaction-retention"), std::string::npos) << early.error_message();
    EXPECT_TRUE(ReadAt(0, "x", before - 1).ok());
  }

  // Keep writing and asking for a compaction at the latest revision, until one succeeds.
  struct Written {
    std::chrono::steady_clock::time_point started;
    std::int64_t revision;
  };
  std::vector<Written> written;
  std::chrono::steady_clock::time_point succeeded;
  ASSERT_TRUE(WaitFor(
      [&] {
        const auto started = std::chrono::steady_clock::now();
        written.push_back({started, Put("b-ret")});
        if (!Compact(written.back().revision, false, retaining.address()).ok()) return false;
        succeeded = std::chrono::steady_clock::now();
        return true;
      },
      30s, 200ms));
  // Something was compacted: the revision before the proxy started is gone...
  EXPECT_EQ(ReadAt(0, "x", before - 1).error_message(), kCompacted);
  // ...but nothing the shard reached within the retention before the compaction.
  int recent = 0;
  for (const auto& w : written) {
    if (w.started <= succeeded - kRetention) continue;
    ++recent;
    EXPECT_TRUE(ReadAt(0, "b-ret", w.revision).ok()) << "revision " << w.revision << " compacted";
  }
  EXPECT_GT(recent, 0);
  // A revision no shard has reached compacts nothing, even where the retention would allow some.
  const std::int64_t highest = std::max({ShardRevision(0), ShardRevision(1), ShardRevision(2)});
  EXPECT_EQ(Compact(highest + 1000, false, retaining.address()).error_message(), kFutureRev);
  EXPECT_TRUE(ReadAt(0, "b-ret", written.back().revision).ok());
}

// The reproduction with etcdctl alone: writes on shard 0, a list over all three shards,
// then a watch of a shard-2 prefix from the list's revision + 1, and two puts there.
TEST_F(CrossShardRevisionsTest, EtcdctlListThenWatchOfOneShardMissesNothing) {
  // Shards 0 and 1 ahead of shard 2 (the lowest, so that the watch below starts exactly after
  // the list rather than in history an earlier test may have compacted).
  RaiseTo("a-lw-", ShardRevision(2) + 10);
  RaiseTo("k-lw-", ShardRevision(2) + 10);
  const auto list = Etcdctl(proxy(), "get --prefix '' --keys-only --limit 1 -w json");
  ASSERT_EQ(list.exit_code, 0) << list.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(list.output, m, std::regex("\"revision\":(\\d+)"))) << list.output;
  const std::int64_t listed = std::stoll(m[1]);
  EXPECT_EQ(listed, std::min({ShardRevision(0), ShardRevision(1), ShardRevision(2)}));

  TempDir dir;
  ChildProcess watch({"env", "ETCDCTL_API=3", "etcdctl", "--endpoints", proxy(), "watch", "--prefix", "t-lw-",
                      "--rev", std::to_string(listed + 1)},
                     dir.path() / "watch.log");
  Put("t-lw-1", "one");
  Put("t-lw-2", "two");
  EXPECT_TRUE(WaitFor([&] { return watch.Log().find("PUT\nt-lw-2\ntwo\n") != std::string::npos; }, 10s))
      << watch.Log();
  EXPECT_NE(watch.Log().find("PUT\nt-lw-1\none\n"), std::string::npos) << watch.Log();
  watch.Terminate(2s);
}

// A revision from another shard that lies in this shard's future: a clear error, not a watch
// that waits and skips this shard's events up to that revision.
TEST_F(CrossShardRevisionsTest, EtcdctlWatchFromAnotherShardsRevisionIsRefused) {
  const std::int64_t rev0 = RaiseTo("fw-a-", ShardRevision(2) + 10);
  TempDir dir;
  ChildProcess watch({"env", "ETCDCTL_API=3", "etcdctl", "--endpoints", proxy(), "watch", "t-fw", "--rev",
                      std::to_string(rev0 + 1)},
                     dir.path() / "watch.log");
  EXPECT_TRUE(WaitFor([&] { return watch.Log().find(kFutureRev) != std::string::npos; }, 10s)) << watch.Log();
  EXPECT_TRUE(WaitFor([&] { return !watch.running(); }, 10s)) << "etcdctl still watching:\n" << watch.Log();
}

TEST_F(CrossShardRevisionsTest, SpanningAnswersCarryTheLowestShardRevision) {
  RaiseTo("a-low-", std::max(ShardRevision(1), ShardRevision(2)) + 5);
  const std::int64_t lowest = std::min({ShardRevision(0), ShardRevision(1), ShardRevision(2)});
  RangeRequest range;
  range.set_key("a");
  range.set_range_end("z");
  range.set_count_only(true);
  RangeResponse listed;
  ASSERT_TRUE(kv_->Range(Ctx().get(), range, &listed).ok());
  EXPECT_EQ(listed.header().revision(), lowest);
  // A spanning watch's `created` too.
  WatchClient client(proxy());
  client.Create("a", "z");
  const WatchResponse created = client.Expect();
  EXPECT_TRUE(created.created());
  EXPECT_EQ(created.header().revision(), lowest);
}

TEST_F(CrossShardRevisionsTest, WatchFromBeyondTheShardsRevisionIsRefused) {
  RaiseTo("fut-a-", ShardRevision(2) + 10);
  const std::int64_t rev2 = ShardRevision(2);
  WatchClient client(proxy());
  client.Create("t-fut", "", 0, rev2 + 5);
  const WatchResponse refused = client.Expect();
  EXPECT_TRUE(refused.created());
  EXPECT_TRUE(refused.canceled());
  EXPECT_EQ(refused.watch_id(), -1);
  EXPECT_EQ(refused.cancel_reason(), kFutureRev);
  EXPECT_EQ(refused.compact_revision(), 0);
  // From the shard's next revision is a watch from "now": created, and it sees the next put. A
  // refused create took no id, as in etcd.
  client.Create("t-fut", "", 0, rev2 + 1);
  const WatchResponse created = client.Expect();
  EXPECT_TRUE(created.created());
  EXPECT_FALSE(created.canceled()) << created.cancel_reason();
  EXPECT_EQ(created.watch_id(), 0);
  Put("t-fut", "x");
  const WatchResponse event = client.Expect();
  ASSERT_EQ(event.events_size(), 1);
  EXPECT_EQ(event.events(0).kv().key(), "t-fut");
}

}  // namespace
}  // namespace esp::test
