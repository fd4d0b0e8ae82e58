// Leases with two proxies in front of the same three shards, and shards that are down, hung or
// late: what one proxy did must be repaired by the other without shared state, ids must not
// collide, and a lease must expire on time on every shard.
#include <grpcpp/client_context.h>
#include <gtest/gtest.h>

#include <csignal>
#include <cstdio>
#include <future>
#include <memory>
#include <set>
#include <thread>

#include "support/fixtures.h"

namespace esp::test {
namespace {

using namespace std::chrono_literals;
using etcdserverpb::LeaseGrantRequest;
using etcdserverpb::LeaseGrantResponse;
using etcdserverpb::LeaseKeepAliveRequest;
using etcdserverpb::LeaseKeepAliveResponse;
using etcdserverpb::LeaseRevokeRequest;
using etcdserverpb::LeaseRevokeResponse;
using etcdserverpb::LeaseTimeToLiveRequest;
using etcdserverpb::LeaseTimeToLiveResponse;

class LeaseMultiProxyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { setup_ = std::make_unique<ShardedSetup>(); }
  static void TearDownTestSuite() {
    setup_.reset();
  }

  // A second proxy per test (some tests kill it), and every shard running.
  void SetUp() override {
    for (std::size_t i = 0; i < 3; ++i) {
      if (setup_->shard(i).member(0).process->running()) {
        setup_->shard(i).ResumeMember(0);
      } else {
        RestartShard(i);
      }
    }
    const std::vector<std::pair<std::string, std::string>> bounds = {{"", "i"}, {"i", "s"}, {"s", ""}};
    std::vector<ShardSpec> specs;
    for (std::size_t i = 0; i < 3; ++i) specs.push_back({bounds[i].first, bounds[i].second, setup_->shard(i).ClientAddresses()});
    other_ = std::make_unique<ProxyProcess>(specs);
    other_->Start();
  }

  static std::string B() { return setup_->proxy().address(); }
  std::string A() const { return other_->address(); }
  static std::string Shard(std::size_t i) { return setup_->shard(i).member(0).client_address(); }
  static void RestartShard(std::size_t i) {
    setup_->shard(i).StartMember(0);
    setup_->shard(i).WaitReady();
  }

