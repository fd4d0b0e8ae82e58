// `etcd-sharding-proxy snapshot save DIR` against three real etcd shards: the files and manifest
// it writes, a full round trip (restore every snapshot into a fresh etcd with 3.4's etcdctl, and
// with 3.5's etcdutl --bump-revision when build/newer-etcd has it; a proxy over the restored
// clusters reads back every key), the map from the meta store, and refusals that write nothing.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "support/fixtures.h"

namespace esp::test {
namespace {

namespace fs = std::filesystem;
namespace pb = etcdserverpb;
using Json = nlohmann::json;
using namespace std::chrono_literals;

const std::string kBinary = ESP_PROXY_BINARY_FOR_TESTS;

std::string NewerEtcdBin() { return (fs::path(kBinary).parent_path() / "newer-etcd" / "usr" / "bin").string(); }

Json ReadJson(const fs::path& path) {
  std::ifstream in(path);
  return Json::parse(in);
}

std::string Sha256Sum(const fs::path& path) {
  const auto result = RunCommand("sha256sum " + path.string());
  return result.output.substr(0, 64);
}

// Every key and value through `address`, as etcdctl prints them.
std::string Everything(const std::string& address) {
  const auto result = Etcdctl(address, "get \"\" --from-key");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  return result.output;
}

std::vector<std::string> Entries(const fs::path& dir) {
  std::vector<std::string> names;
  if (!fs::exists(dir)) return names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// One etcd member started on a data directory a restore wrote.
struct RestoredMember {
  int client_port = FreePort();
  int peer_port = FreePort();
  std::unique_ptr<ChildProcess> process;
  std::string address() const { return "127.0.0.1:" + std::to_string(client_port); }
  std::string peer_url() const { return "http://127.0.0.1:" + std::to_string(peer_port); }

  void Start(const std::string& etcd, const fs::path& data_dir, const std::string& name, const fs::path& log) {
    process = std::make_unique<ChildProcess>(
        std::vector<std::string>{etcd, "--name", name, "--data-dir", data_dir.string(), "--listen-client-urls",
                                 "http://" + address(), "--advertise-client-urls", "http://" + address(),
                                 "--listen-peer-urls", peer_url(), "--initial-advertise-peer-urls", peer_url(),
                                 "--initial-cluster", name + "=" + peer_url()},
        log);
  }
  // Ready when a linearizable read answers. A new channel each time: one that found the port
  // closed would wait out gRPC's reconnect backoff.
  bool WaitReady() {
    return WaitFor(
        [&] {
          auto kv = pb::KV::NewStub(Connect(address()));
          pb::RangeResponse response;
          pb::RangeRequest request;
          request.set_key("ready?");
          return kv->Range(Ctx(1s).get(), request, &response).ok();
        },
        30s, 100ms);
  }
  std::int64_t Revision() {
    pb::StatusResponse status;
    EXPECT_TRUE(pb::Maintenance::NewStub(Connect(address()))->Status(Ctx().get(), {}, &status).ok());
    return status.header().revision();
  }
};

class SnapshotTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setup_ = std::make_unique<ShardedSetup>();
    // Keys on every shard ("", "i", "s" boundaries), some overwritten so revisions differ.
    for (const std::string prefix : {"a", "b", "j", "k", "t", "u"}) {
      for (int i = 0; i < 5; ++i) {
        ASSERT_EQ(Etcdctl(Proxy(), "put " + prefix + "-key-" + std::to_string(i) + " v" + std::to_string(i)).exit_code, 0);
      }
    }
    ASSERT_EQ(Etcdctl(Proxy(), "put t-key-0 changed").exit_code, 0);
  }
  static void TearDownTestSuite() { setup_.reset(); }
  static std::string Proxy() { return setup_->proxy().address(); }
  static std::string Config() { return setup_->proxy().config_path().string(); }
  static CommandResult Save(const fs::path& dir, const std::string& source) {
    return RunCommand(kBinary + " snapshot save " + dir.string() + " " + source + " 2>&1", 120s);
  }

