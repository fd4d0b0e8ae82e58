// The shard map in a meta etcd (issue 15): three shards, a meta etcd and three proxies, all real
// processes. The `map` commands are run as an operator runs them (the binary); the proxies are
// started with a stale one-shard YAML beside them, which they must ignore.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <fstream>
#include <map>
#include <thread>

#include "etcdserverpb/rpc.grpc.pb.h"
#include "meta/map_store.h"
#include "support/fixtures.h"

namespace esp::test {
namespace {

namespace pb = etcdserverpb;
using namespace std::chrono_literals;

constexpr int kLeaseTtlSeconds = 3;

class MetaMapTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto setup = StartMetaShards(ESP_PROXY_BINARY_FOR_TESTS, "", /*spare=*/1);
    ASSERT_EQ(setup.init.exit_code, 0) << setup.init.output;
    dir_ = std::move(setup.dir);
    meta_ = std::move(setup.meta);
    shards_ = std::move(setup.shards);
    layout_ = setup.layout;
    for (int i = 0; i < 3; ++i) proxies_.push_back(NewProxy());
  }
  static void TearDownTestSuite() {
    proxies_.clear();
    shards_.clear();
    meta_.reset();
    dir_.reset();
  }

  static std::string MetaAddress() { return meta_->ClientAddresses()[0]; }

  struct Proxy {
    std::unique_ptr<ProxyProcess> process;
    int metrics_port = 0;
    std::string metrics(const std::string& path) const {
      return RunCommand("curl -s -m 5 http://127.0.0.1:" + std::to_string(metrics_port) + path).output;
    }
  };

  // A proxy from the meta store, with a YAML beside it that puts every key on shard 3 (which
  // is in no map): a proxy that served it would write where no test looks.
  static std::unique_ptr<Proxy> NewProxy() {
    auto proxy = std::make_unique<Proxy>();
    proxy->metrics_port = FreePort();
    proxy->process = std::make_unique<ProxyProcess>(
        std::vector<ShardSpec>{{"", "", shards_[3]->ClientAddresses()}},
        std::vector<std::string>{"--meta-endpoints", MetaAddress(), "--meta-lease-ttl", std::to_string(kLeaseTtlSeconds),
                                 "--listen-metrics-addr", "127.0.0.1:" + std::to_string(proxy->metrics_port)});
    proxy->process->Start();
    return proxy;
  }

  static CommandResult Map(const std::string& args) {
    return RunCommand(std::string(ESP_PROXY_BINARY_FOR_TESTS) + " map " + args + " --meta-endpoints " + MetaAddress());
  }

  static meta::MapStore& Store() {
    static meta::EtcdClient client(meta::EtcdClientOptions{.endpoints = {MetaAddress()}});
    static meta::MapStore store(client);
    return store;
  }
  static std::int64_t Version() { return Store().Load()->doc.version; }

  // Every live registered proxy serves `version` and there are `count` of them.
  static bool AllServe(std::int64_t version, std::size_t count) {
    try {
      const auto proxies = Store().Proxies();
      if (proxies.size() != count) return false;
      return std::all_of(proxies.begin(), proxies.end(), [&](const auto& p) { return p.map_version == version; });
    } catch (const meta::MetaError&) {
      return false;
    }
  }

  // What the store says of the proxies, and the first proxy's log, for a failure message.
  static std::string Registrations() {
    std::string out;
    try {
      for (const auto& p : Store().Proxies()) out += p.name + " serves " + std::to_string(p.map_version) + "\n";
    } catch (const meta::MetaError& e) {
      out += e.what();
    }
    return out + proxies_[0]->process->process().Log();
  }

  static std::size_t MemberCount(const std::string& proxy_address) {
    auto stub = pb::Cluster::NewStub(Connect(proxy_address));
    pb::MemberListResponse response;
    const auto status = stub->MemberList(Ctx().get(), pb::MemberListRequest{}, &response);
    return status.ok() ? static_cast<std::size_t>(response.members_size()) : 0;
  }

  static grpc::Status Put(const std::string& address, const std::string& key, const std::string& value) {
    auto stub = pb::KV::NewStub(Connect(address));
    pb::PutRequest request;
    request.set_key(key);
    request.set_value(value);
    pb::PutResponse response;
    return stub->Put(Ctx(3s).get(), request, &response);
  }

