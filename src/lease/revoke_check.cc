#include "lease/revoke_check.h"

#include <optional>

#include "common/etcd_errors.h"
#include "common/methods.h"
#include "lease/fanout.h"
#include "upstream/scatter_gather.h"
#include "upstream/typed_call.h"

namespace esp {

std::vector<etcdserverpb::TxnRequest> RevokePermissionProbes(const std::vector<std::string>& keys) {
  std::vector<etcdserverpb::TxnRequest> probes;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i % kRevokeProbeKeys == 0) probes.emplace_back();
    probes.back().add_failure()->mutable_request_delete_range()->set_key(keys[i]);
  }
  return probes;
}

namespace {

constexpr std::chrono::seconds kCheckTimeout(5);

using Listing = std::vector<ShardOutcome<etcdserverpb::LeaseTimeToLiveResponse>>;

// Probes, as the caller, the delete permission of every key the listings name.
void ProbeListedKeys(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology,
                     const Listing& listings, std::function<void(Status)> done) {
  std::vector<std::pair<std::size_t, etcdserverpb::TxnRequest>> probes;
  for (const auto& o : listings) {
    if (!o.status.ok() || o.response.keys().empty()) continue;  // down, not there, or no keys
    const std::vector<std::string> keys(o.response.keys().begin(), o.response.keys().end());
    for (auto& probe : RevokePermissionProbes(keys)) probes.emplace_back(o.shard, std::move(probe));
  }
  if (probes.empty()) return done(Status::Ok());
  // Every probe answers (none is cancelled by another's refusal); the first refusal is the answer.
  ScatterGather<etcdserverpb::TxnResponse>(
      BoundedContext(ctx, kCheckTimeout), probes.size(), /*cancel_on_error=*/false,
      [&](std::size_t i, const CallContextPtr& child, PieceDone<etcdserverpb::TxnResponse> piece_done) {
        CallShard<etcdserverpb::TxnResponse>(*topology->shards[probes[i].first], methods::kTxn, child,
                                             probes[i].second, kRead, std::move(piece_done));
      },
      [done = std::move(done)](Status status, std::vector<etcdserverpb::TxnResponse>) { done(std::move(status)); });
}

// Every key there is: etcd reads a range end of "\0" as "to the end of the keyspace", and no key
// is shorter than "\0" (etcd refuses empty keys).
etcdserverpb::TxnRequest DeleteEverythingProbe() {
  etcdserverpb::TxnRequest probe;
  auto* everything = probe.add_failure()->mutable_request_delete_range();
  everything->set_key(std::string(1, '\0'));
  everything->set_range_end(std::string(1, '\0'));
  return probe;
}

std::string ShardNames(const Topology& topology, const std::vector<std::size_t>& shards) {
  std::string names;
  for (std::size_t shard : shards) {
    if (!names.empty()) names += ", ";
    names += topology.map.Describe(shard);
  }
  return names;
}

// The shards that did not list the lease's keys (down, hung, or an error other than an auth
// refusal) cannot be asked whether the caller may revoke there, and a revoke that succeeds now
// is completed on them later, by whichever proxy sees the split, with the proxy's own
// credentials. So the revoke goes on only if the caller may delete every key there is (root, or a
// role writing the whole keyspace): then it is permitted on those shards whatever they hold
// (every shard holds the same users and roles). Otherwise it is refused with UNAVAILABLE naming
// the shards: etcd would answer either way, and the proxy cannot tell which until they answer.
void CheckUnlisted(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology, Listing listings,
                   std::function<void(Status)> done) {
  std::vector<std::size_t> unlisted;
  std::optional<std::size_t> listed;
  std::optional<Status> unlisted_error;
  std::size_t lacking = 0;  // shards that answered they do not hold the lease
  for (const auto& o : listings) {
    if (o.status.ok()) {
      if (!listed) listed = o.shard;
      if (o.response.ttl() == -1) ++lacking;
      continue;
    }
    unlisted.push_back(o.shard);
    if (!unlisted_error) unlisted_error = o.status;
  }
  // Gone by the majority rule (lease/repair.h): the revoke answers etcd's "lease not found", and
  // a copy on a shard that is down is a leftover any proxy's repair drops anyway.
  const bool gone = 2 * lacking > listings.size();
  if (unlisted.empty() || gone) return ProbeListedKeys(ctx, topology, listings, std::move(done));
  if (!listed) return done(*unlisted_error);  // no shard answers: the revoke could not succeed
  CallShard<etcdserverpb::TxnResponse>(
      *topology->shards[*listed], methods::kTxn, BoundedContext(ctx, kCheckTimeout), DeleteEverythingProbe(), kRead,
      [ctx, topology, listings = std::move(listings), unlisted = std::move(unlisted),
       unlisted_error = *unlisted_error, done = std::move(done)](Status status, etcdserverpb::TxnResponse) mutable {
        if (status.ok()) return ProbeListedKeys(ctx, topology, listings, std::move(done));
        done(Status(StatusCode::kUnavailable,
                    "etcd-sharding-proxy: the lease cannot be revoked while " + ShardNames(*topology, unlisted) +
                        " cannot be asked whether the caller may delete its keys there (" + unlisted_error.message() +
                        "); retry when it answers"));
      });
}

}  // namespace

void CheckRevokePermitted(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology, int64_t id,
                          const ProxyCredentials& credentials, std::function<void(Status)> done) {
  etcdserverpb::LeaseTimeToLiveRequest request;
  request.set_id(id);
  request.set_keys(true);
  CallShards<etcdserverpb::LeaseTimeToLiveResponse>(
      *topology, AllShards(*topology), methods::kLeaseTimeToLive, BoundedContext(ctx, kCheckTimeout), request, kRead,
      [ctx, topology, request, credentials, done = std::move(done)](Listing listings) mutable {
        // Shards that would not list the keys to the caller: without read permission on them
        // (etcd 3.5+), which says nothing yet about the write permission a revoke needs.
        std::vector<std::size_t> unlisted;
        for (const auto& o : listings) {
          if (!etcd_errors::IsAuthRefusal(o.status)) continue;
          if (o.status.code() != StatusCode::kPermissionDenied || !credentials.metadata) return done(o.status);
          unlisted.push_back(o.shard);
        }
        if (unlisted.empty()) return CheckUnlisted(ctx, topology, std::move(listings), std::move(done));
        CallShardsAsProxy<etcdserverpb::LeaseTimeToLiveResponse>(
            credentials, topology, unlisted, methods::kLeaseTimeToLive, kCheckTimeout, request, kRead,
            [ctx, topology, listings = std::move(listings), done = std::move(done)](Listing relisted) mutable {
              for (auto& o : relisted) {
                // Not listed by the proxy either: the caller's refusal stands.
                if (!o.status.ok()) {
                  for (const auto& mine : listings) {
                    if (mine.shard == o.shard) return done(mine.status);
                  }
                }
                for (auto& mine : listings) {
                  if (mine.shard == o.shard) mine = std::move(o);
                }
              }
              CheckUnlisted(ctx, topology, std::move(listings), std::move(done));
            });
      });
}

}  // namespace esp
