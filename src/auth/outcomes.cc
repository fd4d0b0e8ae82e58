#include "auth/outcomes.h"

#include <algorithm>

namespace esp::auth {
namespace {

std::string JoinShards(const std::vector<std::string>& shards) {
  std::string out;
  for (const auto& s : shards) {
    if (!out.empty()) out += ", ";
    out += "\"" + s + "\"";
  }
  return out;
}

bool SameStatus(const Status& a, const Status& b) { return a.code() == b.code() && a.message() == b.message(); }

}  // namespace

bool IsShardDown(const Status& status) {
  return (status.code() == StatusCode::kUnavailable || status.code() == StatusCode::kDeadlineExceeded) &&
         !status.message().starts_with("etcdserver:");
}

Status DecideChange(const std::string& method, const std::vector<ShardResult>& results,
                    const std::string& benign_error) {
  std::vector<std::string> applied;
  std::vector<std::string> already;
  std::vector<std::string> failed;
  const Status* first_failure = nullptr;
  bool all_same_failure = true;
  for (const auto& r : results) {
    if (r.status.ok()) {
      applied.push_back(r.shard);
    } else if (!benign_error.empty() && r.status.message() == benign_error) {
      already.push_back(r.shard);
    } else {
      failed.push_back(r.shard);
      if (first_failure == nullptr) first_failure = &r.status;
      all_same_failure = all_same_failure && SameStatus(r.status, *first_failure);
    }
  }
  if (failed.empty()) {
    if (!applied.empty() || results.empty()) return Status::Ok();
    return results.front().status;  // "already exists" everywhere: etcd's own answer
  }
  if (applied.empty() && already.empty() && all_same_failure) return *first_failure;
  // Shards now differ (or may): say which, so the operator can repeat the request or repair.
  std::string message = "etcd-sharding-proxy: " + method + " failed on shard(s) " + JoinShards(failed) + ": " +
                        first_failure->message();
  if (!applied.empty() || !already.empty()) {
    applied.insert(applied.end(), already.begin(), already.end());
    message += "; it took effect on shard(s) " + JoinShards(applied) +
               ", so the shards' auth data may differ: repeat the request (it is safe to repeat) and check "
               "/auth/consistency";
  }
  return Status(first_failure->code(), std::move(message));
}

ReadDecision DecideRead(const std::string& method, const std::vector<ShardResult>& results) {
  for (const auto& r : results) {
    if (IsShardDown(r.status)) return {r.status, 0};
  }
  // Group shards by identical answer, keeping first-seen order for the message.
  std::vector<std::pair<std::size_t, std::vector<std::string>>> groups;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) {
      const auto& rep = results[g.first];
      return SameStatus(rep.status, r.status) && rep.payload == r.payload;
    });
    if (it == groups.end()) {
      groups.push_back({i, {r.shard}});
    } else {
      it->second.push_back(r.shard);
    }
  }
  if (groups.size() <= 1) {
    if (results.empty()) return {Status(StatusCode::kInternal, "etcd-sharding-proxy: no shards"), 0};
    return {results.front().status, 0};
  }
  std::string message = "etcd-sharding-proxy: " + method + ": the shards' auth data differ:";
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const auto& rep = results[groups[g].first];
    message += (g == 0 ? " " : "; ") + JoinShards(groups[g].second) + " answer " +
               (rep.status.ok() ? "#" + std::to_string(g + 1) : "\"" + rep.status.message() + "\"");
  }
  message += " (see /auth/consistency)";
  return {Status(StatusCode::kFailedPrecondition, std::move(message)), 0};
}

}  // namespace esp::auth
