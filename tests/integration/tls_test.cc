// TLS on both sides, with certificates made at test time: a TLS etcd shard requiring client
// certificates, the proxy serving mutual TLS, and the real etcdctl with --cacert/--cert/--key.
#include <gtest/gtest.h>

#include "support/fixtures.h"

namespace esp::test {
namespace {

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_ = new TestCertificates();
    const EtcdTls tls{certs_->ca(), certs_->cert(), certs_->key()};
    shard_ = new EtcdCluster(1, "tlsshard", tls);
    shard_->Start();
    proxy_ = new ProxyProcess({{"", "", shard_->ClientAddresses(), tls}},
                              {"--cert-file", certs_->cert(), "--key-file", certs_->key(), "--trusted-ca-file",
                               certs_->ca(), "--client-cert-auth"});
    proxy_->StartWithoutProbe();
  }
  static void TearDownTestSuite() {
    delete proxy_;
    delete shard_;
    delete certs_;
  }
  static CommandResult Secure(const std::string& args) {
    return Etcdctl(proxy_->address(),
                   "--cacert " + certs_->ca() + " --cert " + certs_->cert() + " --key " + certs_->key() + " " + args);
  }
  static TestCertificates* certs_;
  static EtcdCluster* shard_;
  static ProxyProcess* proxy_;
};
TestCertificates* TlsTest::certs_ = nullptr;
EtcdCluster* TlsTest::shard_ = nullptr;
ProxyProcess* TlsTest::proxy_ = nullptr;

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
}

}  // namespace
}  // namespace esp::test
