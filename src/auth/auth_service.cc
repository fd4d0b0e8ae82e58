#include "auth/auth_service.h"

#include <spdlog/spdlog.h>

#include "auth/outcomes.h"
#include "auth/token.h"
#include "etcdserverpb/rpc.pb.h"
#include "lease/fanout.h"

namespace esp {
namespace {

using namespace etcdserverpb;

std::string MethodPath(const std::string& name) { return "/etcdserverpb.Auth/" + name; }

// The comparable part of an answer: everything but the header, which names the shard's cluster.
template <class Resp>
std::vector<auth::ShardResult> Reduce(const Topology& topology, const std::vector<ShardOutcome<Resp>>& outcomes) {
  std::vector<auth::ShardResult> results;
  for (const auto& o : outcomes) {
    auth::ShardResult r{.shard = topology.map.shard(o.shard).name, .status = o.status, .payload = {}};
    if (o.status.ok()) {
      Resp without_header = o.response;
      without_header.clear_header();
      r.payload = without_header.SerializeAsString();
    }
    results.push_back(std::move(r));
  }
  return results;
}

template <class Resp>
const Resp* FirstOk(const std::vector<ShardOutcome<Resp>>& outcomes) {
  for (const auto& o : outcomes) {
    if (o.status.ok()) return &o.response;
  }
  return nullptr;
}

}  // namespace

// etcd's errors meaning "the shard already is in the requested state": a request repeated after
// a part-way failure finds them on the shards it reached the first time. The other changes
// (UserGrantRole, RoleGrantPermission, UserChangePassword, AuthEnable, AuthDisable) are
// idempotent in etcd itself.
void AuthService::Register(Router& router) {
  RegisterChange<AuthUserAddRequest, AuthUserAddResponse>(router, "UserAdd", "etcdserver: user name already exists");
  RegisterChange<AuthUserDeleteRequest, AuthUserDeleteResponse>(router, "UserDelete",
                                                                "etcdserver: user name not found");
  RegisterChange<AuthUserChangePasswordRequest, AuthUserChangePasswordResponse>(router, "UserChangePassword", "");
  RegisterChange<AuthUserGrantRoleRequest, AuthUserGrantRoleResponse>(router, "UserGrantRole", "");
  RegisterChange<AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse>(
      router, "UserRevokeRole", "etcdserver: role is not granted to the user");
  RegisterChange<AuthRoleAddRequest, AuthRoleAddResponse>(router, "RoleAdd", "etcdserver: role name already exists");
  RegisterChange<AuthRoleDeleteRequest, AuthRoleDeleteResponse>(router, "RoleDelete",
                                                                "etcdserver: role name not found");
  RegisterChange<AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse>(router, "RoleGrantPermission", "");
  RegisterChange<AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse>(
      router, "RoleRevokePermission", "etcdserver: permission is not granted to the role");
  RegisterChange<AuthEnableRequest, AuthEnableResponse>(router, "AuthEnable", "");
  RegisterChange<AuthDisableRequest, AuthDisableResponse>(router, "AuthDisable", "");

  RegisterRead<AuthUserGetRequest, AuthUserGetResponse>(router, "UserGet");
  RegisterRead<AuthUserListRequest, AuthUserListResponse>(router, "UserList");
  RegisterRead<AuthRoleGetRequest, AuthRoleGetResponse>(router, "RoleGet");
  RegisterRead<AuthRoleListRequest, AuthRoleListResponse>(router, "RoleList");
  RegisterRead<AuthStatusRequest, AuthStatusResponse>(router, "AuthStatus");

  RegisterAuthenticate(router);
}

template <class Req, class Resp>
void AuthService::RegisterChange(Router& router, const std::string& name, const char* benign_error) {
  router.AddTyped<Req, Resp>(
      MethodPath(name), [this, name, benign = std::string(benign_error)](
                            CallContextPtr ctx, const Req& request, std::function<void(Status, Resp)> done) {
        const auto topology = topology_.Get();
        CallShards<Resp>(*topology, AllShards(*topology), MethodPath(name), ctx, request, kWrite,
                         [topology, name, benign, done = std::move(done)](std::vector<ShardOutcome<Resp>> outcomes) {
                           Status status = auth::DecideChange(name, Reduce(*topology, outcomes), benign);
                           if (!status.ok()) {
                             if (status.message().starts_with("etcd-sharding-proxy:")) spdlog::warn("{}", status.message());
                             return done(std::move(status), Resp{});
                           }
                           const Resp* first = FirstOk(outcomes);
                           done(Status::Ok(), first != nullptr ? *first : outcomes.front().response);
                         });
      });
}

template <class Req, class Resp>
void AuthService::RegisterRead(Router& router, const std::string& name) {
  router.AddTyped<Req, Resp>(
      MethodPath(name), [this, name](CallContextPtr ctx, const Req& request, std::function<void(Status, Resp)> done) {
        const auto topology = topology_.Get();
        CallShards<Resp>(*topology, AllShards(*topology), MethodPath(name), ctx, request, kRead,
                         [topology, name, done = std::move(done)](std::vector<ShardOutcome<Resp>> outcomes) {
                           auto decision = auth::DecideRead(name, Reduce(*topology, outcomes));
                           if (!decision.status.ok()) return done(std::move(decision.status), Resp{});
                           done(Status::Ok(), std::move(outcomes[decision.use].response));
                         });
      });
}

// Authenticate on every shard and pack the shards' tokens into one. A shard that is down is
// left out of the token: requests that need it get "invalid auth token" and the client
// authenticates again, by then perhaps with that shard back. An answer from etcd that is not a
// token (wrong password, auth not enabled) is the answer: the user has no identity to use.
void AuthService::RegisterAuthenticate(Router& router) {
  router.AddTyped<AuthenticateRequest, AuthenticateResponse>(
      MethodPath("Authenticate"), [this](CallContextPtr ctx, const AuthenticateRequest& request,
                                         std::function<void(Status, AuthenticateResponse)> done) {
        const auto topology = topology_.Get();
        CallShards<AuthenticateResponse>(
            *topology, AllShards(*topology), MethodPath("Authenticate"), ctx, request, kWrite,
            [topology, done = std::move(done)](std::vector<ShardOutcome<AuthenticateResponse>> outcomes) {
              auth::ShardTokens tokens;
              const Status* down = nullptr;
              for (const auto& o : outcomes) {
                if (o.status.ok()) {
                  tokens[topology->map.shard(o.shard).name] = o.response.token();
                } else if (auth::IsShardDown(o.status)) {
                  if (down == nullptr) down = &o.status;
                } else {
                  return done(o.status, AuthenticateResponse{});
                }
              }
              if (tokens.empty()) {
                return done(down != nullptr ? *down : Status(StatusCode::kUnavailable, "etcd-sharding-proxy: no shard"),
                            AuthenticateResponse{});
              }
              AuthenticateResponse response = *FirstOk(outcomes);
              response.set_token(auth::EncodeToken(tokens));
              done(Status::Ok(), std::move(response));
            });
      });
}

}  // namespace esp

