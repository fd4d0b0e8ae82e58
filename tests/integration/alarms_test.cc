// Alarms across shards, against three real etcd shards: the union with each (member id, type)
// once, member 0 / the proxy's id / an id nobody has standing for every shard, a shard member's
// id for its shard only, etcd's no-op for ACTIVATE NONE, refusals of values that take etcd down,
// Status' errors, and a real NOSPACE from a full shard.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <utility>

#include "support/fixtures.h"

namespace esp::test {
namespace {

namespace pb = etcdserverpb;
using Pair = std::pair<std::uint64_t, int>;  // (member id, alarm type)
using Action = pb::AlarmRequest::AlarmAction;
constexpr Action kGet = pb::AlarmRequest::GET;
constexpr Action kActivate = pb::AlarmRequest::ACTIVATE;
constexpr Action kDeactivate = pb::AlarmRequest::DEACTIVATE;

struct AlarmResult {
  grpc::Status status;
  std::vector<Pair> alarms;  // in the order of the answer, duplicates kept: the test looks for them
};

AlarmResult Alarm(const std::string& address, Action action, std::uint64_t member, int type) {
  pb::AlarmRequest request;
  request.set_action(action);
  request.set_memberid(member);
  request.set_alarm(static_cast<pb::AlarmType>(type));
  pb::AlarmResponse response;
  AlarmResult result;
  result.status = pb::Maintenance::NewStub(Connect(address))->Alarm(Ctx().get(), request, &response);
  for (const auto& a : response.alarms()) result.alarms.emplace_back(a.memberid(), a.alarm());
  return result;
}

std::vector<Pair> Sorted(std::vector<Pair> pairs) {
  std::sort(pairs.begin(), pairs.end());
  return pairs;
}

std::vector<Pair> List(const std::string& address, int type = pb::NONE) {
  auto result = Alarm(address, kGet, 0, type);
  EXPECT_TRUE(result.status.ok()) << result.status.error_message();
  return Sorted(std::move(result.alarms));
}

std::uint64_t MemberIdOf(const std::string& address) {
  pb::StatusResponse status;
  EXPECT_TRUE(pb::Maintenance::NewStub(Connect(address))->Status(Ctx().get(), {}, &status).ok());
  return status.header().member_id();
}

class AlarmsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setup_ = std::make_unique<ShardedSetup>();
    for (std::size_t i = 0; i < 3; ++i) shard_member_[i] = MemberIdOf(Shard(i));
    pb::MemberListResponse members;
    ASSERT_TRUE(pb::Cluster::NewStub(Connect(Proxy()))->MemberList(Ctx().get(), {}, &members).ok());
    proxy_id_ = members.members(0).id();
  }
  static void TearDownTestSuite() { setup_.reset(); }
  // Every test starts and ends with no alarm anywhere; etcdctl's disarm (list, then deactivate
  // each) through the proxy is the operator's way back.
  void SetUp() override { ClearAll(); }
  void TearDown() override { ClearAll(); }
  static void ClearAll() {
    const auto result = Etcdctl(Proxy(), "alarm disarm");
    ASSERT_EQ(result.exit_code, 0) << result.output;
    for (std::size_t i = 0; i < 3; ++i) ASSERT_EQ(List(Shard(i)), std::vector<Pair>{}) << "shard " << i;
  }
  static std::string Proxy() { return setup_->proxy().address(); }
  static std::string Shard(std::size_t i) { return setup_->shard(i).member(0).client_address(); }
  static std::unique_ptr<ShardedSetup> setup_;
  static std::uint64_t shard_member_[3];
  static std::uint64_t proxy_id_;
};
std::unique_ptr<ShardedSetup> AlarmsTest::setup_;
std::uint64_t AlarmsTest::shard_member_[3];
std::uint64_t AlarmsTest::proxy_id_;

TEST_F(AlarmsTest, MemberZeroIsRaisedOnEveryShardAndListedOnce) {
  const auto raised = Alarm(Proxy(), kActivate, 0, pb::NOSPACE);
  ASSERT_TRUE(raised.status.ok()) << raised.status.error_message();
  EXPECT_EQ(raised.alarms, (std::vector<Pair>{{0, pb::NOSPACE}}));
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(List(Shard(i)), (std::vector<Pair>{{0, pb::NOSPACE}})) << i;
  EXPECT_EQ(List(Proxy()), (std::vector<Pair>{{0, pb::NOSPACE}}));
  const auto listed = Etcdctl(Proxy(), "alarm list");
  EXPECT_EQ(listed.output, "alarm:NOSPACE \n");
  // Every shard refuses writes, as one etcd would.
  for (const char* key : {"a-full", "j-full", "t-full"}) {
    EXPECT_NE(Etcdctl(Proxy(), std::string("put ") + key + " 1").output.find("database space exceeded"),
              std::string::npos)
        << key;
  }

  const auto cleared = Alarm(Proxy(), kDeactivate, 0, pb::NOSPACE);
  ASSERT_TRUE(cleared.status.ok()) << cleared.status.error_message();
  EXPECT_EQ(cleared.alarms, (std::vector<Pair>{{0, pb::NOSPACE}}));
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(List(Shard(i)), std::vector<Pair>{}) << i;
  EXPECT_EQ(Etcdctl(Proxy(), "put t-full 1").output, "OK\n");
  // Disarming what is not raised answers no alarm, as etcd.
  const auto again = Alarm(Proxy(), kDeactivate, 0, pb::NOSPACE);
  ASSERT_TRUE(again.status.ok());
  EXPECT_EQ(again.alarms, std::vector<Pair>{});
}

