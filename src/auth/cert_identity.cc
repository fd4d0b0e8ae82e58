#include "auth/cert_identity.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <array>
#include <cstdio>
#include <vector>

namespace esp::auth {
namespace {

// Certificates start this much in the past: a shard whose clock is a little behind the proxy's
// must not see a certificate that is not valid yet.
constexpr long kBackdateSeconds = 300;

std::string OpenSslText() {
  std::array<char, 256> text{};
  ERR_error_string_n(ERR_get_error(), text.data(), text.size());
  return text.data();
}

struct FileClose {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

std::unique_ptr<std::FILE, FileClose> OpenOrThrow(const std::string& path) {
  std::unique_ptr<std::FILE, FileClose> file(std::fopen(path.c_str(), "r"));
  if (!file) throw ConfigError("client_cert_identity: cannot read " + path);
  return file;
}

PkeyPtr GenerateKey() {
  // P-256: small certificates and fast handshakes; etcd (Go) accepts it.
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) throw ConfigError("client_cert_identity: cannot generate a key: " + OpenSslText());
  return key;
}

bool AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (ext == nullptr) return false;
  const bool ok = X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

}  // namespace

IdentityIssuer::IdentityIssuer(const ClientCertIdentityConfig& config, std::chrono::seconds lifetime)
    : lifetime_(lifetime) {
  ca_cert_.reset(PEM_read_X509(OpenOrThrow(config.ca_cert_file).get(), nullptr, nullptr, nullptr));
  if (!ca_cert_) throw ConfigError("client_cert_identity: no PEM certificate in " + config.ca_cert_file);
  if (X509_check_ca(ca_cert_.get()) == 0) {
    throw ConfigError("client_cert_identity: " + config.ca_cert_file + " is not a CA certificate");
  }
  CheckSecretFile(config.ca_key_file, "client_cert_identity.ca_key_file");
  ca_key_.reset(PEM_read_PrivateKey(OpenOrThrow(config.ca_key_file).get(), nullptr, nullptr, nullptr));
  if (!ca_key_) throw ConfigError("client_cert_identity: no unencrypted PEM private key in " + config.ca_key_file);
  if (X509_check_private_key(ca_cert_.get(), ca_key_.get()) != 1) {
    throw ConfigError("client_cert_identity: " + config.ca_key_file + " is not the key of " + config.ca_cert_file);
  }
  key_ = std::shared_ptr<EVP_PKEY>(GenerateKey().release(), PkeyFree{});
}

std::shared_ptr<const IssuedIdentity> IdentityIssuer::For(const std::string& cn) {
  const auto now = Clock::now();
  const std::lock_guard lock(mu_);
  if (const auto found = by_cn_.find(cn); found != by_cn_.end()) {
    if (now < (*found->second)->renew_after) {
      lru_.splice(lru_.begin(), lru_, found->second);
      return *found->second;
    }
    lru_.erase(found->second);
    by_cn_.erase(found);
  }
  auto issued = Mint(cn);
  lru_.push_front(issued);
  by_cn_[cn] = lru_.begin();
  if (lru_.size() > kMaxCached) {
    by_cn_.erase(lru_.back()->cn);
    lru_.pop_back();
  }
  return issued;
}

std::shared_ptr<const IssuedIdentity> IdentityIssuer::Mint(const std::string& cn) const {
  X509Ptr cert(X509_new());
  std::array<unsigned char, 16> serial{};
  RAND_bytes(serial.data(), static_cast<int>(serial.size()));
  serial[0] &= 0x7f;  // positive
  BIGNUM* bn = BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr);
  const bool ok =
      cert && bn != nullptr && X509_set_version(cert.get(), 2) == 1 &&
      BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get())) != nullptr &&
      X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kBackdateSeconds) != nullptr &&
      X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(lifetime_.count())) != nullptr &&
      X509_NAME_add_entry_by_NID(X509_get_subject_name(cert.get()), NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.data()), static_cast<int>(cn.size()), -1,
                                 0) == 1 &&
      X509_set_issuer_name(cert.get(), X509_get_subject_name(ca_cert_.get())) == 1 &&
      X509_set_pubkey(cert.get(), key_.get()) == 1 &&
      AddExtension(cert.get(), ca_cert_.get(), NID_basic_constraints, "critical,CA:FALSE") &&
      AddExtension(cert.get(), ca_cert_.get(), NID_key_usage, "critical,digitalSignature") &&
      AddExtension(cert.get(), ca_cert_.get(), NID_ext_key_usage, "clientAuth") &&
      X509_sign(cert.get(), ca_key_.get(), EVP_sha256()) > 0;
  BN_free(bn);
  if (!ok) throw std::runtime_error("cannot mint a client certificate for \"" + cn + "\": " + OpenSslText());
  auto issued = std::make_shared<IssuedIdentity>();
  issued->cn = cn;
  issued->cert = std::move(cert);
  issued->key = key_;
  issued->renew_after = Clock::now() + lifetime_ / 2;
  return issued;
}

}  // namespace esp::auth
