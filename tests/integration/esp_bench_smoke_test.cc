// Smoke test for tools/esp-bench: tiny checked runs against one real etcd and the proxy in front
// of it, so CI keeps the load tool (and its answer checks) working.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace esp::test
