// The binary itself: clean shutdown on signals, refusal of bad configurations.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>

#include "support/fixtures.h"

namespace esp::test {
namespace {

TEST(CliTest, StopsCleanlyOnSigtermAndSigint) {
  EtcdCluster shard(1, "cli");
  shard.Start();
  for (const int signal : {SIGTERM, SIGINT}) {
    ProxyProcess proxy({{"", "", shard.ClientAddresses()}});
    proxy.Start();
    EXPECT_EQ(Etcdctl(proxy.address(), "put k v").output, "OK\n");
    proxy.process().Signal(signal);
    const bool exited = WaitFor([&] { return !proxy.process().running(); }, std::chrono::seconds(10));
    ASSERT_TRUE(exited) << "signal " << signal;
    EXPECT_EQ(proxy.process().exit_status(), 0) << "signal " << signal;
    EXPECT_NE(proxy.process().Log().find("shutting down"), std::string::npos) << proxy.process().Log();
  }
}

TEST(CliTest, ABadLayoutIsRefusedWithExitStatus2NamingTheShard) {
  TempDir dir;
  const auto path = dir.path() / "bad.yaml";
  std::ofstream(path) << "shards:\n  - {start: \"\", end: i, address: 127.0.0.1:1}\n  - {start: k, end: \"\", address: 127.0.0.1:2}\n";
  const auto result = RunCommand(std::string(ESP_PROXY_BINARY_FOR_TESTS) + " --config " + path.string() +
                                 " --listen-addr 127.0.0.1:" + std::to_string(FreePort()));
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("gap in the keyspace between shard 0 (shard-0)"), std::string::npos) << result.output;
}

TEST(CliTest, MissingConfigFlagIsAUsageError) {
  const auto result = RunCommand(std::string(ESP_PROXY_BINARY_FOR_TESTS));
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.output.find("--config is required"), std::string::npos) << result.output;
}

}  // namespace
}  // namespace esp::test
