// TLS on both sides, with certificates made at test time: a TLS etcd shard requiring client
// certificates, the proxy serving mutual TLS, and the real etcdctl with --cacert/--cert/--key.
#include <gtest/gtest.h>

#include <memory>

#include "support/fixtures.h"

namespace esp::test {
namespace {

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_ = std::make_unique<TestCertificates>();
    const EtcdTls tls{certs_->ca(), certs_->cert(), certs_->key()};
    shard_ = std::make_unique<EtcdCluster>(1, "tlsshard", tls);
    shard_->Start();
    proxy_ = std::make_unique<ProxyProcess>(
        std::vector<ShardSpec>{{"", "", shard_->ClientAddresses(), tls}},
        std::vector<std::string>{"--cert-file", certs_->cert(), "--key-file", certs_->key(), "--trusted-ca-file",
                                 certs_->ca(), "--client-cert-auth"});
    proxy_->StartWithoutProbe();
  }
  static void TearDownTestSuite() {
    proxy_.reset();
    shard_.reset();
    certs_.reset();
  }
  static CommandResult Secure(const std::string& args) {
    return Etcdctl(proxy_->address(),
                   "--cacert " + certs_->ca() + " --cert " + certs_->cert() + " --key " + certs_->key() + " " + args);
  }
  static std::unique_ptr<TestCertificates> certs_;
  static std::unique_ptr<EtcdCluster> shard_;
  static std::unique_ptr<ProxyProcess> proxy_;
};
std::unique_ptr<TestCertificates> TlsTest::certs_;
std::unique_ptr<EtcdCluster> TlsTest::shard_;
std::unique_ptr<ProxyProcess> TlsTest::proxy_;

TEST_F(TlsTest, EtcdctlWithACertificateReachesTheTlsShard) {
  auto result = Secure("put k v");
  ASSERT_EQ(result.output, "OK\n") << proxy_->process().Log();
  EXPECT_EQ(Secure("get k").output, "k\nv\n");
  // The key really is on the TLS shard.
  EXPECT_EQ(Etcdctl(shard_->member(0).client_address(), "--cacert " + certs_->ca() + " --cert " + certs_->cert() +
                                                             " --key " + certs_->key() + " get k")
                .output,
            "k\nv\n");
}

TEST_F(TlsTest, MemberListAdvertisesHttps) {
  const auto result = Secure("member list");
  EXPECT_NE(result.output.find("https://" + proxy_->address()), std::string::npos) << result.output;
}

TEST_F(TlsTest, DefragReachesTheTlsMember) {
  const auto result = Secure("defrag");
  EXPECT_EQ(result.exit_code, 0) << result.output;
}

TEST_F(TlsTest, ClientWithoutAValidCertificateIsRefused) {
  const auto no_cert = Etcdctl(proxy_->address(), "--cacert " + certs_->ca() + " --command-timeout 3s get k");
  EXPECT_NE(no_cert.exit_code, 0) << no_cert.output;
  EXPECT_EQ(no_cert.output.find("k\nv"), std::string::npos);
  const auto rogue = Etcdctl(proxy_->address(), "--cacert " + certs_->ca() + " --cert " + certs_->rogue_cert() +
                                                    " --key " + certs_->rogue_key() + " --command-timeout 3s get k");
  EXPECT_NE(rogue.exit_code, 0) << rogue.output;
  const auto plaintext = Etcdctl(proxy_->address(), "--command-timeout 3s get k");
  EXPECT_NE(plaintext.exit_code, 0) << plaintext.output;
  // Each refused connection is one line in the proxy's own log format, with the reason.
  const std::string log = proxy_->process().Log();
  // gRPC C++'s plane words it "grpc: Handshake failed", ours "h2: TLS handshake failed".
  EXPECT_TRUE(log.find("] [error] grpc: Handshake failed") != std::string::npos ||
              log.find("] [error] h2: TLS handshake failed with 127.0.0.1:") != std::string::npos)
      << log;
  EXPECT_NE(log.find("peer did not return a certificate"), std::string::npos) << log;
}

}  // namespace
}  // namespace esp::test

namespace esp::test {
namespace {

// A shard whose certificate names it only as "shard0.test" (a DNS name, no IP address), reached
// at 127.0.0.1: the proxy must verify it under the `server_name` of its `tls:` block.
class TlsServerNameTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<TempDir>();
    const std::string d = dir_->path().string();
    const std::string script =
        "set -e; cd " + d + "; "
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=named-ca -keyout ca.key -out ca.crt; "
        "printf 'subjectAltName=DNS:shard0.test\\nextendedKeyUsage=serverAuth,clientAuth\\n' > ext.cnf; "
        "openssl req -newkey rsa:2048 -nodes -subj /CN=shard0.test -keyout shard.key -out shard.csr; "
        "openssl x509 -req -in shard.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf "
        "-out shard.crt";
    const auto made = RunCommand("sh -c \"" + script + "\"", std::chrono::seconds(60));
    ASSERT_EQ(made.exit_code, 0) << made.output;
    tls_ = EtcdTls{d + "/ca.crt", d + "/shard.crt", d + "/shard.key", "shard0.test"};
    // The fixture's own readiness probe verifies the name too.
    shard_ = std::make_unique<EtcdCluster>(1, "namedshard", tls_);
    shard_->Start();
  }
  static void TearDownTestSuite() {
    shard_.reset();
    dir_.reset();
  }
  static std::unique_ptr<TempDir> dir_;
  static EtcdTls tls_;
  static std::unique_ptr<EtcdCluster> shard_;
};
std::unique_ptr<TempDir> TlsServerNameTest::dir_;
EtcdTls TlsServerNameTest::tls_;
std::unique_ptr<EtcdCluster> TlsServerNameTest::shard_;

TEST_F(TlsServerNameTest, WithServerNameTheShardIsVerifiedUnderThatName) {
  ProxyProcess proxy({{"", "", shard_->ClientAddresses(), tls_}});
  proxy.Start();
  EXPECT_EQ(Etcdctl(proxy.address(), "put k v").output, "OK\n") << proxy.process().Log();
  EXPECT_EQ(Etcdctl(proxy.address(), "get k --print-value-only").output, "v\n");
}

TEST_F(TlsServerNameTest, WithoutServerNameTheCertificateDoesNotMatchAndTheErrorNamesTheShard) {
  EtcdTls unnamed = tls_;
  unnamed.server_name.clear();
  ProxyProcess proxy({{"", "", shard_->ClientAddresses(), unnamed}});
  proxy.Start();
  const auto result = Etcdctl(proxy.address(), "--command-timeout 5s put k v");
  EXPECT_NE(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("shard-0"), std::string::npos) << result.output;
  // The client learns why: the shard's certificate does not name the address it was reached at.
  // (gRPC C++'s client words it "Peer name ... is not in peer certificate", ours gives OpenSSL's
  // verdict.)
  EXPECT_TRUE(result.output.find("Peer name 127.0.0.1 is not in peer certificate") != std::string::npos ||
              result.output.find("IP address mismatch") != std::string::npos)
      << result.output;
  // The operator learns which shard and member, once, in the log.
  EXPECT_TRUE(WaitFor([&] { return proxy.process().Log().find("member " + shard_->member(0).client_address() +
                                                                 " unreachable") != std::string::npos; },
                      std::chrono::seconds(10)))
      << proxy.process().Log();
}

}  // namespace
}  // namespace esp::test
