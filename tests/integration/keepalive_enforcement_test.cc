// Keepalive on the client-facing h2 plane against a real proxy and etcd, driven by a raw nghttp2
// client (support/raw_h2_client.h) that pings as it is told: too many PINGs earn
// GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") as from etcd (grpc-go); pings at the allowed rate, or after responses, do not; a silent client
// is pinged and dropped after --grpc-keepalive-timeout (etcd's --grpc-keepalive-* flags).
// The grpc_stack_keepalive_enforcement entry runs the same tests against gRPC C++'s server
// (--data-plane=grpc, given the same flags): both planes must behave alike.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "support/fixtures.h"
#include "support/raw_h2_client.h"

namespace esp::test {
namespace {

using namespace std::chrono_literals;

// A serializable Range for key "k" on `client` (answered by the proxy with HEADERS and DATA).
void Range(RawH2Client& client) {
  etcdserverpb::RangeRequest request;
  request.set_key("k");
  request.set_serializable(true);
  client.Submit("/etcdserverpb.KV/Range", {Framed(request.SerializeAsString())});
}

class KeepaliveEnforcementTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    etcd_ = std::make_unique<EtcdCluster>(1, "keepalive");
    etcd_->Start();
  }
  static void TearDownTestSuite() { etcd_.reset(); }
  static std::unique_ptr<ProxyProcess> StartProxy(std::vector<std::string> args) {
    auto proxy = std::make_unique<ProxyProcess>(std::vector<ShardSpec>{{"", "", etcd_->ClientAddresses()}}, std::move(args));
    proxy->Start();
    return proxy;
  }
  static std::unique_ptr<EtcdCluster> etcd_;
};
std::unique_ptr<EtcdCluster> KeepaliveEnforcementTest::etcd_;

TEST_F(KeepaliveEnforcementTest, TooManyPingsGetGoawayEnhanceYourCalmAndTheConnectionCloses) {
  const auto proxy = StartProxy({});  // default --grpc-keepalive-min-time 5s
  RawH2Client client(PortOf(proxy->address()));
  // The first ping is free, the next two are strikes, the fourth is one too many.
  for (int i = 0; i < 4; ++i) client.Ping();
  ASSERT_TRUE(client.RunUntil([&] { return client.peer_closed(); })) << "connection still open";
  ASSERT_TRUE(client.goaway_code().has_value());
  EXPECT_EQ(*client.goaway_code(), static_cast<std::uint32_t>(NGHTTP2_ENHANCE_YOUR_CALM));
  EXPECT_EQ(client.goaway_data(), "too_many_pings");
  EXPECT_EQ(client.ping_acks(), 4);  // every PING is still answered, as grpc-go does
  // The proxy itself goes on serving.
  EXPECT_EQ(Etcdctl(proxy->address(), "put ka/after yes").exit_code, 0);
}

TEST_F(KeepaliveEnforcementTest, ThreePingsInARowAreTolerated) {
  const auto proxy = StartProxy({});
  RawH2Client client(PortOf(proxy->address()));
  for (int i = 0; i < 3; ++i) client.Ping();
  ASSERT_TRUE(client.RunUntil([&] { return client.ping_acks() == 3; }));
  Range(client);
  ASSERT_TRUE(client.RunUntil([&] { return client.streams_closed() == 1; }));
  EXPECT_FALSE(client.goaway_code().has_value());
  EXPECT_FALSE(client.peer_closed());
}

TEST_F(KeepaliveEnforcementTest, PingsAfterResponsesAreNotStrikes) {
  // As BDP pings: each follows data the server sent, however soon.
  const auto proxy = StartProxy({});
  RawH2Client client(PortOf(proxy->address()));
  for (int i = 1; i <= 10; ++i) {
    Range(client);
    ASSERT_TRUE(client.RunUntil([&] { return client.streams_closed() == i; })) << i;
    client.Ping();
    ASSERT_TRUE(client.RunUntil([&] { return client.ping_acks() == i; })) << i;
  }
  EXPECT_FALSE(client.goaway_code().has_value());
  EXPECT_FALSE(client.peer_closed());
}

