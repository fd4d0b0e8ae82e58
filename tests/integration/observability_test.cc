// The operator HTTP listener against three real etcd shards: /metrics counts known traffic,
// /health follows a shard going down and coming back, /livez, /readyz and /shards answer.
#include <gtest/gtest.h>

#include <memory>
#include <sstream>
#include <thread>

#include "support/fixtures.h"
#include "support/operator_http.h"

namespace esp::test {
namespace {

class ObservabilityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    metrics_port_ = FreePort();
    setup_ = std::make_unique<ShardedSetup>(
        std::vector<int>{1, 1, 1},
        std::vector<std::string>{"--listen-metrics-addr", "127.0.0.1:" + std::to_string(metrics_port_)});
  }
  static void TearDownTestSuite() {
    setup_.reset();
  }
  static std::string proxy() { return setup_->proxy().address(); }
  static std::unique_ptr<ShardedSetup> setup_;
  static int metrics_port_;
};
std::unique_ptr<ShardedSetup> ObservabilityTest::setup_;
int ObservabilityTest::metrics_port_ = 0;

// A client that gives up cancels the proxy's call to the shard too: the call does not linger
// until the (here hung) shard answers. The upstream metrics show how that call ended.
TEST_F(ObservabilityTest, ClientCancellationReachesTheShardCall) {
  const std::string range = "method=\"/etcdserverpb.KV/Range\"";
  const auto upstream_canceled = [&] {
    return Sample(HttpGet(metrics_port_, "/metrics").body, "etcd_proxy_upstream_requests_total",
                  {range, "shard=\"shard-2\"", "code=\"Canceled\""});
  };
  const auto in_flight = [&] {
    return Sample(HttpGet(metrics_port_, "/metrics").body, "etcd_proxy_requests_in_flight", {range});
  };
  const double before = upstream_canceled();
  setup_->shard(2).PauseMember(0);
  struct Resume {
    ~Resume() { setup_->shard(2).ResumeMember(0); }
  } resume;

  auto kv = etcdserverpb::KV::NewStub(Connect(proxy()));
  grpc::ClientContext ctx;
  etcdserverpb::RangeRequest req;
  req.set_key("t");  // shard-2
  etcdserverpb::RangeResponse resp;
  bool saw_in_flight = false;
  std::thread canceller([&] {
    saw_in_flight = WaitFor([&] { return in_flight() == 1; }, std::chrono::seconds(10));
    ctx.TryCancel();
  });
  const grpc::Status status = kv->Range(&ctx, req, &resp);
  canceller.join();
  // (Once, in a CI run against etcd 3.5, the gauge never read 1: say what the call and the
  // proxy did if that happens again.)
  ASSERT_TRUE(saw_in_flight) << "call ended " << status.error_code() << " " << status.error_message()
                             << "; in flight now " << in_flight() << "\n"
                             << setup_->proxy().process().Log();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  // Still hung, yet the proxy's call to it has ended as cancelled and nothing is in flight.
  EXPECT_TRUE(WaitFor([&] { return upstream_canceled() == before + 1; }, std::chrono::seconds(5)));
  EXPECT_TRUE(WaitFor([&] { return in_flight() == 0; }, std::chrono::seconds(5)));
}

TEST_F(ObservabilityTest, MetricsCountKnownTraffic) {
  const std::string put = "method=\"/etcdserverpb.KV/Put\"";
  const std::string before = HttpGet(metrics_port_, "/metrics").body;
  const double puts_before = Sample(before, "etcd_proxy_requests_total", {put, "code=\"OK\""});
  const double upstream_before =
      Sample(before, "etcd_proxy_upstream_requests_total", {put, "shard=\"shard-0\"", "code=\"OK\""});
  for (const auto* key : {"a1", "b1", "z1"}) ASSERT_EQ(Etcdctl(proxy(), std::string("put ") + key + " v").output, "OK\n");
  // An etcd error is counted under its own code.
  EXPECT_NE(Etcdctl(proxy(), "put '' v").exit_code, 0);

  const auto page = HttpGet(metrics_port_, "/metrics");
  ASSERT_EQ(page.status, 200);
  EXPECT_EQ(Sample(page.body, "etcd_proxy_requests_total", {put, "code=\"OK\""}), puts_before + 3) << page.body;
  EXPECT_GE(Sample(page.body, "etcd_proxy_requests_total", {put, "code=\"InvalidArgument\""}), 1);
  EXPECT_EQ(Sample(page.body, "etcd_proxy_upstream_requests_total", {put, "shard=\"shard-0\"", "code=\"OK\""}),
            upstream_before + 2);
  EXPECT_GE(Sample(page.body, "etcd_proxy_request_duration_seconds_count", {put}), puts_before + 3);
  EXPECT_EQ(Sample(page.body, "etcd_proxy_requests_in_flight", {put}), 0);
  EXPECT_TRUE(WaitFor([] { return Sample(HttpGet(metrics_port_, "/metrics").body, "etcd_proxy_shard_up",
                                         {"shard=\"shard-2\""}) == 1; },
                      std::chrono::seconds(10)));
}

