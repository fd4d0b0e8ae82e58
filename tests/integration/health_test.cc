// Health and live counts against three real etcd shards (split at "i" and "s"): /health under a
// real NOSPACE alarm, the standard gRPC health service (Check, Watch following a shard down and
// up) through a raw gRPC client, and the gauges of client watches, upstream watchers and leases
// kept alive after known traffic.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "grpc/health/v1/health.grpc.pb.h"
#include "support/fixtures.h"
#include "support/operator_http.h"

namespace esp::test {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using namespace std::chrono_literals;

constexpr const char* kHealthWatch = "method=\"/grpc.health.v1.Health/Watch\"";

class HealthTest : public ::testing::Test {
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
  static double Gauge(const std::string& metric, const std::vector<std::string>& labels = {}) {
    return Sample(HttpGet(metrics_port_, "/metrics").body, metric, labels);
  }
  static bool HealthIs(int status) { return HttpGet(metrics_port_, "/health").status == status; }
  static std::optional<HealthCheckResponse::ServingStatus> Check(const std::string& service,
                                                                 grpc::Status* status = nullptr) {
    auto stub = Health::NewStub(Connect(proxy()));
    HealthCheckRequest request;
    request.set_service(service);
    HealthCheckResponse response;
    const grpc::Status s = stub->Check(Ctx(2s).get(), request, &response);
    if (status != nullptr) *status = s;
    if (!s.ok()) return std::nullopt;
    return response.status();
  }
  static std::unique_ptr<ShardedSetup> setup_;
  static int metrics_port_;
};
std::unique_ptr<ShardedSetup> HealthTest::setup_;
int HealthTest::metrics_port_ = 0;

TEST_F(HealthTest, GaugesCountClientWatchesUpstreamWatchersAndLeasesKeptAlive) {
  ASSERT_TRUE(WaitFor([] { return Gauge("etcd_proxy_client_watches") == 0; }, 10s));
  EXPECT_EQ(Gauge("etcd_proxy_upstream_watchers"), 0);
  EXPECT_EQ(Gauge("etcd_proxy_leases_kept_alive"), 0);

  // Two watches on one stream: one key on shard-0, one over the whole keyspace (three shards).
  auto watch_stub = etcdserverpb::Watch::NewStub(Connect(proxy()));
  auto watch_ctx = Ctx(30s);
  auto watch = watch_stub->Watch(watch_ctx.get());
  for (const auto& [key, end] : {std::pair<std::string, std::string>{"a", ""}, {std::string(1, '\0'), std::string(1, '\0')}}) {
    etcdserverpb::WatchRequest request;
    request.mutable_create_request()->set_key(key);
    request.mutable_create_request()->set_range_end(end);
    ASSERT_TRUE(watch->Write(request));
    etcdserverpb::WatchResponse created;
    ASSERT_TRUE(watch->Read(&created));
    ASSERT_TRUE(created.created());
  }
  EXPECT_TRUE(WaitFor([] { return Gauge("etcd_proxy_client_watches") == 2; }, 10s)) << Gauge("etcd_proxy_client_watches");
  EXPECT_TRUE(WaitFor([] { return Gauge("etcd_proxy_upstream_watchers") == 4; }, 10s))
      << Gauge("etcd_proxy_upstream_watchers");
  EXPECT_EQ(Gauge("etcd_proxy_open_streams", {"method=\"/etcdserverpb.Watch/Watch\""}), 1);

  // One lease renewed twice on one keep-alive stream is one lease kept alive.
  auto lease_stub = etcdserverpb::Lease::NewStub(Connect(proxy()));
  etcdserverpb::LeaseGrantRequest grant;
  grant.set_ttl(30);
  etcdserverpb::LeaseGrantResponse granted;
  ASSERT_TRUE(lease_stub->LeaseGrant(Ctx().get(), grant, &granted).ok());
  auto keepalive_ctx = Ctx(30s);
  auto keepalive = lease_stub->LeaseKeepAlive(keepalive_ctx.get());
  for (int i = 0; i < 2; ++i) {
    etcdserverpb::LeaseKeepAliveRequest request;
    request.set_id(granted.id());
    ASSERT_TRUE(keepalive->Write(request));
    etcdserverpb::LeaseKeepAliveResponse renewed;
    ASSERT_TRUE(keepalive->Read(&renewed));
    EXPECT_GT(renewed.ttl(), 0);
  }
  EXPECT_EQ(Gauge("etcd_proxy_leases_kept_alive"), 1);
  EXPECT_EQ(Gauge("etcd_proxy_keepalive_lanes"), 1);  // no auth, one client: the empty lane of its loop

  // Closed streams count nothing.
  watch->WritesDone();
  EXPECT_TRUE(watch->Finish().ok());
  keepalive->WritesDone();
  keepalive->Finish();
  EXPECT_TRUE(WaitFor([] { return Gauge("etcd_proxy_client_watches") == 0; }, 10s)) << Gauge("etcd_proxy_client_watches");
  EXPECT_TRUE(WaitFor([] { return Gauge("etcd_proxy_upstream_watchers") == 0; }, 10s))
      << Gauge("etcd_proxy_upstream_watchers");
  EXPECT_TRUE(WaitFor([] { return Gauge("etcd_proxy_leases_kept_alive") == 0; }, 10s));
  EXPECT_TRUE(WaitFor([] { return Gauge("etcd_proxy_open_streams", {"method=\"/etcdserverpb.Watch/Watch\""}) == 0; }, 10s));
}

// A real NOSPACE alarm, raised and cleared on the shard itself through etcd's Alarm API: etcd
// reports an active alarm as unhealthy, and so does the proxy, naming the shard.
TEST_F(HealthTest, AnAlarmOnOneShardMakesHealthFalseUntilItIsCleared) {
  ASSERT_TRUE(WaitFor([] { return HealthIs(200); }, 10s)) << HttpGet(metrics_port_, "/health").body;
  auto maintenance = etcdserverpb::Maintenance::NewStub(Connect(setup_->shard(1).member(0).client_address()));
  etcdserverpb::StatusResponse status;
  ASSERT_TRUE(maintenance->Status(Ctx().get(), {}, &status).ok());
  etcdserverpb::AlarmRequest alarm;
  alarm.set_memberid(status.header().member_id());
  alarm.set_alarm(etcdserverpb::NOSPACE);
  const auto set_alarm = [&](etcdserverpb::AlarmRequest::AlarmAction action) {
    alarm.set_action(action);
    etcdserverpb::AlarmResponse response;
    return maintenance->Alarm(Ctx().get(), alarm, &response).ok();
  };
  ASSERT_TRUE(set_alarm(etcdserverpb::AlarmRequest::ACTIVATE));
  struct Clear {
    std::function<bool(etcdserverpb::AlarmRequest::AlarmAction)> set;
    ~Clear() { set(etcdserverpb::AlarmRequest::DEACTIVATE); }
  } clear{set_alarm};

  HttpResult health;
  ASSERT_TRUE(WaitFor(
      [&] {
        health = HttpGet(metrics_port_, "/health");
        return health.status == 503;
      },
      10s));
  EXPECT_NE(health.body.find("\"health\":\"false\""), std::string::npos) << health.body;
  EXPECT_NE(health.body.find("shard-1"), std::string::npos) << health.body;
  EXPECT_NE(health.body.find("ALARM NOSPACE"), std::string::npos) << health.body;
  EXPECT_EQ(health.body.find("shard-0"), std::string::npos) << health.body;
  // As etcd's ?exclude=NOSPACE; a full shard still serves reads, so the proxy stays ready and
  // its gRPC health SERVING.
  EXPECT_EQ(HttpGet(metrics_port_, "/health?exclude=NOSPACE").status, 200);
  EXPECT_EQ(HttpGet(metrics_port_, "/readyz").status, 200);
  EXPECT_EQ(Check(""), HealthCheckResponse::SERVING);
  EXPECT_NE(HttpGet(metrics_port_, "/shards").body.find("\"alarms\":[\"NOSPACE\"]"), std::string::npos);
  EXPECT_NE(setup_->proxy().process().Log().find("has active alarms: NOSPACE"), std::string::npos);

  ASSERT_TRUE(set_alarm(etcdserverpb::AlarmRequest::DEACTIVATE));
  EXPECT_TRUE(WaitFor([] { return HealthIs(200); }, 10s)) << HttpGet(metrics_port_, "/health").body;
  EXPECT_EQ(HttpGet(metrics_port_, "/health").body, "{\"health\":\"true\",\"reason\":\"\"}");
}

TEST_F(HealthTest, GrpcHealthCheckKnowsOnlyTheServerAsAWhole) {
  EXPECT_TRUE(WaitFor([] { return Check("") == HealthCheckResponse::SERVING; }, 10s));
  grpc::Status status;
  EXPECT_EQ(Check("etcdserverpb.KV.nope", &status), std::nullopt);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();

  // Watch of an unknown service answers SERVICE_UNKNOWN and keeps the call open.
  auto stub = Health::NewStub(Connect(proxy()));
  auto ctx = Ctx(10s);
  HealthCheckRequest request;
  request.set_service("nope");
  auto reader = stub->Watch(ctx.get(), request);
  HealthCheckResponse response;
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVICE_UNKNOWN);
  ctx->TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

// The proxy's shutdown tells health watchers NOT_SERVING and ends their calls, rather than
// leaving them to the server's grace period.
TEST_F(HealthTest, ShutdownTellsHealthWatchersNotServing) {
  std::vector<ShardSpec> shards;
  const std::vector<std::pair<std::string, std::string>> ranges = {{"", "i"}, {"i", "s"}, {"s", ""}};
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    shards.push_back({ranges[i].first, ranges[i].second, setup_->shard(i).ClientAddresses()});
  }
  ProxyProcess second(shards);
  second.Start();
  auto stub = Health::NewStub(Connect(second.address()));
  HealthCheckResponse response;
  ASSERT_TRUE(WaitFor(
      [&] { return stub->Check(Ctx(2s).get(), {}, &response).ok() && response.status() == HealthCheckResponse::SERVING; },
      10s));
  auto ctx = Ctx(20s);
  auto reader = stub->Watch(ctx.get(), HealthCheckRequest{});
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  EXPECT_EQ(second.process().Terminate(10s), 0) << second.process().Log();
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  const grpc::Status end = reader->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::UNAVAILABLE) << end.error_message();
}

