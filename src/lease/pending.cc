#include "lease/pending.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <vector>

#include "common/etcd_errors.h"
#include "common/methods.h"
#include "etcdserverpb/rpc.pb.h"
#include "lease/fanout.h"
#include "lease/proxy_calls.h"

namespace esp {
namespace {

// How long one pending grant or revoke waits for its shard.
constexpr std::chrono::seconds kApplyTimeout(5);

}  // namespace

PendingLeases::Outcome PendingLeases::ToOutcome(bool applied, const Status& status) {
  if (applied) return Outcome::kApplied;
  return IsShardDown(status) ? Outcome::kShardDown : Outcome::kFailed;
}

void PendingLeases::AddGrant(const std::string& shard, int64_t id, int64_t ttl) {
  const std::lock_guard lock(mu_);
  entries_[{shard, id}] = Entry{.revoke = false, .ttl = ttl, .refreshed = std::chrono::steady_clock::now()};
}

void PendingLeases::AddRevoke(const std::string& shard, int64_t id) {
  // Replaces a pending grant too: a grant whose answer was lost may still have reached the shard.
  const std::lock_guard lock(mu_);
  entries_[{shard, id}] = Entry{.revoke = true, .ttl = 0, .refreshed = std::chrono::steady_clock::now()};
}

void PendingLeases::DropGrants(int64_t id) {
  const std::lock_guard lock(mu_);
  std::erase_if(entries_, [id](const auto& item) { return item.first.second == id && !item.second.revoke; });
}

void PendingLeases::Touch(int64_t id) {
  const std::lock_guard lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  for (auto& [key, entry] : entries_) {
    if (key.second == id && !entry.revoke) entry.refreshed = now;
  }
}

std::size_t PendingLeases::size() const {
  const std::lock_guard lock(mu_);
  return entries_.size();
}

int64_t PendingLeases::RemainingTtl(const Entry& entry) {
  const auto elapsed = std::chrono::steady_clock::now() - entry.refreshed;
  const auto elapsed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count();
  return (entry.ttl * 1000 - elapsed_ms + 999) / 1000;
}

void PendingLeases::Flush() {
  std::map<std::string, std::shared_ptr<std::vector<std::pair<Key, Entry>>>> by_shard;
  {
    const std::lock_guard lock(mu_);
    for (const auto& item : entries_) {
      const std::string& shard = item.first.first;
      if (flushing_.contains(shard)) continue;
      auto& list = by_shard[shard];
      if (!list) list = std::make_shared<std::vector<std::pair<Key, Entry>>>();
      list->push_back(item);
    }
    for (const auto& [shard, list] : by_shard) flushing_.insert(shard);
  }
  for (auto& [shard, list] : by_shard) FlushShard(shard, list, 0);
}

void PendingLeases::FlushShard(const std::string& shard, std::shared_ptr<std::vector<std::pair<Key, Entry>>> entries,
                               std::size_t next) {
  if (next == entries->size()) {
    const std::lock_guard lock(mu_);
    flushing_.erase(shard);
    return;
  }
  const auto& [key, entry] = (*entries)[next];
  Apply(key, entry, [self = shared_from_this(), shard, entries, next](Outcome outcome) {
    if (outcome == Outcome::kShardDown) {
      const std::lock_guard lock(self->mu_);
      self->flushing_.erase(shard);
      return;
    }
    self->FlushShard(shard, entries, next + 1);
  });
}

void PendingLeases::OnLeaseNotFound(std::size_t shard_index, std::vector<int64_t> leases,
                                    std::function<void(bool)> done) {
  const auto topology = topology_.Get();
  if (shard_index >= topology->map.size()) return done(false);
  const std::string& shard = topology->map.shard(shard_index).name;
  std::vector<std::pair<Key, Entry>> grants;
  {
    const std::lock_guard lock(mu_);
    for (int64_t lease : leases) {
      const auto it = entries_.find({shard, lease});
      if (it != entries_.end() && !it->second.revoke) grants.emplace_back(it->first, it->second);
    }
  }
  if (grants.empty()) return done(false);
  // Answers once every grant has completed: true if any of them was applied.
  struct Join {
    std::atomic<std::size_t> remaining;
    std::atomic<bool> any{false};
    std::function<void(bool)> done;
  };
  auto join = std::make_shared<Join>();
  join->remaining.store(grants.size());
  join->done = std::move(done);
  for (const auto& [key, entry] : grants) {
    Apply(key, entry, [join](Outcome outcome) {
      if (outcome == Outcome::kApplied) join->any = true;
      if (join->remaining.fetch_sub(1) == 1) join->done(join->any.load());
    });
  }
}

void PendingLeases::Apply(const Key& key, const Entry& entry, std::function<void(Outcome)> done) {
  const auto topology = topology_.Get();
  const auto index = topology->map.Find(key.first);
  if (!index) {  // the shard left the map: nothing of the lease's is there to keep in step
    Settle(key, entry.revoke, /*applied=*/true);
    return done(Outcome::kFailed);
  }
  auto self = shared_from_this();
  // Both with the proxy's credentials: etcd 3.5+ with auth on grants and revokes only for an
  // authenticated user. A refused token is forgotten; the next flush authenticates again.
  if (entry.revoke) {
    etcdserverpb::LeaseRevokeRequest request;
    request.set_id(key.second);
    CallShardAsProxy<etcdserverpb::LeaseRevokeResponse>(
        credentials_, topology, *index, methods::kLeaseRevoke, kApplyTimeout, request, {},
        [self, key, done = std::move(done)](Status status, etcdserverpb::LeaseRevokeResponse) {
          // Not found: the lease expired there on its own, which is as good.
          const bool applied = status.ok() || status.message() == etcd_errors::LeaseNotFound().message();
          self->Settle(key, /*revoke=*/true, applied);
          done(ToOutcome(applied, status));
        },
        /*retry=*/false);
    return;
  }
  const int64_t ttl = RemainingTtl(entry);
  if (ttl <= 0) {  // expired on the other shards meanwhile: nothing left to grant
    Settle(key, /*revoke=*/false, /*applied=*/true);
    return done(Outcome::kFailed);
  }
  etcdserverpb::LeaseGrantRequest request;
  request.set_id(key.second);
  request.set_ttl(ttl);
  CallShardAsProxy<etcdserverpb::LeaseGrantResponse>(
      credentials_, topology, *index, methods::kLeaseGrant, kApplyTimeout, request, {},
      [self, key, ttl, done = std::move(done)](Status status, etcdserverpb::LeaseGrantResponse) {
        // Already exists: an earlier attempt (or one whose answer was lost) got there first.
        const bool applied = status.ok() || status.message() == etcd_errors::LeaseExists().message();
        if (applied) spdlog::info("lease {:x}: granted on shard {} with the remaining TTL {} s", key.second, key.first, ttl);
        self->Settle(key, /*revoke=*/false, applied);
        done(ToOutcome(applied, status));
      },
      /*retry=*/false);
}

void PendingLeases::Settle(const Key& key, bool revoke, bool applied) {
  if (!applied) return;
  const std::lock_guard lock(mu_);
  const auto it = entries_.find(key);
  // Only the operation that was applied is forgotten: a revoke queued meanwhile must still run.
  if (it != entries_.end() && it->second.revoke == revoke) entries_.erase(it);
}

}  // namespace esp