  static std::string GetDirect(EtcdCluster& shard, const std::string& key) {
    auto stub = pb::KV::NewStub(Connect(shard.ClientAddresses()[0]));
    pb::RangeRequest request;
    request.set_key(key);
    pb::RangeResponse response;
    if (!stub->Range(Ctx().get(), request, &response).ok() || response.kvs_size() == 0) return "";
    return response.kvs(0).value();
  }

  static inline std::unique_ptr<TempDir> dir_;
  static inline std::unique_ptr<EtcdCluster> meta_;
  static inline std::vector<std::unique_ptr<EtcdCluster>> shards_;  // 0-2 in the map, 3 spare
  static inline std::vector<std::unique_ptr<Proxy>> proxies_;
  static inline std::string layout_;
};

TEST_F(MetaMapTest, ProxiesServeTheMetaStoresMapNotTheirYaml) {
  ASSERT_TRUE(WaitFor([] { return AllServe(Version(), 3); }, 10s));
  for (std::size_t p = 0; p < proxies_.size(); ++p) {
    for (const std::string key : {"apple", "kiwi", "tomato"}) {
      ASSERT_TRUE(Put(proxies_[p]->process->address(), key, "v" + std::to_string(p)).ok());
    }
    EXPECT_EQ(GetDirect(*shards_[0], "apple"), "v" + std::to_string(p));
    EXPECT_EQ(GetDirect(*shards_[1], "kiwi"), "v" + std::to_string(p));
    EXPECT_EQ(GetDirect(*shards_[2], "tomato"), "v" + std::to_string(p));
  }
  EXPECT_EQ(GetDirect(*shards_[3], "apple"), "");  // the stale YAML's shard got nothing
  const auto metrics = proxies_[0]->metrics("/metrics");
  EXPECT_NE(metrics.find("etcd_proxy_map_version " + std::to_string(Version())), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("etcd_proxy_meta_store_up 1"), std::string::npos);
  const auto shards = nlohmann::json::parse(proxies_[0]->metrics("/shards"));
  ASSERT_EQ(shards.size(), 3u);
  EXPECT_EQ(shards[0]["map_version"].get<std::int64_t>(), Version());
}

TEST_F(MetaMapTest, InitRefusesToReplaceAMapAndShowListsEverything) {
  const auto before = Version();
  const auto again = Map("init --config " + layout_);
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.output.find("already holds a shard map (version " + std::to_string(before) + ")"), std::string::npos)
      << again.output;
  EXPECT_EQ(Version(), before);

  ASSERT_TRUE(WaitFor([&] { return AllServe(before, 3); }, 10s));
  const auto show = Map("show -w json");
  ASSERT_EQ(show.exit_code, 0) << show.output;
  const auto json = nlohmann::json::parse(show.output);
  EXPECT_EQ(json["version"].get<std::int64_t>(), before);
  ASSERT_EQ(json["ranges"].size(), 3u);
  EXPECT_EQ(json["ranges"][1]["start"], "i");
  EXPECT_EQ(json["ranges"][1]["end"], "s");
  EXPECT_EQ(json["ranges"][1]["shard"], "s1");
  EXPECT_EQ(json["shards"].size(), 3u);
  ASSERT_EQ(json["proxies"].size(), 3u);
  for (const auto& p : json["proxies"]) EXPECT_EQ(p["map_version"].get<std::int64_t>(), before);

  // A layout that cuts a Kubernetes resource prefix is written, with a warning.
  const auto cut = (dir_->path() / "cut.yaml").string();
  std::ofstream(cut) << "shards:\n  - {start: \"\", end: /registry/pods/m, address: " << shards_[0]->ClientAddresses()[0]
                     << "}\n  - {start: /registry/pods/m, end: \"\", address: " << shards_[1]->ClientAddresses()[0] << "}\n";
  const auto cut_init = Map("init --config " + cut + " --meta-prefix /cut-layout/");
  EXPECT_EQ(cut_init.exit_code, 0) << cut_init.output;
  EXPECT_NE(cut_init.output.find("warning: the range boundary \"/registry/pods/m\" cuts Kubernetes' resource prefix"),
            std::string::npos)
      << cut_init.output;

  const auto table = Map("show");
  EXPECT_EQ(table.exit_code, 0);
  EXPECT_NE(table.output.find("[\"i\", \"s\")"), std::string::npos) << table.output;
  const auto history = Map("history -w json");
  ASSERT_EQ(history.exit_code, 0) << history.output;
  EXPECT_EQ(nlohmann::json::parse(history.output).back()["version"].get<std::int64_t>(), before);
}

