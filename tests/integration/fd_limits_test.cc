// The proxy at and near its open-file limit, against three real etcd shards on loopback: the
// operator listener keeps answering past FD_SETSIZE (1,024) client connections, and a proxy out
// of descriptors neither floods its log nor stops serving the clients it has, and accepts again
// once descriptors are free.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <iostream>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/fixtures.h"
#include "support/operator_http.h"

namespace esp::test {
namespace {

using namespace std::chrono_literals;

// Bounds the tests hold the proxy to (measured: about 40 MB resident with 1,100 idle connections).
constexpr long kRssBoundKb = 256 * 1024;

// Idle TCP connections to a port: connected, never written to. Closed with the object.
class IdleConnections {
 public:
  IdleConnections(int port, std::size_t count) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    for (std::size_t i = 0; i < count; ++i) {
      const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) throw std::runtime_error("socket: " + std::string(std::strerror(errno)));
      if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
        close(fd);
        throw std::runtime_error("connect: " + std::string(std::strerror(errno)));
      }
      fds_.push_back(fd);
    }
  }
  ~IdleConnections() {
    for (int fd : fds_) close(fd);
  }
  IdleConnections(const IdleConnections&) = delete;
  IdleConnections& operator=(const IdleConnections&) = delete;

 private:
  std::vector<int> fds_;
};

// This test process holds thousands of sockets: its soft open-file limit goes up to the hard one.
// False when even that is below `needed`.
bool RaiseOwnOpenFileLimit(rlim_t needed) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return false;
  limit.rlim_cur = limit.rlim_max;
  return setrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur >= needed;
}

std::size_t OpenFiles(pid_t pid) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) ++n;
  return n;
}

long RssKb(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.starts_with("VmRSS:")) return std::stol(line.substr(6));
  }
  return -1;
}

std::uintmax_t LogBytes(ProxyProcess& proxy) { return proxy.process().Log().size(); }

// A put through its own connection, as a client that keeps to the rules.
bool PutWorks(const std::shared_ptr<grpc::Channel>& channel, const std::string& key) {
  auto stub = etcdserverpb::KV::NewStub(channel);
  etcdserverpb::PutRequest request;
  request.set_key(key);
  request.set_value("v");
  etcdserverpb::PutResponse response;
  return stub->Put(Ctx(5s).get(), request, &response).ok();
}

class FdLimitsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { setup_ = std::make_unique<ShardedSetup>(); }
  static void TearDownTestSuite() { setup_.reset(); }
  static std::vector<ShardSpec> Specs() {
    std::vector<ShardSpec> specs;
    const std::vector<std::pair<std::string, std::string>> bounds = {{"", "i"}, {"i", "s"}, {"s", ""}};
    for (std::size_t i = 0; i < 3; ++i) specs.push_back({bounds[i].first, bounds[i].second, setup_->shard(i).ClientAddresses()});
    return specs;
  }
  static std::unique_ptr<ShardedSetup> setup_;
};
std::unique_ptr<ShardedSetup> FdLimitsTest::setup_;

