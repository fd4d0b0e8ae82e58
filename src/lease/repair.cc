#include "lease/repair.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>

#include "common/etcd_errors.h"
#include "common/methods.h"
#include "etcdserverpb/rpc.pb.h"
#include "lease/fanout.h"
#include "lease/proxy_calls.h"

namespace esp {
namespace {

using etcdserverpb::LeaseGrantRequest;
using etcdserverpb::LeaseGrantResponse;
using etcdserverpb::LeaseRevokeRequest;
using etcdserverpb::LeaseRevokeResponse;
using etcdserverpb::LeaseTimeToLiveRequest;
using etcdserverpb::LeaseTimeToLiveResponse;

// Repair calls are the proxy's own: bounded, so a hung shard does not hold a client's Put long.
constexpr std::chrono::seconds kRepairTimeout(2);

bool IsMessage(const Status& status, const Status& expected) { return status.message() == expected.message(); }

// The split that TimeToLive answers describe: -1 is "not here", an error "did not answer".
LeaseSplit SplitOf(int64_t id, const std::vector<ShardOutcome<LeaseTimeToLiveResponse>>& outcomes) {
  LeaseSplit split{.id = id, .holders = {}, .lacking = {}, .unknown = 0, .ttl = INT64_MAX};
  for (const auto& o : outcomes) {
    if (!o.status.ok()) {
      ++split.unknown;
    } else if (o.response.ttl() < 0) {
      split.lacking.push_back(o.shard);
    } else {
      split.holders.push_back(o.shard);
      // etcd truncates the remaining seconds: 1.9 s reads 1. Rounded up (never beyond the
      // granted TTL), a lease granted again right after a renewal keeps its granted TTL instead
      // of shrinking by a second on every repair; it may outlive its other copies by < 1 s.
      split.ttl = std::min(split.ttl, std::min(o.response.ttl() + 1, o.response.grantedttl()));
    }
  }
  return split;
}

}  // namespace

SplitVerdict JudgeSplit(const LeaseSplit& split) {
  const std::size_t holders = split.holders.size();
  const std::size_t lacking = split.lacking.size();
  if (holders >= lacking + split.unknown) return SplitVerdict::kAlive;
  if (lacking > holders + split.unknown) return SplitVerdict::kGone;
  return SplitVerdict::kUndecided;
}

LeaseRepair::LeaseRepair(const TopologyHolder& topology, std::shared_ptr<PendingLeases> pending)
    : topology_(topology), pending_(std::move(pending)) {}

std::size_t LeaseRepair::repairs() const {
  const std::lock_guard lock(mu_);
  return repairs_;
}

void LeaseRepair::Finish(int64_t id) {
  const std::lock_guard lock(mu_);
  in_flight_.erase(id);
}

SplitVerdict LeaseRepair::Resolve(const LeaseSplit& split, std::function<void(bool)> done) {
  const SplitVerdict verdict = JudgeSplit(split);
  const bool alive = verdict == SplitVerdict::kAlive && !split.lacking.empty() && split.ttl > 0;
  const bool gone = verdict == SplitVerdict::kGone && !split.holders.empty();
  if (!alive && !gone) {
    if (done) done(false);
    return verdict;
  }
  const bool waited_for = static_cast<bool>(done);
  {
    const std::lock_guard lock(mu_);
    const bool started = in_flight_.insert(split.id).second;
    if (!started && !waited_for) return verdict;
    ++repairs_;
  }
  auto finish = [self = shared_from_this(), id = split.id, done = std::move(done)](bool applied) {
    self->Finish(id);
    if (done) done(applied);
  };
  if (gone) {
    RevokeOn(split, std::move(finish));
  } else if (waited_for) {
    GrantOn(split, std::move(finish));
  } else {
    // Seen by a keep-alive or TimeToLive: the split may be a revoke still under way (revoked on
    // some shards, not yet on the others). Look again once before granting anything.
    Confirm(split.id, std::move(finish));
  }
  return verdict;
}

void LeaseRepair::GrantOn(const LeaseSplit& split, std::function<void(bool)> finish) {
  // The remaining TTL, not the granted one: the lease must not outlive its other copies.
  // (etcd raises a TTL below its minimum, as for any grant.)
  spdlog::info("lease {:x}: granting on {} shard(s) that lack it, TTL {} s", split.id, split.lacking.size(), split.ttl);
  LeaseGrantRequest request;
  request.set_id(split.id);
  request.set_ttl(split.ttl);
  CallShardsAsProxy<LeaseGrantResponse>(credentials_, topology_.Get(), split.lacking, methods::kLeaseGrant,
                                        kRepairTimeout, request, kWrite,
                                 [finish = std::move(finish)](std::vector<ShardOutcome<LeaseGrantResponse>> outcomes) {
                                   // "Already exists": another proxy or round repaired it first.
                                   finish(std::all_of(outcomes.begin(), outcomes.end(), [](const auto& o) {
                                     return o.status.ok() || IsMessage(o.status, etcd_errors::LeaseExists());
                                   }));
                                 });
}

void LeaseRepair::RevokeOn(const LeaseSplit& split, std::function<void(bool)> finish) {
  spdlog::info("lease {:x}: revoked on most shards; revoking it on the {} that still hold it", split.id,
               split.holders.size());
  LeaseRevokeRequest request;
  request.set_id(split.id);
  // With auth on, etcd revokes only for a user allowed to delete the lease's keys.
  CallShardsAsProxy<LeaseRevokeResponse>(credentials_, topology_.Get(), split.holders, methods::kLeaseRevoke,
                                         kRepairTimeout, request, kWrite,
                                  [finish = std::move(finish)](std::vector<ShardOutcome<LeaseRevokeResponse>> outcomes) {
                                    finish(std::all_of(outcomes.begin(), outcomes.end(), [](const auto& o) {
                                      return o.status.ok() || IsMessage(o.status, etcd_errors::LeaseNotFound());
                                    }));
                                  });
}

void LeaseRepair::Confirm(int64_t id, std::function<void(bool)> finish) {
  const auto topology = topology_.Get();
  LeaseTimeToLiveRequest request;
  request.set_id(id);
  // As the proxy: etcd 3.5+ with auth on answers TimeToLive only to an authenticated user.
  CallShardsAsProxy<LeaseTimeToLiveResponse>(
      credentials_, topology, AllShards(*topology), methods::kLeaseTimeToLive, kRepairTimeout, request, kRead,
      [self = shared_from_this(), id, finish = std::move(finish)](
          std::vector<ShardOutcome<LeaseTimeToLiveResponse>> outcomes) mutable {
        const LeaseSplit split = SplitOf(id, outcomes);
        if (JudgeSplit(split) != SplitVerdict::kAlive || split.lacking.empty() || split.ttl <= 0) return finish(false);
        self->GrantOn(split, std::move(finish));
      });
}

void LeaseRepair::OnLeaseNotFound(std::size_t shard, std::vector<int64_t> leases, std::function<void(bool)> done) {
  pending_->OnLeaseNotFound(
      shard, leases, [self = shared_from_this(), shard, leases, done = std::move(done)](bool granted) mutable {
        if (granted) return done(true);
        // Answers once every lease has been probed: true if any of them was granted.
        struct Join {
          std::atomic<std::size_t> remaining;
          std::atomic<bool> any{false};
          std::function<void(bool)> done;
        };
        auto join = std::make_shared<Join>();
        join->remaining.store(leases.size());
        join->done = std::move(done);
        for (int64_t id : leases) {
          self->Probe(shard, id, [join](bool ok) {
            if (ok) join->any = true;
            if (join->remaining.fetch_sub(1) == 1) join->done(join->any.load());
          });
        }
      });
}

// Asks every shard but `shard` (which just said "not found") whether it holds `id`.
void LeaseRepair::Probe(std::size_t shard, int64_t id, std::function<void(bool)> done) {
  const auto topology = topology_.Get();
  std::vector<std::size_t> others;
  for (std::size_t s : AllShards(*topology)) {
    if (s != shard) others.push_back(s);
  }
  if (others.empty()) return done(false);
  LeaseTimeToLiveRequest request;
  request.set_id(id);
  CallShardsAsProxy<LeaseTimeToLiveResponse>(
      credentials_, topology, others, methods::kLeaseTimeToLive, kRepairTimeout, request, kRead,
      [self = shared_from_this(), shard, id, done = std::move(done)](
          std::vector<ShardOutcome<LeaseTimeToLiveResponse>> outcomes) mutable {
        LeaseSplit split = SplitOf(id, outcomes);
        split.lacking.push_back(shard);  // it just said "not found"
        if (split.holders.empty()) return done(false);
        // Only `shard` is granted here: the request is waiting for it. Other lacking shards are
        // repaired by the next keep-alive or TimeToLive that sees the split.
        if (JudgeSplit(split) != SplitVerdict::kAlive) {
          self->Resolve(split);  // revoked on most shards: drop the leftovers; the client gets "not found"
          return done(false);
        }
        split.lacking = {shard};
        self->Resolve(split, std::move(done));
      });
}

}  // namespace esp
