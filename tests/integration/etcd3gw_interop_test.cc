// Interop with Debian's python3-etcd3gw (the grpc-gateway JSON client tooz and oslo use):
// tests/interop/etcd3gw/interop.py against the proxy's HTTP face over three real etcd shards
// split inside the script's prefix: put/get/delete, prefix reads across shards, txn, leases with
// keep-alive and expiry, a watch on one shard and a prefix watch across all three, with auth off
// and then on (token in Authorization). The script asserts every answer; this test asserts that
// it ran to the end (Debian's /usr/bin/python3: the package is built for it, not for a pyenv one).
// Without the package the binary exits 77 (ctest: skipped).
#include <gtest/gtest.h>

#include "support/fixtures.h"

#ifndef ESP_ETCD3GW_INTEROP_DIR
#error "ESP_ETCD3GW_INTEROP_DIR must name tests/interop/etcd3gw"
#endif

namespace esp::test {
namespace {

const std::string kPrefix = "py/";

TEST(Etcd3gwInteropTest, KvTxnLeasesWatchAuth) {
  if (RunCommand("/usr/bin/python3 -c 'import etcd3gw'").exit_code != 0) {
    std::fprintf(stderr, "python3-etcd3gw is not installed (scripts/install-deps.sh)\n");
    std::exit(77);
  }
  const std::vector<std::pair<std::string, std::string>> bounds = {
      {"", kPrefix + "i"}, {kPrefix + "i", kPrefix + "s"}, {kPrefix + "s", ""}};
  std::vector<std::unique_ptr<EtcdCluster>> shards;
  std::vector<ShardSpec> specs;
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    shards.push_back(std::make_unique<EtcdCluster>(1, "py" + std::to_string(i)));
    shards.back()->Start();
    specs.push_back({bounds[i].first, bounds[i].second, shards.back()->ClientAddresses()});
  }
  ProxyProcess proxy(specs);
  proxy.Start();
  const auto run = RunCommand("/usr/bin/python3 " + std::string(ESP_ETCD3GW_INTEROP_DIR) + "/interop.py 127.0.0.1 " +
                                  std::to_string(proxy.port()) + " " + kPrefix,
                              std::chrono::seconds(90));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  for (const char* s : {"putGetPrefixAcrossShards1: ok", "txn1: ok", "leases1: ok", "watchOneShard1: ok",
                        "watchPrefix1: ok", "authenticate: ok", "leases2: ok", "watchPrefix2: ok", "authOff: ok",
                        "etcd3gw ok"}) {
    EXPECT_NE(run.output.find(s), std::string::npos) << s << " missing:\n" << run.output;
  }
}

}  // namespace
}  // namespace esp::test
