// Leases across three real etcd shards, through the proxy: etcdctl's lease commands, keys on all
// shards going together on revoke and expiry, streaming keep-alive, locks, and shards that stop
// and return.
#include <grpcpp/client_context.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <memory>
#include <regex>
#include <thread>

#include "support/fixtures.h"

namespace esp::test {
namespace {

using namespace std::chrono_literals;

class LeaseTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { setup_ = std::make_unique<ShardedSetup>(); }
  static void TearDownTestSuite() {
    setup_.reset();
  }

  // A test that failed half-way may have left a shard stopped.
  void SetUp() override {
    for (std::size_t i = 0; i < 3; ++i) {
      if (setup_->shard(i).member(0).process->running()) {
        setup_->shard(i).ResumeMember(0);
      } else {
        RestartShard(i);
      }
    }
  }

  static std::string Proxy() { return setup_->proxy().address(); }
  static std::string ShardAddress(std::size_t i) { return setup_->shard(i).member(0).client_address(); }

  // `etcdctl lease grant` through the proxy; returns the id in hex as etcdctl prints it.
  static std::string Grant(int ttl) {
    const auto result = Etcdctl(Proxy(), "lease grant " + std::to_string(ttl));
    std::smatch match;
    if (!std::regex_search(result.output, match, std::regex("lease ([0-9a-f]+) granted with TTL"))) {
      ADD_FAILURE() << result.output;
      return "0";
    }
    return match[1];
  }

  static bool KeyExists(const std::string& address, const std::string& key) {
    return Etcdctl(address, "get " + key).output == key + "\n1\n";
  }
  static int CountKeys(const std::string& address, const std::vector<std::string>& keys) {
    int n = 0;
    for (const auto& key : keys) n += KeyExists(address, key) ? 1 : 0;
    return n;
  }
  // Puts `keys` (one per shard) with the lease through the proxy.
  static void PutAll(const std::vector<std::string>& keys, const std::string& lease) {
    for (const auto& key : keys) ASSERT_EQ(Etcdctl(Proxy(), "put " + key + " 1 --lease=" + lease).output, "OK\n") << key;
  }
  static void RestartShard(std::size_t i) {
    setup_->shard(i).StartMember(0);
    setup_->shard(i).WaitReady();
  }

  static std::unique_ptr<ShardedSetup> setup_;
};
std::unique_ptr<ShardedSetup> LeaseTest::setup_;

int64_t ParseHex(const std::string& hex) { return static_cast<int64_t>(std::stoull(hex, nullptr, 16)); }

TEST_F(LeaseTest, EtcdctlLeaseCommandsAcrossShards) {
  const std::string id = Grant(60);
  const std::vector<std::string> keys = {"al", "jl", "zl"};
  PutAll(keys, id);

  // The same lease exists on every shard, and each key went to its own shard.
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_NE(Etcdctl(ShardAddress(i), "lease list").output.find(id), std::string::npos) << i;
    EXPECT_TRUE(KeyExists(ShardAddress(i), keys[i])) << i;
  }
  const auto ttl = Etcdctl(Proxy(), "lease timetolive " + id + " --keys").output;
  EXPECT_NE(ttl.find("granted with TTL(60s)"), std::string::npos) << ttl;
  EXPECT_NE(ttl.find("attached keys([al jl zl])"), std::string::npos) << ttl;
  EXPECT_NE(Etcdctl(Proxy(), "lease list").output.find(id), std::string::npos);

  const auto once = Etcdctl(Proxy(), "lease keep-alive --once " + id).output;
  EXPECT_EQ(once, "lease " + id + " keepalived with TTL(60)\n");

  EXPECT_EQ(Etcdctl(Proxy(), "lease revoke " + id).output, "lease " + id + " revoked\n");
  EXPECT_EQ(CountKeys(Proxy(), keys), 0);
  EXPECT_NE(Etcdctl(Proxy(), "lease timetolive " + id).output.find("already expired"), std::string::npos);
  const auto again = Etcdctl(Proxy(), "lease revoke " + id);
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.output.find("requested lease not found"), std::string::npos) << again.output;
  EXPECT_EQ(Etcdctl(Proxy(), "lease list").output.find(id), std::string::npos);
}

