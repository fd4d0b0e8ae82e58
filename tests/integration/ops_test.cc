// Operators' daily tools through the proxy, with the real etcdctl against three real etcd shards:
// member list, endpoint status/health/hashkv, alarm list, defrag, and the clear refusals.
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <sstream>

#include "support/fixtures.h"

namespace esp::test {
namespace {

class OpsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { setup_ = std::make_unique<ShardedSetup>(); }
  static void TearDownTestSuite() {
    setup_.reset();
  }
  static std::string proxy() { return setup_->proxy().address(); }
  static std::unique_ptr<ShardedSetup> setup_;
};
std::unique_ptr<ShardedSetup> OpsTest::setup_;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST_F(OpsTest, MemberListNamesTheProxyNotTheShards) {
  const auto result = Etcdctl(proxy(), "member list");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(Contains(result.output, "http://" + proxy())) << result.output;
  EXPECT_FALSE(Contains(result.output, setup_->shard(0).member(0).client_address())) << result.output;
  // The id is stable: the same on every call.
  EXPECT_EQ(Etcdctl(proxy(), "member list").output, result.output);
}

TEST_F(OpsTest, MemberChangesAreRefusedNamingTheShards) {
  const auto result = Etcdctl(proxy(), "member add m2 --peer-urls http://127.0.0.1:1");
  EXPECT_NE(result.exit_code, 0);
  EXPECT_TRUE(Contains(result.output, "each shard's own etcd cluster")) << result.output;
  EXPECT_TRUE(Contains(result.output, "shard-0")) << result.output;
  EXPECT_TRUE(Contains(result.output, "shard-2")) << result.output;
}

TEST_F(OpsTest, EndpointStatusAggregatesTheShards) {
  const auto result = Etcdctl(proxy(), "endpoint status -w json");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  ASSERT_FALSE(EtcdServerVersion().empty());
  EXPECT_TRUE(Contains(result.output, "\"version\":\"" + EtcdServerVersion() + "\"")) << result.output;
  EXPECT_TRUE(Contains(result.output, "\"dbSize\":")) << result.output;
}

TEST_F(OpsTest, EndpointHealthIsHealthy) {
  const auto result = Etcdctl(proxy(), "endpoint health");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(Contains(result.output, "is healthy")) << result.output;
}

TEST_F(OpsTest, AlarmListIsEmptyAndDisarmReachesEveryShard) {
  auto result = Etcdctl(proxy(), "alarm list");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(result.output, "");
  result = Etcdctl(proxy(), "alarm disarm");
  EXPECT_EQ(result.exit_code, 0) << result.output;
}

TEST_F(OpsTest, AlarmActivateReachesTheShardOwningTheMember) {
  // The id of shard 1's only member, from the shard itself.
  auto direct = etcdserverpb::Maintenance::NewStub(Connect(setup_->shard(1).member(0).client_address()));
  grpc::ClientContext status_ctx;
  etcdserverpb::StatusResponse status;
  ASSERT_TRUE(direct->Status(&status_ctx, {}, &status).ok());
  const std::uint64_t member = status.header().member_id();

  auto through_proxy = etcdserverpb::Maintenance::NewStub(Connect(proxy()));
  etcdserverpb::AlarmRequest activate;
  activate.set_action(etcdserverpb::AlarmRequest::ACTIVATE);
  activate.set_memberid(member);
  activate.set_alarm(etcdserverpb::NOSPACE);
  grpc::ClientContext ctx;
  etcdserverpb::AlarmResponse response;
  ASSERT_TRUE(through_proxy->Alarm(&ctx, activate, &response).ok());

  std::ostringstream hex;
  hex << std::hex << member;
  EXPECT_TRUE(Contains(Etcdctl(proxy(), "alarm list").output, "alarm:NOSPACE")) << hex.str();
  EXPECT_TRUE(Contains(Etcdctl(setup_->shard(1).member(0).client_address(), "alarm list").output, "NOSPACE"));
  EXPECT_EQ(Etcdctl(setup_->shard(0).member(0).client_address(), "alarm list").output, "");
  // Writes to that shard fail; others are unaffected.
  EXPECT_EQ(Etcdctl(proxy(), "put a-alarm 1").output, "OK\n");
  EXPECT_TRUE(Contains(Etcdctl(proxy(), "put j-alarm 1").output, "database space exceeded"));

  ASSERT_EQ(Etcdctl(proxy(), "alarm disarm").exit_code, 0);
  EXPECT_EQ(Etcdctl(proxy(), "alarm list").output, "");
  EXPECT_EQ(Etcdctl(proxy(), "put j-alarm 1").output, "OK\n");

}

TEST_F(OpsTest, DefragReachesEveryMember) {
  const auto result = Etcdctl(proxy(), "defrag --command-timeout 30s");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(Contains(result.output, "Finished defragmenting")) << result.output;
}

TEST_F(OpsTest, HashKvChangesWhenAnyShardChanges) {
  const auto hash = [] {
    const auto result = Etcdctl(proxy(), "endpoint hashkv -w json");
    EXPECT_EQ(result.exit_code, 0) << result.output;
    return result.output.substr(result.output.find("\"hash\":"));
  };
  const std::string before = hash();
  EXPECT_EQ(hash(), before);
  ASSERT_EQ(Etcdctl(proxy(), "put zz-hashkv 1").exit_code, 0);  // the last shard only
  EXPECT_NE(hash(), before);

  const auto at_revision = Etcdctl(proxy(), "endpoint hashkv --rev 1");
  EXPECT_TRUE(Contains(at_revision.output, "no meaning across shards")) << at_revision.output;
}

TEST_F(OpsTest, SnapshotIsRefusedNamingEachShard) {
  TempDir dir;
  const auto result = Etcdctl(proxy(), "snapshot save " + (dir.path() / "s.db").string());
  EXPECT_NE(result.exit_code, 0);
  EXPECT_TRUE(Contains(result.output, "snapshot each shard")) << result.output;
  EXPECT_TRUE(Contains(result.output, "shard-1")) << result.output;
}

TEST_F(OpsTest, GrpcHealthCheckServes) {
  // grpc.health.v1.HealthCheckResponse{status: SERVING} is the two bytes 08 01.
  grpc::GenericStub stub(Connect(proxy()));
  const auto serving = [&stub] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::Slice empty(std::string{});  // HealthCheckRequest{}: no fields
    grpc::ByteBuffer request(&empty, 1);
    grpc::ByteBuffer response;
    grpc::Status status;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                   [&](grpc::Status s) {
                     const std::lock_guard lock(mu);
                     status = s;
                     done = true;
                     cv.notify_one();
                   });
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return done; });
    std::vector<grpc::Slice> slices;
    if (!status.ok() || !response.Dump(&slices).ok()) return false;
    std::string bytes;
    for (const auto& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    return bytes == std::string("\x08\x01", 2);
  };
  EXPECT_TRUE(WaitFor(serving, std::chrono::seconds(10)));
}

TEST_F(OpsTest, MoveLeaderIsRefused) {
  const auto result = Etcdctl(proxy(), "move-leader 1");
  EXPECT_NE(result.exit_code, 0);
}

}  // namespace
}  // namespace esp::test
