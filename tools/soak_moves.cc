// esp-soak-moves: hundreds of range moves under a client workload, checked by the history checker
// (issue 16: "split then move back, many times; a soak script outside CI runs hundreds of moves and
// reports"). Run by scripts/soak-moves.sh; not part of ctest.
//
// A meta etcd, three shard etcds (s0 ["", i), s1 [i, s), s2 [s, "")) and two proxies following the
// meta store, all real processes started by the test fixtures. Then, pair after pair:
// `reshard split --at m --to T` (T alternating s2 and s0) moves [m, s) away from s1, and
// `reshard move --range m s --to s1` brings it back, while four clients (two per proxy) put unique
// values, read, delete and compare-and-swap counters in the moving range and outside it, and two
// watchers watch (one on the moving range, one on keys that never move). The run is cut into
// batches of --moves-per-batch moves with their own keys (a fresh history each: the checker's cost
// grows with the square of one key's operations); after each batch the clients stop, each shard's
// own log since the batch began and a final scan of the batch's keys are recorded, and
// CheckHistory runs. Prints one line per batch and a report (moves done, time per move p50/p99,
// operations acknowledged, violations); a violation fails the test (exit code 1).
//
// Flags (before gtest's own): --moves=N (200), --moves-per-batch=N (10), --gap-ms=N (300: workload
// between moves).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <regex>
#include <thread>

#include "etcdserverpb/rpc.grpc.pb.h"
#include "support/fixtures.h"
#include "support/history_workload.h"

namespace esp::test {
namespace {

namespace pb = etcdserverpb;
using namespace std::chrono_literals;

int g_moves = 200;
int g_moves_per_batch = 10;
int g_gap_ms = 300;

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto index = static_cast<std::size_t>(p * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(index, values.size() - 1)];
}

std::string PrefixEndOf(const std::string& prefix) {
  std::string end = prefix;
  end.back() = static_cast<char>(end.back() + 1);
  return end;
}


class SoakMoves : public ::testing::Test {
 protected:
  void SetUp() override {
    auto setup = StartMetaShards(Binary(), "soak");
    ASSERT_EQ(setup.init.exit_code, 0) << setup.init.output;
    dir_ = std::move(setup.dir);
    meta_ = std::move(setup.meta);
    shards_ = std::move(setup.shards);
    for (int i = 0; i < 2; ++i) {
      proxies_.push_back(std::make_unique<ProxyProcess>(
          std::vector<ShardSpec>{{"", "", shards_[0]->ClientAddresses()}},
          std::vector<std::string>{"--meta-endpoints", MetaAddress(), "--meta-lease-ttl", "5", "--log-level", "warn"}));
      proxies_.back()->Start();
    }
  }

  static std::string Binary() { return ESP_PROXY_BINARY_FOR_TESTS; }
  std::string MetaAddress() const { return meta_->ClientAddresses()[0]; }
  std::string Member(int shard) const { return shards_[shard]->ClientAddresses()[0]; }
  std::string Proxy(int i) const { return proxies_[i]->address(); }

