#pragma once
// A spanning DeleteRange with auth in use is first checked on every shard it touches, so that a
// piece denied on one shard leaves the others untouched, as one etcd denies the whole request.
// The check deletes nothing: a Txn without compares runs its (empty) success branch, and etcd
// checks the permissions of the operations in both branches before it runs either, so the
// clipped DeleteRange in the failure branch is judged but never executed.
#include <functional>
#include <memory>
#include <vector>

#include "etcdserverpb/rpc.pb.h"
#include "transport/call_context.h"
#include "transport/status.h"
#include "upstream/shard_transport.h"

namespace esp {

// The side-effect-free Txn that asks a shard whether `piece` may be deleted.
etcdserverpb::TxnRequest DeletePermissionProbe(const etcdserverpb::DeleteRangeRequest& piece);

// Sends the probe for pieces[i] to shards[i], all in parallel; `done` gets OK when every shard
// permits its piece, else the first error (`etcdserver: permission denied`, an unreachable
// shard, ...).
void CheckDeletePermitted(const CallContextPtr& ctx, const std::vector<std::shared_ptr<ShardTransport>>& shards,
                          const std::vector<etcdserverpb::DeleteRangeRequest>& pieces,
                          std::function<void(Status)> done);

}  // namespace esp
