#include "lease/revoke_check.h"

#include "common/etcd_errors.h"
#include "common/methods.h"
#include "lease/fanout.h"
#include "upstream/scatter_gather.h"

namespace esp {
namespace {

constexpr std::chrono::seconds kCheckTimeout(5);

}  // namespace

std::vector<etcdserverpb::TxnRequest> RevokePermissionProbes(const std::vector<std::string>& keys) {
  std::vector<etcdserverpb::TxnRequest> probes;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i % kRevokeProbeKeys == 0) probes.emplace_back();
    probes.back().add_failure()->mutable_request_delete_range()->set_key(keys[i]);
  }
  return probes;
}

void CheckRevokePermitted(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology, int64_t id,
                          std::function<void(Status)> done) {
  etcdserverpb::LeaseTimeToLiveRequest request;
  request.set_id(id);
  request.set_keys(true);
  CallShards<etcdserverpb::LeaseTimeToLiveResponse>(
      *topology, AllShards(*topology), methods::kLeaseTimeToLive, BoundedContext(ctx, kCheckTimeout), request, kRead,
      [ctx, topology, done = std::move(done)](
          std::vector<ShardOutcome<etcdserverpb::LeaseTimeToLiveResponse>> outcomes) mutable {
        std::vector<std::pair<std::size_t, etcdserverpb::TxnRequest>> probes;
        for (const auto& o : outcomes) {
          // etcd 3.5+ lists a lease's keys only to a user who may read them all: one who may not
          // is refused here (stricter than etcd for a user who may write the keys but not read
          // them), never let through to a revoke that a shard might half perform.
          if (etcd_errors::IsAuthRefusal(o.status)) return done(o.status);
        }
        for (const auto& o : outcomes) {
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
            [done = std::move(done)](Status status, std::vector<etcdserverpb::TxnResponse>) {
              done(std::move(status));
            });
      });
}

}  // namespace esp
