// Keepalive on the client-facing h2 plane against a real proxy and etcd, driven by a raw nghttp2
// client that pings as it is told: too many PINGs earn GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings")
// as from etcd (grpc-go); pings at the allowed rate, or after responses, do not; a silent client
// is pinged and dropped after --grpc-keepalive-timeout (etcd's --grpc-keepalive-* flags).
// The grpc_stack_keepalive_enforcement entry runs the same tests against gRPC C++'s server
// (--data-plane=grpc, given the same flags): both planes must behave alike.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "support/fixtures.h"

namespace esp::test {
namespace {

using namespace std::chrono_literals;

int ConnectTo(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) throw std::runtime_error("connect");
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// An HTTP/2 client that sends PINGs and unary Range calls when told and records what comes back.
class PingingClient {
 public:
  explicit PingingClient(int port) : fd_(ConnectTo(port)) {
    nghttp2_session_callbacks* cb = nullptr;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, [](nghttp2_session*, const nghttp2_frame* frame, void* user) {
      auto* self = static_cast<PingingClient*>(user);
      if (frame->hd.type == NGHTTP2_GOAWAY) {
        self->goaway_code_ = frame->goaway.error_code;
        self->goaway_data_.assign(reinterpret_cast<const char*>(frame->goaway.opaque_data), frame->goaway.opaque_data_len);
      } else if (frame->hd.type == NGHTTP2_PING) {
        ++((frame->hd.flags & NGHTTP2_FLAG_ACK) != 0 ? self->ping_acks_ : self->server_pings_);
      }
      return 0;
    });
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, [](nghttp2_session*, std::int32_t, std::uint32_t, void* user) {
      ++static_cast<PingingClient*>(user)->streams_closed_;
      return 0;
    });
    nghttp2_session_client_new(&session_, cb, this);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);
  }
  ~PingingClient() {
    nghttp2_session_del(session_);
    close(fd_);
  }

  void Ping() { nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, nullptr); }

  // A serializable Range for key "k" (answered by the proxy with HEADERS and DATA).
  void Range() {
    etcdserverpb::RangeRequest request;
    request.set_key("k");
    request.set_serializable(true);
    const std::string body = request.SerializeAsString();
    message_ = std::string(1, '\0');
    for (int shift = 24; shift >= 0; shift -= 8) message_.push_back(static_cast<char>((body.size() >> shift) & 0xff));
    message_ += body;
    const std::vector<std::pair<std::string, std::string>> headers = {
        {":method", "POST"}, {":scheme", "http"}, {":path", "/etcdserverpb.KV/Range"}, {":authority", "localhost"},
        {"content-type", "application/grpc"}, {"te", "trailers"}};
    std::vector<nghttp2_nv> nv;
    for (const auto& [k, v] : headers) {
      nv.push_back({reinterpret_cast<std::uint8_t*>(const_cast<char*>(k.data())),
                    reinterpret_cast<std::uint8_t*>(const_cast<char*>(v.data())), k.size(), v.size(),
                    NGHTTP2_NV_FLAG_NONE});
    }
    nghttp2_data_provider provider{};
    provider.read_callback = [](nghttp2_session*, std::int32_t, std::uint8_t* buf, std::size_t length,
                                std::uint32_t* flags, nghttp2_data_source*, void* user) -> ssize_t {
      std::string& message = static_cast<PingingClient*>(user)->message_;
      const std::size_t n = std::min(length, message.size());
      std::memcpy(buf, message.data(), n);
      message.erase(0, n);
      if (message.empty()) *flags |= NGHTTP2_DATA_FLAG_EOF;
      return static_cast<ssize_t>(n);
    };
    nghttp2_submit_request(session_, nullptr, nv.data(), nv.size(), &provider, nullptr);
    ++streams_started_;
  }

  // Sends what is queued, then reads until `done` holds, the server closes, or `timeout` passes.
  // True when `done` holds.
  bool RunUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done() && !peer_closed_) {
      Send();
      if (std::chrono::steady_clock::now() > deadline) break;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      std::uint8_t buf[65536];
      const ssize_t n = recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        peer_closed_ = true;
        break;
      }
      if (nghttp2_session_mem_recv(session_, buf, static_cast<std::size_t>(n)) < 0) break;
    }
    return done();
  }

  std::optional<std::uint32_t> goaway_code() const { return goaway_code_; }
  const std::string& goaway_data() const { return goaway_data_; }
  int ping_acks() const { return ping_acks_; }
  int server_pings() const { return server_pings_; }
  int streams_closed() const { return streams_closed_; }
  int streams_started() const { return streams_started_; }
  bool peer_closed() const { return peer_closed_; }

 private:
  void Send() {
    for (;;) {
      const std::uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n <= 0) return;
      for (ssize_t off = 0; off < n;) {
        const ssize_t w = send(fd_, data + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
        if (w <= 0) return;
        off += w;
      }
    }
  }

  int fd_;
  nghttp2_session* session_ = nullptr;
  std::string message_;
  std::optional<std::uint32_t> goaway_code_;
  std::string goaway_data_;
  int ping_acks_ = 0;
  int server_pings_ = 0;
  int streams_closed_ = 0;
  int streams_started_ = 0;
  bool peer_closed_ = false;
};

int PortOf(const std::string& address) { return std::stoi(address.substr(address.rfind(':') + 1)); }

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
  PingingClient client(PortOf(proxy->address()));
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
  PingingClient client(PortOf(proxy->address()));
  for (int i = 0; i < 3; ++i) client.Ping();
  ASSERT_TRUE(client.RunUntil([&] { return client.ping_acks() == 3; }));
  client.Range();
  ASSERT_TRUE(client.RunUntil([&] { return client.streams_closed() == 1; }));
  EXPECT_FALSE(client.goaway_code().has_value());
  EXPECT_FALSE(client.peer_closed());
}

TEST_F(KeepaliveEnforcementTest, PingsAfterResponsesAreNotStrikes) {
  // As BDP pings: each follows data the server sent, however soon.
  const auto proxy = StartProxy({});
  PingingClient client(PortOf(proxy->address()));
  for (int i = 1; i <= 10; ++i) {
    client.Range();
    ASSERT_TRUE(client.RunUntil([&] { return client.streams_closed() == i; })) << i;
    client.Ping();
    ASSERT_TRUE(client.RunUntil([&] { return client.ping_acks() == i; })) << i;
  }
  EXPECT_FALSE(client.goaway_code().has_value());
  EXPECT_FALSE(client.peer_closed());
}

TEST_F(KeepaliveEnforcementTest, PingsAtTheConfiguredMinimumIntervalAreAllowed) {
  const auto proxy = StartProxy({"--grpc-keepalive-min-time", "100ms"});
  PingingClient client(PortOf(proxy->address()));
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
  PingingClient live(PortOf(proxy->address()));
  EXPECT_TRUE(live.RunUntil([&] { return live.server_pings() >= 3; }, 5s)) << live.server_pings();
  EXPECT_FALSE(live.peer_closed());
  // A client that connects and then never sends a byte (not even the preface) is closed.
  const int silent = ConnectTo(PortOf(proxy->address()));
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
