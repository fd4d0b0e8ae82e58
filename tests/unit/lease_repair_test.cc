// The rule that lets any proxy repair a lease the shards disagree on (lease/repair.h), and the
// repair itself against fake shards.
#include "lease/repair.h"

#include <gtest/gtest.h>

#include "etcdserverpb/rpc.pb.h"

namespace esp {
namespace {

LeaseSplit Split(std::size_t holders, std::size_t lacking, std::size_t unknown) {
  LeaseSplit split{.id = 7, .holders = {}, .lacking = {}, .unknown = unknown, .ttl = 10};
  std::size_t shard = 0;
  for (std::size_t i = 0; i < holders; ++i) split.holders.push_back(shard++);
  for (std::size_t i = 0; i < lacking; ++i) split.lacking.push_back(shard++);
  return split;
}

TEST(JudgeSplitTest, HoldersAtLeastHalfMeansGranted) {
  EXPECT_EQ(JudgeSplit(Split(2, 1, 0)), SplitVerdict::kAlive);  // granted while one of 3 was down
  EXPECT_EQ(JudgeSplit(Split(1, 1, 0)), SplitVerdict::kAlive);  // 2 shards: a grant needs one of 2
  EXPECT_EQ(JudgeSplit(Split(2, 1, 1)), SplitVerdict::kAlive);      // even if the 4th lacks it
  EXPECT_EQ(JudgeSplit(Split(1, 1, 1)), SplitVerdict::kUndecided);  // the 3rd decides
}

TEST(JudgeSplitTest, HoldersUnderHalfMeansRevoked) {
  EXPECT_EQ(JudgeSplit(Split(1, 2, 0)), SplitVerdict::kGone);  // revoked while one of 3 was down
  EXPECT_EQ(JudgeSplit(Split(1, 3, 1)), SplitVerdict::kGone);
  // The shard that did not answer could hold it: 2 of 4 would be a lease granted with 2 down.
  EXPECT_EQ(JudgeSplit(Split(1, 2, 1)), SplitVerdict::kUndecided);
}

// Records unary calls; answers each with `answers[method]` (OK with an empty body otherwise).
class FakeShard final : public ShardTransport {
 public:
  const std::string& description() const override { return description_; }
  void Unary(const std::string& method, const CallContextPtr&, std::string request, UnaryOptions,
             UnaryDone done) override {
    calls.emplace_back(method, request);
    const auto it = answers.find(method);
    if (it == answers.end()) return done(Status::Ok(), {});
    done(it->second.first, it->second.second);
  }
  std::shared_ptr<UpstreamStream> OpenStream(const std::string&, const Metadata&,
                                             std::shared_ptr<UpstreamStreamObserver>) override {
    return nullptr;
  }
  std::map<std::string, std::pair<Status, std::string>> answers;
  std::vector<std::pair<std::string, std::string>> calls;

 private:
  std::string description_ = "fake";
};

class LeaseRepairTest : public ::testing::Test {
 protected:
  LeaseRepairTest()
      : shards_{std::make_shared<FakeShard>(), std::make_shared<FakeShard>(), std::make_shared<FakeShard>()},
        topology_(std::make_shared<const Topology>(
            Topology{ShardMap({{"s0", "", "g"}, {"s1", "g", "p"}, {"s2", "p", ""}}), {shards_[0], shards_[1], shards_[2]}})),
        repair_(std::make_shared<LeaseRepair>(topology_, std::make_shared<PendingLeases>(topology_))) {}

  void HasLease(std::size_t shard, int64_t ttl) {
    etcdserverpb::LeaseTimeToLiveResponse response;
    response.set_id(7);
    response.set_ttl(ttl);
    response.set_grantedttl(30);
    shards_[shard]->answers["/etcdserverpb.Lease/LeaseTimeToLive"] = {Status::Ok(), response.SerializeAsString()};
  }
  std::vector<std::string> Methods(std::size_t shard) {
    std::vector<std::string> out;
    for (const auto& [method, body] : shards_[shard]->calls) out.push_back(method);
    return out;
  }

