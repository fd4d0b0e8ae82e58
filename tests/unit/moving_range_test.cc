// What the proxies know of a range move (shard/moving_range.h, move/guarded_call.h) and the map
// document's move record (meta/map_document.h).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>

#include "meta/map_document.h"
#include "move/guarded_call.h"
#include "shard/moving_range.h"
#include "upstream/topology.h"

namespace esp {
namespace {

const std::string kAllKeys("\0", 1);

TEST(MovingRange, RequestOverlapsFollowsEtcdsRangeConventions) {
  // A single key.
  EXPECT_TRUE(RequestOverlaps("m", "", "m", "n"));
  EXPECT_TRUE(RequestOverlaps("m/x", "", "m", "n"));
  EXPECT_FALSE(RequestOverlaps("n", "", "m", "n"));
  EXPECT_FALSE(RequestOverlaps("l", "", "m", "n"));
  // Ranges: any shared key.
  EXPECT_TRUE(RequestOverlaps("a", "z", "m", "n"));
  EXPECT_TRUE(RequestOverlaps("m/5", "m/6", "m", "n"));
  EXPECT_FALSE(RequestOverlaps("a", "m", "m", "n"));  // end exclusive
  EXPECT_FALSE(RequestOverlaps("n", "o", "m", "n"));
  // "every key >= key" and an unbounded moving range.
  EXPECT_TRUE(RequestOverlaps("a", kAllKeys, "m", "n"));
  EXPECT_FALSE(RequestOverlaps("n", kAllKeys, "m", "n"));
  EXPECT_TRUE(RequestOverlaps("z", "", "m", ""));
  EXPECT_TRUE(RequestOverlaps("a", kAllKeys, "m", ""));
  EXPECT_FALSE(RequestOverlaps("a", "m", "m", ""));
  // An inverted range is one key to etcd's routing (the shard answers it).
  EXPECT_TRUE(RequestOverlaps("m/1", "a", "m", "n"));
}

TEST(MovingRange, FenceKeysLieInsideTheRangeAndAreRecognised) {
  const std::string fence = FenceKey("m", "0123abcd");
  EXPECT_GT(fence, std::string("m"));
  EXPECT_LT(fence, std::string("n"));
  EXPECT_TRUE(IsFenceKey(fence));
  EXPECT_FALSE(IsFenceKey("m/etcd-sharding-proxy/move-fence/x"));  // no NUL: a client's key
  EXPECT_FALSE(IsFenceKey(std::string("m\0x", 3)));
}

TEST(MovingRange, FloorIsTheHighestOfTheRangesARequestTouches) {
  const std::vector<RevisionFloor> floors = {{"m", "n", 40}, {"p", "q", 90}};
  EXPECT_EQ(FloorFor(floors, "m/1", ""), 40);
  EXPECT_EQ(FloorFor(floors, "a", "z"), 90);
  EXPECT_EQ(FloorFor(floors, "n", "p"), 0);
  EXPECT_EQ(FloorFor({}, "m", ""), 0);
}

meta::MapDocument TwoShards() {
  meta::MapDocument doc;
  doc.version = 7;
  ShardConfig a;
  a.name = "s1";
  a.endpoints = {"127.0.0.1:1"};
  ShardConfig b = a;
  b.name = "s2";
  doc.shards = {a, b};
  doc.ranges = {{"", "m", "s1"}, {"m", "n", "s1"}, {"n", "", "s2"}};
  return doc;
}

TEST(MovingRange, MapDocumentCarriesTheMoveAndFloorsToTheTopology) {
  auto doc = TwoShards();
  doc.move = meta::MoveRecord{"abc", "m", "n", "s1", "s2", "copying", "2026-12-05T00:00:00Z"};
  const auto parsed = meta::MapDocument::FromJson(doc.ToJson());
  ASSERT_TRUE(parsed.move.has_value());
  EXPECT_EQ(parsed.move->id, "abc");
  EXPECT_EQ(parsed.move->state, "copying");
  const auto layout = parsed.ToLayout();
  ASSERT_TRUE(layout.moving.has_value());
  EXPECT_EQ(layout.moving->source, 0u);
  EXPECT_EQ(layout.moving->fence_key, FenceKey("m", "abc"));
  EXPECT_TRUE(layout.floors.empty());

  // Switched: the target owns the range from its floor on; nothing is guarded any more.
  doc.ranges[1].shard = "s2";
  doc.ranges[1].min_revision = 1234;
  doc.move->state = "cleanup";
  const auto switched = meta::MapDocument::FromJson(doc.ToJson()).ToLayout();
  EXPECT_FALSE(switched.moving.has_value());
  ASSERT_EQ(switched.floors.size(), 1u);
  EXPECT_EQ(switched.floors[0].revision, 1234);
}

TEST(MovingRange, AMoveRecordThatContradictsTheRangesIsRefused) {
  auto doc = TwoShards();
  doc.move = meta::MoveRecord{"abc", "m", "n", "s1", "s2", "cleanup", ""};  // s1 still owns it
  EXPECT_THROW(meta::MapDocument::FromJson(doc.ToJson()), ConfigError);
  doc.move = meta::MoveRecord{"abc", "m", "o", "s1", "s2", "copying", ""};  // not an entry
  EXPECT_THROW(meta::MapDocument::FromJson(doc.ToJson()), ConfigError);
  doc.move = meta::MoveRecord{"abc", "m", "n", "s1", "s1", "copying", ""};
  EXPECT_THROW(meta::MapDocument::FromJson(doc.ToJson()), ConfigError);
}

TEST(MovingRange, TxnsAreGuardedOnlyWhenTheyTouchTheMovingRangeOnItsSource) {
  Topology topology{ShardMap({"s1", "s2"}, {{"", "n", 0}, {"n", "", 1}}), {}, {}, 3,
                    MovingRange{"m", "n", 0, "s2", FenceKey("m", "id")}, {}};
  etcdserverpb::TxnRequest elsewhere;
  elsewhere.add_success()->mutable_request_put()->set_key("a");
  EXPECT_FALSE(move::TxnMustGuard(topology, 0, elsewhere));
  etcdserverpb::TxnRequest compares;
  compares.add_compare()->set_key("m/1");
  EXPECT_TRUE(move::TxnMustGuard(topology, 0, compares));
  etcdserverpb::TxnRequest nested;
  nested.add_failure()->mutable_request_txn()->add_success()->mutable_request_delete_range()->set_key("m/2");
  EXPECT_TRUE(move::TxnMustGuard(topology, 0, nested));
  EXPECT_FALSE(move::TxnMustGuard(topology, 1, nested));  // another shard
  EXPECT_TRUE(move::MustGuard(topology, 0, "a", kAllKeys));
  EXPECT_FALSE(move::MustGuard(topology, 0, "a", "m"));
}

TEST(TopologyHolder, AwaitNewerWakesOnPublishAndTimesOut) {
  auto first = std::make_shared<Topology>(Topology{ShardMap({"s1"}, {{"", "", 0}}), {}, {}, 5, {}, {}});
  TopologyHolder holder(first);
  std::atomic<int> woken{0};
  std::atomic<int> timed_out{0};
  holder.AwaitNewer(5, std::chrono::system_clock::now() + std::chrono::seconds(30),
                    [&](bool arrived) { (arrived ? woken : timed_out)++; });
  holder.AwaitNewer(4, std::chrono::system_clock::now() + std::chrono::seconds(30),  // already newer
                    [&](bool arrived) { (arrived ? woken : timed_out)++; });
  EXPECT_EQ(woken.load(), 1);
  auto second = std::make_shared<Topology>(*first);
  second->map_version = 6;
  holder.Publish(second);
  EXPECT_EQ(woken.load(), 2);
  std::promise<bool> outcome;
  holder.AwaitNewer(6, std::chrono::system_clock::now() + std::chrono::milliseconds(50),
                    [&](bool arrived) { outcome.set_value(arrived); });
  auto future = outcome.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  if (!future.get()) timed_out++;
  EXPECT_EQ(timed_out.load(), 1);
  EXPECT_EQ(woken.load(), 2);
}

}  // namespace
}  // namespace esp
