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
    auto setup = StartMetaShards(Binary(), "");
    ASSERT_EQ(setup.init.exit_code, 0) << setup.init.output;
    dir_ = std::move(setup.dir);
    meta_ = std::move(setup.meta);
    shards_ = std::move(setup.shards);
    layout_ = setup.layout;
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
    // A test that failed half-way leaves its move behind: finish it, so the next one starts clean.
    if (Status().value("state", "") != "none") Reshard("move --lock-ttl 2");
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
        std::vector<std::string>{"--meta-endpoints", MetaAddress(), "--meta-lease-ttl", std::to_string(kLeaseTtlSeconds),
                                 "--log-level", "debug"});
    proxy->Start();
    return proxy;
  }

  // `reshard <args>` with `env` before it (test hooks); stdout and stderr together.
  static CommandResult Reshard(const std::string& args, const std::string& env = "") {
    return RunCommand((env.empty() ? "" : "env " + env + " ") + Binary() + " reshard " + args + " --meta-endpoints " + MetaAddress(), 120s);
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
  static std::optional<mvccpb::KeyValue> Get(const std::string& proxy, const std::string& key) {
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
  // Each run has keys and values of its own (the shards keep earlier runs' keys: a value read
  // from one of them would be a phantom to this run's history).
  explicit MoveRun(const std::vector<std::string>& proxies) : proxies_(proxies), run_(++runs_) {}

  // Starts clients (two per proxy) and watchers: one on the moving range through proxy 0, one on
  // "t" keys (never moving) through proxy 1, each from its shard's next revision.
  void Start(int moving_space, const std::string& moving_member, const std::string& still_member) {
    watchers_.push_back(std::make_unique<Watcher>(1, proxies_[0], kMoveStart, kMoveEnd,
                                                  ShardRevision(moving_member) + 1, moving_space));
    watchers_.push_back(std::make_unique<Watcher>(2, proxies_[1], "t", "u", ShardRevision(still_member) + 1, 2));
    for (int c = 0; c < 4; ++c) {
      threads_.emplace_back([this, c] {
        const std::string tag = "/r" + std::to_string(run_);
        Client client(run_ * 10 + c, proxies_[c % 2], history_, {"a" + tag, "m" + tag, "t" + tag});
        while (!stop_) client.Run(History::Now() + std::chrono::milliseconds(200));
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
  static inline int runs_ = 0;
  const int run_;
  History history_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  std::vector<std::unique_ptr<Watcher>> watchers_;
};


// Every key the history used, read through proxy 0 after the clients stopped, and each shard's
// own log: what the checker compares the clients' history with.
// `log_until`: a shard's log is recorded only up to that revision. A move back into a shard
// copies values it already held (put once by a client, once by the copy): the checker's rule
// that a shard applies a value once holds only before such a copy.
void RecordEnd(MoveRun& run, const std::vector<std::string>& members, const std::string& proxy,
               const std::map<int, std::int64_t>& log_until = {}) {
  for (int s = 0; s < static_cast<int>(members.size()); ++s) {
    auto log = ShardLog(s, members[s], ShardRevision(members[s]));
    if (const auto limit = log_until.find(s); limit != log_until.end()) {
      std::erase_if(log, [&](const WatchEvent& e) { return e.mod_revision > limit->second; });
    }
    run.history().RecordShardLog(s, std::move(log));
  }
  for (auto& w : run.watchers()) {
    WatchLog log = w->Snapshot();
    // What the watcher is known to have caught up to: the last event of its range in its space.
    std::int64_t last = 0;
    for (const auto& e : run.history().shard_logs().at(log.events.empty() ? 2 : log.events.front().space)) {
      if (e.key >= log.key && e.key < log.range_end) last = e.mod_revision;
    }
    if (log.end == WatchEnd::kOpen && last > 0) w->AwaitRevision(last, 10s);
    log = w->Snapshot();
    if (!log.events.empty()) log.synced_through[log.events.front().space] = last;
    run.history().RecordWatch(std::move(log));
  }
  run.watchers().clear();
  auto kv = pb::KV::NewStub(Connect(proxy));
  pb::RangeRequest req;
  req.set_key("a");
  req.set_range_end(kAll);
  pb::RangeResponse resp;
  const auto status = kv->Range(Ctx().get(), req, &resp);
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<std::pair<std::string, std::string>> scan;
  for (const auto& kv_pair : resp.kvs()) scan.emplace_back(kv_pair.key(), kv_pair.value());
  run.history().RecordFinalScan(std::move(scan));
}

std::map<OpKind, int> Acknowledged(const History& history) {
  std::map<OpKind, int> acked;
  for (const auto& op : history.operations()) acked[op.kind] += op.outcome == Outcome::kOk;
  return acked;
}

// The range moves to another shard and back while four clients and two watchers work through two
// proxies: nothing acknowledged is lost or doubled, no read is stale, and the watcher on the moving
// range is told "compacted" at the cut-over while the other one sees everything.
TEST_F(ReshardTest, MovesUnderLoadKeepEveryAcknowledgedWrite) {
  const std::string home = Owner(kMoveStart);
  const std::string away = Elsewhere();
  MoveRun run({Proxy(0), Proxy(1)});
  run.Start(Index(home), Member(Index(home)), Member(2));
  std::this_thread::sleep_for(500ms);  // load before the first move (a workload phase, not a sync)
  const auto there = Move(away);
  ASSERT_EQ(there.exit_code, 0) << there.output;
  EXPECT_EQ(Owner(kMoveStart), away);
  std::this_thread::sleep_for(500ms);
  const std::int64_t before_back = ShardRevision(Member(Index(home)));
  const auto back = Move(home);
  ASSERT_EQ(back.exit_code, 0) << back.output;
  std::this_thread::sleep_for(300ms);
  run.Stop();
  EXPECT_EQ(Owner(kMoveStart), home);
  const std::vector<std::string> members = {Member(0), Member(1), Member(2)};
  RecordEnd(run, members, Proxy(0), {{Index(home), before_back}});

  const auto acked = Acknowledged(run.history());
  std::printf("acknowledged: %d puts, %d gets, %d deletes, %d increments\n", acked.at(OpKind::kPut), acked.at(OpKind::kGet),
              acked.at(OpKind::kDelete), acked.at(OpKind::kCasIncrement));
  EXPECT_GT(acked.at(OpKind::kPut), 50);
  EXPECT_GT(acked.at(OpKind::kCasIncrement), 10);
  std::size_t moved_puts = 0;
  for (const auto& op : run.history().operations()) moved_puts += op.kind == OpKind::kPut && op.key[0] == 'm' && op.outcome == Outcome::kOk;
  EXPECT_GT(moved_puts, 10u) << "too few writes to the moving range to tell anything";
  const auto watches = run.history().watches();
  ASSERT_EQ(watches.size(), 2u);
  EXPECT_EQ(watches[0].end, WatchEnd::kCompacted) << "the watch on the moving range was not ended at the cut-over";
  EXPECT_GT(watches[0].compact_revision, 0);
  EXPECT_EQ(watches[1].end, WatchEnd::kOpen) << watches[1].error;
  EXPECT_GT(watches[1].events.size(), 10u);
  const auto report = CheckHistory(run.history());
  EXPECT_TRUE(report.ok()) << report.ToString();
}

// The same run with a mover that drops the changes made while it copied: the checker must say so.
TEST_F(ReshardTest, BrokenMoverFailsTheHistoryCheck) {
  const std::string home = Owner(kMoveStart);
  const std::string away = Elsewhere();
  MoveRun run({Proxy(0), Proxy(1)});
  run.Start(Index(home), Member(Index(home)), Member(2));
  std::this_thread::sleep_for(300ms);
  // Slow pages make the copy take long enough for writes to land behind it.
  const auto moved = Reshard("move --range " + kMoveStart + " " + kMoveEnd + " --to " + away + " --lock-ttl 2",
                             "ESP_MOVER_BREAK=skip-tail ESP_MOVER_PAGE_KEYS=1 ESP_MOVER_PAGE_PAUSE_MS=100");
  ASSERT_EQ(moved.exit_code, 0) << moved.output;
  run.Stop();
  RecordEnd(run, {Member(0), Member(1), Member(2)}, Proxy(0));
  const auto report = CheckHistory(run.history());
  std::printf("%s", report.ToString().c_str());
  ASSERT_FALSE(report.ok()) << "a mover that lost the changes made during its copy passed the check";
  bool lost_or_stale = false;
  for (const auto& v : report.violations) {
    lost_or_stale |= v.key[0] == 'm' && (v.kind == ViolationKind::kLostWrite || v.kind == ViolationKind::kStaleRead ||
                                         v.kind == ViolationKind::kCounter || v.kind == ViolationKind::kReadOrder);
  }
  EXPECT_TRUE(lost_or_stale) << report.ToString();
  // Put things right for the next tests: the broken copy is replaced by the source's data.
  const auto back = Move(home);
  ASSERT_EQ(back.exit_code, 0) << back.output;
}

// kill -9 of the mover after each step, then the same command again: it resumes and finishes,
// every key written before and during is there, once, on the new owner only.
TEST_F(ReshardTest, MoverKilledAfterEachStepResumes) {
  int round = 0;
  for (const std::string step : {"started", "acked", "copied", "caught-up", "fenced", "switched", "cleaned"}) {
    SCOPED_TRACE("killed after " + step);
    const std::string from = Owner(kMoveStart);
    const std::string to = Elsewhere();
    auto written = Seed("k" + std::to_string(round++), 20);
    const auto killed = Move(to, "ESP_MOVER_CRASH_AFTER=" + step);
    ASSERT_NE(killed.exit_code, 0) << killed.output;
    EXPECT_EQ(killed.output.find("moved "), std::string::npos) << killed.output;
    const auto state = Status().value("state", "");
    EXPECT_NE(state, "none") << "the killed mover left no move to resume";
    // A client writes meanwhile: before the cut-over it goes to the source (guarded); after the
    // fence, with the mover dead, it is held until the resumed mover switches the map.
    const std::string key = "m/seed/while-" + step;
    grpc::Status during;
    std::thread writer([&] { during = Put(Proxy(1), key, step); });
    const auto resumed = Reshard("move --lock-ttl 2");
    writer.join();
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    ASSERT_TRUE(during.ok()) << during.error_message();
    written[key] = step;
    EXPECT_NE(resumed.output.find("resuming"), std::string::npos) << resumed.output;
    EXPECT_EQ(Status().value("state", ""), "none");
    ExpectMoved(written, to, from);
  }
}

// Abort after each step before the cut-over: the source keeps the range and every key, the target's
// copy is gone, and the map has no move. After the cut-over abort is refused and the move finishes.
TEST_F(ReshardTest, AbortBeforeTheCutOverRollsBackAndAfterIsRefused) {
  int round = 0;
  for (const std::string step : {"started", "acked", "copied", "caught-up"}) {
    SCOPED_TRACE("aborted after " + step);
    const std::string from = Owner(kMoveStart);
    const std::string to = Elsewhere();
    const auto version = Store().Load()->doc.version;
    const auto written = Seed("a" + std::to_string(round++), 10);
    const auto killed = Move(to, "ESP_MOVER_CRASH_AFTER=" + step);
    ASSERT_NE(killed.exit_code, 0) << killed.output;
    const auto aborted = Reshard("abort --lock-ttl 2");
    ASSERT_EQ(aborted.exit_code, 0) << aborted.output;
    EXPECT_EQ(Status().value("state", ""), "none");
    EXPECT_GT(Store().Load()->doc.version, version);
    EXPECT_EQ(Owner(kMoveStart), from);
    // The entries the move split are joined again.
    const auto doc = Store().Load()->doc;
    for (std::size_t r = 1; r < doc.ranges.size(); ++r) {
      EXPECT_FALSE(doc.ranges[r].shard == doc.ranges[r - 1].shard && doc.ranges[r].min_revision == doc.ranges[r - 1].min_revision)
          << doc.ToJson();
    }
    ExpectMoved(written, from, to);
  }
  const std::string to = Elsewhere();
  const auto written = Seed("after-fence", 10);
  const auto killed = Move(to, "ESP_MOVER_CRASH_AFTER=fenced");
  ASSERT_NE(killed.exit_code, 0) << killed.output;
  const auto refused = Reshard("abort --lock-ttl 2");
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_NE(refused.output.find("can only be finished"), std::string::npos) << refused.output;
  const auto resumed = Reshard("move --lock-ttl 2");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  ExpectMoved(written, to, to == "s1" ? "s2" : "s1");
}

// Bad input changes nothing and says why.
TEST_F(ReshardTest, BadInputIsRefusedAndChangesNothing) {
  const auto before = Store().Load()->doc.ToJson();
  const std::string owner = Owner(kMoveStart);
  struct Case {
    std::string args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"move --range h j --to s2", "spans shards"},
      {"move --range m n --to s9", "unknown shard"},
      {"move --range m n --to " + owner, "already belongs"},
      {"move --range n m --to s0", "END must be after START"},
      {"move --range m n", "--range and --to go together"},
      {"split --at m --to nowhere", "unknown shard"},
      {"abort", "no move in progress"},
      {"move --range !! n --to s0 --base64", "not base64"},
  };
  for (const auto& c : cases) {
    const auto result = Reshard(c.args);
    EXPECT_EQ(result.exit_code, 1) << c.args << ": " << result.output;
    EXPECT_NE(result.output.find(c.message), std::string::npos) << c.args << ": " << result.output;
    EXPECT_EQ(Store().Load()->doc.ToJson(), before) << c.args << " changed the map";
  }
  // A target that already holds keys in the range.
  const std::string to = Elsewhere();
  auto kv = pb::KV::NewStub(Connect(Member(Index(to))));
  pb::PutRequest stray;
  stray.set_key("m/stray");
  stray.set_value("x");
  pb::PutResponse put;
  ASSERT_TRUE(kv->Put(Ctx().get(), stray, &put).ok());
  const auto occupied = Move(to);
  EXPECT_EQ(occupied.exit_code, 1) << occupied.output;
  EXPECT_NE(occupied.output.find("already holds"), std::string::npos) << occupied.output;
  EXPECT_EQ(Store().Load()->doc.ToJson(), before);
  pb::DeleteRangeRequest drop;
  drop.set_key("m/stray");
  pb::DeleteRangeResponse dropped;
  ASSERT_TRUE(kv->DeleteRange(Ctx().get(), drop, &dropped).ok());
  // A move in progress: another one is refused.
  const auto started = Move(to, "ESP_MOVER_CRASH_AFTER=started");
  ASSERT_NE(started.exit_code, 0);
  const auto other = Reshard("move --range a b --to s2 --lock-ttl 2");
  EXPECT_EQ(other.exit_code, 1) << other.output;
  EXPECT_NE(other.output.find("already in progress"), std::string::npos) << other.output;
  ASSERT_EQ(Reshard("abort --lock-ttl 2").exit_code, 0);
  // A target that does not answer (s0's only member stopped for a moment).
  const auto before_dead = Store().Load()->doc.ToJson();
  shards_[0]->KillMember(0);
  const auto unreachable = Reshard("move --range m n --to s0 --lock-ttl 2");
  shards_[0]->StartMember(0);
  shards_[0]->WaitReady();
  EXPECT_EQ(unreachable.exit_code, 1) << unreachable.output;
  EXPECT_NE(unreachable.output.find("the target shard s0"), std::string::npos) << unreachable.output;
  EXPECT_EQ(Store().Load()->doc.ToJson(), before_dead);
  // A meta store that does not answer.
  const auto unchanged = Store().Load()->doc.ToJson();
  const auto no_meta = RunCommand(Binary() + " reshard move --range m n --to s0 --meta-endpoints 127.0.0.1:1");
  EXPECT_EQ(no_meta.exit_code, 1) << no_meta.output;
  EXPECT_NE(no_meta.output.find("127.0.0.1:1"), std::string::npos) << no_meta.output;
  EXPECT_EQ(Store().Load()->doc.ToJson(), unchanged);
}

// What clients see of a finished move: the watch on the range ends "compacted", a watch elsewhere
// goes on, a read pinned below the new owner's floor is "compacted", keys keep value and lease.
TEST_F(ReshardTest, ClientsSeeCompactedWatchesAndFloorsAndKeysKeepTheirLease) {
  const std::string to = Elsewhere();
  auto lease = pb::Lease::NewStub(Connect(Proxy(0)));
  pb::LeaseGrantRequest grant;
  grant.set_ttl(60);
  pb::LeaseGrantResponse granted;
  ASSERT_TRUE(lease->LeaseGrant(Ctx().get(), grant, &granted).ok());
  ASSERT_TRUE(Put(Proxy(0), "m/leased", "v", granted.id()).ok());
  const auto before = Get(Proxy(0), "m/leased");
  ASSERT_TRUE(before.has_value());

  WatchClient moving(Proxy(1));
  moving.Create(kMoveStart, kMoveEnd);
  ASSERT_TRUE(moving.Next(5s).has_value());  // created
  WatchClient still(Proxy(1));
  still.Create("t", "u");
  ASSERT_TRUE(still.Next(5s).has_value());

  const auto moved = Move(to);
  ASSERT_EQ(moved.exit_code, 0) << moved.output;
  const auto ended = moving.Next(10s);
  ASSERT_TRUE(ended.has_value()) << "no cancel on the moved range's watch";
  EXPECT_EQ(ended->events_size(), 0) << ended->DebugString();
  EXPECT_TRUE(ended->canceled());
  EXPECT_GT(ended->compact_revision(), 0);
  ASSERT_TRUE(Put(Proxy(0), "t/after-move", "x").ok());
  const auto event = still.Next(10s);
  ASSERT_TRUE(event.has_value());
  ASSERT_EQ(event->events_size(), 1);
  EXPECT_EQ(event->events(0).kv().key(), "t/after-move");

  const auto after = Get(Proxy(1), "m/leased");
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ(after->value(), "v");
  EXPECT_EQ(after->lease(), granted.id());
  const std::int64_t floor = Store().Load()->doc.ranges[*Store().Load()->doc.FindRange(kMoveStart, kMoveEnd)].min_revision;
  ASSERT_GT(floor, 1);
  auto kv = pb::KV::NewStub(Connect(Proxy(0)));
  pb::RangeRequest pinned;
  pinned.set_key("m/leased");
  pinned.set_revision(floor - 1);
  pb::RangeResponse answer;
  const auto refused = kv->Range(Ctx().get(), pinned, &answer);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::OUT_OF_RANGE) << refused.error_message();
  EXPECT_EQ(refused.error_message(), "etcdserver: mvcc: required revision has been compacted");
  pinned.set_revision(floor);
  EXPECT_TRUE(kv->Range(Ctx().get(), pinned, &answer).ok());
  // A watch from below the floor is told "compacted" at once.
  WatchClient old(Proxy(0));
  old.Create(kMoveStart, kMoveEnd, 0, floor - 1);
  const auto created = old.Next(5s);
  ASSERT_TRUE(created.has_value());
  auto canceled = created->canceled() ? created : old.Next(5s);
  ASSERT_TRUE(canceled.has_value());
  EXPECT_TRUE(canceled->canceled());
  EXPECT_EQ(canceled->compact_revision(), floor);
  // The lease still ends the key, now on its new owner.
  pb::LeaseRevokeRequest revoke;
  revoke.set_id(granted.id());
  pb::LeaseRevokeResponse revoked;
  ASSERT_TRUE(lease->LeaseRevoke(Ctx().get(), revoke, &revoked).ok());
  EXPECT_FALSE(Get(Proxy(0), "m/leased").has_value());
}

// A proxy stopped (SIGSTOP) with writes in flight, across a whole move, then continued: none of
// its writes lands on the old owner; its acknowledged writes are all on the new one.
TEST_F(ReshardTest, AProxyStoppedAcrossTheMoveCannotWriteToTheOldOwner) {
  const std::string from = Owner(kMoveStart);
  const std::string to = Elsewhere();
  History history;
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int c = 0; c < 3; ++c) {
    writers.emplace_back([&, c] {
      auto kv = pb::KV::NewStub(Connect(Proxy(1)));
      for (int i = 0; !stop; ++i) {
        Operation op;
        op.process = c;
        op.kind = OpKind::kPut;
        op.key = "m/stopped/" + std::to_string(c);
        op.value = "w" + std::to_string(c) + "-" + std::to_string(i);
        op.invoke = History::Now();
        pb::PutRequest request;
        request.set_key(op.key);
        request.set_value(op.value);
        pb::PutResponse response;
        const auto status = kv->Put(Ctx(30s).get(), request, &response);
        op.complete = History::Now();
        op.outcome = OutcomeOf(status);
        history.Record(op);
      }
    });
  }
  std::this_thread::sleep_for(200ms);  // writes in flight through proxy 1
  proxies_[1]->process().Signal(SIGSTOP);
  const auto stopped_at = std::chrono::steady_clock::now();
  const auto moved = Move(to);
  const double move_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped_at).count();
  proxies_[1]->process().Signal(SIGCONT);
  ASSERT_EQ(moved.exit_code, 0) << moved.output;
  EXPECT_NE(moved.output.find("waiting for proxies"), std::string::npos)
      << "the mover did not wait for the stopped proxy's registration:\n" << moved.output;
  std::printf("move with a stopped proxy took %.1f s (registration TTL %d s)\n", move_seconds, kLeaseTtlSeconds);
  // The continued proxy refuses (self-fenced) until it has re-registered and read the new map,
  // then serves the range from its new owner.
  ASSERT_TRUE(WaitFor([&] { return Put(Proxy(1), "m/stopped/after", "after").ok(); }, 20s));
  stop = true;
  for (auto& t : writers) t.join();
  EXPECT_TRUE(DirectKeys(Index(from)).empty()) << "a write reached the old owner after the move";
  std::vector<std::pair<std::string, std::string>> scan;
  for (int c = 0; c < 3; ++c) {
    const auto got = Get(Proxy(0), "m/stopped/" + std::to_string(c));
    if (got) scan.emplace_back(got->key(), got->value());
  }
  history.RecordFinalScan(scan);
  const auto report = CheckHistory(history);
  EXPECT_TRUE(report.ok()) << report.ToString();
  ASSERT_EQ(Registered(), 2u);
}

// Compaction of the source while the mover copies: it notices and copies again, losing nothing.
TEST_F(ReshardTest, CompactionOfTheSourceDuringTheCopyRestartsIt) {
  const std::string from = Owner(kMoveStart);
  const std::string to = Elsewhere();
  auto written = Seed("c", 30);
  const auto moved = Move(to, "ESP_MOVER_COMPACT_SOURCE_AFTER_COPY=1");
  ASSERT_EQ(moved.exit_code, 0) << moved.output;
  EXPECT_NE(moved.output.find("copying again"), std::string::npos) << moved.output;
  ExpectMoved(written, to, from);
}

// split --at KEY moves the rest of KEY's range; moving it back joins the map again.
TEST_F(ReshardTest, SplitThenMoveBack) {
  const auto written = Seed("split", 10);
  const auto version = Store().Load()->doc.version;
  const auto split = Reshard("split --at q --to s2 --lock-ttl 2");
  ASSERT_EQ(split.exit_code, 0) << split.output;
  EXPECT_EQ(Owner("q"), "s2");
  EXPECT_EQ(Owner("p"), "s1");
  ASSERT_TRUE(Put(Proxy(0), "q/1", "q").ok());
  EXPECT_EQ(Get(Proxy(1), "q/1")->value(), "q");
  const auto back = Reshard("move --range q s --to s1 --lock-ttl 2");
  ASSERT_EQ(back.exit_code, 0) << back.output;
  EXPECT_EQ(Owner("q"), "s1");
  EXPECT_EQ(Get(Proxy(1), "q/1")->value(), "q");
  EXPECT_GT(Store().Load()->doc.version, version);
}

// A lease that ends while its key's range is being copied: the key ends everywhere, not on the
// new owner's copy alone; the other keys arrive.
TEST_F(ReshardTest, ALeaseEndingDuringTheMoveEndsItsKeyOnTheNewOwner) {
  const std::string from = Owner(kMoveStart);
  const std::string to = Elsewhere();
  const auto written = Seed("lease", 30);
  auto lease = pb::Lease::NewStub(Connect(Proxy(0)));
  pb::LeaseGrantRequest grant;
  grant.set_ttl(2);
  pb::LeaseGrantResponse granted;
  ASSERT_TRUE(lease->LeaseGrant(Ctx().get(), grant, &granted).ok());
  ASSERT_TRUE(Put(Proxy(0), "m/short-lived", "v", granted.id()).ok());
  // One key per page, 100 ms apart: the copy outlasts the lease.
  const auto moved = Move(to, "ESP_MOVER_PAGE_KEYS=1 ESP_MOVER_PAGE_PAUSE_MS=100");
  ASSERT_EQ(moved.exit_code, 0) << moved.output;
  ExpectMoved(written, to, from);
  EXPECT_FALSE(Get(Proxy(0), "m/short-lived").has_value());
  for (const auto& [key, value] : DirectKeys(Index(to))) EXPECT_NE(key, "m/short-lived");
  pb::LeaseTimeToLiveRequest ask;
  ask.set_id(granted.id());
  pb::LeaseTimeToLiveResponse answer;
  ASSERT_TRUE(lease->LeaseTimeToLive(Ctx().get(), ask, &answer).ok());
  EXPECT_EQ(answer.ttl(), -1);
}

// A delete of more keys than one Txn may hold, in the moving range while the mover copies: one
// source revision with 200 delete events, applied on the target in several Txns.
TEST_F(ReshardTest, ABigDeleteDuringTheCopyArrives) {
  const std::string from = Owner(kMoveStart);
  const std::string to = Elsewhere();
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(Put(Proxy(0), "m/bulk/" + std::to_string(1000 + i), "v").ok());
  const auto written = Seed("bulk-kept", 5);
  CommandResult moved;
  std::thread mover([&] { moved = Move(to, "ESP_MOVER_PAGE_KEYS=10 ESP_MOVER_PAGE_PAUSE_MS=50"); });
  ASSERT_TRUE(WaitFor([] { return Status().value("progress", nlohmann::json::object()).value("step", "") == "copying"; }, 10s));
  auto kv = pb::KV::NewStub(Connect(Proxy(1)));
  pb::DeleteRangeRequest bulk;
  bulk.set_key("m/bulk/");
  bulk.set_range_end("m/bulk0");
  pb::DeleteRangeResponse deleted;
  const auto status = kv->DeleteRange(Ctx(15s).get(), bulk, &deleted);
  mover.join();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(deleted.deleted(), 200);
  ASSERT_EQ(moved.exit_code, 0) << moved.output;
  ExpectMoved(written, to, from);
  for (const auto& [key, value] : DirectKeys(Index(to))) EXPECT_EQ(key.rfind("m/bulk/", 0), std::string::npos) << key;
}

// With auth on the shards: the mover needs its own credentials (refused without, nothing changed),
// clients keep writing with their tokens during the move, and their keys arrive.
class ReshardAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto setup = StartMetaShards(ESP_PROXY_BINARY_FOR_TESTS, "a", 0, {"--bcrypt-cost", "4"});
    ASSERT_EQ(setup.init.exit_code, 0) << setup.init.output;
    dir_ = std::move(setup.dir);
    meta_ = std::move(setup.meta);
    shards_ = std::move(setup.shards);
    proxy_ = std::make_unique<ProxyProcess>(
        std::vector<ShardSpec>{{"", "", shards_[0]->ClientAddresses()}},
        std::vector<std::string>{"--meta-endpoints", meta_->ClientAddresses()[0], "--meta-lease-ttl", "3"});
    proxy_->Start();
    for (const char* command : {"user add root:rootpw", "role add app", "role grant-permission app readwrite m n",
                                "user add app:apppw", "user grant-role app app", "auth enable"}) {
      const auto result = Etcdctl(proxy_->address(), command);
      ASSERT_EQ(result.exit_code, 0) << command << ": " << result.output;
    }
    password_file_ = (dir_->path() / "root.password").string();
    std::ofstream(password_file_) << "rootpw\n";
    std::filesystem::permissions(password_file_, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  }

  CommandResult Reshard(const std::string& args) {
    return RunCommand(std::string(ESP_PROXY_BINARY_FOR_TESTS) + " reshard " + args + " --meta-endpoints " +
                          meta_->ClientAddresses()[0],
                      120s);
  }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<EtcdCluster> meta_;
  std::vector<std::unique_ptr<EtcdCluster>> shards_;
  std::unique_ptr<ProxyProcess> proxy_;
  std::string password_file_;
};

