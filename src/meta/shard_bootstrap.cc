#include "meta/shard_bootstrap.h"

#include <algorithm>
#include <compare>
#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <tuple>

#include "common/etcd_errors.h"
#include "lease/repair.h"
#include "meta/etcd_client.h"

namespace esp::meta {
namespace {

using namespace etcdserverpb;

// etcd's answers, matched by their exact text as clientv3 does.
constexpr const char* kAuthNotEnabled = "etcdserver: authentication is not enabled";
constexpr const char* kAuthFailed = "etcdserver: authentication failed, invalid user ID or password";
// 3.4.23 and 3.5 answer (code Unknown) "auth: authentication failed, password was given for no
// password user" to an Authenticate of a certificate-only user, whatever the password.
constexpr const char* kNoPasswordUser = "password was given for no password user";
constexpr const char* kRoleExists = "etcdserver: role name already exists";
constexpr const char* kUserExists = "etcdserver: user name already exists";

[[noreturn]] void Refuse(const std::string& message) { throw ConfigError(message); }

bool Unreachable(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

std::string Quote(const std::string& s) { return "\"" + PrintableKey(s) + "\""; }

std::string JoinQuoted(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + Quote(item);
  return out;
}

// A permission as a comparable value: etcd keeps a role's permissions sorted by key only, so
// two shards may list the same permissions in another order; they are compared as sets.
using Perm = std::tuple<int, std::string, std::string>;  // type, key, range_end
Perm PermOf(const authpb::Permission& p) { return {p.permtype(), p.key(), p.range_end()}; }

std::string PrintPerm(const Perm& p) {
  static const char* const kTypes[] = {"read", "write", "readwrite"};
  const int type = std::get<0>(p);
  std::string out = (type >= 0 && type <= 2) ? kTypes[type] : "type" + std::to_string(type);
  if (std::get<2>(p).empty()) return out + " " + Quote(std::get<1>(p));  // one key
  return out + " [" + Quote(std::get<1>(p)) + ", " + Quote(std::get<2>(p)) + ")";
}

struct AuthData {
  std::map<std::string, std::set<std::string>> users;            // user -> roles
  std::map<std::string, std::vector<authpb::Permission>> roles;  // role -> permissions (etcd's order)
  std::set<Perm> PermsOf(const std::string& role) const {
    std::set<Perm> out;
    for (const auto& p : roles.at(role)) out.insert(PermOf(p));
    return out;
  }
};

std::string PrintRoles(const std::set<std::string>& roles) {
  return "roles [" + JoinQuoted({roles.begin(), roles.end()}) + "]";
}

std::string PrintPerms(const std::set<Perm>& perms) {
  std::string out;
  for (const auto& p : perms) out += (out.empty() ? "" : ", ") + PrintPerm(p);
  return "permissions [" + out + "]";
}

// One cluster (an existing shard or the new one) and how to talk to it.
struct Cluster {
  std::string label;  // shard "a", or new shard "b"
  ShardConfig config;
  std::unique_ptr<EtcdClient> anon;    // no token (before auth is on; or the TLS certificate's CN)
  std::unique_ptr<EtcdClient> authed;  // the credentials' token, when auth is on and a user is given
  bool auth_on = false;
  std::string unreadable;  // non-empty: auth is on and we have no identity that may read it
  uint64_t cluster_id = 0;

  EtcdClient& client() { return authed ? *authed : *anon; }
  std::string Where() const { return label + " (" + anon->EndpointList() + ")"; }
};

EtcdClientOptions ClientOptions(const ShardConfig& config, const std::string& user, const std::string& password,
                                std::chrono::milliseconds timeout) {
  EtcdClientOptions o;
  o.endpoints = config.endpoints;
  o.tls = config.tls;
  o.user = user;
  o.password = password;
  o.call_timeout = timeout;
  return o;
}

// An Auth service call (the client has no failover for these): the next endpoint while the
// answer is UNAVAILABLE, a fresh token once when the token is refused.
template <class Call>
grpc::Status AuthCall(EtcdClient& client, Call call) {
  grpc::Status status;
  bool renewed = false;
  for (std::size_t attempt = 0; attempt < client.options().endpoints.size();) {
    grpc::ClientContext context;
    status = client.Prepare(context, renewed);
    if (status.ok()) status = call(client.AuthStub(), &context);
    if (!renewed && !client.options().user.empty() && TokenRefused(status)) {
      renewed = true;
      continue;
    }
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return status;
    client.Rotate();
    ++attempt;
  }
  return status;
}

grpc::Status Authenticate(EtcdClient& anon, const std::string& user, const std::string& password) {
  AuthenticateRequest request;
  request.set_name(user);
  request.set_password(password);
  AuthenticateResponse response;
  return AuthCall(anon,
                  [&](Auth::Stub& stub, grpc::ClientContext* c) { return stub.Authenticate(c, request, &response); });
}

std::string Failure(const Cluster& c, const std::string& what, const grpc::Status& s) {
  if (Unreachable(s)) return c.Where() + " cannot be reached: " + what + ": " + DescribeStatus(s);
  std::string out = c.Where() + ": " + what + ": " + DescribeStatus(s);
  if (s.error_code() == grpc::StatusCode::PERMISSION_DENIED) out += " (the credentials' user needs the root role)";
  return out;
}

// Opens a cluster and finds out whether auth is on there (etcd 3.4 has no AuthStatus):
// Authenticate answers "authentication is not enabled" when it is off.
Cluster Open(std::string label, const ShardConfig& config, const BootstrapOptions& options) {
  Cluster c;
  c.label = std::move(label);
  c.config = config;
  c.anon = std::make_unique<EtcdClient>(ClientOptions(config, "", "", options.timeout));
  const auto status = Authenticate(*c.anon, options.user, options.password);
  if (status.ok()) {
    c.auth_on = true;
    c.authed = std::make_unique<EtcdClient>(ClientOptions(config, options.user, options.password, options.timeout));
    return c;
  }
  if (status.error_message() == kAuthNotEnabled) return c;
  if (Unreachable(status)) Refuse(Failure(c, "Authenticate", status));
  if (status.error_message() != kAuthFailed) Refuse(Failure(c, "Authenticate", status));
  c.auth_on = true;
  if (!options.user.empty()) {
    c.unreadable = c.Where() + ": cannot authenticate as " + Quote(options.user) + ": " + DescribeStatus(status);
    return c;
  }
  // No user given: the TLS client certificate's CN may be a root user (etcd --client-cert-auth).
  AuthUserListResponse users;
  const auto listed = AuthCall(*c.anon, [&](Auth::Stub& stub, grpc::ClientContext* ctx) {
    return stub.UserList(ctx, AuthUserListRequest{}, &users);
  });
  if (!listed.ok()) {
    c.unreadable = c.Where() + ": auth is enabled there: give the credentials of a user with the root role (" +
                   DescribeStatus(listed) + ")";
  }
  return c;
}

AuthData ReadAuth(Cluster& c) {
  if (!c.unreadable.empty()) Refuse(c.unreadable);
  AuthData data;
  auto& client = c.client();
  AuthUserListResponse users;
  auto status = AuthCall(client, [&](Auth::Stub& stub, grpc::ClientContext* ctx) {
    return stub.UserList(ctx, AuthUserListRequest{}, &users);
  });
  if (!status.ok()) Refuse(Failure(c, "UserList", status));
  c.cluster_id = users.header().cluster_id();
  for (const auto& user : users.users()) {
    AuthUserGetRequest request;
    request.set_name(user);
    AuthUserGetResponse response;
    status = AuthCall(
        client, [&](Auth::Stub& stub, grpc::ClientContext* ctx) { return stub.UserGet(ctx, request, &response); });
    if (!status.ok()) Refuse(Failure(c, "UserGet " + Quote(user), status));
    data.users[user] = {response.roles().begin(), response.roles().end()};
  }
  AuthRoleListResponse roles;
  status = AuthCall(client, [&](Auth::Stub& stub, grpc::ClientContext* ctx) {
    return stub.RoleList(ctx, AuthRoleListRequest{}, &roles);
  });
  if (!status.ok()) Refuse(Failure(c, "RoleList", status));
  for (const auto& role : roles.roles()) {
    AuthRoleGetRequest request;
    request.set_role(role);
    AuthRoleGetResponse response;
    status = AuthCall(
        client, [&](Auth::Stub& stub, grpc::ClientContext* ctx) { return stub.RoleGet(ctx, request, &response); });
    if (!status.ok()) Refuse(Failure(c, "RoleGet " + Quote(role), status));
    data.roles[role] = {response.perm().begin(), response.perm().end()};
  }
  return data;
}

// "user "a" differs: [shard "x", shard "y"] roles ["r"]; [shard "z"] missing" for every name
// whose value differs among `values` (one per cluster, in order).
void Differences(const std::string& kind, const std::vector<std::string>& labels,
                 const std::vector<std::map<std::string, std::string>>& values, std::vector<std::string>& out) {
  std::set<std::string> names;
  for (const auto& v : values) {
    for (const auto& [name, _] : v) names.insert(name);
  }
  for (const auto& name : names) {
    std::vector<std::pair<std::string, std::vector<std::string>>> groups;
    for (std::size_t i = 0; i < values.size(); ++i) {
      const auto it = values[i].find(name);
      const std::string value = it == values[i].end() ? "missing" : it->second;
      auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& x) { return x.first == value; });
      if (g == groups.end()) {
        groups.push_back({value, {labels[i]}});
      } else {
        g->second.push_back(labels[i]);
      }
    }
    if (groups.size() <= 1) continue;
    std::string line = kind + " " + Quote(name) + " differs:";
    for (const auto& [value, where] : groups) {
      std::string list;
      for (const auto& w : where) list += (list.empty() ? "" : ", ") + w;
      line += " [" + list + "] " + value + ";";
    }
    line.pop_back();
    out.push_back(std::move(line));
  }
}

std::vector<std::string> CompareAuth(const std::vector<std::string>& labels, const std::vector<bool>& enabled,
                                     const std::vector<AuthData>& data) {
  std::vector<std::string> out;
  std::vector<std::string> on, off;
  for (std::size_t i = 0; i < labels.size(); ++i) (enabled[i] ? on : off).push_back(labels[i]);
  if (!on.empty() && !off.empty()) {
    auto join = [](const std::vector<std::string>& v) {
      std::string s;
      for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
      return s;
    };
    out.push_back("auth is enabled on " + join(on) + " but disabled on " + join(off));
  }
  std::vector<std::map<std::string, std::string>> users, roles;
  for (const auto& d : data) {
    auto& u = users.emplace_back();
    for (const auto& [name, r] : d.users) u[name] = PrintRoles(r);
    auto& r = roles.emplace_back();
    for (const auto& [name, _] : d.roles) r[name] = PrintPerms(d.PermsOf(name));
  }
  Differences("user", labels, users, out);
  Differences("role", labels, roles, out);
  return out;
}

std::string Lines(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += "\n  - " + item;
  return out;
}

// How a user logs in on the new cluster.
struct Secret {
  bool no_password = false;
  std::string password;
};

// The password rules of the header. Authenticate on the shards (auth on) checks each password
// and tells certificate-only users apart.
std::map<std::string, Secret> ResolvePasswords(const BootstrapOptions& options, const AuthData& shards_auth,
                                               bool auth_on, std::vector<Cluster>& shards, BootstrapReport& report) {
  std::map<std::string, Secret> out;
  std::vector<std::string> missing, wrong, mixed, input_errors;
  for (const auto& [user, _] : shards_auth.users) {
    std::optional<std::string> given;
    if (const auto it = options.user_passwords.find(user); it != options.user_passwords.end()) {
      given = it->second;
    } else if (!options.user.empty() && user == options.user) {
      given = options.password;
    }
    const bool listed_no_password = options.no_password_users.contains(user);
    if (given && listed_no_password && options.user_passwords.contains(user)) {
      input_errors.push_back("user " + Quote(user) + " has a password and is listed as certificate-only");
      continue;
    }
    if (!auth_on) {
      if (given) {
        out[user] = {false, *given};
      } else if (listed_no_password) {
        out[user] = {true, ""};
      } else {
        missing.push_back(user);
      }
      continue;
    }
    // Auth on: ask every shard. A user without a given password is tried with "" (etcd accepts
    // an empty password), which also reveals a certificate-only user.
    std::vector<std::string> accepted, certificate_only, refused;  // shard labels, by answer
    for (auto& shard : shards) {
      const auto status = Authenticate(*shard.anon, user, given.value_or(""));
      if (status.ok()) {
        accepted.push_back(shard.label);
      } else if (status.error_message().find(kNoPasswordUser) != std::string::npos) {
        certificate_only.push_back(shard.label);
      } else if (status.error_message() == kAuthFailed) {
        refused.push_back(shard.label);
      } else {
        Refuse(Failure(shard, "Authenticate as " + Quote(user), status));
      }
    }
    const bool has_password = !accepted.empty() || !refused.empty();
    if (!certificate_only.empty() && has_password) {
      mixed.push_back(Quote(user));
    } else if (!refused.empty()) {
      if (listed_no_password) {
        input_errors.push_back("user " + Quote(user) +
                               " is listed as certificate-only but has a password on the shards");
      } else if (given) {
        for (const auto& label : refused) wrong.push_back(Quote(user) + " on " + label);
      } else {
        missing.push_back(user);
      }
    } else if (listed_no_password && certificate_only.empty()) {
      input_errors.push_back("user " + Quote(user) + " is listed as certificate-only but has a password on the shards");
    } else {
      out[user] = {!certificate_only.empty(), certificate_only.empty() ? given.value_or("") : ""};
    }
  }
  std::vector<std::string> problems = input_errors;
  if (!missing.empty()) {
    problems.push_back(
        "no password given for user(s) " + JoinQuoted(missing) +
        ": etcd never reveals passwords; give each as a `user:password` line" +
        (auth_on ? "" : " (or, for a certificate-only user, list it as such: auth is off, so the shards cannot tell)"));
  }
  if (!wrong.empty()) {
    std::string list;
    for (const auto& w : wrong) list += (list.empty() ? "" : ", ") + w;
    problems.push_back("wrong password for user " + list + " (checked with Authenticate)");
  }
  if (!mixed.empty()) {
    std::string list;
    for (const auto& m : mixed) list += (list.empty() ? "" : ", ") + m;
    problems.push_back("user(s) " + list + " have a password on some shards and none (certificate-only) on others");
  }
  if (!problems.empty()) Refuse("cannot give the new shard the shards' users:" + Lines(problems));
  std::vector<std::string> ignored;
  for (const auto& [user, _] : options.user_passwords) {
    if (!shards_auth.users.contains(user)) ignored.push_back(user);
  }
  for (const auto& user : options.no_password_users) {
    if (!shards_auth.users.contains(user)) ignored.push_back(user);
  }
  if (!ignored.empty()) report.notes.push_back("ignored, no such user on the shards: " + JoinQuoted(ignored));
  if (!auth_on && !shards_auth.users.empty()) {
    report.notes.push_back("auth is off on the shards: the passwords could not be checked and are used as given");
  }
  return out;
}

struct LeasePlan {
  std::vector<std::pair<int64_t, int64_t>> grant;  // id, TTL: alive on the shards, absent from the new cluster
  std::vector<int64_t> revoke;                     // on the new cluster, not alive on the shards
  std::size_t skipped = 0;
};

LeasePlan PlanLeases(std::vector<Cluster>& shards, Cluster& target) {
  std::set<int64_t> ids;
  for (auto& shard : shards) {
    LeaseLeasesResponse response;
    const auto status = shard.client().LeaseLeases(LeaseLeasesRequest{}, &response);
    if (!status.ok()) Refuse(Failure(shard, "LeaseLeases", status));
    for (const auto& l : response.leases()) ids.insert(l.id());
  }
  LeaseLeasesResponse target_leases;
  const auto listed = target.client().LeaseLeases(LeaseLeasesRequest{}, &target_leases);
  if (!listed.ok()) Refuse(Failure(target, "LeaseLeases", listed));
  std::set<int64_t> on_target;
  for (const auto& l : target_leases.leases()) on_target.insert(l.id());

  LeasePlan plan;
  std::set<int64_t> alive;
  for (const int64_t id : ids) {
    LeaseSplit split{.id = id, .holders = {}, .lacking = {}, .unknown = 0, .ttl = INT64_MAX};
    for (std::size_t i = 0; i < shards.size(); ++i) {
      LeaseTimeToLiveRequest request;
      request.set_id(id);
      LeaseTimeToLiveResponse response;
      const auto status = shards[i].client().LeaseTimeToLive(request, &response);
      if (!status.ok()) Refuse(Failure(shards[i], "LeaseTimeToLive " + std::to_string(id), status));
      if (response.ttl() < 0) {
        split.lacking.push_back(i);
      } else {
        split.holders.push_back(i);
        // As the repair (src/lease/repair.cc): etcd truncates the remaining seconds.
        split.ttl = std::min(split.ttl, std::min(response.ttl() + 1, response.grantedttl()));
      }
    }
    if (split.holders.empty()) continue;  // expired or revoked meanwhile
    if (JudgeSplit(split) != SplitVerdict::kAlive) {
      ++plan.skipped;
      continue;
    }
    alive.insert(id);
    if (!on_target.contains(id)) plan.grant.push_back({id, std::max<int64_t>(split.ttl, 1)});
  }
  for (const int64_t id : on_target) {
    if (!alive.contains(id)) plan.revoke.push_back(id);
  }
  return plan;
}

// What the writes did so far, for the message of a failure part-way.
std::string Done(const BootstrapReport& r) {
  std::ostringstream out;
  out << r.leases_revoked << " lease(s) revoked, " << r.leases_created << " granted, " << r.roles_created
      << " role(s) created, " << r.permissions_granted << " permission(s) granted, " << r.users_created
      << " user(s) created, " << r.roles_granted << " role grant(s), " << r.passwords_set << " password(s) set";
  return out.str();
}

}  // namespace

