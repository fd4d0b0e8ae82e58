#pragma once
// A LeaseRevoke with auth in use is first checked on every shard, so that a revoke refused on one
// shard revokes the lease nowhere, as one etcd refuses it whole. Otherwise the shards that permit
// it would drop the lease and its keys there, and the split left behind reads as "revoked" to the
// repair (lease/repair.h), which would complete it on the refusing shard with the proxy's own
// credentials. etcd permits a revoke to a user who may write every key attached to the lease on
// that shard: the check lists them (LeaseTimeToLive with keys; etcd 3.4 asks no permission for
// it) and sends a Txn without compares with a DeleteRange of each key in its never-taken failure
// branch (etcd checks both branches' permissions first; a one-key delete needs the same write
// permission as a put), which changes nothing.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "etcdserverpb/rpc.pb.h"
#include "lease/proxy_calls.h"
#include "transport/call_context.h"
#include "transport/status.h"
#include "upstream/topology.h"

namespace esp {

// Keys per probe Txn: well under etcd's default --max-txn-ops (128).
inline constexpr std::size_t kRevokeProbeKeys = 64;

// The probes for `keys`, kRevokeProbeKeys keys each.
std::vector<etcdserverpb::TxnRequest> RevokePermissionProbes(const std::vector<std::string>& keys);

// `done` gets OK when every shard permits the revoke, else the first refusal. A shard that does
// not answer cannot be asked, and a revoke that succeeds is completed there later with the
// proxy's own credentials: it counts as permitting only if the caller may delete every key
// (asked of a shard that answers); otherwise `done` gets UNAVAILABLE naming it. etcd 3.5+ lists a lease's keys only to a
// user who may read them; where it refuses the caller that, they are listed with `credentials`
// (the proxy's own user) and the permission is still probed as the caller. Without credentials
// that refusal is the answer.
void CheckRevokePermitted(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology, int64_t id,
                          const ProxyCredentials& credentials, std::function<void(Status)> done);

}  // namespace esp