TEST_F(ReshardAuthTest, TheMoverUsesItsOwnCredentialsWhileClientsUseTheirs) {
  meta::EtcdClient meta_client(meta::EtcdClientOptions{.endpoints = {meta_->ClientAddresses()[0]}});
  meta::MapStore store(meta_client);
  const auto before = store.Load()->doc.ToJson();
  const auto refused = Reshard("move --range m n --to s2");
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_NE(refused.output.find("user name is empty"), std::string::npos) << refused.output;
  EXPECT_EQ(store.Load()->doc.ToJson(), before);

  auto auth = pb::Auth::NewStub(Connect(proxy_->address()));
  pb::AuthenticateRequest login;
  login.set_name("app");
  login.set_password("apppw");
  pb::AuthenticateResponse token;
  ASSERT_TRUE(auth->Authenticate(Ctx().get(), login, &token).ok());
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> count{0};
  std::vector<std::string> acknowledged;  // the writer's until it is joined
  std::thread writer([&] {
    auto kv = pb::KV::NewStub(Connect(proxy_->address()));
    for (int i = 0; !stop; ++i) {
      pb::PutRequest put;
      put.set_key("m/auth/" + std::to_string(i));
      put.set_value("v" + std::to_string(i));
      pb::PutResponse response;
      auto ctx = Ctx(15s);
      ctx->AddMetadata("token", token.token());
      if (kv->Put(ctx.get(), put, &response).ok()) {
        acknowledged.push_back(put.key());
        ++count;
      }
    }
  });
  ASSERT_TRUE(WaitFor([&] { return count >= 20; }, 10s));  // writes before the move
  const auto moved = Reshard("move --range m n --to s2 --user root --password-file " + password_file_);
  stop = true;
  writer.join();
  ASSERT_EQ(moved.exit_code, 0) << moved.output;
  ASSERT_GT(acknowledged.size(), 20u);
  auto kv = pb::KV::NewStub(Connect(proxy_->address()));
  for (const auto& key : acknowledged) {
    pb::RangeRequest get;
    get.set_key(key);
    pb::RangeResponse answer;
    auto ctx = Ctx();
    ctx->AddMetadata("token", token.token());
    ASSERT_TRUE(kv->Range(ctx.get(), get, &answer).ok());
    EXPECT_EQ(answer.kvs_size(), 1) << key << " lost";
  }
  const auto direct = Etcdctl(shards_[1]->ClientAddresses()[0], "--user root:rootpw get m n --keys-only");
  EXPECT_EQ(direct.output.find("m/auth/"), std::string::npos) << "keys left on the old owner: " << direct.output;
}

}  // namespace
}  // namespace esp::test