  // Restores every snapshot of `dir` with `restore` (a command line to which the snapshot file and
  // the member flags are added), starts `etcd` on each, and a proxy over them with the same ranges.
  void RoundTrip(const fs::path& dir, const std::string& restore, const std::string& etcd, std::int64_t bump) {
    const Json manifest = ReadJson(dir / "manifest.json");
    TempDir restored;
    std::vector<RestoredMember> members(3);
    std::vector<ShardSpec> specs;
    const auto& ranges = manifest["map"]["ranges"];
    ASSERT_EQ(ranges.size(), 3U);
    for (std::size_t i = 0; i < 3; ++i) {
      const Json& snapshot = manifest["snapshots"][i];
      const std::string name = "restored" + std::to_string(i);
      const fs::path data_dir = restored.path() / name;
      const auto result = RunCommand(restore + " " + (dir / snapshot["file"].get<std::string>()).string() +
                                     " --data-dir " + data_dir.string() + " --name " + name + " --initial-cluster " +
                                     name + "=" + members[i].peer_url() + " --initial-advertise-peer-urls " +
                                     members[i].peer_url() + " 2>&1");
      ASSERT_EQ(result.exit_code, 0) << result.output;
      members[i].Start(etcd, data_dir, name, restored.path() / (name + ".log"));
      ASSERT_TRUE(members[i].WaitReady()) << members[i].process->Log();
      // Revisions never go backwards: at least the one the manifest recorded, plus the bump.
      EXPECT_GE(members[i].Revision(), snapshot["revision"].get<std::int64_t>() + bump) << name;
    }
    specs.push_back({"", "i", {members[0].address()}, std::nullopt});
    specs.push_back({"i", "s", {members[1].address()}, std::nullopt});
    specs.push_back({"s", "", {members[2].address()}, std::nullopt});
    ProxyProcess proxy(specs);
    proxy.Start();
    const std::string everything = Everything(proxy.address());
    EXPECT_EQ(everything, Everything(Proxy()));
    EXPECT_NE(everything.find("t-key-0\nchanged\n"), std::string::npos) << everything;
    EXPECT_NE(everything.find("a-key-4\nv4\n"), std::string::npos) << everything;
  }