TEST_F(AlarmsTest, AShardMembersIdConcernsThatShardOnly) {
  const std::uint64_t member = shard_member_[1];
  const auto raised = Alarm(Proxy(), kActivate, member, pb::NOSPACE);
  ASSERT_TRUE(raised.status.ok()) << raised.status.error_message();
  EXPECT_EQ(raised.alarms, (std::vector<Pair>{{member, pb::NOSPACE}}));
  EXPECT_EQ(List(Shard(0)), std::vector<Pair>{});
  EXPECT_EQ(List(Shard(1)), (std::vector<Pair>{{member, pb::NOSPACE}}));
  EXPECT_EQ(List(Shard(2)), std::vector<Pair>{});
  EXPECT_EQ(Etcdctl(Proxy(), "put a-member 1").output, "OK\n");
  EXPECT_NE(Etcdctl(Proxy(), "put j-member 1").output.find("database space exceeded"), std::string::npos);

  // With member 0's alarm as well: two pairs, each once, though member 0's is on three shards.
  ASSERT_TRUE(Alarm(Proxy(), kActivate, 0, pb::NOSPACE).status.ok());
  EXPECT_EQ(List(Proxy()), Sorted({{0, pb::NOSPACE}, {member, pb::NOSPACE}}));
  // Type filter as etcd's GET: CORRUPT lists none of them.
  EXPECT_EQ(List(Proxy(), pb::CORRUPT), std::vector<Pair>{});

  // Disarming the member's alarm leaves member 0's everywhere.
  const auto cleared = Alarm(Proxy(), kDeactivate, member, pb::NOSPACE);
  ASSERT_TRUE(cleared.status.ok()) << cleared.status.error_message();
  EXPECT_EQ(cleared.alarms, (std::vector<Pair>{{member, pb::NOSPACE}}));
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(List(Shard(i)), (std::vector<Pair>{{0, pb::NOSPACE}})) << i;
}

TEST_F(AlarmsTest, TheProxysOwnIdStandsForEveryShard) {
  ASSERT_NE(proxy_id_, 0U);
  const auto raised = Alarm(Proxy(), kActivate, proxy_id_, pb::CORRUPT);
  ASSERT_TRUE(raised.status.ok()) << raised.status.error_message();
  EXPECT_EQ(raised.alarms, (std::vector<Pair>{{proxy_id_, pb::CORRUPT}}));
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(List(Shard(i)), (std::vector<Pair>{{proxy_id_, pb::CORRUPT}})) << i;
  EXPECT_EQ(List(Proxy()), (std::vector<Pair>{{proxy_id_, pb::CORRUPT}}));
  EXPECT_EQ(List(Proxy(), pb::NOSPACE), std::vector<Pair>{});

  const auto cleared = Alarm(Proxy(), kDeactivate, proxy_id_, pb::CORRUPT);
  ASSERT_TRUE(cleared.status.ok()) << cleared.status.error_message();
  EXPECT_EQ(cleared.alarms, (std::vector<Pair>{{proxy_id_, pb::CORRUPT}}));
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(List(Shard(i)), std::vector<Pair>{}) << i;
}

// etcd stores an alarm for any member id, known or not, and applies it to its whole cluster.
TEST_F(AlarmsTest, AnIdNobodyHasIsAcceptedForEveryShardAsEtcdDoes) {
  const std::uint64_t nobody = 0x1234;
  const auto raised = Alarm(Proxy(), kActivate, nobody, pb::NOSPACE);
  ASSERT_TRUE(raised.status.ok()) << raised.status.error_message();
  EXPECT_EQ(raised.alarms, (std::vector<Pair>{{nobody, pb::NOSPACE}}));
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(List(Shard(i)), (std::vector<Pair>{{nobody, pb::NOSPACE}})) << i;
  const auto direct = Alarm(Shard(0), kActivate, nobody, pb::NOSPACE);  // what one etcd answers
  ASSERT_TRUE(direct.status.ok());
  EXPECT_EQ(direct.alarms, raised.alarms);
}

