#include "config/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace esp {
namespace {

std::string ErrorOf(const std::string& yaml) {
  try {
    ParseConfig(yaml);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigTest, TheOriginalProjectsFormatLoadsUnchanged) {
  const Config c = ParseConfig(R"(shards: [{start: "", end: i, address: 127.0.0.1:12379}, {start: i, end: s, address: 127.0.0.1:22379}, {start: s, end: "", address: 127.0.0.1:32379}])");
  ASSERT_EQ(c.shards.size(), 3u);
  EXPECT_EQ(c.shards[0].start, "");
  EXPECT_EQ(c.shards[0].end, "i");
  EXPECT_EQ(c.shards[1].endpoints, std::vector<std::string>{"127.0.0.1:22379"});
  EXPECT_EQ(c.shards[2].end, "");
  EXPECT_EQ(c.shards[2].name, "shard-2");
}

TEST(ConfigTest, OtherProxiesAreListedUnderProxies) {
  const Config c = ParseConfig(R"(
shards: [{start: "", end: "", address: 127.0.0.1:1}]
proxies: [http://127.0.0.1:2379, http://127.0.0.1:3379]
)");
  EXPECT_EQ(c.proxies, (std::vector<std::string>{"http://127.0.0.1:2379", "http://127.0.0.1:3379"}));
  EXPECT_NE(ErrorOf("shards: [{start: \"\", end: \"\", address: a:1}]\nproxies: x"), "");
}

TEST(ConfigTest, ClientCertIdentityNeedsBothFilesAndTlsOnEveryShard) {
  const Config c = ParseConfig(R"(
shards: [{start: "", end: "", address: 127.0.0.1:1, tls: {ca_file: ca.crt}}]
client_cert_identity: {ca_cert_file: id.crt, ca_key_file: id.key}
)");
  ASSERT_TRUE(c.client_cert_identity);
  EXPECT_EQ(c.client_cert_identity->ca_cert_file, "id.crt");
  EXPECT_EQ(c.client_cert_identity->ca_key_file, "id.key");
  EXPECT_FALSE(ParseConfig("shards: [{start: \"\", end: \"\", address: a:1}]").client_cert_identity);
  EXPECT_EQ(ErrorOf("shards: [{start: \"\", end: \"\", address: a:1, tls: {ca_file: c}}]\n"
                    "client_cert_identity: {ca_cert_file: id.crt}"),
            "'client_cert_identity' needs 'ca_cert_file' and 'ca_key_file' (the CA the shards trust for client "
            "certificates)");
  EXPECT_EQ(ErrorOf("shards: [{start: \"\", end: \"\", address: a:1}]\n"
                    "client_cert_identity: {ca_cert_file: id.crt, ca_key_file: id.key}"),
            "shard 0 (shard-0): 'client_cert_identity' needs a 'tls' block on every shard (the user's identity "
            "reaches the shard as a client certificate)");
}

TEST(ConfigTest, EndpointsNamesAndTlsExtendTheFormat) {
  const Config c = ParseConfig(R"(
shards:
  - name: low
    start: ""
    end: m
    endpoints: [http://127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:3]
    tls: {ca_file: /ca.pem, server_name: etcd.local}
  - {name: high, start: m, end: "", address: 127.0.0.1:4}
)");
  EXPECT_EQ(c.shards[0].name, "low");
  EXPECT_EQ(c.shards[0].endpoints, (std::vector<std::string>{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}));
  ASSERT_TRUE(c.shards[0].tls.has_value());
  EXPECT_EQ(c.shards[0].tls->server_name, "etcd.local");
  EXPECT_FALSE(c.shards[1].tls.has_value());
}

TEST(ConfigTest, BinaryBoundariesViaEscapesOrBase64) {
  const Config c = ParseConfig(R"(
shards:
  - {start: "", end: "\x00\x01", address: a:1}
  - {start_base64: "AAE=", end_base64: "/w==", address: b:1}
  - {start_base64: "/w==", end: "", address: c:1}
)");
  EXPECT_EQ(c.shards[0].end, std::string("\x00\x01", 2));
  EXPECT_EQ(c.shards[1].start, std::string("\x00\x01", 2));
  EXPECT_EQ(c.shards[1].end, "\xff");
  EXPECT_EQ(c.shards[2].start, "\xff");
}

TEST(ConfigTest, ValidationNamesTheShard) {
  EXPECT_NE(ErrorOf("shards: []").find("no shards"), std::string::npos);
  EXPECT_NE(ErrorOf("foo: 1").find("no shards"), std::string::npos);
  EXPECT_NE(ErrorOf(R"(shards: [{start: a, end: "", address: x:1}])").find("shard 0 (shard-0): the first shard must start"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"(shards: [{start: "", end: i, address: x:1}])").find("shard 0 (shard-0): the last shard must end"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"(shards: [{start: "", end: i, address: x:1}, {start: k, end: "", address: y:1}])")
                .find("gap in the keyspace between shard 0 (shard-0)"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"(shards: [{start: "", end: k, address: x:1}, {start: i, end: "", address: y:1}])")
                .find("shard 1 (shard-1) overlaps shard 0"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"(shards: [{start: "", end: i, address: x:1}, {start: s, end: "", address: y:1}, {start: i, end: s, address: z:1}])")
                .find("overlap"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"(shards: [{start: "", end: s, address: x:1}, {start: s, end: i, address: y:1}, {start: i, end: "", address: z:1}])")
                .find("shard 1 (shard-1): start \"s\" is not below end \"i\""),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"(shards: [{start: "", end: "", address: ""}])").find("shard 0 (shard-0): empty endpoint"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"(shards: [{start: "", end: ""}])").find("shard 0 (shard-0): no endpoint"), std::string::npos);
  EXPECT_NE(ErrorOf(R"(shards: [{start: "", end: "", address: x:1, adress: y}])").find("unknown field 'adress'"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"(shards: [{start: "", end: i, address: x:1}, {start: i, end: "", address: y:1, name: shard-0}])")
                .find("duplicate shard name"),
            std::string::npos);
}

TEST(ConfigTest, UnsortedShardsAreReportedAsSuch) {
  const std::string error =
      ErrorOf(R"(shards: [{start: "", end: i, address: x:1}, {start: s, end: "", address: y:1}, {start: i, end: s, address: z:1}])");
  EXPECT_NE(error.find("unbounded but more shards follow"), std::string::npos) << error;
  const std::string unsorted =
      ErrorOf(R"(shards: [{start: "", end: s, address: x:1}, {start: s, end: z, address: y:1}, {start: i, end: "", address: z:1}])");
  EXPECT_NE(unsorted.find("shards are not sorted: shard 2 (shard-2) starts at \"i\""), std::string::npos) << unsorted;
}


// Half used is worse than refused: the inline password would be ignored (the file's is used), yet
// it sits in a config file rarely guarded as a secret.
TEST(ConfigTest, CredentialsWithBothPasswordFileAndPasswordAreRefused) {
  const std::string shards = "shards:\n  - {start: \"\", end: \"\", address: 127.0.0.1:2379}\n";
  EXPECT_EQ(ErrorOf(shards + "credentials: {user: root, password_file: /run/secret, password: hunter2}\n"),
            "'credentials' has a 'password': a password is read only from 'password_file' (one line); remove it "
            "from the config");
  EXPECT_TRUE(ParseConfig(shards + "credentials: {user: root, password_file: /run/secret}\n").credentials);
}

// As ssh refuses a private key others may read: the proxy refuses such a password file or CA key
// at start (exit 2), names it and says what to do. Group access only earns a warning.
TEST(ConfigTest, SecretFilesOthersMayAccessAreRefused) {
  const auto dir = std::filesystem::temp_directory_path() / ("esp-secret-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string file = (dir / "password").string();
  std::ofstream(file) << "pw\n";
  const auto error = [&](std::filesystem::perms mode) -> std::string {
    std::filesystem::permissions(file, mode);
    try {
      CheckSecretFile(file, "credentials.password_file");
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  using P = std::filesystem::perms;
  EXPECT_EQ(error(P::owner_read | P::owner_write | P::group_read | P::others_read),
            "credentials.password_file " + file +
                " is accessible by other users (mode 0644); it holds a secret: chmod o-rwx it (Kubernetes: "
                "defaultMode 0400, or 0440 with fsGroup)");
  EXPECT_NE(error(P::owner_read | P::others_write), "");
  EXPECT_EQ(error(P::owner_read | P::owner_write), "");
  EXPECT_EQ(error(P::owner_read | P::group_read), "");  // warned, not refused
  std::filesystem::remove_all(dir);
  try {
    CheckSecretFile(file, "credentials.password_file");
    ADD_FAILURE() << "a missing file passed";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot read " + file), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace esp
