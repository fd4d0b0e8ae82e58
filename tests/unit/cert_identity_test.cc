// The identity issuer (src/auth/cert_identity.h): certificates a shard's etcd accepts for a CN,
// signed by the configured CA, cached per CN and renewed; clear errors for unusable CA files.
#include "auth/cert_identity.h"

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace esp::auth {
namespace {

// A self-signed CA written to PEM files in a fresh directory.
class TestCa {
 public:
  TestCa()
      : dir_(std::filesystem::temp_directory_path() /
             ("esp-certid-" + std::to_string(getpid()) + "-" + std::to_string(next_++))) {
    std::filesystem::create_directories(dir_);
    key_.reset(EVP_EC_gen("P-256"));
    cert_.reset(X509_new());
    X509_set_version(cert_.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert_.get()), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert_.get()), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert_.get()), 3600);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(cert_.get()), "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("test-identity-ca"), -1, -1, 0);
    X509_set_issuer_name(cert_.get(), X509_get_subject_name(cert_.get()));
    X509_set_pubkey(cert_.get(), key_.get());
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, cert_.get(), cert_.get(), nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, NID_basic_constraints, "critical,CA:TRUE");
    X509_add_ext(cert_.get(), ext, -1);
    X509_EXTENSION_free(ext);
    X509_sign(cert_.get(), key_.get(), EVP_sha256());
    Write("ca.crt", [&](std::FILE* f) { PEM_write_X509(f, cert_.get()); });
    Write("ca.key", [&](std::FILE* f) { PEM_write_PrivateKey(f, key_.get(), nullptr, nullptr, 0, nullptr, nullptr); });
  }
  ~TestCa() { std::filesystem::remove_all(dir_); }

  ClientCertIdentityConfig config() const { return {path("ca.crt"), path("ca.key")}; }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  X509* cert() const { return cert_.get(); }

 private:
  template <class F>
  void Write(const std::string& name, F write) {
    std::FILE* f = std::fopen(path(name).c_str(), "w");
    write(f);
    std::fclose(f);
    // Private to its owner, as the proxy requires of the CA's key (CheckSecretFile).
    std::filesystem::permissions(path(name), std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  }
  static inline int next_ = 0;
  std::filesystem::path dir_;
  PkeyPtr key_;
  X509Ptr cert_;
};

bool VerifiesAsClient(X509* ca, X509* cert) {
  X509_STORE* store = X509_STORE_new();
  X509_STORE_add_cert(store, ca);
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, cert, nullptr);
  X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
  const bool ok = X509_verify_cert(ctx) == 1;
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  return ok;
}

TEST(CertIdentityTest, MintsAClientCertificateForTheCnSignedByTheCa) {
  const TestCa ca;
  IdentityIssuer issuer(ca.config());
  const auto issued = issuer.For("alice");
  EXPECT_EQ(CommonName(issued->cert.get()), "alice");
  EXPECT_TRUE(VerifiesAsClient(ca.cert(), issued->cert.get()));
  EXPECT_EQ(X509_check_private_key(issued->cert.get(), issued->key.get()), 1);
  // Short-lived: valid now, not for a day.
  EXPECT_LT(X509_cmp_time(X509_get0_notBefore(issued->cert.get()), nullptr), 0);
  time_t tomorrow = time(nullptr) + 86400;
  EXPECT_LT(X509_cmp_time(X509_get0_notAfter(issued->cert.get()), &tomorrow), 0);
}

TEST(CertIdentityTest, CachesPerCnWithOneKeyAndRenewsPastHalfLife) {
  const TestCa ca;
  IdentityIssuer issuer(ca.config());
  const auto alice = issuer.For("alice");
  EXPECT_EQ(issuer.For("alice"), alice);
  const auto bob = issuer.For("bob");
  EXPECT_NE(bob, alice);
  EXPECT_EQ(bob->key, alice->key);
  // A lifetime of 0 s is past half life at once: every request mints a fresh certificate.
  IdentityIssuer renewing(ca.config(), std::chrono::seconds(0));
  const auto first = renewing.For("alice");
  EXPECT_NE(renewing.For("alice"), first);
}

// The CA's key can mint any user's certificate, root's included: refused when others may read it.
TEST(CertIdentityTest, CaKeyOthersMayReadIsRefused) {
  const TestCa ca;
  std::filesystem::permissions(ca.path("ca.key"), std::filesystem::perms::others_read, std::filesystem::perm_options::add);
  try {
    IdentityIssuer issuer(ca.config());
    ADD_FAILURE() << "a CA key readable by others was accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "client_cert_identity.ca_key_file " + ca.path("ca.key") +
                                         " is accessible by other users (mode 0604); it holds a secret: chmod o-rwx "
                                         "it (Kubernetes: defaultMode 0400, or 0440 with fsGroup)");
  }
}

TEST(CertIdentityTest, UnusableCaFilesAreNamed) {
  const TestCa ca;
  const auto error = [](const ClientCertIdentityConfig& config) -> std::string {
    try {
      IdentityIssuer issuer(config);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(error({ca.path("missing.crt"), ca.path("ca.key")}),
            "client_cert_identity: cannot read " + ca.path("missing.crt"));
  EXPECT_EQ(error({ca.path("ca.key"), ca.path("ca.key")}),
            "client_cert_identity: no PEM certificate in " + ca.path("ca.key"));
  EXPECT_EQ(error({ca.path("ca.crt"), ca.path("ca.crt")}),
            "client_cert_identity: no unencrypted PEM private key in " + ca.path("ca.crt"));
}

}  // namespace
}  // namespace esp::auth