TEST_F(AlarmsTest, ActivatingNoneChangesNothingAsEtcd35Does) {
  const auto none = Alarm(Proxy(), kActivate, shard_member_[0], pb::NONE);
  ASSERT_TRUE(none.status.ok()) << none.status.error_message();
  EXPECT_EQ(none.alarms, std::vector<Pair>{});
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(List(Shard(i)), std::vector<Pair>{}) << i;
}

// etcd 3.4.23 fails on an unknown action and 3.5.30 stops on ACTIVATE of an unknown type: the
// proxy refuses both and every shard keeps running.
TEST_F(AlarmsTest, ValuesEtcdHasNoCodeForAreRefusedBeforeAnyShard) {
  const auto action = Alarm(Proxy(), static_cast<Action>(7), 0, pb::NOSPACE);
  EXPECT_EQ(action.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(action.status.error_message().find("unknown alarm action 7"), std::string::npos)
      << action.status.error_message();
  const auto type = Alarm(Proxy(), kActivate, 0, 9);
  EXPECT_EQ(type.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(type.status.error_message().find("unknown alarm type 9"), std::string::npos) << type.status.error_message();
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(setup_->shard(i).member(0).process->running()) << i;
    EXPECT_EQ(List(Shard(i)), std::vector<Pair>{}) << i;
  }
  // Disarming an unknown type is harmless on every release: it passes, and finds nothing.
  const auto disarm = Alarm(Proxy(), kDeactivate, 0, 9);
  ASSERT_TRUE(disarm.status.ok()) << disarm.status.error_message();
  EXPECT_EQ(disarm.alarms, std::vector<Pair>{});
}

// Status' errors carry etcd's own alarm lines, each once; an error of one shard names it.
TEST_F(AlarmsTest, StatusErrorsShowEachAlarmOnceInEtcdsWords) {
  ASSERT_TRUE(Alarm(Proxy(), kActivate, 0, pb::NOSPACE).status.ok());
  ASSERT_TRUE(Alarm(Proxy(), kActivate, shard_member_[2], pb::CORRUPT).status.ok());
  pb::StatusResponse status;
  ASSERT_TRUE(pb::Maintenance::NewStub(Connect(Proxy()))->Status(Ctx().get(), {}, &status).ok());
  std::multiset<std::string> errors(status.errors().begin(), status.errors().end());
  const std::string member_line = "memberID:" + std::to_string(shard_member_[2]) + " alarm:CORRUPT ";
  EXPECT_EQ(errors, (std::multiset<std::string>{"alarm:NOSPACE ", member_line}));
  // The same lines as the shard itself gives.
  pb::StatusResponse direct;
  ASSERT_TRUE(pb::Maintenance::NewStub(Connect(Shard(2)))->Status(Ctx().get(), {}, &direct).ok());
  EXPECT_EQ(std::multiset<std::string>(direct.errors().begin(), direct.errors().end()), errors);
}

// A shard that really fills up: etcd raises NOSPACE for its own member; through the proxy it is
// listed once, with that member's id, and only that shard refuses writes.
TEST(RealNoSpace, AFullShardsAlarmAppearsOnceThroughTheProxy) {
  // etcd's quota is per shard here; the whole setup gets the small quota, only the last shard
  // gets the data.
  ShardedSetup setup({1, 1, 1}, {}, {"--quota-backend-bytes", "262144"});
  const std::string proxy = setup.proxy().address();
  const std::string value(64 * 1024, 'x');
  auto kv = pb::KV::NewStub(Connect(proxy));
  grpc::Status put_status;
  for (int i = 0; i < 200 && put_status.ok(); ++i) {
    pb::PutRequest put;
    put.set_key("z-fill-" + std::to_string(i));
    put.set_value(value);
    pb::PutResponse response;
    put_status = kv->Put(Ctx().get(), put, &response);
  }
  ASSERT_EQ(put_status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << put_status.error_message();
  EXPECT_EQ(put_status.error_message(), "etcdserver: mvcc: database space exceeded");

  const std::uint64_t full = MemberIdOf(setup.shard(2).member(0).client_address());
  std::vector<Pair> listed;
  ASSERT_TRUE(WaitFor(
      [&] {
        listed = List(proxy);
        return !listed.empty();
      },
      std::chrono::seconds(10)));
  EXPECT_EQ(listed, (std::vector<Pair>{{full, pb::NOSPACE}}));
  EXPECT_EQ(Etcdctl(proxy, "alarm list").output, "memberID:" + std::to_string(full) + " alarm:NOSPACE \n");
  EXPECT_EQ(Etcdctl(proxy, "put a-fine 1").output, "OK\n");
  EXPECT_EQ(List(setup.shard(0).member(0).client_address()), std::vector<Pair>{});
}

}  // namespace
}  // namespace esp::test