std::map<std::string, std::string> ParseUserPasswords(const std::string& text, const std::string& source) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.front() == '#') continue;
    const auto colon = line.find(':');
    const std::string where = source + " line " + std::to_string(number);
    if (colon == std::string::npos) Refuse(where + ": expected user:password");
    const std::string user = line.substr(0, colon);
    if (user.empty()) Refuse(where + ": empty user name");
    if (!out.emplace(user, line.substr(colon + 1)).second) Refuse(where + ": user " + Quote(user) + " given twice");
  }
  return out;
}

std::map<std::string, std::string> LoadUserPasswordFile(const std::string& path) {
  CheckSecretFile(path, "user passwords file");
  return ParseUserPasswords(ReadFileOrThrow(path), path);
}

BootstrapReport PrepareNewShard(const BootstrapOptions& options) {
  // Input.
  if (options.existing.empty()) Refuse("no existing shard given");
  if (options.target.endpoints.empty()) Refuse("the new shard has no endpoint");
  if (options.user.empty() && !options.password.empty()) Refuse("a password is given without a user");
  if (options.timeout <= std::chrono::milliseconds::zero()) Refuse("the timeout must be positive");
  const std::string target_label =
      options.target.name.empty() ? std::string("the new cluster") : "new shard " + Quote(options.target.name);
  for (std::size_t i = 0; i < options.existing.size(); ++i) {
    const auto& shard = options.existing[i];
    if (shard.endpoints.empty()) Refuse("shard " + Quote(shard.name) + " has no endpoint");
    if (!options.target.name.empty() && shard.name == options.target.name) {
      Refuse("a shard named " + Quote(shard.name) + " already exists");
    }
    for (const auto& e : shard.endpoints) {
      for (const auto& t : options.target.endpoints) {
        if (NormalizeEndpoint(e) == NormalizeEndpoint(t)) {
          Refuse(target_label + ": endpoint " + NormalizeEndpoint(t) + " belongs to shard " + Quote(shard.name));
        }
      }
    }
  }

  BootstrapReport report;
  report.dry_run = options.dry_run;

  // The shards: reachable, readable, agreeing.
  std::vector<Cluster> shards;
  for (std::size_t i = 0; i < options.existing.size(); ++i) {
    const auto& config = options.existing[i];
    const std::string name = config.name.empty() ? "shard-" + std::to_string(i) : config.name;
    shards.push_back(Open("shard " + Quote(name), config, options));
  }
  std::vector<AuthData> shard_auth;
  std::vector<std::string> labels;
  std::vector<bool> enabled;
  for (auto& shard : shards) {
    shard_auth.push_back(ReadAuth(shard));
    labels.push_back(shard.label);
    enabled.push_back(shard.auth_on);
  }
  if (const auto diff = CompareAuth(labels, enabled, shard_auth); !diff.empty()) {
    Refuse("the shards' users, roles or auth switch differ; make them agree first (/auth/consistency):" + Lines(diff));
  }
  const bool auth_on = shards.front().auth_on;
  const AuthData& wanted = shard_auth.front();
  report.auth_enabled = auth_on;

  // The new cluster: reachable, not a shard, empty.
  Cluster target = Open(target_label, options.target, options);
  if (target.auth_on && !auth_on) Refuse(target.Where() + ": auth is enabled there but not on the shards");
  AuthData have = ReadAuth(target);
  for (const auto& shard : shards) {
    if (shard.cluster_id == target.cluster_id) {
      Refuse(target.Where() + " is the cluster of " + shard.label + " (cluster id " + std::to_string(shard.cluster_id) +
             ")");
    }
  }
  {
    RangeRequest request;
    request.set_key(std::string(1, '\0'));
    request.set_range_end(std::string(1, '\0'));
    request.set_keys_only(true);
    request.set_limit(1);
    RangeResponse response;
    const auto status = target.client().Range(request, &response);
    if (!status.ok()) Refuse(Failure(target, "Range", status));
    if (response.count() > 0) {
      Refuse(target.Where() + " holds " + std::to_string(response.count()) +
             " key(s) (the first: " + Quote(response.kvs(0).key()) + "); a new shard must hold none");
    }
  }

  // Passwords, then what the new cluster already has.
  const auto secrets = ResolvePasswords(options, wanted, auth_on, shards, report);
  std::vector<std::string> conflicts;
  for (const auto& [role, _] : have.roles) {
    if (!wanted.roles.contains(role)) {
      conflicts.push_back("role " + Quote(role) + " exists there but on no shard");
      continue;
    }
    const auto want = wanted.PermsOf(role);
    std::vector<std::string> extra;
    for (const auto& p : have.PermsOf(role)) {
      if (!want.contains(p)) extra.push_back(PrintPerm(p));
    }
    if (!extra.empty()) {
      std::string list;
      for (const auto& e : extra) list += (list.empty() ? "" : ", ") + e;
      conflicts.push_back("role " + Quote(role) + " has there " + list +
                          ", which the shards' role has not (shards: " + PrintPerms(want) + ")");
    }
  }
  for (const auto& [user, roles] : have.users) {
    const auto it = wanted.users.find(user);
    if (it == wanted.users.end()) {
      conflicts.push_back("user " + Quote(user) + " exists there but on no shard");
      continue;
    }
    std::vector<std::string> extra;
    for (const auto& r : roles) {
      if (!it->second.contains(r)) extra.push_back(r);
    }
    if (!extra.empty()) {
      conflicts.push_back("user " + Quote(user) + " has there role(s) " + JoinQuoted(extra) +
                          ", which the shards do not give it (shards: " + PrintRoles(it->second) + ")");
    }
    if (target.auth_on) {
      const auto& secret = secrets.at(user);
      const auto status = Authenticate(*target.anon, user, secret.password);
      const bool no_password = status.error_message().find(kNoPasswordUser) != std::string::npos;
      if (!status.ok() && !no_password && status.error_message() != kAuthFailed) {
        Refuse(Failure(target, "Authenticate as " + Quote(user), status));
      }
      if (secret.no_password != no_password || (!no_password && !status.ok())) {
        conflicts.push_back("user " + Quote(user) + " does not log in there as on the shards (" +
                            (secret.no_password ? "certificate-only on the shards" : "another password") + ")");
      }
    }
  }
  if (!conflicts.empty()) Refuse(target.Where() + " conflicts with the shards:" + Lines(conflicts));

  const LeasePlan leases = PlanLeases(shards, target);
  report.leases_skipped = leases.skipped;
  if (leases.skipped > 0) {
    report.notes.push_back(std::to_string(leases.skipped) +
                           " lease(s) held by fewer than half of the shards left out (revoked by the majority rule)");
  }

  // The writes (counted only, on a dry run). A failure says what was done; a re-run completes.
  const bool write = !options.dry_run;
  auto fail = [&](const std::string& what, const grpc::Status& status) {
    Refuse(Failure(target, what, status) + "\nfailed part-way (" + Done(report) +
           "); the new shard is not ready: re-run the command to complete it (it is safe to repeat)");
  };
  auto auth_write = [&](const std::string& what, auto call, const char* done_already = nullptr) {
    if (!write) return;
    const auto status = AuthCall(target.client(), call);
    if (!status.ok() && !(done_already && status.error_message() == done_already)) fail(what, status);
  };

  for (const int64_t id : leases.revoke) {
    if (write) {
      LeaseRevokeRequest request;
      request.set_id(id);
      LeaseRevokeResponse response;
      const auto status = target.client().LeaseRevoke(request, &response);
      if (!status.ok() && status.error_message() != etcd_errors::LeaseNotFound().message()) {
        fail("LeaseRevoke " + std::to_string(id), status);
      }
    }
    ++report.leases_revoked;
  }
  for (const auto& [id, ttl] : leases.grant) {
    if (write) {
      LeaseGrantRequest request;
      request.set_id(id);
      request.set_ttl(ttl);
      LeaseGrantResponse response;
      const auto status = target.client().LeaseGrant(request, &response);
      if (!status.ok() && status.error_message() != etcd_errors::LeaseExists().message()) {
        fail("LeaseGrant " + std::to_string(id), status);
      }
    }
    ++report.leases_created;
  }

  for (const auto& [role, perms] : wanted.roles) {
    std::set<Perm> present;
    if (have.roles.contains(role)) {
      present = have.PermsOf(role);
    } else {
      AuthRoleAddRequest request;
      request.set_name(role);
      AuthRoleAddResponse response;
      auth_write(
          "RoleAdd " + Quote(role),
          [&](Auth::Stub& stub, grpc::ClientContext* c) { return stub.RoleAdd(c, request, &response); }, kRoleExists);
      ++report.roles_created;
    }
    for (const auto& perm : perms) {  // in etcd's order, which etcd then keeps
      if (present.contains(PermOf(perm))) continue;
      AuthRoleGrantPermissionRequest request;
      request.set_name(role);
      *request.mutable_perm() = perm;
      AuthRoleGrantPermissionResponse response;
      auth_write(
          "RoleGrantPermission " + Quote(role) + " " + PrintPerm(PermOf(perm)),
          [&](Auth::Stub& stub, grpc::ClientContext* c) { return stub.RoleGrantPermission(c, request, &response); });
      ++report.permissions_granted;
    }
  }

  for (const auto& [user, roles] : wanted.users) {
    const auto& secret = secrets.at(user);
    std::set<std::string> present;
    if (const auto it = have.users.find(user); it != have.users.end()) {
      present = it->second;
      // Auth off there, on on the shards: its password may be another one (a user made there
      // by hand); the verified one is set again. With auth on there it was checked above.
      if (auth_on && !target.auth_on && !secret.no_password) {
        AuthUserChangePasswordRequest request;
        request.set_name(user);
        request.set_password(secret.password);
        AuthUserChangePasswordResponse response;
        auth_write("UserChangePassword " + Quote(user), [&](Auth::Stub& stub, grpc::ClientContext* c) {
          return stub.UserChangePassword(c, request, &response);
        });
        ++report.passwords_set;
      }
    } else {
      AuthUserAddRequest request;
      request.set_name(user);
      request.set_password(secret.password);
      if (secret.no_password) request.mutable_options()->set_no_password(true);
      AuthUserAddResponse response;
      auth_write(
          "UserAdd " + Quote(user),
          [&](Auth::Stub& stub, grpc::ClientContext* c) { return stub.UserAdd(c, request, &response); }, kUserExists);
      ++report.users_created;
    }
    for (const auto& role : roles) {
      if (present.contains(role)) continue;
      AuthUserGrantRoleRequest request;
      request.set_user(user);
      request.set_role(role);
      AuthUserGrantRoleResponse response;
      auth_write("UserGrantRole " + Quote(user) + " " + Quote(role),
                 [&](Auth::Stub& stub, grpc::ClientContext* c) { return stub.UserGrantRole(c, request, &response); });
      ++report.roles_granted;
    }
  }

  if (auth_on && !target.auth_on) {
    AuthEnableResponse response;
    auth_write("AuthEnable", [&](Auth::Stub& stub, grpc::ClientContext* c) {
      return stub.AuthEnable(c, AuthEnableRequest{}, &response);
    });
    report.auth_switched_on = true;
  }

  if (!write) {
    report.notes.push_back("dry run: nothing was written");
    return report;
  }

  // Read back, against the shards read again: catches a change made on the shards meanwhile.
  std::vector<AuthData> after;
  labels.clear();
  enabled.clear();
  for (auto& shard : shards) {
    after.push_back(ReadAuth(shard));
    labels.push_back(shard.label);
    enabled.push_back(shard.auth_on);
  }
  Cluster check = Open(target_label, options.target, options);  // asks again whether auth is on
  after.push_back(ReadAuth(check));
  labels.push_back(check.label);
  enabled.push_back(check.auth_on);
  if (const auto diff = CompareAuth(labels, enabled, after); !diff.empty()) {
    Refuse(target.Where() + ": after the writes (" + Done(report) +
           ") its users or roles differ from the shards' (changed on the shards meanwhile?); re-run the command:" +
           Lines(diff));
  }
  return report;
}

}  // namespace esp::meta
