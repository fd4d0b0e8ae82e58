// Range moves while serving (issue #16): three shards, a meta etcd and two proxies, all real
// processes; the mover is the binary, run as an operator runs it (`reshard ...`). Clients write,
// read, compare-and-swap and watch through both proxies while ranges move; the history checker
// (support/history.h) then finds every acknowledged write exactly once, every counter equal to its
// acknowledged increments, no stale read, and every watcher complete or canceled "compacted".
// The same run with a deliberately broken mover must fail the check. The mover is also killed
// (SIGKILL, at each step) and resumed, aborted at each step before the cut-over, refused bad input,
// and raced by a proxy stopped (SIGSTOP) across a whole move.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>

#include <atomic>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "etcdserverpb/rpc.grpc.pb.h"
#include "meta/map_store.h"
#include "support/fixtures.h"
#include "support/history_workload.h"

namespace esp::test {
namespace {

namespace pb = etcdserverpb;
using namespace std::chrono_literals;

constexpr int kLeaseTtlSeconds = 3;
// The range the tests move: inside s1 ([i, s)) at first; the clients' "m" keys live in it.
const std::string kMoveStart = "m";
const std::string kMoveEnd = "n";

class ReshardTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<TempDir>();
    meta_ = std::make_unique<EtcdCluster>(1, "meta");
    meta_->Start();
    for (int i = 0; i < 3; ++i) {
      shards_.push_back(std::make_unique<EtcdCluster>(1, "shard" + std::to_string(i)));
      shards_.back()->Start();
    }
    layout_ = (dir_->path() / "layout.yaml").string();
    std::ofstream(layout_) << "shards:\n"
                           << "  - {name: s0, start: \"\", end: i, address: " << shards_[0]->ClientAddresses()[0] << "}\n"
                           << "  - {name: s1, start: i, end: s, address: " << shards_[1]->ClientAddresses()[0] << "}\n"
                           << "  - {name: s2, start: s, end: \"\", address: " << shards_[2]->ClientAddresses()[0] << "}\n";
    const auto init = RunCommand(Binary() + " map init --config " + layout_ + " --meta-endpoints " + MetaAddress());
    ASSERT_EQ(init.exit_code, 0) << init.output;
    for (int i = 0; i < 2; ++i) proxies_.push_back(NewProxy());
  }
  static void TearDownTestSuite() {
    proxies_.clear();
    shards_.clear();
    meta_.reset();
    dir_.reset();
  }

  void SetUp() override {
    // Every test starts from no move in progress and with both proxies registered.
    ASSERT_TRUE(WaitFor([] { return Registered() == 2; }, 15s)) << "proxies not registered";
    const auto status = Status();
    ASSERT_EQ(status.value("state", ""), "none") << status.dump();
  }

  static std::string Binary() { return ESP_PROXY_BINARY_FOR_TESTS; }
  static std::string MetaAddress() { return meta_->ClientAddresses()[0]; }
  static std::string Member(int shard) { return shards_[shard]->ClientAddresses()[0]; }
  static std::string Proxy(int i) { return proxies_[i]->address(); }

  static std::unique_ptr<ProxyProcess> NewProxy() {
    auto proxy = std::make_unique<ProxyProcess>(
        std::vector<ShardSpec>{{"", "", shards_[0]->ClientAddresses()}},
        std::vector<std::string>{"--meta-endpoints", MetaAddress(), "--meta-lease-ttl", std::to_string(kLeaseTtlSeconds)});
    proxy->Start();
    return proxy;
  }

  // `reshard <args>` with `env` before it (test hooks); stdout and stderr together.
  static CommandResult Reshard(const std::string& args, const std::string& env = "") {
    return RunCommand(env + " " + Binary() + " reshard " + args + " --meta-endpoints " + MetaAddress(), 120s);
  }
  static CommandResult Move(const std::string& to, const std::string& env = "") {
    return Reshard("move --range " + kMoveStart + " " + kMoveEnd + " --to " + to + " --lock-ttl 2", env);
  }
  static nlohmann::json Status() {
    const auto result = Reshard("status -w json");
    EXPECT_EQ(result.exit_code, 0) << result.output;
    const auto j = nlohmann::json::parse(result.output, nullptr, false);
    return j.is_discarded() ? nlohmann::json::object() : j;
  }

  static meta::MapStore& Store() {
    static meta::EtcdClient client(meta::EtcdClientOptions{.endpoints = {MetaAddress()}});
    static meta::MapStore store(client);
    return store;
  }
  static std::size_t Registered() {
    try {
      return Store().Proxies().size();
    } catch (const meta::MetaError&) {
      return 0;
    }
  }
  // The shard owning `key` in the meta store's map.
  static std::string Owner(const std::string& key) {
    const auto doc = Store().Load()->doc;
    for (const auto& r : doc.ranges) {
      if (r.start <= key && (r.end.empty() || key < r.end)) return r.shard;
    }
    return "";
  }
  static int Index(const std::string& shard) { return shard[1] - '0'; }
  // Another shard than the owner of the moving range.
  static std::string Elsewhere() { return Owner(kMoveStart) == "s1" ? "s2" : "s1"; }