namespace esp {

// Each shard call of the check waits at most this long: the check blocks the operator listener
// (and, at start-up, a clean shutdown), so a hung shard must not hold it for long.
constexpr std::chrono::milliseconds kCheckCallTimeout(2000);

void AuthService::RunConsistencyCheck() {
  auto report = auth::CheckAuthConsistency(*topology_.Get(), credentials_, kCheckCallTimeout);
  const std::lock_guard lock(check_mu_);
  // Logged when the verdict changes only: a monitor polling the endpoint must not repeat the
  // same differences in the log every few seconds.
  if (report != latest_) {
    for (const auto& difference : report.differences) spdlog::warn("auth consistency: {}", difference);
    for (const auto& error : report.errors) spdlog::warn("auth consistency: cannot compare {}", error);
    if (report.consistent()) spdlog::info("auth consistency: users, roles and auth status agree on every shard");
  }
  latest_ = std::move(report);
  latest_time_ = std::chrono::steady_clock::now();
  checking_ = false;
}

void AuthService::StartCheckLocked() {
  if (checking_ || stopped_) return;
  checking_ = true;
  // The previous check has finished (checking_ was false): joining it does not wait on shards.
  if (check_thread_.joinable()) check_thread_.join();
  check_thread_ = std::thread([this] { RunConsistencyCheck(); });
}

void AuthService::StartConsistencyCheck() {
  const std::lock_guard lock(check_mu_);
  StartCheckLocked();
}

std::optional<AuthService::AgedReport> AuthService::LatestConsistency(std::chrono::seconds max_age) {
  const std::lock_guard lock(check_mu_);
  const auto age = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - latest_time_);
  if (!latest_ || age >= max_age) StartCheckLocked();
  if (!latest_) return std::nullopt;
  return AgedReport{*latest_, age};
}

void AuthService::Stop() {
  std::thread running;
  {
    const std::lock_guard lock(check_mu_);
    stopped_ = true;
    running = std::move(check_thread_);
  }
  if (running.joinable()) running.join();
}

void WarnAboutCertificateIdentity(const Config& config, bool client_cert_auth) {
  if (config.client_cert_identity) {
    if (!client_cert_auth) {
      spdlog::warn("'client_cert_identity' is configured but the proxy runs without --client-cert-auth: clients "
                   "have no verified certificate, so no call runs as a certificate's CN");
    }
    return;
  }
  for (const auto& shard : config.shards) {
    if (shard.tls && !shard.tls->cert_file.empty()) {
      spdlog::warn("shard \"{}\": the proxy presents its own client certificate; if the shard runs etcd with "
                   "--client-cert-auth, requests without a token run as that certificate's CN there, not as the "
                   "client's. To run them as the client certificate's CN, configure 'client_cert_identity: "
                   "{{ca_cert_file, ca_key_file}}' with a CA the shards trust (docs/semantics.md, Auth)",
                   shard.name);
    }
  }
}

std::optional<auth::Credentials> LoadCredentials(const Config& config) {
  if (!config.credentials) return std::nullopt;
  CheckSecretFile(config.credentials->password_file, "credentials.password_file");
  std::string password = ReadFileOrThrow(config.credentials->password_file);
  while (!password.empty() && (password.back() == '\n' || password.back() == '\r')) password.pop_back();
  return auth::Credentials{.user = config.credentials->user, .password = std::move(password)};
}

}  // namespace esp