  std::size_t repairs() const { return repair_->repairs(); }

  std::vector<std::shared_ptr<FakeShard>> shards_;
  TopologyHolder topology_;
  std::shared_ptr<LeaseRepair> repair_;
};

TEST_F(LeaseRepairTest, NotFoundOnAShardGrantsALeaseMostShardsHold) {
  HasLease(0, 20);
  HasLease(1, 12);
  std::optional<bool> result;
  repair_->OnLeaseNotFound(2, {7}, [&](bool granted) { result = granted; });
  ASSERT_EQ(result, true);
  ASSERT_EQ(Methods(2), std::vector<std::string>{"/etcdserverpb.Lease/LeaseGrant"});
  etcdserverpb::LeaseGrantRequest grant;
  ASSERT_TRUE(grant.ParseFromString(shards_[2]->calls[0].second));
  EXPECT_EQ(grant.id(), 7);
  EXPECT_EQ(grant.ttl(), 13);  // the smallest remaining TTL, rounded up (etcd truncates it)
}

TEST_F(LeaseRepairTest, NotFoundOnAShardRevokesALeaseOnlyAMinorityHolds) {
  HasLease(0, 20);
  HasLease(1, -1);
  std::optional<bool> result;
  repair_->OnLeaseNotFound(2, {7}, [&](bool granted) { result = granted; });
  EXPECT_EQ(result, false);  // the client gets "requested lease not found"
  EXPECT_EQ(Methods(2), std::vector<std::string>{});
  EXPECT_EQ(Methods(0), (std::vector<std::string>{"/etcdserverpb.Lease/LeaseTimeToLive",
                                                  "/etcdserverpb.Lease/LeaseRevoke"}));
}

TEST_F(LeaseRepairTest, UnknownLeaseIsNotGranted) {
  HasLease(0, -1);
  HasLease(1, -1);
  std::optional<bool> result;
  repair_->OnLeaseNotFound(2, {7}, [&](bool granted) { result = granted; });
  EXPECT_EQ(result, false);
  EXPECT_EQ(Methods(0), std::vector<std::string>{"/etcdserverpb.Lease/LeaseTimeToLive"});
  EXPECT_EQ(Methods(1), std::vector<std::string>{"/etcdserverpb.Lease/LeaseTimeToLive"});
}

TEST_F(LeaseRepairTest, KeepAliveSplitIsConfirmedBeforeGranting) {
  HasLease(0, 20);
  HasLease(1, 20);
  HasLease(2, -1);
  const LeaseSplit split{.id = 7, .holders = {0, 1}, .lacking = {2}, .unknown = 0, .ttl = 20};
  EXPECT_EQ(repair_->Resolve(split), SplitVerdict::kAlive);
  EXPECT_EQ(Methods(2), (std::vector<std::string>{"/etcdserverpb.Lease/LeaseTimeToLive",
                                                  "/etcdserverpb.Lease/LeaseGrant"}));
  EXPECT_EQ(repairs(), 1u);
}

TEST_F(LeaseRepairTest, SplitFromARevokeUnderWayIsNotGrantedAgain) {
  // The keep-alive saw shard 2 without the lease; by the second look the revoke reached 0 and 1.
  HasLease(0, -1);
  HasLease(1, -1);
  HasLease(2, -1);
  const LeaseSplit split{.id = 7, .holders = {0, 1}, .lacking = {2}, .unknown = 0, .ttl = 20};
  repair_->Resolve(split);
  for (std::size_t shard = 0; shard < 3; ++shard) {
    EXPECT_EQ(Methods(shard), std::vector<std::string>{"/etcdserverpb.Lease/LeaseTimeToLive"}) << shard;
  }
}

}  // namespace
}  // namespace esp