TEST_F(ObservabilityTest, LivezReadyzAndShards) {
  EXPECT_EQ(HttpGet(metrics_port_, "/livez").status, 200);
  EXPECT_TRUE(WaitFor([] { return HttpGet(metrics_port_, "/readyz").status == 200; }, std::chrono::seconds(10)));
  const auto shards = HttpGet(metrics_port_, "/shards");
  EXPECT_EQ(shards.status, 200);
  EXPECT_NE(shards.body.find("\"name\":\"shard-1\",\"start\":\"i\",\"end\":\"s\""), std::string::npos) << shards.body;
  EXPECT_NE(shards.body.find(setup_->shard(1).member(0).client_address()), std::string::npos) << shards.body;
  EXPECT_NE(shards.body.find("\"health\":true"), std::string::npos) << shards.body;
  EXPECT_EQ(HttpGet(metrics_port_, "/nope").status, 404);
  // Read-only endpoints, as etcd's /health: other methods get 405.
  const auto post = RunCommand("curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:" +
                               std::to_string(metrics_port_) + "/health");
  EXPECT_EQ(post.output, "405");
}

// Last: it stops a shard.
TEST_F(ObservabilityTest, HealthFollowsAShardDownAndBack) {
  const auto healthy = [] {
    const auto r = HttpGet(metrics_port_, "/health");
    return r.status == 200 && r.body == "{\"health\":\"true\",\"reason\":\"\"}";
  };
  ASSERT_TRUE(WaitFor(healthy, std::chrono::seconds(10))) << HttpGet(metrics_port_, "/health").body;

  setup_->shard(1).KillMember(0);
  HttpResult down;
  ASSERT_TRUE(WaitFor(
      [&] {
        down = HttpGet(metrics_port_, "/health");
        return down.status == 503;
      },
      std::chrono::seconds(15)));
  EXPECT_NE(down.body.find("\"health\":\"false\""), std::string::npos) << down.body;
  EXPECT_NE(down.body.find("shard-1"), std::string::npos) << down.body;
  EXPECT_EQ(down.body.find("shard-0"), std::string::npos) << down.body;
  EXPECT_EQ(HttpGet(metrics_port_, "/readyz").status, 503);
  EXPECT_EQ(HttpGet(metrics_port_, "/livez").status, 200);
  EXPECT_EQ(Sample(HttpGet(metrics_port_, "/metrics").body, "etcd_proxy_shard_up", {"shard=\"shard-1\""}), 0);

  setup_->shard(1).StartMember(0);
  setup_->shard(1).WaitReady();
  EXPECT_TRUE(WaitFor(healthy, std::chrono::seconds(15))) << HttpGet(metrics_port_, "/health").body;
}

// One shard of three members: Defragment walks every member, and a read that finds a member dead
// is retried on another one and counted.
class MultiMemberTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    shard_ = std::make_unique<EtcdCluster>(3, "multi");
    shard_->Start();
    metrics_port_ = FreePort();
    proxy_ = std::make_unique<ProxyProcess>(
        std::vector<ShardSpec>{{"", "", shard_->ClientAddresses()}},
        std::vector<std::string>{"--listen-metrics-addr", "127.0.0.1:" + std::to_string(metrics_port_)});
    proxy_->Start();
  }
  static void TearDownTestSuite() {
    proxy_.reset();
    shard_.reset();
  }
  static std::unique_ptr<EtcdCluster> shard_;
  static std::unique_ptr<ProxyProcess> proxy_;
  static int metrics_port_;
};
std::unique_ptr<EtcdCluster> MultiMemberTest::shard_;
std::unique_ptr<ProxyProcess> MultiMemberTest::proxy_;
int MultiMemberTest::metrics_port_ = 0;