TEST_F(MetaMapTest, MapChangesReachEveryProxyWhileClientsWriteWithoutErrors) {
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0}, writes{0};
  std::string first_failure;
  std::mutex failure_mu;
  std::vector<std::thread> writers;
  for (std::size_t p = 0; p < proxies_.size(); ++p) {
    writers.emplace_back([&, p] {
      const std::string address = proxies_[p]->process->address();
      for (int i = 0; !stop; ++i) {
        for (const std::string prefix : {"a", "m", "x"}) {
          const auto status = Put(address, prefix + "/writer" + std::to_string(p), std::to_string(i));
          ++writes;
          if (!status.ok() && failures++ == 0) {
            const std::lock_guard lock(failure_mu);
            first_failure = status.error_message();
          }
        }
      }
    });
  }
  // Three changes none of which touches a range: a shard joins, changes members, leaves.
  const auto start = Version();
  auto add = Map("add-shard s3 --endpoints " + shards_[3]->ClientAddresses()[0]);
  ASSERT_EQ(add.exit_code, 0) << add.output;
  ASSERT_TRUE(WaitFor([&] { return AllServe(start + 1, 3); }, 5s)) << "add-shard did not reach every proxy";
  const auto shards = nlohmann::json::parse(proxies_[1]->metrics("/shards"));
  EXPECT_EQ(shards.size(), 4u);
  auto set = Map("set-endpoints s3 " + shards_[3]->ClientAddresses()[0]);
  ASSERT_EQ(set.exit_code, 0) << set.output;
  auto remove = Map("remove-shard s3");
  ASSERT_EQ(remove.exit_code, 0) << remove.output;
  ASSERT_TRUE(WaitFor([&] { return AllServe(start + 3, 3); }, 5s));
  // A proxy started now serves the current map.
  auto late = NewProxy();
  ASSERT_TRUE(WaitFor([&] { return AllServe(start + 3, 4); }, 5s));
  ASSERT_TRUE(Put(late->process->address(), "zebra", "late").ok());
  EXPECT_EQ(GetDirect(*shards_[2], "zebra"), "late");
  late.reset();
  ASSERT_TRUE(WaitFor([&] { return AllServe(start + 3, 3); }, 10s)) << "a stopped proxy stays registered";
  stop = true;
  for (auto& w : writers) w.join();
  EXPECT_GT(writes.load(), 30);
  EXPECT_EQ(failures.load(), 0) << first_failure;
  // A proxy restarted, its stale YAML still beside it, serves the current map.
  ASSERT_TRUE(proxies_[2]->process->process().Terminate().has_value());
  proxies_[2]->process->Start();
  ASSERT_TRUE(Put(proxies_[2]->process->address(), "apricot", "restarted").ok());
  EXPECT_EQ(GetDirect(*shards_[0], "apricot"), "restarted");
  ASSERT_TRUE(WaitFor([&] { return AllServe(start + 3, 3); }, 10s));
}

TEST_F(MetaMapTest, OfTwoWritersThatReadTheSameVersionExactlyOneWins) {
  auto first = Store().Load();
  auto second = Store().Load();
  ASSERT_TRUE(first && second);
  auto a = first->doc;
  a.change = "writer a";
  auto b = second->doc;
  b.change = "writer b";
  const auto won = Store().CompareAndSwap(first, a);
  const auto lost = Store().CompareAndSwap(second, b);
  EXPECT_EQ(won.outcome, meta::CasOutcome::kWritten);
  EXPECT_EQ(lost.outcome, meta::CasOutcome::kConflict);
  EXPECT_EQ(lost.current_version, first->doc.version + 1);
  EXPECT_EQ(Store().Load()->doc.change, "writer a");
}

TEST_F(MetaMapTest, AMapAProxyCannotBuildLeavesItOnTheOldOneUntilAGoodOneComes) {
  const auto start = Version();
  ASSERT_TRUE(WaitFor([&] { return AllServe(start, 3); }, 10s));
  // A version no proxy can build (a shard's CA file is missing), written past the commands'
  // checks: every proxy keeps serving the old map and says why.
  auto read = Store().Load();
  auto broken = read->doc;
  broken.shards[0].tls = TlsClientConfig{(dir_->path() / "missing-ca.pem").string(), "", "", ""};
  broken.change = "broken";
  ASSERT_EQ(Store().CompareAndSwap(read, broken).outcome, meta::CasOutcome::kWritten);
  for (const auto& proxy : proxies_) {
    ASSERT_TRUE(WaitFor([&] { return proxy->process->process().Log().find("cannot serve shard map version " +
                                                                          std::to_string(start + 1)) != std::string::npos; },
                        5s));
    EXPECT_TRUE(Put(proxy->process->address(), "apple", "still-served").ok());
  }
  EXPECT_TRUE(AllServe(start, 3)) << Registrations();
  EXPECT_EQ(GetDirect(*shards_[0], "apple"), "still-served");
  // The next good version is served.
  read = Store().Load();
  auto fixed = read->doc;
  fixed.shards[0].tls.reset();
  fixed.change = "fixed";
  ASSERT_EQ(Store().CompareAndSwap(read, fixed).outcome, meta::CasOutcome::kWritten);
  EXPECT_TRUE(WaitFor([&] { return AllServe(start + 2, 3); }, 15s)) << Registrations();
}