TEST_F(LeaseTest, ClientChosenIdThatExistsGetsEtcdsError) {
  const auto first = Etcdctl(Proxy(), "lease grant 30");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  // etcdctl cannot choose an id; use the API.
  auto stub = etcdserverpb::Lease::NewStub(Connect(Proxy()));
  etcdserverpb::LeaseGrantRequest request;
  request.set_ttl(30);
  request.set_id(0x1234abcd);
  etcdserverpb::LeaseGrantResponse response;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->LeaseGrant(&ctx, request, &response).ok());
    EXPECT_EQ(response.id(), 0x1234abcd);
  }
  grpc::ClientContext ctx;
  const auto status = stub->LeaseGrant(&ctx, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(status.error_message(), "etcdserver: lease already exists");
  // The existing lease is untouched on every shard.
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_NE(Etcdctl(ShardAddress(i), "lease list").output.find("1234abcd"), std::string::npos) << i;
  }
  EXPECT_EQ(Etcdctl(Proxy(), "lease revoke 1234abcd").exit_code, 0);
}

TEST_F(LeaseTest, KeysOnAllShardsExpireTogether) {
  const std::string id = Grant(2);
  const std::vector<std::string> keys = {"ae", "je", "ze"};
  PutAll(keys, id);
  EXPECT_EQ(CountKeys(Proxy(), keys), 3);
  ASSERT_TRUE(WaitFor([&] { return CountKeys(Proxy(), keys) < 3; }, 10s));
  EXPECT_TRUE(WaitFor([&] { return CountKeys(Proxy(), keys) == 0; }, 1500ms));
  EXPECT_NE(Etcdctl(Proxy(), "lease timetolive " + id).output.find("already expired"), std::string::npos);
}

// Sends keep-alives for `id` every `period` until `stop`, through one client stream.
class KeepAliveLoop {
 public:
  KeepAliveLoop(const std::string& address, int64_t id, std::chrono::milliseconds period) {
    thread_ = std::thread([this, address, id, period] {
      auto stub = etcdserverpb::Lease::NewStub(Connect(address));
      grpc::ClientContext ctx;
      auto stream = stub->LeaseKeepAlive(&ctx);
      etcdserverpb::LeaseKeepAliveRequest request;
      request.set_id(id);
      etcdserverpb::LeaseKeepAliveResponse response;
      while (!stop_) {
        if (!stream->Write(request) || !stream->Read(&response)) {
          failed_ = true;
          break;
        }
        last_ttl_ = response.ttl();
        ++answers_;
        std::this_thread::sleep_for(period);  // the client's own pace, not synchronisation
      }
      stream->WritesDone();
      ctx.TryCancel();
    });
  }
  ~KeepAliveLoop() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int answers() const { return answers_; }
  int64_t last_ttl() const { return last_ttl_; }
  bool failed() const { return failed_; }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  std::atomic<int> answers_{0};
  std::atomic<int64_t> last_ttl_{-1};
  std::thread thread_;
};

TEST_F(LeaseTest, StreamingKeepAliveKeepsTheLeaseOnAllShards) {
  const std::string id = Grant(2);
  const std::vector<std::string> keys = {"ak", "jk", "zk"};
  PutAll(keys, id);
  KeepAliveLoop loop(Proxy(), ParseHex(id), 300ms);
  const auto until = std::chrono::steady_clock::now() + 5s;  // 2.5 TTLs
  // Every key stays the whole time (checked repeatedly, directly on its shard).
  while (std::chrono::steady_clock::now() < until) {
    for (std::size_t i = 0; i < 3; ++i) ASSERT_TRUE(KeyExists(ShardAddress(i), keys[i])) << i;
  }
  EXPECT_FALSE(loop.failed());
  EXPECT_GT(loop.answers(), 5);
  EXPECT_EQ(loop.last_ttl(), 2);
  loop.Stop();
  EXPECT_TRUE(WaitFor([&] { return CountKeys(Proxy(), keys) == 0; }, 10s));
}