// libmicrohttpd in select() mode drops every connection whose descriptor is FD_SETSIZE or more:
// with 1,100 idle clients on the data plane, /health and /livez stopped answering (Kubernetes
// would restart a healthy proxy). In epoll mode they answer.
TEST_F(FdLimitsTest, HealthAnswersWithMoreClientConnectionsThanFdSetSize) {
  constexpr std::size_t kIdle = 1100;
  if (!RaiseOwnOpenFileLimit(kIdle + 200)) GTEST_SKIP() << "the hard open-file limit is below " << kIdle + 200;
  const int metrics_port = FreePort();
  ProxyProcess proxy(Specs(), {"--listen-metrics-addr", "127.0.0.1:" + std::to_string(metrics_port)});
  proxy.Start();
  EXPECT_NE(proxy.process().Log().find("open-file limit: "), std::string::npos) << proxy.process().Log();
  const pid_t pid = proxy.process().pid();
  const auto client = Connect(proxy.address());
  ASSERT_TRUE(PutWorks(client, "fd-a"));
  const std::size_t before = OpenFiles(pid);

  IdleConnections idle(proxy.port(), kIdle);
  ASSERT_TRUE(WaitFor([&] { return OpenFiles(pid) >= before + kIdle; }, 20s)) << OpenFiles(pid);
  const auto started = std::chrono::steady_clock::now();
  const auto health = HttpGet(metrics_port, "/health");
  const auto elapsed = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(health.status, 200) << health.body << "\n" << proxy.process().Log().substr(0, 4096);
  EXPECT_EQ(HttpGet(metrics_port, "/livez").status, 200);
  EXPECT_EQ(HttpGet(metrics_port, "/readyz").status, 200);
  EXPECT_TRUE(PutWorks(client, "fd-b"));
  const long rss = RssKb(pid);
  EXPECT_LT(rss, kRssBoundKb);
  std::cout << "with " << OpenFiles(pid) << " descriptors open: /health in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms, RSS " << rss / 1024
            << " MB\n";
}

// Out of descriptors, the acceptor used to fail and log on every loop turn (81 MB of log in 3 s).
// Now it pauses, logs once per interval with a count, keeps serving its clients, and accepts again
// when descriptors are free. The limit is lowered on the running proxy (prlimit(2)), just above
// what it holds, so that the connections below exhaust it.
TEST_F(FdLimitsTest, OutOfDescriptorsTheProxyLogsLittleAndRecovers) {
  if (!RaiseOwnOpenFileLimit(1024)) GTEST_SKIP() << "the hard open-file limit is below 1024";
  ProxyProcess proxy(Specs());
  proxy.Start();
  const pid_t pid = proxy.process().pid();
  const auto client = Connect(proxy.address());
  ASSERT_TRUE(PutWorks(client, "fd-c"));
  rlimit original{};
  ASSERT_EQ(prlimit(pid, RLIMIT_NOFILE, nullptr, &original), 0);
  // The soft limit only: what the proxy raised at start, and may be given back below.
  const rlim_t low = OpenFiles(pid) + 20;
  const rlimit lowered{low, original.rlim_max};
  ASSERT_EQ(prlimit(pid, RLIMIT_NOFILE, &lowered, nullptr), 0);
  const auto log_before = LogBytes(proxy);
  {
    IdleConnections idle(proxy.port(), 200);
    ASSERT_TRUE(WaitFor([&] { return OpenFiles(pid) >= low; }, 10s)) << OpenFiles(pid) << " of " << low;
    // Held at the limit for 3 s: the old acceptor wrote tens of megabytes meanwhile.
    const auto until = std::chrono::steady_clock::now() + 3s;
    int puts = 0;
    while (std::chrono::steady_clock::now() < until) {
      EXPECT_TRUE(PutWorks(client, "fd-d")) << "the connected client is not served at the limit";
      ++puts;
      std::this_thread::sleep_for(100ms);  // pacing a client, not synchronisation
    }
    const auto grown = LogBytes(proxy) - log_before;
    EXPECT_LT(grown, 4096u) << proxy.process().Log().substr(0, 4096);
    EXPECT_NE(proxy.process().Log().find("Too many open files"), std::string::npos);
    EXPECT_LT(RssKb(pid), kRssBoundKb);
    std::cout << "3 s at the limit: " << grown << " bytes of log, " << puts << " puts served, RSS "
              << RssKb(pid) / 1024 << " MB\n";
  }
  // Descriptors free again: the backlog drains and a new client is served.
  EXPECT_TRUE(WaitFor([&] { return PutWorks(Connect(proxy.address()), "fd-e"); }, 10s, 200ms))
      << proxy.process().Log().substr(0, 4096);
  ASSERT_EQ(prlimit(pid, RLIMIT_NOFILE, &original, nullptr), 0);
  EXPECT_TRUE(proxy.process().running());
}

}  // namespace
}  // namespace esp::test
