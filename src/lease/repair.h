#pragma once
// Stateless repair of a "split" lease: one that some shards hold and others do not. A split
// arises when a shard missed a grant or a revoke because it was down, or let the lease expire on
// its own (it was unreachable for longer than the TTL while keep-alives renewed it elsewhere).
// Any proxy can repair it, without knowing what happened, because grant and revoke only succeed
// when they leave a lasting majority behind:
//   - a grant succeeds only if at least as many shards granted as could not be reached;
//   - a revoke succeeds only if more than half of the shards no longer hold the lease.
// So a split in which the holders are at least half of the shards is a lease that was granted
// (the others must get it), and one in which they are fewer than half is a lease that was
// revoked (the holders must drop it). Shards that did not answer could be either; the proxy
// acts only when the verdict holds whatever they hold.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "kv/lease_hook.h"
#include "lease/pending.h"
#include "lease/proxy_calls.h"
#include "upstream/topology.h"

namespace esp {

struct LeaseSplit {
  int64_t id = 0;
  std::vector<std::size_t> holders;  // shards that have the lease
  std::vector<std::size_t> lacking;  // shards that answered they do not
  std::size_t unknown = 0;           // shards that did not answer
  int64_t ttl = 0;                   // smallest remaining TTL among the holders (s)
};

enum class SplitVerdict {
  kAlive,      // grant it on the lacking shards
  kGone,       // revoke it on the holders
  kUndecided,  // the shards that did not answer could tip it either way: leave it
};

SplitVerdict JudgeSplit(const LeaseSplit& split);

class LeaseRepair final : public LeaseHook, public std::enable_shared_from_this<LeaseRepair> {
 public:
  LeaseRepair(const TopologyHolder& topology, std::shared_ptr<PendingLeases> pending);

  // Makes the shards agree on a split lease (grant on the lacking shards, or revoke on the
  // holders) and returns the verdict at once. `done(true)` once the repair was applied. With no
  // `done`, a repair of the same lease already under way is not started again (keep-alive
  // rounds report the same split many times a second).
  SplitVerdict Resolve(const LeaseSplit& split, std::function<void(bool)> done = {});

  // KV: `shard` answered "requested lease not found". This proxy's pending grants first (fast
  // path); otherwise the other shards are asked for the lease's TimeToLive, and the lease is
  // granted on `shard` if it is alive by the rule above.
  void OnLeaseNotFound(std::size_t shard, std::vector<int64_t> leases, std::function<void(bool)> done) override;

  // The credentials of its grants and revokes (the proxy's own user). Set before first use.
  void SetCredentials(ProxyCredentials credentials) { credentials_ = std::move(credentials); }
  const ProxyCredentials& credentials() const { return credentials_; }

  // Repairs started since the process began (grants and revokes), for tests and metrics.
  std::size_t repairs() const;

 private:
  void Probe(std::size_t shard, int64_t id, std::function<void(bool)> done);
  void GrantOn(const LeaseSplit& split, std::function<void(bool)> finish);
  void RevokeOn(const LeaseSplit& split, std::function<void(bool)> finish);
  // Asks every shard again and grants on those that lack the lease if it is still alive.
  void Confirm(int64_t id, std::function<void(bool)> finish);
  void Finish(int64_t id);

  const TopologyHolder& topology_;
  std::shared_ptr<PendingLeases> pending_;
  ProxyCredentials credentials_;
  mutable std::mutex mu_;
  std::set<int64_t> in_flight_;
  std::size_t repairs_ = 0;
};

}  // namespace esp
