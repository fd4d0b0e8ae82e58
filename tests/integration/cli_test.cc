// The binary itself: clean shutdown on signals, refusal of bad configurations.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdint>
#include <fstream>
#include <string>

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

// A TLS peer that goes away while the proxy writes to it must not end the process: OpenSSL's
// write(2) raises SIGPIPE (seen: a proxy vanished mid-suite without a log line). Checked on the
// running process's signal disposition, which is what decides it.
TEST(CliTest, TheProxyIgnoresSigpipe) {
  EtcdCluster shard(1, "sigpipe");
  shard.Start();
  ProxyProcess proxy({{"", "", shard.ClientAddresses()}});
  proxy.Start();
  std::ifstream status("/proc/" + std::to_string(proxy.process().pid()) + "/status");
  std::string line;
  std::uint64_t ignored = 0;
  while (std::getline(status, line)) {
    if (line.starts_with("SigIgn:")) ignored = std::stoull(line.substr(7), nullptr, 16);
  }
  EXPECT_NE(ignored & (std::uint64_t{1} << (SIGPIPE - 1)), 0u) << "SigIgn mask " << std::hex << ignored;
  EXPECT_EQ(Etcdctl(proxy.address(), "put k v").output, "OK\n");
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
  EXPECT_NE(result.output.find("--config or --meta-endpoints is required"), std::string::npos) << result.output;
}

}  // namespace
}  // namespace esp::test

namespace esp::test {
namespace {

// A boundary that is not printable (the byte 0x80) reaches the proxy as base64 and splits
// binary keys at the byte, not at some UTF-8 encoding of it.
TEST(CliTest, BinaryBoundarySplitsAtTheByte) {
  EtcdCluster low(1, "low");
  EtcdCluster high(1, "high");
  low.StartMember(0);
  high.StartMember(0);
  low.WaitReady();
  high.WaitReady();
  const std::string boundary("\x80", 1);
  ProxyProcess proxy({{"", boundary, low.ClientAddresses()}, {boundary, "", high.ClientAddresses()}});
  proxy.Start();
  auto kv = etcdserverpb::KV::NewStub(Connect(proxy.address()));
  for (const std::string key : {std::string("\x7f\xff", 2), std::string("\x80", 1), std::string("\xc2\x80", 2)}) {
    grpc::ClientContext ctx;
    etcdserverpb::PutRequest put;
    put.set_key(key);
    put.set_value("v");
    etcdserverpb::PutResponse resp;
    ASSERT_TRUE(kv->Put(&ctx, put, &resp).ok());
  }
  const auto count = [](const std::string& address) {
    auto stub = etcdserverpb::KV::NewStub(Connect(address));
    grpc::ClientContext ctx;
    etcdserverpb::RangeRequest req;
    req.set_key(std::string(1, '\0'));
    req.set_range_end(std::string(1, '\0'));
    etcdserverpb::RangeResponse resp;
    EXPECT_TRUE(stub->Range(&ctx, req, &resp).ok());
    return resp.count();
  };
  EXPECT_EQ(count(low.member(0).client_address()), 1);   // \x7f\xff
  EXPECT_EQ(count(high.member(0).client_address()), 2);  // \x80 and \xc2\x80
  EXPECT_EQ(count(proxy.address()), 3);
}

}  // namespace
}  // namespace esp::test
