// PendingLeases against a fake shard: deferred grants and revokes, and a shard that stays down.
#include "lease/pending.h"

#include <gtest/gtest.h>

#include "etcdserverpb/rpc.pb.h"

namespace esp {
namespace {

// Answers every unary call with `answer`, or holds it when `hold` is set.
class FakeShard final : public ShardTransport {
 public:
  const std::string& description() const override { return description_; }
  void Unary(const std::string& method, const CallContextPtr&, std::string request, UnaryOptions,
             UnaryDone done) override {
    calls.emplace_back(method, request);
    if (hold) {
      held.push_back(std::move(done));
      return;
    }
    done(answer, {});
  }
  std::shared_ptr<UpstreamStream> OpenStream(const std::string&, const Metadata&,
                                             std::shared_ptr<UpstreamStreamObserver>) override {
    return nullptr;
  }

  Status answer;
  bool hold = false;
  std::vector<UnaryDone> held;
  std::vector<std::pair<std::string, std::string>> calls;

 private:
  std::string description_ = "fake";
};

class PendingLeasesTest : public ::testing::Test {
 protected:
  PendingLeasesTest()
      : shard_(std::make_shared<FakeShard>()),
        topology_(std::make_shared<const Topology>(Topology{ShardMap({{"s0", "", ""}}), {shard_}})),
        pending_(std::make_shared<PendingLeases>(topology_)) {}

  std::shared_ptr<FakeShard> shard_;
  TopologyHolder topology_;
  std::shared_ptr<PendingLeases> pending_;
};

TEST_F(PendingLeasesTest, NotFoundGrantsThePendingLeaseWithItsRemainingTtl) {
  pending_->AddGrant("s0", 5, 30);
  std::optional<bool> result;
  pending_->OnLeaseNotFound(0, {5}, [&](bool granted) { result = granted; });
  ASSERT_EQ(result, true);
  ASSERT_EQ(shard_->calls.size(), 1u);
  etcdserverpb::LeaseGrantRequest request;
  ASSERT_TRUE(request.ParseFromString(shard_->calls[0].second));
  EXPECT_EQ(request.id(), 5);
  EXPECT_GE(request.ttl(), 29);
  EXPECT_LE(request.ttl(), 30);
  EXPECT_EQ(pending_->size(), 0u);
}

TEST_F(PendingLeasesTest, UnknownLeaseIsNotGranted) {
  std::optional<bool> result;
  pending_->OnLeaseNotFound(0, {5}, [&](bool granted) { result = granted; });
  EXPECT_EQ(result, false);
  EXPECT_TRUE(shard_->calls.empty());
}

TEST_F(PendingLeasesTest, AlreadyExistsCountsAsGranted) {
  pending_->AddGrant("s0", 5, 30);
  shard_->answer = Status(StatusCode::kFailedPrecondition, "etcdserver: lease already exists");
  pending_->Flush();
  EXPECT_EQ(pending_->size(), 0u);
}

TEST_F(PendingLeasesTest, ShardStillDownCostsOneCallPerFlush) {
  for (int64_t id = 1; id <= 10; ++id) pending_->AddGrant("s0", id, 30);
  shard_->answer = Status(StatusCode::kUnavailable, "shard \"s0\": failed to connect to all addresses");
  pending_->Flush();
  EXPECT_EQ(shard_->calls.size(), 1u);
  EXPECT_EQ(pending_->size(), 10u);
  shard_->answer = Status::Ok();
  pending_->Flush();
  EXPECT_EQ(pending_->size(), 0u);
}

TEST_F(PendingLeasesTest, RevokeQueuedDuringAGrantIsKept) {
  pending_->AddGrant("s0", 5, 30);
  shard_->hold = true;
  pending_->Flush();
  pending_->DropGrants(5);
  pending_->AddRevoke("s0", 5);
  shard_->held.front()(Status::Ok(), {});  // the grant lands after the revoke was queued
  EXPECT_EQ(pending_->size(), 1u);
  shard_->hold = false;
  pending_->Flush();
  EXPECT_EQ(shard_->calls.back().first, "/etcdserverpb.Lease/LeaseRevoke");
  EXPECT_EQ(pending_->size(), 0u);
}

TEST_F(PendingLeasesTest, ExpiredGrantIsDroppedWithoutACall) {
  pending_->AddGrant("s0", 5, 0);
  pending_->Flush();
  EXPECT_TRUE(shard_->calls.empty());
  EXPECT_EQ(pending_->size(), 0u);
}

// A map change that removes a shard before another one: a pending operation follows its shard by
// name to its new index, and one for the removed shard is dropped rather than sent elsewhere.
TEST(PendingLeasesMapChangeTest, PendingOperationsFollowTheirShardByName) {
  auto first = std::make_shared<FakeShard>();
  auto second = std::make_shared<FakeShard>();
  TopologyHolder topology(std::make_shared<const Topology>(
      Topology{ShardMap({{"s0", "", "m"}, {"s1", "m", ""}}), {first, second}}));
  auto pending = std::make_shared<PendingLeases>(topology);
  pending->AddRevoke("s1", 7);
  pending->AddGrant("s0", 8, 30);
  // s0 leaves the map (its range went to s1): s1 is index 0 now.
  topology.Publish(std::make_shared<const Topology>(Topology{ShardMap({{"s1", "", ""}}), {second}}));
  pending->Flush();
  EXPECT_TRUE(first->calls.empty());
  ASSERT_EQ(second->calls.size(), 1u);
  EXPECT_EQ(second->calls[0].first, "/etcdserverpb.Lease/LeaseRevoke");
  EXPECT_EQ(pending->size(), 0u);
}

}  // namespace
}  // namespace esp
