// Auth across three real etcd shards through the proxy: etcdctl's user/role/auth commands, a
// read-only role spanning shards 0 and 1, root, composite tokens accepted by a second proxy,
// wrong passwords, forged and expired tokens, watch and lease with auth on, the consistency
// check and repeating a change after a part-way failure.
#include <grpcpp/client_context.h>
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <thread>

#include "support/fixtures.h"
#include "support/watch_client.h"

namespace esp::test {
namespace {

using namespace std::chrono_literals;

// Shard boundaries of ShardedSetup: ["", "i"), ["i", "s"), ["s", "").
constexpr const char* kRoot = "root:rootpw";
constexpr const char* kReader = "alice:alicepw";

struct Auth {
  grpc::Status status;
  std::string token;
};

Auth Authenticate(const std::string& address, const std::string& user, const std::string& password) {
  auto stub = etcdserverpb::Auth::NewStub(Connect(address));
  etcdserverpb::AuthenticateRequest request;
  request.set_name(user);
  request.set_password(password);
  etcdserverpb::AuthenticateResponse response;
  auto ctx = Ctx();
  const auto status = stub->Authenticate(ctx.get(), request, &response);
  return {status, response.token()};
}

std::unique_ptr<grpc::ClientContext> TokenCtx(const std::string& token) {
  auto ctx = Ctx();
  ctx->AddMetadata("token", token);
  return ctx;
}

grpc::Status Get(const std::string& address, const std::string& token, const std::string& key,
                 const std::string& range_end = "") {
  auto stub = etcdserverpb::KV::NewStub(Connect(address));
  etcdserverpb::RangeRequest request;
  request.set_key(key);
  request.set_range_end(range_end);
  etcdserverpb::RangeResponse response;
  auto ctx = TokenCtx(token);
  return stub->Range(ctx.get(), request, &response);
}

grpc::Status Put(const std::string& address, const std::string& token, const std::string& key) {
  auto stub = etcdserverpb::KV::NewStub(Connect(address));
  etcdserverpb::PutRequest request;
  request.set_key(key);
  request.set_value("v");
  etcdserverpb::PutResponse response;
  auto ctx = TokenCtx(token);
  return stub->Put(ctx.get(), request, &response);
}

struct HttpResult {
  int code = 0;
  std::string body;
};

HttpResult HttpGet(int port, const std::string& path) {
  const auto result = RunCommand("curl -s -w '\\n%{http_code}' http://127.0.0.1:" + std::to_string(port) + path);
  const auto newline = result.output.rfind('\n');
  if (newline == std::string::npos) return {};
  return {std::atoi(result.output.c_str() + newline + 1), result.output.substr(0, newline)};
}

class AuthTest : public ::testing::Test {
 protected:
  // One set of shards for the suite, with etcd's simple tokens expiring after 2 s unused and
  // bcrypt at its lowest cost (every etcdctl --user authenticates on three shards).
  static void SetUpTestSuite() {
    setup_ = std::make_unique<ShardedSetup>(std::vector<int>{1, 1, 1}, std::vector<std::string>{},
                                            std::vector<std::string>{"--auth-token-ttl", "2", "--bcrypt-cost", "4"});
    for (const char* command : {"user add root:rootpw", "role add reader", "role grant-permission reader read a k",
                                "user add alice:alicepw", "user grant-role alice reader", "auth enable"}) {
      const auto result = Etcdctl(Proxy(), command);
      if (result.exit_code != 0) ADD_FAILURE() << command << ": " << result.output;
    }
    // A second proxy in front of the same shards, with the operator listener and credentials.
    std::ofstream(secrets_.path() / "root.password") << "rootpw\n";
    // The proxy refuses a password file other users may read.
    std::filesystem::permissions(secrets_.path() / "root.password", std::filesystem::perms::owner_read);
    metrics_port_ = FreePort();
    second_ = std::make_unique<ProxyProcess>(
        Specs(), std::vector<std::string>{"--listen-metrics-addr", "127.0.0.1:" + std::to_string(metrics_port_)});
    std::ofstream(second_->config_path(), std::ios::app)
        << "credentials: {user: root, password_file: " << (secrets_.path() / "root.password").string() << "}\n";
    second_->Start();
  }
  static void TearDownTestSuite() {
    second_.reset();
    setup_.reset();
  }

  static std::vector<ShardSpec> Specs() {
    std::vector<ShardSpec> specs;
    const std::vector<std::pair<std::string, std::string>> bounds = {{"", "i"}, {"i", "s"}, {"s", ""}};
    for (std::size_t i = 0; i < 3; ++i) {
      specs.push_back({bounds[i].first, bounds[i].second, setup_->shard(i).ClientAddresses()});
    }
    return specs;
  }
  static std::string Proxy() { return setup_->proxy().address(); }
  static std::string Second() { return second_->address(); }
  static std::string ShardAddress(std::size_t i) { return setup_->shard(i).member(0).client_address(); }
  static CommandResult As(const std::string& user, const std::string& args, const std::string& address = "") {
    return Etcdctl(address.empty() ? Proxy() : address, "--user " + user + " " + args);
  }

