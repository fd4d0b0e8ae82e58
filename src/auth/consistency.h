#pragma once
// The auth consistency check: reads users, roles, permissions and whether auth is enabled from
// every shard and names what differs. Run at start-up (logged) and on demand
// (/auth/consistency on the operator HTTP listener). It blocks its caller (a start-up thread or
// the HTTP listener's thread), never a client request.
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "upstream/topology.h"

namespace esp::auth {

// The proxy's own identity on the shards (config `credentials:`). Without it the check can only
// compare shards while auth is disabled; with auth on it reports that it cannot look.
struct Credentials {
  std::string user;
  std::string password;
};

struct ShardAuthState {
  std::string shard;
  std::string error;  // non-empty: the shard could not be read completely
  std::optional<bool> enabled;
  std::map<std::string, std::string> users;  // name -> its roles, printed
  std::map<std::string, std::string> roles;  // name -> its permissions, printed
};

struct ConsistencyReport {
  std::vector<std::string> differences;
  std::vector<std::string> errors;  // shards that could not be read
  bool consistent() const { return differences.empty() && errors.empty(); }
  bool operator==(const ConsistencyReport&) const = default;
  // What the operator endpoint shows anyone who can reach it: the verdict and counts, not the
  // user and role names or permission ranges (those go to the log). `age` since the check ran.
  std::string SummaryJson(std::chrono::seconds age) const;
};

// Reads one shard (blocking, each call bounded by `timeout`).
ShardAuthState ReadShardAuthState(ShardTransport& shard, const std::string& name,
                                  const std::optional<Credentials>& credentials, std::chrono::milliseconds timeout);

// Pure comparison, unit-tested.
ConsistencyReport CompareAuthStates(const std::vector<ShardAuthState>& states);

ConsistencyReport CheckAuthConsistency(const Topology& topology, const std::optional<Credentials>& credentials,
                                       std::chrono::milliseconds timeout = std::chrono::seconds(5));

}  // namespace esp::auth