  // Keys a shard holds in [m, n), fence keys left out.
  static std::vector<std::pair<std::string, std::string>> DirectKeys(int shard) {
    auto kv = pb::KV::NewStub(Connect(Member(shard)));
    pb::RangeRequest request;
    request.set_key(kMoveStart);
    request.set_range_end(kMoveEnd);
    pb::RangeResponse response;
    EXPECT_TRUE(kv->Range(Ctx().get(), request, &response).ok());
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& kv_pair : response.kvs()) {
      if (kv_pair.key().find(std::string("\0etcd-sharding-proxy/move-fence/", 32)) == std::string::npos) {
        out.emplace_back(kv_pair.key(), kv_pair.value());
      }
    }
    return out;
  }

  static grpc::Status Put(const std::string& proxy, const std::string& key, const std::string& value,
                          std::int64_t lease = 0) {
    auto kv = pb::KV::NewStub(Connect(proxy));
    pb::PutRequest request;
    request.set_key(key);
    request.set_value(value);
    request.set_lease(lease);
    pb::PutResponse response;
    return kv->Put(Ctx(5s).get(), request, &response);
  }
  static std::optional<pb::KeyValue> Get(const std::string& proxy, const std::string& key) {
    auto kv = pb::KV::NewStub(Connect(proxy));
    pb::RangeRequest request;
    request.set_key(key);
    pb::RangeResponse response;
    const auto status = kv->Range(Ctx(5s).get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    if (!status.ok() || response.kvs_size() == 0) return std::nullopt;
    return response.kvs(0);
  }

  // Writes `count` keys under m/seed/ with known values, through proxy 0.
  static std::map<std::string, std::string> Seed(const std::string& tag, int count) {
    std::map<std::string, std::string> written;
    for (int i = 0; i < count; ++i) {
      const std::string key = "m/seed/" + tag + "/" + std::to_string(i);
      const std::string value = tag + "-" + std::to_string(i);
      const auto status = Put(Proxy(0), key, value);
      EXPECT_TRUE(status.ok()) << status.error_message();
      written[key] = value;
    }
    return written;
  }
  // Every key reads back through both proxies; the new owner holds them, the old one none.
  static void ExpectMoved(const std::map<std::string, std::string>& written, const std::string& owner,
                          const std::string& old_owner) {
    EXPECT_EQ(Owner(kMoveStart), owner);
    for (int p = 0; p < 2; ++p) {
      for (const auto& [key, value] : written) {
        const auto got = Get(Proxy(p), key);
        ASSERT_TRUE(got.has_value()) << key << " missing through proxy " << p;
        EXPECT_EQ(got->value(), value) << key;
      }
    }
    std::set<std::string> held;
    for (const auto& [key, value] : DirectKeys(Index(owner))) held.insert(key);
    for (const auto& [key, value] : written) EXPECT_TRUE(held.contains(key)) << key << " not on " << owner;
    EXPECT_TRUE(DirectKeys(Index(old_owner)).empty()) << old_owner << " still holds keys of the moved range";
  }

  static inline std::unique_ptr<TempDir> dir_;
  static inline std::unique_ptr<EtcdCluster> meta_;
  static inline std::vector<std::unique_ptr<EtcdCluster>> shards_;
  static inline std::vector<std::unique_ptr<ProxyProcess>> proxies_;
  static inline std::string layout_;
};

// A workload through both proxies while the range moves: the history the checker reads.
class MoveRun {
 public:
  explicit MoveRun(const std::vector<std::string>& proxies) : proxies_(proxies) {}

  // Starts clients (two per proxy) and watchers: one on the moving range through proxy 0, one on
  // "t" keys (never moving) through proxy 1, each from its shard's next revision.
  void Start(int moving_space, const std::string& moving_member, const std::string& still_member) {
    watchers_.push_back(std::make_unique<Watcher>(1, proxies_[0], kMoveStart, kMoveEnd,
                                                  ShardRevision(moving_member) + 1, moving_space));
    watchers_.push_back(std::make_unique<Watcher>(2, proxies_[1], "t", "u", ShardRevision(still_member) + 1, 2));
    for (int c = 0; c < 4; ++c) {
      threads_.emplace_back([this, c] {
        Client client(c, proxies_[c % 2], history_, {"a", "m", "t"});
        while (!stop_) client.RunFor(std::chrono::milliseconds(200));
      });
    }
  }
  void Stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  History& history() { return history_; }
  std::vector<std::unique_ptr<Watcher>>& watchers() { return watchers_; }

 private:
  std::vector<std::string> proxies_;
  History history_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  std::vector<std::unique_ptr<Watcher>> watchers_;
};

}  // namespace
}  // namespace esp::test