// Round-trip times of `n` keep-alives sent one after the other on one stream, sorted (µs).
std::vector<int64_t> KeepAliveRoundTrips(const std::string& address, int64_t id, int n) {
  auto stub = etcdserverpb::Lease::NewStub(Connect(address));
  grpc::ClientContext ctx;
  auto stream = stub->LeaseKeepAlive(&ctx);
  etcdserverpb::LeaseKeepAliveRequest request;
  request.set_id(id);
  etcdserverpb::LeaseKeepAliveResponse response;
  std::vector<int64_t> micros;
  for (int i = 0; i < n; ++i) {
    const auto start = std::chrono::steady_clock::now();
    if (!stream->Write(request) || !stream->Read(&response)) break;
    micros.push_back(std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count());
  }
  stream->WritesDone();
  ctx.TryCancel();
  std::sort(micros.begin(), micros.end());
  return micros;
}

TEST_F(LeaseTest, KeepAliveIsAnsweredWithoutBatchingDelay) {
  const std::string id = Grant(30);
  constexpr int kRounds = 200;
  const auto direct = KeepAliveRoundTrips(ShardAddress(0), ParseHex(id), kRounds);
  const auto proxied = KeepAliveRoundTrips(Proxy(), ParseHex(id), kRounds);
  ASSERT_EQ(direct.size(), static_cast<std::size_t>(kRounds));
  ASSERT_EQ(proxied.size(), static_cast<std::size_t>(kRounds));
  const auto at = [](const std::vector<int64_t>& v, double q) { return v[static_cast<std::size_t>(q * (v.size() - 1))]; };
  std::printf("keep-alive round trip, one shard direct: p50 %lld us, p99 %lld us; proxy over 3 shards: p50 %lld us, "
              "p99 %lld us\n",
              static_cast<long long>(at(direct, 0.5)), static_cast<long long>(at(direct, 0.99)),
              static_cast<long long>(at(proxied, 0.5)), static_cast<long long>(at(proxied, 0.99)));
  // etcd's grpc-proxy answers after ~500 ms; this proxy answers when the shards have.
  EXPECT_LT(at(proxied, 0.5), 50'000);
  EXPECT_EQ(Etcdctl(Proxy(), "lease revoke " + id).exit_code, 0);
}

TEST_F(LeaseTest, ManyClientsKeepingOneLeaseAlive) {
  const std::string id = Grant(2);
  PutAll({"am", "zm"}, id);
  std::vector<std::unique_ptr<KeepAliveLoop>> loops;
  for (int i = 0; i < 8; ++i) loops.push_back(std::make_unique<KeepAliveLoop>(Proxy(), ParseHex(id), 0ms));
  const auto until = std::chrono::steady_clock::now() + 3s;
  while (std::chrono::steady_clock::now() < until) ASSERT_TRUE(KeyExists(Proxy(), "zm"));
  for (auto& loop : loops) {
    EXPECT_FALSE(loop->failed());
    EXPECT_GT(loop->answers(), 10);
    loop->Stop();
  }
  EXPECT_EQ(Etcdctl(Proxy(), "lease revoke " + id).exit_code, 0);
}

TEST_F(LeaseTest, EtcdctlLockRunsACommandAndReleases) {
  // Uncontended: session lease, Txn on the lock key, the command, then the lease revoked.
  EXPECT_EQ(Etcdctl(Proxy(), "lock cmdlock echo held").output, "held\n");
  EXPECT_EQ(Etcdctl(Proxy(), "lock cmdlock echo again").output, "again\n");
  EXPECT_EQ(Etcdctl(Proxy(), "get cmdlock --prefix --keys-only").output, "");
}

TEST_F(LeaseTest, EtcdctlLockIsMutuallyExclusive) {
  TempDir dir;
  const std::vector<std::string> base = {"env", "ETCDCTL_API=3", "etcdctl", "--endpoints", Proxy(), "lock", "--ttl", "2",
                                         "mylock"};
  ChildProcess first(base, dir.path() / "first.log");
  ASSERT_TRUE(WaitFor([&] { return first.Log().find("mylock/") != std::string::npos; }, 10s)) << first.Log();
  ChildProcess second(base, dir.path() / "second.log");
  // The second contender stays blocked while the first holds the lock (2 lease TTLs).
  EXPECT_FALSE(WaitFor([&] { return second.Log().find("mylock/") != std::string::npos; }, 4s)) << second.Log();
  first.Signal(SIGINT);  // etcdctl releases the lock on SIGINT
  EXPECT_TRUE(WaitFor([&] { return second.Log().find("mylock/") != std::string::npos; }, 10s)) << second.Log();

  // Takeover when the holder dies without releasing: its lease expires, the next one gets it.
  ChildProcess third(base, dir.path() / "third.log");
  EXPECT_FALSE(WaitFor([&] { return third.Log().find("mylock/") != std::string::npos; }, 1s)) << third.Log();
  second.Kill();
  EXPECT_TRUE(WaitFor([&] { return third.Log().find("mylock/") != std::string::npos; }, 10s)) << third.Log();
  third.Signal(SIGINT);
  first.Terminate();
  third.Terminate();
}

TEST_F(LeaseTest, EtcdctlElectHandsOverWhenTheLeaderResigns) {
  TempDir dir;
  const auto elect = [&](const std::string& name) {
    return std::vector<std::string>{"env", "ETCDCTL_API=3", "etcdctl", "--endpoints", Proxy(), "elect", "myelection",
                                    name};
  };
  ChildProcess one(elect("one"), dir.path() / "one.log");
  ASSERT_TRUE(WaitFor([&] { return one.Log().find("one") != std::string::npos; }, 10s)) << one.Log();
  ChildProcess two(elect("two"), dir.path() / "two.log");
  EXPECT_FALSE(WaitFor([&] { return two.Log().find("two") != std::string::npos; }, 3s)) << two.Log();
  one.Signal(SIGINT);  // etcdctl closes its session (revokes its lease) on SIGINT
  EXPECT_TRUE(WaitFor([&] { return two.Log().find("two") != std::string::npos; }, 10s)) << two.Log();
  two.Signal(SIGINT);
  one.Terminate();
  two.Terminate();
}

TEST_F(LeaseTest, KeepAlivesContinueWhileAShardIsDownAndResumeWhenItReturns) {
  const std::string id = Grant(3);
  const std::vector<std::string> keys = {"as", "js", "zs"};
  PutAll(keys, id);
  KeepAliveLoop loop(Proxy(), ParseHex(id), 500ms);
  setup_->shard(1).KillMember(0);
  // 2 TTLs with shard 1 down: the keys on the living shards stay.
  const auto until = std::chrono::steady_clock::now() + 6s;
  while (std::chrono::steady_clock::now() < until) {
    ASSERT_TRUE(KeyExists(ShardAddress(0), "as"));
    ASSERT_TRUE(KeyExists(ShardAddress(2), "zs"));
  }
  RestartShard(1);
  // After it returns, keep-alives reach it again: its key outlives 2 TTLs more.
  const auto until2 = std::chrono::steady_clock::now() + 6s;
  while (std::chrono::steady_clock::now() < until2) {
    ASSERT_TRUE(KeyExists(Proxy(), "as"));
    ASSERT_TRUE(KeyExists(Proxy(), "zs"));
  }
  EXPECT_TRUE(KeyExists(ShardAddress(1), "js"));
  EXPECT_FALSE(loop.failed());
  loop.Stop();
  EXPECT_EQ(Etcdctl(Proxy(), "lease revoke " + id).exit_code, 0);
  EXPECT_EQ(CountKeys(Proxy(), keys), 0);
}

TEST_F(LeaseTest, GrantWhileAShardIsDownThenKeysOnTheRecoveredShard) {
  setup_->shard(2).KillMember(0);
  const std::string id = Grant(30);
  ASSERT_EQ(Etcdctl(Proxy(), "put ag 1 --lease=" + id).output, "OK\n");
  ASSERT_EQ(Etcdctl(Proxy(), "put jg 1 --lease=" + id).output, "OK\n");
  const auto down = Etcdctl(Proxy(), "put zg 1 --lease=" + id);
  EXPECT_NE(down.exit_code, 0) << down.output;
  RestartShard(2);
  // No client action needed: the lease reaches the recovered shard, for a Txn (as Kubernetes
  // writes Events and etcdctl lock its key) as for a Put.
  const std::string txn = "sh -c 'printf \"\\nput zt 1 --lease=" + id +
                          "\\n\\n\\n\" | env ETCDCTL_API=3 etcdctl --endpoints " + Proxy() + " txn'";
  EXPECT_TRUE(WaitFor([&] { return RunCommand(txn).output == "SUCCESS\n\nOK\n"; }, 10s)) << RunCommand(txn).output;
  EXPECT_TRUE(WaitFor([&] { return Etcdctl(Proxy(), "put zg 1 --lease=" + id).output == "OK\n"; }, 10s));
  const auto ttl = Etcdctl(ShardAddress(2), "lease timetolive " + id).output;
  EXPECT_NE(ttl.find("remaining"), std::string::npos) << ttl;
  EXPECT_NE(Etcdctl(Proxy(), "lease timetolive " + id + " --keys").output.find("attached keys([ag jg zg zt])"),
            std::string::npos);
  EXPECT_EQ(Etcdctl(Proxy(), "lease revoke " + id).exit_code, 0);
  EXPECT_EQ(CountKeys(Proxy(), {"ag", "jg", "zg", "zt"}), 0);
}

TEST_F(LeaseTest, HungShardDoesNotStopLeasesOnTheOthers) {
  setup_->shard(1).PauseMember(0);  // SIGSTOP: connections hang instead of being refused
  const auto started = std::chrono::steady_clock::now();
  const std::string id = Grant(3);
  const auto grant_time = std::chrono::steady_clock::now() - started;
  EXPECT_LT(grant_time, 4s);
  ASSERT_EQ(Etcdctl(Proxy(), "put ah 1 --lease=" + id).output, "OK\n");
  ASSERT_EQ(Etcdctl(Proxy(), "put zh 1 --lease=" + id).output, "OK\n");
  {
    KeepAliveLoop loop(Proxy(), ParseHex(id), 500ms);
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < until) {
      ASSERT_TRUE(KeyExists(ShardAddress(0), "ah"));
      ASSERT_TRUE(KeyExists(ShardAddress(2), "zh"));
    }
    EXPECT_FALSE(loop.failed());
    setup_->shard(1).ResumeMember(0);
    EXPECT_TRUE(WaitFor([&] { return Etcdctl(Proxy(), "put jh 1 --lease=" + id).output == "OK\n"; }, 10s));
  }
  EXPECT_EQ(Etcdctl(Proxy(), "lease revoke " + id).exit_code, 0);
  EXPECT_EQ(CountKeys(Proxy(), {"ah", "jh", "zh"}), 0);
}

