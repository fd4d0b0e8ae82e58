#pragma once
// Lease grants and revokes that could not reach a shard because it was down. Kept per proxy
// process, in memory: they are applied when the shard answers again (a housekeeping tick tries
// every second) or the first time a request needs the lease there (LeaseHook: a Put that the
// shard refused with "requested lease not found").
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "auth/proxy_credentials.h"
#include "kv/lease_hook.h"
#include "upstream/topology.h"

namespace esp {

class PendingLeases final : public LeaseHook, public std::enable_shared_from_this<PendingLeases> {
 public:
  explicit PendingLeases(const TopologyHolder& topology) : topology_(topology) {}

  // The lease `id` (TTL `ttl` s) exists on the shards that were up but not on `shard` (its name:
  // a shard keeps it across map changes, its index may not).
  void AddGrant(const std::string& shard, int64_t id, int64_t ttl);
  // The lease was revoked while `shard` was down: revoke it there when it answers.
  void AddRevoke(const std::string& shard, int64_t id);
  // The lease was revoked on the shards that are up: forget its pending grants.
  void DropGrants(int64_t id);
  // A keep-alive renewed the lease on the shards that are up: its remaining TTL restarts.
  void Touch(int64_t id);
  // Tries the pending operations once (housekeeping tick). Per shard they go one at a time and
  // stop at the first that finds the shard still down: a shard that stays down costs one failed
  // call per tick, however many leases wait for it.
  void Flush();
  std::size_t size() const;

  void OnLeaseNotFound(std::size_t shard, std::vector<int64_t> leases, std::function<void(bool)> done) override;

  // The proxy's own identity for its revokes and grants (with auth on, a revoke needs the right
  // to delete the lease's keys, and etcd 3.5+ grants only to an authenticated user). Unset: none.
  void SetCredentials(ProxyCredentials credentials) { credentials_ = std::move(credentials); }

 private:
  using Key = std::pair<std::string, int64_t>;  // shard name, lease id
  struct Entry {
    bool revoke = false;
    int64_t ttl = 0;
    std::chrono::steady_clock::time_point refreshed;
  };

  enum class Outcome { kApplied, kShardDown, kFailed };
  static Outcome ToOutcome(bool applied, const Status& status);

  // Seconds the lease has left, rounded up; <= 0 when it has expired on the other shards.
  static int64_t RemainingTtl(const Entry& entry);
  void Apply(const Key& key, const Entry& entry, std::function<void(Outcome)> done);
  void FlushShard(const std::string& shard, std::shared_ptr<std::vector<std::pair<Key, Entry>>> entries,
                  std::size_t next);
  void Settle(const Key& key, bool revoke, bool applied);

  const TopologyHolder& topology_;
  ProxyCredentials credentials_;
  mutable std::mutex mu_;
  std::map<Key, Entry> entries_;
  std::set<std::string> flushing_;  // shards with a flush under way
};

}  // namespace esp
