// Smoke test for tools/esp-bench: tiny checked runs against one real etcd and the proxy in front
// of it, so CI keeps the load tool (and its answer checks) working.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <string>

#include "support/fixtures.h"

#ifndef ESP_BENCH_BINARY
#error "ESP_BENCH_BINARY must name the esp-bench binary"
#endif

namespace esp::test {
namespace {

class EspBenchSmokeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    etcd_ = std::make_unique<EtcdCluster>(1, "bench");
    etcd_->Start();
    proxy_ = std::make_unique<ProxyProcess>(std::vector<ShardSpec>{{"", "", etcd_->ClientAddresses()}});
    proxy_->Start();
  }
  static void TearDownTestSuite() {
    proxy_.reset();
    etcd_.reset();
  }
  static std::string Bench(const std::string& endpoint, const std::string& args) {
    const auto r = RunCommand(std::string(ESP_BENCH_BINARY) + " --endpoints " + endpoint +
                                  " --conns 2 --inflight 8 --key-space 50 --json " + args,
                              std::chrono::seconds(15));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("\"errors\":0,"), std::string::npos) << r.output;
    return r.output;
  }
  static std::unique_ptr<EtcdCluster> etcd_;
  static std::unique_ptr<ProxyProcess> proxy_;
};
std::unique_ptr<EtcdCluster> EspBenchSmokeTest::etcd_;
std::unique_ptr<ProxyProcess> EspBenchSmokeTest::proxy_;

TEST_F(EspBenchSmokeTest, PutGetRangeTxnThroughTheProxyCheckEveryAnswer) {
  const std::string proxy = proxy_->address();
  EXPECT_NE(Bench(proxy, "--mode put --total 200").find("\"ok\":200,"), std::string::npos);
  EXPECT_NE(Bench(proxy, "--mode get --total 200").find("\"ok\":200,"), std::string::npos);
  Bench(proxy, "--mode get --consistency s --no-preload --total 200");
  Bench(proxy, "--mode range --range-keys 10 --no-preload --total 100");
  Bench(proxy, "--mode txn --no-preload --total 100");
}

TEST_F(EspBenchSmokeTest, WatchAndLeaseAgainstEtcdDirectly) {
  const std::string etcd = etcd_->ClientAddresses().front();
  EXPECT_NE(Bench(etcd, "--mode watch --key-prefix w/ --watchers 3 --total 50").find("\"events\":150,"),
            std::string::npos);
  Bench(etcd, "--mode lease-grant --total 20");
  Bench(etcd, "--mode lease-keepalive --total 100");
}

TEST_F(EspBenchSmokeTest, WatchAndLeaseThroughTheProxy) {
  const std::string proxy = proxy_->address();
  EXPECT_NE(Bench(proxy, "--mode watch --key-prefix pw/ --watchers 3 --total 50").find("\"events\":150,"),
            std::string::npos);
  EXPECT_NE(Bench(proxy, "--mode lease-grant --total 20").find("\"ok\":20,"), std::string::npos);
  EXPECT_NE(Bench(proxy, "--mode lease-keepalive --total 100").find("\"ok\":100,"), std::string::npos);
}

TEST_F(EspBenchSmokeTest, AWrongAnswerIsAnError) {
  // Values of another size than the preloaded ones: every get must be counted as an error.
  const std::string etcd = etcd_->ClientAddresses().front();
  Bench(etcd, "--mode preload --key-prefix wrong/");
  const auto r = RunCommand(std::string(ESP_BENCH_BINARY) + " --endpoints " + etcd +
                                " --json --mode get --no-preload --key-prefix wrong/ --key-space 50 --value-size 7 --total 20",
                            std::chrono::seconds(15));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("wrong value"), std::string::npos) << r.output;
}

// Memory bounds stated in docs/BENCHMARKS.md ("Memory"): each test gets a freshly started proxy,
// because freed memory stays in the allocator and would hide the growth of a second measurement.
// The bounds are about twice what was measured, so they catch a leak or a per-watch blow-up
// without failing on allocator noise.
constexpr long long kIdleRssBoundKb = 48 * 1024;
constexpr long long kRssPer1000WatchesBoundKb = 40 * 1024;
constexpr long long kRssPer1000SharedStreamWatchesBoundKb = 8 * 1024;
constexpr long long kRssPer1000LeasesBoundKb = 16 * 1024;

long long RssKb(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return -1;
}

long long JsonInt(const std::string& json, const std::string& field) {
  std::smatch m;
  if (!std::regex_search(json, m, std::regex("\"" + field + "\":(-?[0-9]+)"))) return -1;
  return std::stoll(m[1]);
}

class EspBenchMemoryTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    etcd_ = std::make_unique<EtcdCluster>(1, "benchmem");
    etcd_->Start();
  }
  static void TearDownTestSuite() { etcd_.reset(); }
  void SetUp() override {
    proxy_ = std::make_unique<ProxyProcess>(std::vector<ShardSpec>{{"", "", etcd_->ClientAddresses()}});
    proxy_->Start();
  }
  // Runs a hold-* mode against the fresh proxy; returns the RSS growth in kB while holding.
  long long HoldGrowthKb(const std::string& args) {
    const auto r = RunCommand(std::string(ESP_BENCH_BINARY) + " --endpoints " + proxy_->address() +
                                  " --json --hold 1000 --rss-pid " + std::to_string(proxy_->process().pid()) + " " + args,
                              std::chrono::seconds(30));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(JsonInt(r.output, "errors"), 0) << r.output;
    EXPECT_EQ(JsonInt(r.output, "held"), 1000) << r.output;
    const long long before = JsonInt(r.output, "rss_before_kb"), held = JsonInt(r.output, "rss_held_kb");
    EXPECT_GT(before, 0) << r.output;
    EXPECT_GT(held, 0) << r.output;
    return held - before;
  }
  static std::unique_ptr<EtcdCluster> etcd_;
  std::unique_ptr<ProxyProcess> proxy_;
};
std::unique_ptr<EtcdCluster> EspBenchMemoryTest::etcd_;

TEST_F(EspBenchMemoryTest, IdleRssIsBounded) {
  const long long rss = RssKb(proxy_->process().pid());
  EXPECT_GT(rss, 0);
  EXPECT_LT(rss, kIdleRssBoundKb);
}

TEST_F(EspBenchMemoryTest, RssPer1000ClientWatchesIsBounded) {
  // One stream per watch, each on a key of its own; every watch must then deliver its key's put.
  const long long growth = HoldGrowthKb("--mode hold-watches --key-prefix hw/");
  EXPECT_LT(growth, kRssPer1000WatchesBoundKb);
}

TEST_F(EspBenchMemoryTest, RssPer1000ClientWatchesSharingStreamsIsBounded) {
  // 100 watches per stream, as clientv3 multiplexes one client's watches.
  const long long growth = HoldGrowthKb("--mode hold-watches --watches-per-stream 100 --key-prefix hs/");
  EXPECT_LT(growth, kRssPer1000SharedStreamWatchesBoundKb);
}

TEST_F(EspBenchMemoryTest, RssPer1000KeptAliveLeasesIsBounded) {
  const long long growth = HoldGrowthKb("--mode hold-leases");
  EXPECT_LT(growth, kRssPer1000LeasesBoundKb);
}

}  // namespace
}  // namespace esp::test