  CommandResult Reshard(const std::string& args) {
    return RunCommand(Binary() + " reshard " + args + " --meta-endpoints " + MetaAddress() + " --lock-ttl 3", 120s);
  }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<EtcdCluster> meta_;
  std::vector<std::unique_ptr<EtcdCluster>> shards_;
  std::vector<std::unique_ptr<ProxyProcess>> proxies_;
};

TEST_F(SoakMoves, SplitThenMoveBackUnderLoad) {
  std::vector<double> move_seconds;
  std::map<OpKind, long> acked;
  long violations = 0;
  long copy_reputs = 0;
  int moves_done = 0;
  std::string first_violations;
  const auto started = std::chrono::steady_clock::now();
  for (int batch = 0; moves_done < g_moves; ++batch) {
    const std::string tag = "b" + std::to_string(batch);
    const std::vector<std::string> prefixes = {"a/" + tag, "m/" + tag, "t/" + tag};
    std::vector<std::int64_t> from(3);
    for (int s = 0; s < 3; ++s) from[s] = ShardRevision(Member(s)) + 1;
    History history;
    std::vector<std::unique_ptr<Watcher>> watchers;
    // The moving range's home is s1 at the start of every batch (pairs end there).
    watchers.push_back(std::make_unique<Watcher>(1, Proxy(0), "m/" + tag + "/", PrefixEndOf("m/" + tag + "/"), from[1], 1));
    watchers.push_back(std::make_unique<Watcher>(2, Proxy(1), "t/" + tag + "/", PrefixEndOf("t/" + tag + "/"), from[2], 2));
    std::atomic<bool> stop{false};
    std::vector<std::thread> clients;
    for (int c = 0; c < 4; ++c) {
      clients.emplace_back([&, c] {
        Client client(c, Proxy(c % 2), history, prefixes);
        while (!stop) client.Run(History::Now() + 100ms);
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(g_gap_ms));
    bool failed = false;
    // Revisions of each shard that moves into it wrote (after the shard's revision when the mover
    // started, up to the floor the mover reports): where copies land.
    std::vector<std::tuple<int, std::int64_t, std::int64_t>> copies;
    for (int i = 0; i < g_moves_per_batch && moves_done < g_moves; ++i, ++moves_done) {
      const bool away = moves_done % 2 == 0;
      const std::string target = (moves_done / 2) % 2 == 0 ? "s2" : "s0";
      const int into = away ? target[1] - '0' : 1;
      const std::int64_t into_before = ShardRevision(Member(into));
      const auto t0 = std::chrono::steady_clock::now();
      const auto result = away ? Reshard("split --at m --to " + target) : Reshard("move --range m s --to s1");
      move_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      if (result.exit_code != 0) {
        ADD_FAILURE() << "move " << moves_done << " failed: " << result.output;
        failed = true;
        break;
      }
      static const std::regex switched("switched: s([0-9]) serves .* from revision ([0-9]+)");
      std::smatch m;
      if (std::regex_search(result.output, m, switched)) copies.emplace_back(std::stoi(m[1]), into_before, std::stoll(m[2]));
      std::this_thread::sleep_for(std::chrono::milliseconds(g_gap_ms));
    }
    stop = true;
    for (auto& t : clients) t.join();
    if (failed) break;

    // What the checker compares the history with: each shard's log since the batch began, what
    // each watcher got, and the batch's keys read through proxy 0.
    for (int s = 0; s < 3; ++s) history.RecordShardLog(s, ShardLog(s, Member(s), ShardRevision(Member(s)), from[s]));
    const auto logs = history.shard_logs();
    for (auto& w : watchers) {
      WatchLog log = w->Snapshot();
      const int space = log.events.empty() ? (log.key[0] == 'm' ? 1 : 2) : log.events.front().space;
      std::int64_t last = 0;
      for (const auto& e : logs.at(space)) {
        if (e.key >= log.key && e.key < log.range_end) last = e.mod_revision;
      }
      if (log.end == WatchEnd::kOpen && last > 0) w->AwaitRevision(last, 10s);
      log = w->Snapshot();
      if (!log.events.empty()) log.synced_through[log.events.front().space] = last;
      history.RecordWatch(std::move(log));
    }
    watchers.clear();
    std::vector<std::pair<std::string, std::string>> scan;
    auto kv = pb::KV::NewStub(Connect(Proxy(0)));
    for (const auto& p : prefixes) {
      pb::RangeRequest req;
      req.set_key(p + "/");
      req.set_range_end(PrefixEndOf(p + "/"));
      pb::RangeResponse resp;
      const auto status = kv->Range(Ctx().get(), req, &resp);
      ASSERT_TRUE(status.ok()) << status.error_message();
      for (const auto& kv_pair : resp.kvs()) scan.emplace_back(kv_pair.key(), kv_pair.value());
    }
    history.RecordFinalScan(std::move(scan));
    auto report = CheckHistory(history);
    // The checker's R5 on a shard's own log knows nothing of moves: a key whose value no client
    // overwrote while the range was away is put again, with that same value, when the range comes
    // back (the copy). Such a "duplicate" whose second revision is one a move's copy wrote into that
    // shard is the copy, not a write applied twice; it is counted apart. A real double apply by a
    // copy would also break R2/R3 (a stale or lost value), which stay counted.
    static const std::regex twice("in shard ([0-9]) \\(revisions ([0-9]+) and ([0-9]+)\\)");
    std::erase_if(report.violations, [&](const Violation& v) {
      std::smatch m;
      if (v.kind != ViolationKind::kDuplicate || !std::regex_search(v.message, m, twice)) return false;
      const int shard = std::stoi(m[1]);
      const std::int64_t second = std::stoll(m[3]);
      for (const auto& [into, after, floor] : copies) {
        if (into == shard && second > after && second <= floor) {
          ++copy_reputs;
          std::printf("  (a move's copy put %s = %s again in shard %d at revision %lld: not counted)\n", v.key.c_str(),
                      v.value.c_str(), shard, static_cast<long long>(second));
          return true;
        }
      }
      return false;
    });
    std::map<OpKind, long> batch_acked;
    long unknown = 0;
    for (const auto& op : history.operations()) {
      batch_acked[op.kind] += op.outcome == Outcome::kOk;
      unknown += op.outcome == Outcome::kUnknown;
    }
    for (const auto& [k, n] : batch_acked) acked[k] += n;
    violations += static_cast<long>(report.violations.size());
    if (!report.ok() && first_violations.size() < 20000) first_violations += "batch " + tag + ":\n" + report.ToString();
    std::printf("batch %s: %d moves done, acknowledged %ld puts %ld gets %ld deletes %ld increments, %ld unknown, %zu violations\n",
                tag.c_str(), moves_done, batch_acked[OpKind::kPut], batch_acked[OpKind::kGet], batch_acked[OpKind::kDelete],
                batch_acked[OpKind::kCasIncrement], unknown, report.violations.size());
    std::fflush(stdout);
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  long ops = 0;
  for (const auto& [k, n] : acked) ops += n;
  std::printf(
      "REPORT moves=%d seconds=%.0f move_p50_s=%.3f move_p99_s=%.3f move_max_s=%.3f acknowledged=%ld (puts %ld, gets %ld, "
      "deletes %ld, increments %ld) violations=%ld copy_reputs_not_counted=%ld\n",
      moves_done, total, Percentile(move_seconds, 0.5), Percentile(move_seconds, 0.99),
      move_seconds.empty() ? 0.0 : *std::max_element(move_seconds.begin(), move_seconds.end()), ops, acked[OpKind::kPut],
      acked[OpKind::kGet], acked[OpKind::kDelete], acked[OpKind::kCasIncrement], violations, copy_reputs);
  EXPECT_EQ(moves_done, g_moves);
  EXPECT_EQ(violations, 0) << first_violations;
}

}  // namespace
}  // namespace esp::test

int main(int argc, char** argv) {
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const auto number = [&](const char* flag, int* out) {
      const std::size_t n = std::strlen(flag);
      if (std::strncmp(argv[i], flag, n) != 0 || argv[i][n] != '=') return false;
      *out = std::atoi(argv[i] + n + 1);
      return true;
    };
    if (number("--moves", &esp::test::g_moves) || number("--moves-per-batch", &esp::test::g_moves_per_batch) ||
        number("--gap-ms", &esp::test::g_gap_ms)) {
      continue;
    }
    rest.push_back(argv[i]);
  }
  int n = static_cast<int>(rest.size());
  ::testing::InitGoogleTest(&n, rest.data());
  return RUN_ALL_TESTS();
}
