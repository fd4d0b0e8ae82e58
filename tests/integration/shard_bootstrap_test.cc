// PrepareNewShard (src/meta/shard_bootstrap.h) against real etcd: shards with and without auth,
// leases split over the shards, and a fresh etcd as the new shard in each test. Refusals are
// checked to leave the new cluster exactly as it was.
#include "meta/shard_bootstrap.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>
#include <string>

#include "meta/etcd_client.h"
#include "support/fixtures.h"

namespace esp::test {
namespace {

using namespace std::chrono_literals;
using esp::meta::BootstrapOptions;
using esp::meta::BootstrapReport;
using esp::meta::EtcdClient;
using esp::meta::EtcdClientOptions;
using esp::meta::PrepareNewShard;

// Lease ids of the suites: on every shard; on two of three (different TTLs); on one of three.
constexpr int64_t kEverywhere = 0x1001;
constexpr int64_t kTwoOfThree = 0x2002;
constexpr int64_t kOneOfThree = 0x3003;

std::unique_ptr<EtcdClient> Client(const std::string& address, const std::string& user = "",
                                   const std::string& password = "") {
  EtcdClientOptions options;
  options.endpoints = {address};
  options.user = user;
  options.password = password;
  options.call_timeout = 5s;
  return std::make_unique<EtcdClient>(options);
}

void Grant(const std::string& address, int64_t id, int64_t ttl, const std::string& user = "",
           const std::string& password = "") {
  etcdserverpb::LeaseGrantRequest request;
  request.set_id(id);
  request.set_ttl(ttl);
  etcdserverpb::LeaseGrantResponse response;
  const auto status = Client(address, user, password)->LeaseGrant(request, &response);
  ASSERT_TRUE(status.ok()) << address << ": " << status.error_message();
}

etcdserverpb::LeaseTimeToLiveResponse TimeToLive(EtcdClient& client, int64_t id) {
  etcdserverpb::LeaseTimeToLiveRequest request;
  request.set_id(id);
  etcdserverpb::LeaseTimeToLiveResponse response;
  const auto status = client.LeaseTimeToLive(request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

grpc::Status Authenticate(const std::string& address, const std::string& user, const std::string& password) {
  auto stub = etcdserverpb::Auth::NewStub(Connect(address));
  etcdserverpb::AuthenticateRequest request;
  request.set_name(user);
  request.set_password(password);
  etcdserverpb::AuthenticateResponse response;
  auto ctx = Ctx();
  return stub->Authenticate(ctx.get(), request, &response);
}

// Everything a bootstrap could change on a cluster, for before/after comparisons.
struct Snapshot {
  bool auth_on = false;
  std::map<std::string, std::vector<std::string>> users;  // user -> roles
  std::map<std::string, std::string> roles;               // role -> permissions, serialized
  std::set<int64_t> leases;
  std::map<std::string, std::string> kvs;
  bool operator==(const Snapshot&) const = default;
};

std::ostream& operator<<(std::ostream& out, const Snapshot& s) {
  out << "auth " << s.auth_on << "; users";
  for (const auto& [u, r] : s.users) out << " " << u << "(" << r.size() << ")";
  out << "; roles";
  for (const auto& [r, _] : s.roles) out << " " << r;
  out << "; leases " << s.leases.size() << "; keys " << s.kvs.size();
  return out;
}

// With auth on there, as root:rootpw.
Snapshot Take(const std::string& address) {
  Snapshot s;
  const auto probe = Authenticate(address, "root", "rootpw");
  s.auth_on = probe.ok();
  auto client = s.auth_on ? Client(address, "root", "rootpw") : Client(address);
  auto call = [&](auto method, const auto& request, auto* response) {
    grpc::ClientContext context;
    EXPECT_TRUE(client->Prepare(context).ok());
    const auto status = (client->AuthStub().*method)(&context, request, response);
    EXPECT_TRUE(status.ok()) << status.error_message();
  };
  etcdserverpb::AuthUserListResponse users;
  call(&etcdserverpb::Auth::Stub::UserList, etcdserverpb::AuthUserListRequest{}, &users);
  for (const auto& user : users.users()) {
    etcdserverpb::AuthUserGetRequest request;
    request.set_name(user);
    etcdserverpb::AuthUserGetResponse response;
    call(&etcdserverpb::Auth::Stub::UserGet, request, &response);
    s.users[user] = {response.roles().begin(), response.roles().end()};
  }
  etcdserverpb::AuthRoleListResponse roles;
  call(&etcdserverpb::Auth::Stub::RoleList, etcdserverpb::AuthRoleListRequest{}, &roles);
  for (const auto& role : roles.roles()) {
    etcdserverpb::AuthRoleGetRequest request;
    request.set_role(role);
    etcdserverpb::AuthRoleGetResponse response;
    call(&etcdserverpb::Auth::Stub::RoleGet, request, &response);
    std::string perms;
    for (const auto& p : response.perm()) perms += p.SerializeAsString() + "|";
    s.roles[role] = perms;
  }
  etcdserverpb::LeaseLeasesResponse leases;
  EXPECT_TRUE(client->LeaseLeases({}, &leases).ok());
  for (const auto& l : leases.leases()) s.leases.insert(l.id());
  etcdserverpb::RangeRequest range;
  range.set_key(std::string(1, '\0'));
  range.set_range_end(std::string(1, '\0'));
  etcdserverpb::RangeResponse kvs;
  EXPECT_TRUE(client->Range(range, &kvs).ok());
  for (const auto& kv : kvs.kvs()) s.kvs[kv.key()] = kv.value();
  return s;
}

void Ctl(const std::string& address, const std::string& args) {
  const auto result = Etcdctl(address, args);
  ASSERT_EQ(result.exit_code, 0) << args << ": " << result.output;
}

std::string Refusal(const BootstrapOptions& options) {
  try {
    PrepareNewShard(options);
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "PrepareNewShard did not refuse";
  return "";
}

bool Contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A fresh one-member etcd as the new shard.
struct Target {
  EtcdCluster cluster{1, "target", std::nullopt, {"--bcrypt-cost", "4"}};
  Target() { cluster.Start(); }
  std::string address() { return cluster.member(0).client_address(); }
  ShardConfig config() {
    ShardConfig c;
    c.name = "new";
    c.endpoints = cluster.ClientAddresses();
    return c;
  }
};

class ShardsFixture : public ::testing::Test {
 protected:
  static std::vector<std::unique_ptr<EtcdCluster>>& shards() {
    static std::vector<std::unique_ptr<EtcdCluster>> s;
    return s;
  }
  static void StartShards(std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      shards().push_back(std::make_unique<EtcdCluster>(1, "shard" + std::to_string(i), std::nullopt,
                                                       std::vector<std::string>{"--bcrypt-cost", "4"}));
      shards().back()->Start();
    }
  }
  static void TearDownTestSuite() { shards().clear(); }
  static std::string Shard(std::size_t i) { return shards()[i]->member(0).client_address(); }
  static BootstrapOptions Options(Target& target) {
    BootstrapOptions o;
    for (std::size_t i = 0; i < shards().size(); ++i) {
      ShardConfig c;
      c.name = "s" + std::to_string(i);
      c.endpoints = shards()[i]->ClientAddresses();
      o.existing.push_back(c);
    }
    o.target = target.config();
    o.timeout = 3s;
    return o;
  }
};

// Three shards, auth off, a role and a user, and leases: everywhere (TTL 600), on shards 0 and
// 1 (TTLs 500 and 300: alive, at least half hold it), on shard 0 only (revoked by the majority
// rule: must not come back).
class NoAuthBootstrapTest : public ShardsFixture {
 protected:
  static void SetUpTestSuite() {
    StartShards(3);
    for (std::size_t i = 0; i < 3; ++i) {
      for (const char* command : {"role add reader", "role grant-permission reader read a k",
                                  "role grant-permission reader readwrite x --prefix", "user add alice:alicepw",
                                  "user grant-role alice reader", "user add carol --no-password"}) {
        Ctl(Shard(i), command);
      }
      Grant(Shard(i), kEverywhere, 600);
    }
    Grant(Shard(0), kTwoOfThree, 500);
    Grant(Shard(1), kTwoOfThree, 300);
    Grant(Shard(0), kOneOfThree, 600);
  }
  // Auth is off: nothing tells that carol is certificate-only; the operator says so.
  static BootstrapOptions Passwords(Target& target) {
    auto o = Options(target);
    o.user_passwords = {{"alice", "alicepw"}};
    o.no_password_users = {"carol"};
    return o;
  }
};

TEST_F(NoAuthBootstrapTest, EmptyTargetGetsLeasesUsersAndRoles) {
  Target target;
  auto options = Passwords(target);
  const BootstrapReport report = PrepareNewShard(options);
  EXPECT_FALSE(report.auth_enabled);
  EXPECT_FALSE(report.auth_switched_on);
  EXPECT_EQ(report.leases_created, 2u);
  EXPECT_EQ(report.leases_skipped, 1u);
  EXPECT_EQ(report.roles_created, 1u);
  EXPECT_EQ(report.permissions_granted, 2u);
  EXPECT_EQ(report.users_created, 2u);
  EXPECT_EQ(report.roles_granted, 1u);

  auto on_target = Client(target.address());
  auto on_shard1 = Client(Shard(1));
  const auto everywhere = TimeToLive(*on_target, kEverywhere);
  EXPECT_GT(everywhere.ttl(), 590);
  EXPECT_LE(everywhere.grantedttl(), 600);
  // The smallest remaining TTL of the holders (shard 1's 300 s lease), not the largest or the
  // granted one; within a second or two of shard 1's own.
  const auto split = TimeToLive(*on_target, kTwoOfThree);
  const auto split_on_shard1 = TimeToLive(*on_shard1, kTwoOfThree);
  EXPECT_LE(split.grantedttl(), 300);
  EXPECT_GE(split.ttl(), split_on_shard1.ttl() - 1);
  EXPECT_LE(split.ttl(), split_on_shard1.ttl() + 2);
  EXPECT_EQ(TimeToLive(*on_target, kOneOfThree).ttl(), -1);

  const Snapshot after = Take(target.address());
  const Snapshot shard0 = Take(Shard(0));
  EXPECT_EQ(after.users, shard0.users);
  EXPECT_EQ(after.roles, shard0.roles);
  EXPECT_EQ(after.leases, (std::set<int64_t>{kEverywhere, kTwoOfThree}));
  EXPECT_FALSE(after.auth_on);

  // Done: a second run finds nothing to do and changes nothing.
  const BootstrapReport again = PrepareNewShard(options);
  EXPECT_FALSE(again.wrote_anything());
  EXPECT_EQ(Take(target.address()), after);
}

TEST_F(NoAuthBootstrapTest, DryRunWritesNothing) {
  Target target;
  const Snapshot before = Take(target.address());
  auto options = Passwords(target);
  options.dry_run = true;
  const BootstrapReport report = PrepareNewShard(options);
  EXPECT_TRUE(report.dry_run);
  EXPECT_EQ(report.leases_created, 2u);
  EXPECT_EQ(report.users_created, 2u);
  EXPECT_EQ(report.roles_created, 1u);
  EXPECT_EQ(Take(target.address()), before);
  EXPECT_TRUE(before.users.empty() && before.leases.empty());
}

TEST_F(NoAuthBootstrapTest, RefusesATargetHoldingAKey) {
  Target target;
  Ctl(target.address(), "put stray v");
  const Snapshot before = Take(target.address());
  auto options = Passwords(target);
  const std::string message = Refusal(options);
  EXPECT_TRUE(Contains(message, "holds 1 key(s)")) << message;
  EXPECT_TRUE(Contains(message, "\"stray\"")) << message;
  EXPECT_EQ(Take(target.address()), before);
}

TEST_F(NoAuthBootstrapTest, RefusesAMissingPasswordNamingTheUser) {
  Target target;
  const Snapshot before = Take(target.address());
  const std::string message = Refusal(Options(target));
  EXPECT_TRUE(Contains(message, "no password given for user(s) \"alice\", \"carol\"")) << message;
  EXPECT_TRUE(Contains(message, "certificate-only")) << message;
  EXPECT_EQ(Take(target.address()), before);
}

TEST_F(NoAuthBootstrapTest, RefusesAConflictingRole) {
  Target target;
  Ctl(target.address(), "role add reader");
  Ctl(target.address(), "role grant-permission reader write z");
  const Snapshot before = Take(target.address());
  auto options = Passwords(target);
  const std::string message = Refusal(options);
  EXPECT_TRUE(Contains(message, "role \"reader\" has there write \"z\", which the shards' role has not")) << message;
  EXPECT_EQ(Take(target.address()), before);
  EXPECT_TRUE(before.leases.empty());
}

TEST_F(NoAuthBootstrapTest, RefusesAnUnreachableTarget) {
  Target target;
  auto options = Passwords(target);
  options.timeout = 1s;
  // Nothing listens there.
  auto nowhere = options;
  nowhere.target.endpoints = {"127.0.0.1:" + std::to_string(FreePort())};
  EXPECT_TRUE(Contains(Refusal(nowhere), "cannot be reached"));
  // A hung etcd: the calls time out; nothing may have been written once it answers again.
  const Snapshot before = Take(target.address());
  target.cluster.PauseMember(0);
  const auto start = std::chrono::steady_clock::now();
  const std::string message = Refusal(options);
  const auto took = std::chrono::steady_clock::now() - start;
  target.cluster.ResumeMember(0);
  EXPECT_GE(took, 1s) << message;  // it waited for the hung member's answer, the call's timeout
  EXPECT_TRUE(Contains(message, "new shard \"new\"")) << message;
  EXPECT_TRUE(Contains(message, "cannot be reached")) << message;
  EXPECT_EQ(Take(target.address()), before);
}

TEST_F(NoAuthBootstrapTest, RefusesShardsThatDisagree) {
  Target target;
  Ctl(Shard(2), "role add only-here");
  auto options = Passwords(target);
  const std::string message = Refusal(options);
  Ctl(Shard(2), "role delete only-here");
  EXPECT_TRUE(Contains(message, "role \"only-here\" differs: [shard \"s0\", shard \"s1\"] missing; [shard \"s2\"]"))
      << message;
  EXPECT_TRUE(Take(target.address()).roles.empty());
}

TEST_F(NoAuthBootstrapTest, RefusesAShardAsTheTarget) {
  Target target;
  auto options = Passwords(target);
  options.target.endpoints = {"http://" + Shard(1)};
  EXPECT_TRUE(Contains(Refusal(options), "belongs to shard \"s1\""));
}

TEST(UserPasswordsTest, ParsesUserColonPasswordLinesAndRefusesBadOnes) {
  const auto parsed = esp::meta::ParseUserPasswords("# comment\nalice:pw:with:colons\r\n\nbob:\n");
  EXPECT_EQ(parsed, (std::map<std::string, std::string>{{"alice", "pw:with:colons"}, {"bob", ""}}));
  auto refusal = [](const std::string& text) {
    try {
      esp::meta::ParseUserPasswords(text, "f");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(refusal("alice:a\nnocolon-secret\n"), "f line 2: expected user:password");
  EXPECT_EQ(refusal(":pw\n"), "f line 1: empty user name");
  EXPECT_EQ(refusal("alice:a\nalice:b\n"), "f line 2: user \"alice\" given twice");
}

// Two shards with auth on (root, a reader, a certificate-only user; etcdctl's `auth enable`
// adds the root role) and a lease.
class AuthBootstrapTest : public ShardsFixture {
 protected:
  static void SetUpTestSuite() {
    StartShards(2);
    for (std::size_t i = 0; i < 2; ++i) {
      for (const char* command : {"user add root:rootpw", "role add reader", "role grant-permission reader read a k",
                                  "user add alice:alicepw", "user grant-role alice reader",
                                  "user add carol --no-password", "user grant-role carol reader", "auth enable"}) {
        Ctl(Shard(i), command);
      }
      Grant(Shard(i), kEverywhere, 600, "root", "rootpw");
    }
  }
  static BootstrapOptions AuthOptions(Target& target) {
    auto o = Options(target);
    o.user = "root";
    o.password = "rootpw";
    o.user_passwords = {{"alice", "alicepw"}};
    return o;
  }
};

TEST_F(AuthBootstrapTest, CopiesUsersRolesLeasesAndEnablesAuthLast) {
  Target target;
  const BootstrapReport report = PrepareNewShard(AuthOptions(target));
  EXPECT_TRUE(report.auth_enabled);
  EXPECT_TRUE(report.auth_switched_on);
  EXPECT_EQ(report.users_created, 3u);  // root, alice, carol
  EXPECT_EQ(report.roles_created, 2u);  // reader, root
  EXPECT_EQ(report.leases_created, 1u);

  // Auth is on there: a request without a token is refused, alice logs in with her password.
  const auto anonymous = Etcdctl(target.address(), "get a");
  EXPECT_NE(anonymous.exit_code, 0);
  EXPECT_TRUE(Contains(anonymous.output, "user name is empty")) << anonymous.output;
  EXPECT_TRUE(Authenticate(target.address(), "alice", "alicepw").ok());
  EXPECT_EQ(Authenticate(target.address(), "alice", "wrong").error_message(),
            "etcdserver: authentication failed, invalid user ID or password");
  EXPECT_TRUE(Contains(Authenticate(target.address(), "carol", "").error_message(), "no password user"));
  const auto read = Etcdctl(target.address(), "--user alice:alicepw get b");
  EXPECT_EQ(read.exit_code, 0) << read.output;
  const auto denied = Etcdctl(target.address(), "--user alice:alicepw put b v");
  EXPECT_TRUE(Contains(denied.output, "permission denied")) << denied.output;

  const Snapshot after = Take(target.address());
  const Snapshot shard0 = Take(Shard(0));
  EXPECT_TRUE(after.auth_on);
  EXPECT_EQ(after.users, shard0.users);
  EXPECT_EQ(after.roles, shard0.roles);
  EXPECT_EQ(after.leases, std::set<int64_t>{kEverywhere});
  auto root = Client(target.address(), "root", "rootpw");
  EXPECT_GT(TimeToLive(*root, kEverywhere).ttl(), 590);

  const BootstrapReport again = PrepareNewShard(AuthOptions(target));
  EXPECT_FALSE(again.wrote_anything());
  EXPECT_EQ(Take(target.address()), after);
}

TEST_F(AuthBootstrapTest, RefusesAWrongPasswordNamingUserAndShards) {
  Target target;
  const Snapshot before = Take(target.address());
  auto options = AuthOptions(target);
  options.user_passwords["alice"] = "not-hers";
  const std::string message = Refusal(options);
  EXPECT_TRUE(Contains(message, "wrong password for user \"alice\" on shard \"s0\", \"alice\" on shard \"s1\""))
      << message;
  EXPECT_EQ(Take(target.address()), before);
}

TEST_F(AuthBootstrapTest, CompletesARunThatStoppedPartWay) {
  // What a run that failed half-way leaves: the reader role without its permission, alice
  // without her role, auth still off.
  Target target;
  Ctl(target.address(), "role add reader");
  Ctl(target.address(), "user add alice:alicepw");
  const BootstrapReport report = PrepareNewShard(AuthOptions(target));
  EXPECT_EQ(report.roles_created, 1u);  // root
  EXPECT_EQ(report.permissions_granted, 1u);
  EXPECT_EQ(report.users_created, 2u);  // root, carol
  EXPECT_EQ(report.passwords_set, 1u);  // alice's, set again to the verified one
  EXPECT_TRUE(report.auth_switched_on);
  const Snapshot after = Take(target.address());
  const Snapshot shard0 = Take(Shard(0));
  EXPECT_TRUE(after.auth_on);
  EXPECT_EQ(after.users, shard0.users);
  EXPECT_EQ(after.roles, shard0.roles);
}

TEST_F(AuthBootstrapTest, RefusesAUserThatLogsInOtherwiseOnAnAuthEnabledTarget) {
  Target target;
  for (const char* command :
       {"user add root:rootpw", "user grant-role root root", "user add alice:other-password", "auth enable"}) {
    Ctl(target.address(), command);
  }
  const Snapshot before = Take(target.address());
  const std::string message = Refusal(AuthOptions(target));
  EXPECT_TRUE(Contains(message, "user \"alice\" does not log in there as on the shards (another password)")) << message;
  EXPECT_EQ(Take(target.address()), before);
}

}  // namespace
}  // namespace esp::test