TEST_F(MetaMapTest, ConcurrentCommandsNeverLoseAChange) {
  // Eight operators at once: each winner adds exactly one version, each loser says so and
  // writes nothing.
  const auto start = Version();
  std::vector<CommandResult> results(8);
  std::vector<std::thread> operators;
  for (std::size_t i = 0; i < results.size(); ++i) {
    operators.emplace_back([&, i] { results[i] = Map("set-endpoints s0 " + shards_[0]->ClientAddresses()[0]); });
  }
  for (auto& t : operators) t.join();
  std::int64_t winners = 0;
  for (const auto& r : results) {
    if (r.exit_code == 0) {
      ++winners;
    } else {
      EXPECT_EQ(r.exit_code, 1);
      EXPECT_NE(r.output.find("changed meanwhile"), std::string::npos) << r.output;
    }
  }
  EXPECT_GE(winners, 1);
  EXPECT_EQ(Version(), start + winners);
  EXPECT_EQ(Store().History().size(), static_cast<std::size_t>(start + winners));
}

TEST_F(MetaMapTest, BadInputIsRefusedAndChangesNothing) {
  const auto before = Version();
  const auto gap = (dir_->path() / "gap.yaml").string();
  std::ofstream(gap) << "shards:\n  - {start: \"\", end: i, address: 127.0.0.1:1}\n  - {start: j, end: \"\", address: 127.0.0.1:2}\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"init --force --config " + gap, "gap in the keyspace"},
      {"add-shard s0 --endpoints 127.0.0.1:1", "already in the map"},
      {"add-shard s9 --endpoints " + shards_[1]->ClientAddresses()[0], "already shard 's1'"},
      {"add-shard s9 --endpoints 127.0.0.1:1", "127.0.0.1:1"},
      {"add-shard s9 --endpoints nohost", "has no port"},
      {"remove-shard s1", "still owns key ranges"},
      {"remove-shard nope", "no shard named 'nope'"},
      {"set-endpoints nope 127.0.0.1:1", "no shard named 'nope'"},
      {"set-endpoints s0 " + shards_[1]->ClientAddresses()[0], "already shard 's1'"},
      {"set-endpoints s0 " + shards_[3]->ClientAddresses()[0], "another cluster"},
      {"set-endpoints s0 127.0.0.1:1", "no member answers"},
  };
  for (const auto& [args, expected] : cases) {
    const auto result = Map(args);
    EXPECT_EQ(result.exit_code, 1) << args << "\n" << result.output;
    EXPECT_NE(result.output.find(expected), std::string::npos) << args << "\n" << result.output;
    EXPECT_EQ(Version(), before) << args;
  }
  // A cluster that holds a key cannot join (its keys would appear in nobody's range, or clash).
  ASSERT_EQ(Etcdctl(shards_[3]->ClientAddresses()[0], "put stray 1").exit_code, 0);
  const auto holds = Map("add-shard s9 --endpoints " + shards_[3]->ClientAddresses()[0]);
  EXPECT_EQ(holds.exit_code, 1) << holds.output;
  EXPECT_NE(holds.output.find(" holds 1 key"), std::string::npos) << holds.output;
  EXPECT_EQ(Version(), before);
  ASSERT_EQ(Etcdctl(shards_[3]->ClientAddresses()[0], "del stray").exit_code, 0);
  // No map under the prefix.
  for (const std::string command : {"show", "history", "remove-shard s0", "set-endpoints s0 127.0.0.1:1"}) {
    const auto none = Map(command + " --meta-prefix /nothing-here/");
    EXPECT_EQ(none.exit_code, 1) << command;
    EXPECT_NE(none.output.find("no shard map under '/nothing-here/'"), std::string::npos) << command << "\n" << none.output;
  }
  // Usage errors (CLI11) and an unreachable meta store.
  EXPECT_NE(Map("init").exit_code, 0);
  EXPECT_NE(Map("add-shard s9").exit_code, 0);
  EXPECT_NE(Map("show -w yaml").exit_code, 0);
  const auto unreachable =
      RunCommand(std::string(ESP_PROXY_BINARY_FOR_TESTS) + " map show --meta-endpoints 127.0.0.1:" + std::to_string(FreePort()));
  EXPECT_EQ(unreachable.exit_code, 1);
  EXPECT_NE(unreachable.output.find("cannot read the shard map at the meta store"), std::string::npos) << unreachable.output;
  EXPECT_EQ(Version(), before);
}

