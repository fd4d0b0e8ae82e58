#pragma once
// The Lease service across shards: one lease id valid on every shard. Unary RPCs fan out to
// every shard and merge; LeaseKeepAlive is served by KeepAliveHub (keepalive.h).
#include <memory>

#include "etcdserverpb/rpc.pb.h"
#include "lease/keepalive.h"
#include "lease/pending.h"
#include "lease/repair.h"
#include "transport/router.h"
#include "upstream/topology.h"

namespace esp {

class LeaseService {
 public:
  LeaseService(const TopologyHolder& topology, std::shared_ptr<PendingLeases> pending,
               std::shared_ptr<KeepAliveHub> keepalive, std::shared_ptr<LeaseRepair> repair);
  void Register(Router& router);

 private:
  using GrantDone = std::function<void(Status, etcdserverpb::LeaseGrantResponse)>;

  void Grant(CallContextPtr ctx, const etcdserverpb::LeaseGrantRequest& request, GrantDone done);
  void GrantAttempt(CallContextPtr ctx, etcdserverpb::LeaseGrantRequest request, bool proxy_chose_id,
                    int retries_left, GrantDone done);
  void Revoke(CallContextPtr ctx, const etcdserverpb::LeaseRevokeRequest& request,
              std::function<void(Status, etcdserverpb::LeaseRevokeResponse)> done);
  void RevokeOnShards(CallContextPtr ctx, const etcdserverpb::LeaseRevokeRequest& request,
                      std::function<void(Status, etcdserverpb::LeaseRevokeResponse)> done);
  void TimeToLive(CallContextPtr ctx, const etcdserverpb::LeaseTimeToLiveRequest& request,
                  std::function<void(Status, etcdserverpb::LeaseTimeToLiveResponse)> done);
  void Leases(CallContextPtr ctx, const etcdserverpb::LeaseLeasesRequest& request,
              std::function<void(Status, etcdserverpb::LeaseLeasesResponse)> done);

  const TopologyHolder& topology_;
  std::shared_ptr<PendingLeases> pending_;
  std::shared_ptr<KeepAliveHub> keepalive_;
  std::shared_ptr<LeaseRepair> repair_;
};

}  // namespace esp
