#include "lease/lease_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "common/etcd_errors.h"
#include "common/methods.h"
#include "lease/fanout.h"
#include "lease/lease_ids.h"
#include "lease/revoke_check.h"
#include "transport/auth_metadata.h"

namespace esp {
namespace {

using etcdserverpb::LeaseGrantRequest;
using etcdserverpb::LeaseGrantResponse;
using etcdserverpb::LeaseLeasesRequest;
using etcdserverpb::LeaseLeasesResponse;
using etcdserverpb::LeaseRevokeRequest;
using etcdserverpb::LeaseRevokeResponse;
using etcdserverpb::LeaseTimeToLiveRequest;
using etcdserverpb::LeaseTimeToLiveResponse;

// A proxy-chosen id that collides with a live lease is replaced this many times.
constexpr int kGrantRetries = 3;
// How long a lease call waits for one shard before treating it as down (see BoundedContext).
constexpr std::chrono::milliseconds kShardTimeout(2000);

bool IsNotFound(const Status& status) { return status.message() == etcd_errors::LeaseNotFound().message(); }

// Undoes grants of a lease the client will be told it did not get.
// As the client that asked for the grant (etcd 3.5+ with auth on revokes only for an authenticated
// user; a lease without keys needs nothing more).
void RevokeQuietly(const Topology& topology, const std::vector<std::size_t>& shards, int64_t id,
                   const Metadata& metadata) {
  LeaseRevokeRequest request;
  request.set_id(id);
  auto ctx = std::make_shared<CallContext>(Clock::now() + std::chrono::seconds(5), metadata);
  CallShards<LeaseRevokeResponse>(topology, shards, methods::kLeaseRevoke, ctx, request, kWrite,
                                  [id](std::vector<ShardOutcome<LeaseRevokeResponse>> outcomes) {
                                    for (const auto& o : outcomes) {
                                      if (!o.status.ok()) {
                                        spdlog::warn("lease {:x}: cleanup revoke on shard {} failed: {}", id, o.shard,
                                                     o.status.message());
                                      }
                                    }
                                  });
}

}  // namespace

LeaseService::LeaseService(const TopologyHolder& topology, std::shared_ptr<PendingLeases> pending,
                           std::shared_ptr<KeepAliveHub> keepalive, std::shared_ptr<LeaseRepair> repair)
    : topology_(topology), pending_(std::move(pending)), keepalive_(std::move(keepalive)), repair_(std::move(repair)) {}

void LeaseService::Register(Router& router) {
  router.AddTyped<LeaseGrantRequest, LeaseGrantResponse>(
      methods::kLeaseGrant, [this](CallContextPtr ctx, const LeaseGrantRequest& r, GrantDone done) {
        Grant(std::move(ctx), r, std::move(done));
      });
  router.AddTyped<LeaseRevokeRequest, LeaseRevokeResponse>(
      methods::kLeaseRevoke,
      [this](CallContextPtr ctx, const LeaseRevokeRequest& r, std::function<void(Status, LeaseRevokeResponse)> done) {
        Revoke(std::move(ctx), r, std::move(done));
      });
  router.AddTyped<LeaseTimeToLiveRequest, LeaseTimeToLiveResponse>(
      methods::kLeaseTimeToLive, [this](CallContextPtr ctx, const LeaseTimeToLiveRequest& r,
                                        std::function<void(Status, LeaseTimeToLiveResponse)> done) {
        TimeToLive(std::move(ctx), r, std::move(done));
      });
  router.AddTyped<LeaseLeasesRequest, LeaseLeasesResponse>(
      methods::kLeaseLeases,
      [this](CallContextPtr ctx, const LeaseLeasesRequest& r, std::function<void(Status, LeaseLeasesResponse)> done) {
        Leases(std::move(ctx), r, std::move(done));
      });
  router.AddStream(methods::kLeaseKeepAlive, [hub = keepalive_](CallContextPtr ctx, std::shared_ptr<StreamSink> sink) {
    return hub->NewClientStream(std::move(ctx), std::move(sink));
  });
}

void LeaseService::Grant(CallContextPtr ctx, const LeaseGrantRequest& request, GrantDone done) {
  LeaseGrantRequest with_id = request;
  const bool proxy_chooses = request.id() == 0;
  if (proxy_chooses) with_id.set_id(NewLeaseId());
  GrantAttempt(std::move(ctx), std::move(with_id), proxy_chooses, kGrantRetries, std::move(done));
}

// Grants on every shard in parallel. An error from etcd anywhere undoes the grants that were
// made; shards that are down get the grant later (PendingLeases, LeaseRepair) as long as at
// least as many shards granted as are down: then any proxy can tell later that the lease exists
// (see lease/repair.h).
void LeaseService::GrantAttempt(CallContextPtr ctx, LeaseGrantRequest request, bool proxy_chose_id, int retries_left,
                                GrantDone done) {
  const auto topology = topology_.Get();
  CallShards<LeaseGrantResponse>(
      *topology, AllShards(*topology), methods::kLeaseGrant, BoundedContext(ctx, kShardTimeout), request, kWrite,
      [this, topology, ctx, request, proxy_chose_id, retries_left,
       done = std::move(done)](std::vector<ShardOutcome<LeaseGrantResponse>> outcomes) mutable {
        std::vector<std::size_t> granted, down;
        std::optional<Status> etcd_error, down_error;
        for (const auto& o : outcomes) {
          if (o.status.ok()) {
            granted.push_back(o.shard);
          } else if (IsShardDown(o.status)) {
            down.push_back(o.shard);
            if (!down_error) down_error = o.status;
          } else if (!etcd_error) {
            etcd_error = o.status;
          }
        }
        if (etcd_error || granted.empty() || granted.size() < down.size()) {
          RevokeQuietly(*topology, granted, request.id(), ctx->metadata());
          // A shard that timed out may have granted all the same: undo it there later, with the
          // proxy's credentials, but only for an id the proxy drew (a new lease, without keys). A
          // client-chosen id may name a lease the shard already held, keys and all, that the
          // caller may not revoke. Left there, such a copy is either a minority (the repair drops
          // it, keyless) or the lease as if the grant's answer had been lost, as on one etcd.
          if (proxy_chose_id) {
            for (std::size_t shard : down) pending_->AddRevoke(topology->map.shard(shard).name, request.id());
          }
          if (etcd_error && proxy_chose_id && retries_left > 0 &&
              etcd_error->message() == etcd_errors::LeaseExists().message()) {
            request.set_id(NewLeaseId());
            return GrantAttempt(ctx, request, true, retries_left - 1, std::move(done));
          }
          return done(etcd_error ? *etcd_error : *down_error, {});
        }
        for (std::size_t shard : down) pending_->AddGrant(topology->map.shard(shard).name, request.id(), request.ttl());
        LeaseGrantResponse response = outcomes[0].status.ok() ? outcomes[0].response : LeaseGrantResponse();
        int64_t ttl = INT64_MAX;
        for (const auto& o : outcomes) {
          if (!o.status.ok()) continue;
          if (!response.has_header()) response = o.response;
          ttl = std::min(ttl, o.response.ttl());
        }
        response.set_id(request.id());
        response.set_ttl(ttl);
        done(Status::Ok(), std::move(response));
      });
}

void LeaseService::Revoke(CallContextPtr ctx, const LeaseRevokeRequest& request,
                          std::function<void(Status, LeaseRevokeResponse)> done) {
  if (!CarriesIdentity(ctx->metadata())) return RevokeOnShards(std::move(ctx), request, std::move(done));
  // With auth in use, one shard may refuse what the others permit: ask all first (revoke_check.h).
  CheckRevokePermitted(ctx, topology_.Get(), request.id(), repair_->credentials(),
                       [this, ctx, request, done = std::move(done)](Status status) mutable {
                         if (!status.ok()) return done(std::move(status), {});
                         RevokeOnShards(std::move(ctx), request, std::move(done));
                       });
}

void LeaseService::RevokeOnShards(CallContextPtr ctx, const LeaseRevokeRequest& request,
                                  std::function<void(Status, LeaseRevokeResponse)> done) {
  const auto topology = topology_.Get();
  const int64_t id = request.id();
  CallShards<LeaseRevokeResponse>(
      *topology, AllShards(*topology), methods::kLeaseRevoke, BoundedContext(ctx, kShardTimeout), request, kWrite,
      [this, topology, id, done = std::move(done)](std::vector<ShardOutcome<LeaseRevokeResponse>> outcomes) {
        std::optional<LeaseRevokeResponse> revoked;
        std::optional<Status> other_error, down_error;
        std::vector<std::size_t> down;
        std::size_t without = 0;  // shards that no longer hold the lease: revoked or not found
        for (auto& o : outcomes) {
          if (o.status.ok()) {
            ++without;
            if (!revoked) revoked = std::move(o.response);
          } else if (IsNotFound(o.status)) {
            ++without;
          } else if (IsShardDown(o.status)) {
            down.push_back(o.shard);
            if (!down_error) down_error = o.status;
          } else if (!other_error) {
            other_error = o.status;
          }
        }
        // An etcd error on any shard (permission denied: a key of the lease there is not the
        // caller's to delete) fails the revoke, as one etcd holding every key would.
        if (other_error) return done(*other_error, {});
        // Done only when more than half of the shards are without the lease: whatever the
        // others hold, any proxy can then tell that it was revoked (lease/repair.h). Otherwise
        // the client gets an error and the lease counts as alive, as after a failed revoke on
        // one etcd; its keys on the shards that did revoke are gone all the same.
        if (2 * without <= outcomes.size()) return done(*down_error, {});
        // The shards that are down drop it when they answer again (this proxy's fast path; any
        // proxy's keep-alive or TimeToLive for the lease does it too).
        pending_->DropGrants(id);
        for (std::size_t shard : down) pending_->AddRevoke(topology->map.shard(shard).name, id);
        if (revoked) return done(Status::Ok(), std::move(*revoked));
        done(etcd_errors::LeaseNotFound(), {});
      });
}

void LeaseService::TimeToLive(CallContextPtr ctx, const LeaseTimeToLiveRequest& request,
                              std::function<void(Status, LeaseTimeToLiveResponse)> done) {
  const auto topology = topology_.Get();
  CallShards<LeaseTimeToLiveResponse>(
      *topology, AllShards(*topology), methods::kLeaseTimeToLive, BoundedContext(ctx, kShardTimeout), request, kRead,
      [repair = repair_, id = request.id(),
       done = std::move(done)](std::vector<ShardOutcome<LeaseTimeToLiveResponse>> outcomes) {
        std::optional<LeaseTimeToLiveResponse> merged;
        std::optional<Status> error;
        std::vector<std::string> keys;
        LeaseSplit split{.id = id, .holders = {}, .lacking = {}, .unknown = 0, .ttl = INT64_MAX};
        std::optional<etcdserverpb::ResponseHeader> header;  // of the first shard that answered
        for (auto& o : outcomes) {
          if (!o.status.ok()) {
            if (!error) error = o.status;
            ++split.unknown;
            continue;
          }
          if (!header) header = o.response.header();
          if (o.response.ttl() == -1) {  // not on this shard
            split.lacking.push_back(o.shard);
            continue;
          }
          split.holders.push_back(o.shard);
          split.ttl = std::min(split.ttl, o.response.ttl());
          for (auto& key : *o.response.mutable_keys()) keys.push_back(std::move(key));
          if (!merged) {
            merged = std::move(o.response);
            continue;
          }
          merged->set_ttl(std::min(merged->ttl(), o.response.ttl()));
          merged->set_grantedttl(std::max(merged->grantedttl(), o.response.grantedttl()));
        }
        // A split lease is repaired on the way; one revoked on most shards reads as gone.
        const bool gone = !split.holders.empty() && !split.lacking.empty() && repair &&
                          repair->Resolve(split) == SplitVerdict::kGone;
        if (gone) merged.reset();
        if (!merged) {
          if (error && !gone) return done(*error, {});
          // As etcd answers an unknown lease: TTL -1, no error.
          LeaseTimeToLiveResponse none;
          if (header) *none.mutable_header() = *header;
          none.set_id(id);
          none.set_ttl(-1);
          return done(Status::Ok(), std::move(none));
        }
        // Each shard lists its keys in order; std::string compares bytes as unsigned, as etcd does.
        std::sort(keys.begin(), keys.end());
        merged->clear_keys();
        for (auto& key : keys) merged->add_keys(std::move(key));
        done(Status::Ok(), std::move(*merged));
      });
}

void LeaseService::Leases(CallContextPtr ctx, const LeaseLeasesRequest& request,
                          std::function<void(Status, LeaseLeasesResponse)> done) {
  const auto topology = topology_.Get();
  CallShards<LeaseLeasesResponse>(
      *topology, AllShards(*topology), methods::kLeaseLeases, BoundedContext(ctx, kShardTimeout), request, kRead,
      [done = std::move(done)](std::vector<ShardOutcome<LeaseLeasesResponse>> outcomes) {
        std::set<int64_t> ids;
        std::optional<LeaseLeasesResponse> merged;
        std::optional<Status> error;
        for (auto& o : outcomes) {
          if (!o.status.ok()) {
            if (!error) error = o.status;
            continue;
          }
          for (const auto& lease : o.response.leases()) ids.insert(lease.id());
          if (!merged) merged = std::move(o.response);
        }
        // A shard that is down is left out: its leases are (or will be) on the others too.
        if (!merged) return done(*error, {});
        merged->clear_leases();
        for (int64_t id : ids) merged->add_leases()->set_id(id);
        done(Status::Ok(), std::move(*merged));
      });
}

}  // namespace esp