  static std::unique_ptr<ShardedSetup> setup_;
  static std::unique_ptr<ProxyProcess> second_;
  static TempDir secrets_;
  static int metrics_port_;
};

std::unique_ptr<ShardedSetup> AuthTest::setup_;
std::unique_ptr<ProxyProcess> AuthTest::second_;
TempDir AuthTest::secrets_;
int AuthTest::metrics_port_ = 0;

TEST_F(AuthTest, ManagementThroughTheProxyReachesEveryShard) {
  for (std::size_t i = 0; i < 3; ++i) {
    const auto user = As(kRoot, "user get alice", ShardAddress(i));
    EXPECT_NE(user.output.find("Roles: reader"), std::string::npos) << i << ": " << user.output;
    const auto role = As(kRoot, "role get reader", ShardAddress(i));
    EXPECT_NE(role.output.find("[a, k)"), std::string::npos) << i << ": " << role.output;
    // Auth is on everywhere: a caller without a user is refused by the shard itself.
    EXPECT_NE(Etcdctl(ShardAddress(i), "user list").exit_code, 0) << i;
  }
  const auto users = As(kRoot, "user list");
  EXPECT_EQ(users.output, "alice\nroot\n");
  const auto roles = As(kRoot, "role list");
  EXPECT_EQ(roles.output, "reader\nroot\n");
  EXPECT_NE(As(kReader, "user list").output.find("etcdserver: permission denied"), std::string::npos);
}

// Tests of this suite share its shards and run in any order: each writes the keys it reads.
TEST_F(AuthTest, ReadOnlyRoleSpanningTwoShards) {
  ASSERT_EQ(As(kRoot, "del a z").exit_code, 0);  // other tests' keys would show in the listings
  ASSERT_EQ(As(kRoot, "put b 1").output, "OK\n");   // shard 0
  ASSERT_EQ(As(kRoot, "put j 2").output, "OK\n");   // shard 1
  ASSERT_EQ(As(kRoot, "put x 3").output, "OK\n");   // shard 2
  EXPECT_EQ(As(kReader, "get b").output, "b\n1\n");
  EXPECT_EQ(As(kReader, "get j").output, "j\n2\n");
  EXPECT_EQ(As(kReader, "get a k").output, "b\n1\nj\n2\n");  // spans shards 0 and 1
  for (const char* denied : {"put b 9", "put j 9", "get x", "get a z", "get \"\" --prefix", "del b"}) {
    const auto result = As(kReader, denied);
    EXPECT_NE(result.exit_code, 0) << denied;
    EXPECT_NE(result.output.find("etcdserver: permission denied"), std::string::npos) << denied << ": " << result.output;
  }
  EXPECT_EQ(As(kRoot, "get a z --keys-only").output, "b\n\nj\n\nx\n\n");
  EXPECT_EQ(As(kRoot, "put x 4").output, "OK\n");
  // Without any user, auth refuses as etcd does.
  EXPECT_NE(Etcdctl(Proxy(), "get b").output.find("etcdserver: user name is empty"), std::string::npos);
}

TEST_F(AuthTest, TokenFromOneProxyWorksOnTheOther) {
  ASSERT_EQ(As(kRoot, "put b 1").output, "OK\n");
  const auto auth = Authenticate(Proxy(), "alice", "alicepw");
  ASSERT_TRUE(auth.status.ok()) << auth.status.error_message();
  EXPECT_TRUE(Get(Second(), auth.token, "b").ok());
  EXPECT_TRUE(Get(Second(), auth.token, "a", "k").ok());
  const auto put = Put(Second(), auth.token, "b");
  EXPECT_EQ(put.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(put.error_message(), "etcdserver: permission denied");
  EXPECT_EQ(As(kReader, "get b", Second()).output, "b\n1\n");
}

TEST_F(AuthTest, WrongPasswordGetsEtcdsError) {
  const auto auth = Authenticate(Proxy(), "alice", "wrong");
  EXPECT_EQ(auth.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(auth.status.error_message(), "etcdserver: authentication failed, invalid user ID or password");
  EXPECT_NE(As("alice:wrong", "get b").output.find("authentication failed, invalid user ID or password"),
            std::string::npos);
}

TEST_F(AuthTest, ForgedTokensAreInvalidAuthTokens) {
  const auto auth = Authenticate(Proxy(), "root", "rootpw");
  ASSERT_TRUE(auth.status.ok());
  std::string garbled = auth.token;
  garbled[garbled.size() / 2] = garbled[garbled.size() / 2] == 'A' ? 'B' : 'A';
  for (const std::string& forged : {std::string("esp1.!!not-base64"), std::string("esp1.AAAA"),
                                    std::string("made-up"), garbled}) {
    const auto status = Get(Proxy(), forged, "b", "z");
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << forged;
    EXPECT_EQ(status.error_message(), "etcdserver: invalid auth token") << forged;
  }
  EXPECT_TRUE(Get(Proxy(), auth.token, "b", "z").ok());
}

// etcd's simple tokens expire after --auth-token-ttl (2 s here) without use, each shard's on its
// own. Expiry is the passage of time, and probing a token refreshes it, so this test paces itself.
TEST_F(AuthTest, ExpiredShardTokenIsAnInvalidAuthTokenAndReauthWorks) {
  ASSERT_EQ(As(kRoot, "put j 2").output, "OK\n");
  const auto auth = Authenticate(Proxy(), "alice", "alicepw");
  ASSERT_TRUE(auth.status.ok());
  // Keep shard 0's token in use while shard 1's idles past etcd's TTL. Looking at shard 1's
  // token renews it, so each look comes after another idle period: on a starved machine etcd's
  // once-a-second expiry tick may come late, and a later round still sees it.
  grpc::Status expired;
  for (int round = 0; round < 4 && expired.ok(); ++round) {
    const auto until = std::chrono::steady_clock::now() + 3s;
    while (std::chrono::steady_clock::now() < until) {
      ASSERT_TRUE(Get(Proxy(), auth.token, "b").ok());
      std::this_thread::sleep_for(250ms);
    }
    expired = Get(Proxy(), auth.token, "j");
  }
  EXPECT_EQ(expired.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(expired.error_message(), "etcdserver: invalid auth token");
  EXPECT_TRUE(Get(Proxy(), auth.token, "b").ok());
  const auto again = Authenticate(Proxy(), "alice", "alicepw");
  ASSERT_TRUE(again.status.ok());
  EXPECT_TRUE(Get(Proxy(), again.token, "a", "k").ok());
  // etcdctl authenticates per command: it keeps working across expiries.
  EXPECT_EQ(As(kReader, "get j").output, "j\n2\n");
}

TEST_F(AuthTest, WatchAndLeaseWithAuthOn) {
  const auto auth = Authenticate(Proxy(), "alice", "alicepw");
  ASSERT_TRUE(auth.status.ok());
  {
    WatchClient watch(Proxy(), auth.token);
    watch.Create("a", "k");  // permitted, spans shards 0 and 1
    WatchResponse response = watch.Expect();
    EXPECT_TRUE(response.created());
    EXPECT_FALSE(response.canceled()) << response.cancel_reason();
    const auto allowed_id = response.watch_id();
    watch.Create("x", "");  // shard 2: denied
    response = watch.Expect();
    EXPECT_TRUE(response.canceled());
    EXPECT_NE(response.cancel_reason().find("etcdserver: permission denied"), std::string::npos)
        << response.cancel_reason();
    watch.Create("a", "z");  // spans shards 0 to 2; denied on shard 2, so denied
    response = watch.Expect();
    EXPECT_TRUE(response.created());
    EXPECT_TRUE(response.canceled());
    EXPECT_NE(response.cancel_reason().find("etcdserver: permission denied"), std::string::npos)
        << response.cancel_reason();
    ASSERT_EQ(As(kRoot, "put j 5").output, "OK\n");
    response = watch.Expect();
    EXPECT_EQ(response.watch_id(), allowed_id);
    ASSERT_EQ(response.events_size(), 1);
    EXPECT_EQ(response.events(0).kv().key(), "j");
  }

  // Leases: grant, attach on two shards, keep alive (the proxy's keep-alive hub), revoke.
  const auto grant = As(kRoot, "lease grant 30");
  std::smatch match;
  ASSERT_TRUE(std::regex_search(grant.output, match, std::regex("lease ([0-9a-f]+) granted"))) << grant.output;
  const std::string id = match[1];
  ASSERT_EQ(As(kRoot, "put b 7 --lease=" + id).output, "OK\n");
  ASSERT_EQ(As(kRoot, "put x 7 --lease=" + id).output, "OK\n");
  EXPECT_NE(As(kRoot, "lease keep-alive --once " + id).output.find("keepalived with TTL"), std::string::npos);
  // alice may not revoke a lease with keys she cannot write (etcd's rule, on every shard).
  const auto denied = As(kReader, "lease revoke " + id);
  EXPECT_NE(denied.output.find("permission denied"), std::string::npos) << denied.output;
  EXPECT_EQ(As(kRoot, "lease revoke " + id).output, "lease " + id + " revoked\n");
  EXPECT_EQ(As(kRoot, "get b").output, "");
  EXPECT_EQ(As(kRoot, "get x").output, "");
}

TEST_F(AuthTest, ConsistencyCheckNamesADifferenceMadeOnOneShard) {
  // The start-up check of the proxy with credentials, in its log.
  EXPECT_TRUE(WaitFor([] { return second_->process().Log().find("auth consistency: users, roles and auth status agree") !=
                                  std::string::npos; },
                      10s))
      << second_->process().Log();
  auto ok = HttpGet(metrics_port_, "/auth/consistency");
  EXPECT_EQ(ok.code, 200) << ok.body;
  EXPECT_NE(ok.body.find("\"consistent\":true"), std::string::npos) << ok.body;

  ASSERT_EQ(As(kRoot, "role add extra", ShardAddress(2)).exit_code, 0);
  ASSERT_EQ(As(kRoot, "user grant-role alice extra", ShardAddress(2)).exit_code, 0);
  // The endpoint answers from a check at most 5 s old (and starts a new one when asked later). A
  // check may fall between the two changes above and count one difference: wait for both.
  HttpResult check;
  EXPECT_TRUE(WaitFor(
      [&] {
        check = HttpGet(metrics_port_, "/auth/consistency");
        return check.code == 409 && check.body.find("\"differences\":2") != std::string::npos;
      },
      15s, 500ms))
      << check.body;
  // Counts only: user and role names and permission ranges are the log's, not every caller's.
  EXPECT_NE(check.body.find("\"differences\":2"), std::string::npos) << check.body;
  EXPECT_EQ(check.body.find("extra"), std::string::npos) << check.body;
  EXPECT_EQ(check.body.find("alice"), std::string::npos) << check.body;
  const std::string log = second_->process().Log();
  EXPECT_NE(log.find("role \"extra\" differs: [shard-0, shard-1] missing; [shard-2] permissions []"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("user \"alice\" differs"), std::string::npos) << log;
  // Reads through the proxy refuse to pick one shard's answer.
  const auto roles = As(kRoot, "role list");
  EXPECT_NE(roles.exit_code, 0);
  EXPECT_NE(roles.output.find("shard-2"), std::string::npos) << roles.output;

  // Repair through the proxy: deleting on every shard is safe where it is already gone.
  EXPECT_EQ(As(kRoot, "user revoke-role alice extra").exit_code, 0);
  EXPECT_EQ(As(kRoot, "role delete extra").exit_code, 0);
  EXPECT_TRUE(WaitFor([] { return HttpGet(metrics_port_, "/auth/consistency").code == 200; }, 15s, 500ms));
  EXPECT_EQ(As(kRoot, "role list").output, "reader\nroot\n");
}

// A UserAdd that reached only some shards (simulated by adding directly on one) is completed by
// repeating it through the proxy; a real duplicate still gets etcd's error.
TEST_F(AuthTest, RepeatingAPartWayChangeCompletesIt) {
  ASSERT_EQ(As(kRoot, "user add bob:bobpw", ShardAddress(1)).exit_code, 0);
  EXPECT_NE(As(kRoot, "user get bob").exit_code, 0);
  const auto add = As(kRoot, "user add bob:bobpw");
  EXPECT_EQ(add.exit_code, 0) << add.output;
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(As(kRoot, "user get bob", ShardAddress(i)).exit_code, 0) << i;
  const auto again = As(kRoot, "user add bob:bobpw");
  EXPECT_NE(again.output.find("etcdserver: user name already exists"), std::string::npos) << again.output;
  EXPECT_EQ(As(kRoot, "user delete bob").exit_code, 0);
}

// A shard that is down at Authenticate time has no token in the composite: the others work,
// and once it is back, requests for it get "invalid auth token" until the client re-authenticates.
TEST_F(AuthTest, ShardDownAtAuthenticateIsAnInvalidTokenThereLater) {
  setup_->shard(2).KillMember(0);
  const auto auth = Authenticate(Proxy(), "root", "rootpw");
  ASSERT_TRUE(auth.status.ok()) << auth.status.error_message();
  EXPECT_TRUE(Get(Proxy(), auth.token, "b").ok());
  const auto down = Get(Proxy(), auth.token, "x");
  EXPECT_EQ(down.error_code(), grpc::StatusCode::UNAVAILABLE) << down.error_message();
  setup_->shard(2).StartMember(0);
  // (The fixture's WaitReady reads without a token, which a shard with auth on refuses.)
  grpc::Status later;
  EXPECT_TRUE(WaitFor([&] {
    later = Get(Proxy(), auth.token, "x");
    return later.error_code() != grpc::StatusCode::UNAVAILABLE;
  }, 20s, 100ms));
  EXPECT_EQ(later.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(later.error_message(), "etcdserver: invalid auth token");
  const auto again = Authenticate(Proxy(), "root", "rootpw");
  ASSERT_TRUE(again.status.ok());
  EXPECT_TRUE(Get(Proxy(), again.token, "x").ok());
}

// A revoke that could not reach a shard is completed by the proxy when the shard is back, with
// the proxy's own credentials: with auth on, etcd refuses a revoke without the right to delete
// the lease's keys. Checked well within the lease's TTL, so expiry cannot pass for the revoke.
TEST_F(AuthTest, PendingRevokeUsesTheProxysCredentials) {
  const auto grant = As(kRoot, "lease grant 60", Second());
  std::smatch match;
  ASSERT_TRUE(std::regex_search(grant.output, match, std::regex("lease ([0-9a-f]+) granted"))) << grant.output;
  const std::string id = match[1];
  ASSERT_EQ(As(kRoot, "put b 8 --lease=" + id, Second()).output, "OK\n");
  ASSERT_EQ(As(kRoot, "put x 8 --lease=" + id, Second()).output, "OK\n");
  setup_->shard(2).KillMember(0);
  EXPECT_EQ(As(kRoot, "lease revoke " + id, Second()).output, "lease " + id + " revoked\n");
  EXPECT_EQ(As(kRoot, "get b", Second()).output, "");
  setup_->shard(2).StartMember(0);
  EXPECT_TRUE(WaitFor([] { return As(kRoot, "get x", ShardAddress(2)).output.empty(); }, 20s, 200ms))
      << second_->process().Log();
}

// A long-running etcdctl child (watch, lease keep-alive) whose output is read from its log.
class EtcdctlChild {
 public:
  explicit EtcdctlChild(const std::string& args) {
    process_ = std::make_unique<ChildProcess>(std::vector<std::string>{"sh", "-c", "ETCDCTL_API=3 exec etcdctl " + args},
                                              dir_.path() / "etcdctl.log");
  }
  ~EtcdctlChild() { process_->Terminate(2s); }
  std::string Output() const { return process_->Log(); }
  bool running() { return process_->running(); }

 private:
  TempDir dir_;
  std::unique_ptr<ChildProcess> process_;
};

std::string GrantLease(const std::string& address, int ttl) {
  const auto grant = Etcdctl(address, "--user " + std::string(kRoot) + " lease grant " + std::to_string(ttl));
  std::smatch match;
  return std::regex_search(grant.output, match, std::regex("lease ([0-9a-f]+) granted")) ? match[1].str() : "";
}

int64_t LeaseId(const std::string& hex) { return static_cast<int64_t>(std::stoull(hex, nullptr, 16)); }

// What a shard's own etcd counts of a method it handled (its /metrics on the client port).
double HandledOnShard(const std::string& address, const std::string& method) {
  const auto page = RunCommand("curl -s http://" + address + "/metrics").output;
  std::istringstream in(page);
  std::string line;
  double total = 0;
  while (std::getline(in, line)) {
    if (line.starts_with("grpc_server_handled_total{") && line.find("grpc_method=\"" + method + "\"") != std::string::npos) {
      total += std::stod(line.substr(line.rfind(' ') + 1));
    }
  }
  return total;
}

// A user who may only read (alice) finds a lease with a key on shard 2 and revokes it while shard 2
// is down. etcd refuses her (she may not delete the key); the proxy cannot ask shard 2, and a
// revoke completed there later would run with the proxy's own credentials. So it is refused,
// naming the shard, and the key survives the shard's return (issue #19, 2).
TEST_F(AuthTest, ReadOnlyUserCannotRevokeALeaseWhileAShardIsDown) {
  const std::string lease = GrantLease(Second(), 60);
  ASSERT_FALSE(lease.empty());
  ASSERT_EQ(As(kRoot, "put xd 1 --lease=" + lease, Second()).output, "OK\n");
  const auto alice = Authenticate(Second(), "alice", "alicepw");
  ASSERT_TRUE(alice.status.ok()) << alice.status.error_message();
  setup_->shard(2).KillMember(0);
  auto stub = etcdserverpb::Lease::NewStub(Connect(Second()));
  etcdserverpb::LeaseRevokeRequest request;
  request.set_id(LeaseId(lease));
  etcdserverpb::LeaseRevokeResponse response;
  const auto status = stub->LeaseRevoke(TokenCtx(alice.token).get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_NE(status.error_message().find("\"shard-2\""), std::string::npos) << status.error_message();
  // A lease the shards that answer do not hold is gone by the majority rule: etcd's answer.
  request.set_id(LeaseId(lease) ^ 1);
  const auto unknown = stub->LeaseRevoke(TokenCtx(alice.token).get(), request, &response);
  EXPECT_EQ(unknown.error_message(), "etcdserver: requested lease not found");
  setup_->shard(2).StartMember(0);
  ASSERT_TRUE(WaitFor([] { return As(kRoot, "get xd", ShardAddress(2)).exit_code == 0; }, 20s, 200ms));
  // A keep-alive would repair a split (none is left), and pending revokes are retried every
  // second: three seconds without the key going is the absence of both.
  EXPECT_NE(As(kRoot, "lease keep-alive --once " + lease, Second()).output.find("keepalived with TTL"),
            std::string::npos);
  EXPECT_FALSE(WaitFor([] { return As(kRoot, "get xd", ShardAddress(2)).output.empty(); }, 3s, 250ms))
      << second_->process().Log();
  for (std::size_t i = 0; i < 3; ++i) {
    const auto ttl = As(kRoot, "lease timetolive " + lease, ShardAddress(i)).output;
    EXPECT_NE(ttl.find("remaining("), std::string::npos) << "shard " << i << ": " << ttl;
  }
  // With every shard up she gets etcd's own answer, and root revokes as usual.
  EXPECT_NE(As(kReader, "lease revoke " + lease, Second()).output.find("etcdserver: permission denied"),
            std::string::npos);
  EXPECT_EQ(As(kRoot, "lease revoke " + lease, Second()).output, "lease " + lease + " revoked\n");
  EXPECT_EQ(As(kRoot, "get xd").output, "");
}

// A grant of an existing lease's id while a shard is down fails ("lease already exists") on the
// shards that answer. The proxy used to queue a revoke of that id for the down shard, as the
// cleanup of a grant that might have reached it, and sent it with its own credentials when the
// shard came back: the existing lease and its key there were gone.
TEST_F(AuthTest, GrantingAnExistingIdWhileAShardIsDownLeavesTheLeaseAlone) {
  const std::string lease = GrantLease(Second(), 60);
  ASSERT_FALSE(lease.empty());
  ASSERT_EQ(As(kRoot, "put xg 1 --lease=" + lease, Second()).output, "OK\n");
  const auto alice = Authenticate(Second(), "alice", "alicepw");
  ASSERT_TRUE(alice.status.ok()) << alice.status.error_message();
  setup_->shard(2).KillMember(0);
  auto stub = etcdserverpb::Lease::NewStub(Connect(Second()));
  etcdserverpb::LeaseGrantRequest request;
  request.set_id(LeaseId(lease));
  request.set_ttl(60);
  etcdserverpb::LeaseGrantResponse response;
  const auto status = stub->LeaseGrant(TokenCtx(alice.token).get(), request, &response);
  EXPECT_EQ(status.error_message(), "etcdserver: lease already exists");
  setup_->shard(2).StartMember(0);
  ASSERT_TRUE(WaitFor([] { return As(kRoot, "get xg", ShardAddress(2)).exit_code == 0; }, 20s, 200ms));
  EXPECT_FALSE(WaitFor([] { return As(kRoot, "get xg", ShardAddress(2)).output.empty(); }, 3s, 250ms))
      << second_->process().Log();
  EXPECT_EQ(As(kRoot, "lease revoke " + lease, Second()).output, "lease " + lease + " revoked\n");
  EXPECT_EQ(As(kRoot, "get xg").output, "");
}

// etcd takes the token from `authorization` when there is no `token` (gRPC gateway clients and
// some non-Go clients send it there). The proxy's composite token under that key is translated
// for each shard as under `token`: reads within alice's range on two shards and a spanning one
// work, and a write outside her permission gets etcd's refusal, not "invalid auth token".
TEST_F(AuthTest, TokenUnderAuthorizationIsTranslatedForEveryShard) {
  const auto alice = Authenticate(Proxy(), "alice", "alicepw");
  ASSERT_TRUE(alice.status.ok()) << alice.status.error_message();
  auto kv = etcdserverpb::KV::NewStub(Connect(Proxy()));
  const auto authorized = [&] {
    auto ctx = Ctx();
    ctx->AddMetadata("authorization", alice.token);
    return ctx;
  };
  for (const auto& [key, end] : std::vector<std::pair<std::string, std::string>>{{"b", ""}, {"j", ""}, {"a", "k"}}) {
    etcdserverpb::RangeRequest range;
    range.set_key(key);
    range.set_range_end(end);
    etcdserverpb::RangeResponse response;
    const auto status = kv->Range(authorized().get(), range, &response);
    EXPECT_TRUE(status.ok()) << key << ": " << status.error_message();
  }
  etcdserverpb::PutRequest put;
  put.set_key("b");
  put.set_value("v");
  etcdserverpb::PutResponse put_response;
  const auto denied = kv->Put(authorized().get(), put, &put_response);
  EXPECT_EQ(denied.error_message(), "etcdserver: permission denied");
}

// /auth/consistency reads every user and role of every shard as the proxy's own user. It answers
// from a check at most 5 s old and starts at most one check per 5 s, however often it is asked,
// and /health does not wait for it.
TEST_F(AuthTest, ConsistencyEndpointAnswersFromARecentCheck) {
  ASSERT_TRUE(WaitFor([] { return HttpGet(metrics_port_, "/auth/consistency").code == 200; }, 15s, 500ms));
  const double before = HandledOnShard(ShardAddress(0), "UserList");
  std::chrono::nanoseconds slowest_health{0};
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(HttpGet(metrics_port_, "/auth/consistency").code, 200);
    const auto started = std::chrono::steady_clock::now();
    EXPECT_EQ(HttpGet(metrics_port_, "/health").code, 200);
    slowest_health = std::max(slowest_health, std::chrono::steady_clock::now() - started);
  }
  const double checks = HandledOnShard(ShardAddress(0), "UserList") - before;
  EXPECT_LE(checks, 2) << "20 requests made " << checks << " checks";
  std::cout << "20 GET /auth/consistency: " << checks << " check(s) on the shards; slowest /health "
            << std::chrono::duration_cast<std::chrono::milliseconds>(slowest_health).count() << " ms\n";
}

// Leases split by a shard that was down while a proxy that is gone since granted one lease and
// revoked another: the proxy with credentials repairs both with its own user's token (etcd
// refuses a revoke without the right to delete the lease's keys), and authenticates again when
// that token has expired (2 s unused here).
TEST_F(AuthTest, LeaseRepairsUseTheProxysCredentials) {
  ProxyProcess third(Specs());  // without credentials, and killed before the shard returns
  third.Start();
  const std::string revoked = GrantLease(third.address(), 60);
  ASSERT_FALSE(revoked.empty());
  ASSERT_EQ(As(kRoot, "put br 1 --lease=" + revoked, third.address()).output, "OK\n");
  ASSERT_EQ(As(kRoot, "put jr 1 --lease=" + revoked, third.address()).output, "OK\n");
  setup_->shard(1).KillMember(0);
  const std::string granted = GrantLease(third.address(), 60);
  ASSERT_FALSE(granted.empty());
  ASSERT_EQ(As(kRoot, "put bg 1 --lease=" + granted, third.address()).output, "OK\n");
  EXPECT_EQ(As(kRoot, "lease revoke " + revoked, third.address()).output, "lease " + revoked + " revoked\n");
  third.process().Kill();  // its pending grant and revoke for shard 1 with it
  setup_->shard(1).StartMember(0);
  // Through the proxy with credentials, so that it too has reached shard 1 again.
  ASSERT_TRUE(WaitFor([] { return As(kRoot, "get jr", Second()).output == "jr\n1\n"; }, 20s, 200ms));

  // Shard 1 lacks `granted`: the Put's "lease not found" makes the proxy grant it there.
  EXPECT_EQ(As(kRoot, "put jg 1 --lease=" + granted, Second()).output, "OK\n") << second_->process().Log();
  const auto ttl = As(kRoot, "lease timetolive " + granted, ShardAddress(1)).output;
  EXPECT_NE(ttl.find("remaining("), std::string::npos) << ttl;

  // Expiry of the proxy's token on shard 1 is the passage of time: 2 s unused, then removed at
  // etcd's next once-a-second sweep. Leave it a margin.
  std::this_thread::sleep_for(4s);
  // Shard 1 still holds `revoked`: a keep-alive sees the split and the proxy revokes it there.
  As(kRoot, "lease keep-alive --once " + revoked, Second());
  EXPECT_TRUE(WaitFor([] { return As(kRoot, "get jr", ShardAddress(1)).output.empty(); }, 10s, 200ms))
      << second_->process().Log();
  if (!EtcdServerAtLeast(3, 5)) {
    // etcd 3.5+ checks the token of the health probe's Status every second, which keeps it from
    // expiring; 3.4 never reads it there, so it expired and the repair authenticated again.
    EXPECT_NE(second_->process().Log().find("\"shard-1\" [\"i\", \"s\"): the proxy's own token was refused"),
              std::string::npos)
        << second_->process().Log();
  }
  EXPECT_EQ(As(kRoot, "lease revoke " + granted, Second()).output, "lease " + granted + " revoked\n");
  EXPECT_EQ(As(kRoot, "get bg").output, "");
  EXPECT_EQ(As(kRoot, "get jg").output, "");
}

// etcdctl --user over a run longer than the shards' token TTL (2 s unused, swept once a second):
// a spanning watch and a lease keep-alive keep their streams and keep working, as on one etcd,
// where a token is checked when a stream's request is made, not while it runs.
TEST_F(AuthTest, LongRunningEtcdctlKeepsWorkingAcrossTokenExpiry) {
  const std::string lease = GrantLease(Proxy(), 3);
  ASSERT_FALSE(lease.empty());
  ASSERT_EQ(As(kRoot, "put lw 1 --lease=" + lease).output, "OK\n");
  EtcdctlChild keepalive("--endpoints " + Proxy() + " --user " + kRoot + " lease keep-alive " + lease);
  EtcdctlChild watch("--endpoints " + Proxy() + " --user " + kReader + " watch a k");
  // The watch starts when etcdctl has connected: put a marker until it has seen it.
  ASSERT_TRUE(WaitFor([&] {
    As(kRoot, "put aw marker");
    return watch.Output().find("aw\nmarker\n") != std::string::npos;
  }, 20s, 300ms)) << watch.Output();
  // Past expiry of every token that etcdctl got at its start: twice the TTL plus the sweep.
  std::this_thread::sleep_for(5s);
  ASSERT_EQ(As(kRoot, "put aw later").output, "OK\n");  // shard 0 (keys of their own: other tests count keys)
  ASSERT_EQ(As(kRoot, "put iw later").output, "OK\n");  // shard 1
  EXPECT_TRUE(WaitFor([&] { return watch.Output().find("PUT\niw\nlater\n") != std::string::npos; }, 10s))
      << watch.Output();
  EXPECT_NE(watch.Output().find("PUT\naw\nlater\n"), std::string::npos) << watch.Output();
  EXPECT_TRUE(watch.running()) << watch.Output();
  // The lease (TTL 3 s) outlived its TTL only through the running keep-alive.
  EXPECT_TRUE(keepalive.running()) << keepalive.Output();
  EXPECT_EQ(As(kRoot, "get lw").output, "lw\n1\n") << keepalive.Output();
  EXPECT_NE(keepalive.Output().find("keepalived with TTL(3)"), std::string::npos) << keepalive.Output();
  EXPECT_EQ(As(kReader, "get aw").output, "aw\nlater\n");  // and a new command as the reader
  EXPECT_EQ(As(kRoot, "lease revoke " + lease).output, "lease " + lease + " revoked\n");
  EXPECT_EQ(As(kRoot, "del aw").output, "1\n");
  EXPECT_EQ(As(kRoot, "del iw").output, "1\n");
}

// A LeaseRevoke refused on one shard (2: the lease's only key there is not alice's to write)
// revokes the lease on no shard: the others, which hold none of its keys, would permit it, and
// a lease left on shard 2 alone would read as revoked to the repair, which would then delete the
// key with the proxy's own credentials.
TEST_F(AuthTest, RevokeRefusedOnOneShardRevokesNothing) {
  const std::string lease = GrantLease(Second(), 60);
  ASSERT_FALSE(lease.empty());
  ASSERT_EQ(As(kRoot, "put xr 1 --lease=" + lease, Second()).output, "OK\n");
  const auto denied = As(kReader, "lease revoke " + lease, Second());
  EXPECT_NE(denied.output.find("etcdserver: permission denied"), std::string::npos) << denied.output;
  for (std::size_t i = 0; i < 3; ++i) {
    const auto ttl = As(kRoot, "lease timetolive " + lease, ShardAddress(i)).output;
    EXPECT_NE(ttl.find("remaining("), std::string::npos) << "shard " << i << ": " << ttl;
  }
  // A keep-alive finds no split to repair, and the key stays.
  EXPECT_NE(As(kRoot, "lease keep-alive --once " + lease, Second()).output.find("keepalived with TTL"),
            std::string::npos);
  EXPECT_EQ(As(kRoot, "get xr").output, "xr\n1\n");
  EXPECT_EQ(As(kRoot, "lease revoke " + lease, Second()).output, "lease " + lease + " revoked\n");
  EXPECT_EQ(As(kRoot, "get xr").output, "");
}

// A spanning DeleteRange denied on one shard (2) deletes nothing on any shard, as one etcd
// denies the whole request: the proxy asks every shard before it deletes. The check needs no
// read permission: a write-only user deletes a range spanning shards 0 and 1.
TEST_F(AuthTest, PartlyDeniedSpanningDeleteDeletesNothing) {
  for (const char* command : {"role add writer", "role grant-permission writer write a k", "user add wanda:wpw",
                              "user grant-role wanda writer", "put cd 1", "put id 1", "put ld 1", "put yd 1"}) {
    ASSERT_EQ(As(kRoot, command).exit_code, 0) << command;
  }
  const auto revision = [] {  // shard 0's, where the check is permitted
    std::smatch match;
    const auto out = As(kRoot, "get cd -w fields", ShardAddress(0)).output;
    return std::regex_search(out, match, std::regex("\"Revision\" : ([0-9]+)")) ? std::stol(match[1]) : -1L;
  };
  const long before = revision();
  ASSERT_GT(before, 0);
  const auto del = As("wanda:wpw", "del a z");
  EXPECT_NE(del.output.find("etcdserver: permission denied"), std::string::npos) << del.output;
  EXPECT_EQ(revision(), before);  // the check changed nothing there
  const auto denied_within = As("wanda:wpw", "del id m");  // one shard, partly outside the role
  EXPECT_NE(denied_within.output.find("etcdserver: permission denied"), std::string::npos) << denied_within.output;
  for (const char* key : {"cd", "id", "ld", "yd"}) {
    EXPECT_EQ(As(kRoot, std::string("get ") + key).output, std::string(key) + "\n1\n") << key;
  }
  // Authenticate, check and delete are each a raft write per shard: allow for a loaded machine.
  EXPECT_EQ(As("wanda:wpw", "--command-timeout=20s del cd ie").output, "2\n")  // cd on shard 0, id on shard 1
      << setup_->proxy().process().Log();
  EXPECT_EQ(As(kRoot, "get cd").output, "");
  EXPECT_EQ(As(kRoot, "get id").output, "");
  EXPECT_EQ(As(kRoot, "get ld").output, "ld\n1\n");
  EXPECT_EQ(As(kRoot, "user delete wanda").exit_code, 0);
  EXPECT_EQ(As(kRoot, "role delete writer").exit_code, 0);
  EXPECT_EQ(As(kRoot, "del ld").output, "1\n");
  EXPECT_EQ(As(kRoot, "del yd").output, "1\n");
}

// A user who may write a lease's keys but not read them: etcd permits the revoke. etcd 3.5+
// refuses that user the listing of the keys the revoke check needs; the proxy with credentials
// lists them as itself and still probes the write permission as the user. Without credentials
// the refused listing is the answer on 3.5 (stricter than etcd); 3.4 lists the keys to anyone.
TEST_F(AuthTest, WriteOnlyUserRevokesThroughTheProxyWithCredentials) {
  for (const char* command : {"role add wonly", "role grant-permission wonly write w x", "user add wendy:wepw",
                              "user grant-role wendy wonly"}) {
    ASSERT_EQ(As(kRoot, command).exit_code, 0) << command;
  }
  const auto lease_with_key = [](const std::string& key) {
    const std::string lease = GrantLease(Second(), 60);
    EXPECT_FALSE(lease.empty());
    EXPECT_EQ(As(kRoot, "put " + key + " 1 --lease=" + lease, Second()).output, "OK\n");  // shard 2
    return lease;
  };
  const std::string first = lease_with_key("wk1");
  EXPECT_EQ(As("wendy:wepw", "lease revoke " + first, Second()).output, "lease " + first + " revoked\n");
  EXPECT_EQ(As(kRoot, "get wk1").output, "");

  const std::string second = lease_with_key("wk2");
  const auto without = As("wendy:wepw", "lease revoke " + second);  // the proxy without credentials
  if (EtcdServerAtLeast(3, 5)) {
    EXPECT_NE(without.output.find("etcdserver: permission denied"), std::string::npos) << without.output;
    EXPECT_EQ(As(kRoot, "get wk2").output, "wk2\n1\n");  // revoked nowhere
    EXPECT_EQ(As(kRoot, "lease revoke " + second).output, "lease " + second + " revoked\n");
  } else {
    EXPECT_EQ(without.output, "lease " + second + " revoked\n");
  }
  EXPECT_EQ(As(kRoot, "user delete wendy").exit_code, 0);
  EXPECT_EQ(As(kRoot, "role delete wonly").exit_code, 0);
}

// etcd 3.5.x (3.5.30 here) with auth on refuses Maintenance.Status and Alarm without a token;
// 3.4 answers them. The health probe uses the proxy's credentials where they are configured, and
// a shard that answers the probe only with that refusal still counts as up, with a note.
TEST_F(AuthTest, HealthProbeUsesTheProxysCredentialsAndCountsRefusalsAsUp) {
  const auto shards_answer = [](int port) { return HttpGet(port, "/shards"); };
  const auto count = [](const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  };
  // With credentials: every shard up, its leader known, nothing noted.
  ASSERT_TRUE(WaitFor([&] { return count(shards_answer(metrics_port_).body, "\"health\":true") == 3; }, 10s))
      << shards_answer(metrics_port_).body;
  const auto with = shards_answer(metrics_port_).body;
  EXPECT_EQ(count(with, "\"leader\":\"0\""), 0u) << with;
  EXPECT_EQ(count(with, "\"note\":\"\""), 3u) << with;
  EXPECT_EQ(HttpGet(metrics_port_, "/readyz").code, 200);

  // Without: up either way; on a shard that refuses the probe, the leader is unknown and the note
  // says what to configure.
  const int port = FreePort();
  ProxyProcess bare(Specs(), {"--listen-metrics-addr", "127.0.0.1:" + std::to_string(port)});
  bare.Start();
  ASSERT_TRUE(WaitFor([&] { return count(shards_answer(port).body, "\"health\":true") == 3; }, 10s))
      << shards_answer(port).body << bare.process().Log();
  const auto without = shards_answer(port).body;
  const std::size_t noted = count(without, "configure `credentials`");
  EXPECT_TRUE(noted == 0 || noted == 3) << without;
  EXPECT_EQ(count(without, "\"leader\":\"0\""), noted) << without;
  EXPECT_EQ(HttpGet(port, "/readyz").code, 200);
  if (EtcdServerAtLeast(3, 5)) {
    // Whether a 3.5 shard refuses depends on its patch release: it must be one or the other.
    std::cout << "etcd " << EtcdServerVersion() << ": the probe without credentials was "
              << (noted == 3 ? "refused" : "answered") << std::endl;
  } else {
    EXPECT_EQ(noted, 0u) << without;  // 3.4 answers Status without a token
  }
}

// One LeaseKeepAlive stream through `address` as the holder of `token`.
class KeepAliveStream {
 public:
  KeepAliveStream(const std::string& address, const std::string& token)
      : stub_(etcdserverpb::Lease::NewStub(Connect(address))),
        ctx_(TokenCtx(token)),
        stream_(stub_->LeaseKeepAlive(ctx_.get())) {}
  struct Result {
    grpc::Status status;  // the stream's end when there was no answer
    int64_t ttl = -1;
  };
  Result Renew(int64_t id) {
    etcdserverpb::LeaseKeepAliveRequest request;
    request.set_id(id);
    etcdserverpb::LeaseKeepAliveResponse response;
    if (stream_->Write(request) && stream_->Read(&response)) return {grpc::Status::OK, response.ttl()};
    return {stream_->Finish(), -1};
  }
  void Cancel() { ctx_->TryCancel(); }

 private:
  std::unique_ptr<etcdserverpb::Lease::Stub> stub_;
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<etcdserverpb::LeaseKeepAliveRequest, etcdserverpb::LeaseKeepAliveResponse>>
      stream_;
};

// A lease of 2 s with a key on every shard outlives its TTL only through root's renewals through
// the proxy, which must reach every shard (the proxy's keep-alive streams carry root's token).
TEST_F(AuthTest, RootsKeepAliveRenewsTheLeaseOnEveryShard) {
  const std::string lease = GrantLease(Proxy(), 2);
  ASSERT_FALSE(lease.empty());
  for (const char* key : {"bka", "jka", "xka"}) ASSERT_EQ(As(kRoot, std::string("put ") + key + " 1 --lease=" + lease).output, "OK\n");
  const auto root = Authenticate(Proxy(), "root", "rootpw");
  ASSERT_TRUE(root.status.ok());
  KeepAliveStream stream(Proxy(), root.token);
  const auto until = std::chrono::steady_clock::now() + 4s;
  while (std::chrono::steady_clock::now() < until) {
    const auto renewed = stream.Renew(LeaseId(lease));
    ASSERT_TRUE(renewed.status.ok()) << renewed.status.error_message();
    ASSERT_EQ(renewed.ttl, 2);
    std::this_thread::sleep_for(400ms);  // the pace of a client renewing every TTL/5
  }
  for (std::size_t i = 0; i < 3; ++i) {
    const auto ttl = As(kRoot, "lease timetolive " + lease, ShardAddress(i)).output;
    EXPECT_NE(ttl.find("remaining("), std::string::npos) << "shard " << i << ": " << ttl;
  }
  EXPECT_EQ(As(kRoot, "get xka").output, "xka\n1\n");
  EXPECT_EQ(As(kRoot, "lease revoke " + lease).output, "lease " + lease + " revoked\n");
}

// alice may not write shard 2's key of the lease: etcd 3.5 refuses her renewal there and ends
// her stream with `permission denied`, which the proxy passes on (other shards' answers do not
// outweigh it). Her refusal does not touch root's renewals of the same lease: two root tokens
// keep it alive on streams of their own, before and after her refusal and after one of them
// leaves. On etcd 3.4, which checks nothing, her renewal works.
TEST_F(AuthTest, RenewalsOfOneLeaseByDifferentIdentitiesAreIndependent) {
  // etcd 3.5 checks a renewal against the keep-alive stream's identity (a token; write permission
  // on the lease's keys); 3.4.23 checks nothing.
  ASSERT_FALSE(EtcdServerVersion().empty());
  const bool checked = EtcdServerAtLeast(3, 5);
  const std::string lease = GrantLease(Proxy(), 30);
  ASSERT_FALSE(lease.empty());
  const int64_t id = LeaseId(lease);
  ASSERT_EQ(As(kRoot, "put xkb 1 --lease=" + lease).output, "OK\n");
  const auto first = Authenticate(Proxy(), "root", "rootpw");
  const auto second = Authenticate(Proxy(), "root", "rootpw");
  const auto alice = Authenticate(Proxy(), "alice", "alicepw");
  ASSERT_TRUE(first.status.ok() && second.status.ok() && alice.status.ok());
  ASSERT_NE(first.token, second.token);
  KeepAliveStream a(Proxy(), first.token);
  KeepAliveStream b(Proxy(), second.token);
  KeepAliveStream denied(Proxy(), alice.token);
  EXPECT_EQ(a.Renew(id).ttl, 30);
  const auto refused = denied.Renew(id);
  if (checked) {
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << refused.ttl;
    EXPECT_EQ(refused.status.error_message(), "etcdserver: permission denied");
  } else {
    EXPECT_TRUE(refused.status.ok()) << refused.status.error_message();
    EXPECT_EQ(refused.ttl, 30);
  }
  EXPECT_EQ(a.Renew(id).ttl, 30);
  EXPECT_EQ(b.Renew(id).ttl, 30);
  a.Cancel();
  EXPECT_EQ(b.Renew(id).ttl, 30);
  // A client without a token: etcd 3.5 says who is missing.
  auto stub = etcdserverpb::Lease::NewStub(Connect(Proxy()));
  auto ctx = Ctx();
  auto anonymous = stub->LeaseKeepAlive(ctx.get());
  etcdserverpb::LeaseKeepAliveRequest request;
  request.set_id(id);
  etcdserverpb::LeaseKeepAliveResponse response;
  const bool answered = anonymous->Write(request) && anonymous->Read(&response);
  EXPECT_EQ(answered, !checked);
  if (checked) {
    const auto status = anonymous->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(status.error_message(), "etcdserver: user name is empty");
  } else {
    ctx->TryCancel();
  }
  EXPECT_EQ(As(kRoot, "lease revoke " + lease).output, "lease " + lease + " revoked\n");
}

}  // namespace
}  // namespace esp::test