TEST_F(LeaseTest, EtcdctlKeepAliveKeepsTheLeaseUntilItStops) {
  const std::string id = Grant(2);
  PutAll({"ac", "jc", "zc"}, id);
  TempDir dir;
  ChildProcess keepalive({"env", "ETCDCTL_API=3", "etcdctl", "--endpoints", Proxy(), "lease", "keep-alive", id},
                         dir.path() / "keepalive.log");
  ASSERT_TRUE(WaitFor([&] { return keepalive.Log().find("keepalived with TTL(2)") != std::string::npos; }, 5s))
      << keepalive.Log();
  const auto until = std::chrono::steady_clock::now() + 4s;  // 2 TTLs
  while (std::chrono::steady_clock::now() < until) ASSERT_EQ(CountKeys(Proxy(), {"ac", "jc", "zc"}), 3);
  keepalive.Kill();
  EXPECT_TRUE(WaitFor([&] { return CountKeys(Proxy(), {"ac", "jc", "zc"}) == 0; }, 10s));
}

TEST_F(LeaseTest, RevokeWhileAShardIsDownLeavesNoTraceOnceItIsBack) {
  const std::string id = Grant(60);
  PutAll({"ar", "jr", "zr"}, id);
  setup_->shard(1).KillMember(0);
  const auto revoked = Etcdctl(Proxy(), "lease revoke " + id);
  EXPECT_EQ(revoked.exit_code, 0) << revoked.output;
  EXPECT_FALSE(KeyExists(Proxy(), "ar"));
  EXPECT_FALSE(KeyExists(Proxy(), "zr"));
  RestartShard(1);
  EXPECT_TRUE(WaitFor([&] { return !KeyExists(ShardAddress(1), "jr"); }, 10s));
  EXPECT_EQ(Etcdctl(ShardAddress(1), "lease list").output.find(id), std::string::npos);
}

}  // namespace
}  // namespace esp::test
