#include "auth/consistency.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>

#include "config/config.h"
#include "etcdserverpb/rpc.pb.h"
#include "upstream/every_shard.h"

namespace esp::auth {
namespace {

using namespace etcdserverpb;

std::string Path(const char* name) { return std::string("/etcdserverpb.Auth/") + name; }

template <class Resp, class Req>
ShardAnswer<Resp> CallAndWait(ShardTransport& shard, const char* method, const Metadata& metadata, const Req& request,
                              std::chrono::milliseconds timeout) {
  auto ctx = std::make_shared<CallContext>(Clock::now() + timeout, metadata);
  return AskShard<Resp>(shard, Path(method), ctx, request, kRead).get();
}

std::string PrintPermission(const authpb::Permission& p) {
  static const char* const kTypes[] = {"read", "write", "readwrite"};
  const int type = p.permtype();
  std::string out = (type >= 0 && type <= 2) ? kTypes[type] : "type" + std::to_string(type);
  out += " [\"" + PrintableKey(p.key()) + "\", \"" + PrintableKey(p.range_end()) + "\")";
  return out;
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return "[" + out + "]";
}

// For each name present on any shard: which shards hold which value ("missing" when absent).
void CompareMaps(const std::string& kind, const std::vector<ShardAuthState>& states,
                 std::map<std::string, std::string> ShardAuthState::*field, std::vector<std::string>& out) {
  std::set<std::string> names;
  for (const auto& s : states) {
    if (!s.error.empty()) continue;
    for (const auto& [name, _] : s.*field) names.insert(name);
  }
  for (const auto& name : names) {
    // Grouped by value, in shard order, so the message reads in the config's order.
    std::vector<std::pair<std::string, std::vector<std::string>>> by_value;
    for (const auto& s : states) {
      if (!s.error.empty()) continue;
      const auto it = (s.*field).find(name);
      const std::string value = it == (s.*field).end() ? "missing" : it->second;
      auto group = std::find_if(by_value.begin(), by_value.end(), [&](const auto& g) { return g.first == value; });
      if (group == by_value.end()) {
        by_value.push_back({value, {s.shard}});
      } else {
        group->second.push_back(s.shard);
      }
    }
    if (by_value.size() <= 1) continue;
    std::string line = kind + " \"" + name + "\" differs:";
    for (const auto& [value, shards] : by_value) line += " " + Join(shards) + " " + value + ";";
    line.pop_back();
    out.push_back(std::move(line));
  }
}

}  // namespace

// etcd 3.4 has no AuthStatus; whether auth is on shows in Authenticate ("authentication is not
// enabled") or, without credentials, in UserList refusing a caller without a token.
ShardAuthState ReadShardAuthState(ShardTransport& shard, const std::string& name,
                                  const std::optional<Credentials>& credentials, std::chrono::milliseconds timeout) {
  ShardAuthState state;
  state.shard = name;
  Metadata metadata;
  if (credentials) {
    AuthenticateRequest request;
    request.set_name(credentials->user);
    request.set_password(credentials->password);
    auto [status, response] = CallAndWait<AuthenticateResponse>(shard, "Authenticate", {}, request, timeout);
    if (status.ok()) {
      state.enabled = true;
      metadata.emplace_back("token", response.token());
    } else if (status.message() == "etcdserver: authentication is not enabled") {
      state.enabled = false;
    } else {
      state.error = "authenticate as \"" + credentials->user + "\": " + status.message();
      return state;
    }
  }
  auto [users_status, users] = CallAndWait<AuthUserListResponse>(shard, "UserList", metadata, AuthUserListRequest{}, timeout);
  if (!users_status.ok()) {
    if (!credentials && users_status.message() == "etcdserver: user name is empty") {
      state.enabled = true;
      state.error = "auth is enabled: configure `credentials` to compare users and roles";
    } else {
      state.error = "UserList: " + users_status.message();
    }
    return state;
  }
  if (!state.enabled) state.enabled = false;  // UserList without a token: auth is off
  for (const auto& user : users.users()) {
    AuthUserGetRequest request;
    request.set_name(user);
    auto [status, response] = CallAndWait<AuthUserGetResponse>(shard, "UserGet", metadata, request, timeout);
    if (!status.ok()) {
      state.error = "UserGet " + user + ": " + status.message();
      return state;
    }
    state.users[user] = "roles " + Join({response.roles().begin(), response.roles().end()});
  }
  auto [roles_status, roles] = CallAndWait<AuthRoleListResponse>(shard, "RoleList", metadata, AuthRoleListRequest{}, timeout);
  if (!roles_status.ok()) {
      state.error = "RoleList: " + roles_status.message();
      return state;
    }
  for (const auto& role : roles.roles()) {
    AuthRoleGetRequest request;
    request.set_role(role);
    auto [status, response] = CallAndWait<AuthRoleGetResponse>(shard, "RoleGet", metadata, request, timeout);
    if (!status.ok()) {
      state.error = "RoleGet " + role + ": " + status.message();
      return state;
    }
    std::vector<std::string> perms;
    for (const auto& p : response.perm()) perms.push_back(PrintPermission(p));
    state.roles[role] = "permissions " + Join(perms);
  }
  return state;
}

ConsistencyReport CompareAuthStates(const std::vector<ShardAuthState>& states) {
  ConsistencyReport report;
  std::map<std::string, std::vector<std::string>> by_enabled;
  for (const auto& s : states) {
    if (!s.error.empty()) report.errors.push_back("shard \"" + s.shard + "\": " + s.error);
    if (s.enabled) by_enabled[*s.enabled ? "enabled" : "disabled"].push_back(s.shard);
  }
  if (by_enabled.size() > 1) {
    report.differences.push_back("auth is enabled on " + Join(by_enabled["enabled"]) + " but disabled on " +
                                 Join(by_enabled["disabled"]));
  }
  CompareMaps("user", states, &ShardAuthState::users, report.differences);
  CompareMaps("role", states, &ShardAuthState::roles, report.differences);
  return report;
}

ConsistencyReport CheckAuthConsistency(const Topology& topology, const std::optional<Credentials>& credentials,
                                       std::chrono::milliseconds timeout) {
  std::vector<ShardAuthState> states;
  for (std::size_t i = 0; i < topology.shards.size(); ++i) {
    states.push_back(ReadShardAuthState(*topology.shards[i], topology.map.shard(i).name, credentials, timeout));
  }
  return CompareAuthStates(states);
}

std::string ConsistencyReport::SummaryJson(std::chrono::seconds age) const {
  nlohmann::json j;
  j["consistent"] = consistent();
  j["differences"] = differences.size();
  j["errors"] = errors.size();
  j["checked_seconds_ago"] = age.count();
  if (!consistent()) j["detail"] = "in the proxy's log, lines \"auth consistency: ...\"";
  return j.dump() + "\n";
}

}  // namespace esp::auth