// Last: it stops a shard. Watch sends the current status, then each change.
TEST_F(HealthTest, GrpcHealthWatchFollowsAShardDownAndUp) {
  ASSERT_TRUE(WaitFor([] { return Check("") == HealthCheckResponse::SERVING; }, 10s));
  const double open_before = Gauge("etcd_proxy_open_streams", {kHealthWatch});
  auto stub = Health::NewStub(Connect(proxy()));
  auto ctx = Ctx(50s);
  auto reader = stub->Watch(ctx.get(), HealthCheckRequest{});
  HealthCheckResponse response;
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  // The client half-closed right after its request; the call is still open.
  EXPECT_EQ(Gauge("etcd_proxy_open_streams", {kHealthWatch}), open_before + 1);

  setup_->shard(2).KillMember(0);
  ASSERT_TRUE(reader->Read(&response)) << setup_->proxy().process().Log();
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Check(""), HealthCheckResponse::NOT_SERVING);

  setup_->shard(2).StartMember(0);
  setup_->shard(2).WaitReady();
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  ctx->TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitFor([&] { return Gauge("etcd_proxy_open_streams", {kHealthWatch}) == open_before; }, 10s));

  // One log line per state change of the shard, however many probes saw it down.
  const std::string log = setup_->proxy().process().Log();
  std::size_t down_lines = 0;
  for (auto at = log.find("\"shard-2\""); at != std::string::npos; at = log.find("\"shard-2\"", at + 1)) {
    const auto line_end = log.find('\n', at);
    if (log.substr(at, line_end - at).find("is unhealthy") != std::string::npos) ++down_lines;
  }
  EXPECT_EQ(down_lines, 1u) << log;
}

}  // namespace
}  // namespace esp::test
