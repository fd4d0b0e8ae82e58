#pragma once
// The Auth service across shards: every shard holds the same users and roles, so management
// requests go to every shard, reads compare every shard's answer, and Authenticate returns one
// composite token (auth/token.h) that the upstream transport turns into each shard's own token.
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "auth/consistency.h"
#include "auth/internal_tokens.h"
#include "config/config.h"
#include "transport/router.h"
#include "upstream/topology.h"

namespace esp {

class AuthService {
 public:
  AuthService(const TopologyHolder& topology, std::optional<auth::Credentials> credentials)
      : topology_(topology),
        credentials_(credentials),
        internal_tokens_(std::make_shared<auth::InternalTokens>(topology, std::move(credentials))) {}
  ~AuthService() { Stop(); }

  void Register(Router& router);

  // Runs the consistency check once on its own thread and logs the outcome (start-up).
  void StartConsistencyCheck();
  // The last consistency report and its age, for the operator endpoint; nullopt before the first
  // check has completed. Never blocks on the shards: a report older than `max_age` starts one
  // check in the background (at most one at a time), whose result the next call sees. So a
  // caller of the endpoint, however frequent, costs the shards at most one check per `max_age`.
  struct AgedReport {
    auth::ConsistencyReport report;
    std::chrono::seconds age;
  };
  std::optional<AgedReport> LatestConsistency(std::chrono::seconds max_age);
  void Stop();

  // Tokens for the proxy's own calls that need one (pending lease revokes).
  const std::shared_ptr<auth::InternalTokens>& internal_tokens() const { return internal_tokens_; }

 private:
  template <class Req, class Resp>
  void RegisterChange(Router& router, const std::string& name, const char* benign_error);
  template <class Req, class Resp>
  void RegisterRead(Router& router, const std::string& name);
  void RegisterAuthenticate(Router& router);

  const TopologyHolder& topology_;
  const std::optional<auth::Credentials> credentials_;
  // Compares users, roles, permissions and auth status across shards (blocking), keeps the
  // report and logs it when it differs from the previous one.
  void RunConsistencyCheck();
  // Starts RunConsistencyCheck on check_thread_. Under check_mu_.
  void StartCheckLocked();

  const std::shared_ptr<auth::InternalTokens> internal_tokens_;
  std::mutex check_mu_;
  std::optional<auth::ConsistencyReport> latest_;
  std::chrono::steady_clock::time_point latest_time_;
  bool checking_ = false;
  bool stopped_ = false;
  std::thread check_thread_;
};

// The credentials of the config's `credentials:` block, the password read from its file (one
// line; a trailing newline is not part of it). Throws ConfigError when the file cannot be read.
std::optional<auth::Credentials> LoadCredentials(const Config& config);

// Client-certificate identities (etcd's --client-cert-auth, CN as user) reach the shards only with
// `client_cert_identity` configured; without it a shard sees the proxy's own certificate. Warns,
// once per shard the proxy presents one to, naming what to configure.
void WarnAboutCertificateIdentity(const Config& config, bool client_cert_auth);

}  // namespace esp