TEST_F(MetaMapTest, MemberListFollowsProxiesJoiningAndDying) {
  ASSERT_TRUE(WaitFor([] { return MemberCount(proxies_[0]->process->address()) == 3; }, 10s));
  auto extra = NewProxy();
  ASSERT_TRUE(WaitFor([] { return MemberCount(proxies_[0]->process->address()) == 4; }, 5s));
  EXPECT_TRUE(WaitFor([&] { return MemberCount(extra->process->address()) == 4; }, 5s));
  extra->process->process().Kill();  // kill -9: no revoke, the lease runs out
  const auto killed = std::chrono::steady_clock::now();
  ASSERT_TRUE(WaitFor([] { return MemberCount(proxies_[0]->process->address()) == 3; }, 15s));
  const auto gone_after = std::chrono::steady_clock::now() - killed;
  // Within the lease's TTL, plus etcd's expiry check (500 ms) and the watch's delivery.
  EXPECT_LT(gone_after, std::chrono::seconds(kLeaseTtlSeconds) + 2s);
}

TEST_F(MetaMapTest, ProxyRefusesToStartWithoutAMap) {
  const auto dead = RunCommand(std::string(ESP_PROXY_BINARY_FOR_TESTS) + " --meta-endpoints 127.0.0.1:" +
                               std::to_string(FreePort()) + " --listen-addr 127.0.0.1:" + std::to_string(FreePort()));
  EXPECT_EQ(dead.exit_code, 1);
  EXPECT_NE(dead.output.find("cannot start: cannot read the shard map at the meta store"), std::string::npos) << dead.output;
  const auto empty = RunCommand(std::string(ESP_PROXY_BINARY_FOR_TESTS) + " --meta-endpoints " + MetaAddress() +
                                " --meta-prefix /nothing-here/ --listen-addr 127.0.0.1:" + std::to_string(FreePort()));
  EXPECT_EQ(empty.exit_code, 2);
  EXPECT_NE(empty.output.find("holds no shard map under '/nothing-here/'"), std::string::npos) << empty.output;
}

