#pragma once
// Client-certificate identities towards the shards (etcd's --client-cert-auth, the certificate's
// CN as user). The proxy cannot forward a client's certificate, so it mints, with an identity CA
// the shards trust (config `client_cert_identity`), a short-lived certificate naming the same CN
// and presents that one on a TLS connection of its own to each shard. One key pair per proxy,
// generated at start-up; certificates are cached per CN (bounded) and renewed at half life.
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <chrono>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "config/config.h"
#include "transport/call_context.h"  // Clock
#include "transport/peer_identity.h"

namespace esp::auth {

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

struct IssuedIdentity {
  std::string cn;
  X509Ptr cert;
  std::shared_ptr<EVP_PKEY> key;  // the proxy's one identity key, shared by every certificate
  Clock::time_point renew_after;  // half the lifetime: connections made later get a fresh one
};

class IdentityIssuer {
 public:
  static constexpr std::chrono::seconds kLifetime{3600};
  static constexpr std::size_t kMaxCached = 4096;

  // Reads the CA certificate and key and generates the proxy's key pair. Throws ConfigError
  // naming the file that cannot be read or does not hold a CA certificate / matching key.
  explicit IdentityIssuer(const ClientCertIdentityConfig& config, std::chrono::seconds lifetime = kLifetime);

  // A valid certificate for `cn` (cached; minted when missing or past half its life). Thread-safe.
  std::shared_ptr<const IssuedIdentity> For(const std::string& cn);

  X509* ca() const { return ca_cert_.get(); }

 private:
  std::shared_ptr<const IssuedIdentity> Mint(const std::string& cn) const;

  X509Ptr ca_cert_;
  PkeyPtr ca_key_;
  std::shared_ptr<EVP_PKEY> key_;
  const std::chrono::seconds lifetime_;
  std::mutex mu_;
  // Least recently used at the back.
  std::list<std::shared_ptr<const IssuedIdentity>> lru_;
  std::unordered_map<std::string, std::list<std::shared_ptr<const IssuedIdentity>>::iterator> by_cn_;
};

}  // namespace esp::auth