  static std::unique_ptr<ShardedSetup> setup_;
};
std::unique_ptr<ShardedSetup> SnapshotTest::setup_;

TEST_F(SnapshotTest, SavesEveryShardWithAManifest) {
  TempDir parent;
  const fs::path dir = parent.path() / "backup";
  const auto result = Save(dir, "--config " + Config());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(Entries(dir), (std::vector<std::string>{"manifest.json", "shard-0.db", "shard-1.db", "shard-2.db"}));
  const Json manifest = ReadJson(dir / "manifest.json");
  EXPECT_EQ(manifest["map_source"], "config " + Config());
  ASSERT_EQ(manifest["snapshots"].size(), 3U);
  for (std::size_t i = 0; i < 3; ++i) {
    const Json& s = manifest["snapshots"][i];
    const fs::path file = dir / s["file"].get<std::string>();
    EXPECT_EQ(s["shard"], "shard-" + std::to_string(i));
    EXPECT_EQ(s["endpoint"], setup_->shard(i).member(0).client_address());
    EXPECT_EQ(s["size"].get<std::uintmax_t>(), fs::file_size(file));
    EXPECT_EQ(s["size"].get<std::uintmax_t>() % 512, 32U);  // etcd's sha256 trailer
    EXPECT_EQ(s["sha256"], Sha256Sum(file));
    EXPECT_GT(s["revision"].get<std::int64_t>(), 1);
    EXPECT_GE(s["revision_after"].get<std::int64_t>(), s["revision"].get<std::int64_t>());
    EXPECT_EQ(fs::status(file).permissions() & fs::perms::others_read, fs::perms::none);
  }
  EXPECT_EQ(manifest["map"]["shards"].size(), 3U);
  EXPECT_EQ(manifest["map"]["ranges"][1]["shard"], "shard-1");
}

TEST_F(SnapshotTest, RoundTripThroughEtcdctl34Restore) {
  TempDir parent;
  const fs::path dir = parent.path() / "backup";
  const auto result = Save(dir, "--config " + Config());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  RoundTrip(dir, "env ETCDCTL_API=3 etcdctl snapshot restore", "etcd", 0);
}

TEST_F(SnapshotTest, RoundTripThroughEtcdutl35RestoreWithBumpedRevisions) {
  const std::string bin = NewerEtcdBin();
  if (!fs::exists(bin + "/etcdutl") || !fs::exists(bin + "/etcd")) {
    GTEST_SKIP() << "no etcdutl in " << bin << " (scripts/fetch-newer-etcd.sh fetches it)";
  }
  TempDir parent;
  const fs::path dir = parent.path() / "backup";
  const auto result = Save(dir, "--config " + Config());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  constexpr std::int64_t kBump = 1000000;
  RoundTrip(dir, bin + "/etcdutl snapshot restore --bump-revision " + std::to_string(kBump) + " --mark-compacted",
            bin + "/etcd", kBump);
}

TEST_F(SnapshotTest, TheMapComesFromTheMetaStore) {
  EtcdCluster meta(1, "meta");
  meta.Start();
  const std::string flags = " --meta-endpoints " + meta.member(0).client_address();
  const auto init = RunCommand(kBinary + " map init --config " + Config() + flags + " 2>&1");
  ASSERT_EQ(init.exit_code, 0) << init.output;
  TempDir parent;
  const fs::path dir = parent.path() / "backup";
  const auto result = Save(dir, flags);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const Json manifest = ReadJson(dir / "manifest.json");
  EXPECT_NE(manifest["map_source"].get<std::string>().find("meta store " + meta.member(0).client_address()),
            std::string::npos);
  EXPECT_EQ(manifest["map"]["version"], 1);
  EXPECT_NE(manifest["map"]["cluster_id"].get<std::string>(), "");
  EXPECT_EQ(manifest["snapshots"].size(), 3U);
}

TEST_F(SnapshotTest, ANonEmptyDirectoryIsRefusedAndLeftAlone) {
  TempDir dir;
  { std::ofstream(dir.path() / "keep.txt") << "mine"; }
  const auto result = Save(dir.path(), "--config " + Config());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("exists and is not empty"), std::string::npos) << result.output;
  EXPECT_EQ(Entries(dir.path()), std::vector<std::string>{"keep.txt"});
}

TEST_F(SnapshotTest, AnUnreachableShardFailsNamingItAndLeavesNothing) {
  ShardSpec unreachable{"i", "s", {"127.0.0.1:" + std::to_string(FreePort())}, std::nullopt};
  ProxyProcess layout({{"", "i", {setup_->shard(0).member(0).client_address()}, std::nullopt},
                       unreachable,
                       {"s", "", {setup_->shard(2).member(0).client_address()}, std::nullopt}});
  TempDir parent;
  const fs::path dir = parent.path() / "backup";
  auto result = Save(dir, "--config " + layout.config_path().string());
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("shard \"shard-1\""), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("nothing was written"), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(dir));  // shard-0's snapshot, taken first, is gone with the directory
  // An empty directory given by the operator stays, empty.
  fs::create_directory(dir);
  result = Save(dir, "--config " + layout.config_path().string());
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_EQ(Entries(dir), std::vector<std::string>{});
}

TEST_F(SnapshotTest, AnUnreadableConfigIsRefusedBeforeAnything) {
  TempDir parent;
  const fs::path dir = parent.path() / "backup";
  auto result = Save(dir, "--config " + (parent.path() / "missing.yaml").string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("missing.yaml"), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(dir));
  { std::ofstream(parent.path() / "bad.yaml") << "shards: [{start: x}"; }
  result = Save(dir, "--config " + (parent.path() / "bad.yaml").string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_FALSE(fs::exists(dir));
  result = Save(dir, "");
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("--config or --meta-endpoints is required"), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(dir));
}

}  // namespace
}  // namespace esp::test
