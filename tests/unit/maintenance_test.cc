// The pure parts of the Cluster and Maintenance aggregates and of the health views.
#include <gtest/gtest.h>

#include "cluster/cluster_service.h"
#include "etcdserverpb/rpc.pb.h"
#include "maintenance/alarms.h"
#include "maintenance/maintenance_service.h"
#include "observability/shard_health.h"

namespace esp {
namespace {

TEST(LowestVersion, ComparesNumericallyAndSkipsEmpty) {
  EXPECT_EQ(LowestVersion({"3.5.1", "3.4.23", "3.10.0"}), "3.4.23");
  EXPECT_EQ(LowestVersion({"3.4.9", "3.4.23"}), "3.4.9");
  EXPECT_EQ(LowestVersion({"", "3.5.0"}), "3.5.0");
  EXPECT_EQ(LowestVersion({}), "");
}

TEST(CombineHashes, DependsOnEveryShardAndOnOrder) {
  const auto base = CombineHashes({1, 2, 3});
  EXPECT_EQ(CombineHashes({1, 2, 3}), base);
  EXPECT_NE(CombineHashes({1, 2, 4}), base);
  EXPECT_NE(CombineHashes({3, 2, 1}), base);
  EXPECT_NE(CombineHashes({0, 2, 3}), base);
}

TEST(Alarms, EachMemberAndTypeOnce) {
  etcdserverpb::AlarmResponse a, b, out;
  auto add = [](etcdserverpb::AlarmResponse& r, std::uint64_t id, etcdserverpb::AlarmType type) {
    auto* m = r.add_alarms();
    m->set_memberid(id);
    m->set_alarm(type);
  };
  add(a, 0, etcdserverpb::NOSPACE);
  add(a, 7, etcdserverpb::NOSPACE);
  add(b, 0, etcdserverpb::NOSPACE);
  add(b, 0, etcdserverpb::CORRUPT);
  AddAlarmsOnce(a, out);
  AddAlarmsOnce(b, out);
  ASSERT_EQ(out.alarms_size(), 3);
  EXPECT_EQ(out.alarms(2).memberid(), 0U);
  EXPECT_EQ(out.alarms(2).alarm(), etcdserverpb::CORRUPT);
}

TEST(Alarms, RequestsEtcdCannotTakeAreRefused) {
  etcdserverpb::AlarmRequest request;
  request.set_action(etcdserverpb::AlarmRequest::ACTIVATE);
  request.set_alarm(etcdserverpb::NOSPACE);
  EXPECT_TRUE(CheckAlarmRequest(request).ok());
  request.set_alarm(static_cast<etcdserverpb::AlarmType>(9));
  EXPECT_EQ(CheckAlarmRequest(request).code(), StatusCode::kInvalidArgument);
  request.set_action(etcdserverpb::AlarmRequest::DEACTIVATE);
  EXPECT_TRUE(CheckAlarmRequest(request).ok());
  request.set_action(static_cast<etcdserverpb::AlarmRequest::AlarmAction>(7));
  EXPECT_EQ(CheckAlarmRequest(request).code(), StatusCode::kInvalidArgument);
  request.set_action(etcdserverpb::AlarmRequest::ACTIVATE);
  request.set_alarm(etcdserverpb::NONE);
  EXPECT_TRUE(IsAlarmNoOp(request));
}

TEST(Alarms, ShardOfMemberAndAlarmLines) {
  EXPECT_EQ(ShardOfMember({{1, 2}, {}, {3}}, 3), 2U);
  EXPECT_EQ(ShardOfMember({{1, 2}, {}, {3}}, 4), std::nullopt);
  EXPECT_TRUE(IsAlarmError("alarm:NOSPACE "));
  EXPECT_TRUE(IsAlarmError("memberID:123 alarm:CORRUPT "));
  EXPECT_FALSE(IsAlarmError("etcdserver: no leader"));
}

TEST(HostPortOfUrl, StripsSchemeAndPath) {
  EXPECT_EQ(HostPortOfUrl("http://127.0.0.1:2379"), "127.0.0.1:2379");
  EXPECT_EQ(HostPortOfUrl("https://127.0.0.1:2379/"), "127.0.0.1:2379");
  EXPECT_EQ(HostPortOfUrl("127.0.0.1:2379"), "127.0.0.1:2379");
}

TEST(ProxyIdentity, ClusterIdFollowsTheLayoutMemberIdTheUrl) {
  const ShardMap a({{"s0", "", "i"}, {"s1", "i", ""}});
  const ShardMap b({{"s0", "", "j"}, {"s1", "j", ""}});
  const auto one = MakeProxyIdentity(a, {"http://127.0.0.1:1"}, {});
  const auto two = MakeProxyIdentity(a, {"http://127.0.0.1:2"}, {});
  EXPECT_EQ(one.cluster_id, two.cluster_id);
  EXPECT_NE(one.member_id, two.member_id);
  EXPECT_EQ(one.member_id, MakeProxyIdentity(a, {"http://127.0.0.1:1"}, {}).member_id);
  EXPECT_NE(MakeProxyIdentity(b, {"http://127.0.0.1:1"}, {}).cluster_id, one.cluster_id);
}

TEST(ClusterService, MemberListHasThisProxyAndTheOthersButNoShard) {
  TopologyHolder topology(std::make_shared<const Topology>(Topology{ShardMap({{"s0", "", ""}}), {}}));
  const auto identity =
      MakeProxyIdentity(topology.Get()->map, {"http://127.0.0.1:1"}, {"http://127.0.0.1:1", "http://127.0.0.1:2"});
  ClusterService service(topology, identity);
  Router router;
  service.Register(router);
  const UnaryHandler* handler = router.FindUnary("/etcdserverpb.Cluster/MemberList");
  ASSERT_NE(handler, nullptr);
  etcdserverpb::MemberListResponse response;
  (*handler)(std::make_shared<CallContext>(), "", [&](Status status, std::string bytes) {
    ASSERT_TRUE(status.ok());
    ASSERT_TRUE(response.ParseFromString(bytes));
  });
  ASSERT_EQ(response.members_size(), 2);  // itself once, and the other proxy
  EXPECT_EQ(response.members(0).id(), identity.member_id);
  EXPECT_EQ(response.members(0).clienturls(0), "http://127.0.0.1:1");
  EXPECT_EQ(response.members(1).clienturls(0), "http://127.0.0.1:2");
  EXPECT_EQ(response.members(1).id(), Fnv1a64("http://127.0.0.1:2"));
  EXPECT_EQ(response.header().cluster_id(), identity.cluster_id);
  EXPECT_EQ(response.header().member_id(), identity.member_id);
}

TEST(HealthJson, EtcdShapeNamingUnhealthyShards) {
  ShardState good{.name = "s0", .description = "shard \"s0\"", .healthy = true};
  ShardState bad{.name = "s1", .description = "shard \"s1\"", .healthy = false, .error = "down"};
  EXPECT_EQ(HealthJson(JudgeHealth({good})), "{\"health\":\"true\",\"reason\":\"\"}");
  const HealthVerdict verdict = JudgeHealth({good, bad});
  EXPECT_FALSE(verdict.healthy);
  EXPECT_EQ(HealthJson(verdict), "{\"health\":\"false\",\"reason\":\"shard \\\"s1\\\": down\"}");
}

// etcd reports an active alarm as unhealthy unless ?exclude names it; readiness only minds
// CORRUPT (a NOSPACE shard still serves reads), gRPC serving only reachability.
TEST(HealthJson, AlarmsCountAsEtcdCountsThem) {
  ShardState full{.name = "s0", .description = "shard \"s0\"", .healthy = true, .alarms = {"NOSPACE"}};
  ShardState corrupt{.name = "s1", .description = "shard \"s1\"", .healthy = true, .alarms = {"CORRUPT"}};
  EXPECT_EQ(JudgeHealth({full}).reason, "shard \"s0\": ALARM NOSPACE");
  EXPECT_TRUE(JudgeHealth({full}, {"NOSPACE"}).healthy);
  EXPECT_TRUE(JudgeReadiness({full}).healthy);
  EXPECT_EQ(JudgeReadiness({full, corrupt}).reason, "shard \"s1\": ALARM CORRUPT");
  EXPECT_TRUE(JudgeServing({full, corrupt}).healthy);
}

}  // namespace
}  // namespace esp
