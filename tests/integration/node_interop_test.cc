// Interop with the Node etcd3 client (grpc-js, a third HTTP/2 and gRPC implementation after
// grpc-go's etcdctl and gRPC core's python-etcd3): tests/interop/node/interop.js against the proxy
// over three real etcd shards split inside the script's prefix, so its prefix range and its watch
// span all three. The script asserts every answer; this test asserts it ran to the end, and that a
// grpc-js client pinging too often was sent away with GOAWAY too_many_pings and recovered.
//
// The client comes from npm (tests/interop/node/package-lock.json, installed by
// scripts/install-deps.sh). When it is missing and `npm ci` cannot fetch it either, the binary
// exits with kSkipExitCode, which ctest reports as skipped (SKIP_RETURN_CODE), not as passed.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "support/fixtures.h"

#ifndef ESP_NODE_INTEROP_DIR
#error "ESP_NODE_INTEROP_DIR must name tests/interop/node"
#endif

namespace esp::test {
namespace {

constexpr int kSkipExitCode = 77;
const std::string kDir = ESP_NODE_INTEROP_DIR;
const std::string kPrefix = "node/";

bool ClientLoads() {
  return RunCommand("env -C " + kDir + " node -e \"require('etcd3')\"", std::chrono::seconds(30)).exit_code == 0;
}

// Empty when the client is usable; otherwise why not. Installs it from the lock file if needed
// (offline-safe: nothing is fetched when node_modules is already there).
std::string PrepareClient() {
  if (RunCommand("node --version").exit_code != 0) return "node is not installed (scripts/install-deps.sh)";
  if (ClientLoads()) return "";
  const auto install = RunCommand("npm ci --prefix " + kDir + " --no-audit --no-fund", std::chrono::seconds(240));
  if (install.exit_code != 0) return "npm ci failed: " + install.output;
  return ClientLoads() ? "" : "etcd3 does not load after npm ci";
}

class NodeInteropTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Split points inside the script's prefix: "node/a.." on shard 0, "node/m.." on 1, "node/z.." on 2.
    const std::vector<std::pair<std::string, std::string>> bounds = {
        {"", kPrefix + "i"}, {kPrefix + "i", kPrefix + "s"}, {kPrefix + "s", ""}};
    std::vector<ShardSpec> specs;
    for (std::size_t i = 0; i < bounds.size(); ++i) {
      shards_.push_back(std::make_unique<EtcdCluster>(1, "node" + std::to_string(i)));
      shards_.back()->Start();
      specs.push_back({bounds[i].first, bounds[i].second, shards_.back()->ClientAddresses()});
    }
    proxy_ = std::make_unique<ProxyProcess>(specs);
    proxy_->Start();
  }
  static void TearDownTestSuite() {
    proxy_.reset();
    shards_.clear();
  }
  static std::vector<std::unique_ptr<EtcdCluster>> shards_;
  static std::unique_ptr<ProxyProcess> proxy_;
};
std::vector<std::unique_ptr<EtcdCluster>> NodeInteropTest::shards_;
std::unique_ptr<ProxyProcess> NodeInteropTest::proxy_;

TEST_F(NodeInteropTest, Etcd3ClientPutGetRangeTxnWatchLease) {
  const auto run = RunCommand("node " + kDir + "/interop.js " + proxy_->address() + " " + kPrefix,
                              std::chrono::seconds(45));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  for (const char* step : {"putGetAcrossShards: ok", "prefixRangeSpanningShards: ok", "txn: ok", "watch: ok",
                           "lease: ok", "keepaliveTooOften: ok", "node-etcd3 ok"}) {
    EXPECT_NE(run.output.find(step), std::string::npos) << step << " missing:\n" << run.output;
  }
  // keepaliveTooOften's client pinged every 100 ms: the proxy must have sent it away (and the
  // script checked that its calls went on working).
  EXPECT_NE(proxy_->process().Log().find("GOAWAY too_many_pings"), std::string::npos) << proxy_->process().Log();
  // What the shards hold afterwards, read behind the proxy's back: the script's writes landed on
  // the shard that owns each key.
  EXPECT_NE(Etcdctl(shards_[0]->ClientAddresses().front(), "get node/a").output.find("on-shard-0"), std::string::npos);
  EXPECT_NE(Etcdctl(shards_[1]->ClientAddresses().front(), "get node/m").output.find("on-shard-1"), std::string::npos);
  EXPECT_NE(Etcdctl(shards_[2]->ClientAddresses().front(), "get node/z").output.find("on-shard-2"), std::string::npos);
}

}  // namespace
}  // namespace esp::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (const std::string why = esp::test::PrepareClient(); !why.empty()) {
    std::cout << "SKIPPED: the Node etcd3 client is not available: " << why << "\n";
    return esp::test::kSkipExitCode;
  }
  return RUN_ALL_TESTS();
}