// A meta store with TLS and auth on: the proxy and the commands reach it with --meta-cacert and
// --meta-user / --meta-password-file; without the credentials they are refused with the reason.
TEST_F(MetaMapTest, SecuredMetaStoreNeedsItsCredentials) {
  TestCertificates certs;
  EtcdCluster secured(1, "metatls", EtcdTls{certs.ca(), certs.cert(), certs.key()});
  secured.Start();
  const std::string address = secured.ClientAddresses()[0];
  const std::string tls = " --cacert " + certs.ca() + " --cert " + certs.cert() + " --key " + certs.key();
  for (const char* command : {"user add root:rootpw", "auth enable"}) {
    const auto result = Etcdctl(address, std::string(command) + tls);
    ASSERT_EQ(result.exit_code, 0) << command << ": " << result.output;
  }
  const auto password = (dir_->path() / "meta.password").string();
  std::ofstream(password) << "rootpw\n";
  std::filesystem::permissions(password, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  const std::string flags = " --meta-endpoints " + address + " --meta-cacert " + certs.ca() + " --meta-cert " +
                            certs.cert() + " --meta-key " + certs.key();
  const std::string binary = ESP_PROXY_BINARY_FOR_TESTS;
  const auto anonymous = RunCommand(binary + " map init --config " + layout_ + flags);
  EXPECT_EQ(anonymous.exit_code, 1);
  EXPECT_NE(anonymous.output.find("cannot read the shard map at the meta store (" + address + "): etcdserver: "),
            std::string::npos)
      << anonymous.output;
  const auto plain = RunCommand(binary + " map show --meta-endpoints " + address);
  EXPECT_EQ(plain.exit_code, 1) << plain.output;
  const std::string credentials = flags + " --meta-user root --meta-password-file " + password;
  const auto init = RunCommand(binary + " map init --config " + layout_ + credentials);
  ASSERT_EQ(init.exit_code, 0) << init.output;

  auto port = FreePort();
  ProxyProcess proxy({{"", "", shards_[3]->ClientAddresses()}},
                     {"--meta-endpoints", address, "--meta-cacert", certs.ca(), "--meta-cert", certs.cert(),
                      "--meta-key", certs.key(), "--meta-user", "root", "--meta-password-file", password,
                      "--meta-lease-ttl", std::to_string(kLeaseTtlSeconds), "--listen-metrics-addr",
                      "127.0.0.1:" + std::to_string(port)});
  proxy.Start();
  ASSERT_TRUE(Put(proxy.address(), "kiwi", "secured").ok());
  EXPECT_EQ(GetDirect(*shards_[1], "kiwi"), "secured");
  ASSERT_TRUE(WaitFor([&] {
    const auto show = RunCommand(binary + " map show -w json" + credentials);
    return show.exit_code == 0 && nlohmann::json::parse(show.output)["proxies"].size() == 1;
  }, 10s));
}

// Last: it stops and restarts the meta store.
TEST_F(MetaMapTest, TrafficGoesOnWithoutTheMetaStoreUntilRegistrationsMayLapseAndResumesAfterItReturns) {
  const auto version = Version();
  ASSERT_TRUE(WaitFor([&] { return AllServe(version, 3); }, 10s));
  meta_->KillMember(0);
  const auto killed = std::chrono::steady_clock::now();
  for (const auto& proxy : proxies_) {
    ASSERT_TRUE(WaitFor([&] { return proxy->metrics("/metrics").find("etcd_proxy_meta_store_up 0") != std::string::npos; },
                        10s));
    const auto status = Put(proxy->process->address(), "lemon", "without-meta");
    EXPECT_TRUE(status.ok()) << status.error_message();
    const auto health = proxy->metrics("/health");
    EXPECT_NE(health.find("\"health\":\"true\""), std::string::npos) << health;
    EXPECT_NE(health.find("meta store unreachable"), std::string::npos) << health;
    EXPECT_EQ(MemberCount(proxy->process->address()), 3u);  // the last list it saw
  }
  EXPECT_EQ(GetDirect(*shards_[1], "lemon"), "without-meta");
  EXPECT_NE(proxies_[0]->process->process().Log().find("meta store"), std::string::npos);

  // Self-fencing: once a proxy's registration may have expired in the store (its last renewal
  // plus the TTL, less the margin), a mover may have moved ranges without it: it serves no key.
  grpc::Status refused;
  int attempt = 0;
  ASSERT_TRUE(WaitFor([&] {
    refused = Put(proxies_[0]->process->address(), "lemon", "attempt-" + std::to_string(++attempt));
    return !refused.ok();
  }, 10s));
  const double fenced_after = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(refused.error_message().find("registration in the meta store may have expired"), std::string::npos)
      << refused.error_message();
  EXPECT_LE(fenced_after, kLeaseTtlSeconds + 0.5) << "fenced only " << fenced_after << " s after the store went away";
  const auto health = proxies_[0]->metrics("/health");
  EXPECT_NE(health.find("\"health\":\"false\""), std::string::npos) << health;
  EXPECT_NE(GetDirect(*shards_[1], "lemon"), "attempt-" + std::to_string(attempt));  // the refused one
  std::printf("self-fenced %.2f s after the meta store went away (lease TTL %d s)\n", fenced_after, kLeaseTtlSeconds);

  meta_->StartMember(0);
  meta_->WaitReady();
  for (const auto& proxy : proxies_) {
    EXPECT_TRUE(WaitFor([&] { return Put(proxy->process->address(), "lemon", "after-meta").ok(); }, 15s))
        << proxy->process->process().Log();
  }
  const auto change = Map("add-shard s3 --endpoints " + shards_[3]->ClientAddresses()[0]);
  ASSERT_EQ(change.exit_code, 0) << change.output;
  EXPECT_TRUE(WaitFor([&] { return AllServe(version + 1, 3); }, 15s)) << "a change after the outage did not reach every proxy:\n" << Registrations();
  for (const auto& proxy : proxies_) {
    EXPECT_TRUE(WaitFor([&] { return proxy->metrics("/metrics").find("etcd_proxy_meta_store_up 1") != std::string::npos; },
                        10s));
  }
}

}  // namespace
}  // namespace esp::test