TEST_F(KeepaliveEnforcementTest, PingsAtTheConfiguredMinimumIntervalAreAllowed) {
  const auto proxy = StartProxy({"--grpc-keepalive-min-time", "100ms"});
  RawH2Client client(PortOf(proxy->address()));
  const auto start = std::chrono::steady_clock::now();
  for (int i = 1; i <= 6; ++i) {
    // The pace of the pings is what is under test: each waits out the minimum interval.
    std::this_thread::sleep_until(start + i * 150ms);
    client.Ping();
    ASSERT_TRUE(client.RunUntil([&] { return client.ping_acks() == i; })) << i;
  }
  EXPECT_FALSE(client.goaway_code().has_value());
  EXPECT_FALSE(client.peer_closed());
  // And the same flag still refuses a burst.
  for (int i = 0; i < 4; ++i) client.Ping();
  ASSERT_TRUE(client.RunUntil([&] { return client.peer_closed(); }));
  EXPECT_EQ(client.goaway_data(), "too_many_pings");
}

TEST_F(KeepaliveEnforcementTest, ServerPingsASilentClientAndDropsOneThatNeverAnswers) {
  const auto proxy = StartProxy({"--grpc-keepalive-interval", "200ms", "--grpc-keepalive-timeout", "300ms"});
  // A client that reads (nghttp2 answers each PING) stays connected and is pinged repeatedly.
  RawH2Client live(PortOf(proxy->address()));
  EXPECT_TRUE(live.RunUntil([&] { return live.server_pings() >= 3; }, 5s)) << live.server_pings();
  EXPECT_FALSE(live.peer_closed());
  // A client that connects and then never sends a byte (not even the preface) is closed.
  const int silent = ConnectLoopback(PortOf(proxy->address()));
  const auto start = std::chrono::steady_clock::now();
  pollfd p{silent, POLLIN, 0};
  bool closed = false;
  while (!closed && std::chrono::steady_clock::now() - start < 5s) {
    if (poll(&p, 1, 100) <= 0) continue;
    char buf[4096];
    closed = recv(silent, buf, sizeof buf, 0) <= 0;
  }
  close(silent);
  EXPECT_TRUE(closed) << "a client silent for 5 s is still connected";
  EXPECT_GE(std::chrono::steady_clock::now() - start, 400ms);  // not before interval + timeout
}

TEST_F(KeepaliveEnforcementTest, GrpcCoreClientPingingTooOftenIsSentAwayAndRecovers) {
  // A real client misconfigured to ping every 100 ms, also without calls: gRPC core hears the
  // GOAWAY too_many_pings, drops the connection (the channel leaves READY), and its next call
  // reconnects (gRPC core then doubles its keepalive time).
  const auto proxy = StartProxy({});
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 100);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS, 100);
  const auto channel = grpc::CreateCustomChannel(proxy->address(), grpc::InsecureChannelCredentials(), args);
  ASSERT_TRUE(channel->WaitForConnected(std::chrono::system_clock::now() + 10s));
  EXPECT_TRUE(channel->WaitForStateChange(GRPC_CHANNEL_READY, std::chrono::system_clock::now() + 10s))
      << "still READY: no GOAWAY";
  // Our plane says so in the log (gRPC C++'s server only at debug level).
  const char* plane = std::getenv("ESP_DATA_PLANE");
  if (plane == nullptr || std::string(plane) != "grpc") {
    EXPECT_TRUE(WaitFor([&] { return proxy->process().Log().find("too_many_pings") != std::string::npos; }, 5s))
        << proxy->process().Log();
  }
  const auto stub = etcdserverpb::KV::NewStub(channel);
  etcdserverpb::RangeRequest request;
  request.set_key("ka/after-goaway");
  etcdserverpb::RangeResponse response;
  const auto status = stub->Range(Ctx().get(), request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(KeepaliveEnforcementTest, BadDurationFlagIsRefused) {
  const auto run = RunCommand(std::string(ESP_PROXY_BINARY_FOR_TESTS) +
                              " --config /dev/null --grpc-keepalive-min-time 5 2>&1");
  EXPECT_NE(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("not a duration"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace esp::test
