// The Auth service's pure parts: composite tokens, deciding one answer from every shard's, and
// comparing shards' auth data, and the side-effect-free permission probes.
#include <gtest/gtest.h>

#include "auth/consistency.h"
#include "auth/outcomes.h"
#include "auth/token.h"
#include "config/config.h"
#include "kv/delete_check.h"
#include "lease/revoke_check.h"
#include "transport/auth_metadata.h"

namespace esp::auth {
namespace {

TEST(CompositeToken, RoundTripsAndTranslatesPerShard) {
  const ShardTokens tokens = {{"shard-0", "abc.12"}, {"shard-1", "eyJhbGciOi.x-y_z"}};
  const std::string token = EncodeToken(tokens);
  EXPECT_TRUE(token.starts_with(kTokenPrefix));
  EXPECT_EQ(DecodeToken(token), tokens);
  EXPECT_EQ(TokenForShard(token, "shard-0"), "abc.12");
  EXPECT_EQ(TokenForShard(token, "shard-1"), "eyJhbGciOi.x-y_z");
  // A shard that was down at Authenticate time has no token: etcd will refuse the marker.
  EXPECT_EQ(TokenForShard(token, "shard-2"), kNoShardToken);
}

TEST(CompositeToken, GarbageIsNeverTranslatedIntoAShardToken) {
  EXPECT_FALSE(DecodeToken("esp1.!!!"));
  EXPECT_FALSE(DecodeToken("esp1."));
  EXPECT_FALSE(DecodeToken("esp1.YWJj"));  // "abc": no separators
  EXPECT_EQ(TokenForShard("esp1.YWJj", "shard-0"), kNoShardToken);
  // A flipped character can decode to bytes gRPC cannot carry in metadata.
  EXPECT_FALSE(DecodeToken(EncodeToken({{"shard-0", std::string("ab\x06" "c")}})));
  // Not ours at all: the shard judges it, as etcd would.
  EXPECT_EQ(TokenForShard("plain.7", "shard-0"), "plain.7");
}

ShardResult Ok(const std::string& shard, const std::string& payload = "p") { return {shard, Status::Ok(), payload}; }
ShardResult Err(const std::string& shard, const std::string& message,
                StatusCode code = StatusCode::kFailedPrecondition) {
  return {shard, Status(code, message), ""};
}

TEST(DecideChange, AlreadyDoneOnSomeShardsCountsAsDone) {
  const std::string exists = "etcdserver: user name already exists";
  EXPECT_TRUE(DecideChange("UserAdd", {Ok("a"), Err("b", exists), Ok("c")}, exists).ok());
  const auto everywhere = DecideChange("UserAdd", {Err("a", exists), Err("b", exists)}, exists);
  EXPECT_EQ(everywhere.message(), exists);  // a real duplicate: etcd's own error
}

TEST(DecideChange, PartWayFailureNamesTheShards) {
  const auto status = DecideChange("RoleAdd", {Ok("a"), Err("b", "shard b down", StatusCode::kUnavailable)}, "");
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_NE(status.message().find("failed on shard(s) \"b\": shard b down"), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("took effect on shard(s) \"a\""), std::string::npos) << status.message();
  const auto same = DecideChange("RoleAdd", {Err("a", "etcdserver: permission denied", StatusCode::kPermissionDenied),
                                             Err("b", "etcdserver: permission denied", StatusCode::kPermissionDenied)},
                                 "");
  EXPECT_EQ(same.message(), "etcdserver: permission denied");
}

TEST(DecideRead, IdenticalAnswersPassDifferentOnesAreNamed) {
  EXPECT_TRUE(DecideRead("UserList", {Ok("a"), Ok("b")}).status.ok());
  const auto same_error = DecideRead("UserGet", {Err("a", "etcdserver: user name not found"),
                                                 Err("b", "etcdserver: user name not found")});
  EXPECT_EQ(same_error.status.message(), "etcdserver: user name not found");
  const auto differ = DecideRead("UserGet", {Ok("a"), Ok("b"), Err("c", "etcdserver: user name not found")});
  EXPECT_EQ(differ.status.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(differ.status.message().find("\"a\", \"b\" answer #1; \"c\" answer \"etcdserver: user name not found\""),
            std::string::npos)
      << differ.status.message();
  const auto down = DecideRead("UserGet", {Ok("a"), Err("b", "shard b: failed to connect", StatusCode::kUnavailable)});
  EXPECT_EQ(down.status.code(), StatusCode::kUnavailable);
}

TEST(CompareAuthStates, NamesMissingAndDifferentEntries) {
  ShardAuthState a{.shard = "s0", .error = "", .enabled = true, .users = {{"alice", "roles [r]"}}, .roles = {}};
  ShardAuthState b = a;
  b.shard = "s1";
  EXPECT_TRUE(CompareAuthStates({a, b}).consistent());
  b.users["bob"] = "roles []";
  b.users["alice"] = "roles [r, w]";
  b.enabled = false;
  const auto report = CompareAuthStates({a, b});
  ASSERT_EQ(report.differences.size(), 3u);
  EXPECT_EQ(report.differences[0], "auth is enabled on [s0] but disabled on [s1]");
  EXPECT_EQ(report.differences[1], "user \"alice\" differs: [s0] roles [r]; [s1] roles [r, w]");
  EXPECT_EQ(report.differences[2], "user \"bob\" differs: [s0] missing; [s1] roles []");
}

TEST(CredentialsConfig, PasswordOnlyFromAFile) {
  const std::string shards = "shards:\n  - {start: \"\", end: \"\", address: 127.0.0.1:2379}\n";
  const auto config = ParseConfig(shards + "credentials: {user: root, password_file: /run/secret}\n");
  ASSERT_TRUE(config.credentials);
  EXPECT_EQ(config.credentials->user, "root");
  EXPECT_EQ(config.credentials->password_file, "/run/secret");
  EXPECT_THROW(ParseConfig(shards + "credentials: {user: root, password: hunter2}\n"), ConfigError);
  EXPECT_FALSE(ParseConfig(shards).credentials);
}

// The probes run their (empty) success branch: no compare, the operation only in the failure
// branch, where etcd checks its permission but never runs it.
TEST(PermissionProbes, DeleteProbeHoldsTheClippedDeleteInTheFailureBranchOnly) {
  etcdserverpb::DeleteRangeRequest piece;
  piece.set_key("a");
  piece.set_range_end("i");
  piece.set_prev_kv(true);  // etcd then also checks read permission, as for the delete itself
  const auto probe = esp::DeletePermissionProbe(piece);
  EXPECT_EQ(probe.compare_size(), 0);
  EXPECT_EQ(probe.success_size(), 0);
  ASSERT_EQ(probe.failure_size(), 1);
  EXPECT_EQ(probe.failure(0).request_delete_range().SerializeAsString(), piece.SerializeAsString());
}

TEST(PermissionProbes, RevokeProbesCheckEveryKeyInTxnsOfBoundedSize) {
  std::vector<std::string> keys;
  for (std::size_t i = 0; i < esp::kRevokeProbeKeys + 1; ++i) keys.push_back("k" + std::to_string(i));
  const auto probes = esp::RevokePermissionProbes(keys);
  ASSERT_EQ(probes.size(), 2u);
  EXPECT_EQ(probes[0].failure_size(), static_cast<int>(esp::kRevokeProbeKeys));
  ASSERT_EQ(probes[1].failure_size(), 1);
  EXPECT_EQ(probes[1].failure(0).request_delete_range().key(), keys.back());
  EXPECT_TRUE(probes[1].failure(0).request_delete_range().range_end().empty());  // one key, not a range
  for (const auto& probe : probes) {
    EXPECT_EQ(probe.compare_size(), 0);
    EXPECT_EQ(probe.success_size(), 0);
  }
  EXPECT_TRUE(esp::RevokePermissionProbes({}).empty());
}

// etcd takes the token from `token`, else from `authorization`; a client certificate's CN is an
// identity too (etcd's --client-cert-auth). Calls with any of them are checked.
TEST(PermissionProbes, OnlyCallsWithAnIdentityAreChecked) {
  EXPECT_FALSE(esp::CarriesIdentity({{"require-leader", "true"}}));
  EXPECT_TRUE(esp::CarriesIdentity({{"require-leader", "true"}, {"token", "esp1.x"}}));
  EXPECT_TRUE(esp::CarriesIdentity({{"authorization", "esp1.x"}}));
  EXPECT_TRUE(esp::CarriesIdentity({{std::string(esp::kClientCertCnKey), "alice"}}));
  EXPECT_TRUE(esp::IsAuthTokenKey("authorization"));
  EXPECT_FALSE(esp::IsAuthTokenKey("authorization-bin"));
}

}  // namespace
}  // namespace esp::auth