TEST_F(MultiMemberTest, DefragmentReachesEveryMember) {
  const auto result = Etcdctl(proxy_->address(), "defrag --command-timeout 30s");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const std::string log = proxy_->process().Log();
  for (const auto& address : shard_->ClientAddresses()) {
    EXPECT_NE(log.find("member http://" + address), std::string::npos) << log;
  }
}

// Brings a member it stopped back before the next test (tests run in any order with
// --gtest_shuffle; Defragment needs every member).
class MemberRestart {
 public:
  MemberRestart(EtcdCluster& cluster, std::size_t member) : cluster_(cluster), member_(member) {}
  MemberRestart(const MemberRestart&) = delete;
  MemberRestart& operator=(const MemberRestart&) = delete;
  ~MemberRestart() {
    try {
      cluster_.StartMember(member_);
      cluster_.WaitReady();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "member " << member_ << " did not come back: " << e.what();
    }
  }

 private:
  EtcdCluster& cluster_;
  std::size_t member_;
};

TEST_F(MultiMemberTest, ReadsRetryOnAnotherMemberAndAreCounted) {
  ASSERT_EQ(Etcdctl(proxy_->address(), "put k v").output, "OK\n");
  const std::size_t leader = shard_->LeaderIndex().value();
  auto kv = etcdserverpb::KV::NewStub(Connect(proxy_->address()));
  etcdserverpb::RangeRequest read;
  read.set_key("k");
  etcdserverpb::RangeResponse answer;
  ASSERT_TRUE(kv->Range(Ctx().get(), read, &answer).ok());
  const MemberRestart restart(*shard_, (leader + 1) % 3);
  shard_->KillMember((leader + 1) % 3);
  // Bursts of reads at once after the kill: round robin sends some to the dead member before its
  // channel is known broken. Spaced reads (etcdctl) lose that race to the health probe's calls
  // on a loaded machine, and a broken channel is then avoided without any retry.
  const auto retried = [&] {
    for (int i = 0; i < 10; ++i) {
      const grpc::Status status = kv->Range(Ctx().get(), read, &answer);
      EXPECT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(answer.kvs_size(), 1);
    }
    return Sample(HttpGet(metrics_port_, "/metrics").body, "etcd_proxy_upstream_retries_total",
                  {"method=\"/etcdserverpb.KV/Range\""}) >= 1;
  };
  EXPECT_TRUE(WaitFor(retried, std::chrono::seconds(20)));
  // One log line for the connection error, however many calls met it.
  const std::string dead = shard_->member((leader + 1) % 3).client_address();
  EXPECT_NE(proxy_->process().Log().find("member " + dead + " unreachable"), std::string::npos)
      << proxy_->process().Log();
  // Defragment names the member it cannot reach.
  const auto defrag = Etcdctl(proxy_->address(), "defrag --command-timeout 30s");
  EXPECT_NE(defrag.exit_code, 0);
  EXPECT_NE(defrag.output.find(shard_->member((leader + 1) % 3).client_address()), std::string::npos) << defrag.output;
}

// A config whose two shards reach one etcd cluster (a copy-paste slip) would answer a spanning
// range with every key twice and grant leases twice on one cluster: the proxy names the slip in
// /readyz, /health and /shards, and its log, and leaves rotation. The real shard's answers give
// it away: one cluster id behind both entries.
TEST(ShardConfigTest, TwoShardsOnOneEtcdClusterAreReportedAndNotReady) {
  EtcdCluster etcd(1, "twin");
  etcd.Start();
  const int metrics_port = FreePort();
  ProxyProcess proxy({{"", "m", etcd.ClientAddresses()}, {"m", "", etcd.ClientAddresses()}},
                     {"--listen-metrics-addr", "127.0.0.1:" + std::to_string(metrics_port)});
  proxy.Start();
  ASSERT_TRUE(WaitFor([&] { return HttpGet(metrics_port, "/readyz").status == 503; }, std::chrono::seconds(10)))
      << HttpGet(metrics_port, "/readyz").body;
  const std::string reason = HttpGet(metrics_port, "/health").body;
  EXPECT_NE(reason.find("same etcd cluster"), std::string::npos) << reason;
  EXPECT_NE(reason.find("shard-1"), std::string::npos) << reason;
  const std::string shards = HttpGet(metrics_port, "/shards").body;
  EXPECT_NE(shards.find("\"cluster_id\""), std::string::npos) << shards;
  EXPECT_TRUE(WaitFor([&] { return proxy.process().Log().find("same etcd cluster") != std::string::npos; },
                      std::chrono::seconds(5)))
      << proxy.process().Log();
}

}  // namespace
}  // namespace esp::test