  static grpc::Status Grant(const std::string& address, int64_t ttl, int64_t id, LeaseGrantResponse* response) {
    LeaseGrantRequest request;
    request.set_ttl(ttl);
    request.set_id(id);
    return etcdserverpb::Lease::NewStub(Connect(address))->LeaseGrant(Ctx().get(), request, response);
  }
  static int64_t Grant(const std::string& address, int64_t ttl) {
    LeaseGrantResponse response;
    const auto status = Grant(address, ttl, 0, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.id();
  }
  static grpc::Status Revoke(const std::string& address, int64_t id) {
    LeaseRevokeRequest request;
    request.set_id(id);
    LeaseRevokeResponse response;
    return etcdserverpb::Lease::NewStub(Connect(address))->LeaseRevoke(Ctx().get(), request, &response);
  }
  static LeaseTimeToLiveResponse TimeToLive(const std::string& address, int64_t id, bool keys = false) {
    LeaseTimeToLiveRequest request;
    request.set_id(id);
    request.set_keys(keys);
    LeaseTimeToLiveResponse response;
    const auto status = etcdserverpb::Lease::NewStub(Connect(address))->LeaseTimeToLive(Ctx().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }
  static grpc::Status Put(const std::string& address, const std::string& key, int64_t lease) {
    etcdserverpb::PutRequest request;
    request.set_key(key);
    request.set_value("1");
    request.set_lease(lease);
    etcdserverpb::PutResponse response;
    return etcdserverpb::KV::NewStub(Connect(address))->Put(Ctx().get(), request, &response);
  }
  static bool KeyExists(const std::string& address, const std::string& key) {
    etcdserverpb::RangeRequest request;
    request.set_key(key);
    etcdserverpb::RangeResponse response;
    const auto status = etcdserverpb::KV::NewStub(Connect(address))->Range(Ctx().get(), request, &response);
    return status.ok() && response.kvs_size() == 1;
  }
  static std::vector<std::string> Keys(const LeaseTimeToLiveResponse& response) {
    return {response.keys().begin(), response.keys().end()};
  }

  static std::unique_ptr<ShardedSetup> setup_;
  std::unique_ptr<ProxyProcess> other_;
};
std::unique_ptr<ShardedSetup> LeaseMultiProxyTest::setup_;

// One keep-alive on a fresh stream; the answer's TTL, or -1 if the stream failed.
int64_t KeepAliveOnce(const std::string& address, int64_t id, const std::string& token = "") {
  auto stub = etcdserverpb::Lease::NewStub(Connect(address));
  auto ctx = Ctx();
  if (!token.empty()) ctx->AddMetadata("token", token);
  auto stream = stub->LeaseKeepAlive(ctx.get());
  LeaseKeepAliveRequest request;
  request.set_id(id);
  LeaseKeepAliveResponse response;
  if (!stream->Write(request) || !stream->Read(&response)) return -1;
  stream->WritesDone();
  ctx->TryCancel();
  return response.ttl();
}

TEST_F(LeaseMultiProxyTest, GrantedThroughOneProxyWhileAShardWasDownWorksThereThroughAnother) {
  setup_->shard(2).KillMember(0);
  const int64_t id = Grant(A(), 30);
  ASSERT_TRUE(Put(A(), "ag", id).ok());
  // Proxy A, which remembers the pending grant for shard 2, is gone before shard 2 returns.
  other_->process().Kill();
  RestartShard(2);
  // Proxy B never saw the grant: it finds the lease on the other shards and grants it on shard 2.
  grpc::Status put;
  EXPECT_TRUE(WaitFor([&] { return (put = Put(B(), "zg", id)).ok(); }, 10s)) << put.error_message();
  const auto on_shard = TimeToLive(Shard(2), id);
  EXPECT_GT(on_shard.ttl(), 0);
  EXPECT_LE(on_shard.grantedttl(), 30);  // the remaining TTL, never more than granted
  EXPECT_EQ(Keys(TimeToLive(B(), id, true)), (std::vector<std::string>{"ag", "zg"}));
  EXPECT_TRUE(Revoke(B(), id).ok());
  EXPECT_FALSE(KeyExists(B(), "ag"));
  EXPECT_FALSE(KeyExists(B(), "zg"));
}

TEST_F(LeaseMultiProxyTest, RevokedWhileAShardWasDownIsDroppedThereByAnotherProxy) {
  const int64_t id = Grant(B(), 60);
  for (const char* key : {"aq", "jq", "zq"}) ASSERT_TRUE(Put(B(), key, id).ok()) << key;
  setup_->shard(1).KillMember(0);
  ASSERT_TRUE(Revoke(A(), id).ok());  // two of three shards revoked: done
  other_->process().Kill();           // and its pending revoke for shard 1 with it
  RestartShard(1);
  ASSERT_GT(TimeToLive(Shard(1), id).ttl(), 0);  // the leftover, with its key
  ASSERT_TRUE(KeyExists(Shard(1), "jq"));
  // Proxy B: a keep-alive answers as etcd does for a revoked lease, and removes the leftover.
  EXPECT_EQ(KeepAliveOnce(B(), id), 0);
  EXPECT_TRUE(WaitFor([&] { return !KeyExists(Shard(1), "jq"); }, 5s));
  EXPECT_EQ(TimeToLive(Shard(1), id).ttl(), -1);
  const auto put = Put(B(), "jq", id);
  EXPECT_EQ(put.error_message(), "etcdserver: requested lease not found");
}

TEST_F(LeaseMultiProxyTest, PutWithALeaseRevokedWhileTheShardWasDownIsRefused) {
  const int64_t id = Grant(B(), 60);
  ASSERT_TRUE(Put(B(), "jp", id).ok());
  setup_->shard(1).KillMember(0);
  ASSERT_TRUE(Revoke(A(), id).ok());
  other_->process().Kill();
  RestartShard(1);
  // Shard 0 says "not found"; of the others only shard 1 holds it: revoked, not re-granted.
  const auto put = Put(B(), "ap", id);
  EXPECT_EQ(put.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(put.error_message(), "etcdserver: requested lease not found");
  EXPECT_EQ(TimeToLive(Shard(0), id).ttl(), -1);
  EXPECT_TRUE(WaitFor([&] { return TimeToLive(Shard(1), id).ttl() == -1; }, 5s));  // leftover dropped
}

TEST_F(LeaseMultiProxyTest, TimeToLiveOfALeaseRevokedWhileAShardWasDownIsMinusOne) {
  const int64_t id = Grant(B(), 60);
  ASSERT_TRUE(Put(B(), "jv", id).ok());
  setup_->shard(1).KillMember(0);
  ASSERT_TRUE(Revoke(A(), id).ok());
  other_->process().Kill();
  RestartShard(1);
  ASSERT_GT(TimeToLive(Shard(1), id).ttl(), 0);
  // As etcd answers for a revoked lease, keys or not; the leftover and its key are removed.
  const auto ttl = TimeToLive(B(), id, true);
  EXPECT_EQ(ttl.ttl(), -1);
  EXPECT_TRUE(Keys(ttl).empty());
  EXPECT_TRUE(WaitFor([&] { return !KeyExists(Shard(1), "jv"); }, 5s));
}

TEST_F(LeaseMultiProxyTest, ConcurrentGrantsThroughTwoProxiesNeverCollide) {
  constexpr int kPerThread = 250;  // 2 threads per proxy: 1000 leases
  const auto started = std::chrono::steady_clock::now();
  std::vector<std::future<std::vector<int64_t>>> workers;
  for (const std::string& address : {A(), A(), B(), B()}) {
    workers.push_back(std::async(std::launch::async, [address] {
      auto stub = etcdserverpb::Lease::NewStub(Connect(address));
      std::vector<int64_t> ids;
      for (int i = 0; i < kPerThread; ++i) {
        LeaseGrantRequest request;
        request.set_ttl(30);
        LeaseGrantResponse response;
        if (!stub->LeaseGrant(Ctx().get(), request, &response).ok()) break;
        ids.push_back(response.id());
      }
      return ids;
    }));
  }
  std::set<int64_t> unique;
  std::size_t total = 0;
  for (auto& w : workers) {
    for (int64_t id : w.get()) {
      EXPECT_GT(id, 0);
      unique.insert(id);
      ++total;
    }
  }
  const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
  std::printf("1000 grants through 2 proxies x 2 clients over 3 shards: %lld ms\n", static_cast<long long>(elapsed.count()));
  EXPECT_EQ(total, 4u * kPerThread);
  EXPECT_EQ(unique.size(), total);
  // Every one of them is on every shard.
  for (std::size_t shard = 0; shard < 3; ++shard) {
    etcdserverpb::LeaseLeasesResponse listed;
    ASSERT_TRUE(etcdserverpb::Lease::NewStub(Connect(Shard(shard)))
                    ->LeaseLeases(Ctx().get(), etcdserverpb::LeaseLeasesRequest(), &listed)
                    .ok());
    std::set<int64_t> on_shard;
    for (const auto& lease : listed.leases()) on_shard.insert(lease.id());
    EXPECT_TRUE(std::includes(on_shard.begin(), on_shard.end(), unique.begin(), unique.end())) << shard;
  }
}

TEST_F(LeaseMultiProxyTest, ClientChosenIdThatExistsGetsEtcdsErrorThroughEitherProxy) {
  LeaseGrantResponse response;
  ASSERT_TRUE(Grant(A(), 30, 0x5eed1d, &response).ok());
  for (const std::string& address : {A(), B()}) {
    const auto status = Grant(address, 30, 0x5eed1d, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << address;
    EXPECT_EQ(status.error_message(), "etcdserver: lease already exists") << address;
  }
  // The refused grants undid nothing: the lease is still on every shard.
  for (std::size_t shard = 0; shard < 3; ++shard) EXPECT_GT(TimeToLive(Shard(shard), 0x5eed1d).ttl(), 0) << shard;
  EXPECT_TRUE(Revoke(B(), 0x5eed1d).ok());
}

TEST_F(LeaseMultiProxyTest, WithAShardDownReadsAnswerFromTheOthersAndUnknownRevokeIsNotFound) {
  const int64_t id = Grant(B(), 30);
  for (const char* key : {"at", "jt", "zt"}) ASSERT_TRUE(Put(B(), key, id).ok()) << key;
  setup_->shard(1).KillMember(0);
  // TimeToLive and Leases answer from the shards that are up (Kubernetes never asks either).
  const auto ttl = TimeToLive(B(), id, true);
  EXPECT_GT(ttl.ttl(), 0);
  EXPECT_EQ(ttl.grantedttl(), 30);
  EXPECT_EQ(Keys(ttl), (std::vector<std::string>{"at", "zt"}));  // jt's shard is down
  etcdserverpb::LeaseLeasesResponse listed;
  ASSERT_TRUE(etcdserverpb::Lease::NewStub(Connect(B()))
                  ->LeaseLeases(Ctx().get(), etcdserverpb::LeaseLeasesRequest(), &listed)
                  .ok());
  EXPECT_TRUE(std::any_of(listed.leases().begin(), listed.leases().end(), [&](const auto& l) { return l.id() == id; }));
  EXPECT_EQ(KeepAliveOnce(B(), id), 30);
  // A lease that two of three shards do not know is not there, whatever the third holds.
  const auto unknown = Revoke(B(), 0x0badc0de);
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(unknown.error_message(), "etcdserver: requested lease not found");
  // Two shards down: one shard's word is not enough either way.
  setup_->shard(2).KillMember(0);
  EXPECT_EQ(Revoke(B(), 0x0badc0de).error_code(), grpc::StatusCode::UNAVAILABLE);
  LeaseGrantResponse response;
  EXPECT_EQ(Grant(B(), 30, 0, &response).error_code(), grpc::StatusCode::UNAVAILABLE);
  RestartShard(1);
  RestartShard(2);
  EXPECT_TRUE(Revoke(B(), id).ok());
}

TEST_F(LeaseMultiProxyTest, LeaseExpiresOnTimeOnEveryShardAfterTheLastKeepAlive) {
  const int64_t id = Grant(B(), 2);
  const std::vector<std::string> keys = {"ax", "jx", "zx"};
  for (const auto& key : keys) ASSERT_TRUE(Put(B(), key, id).ok()) << key;
  auto stub = etcdserverpb::Lease::NewStub(Connect(B()));
  auto ctx = Ctx();
  auto stream = stub->LeaseKeepAlive(ctx.get());
  LeaseKeepAliveRequest request;
  request.set_id(id);
  LeaseKeepAliveResponse response;
  std::chrono::steady_clock::time_point last_answer;
  for (int i = 0; i < 4; ++i) {  // 2 s of keep-alives at a client's pace (TTL/4)
    ASSERT_TRUE(stream->Write(request) && stream->Read(&response));
    last_answer = std::chrono::steady_clock::now();
    ASSERT_EQ(response.ttl(), 2);
    if (i < 3) std::this_thread::sleep_for(500ms);  // the client's pace, not synchronisation
  }
  stream->WritesDone();
  ctx->TryCancel();
  const auto gone_everywhere = [&] {
    for (std::size_t shard = 0; shard < 3; ++shard) {
      if (KeyExists(Shard(shard), keys[shard])) return false;
    }
    return true;
  };
  ASSERT_TRUE(WaitFor(gone_everywhere, 10s, 20ms));
  const auto after = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - last_answer);
  std::printf("TTL 2 s: keys on 3 shards gone %lld ms after the last keep-alive answer\n",
              static_cast<long long>(after.count()));
  EXPECT_GE(after, 1500ms);  // not before the TTL (the renewal came just before the answer)
  EXPECT_LE(after, 3500ms);  // etcd's own granularity (500 ms checks) plus the deletion's raft round
}

TEST_F(LeaseMultiProxyTest, KeepAliveWithAClientTokenIsServed) {
  const int64_t id = Grant(B(), 30);
  // The shared upstream streams carry no client metadata; a token must not get in the way.
  EXPECT_EQ(KeepAliveOnce(B(), id, "some-client-token"), 30);
  EXPECT_EQ(KeepAliveOnce(A(), id, "some-client-token"), 30);
  EXPECT_TRUE(Revoke(B(), id).ok());
}

TEST_F(LeaseMultiProxyTest, LeaseThatExpiredOnAHungShardOnlyIsGrantedThereAgain) {
  const int64_t id = Grant(B(), 2);
  for (const char* key : {"ay", "jy", "zy"}) ASSERT_TRUE(Put(B(), key, id).ok()) << key;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> last_ttl{-1};
  std::thread keepalive([&] {
    auto stub = etcdserverpb::Lease::NewStub(Connect(B()));
    grpc::ClientContext ctx;
    auto stream = stub->LeaseKeepAlive(&ctx);
    LeaseKeepAliveRequest request;
    request.set_id(id);
    LeaseKeepAliveResponse response;
    while (!stop && stream->Write(request) && stream->Read(&response)) {
      last_ttl = response.ttl();
      std::this_thread::sleep_for(300ms);  // the client's pace
    }
    ctx.TryCancel();
  });
  setup_->shard(1).PauseMember(0);  // longer than the TTL: the lease expires there on resume
  std::this_thread::sleep_for(4s);  // the outage itself, not synchronisation
  setup_->shard(1).ResumeMember(0);
  // The lease expired on shard 1 (its key went with it, as on any etcd that lost the lease);
  // keep-alives find it on the two others and grant it on shard 1 again.
  EXPECT_TRUE(WaitFor([&] { return !KeyExists(Shard(1), "jy"); }, 5s));
  EXPECT_TRUE(WaitFor([&] { return TimeToLive(Shard(1), id).ttl() >= 0; }, 5s));
  EXPECT_EQ(TimeToLive(Shard(1), id).grantedttl(), 2);  // granted right after a renewal: the full TTL
  EXPECT_TRUE(Put(B(), "jy", id).ok());
  EXPECT_TRUE(KeyExists(Shard(0), "ay"));
  EXPECT_TRUE(KeyExists(Shard(2), "zy"));
  EXPECT_EQ(last_ttl.load(), 2);
  stop = true;
  keepalive.join();
  EXPECT_TRUE(Revoke(B(), id).ok());
}

TEST_F(LeaseMultiProxyTest, EtcdctlLockContendersOnDifferentProxies) {
  TempDir dir;
  const auto lock = [](const std::string& address) {
    return std::vector<std::string>{"env", "ETCDCTL_API=3", "etcdctl", "--endpoints", address, "lock", "--ttl", "2",
                                    "xlock"};
  };
  ChildProcess first(lock(A()), dir.path() / "first.log");
  ASSERT_TRUE(WaitFor([&] { return first.Log().find("xlock/") != std::string::npos; }, 10s)) << first.Log();
  ChildProcess second(lock(B()), dir.path() / "second.log");
  // Kept alive through proxy A, the holder's lease stays on every shard for 2 TTLs.
  EXPECT_FALSE(WaitFor([&] { return second.Log().find("xlock/") != std::string::npos; }, 4s)) << second.Log();
  first.Kill();  // dies holding the lock: its lease expires, on every shard, and B's client takes over
  EXPECT_TRUE(WaitFor([&] { return second.Log().find("xlock/") != std::string::npos; }, 10s)) << second.Log();
  second.Signal(SIGINT);
  second.Terminate();
}

}  // namespace
}  // namespace esp::test
