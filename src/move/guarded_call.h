#pragma once
// Requests to a range that is moving (docs/semantics.md, "Range moves"). While a range is on its
// way to another shard the map names its fence key; every request that touches the range on
// the source goes there as Txn{If version(fence) == 0 Then <the request>}. The mover writes the
// fence at the cut-over: from then on the source refuses, atomically with etcd's own apply, every
// such request, whichever proxy sent it and however late. A refused request was not applied;
// the caller holds it until the map naming the new owner arrives (HoldForNewerMap) and routes it
// again. Only requests to the moving range pay the wrapping; the normal path is untouched.
#include <functional>
#include <memory>
#include <string_view>

#include "etcdserverpb/rpc.pb.h"
#include "transport/call_context.h"
#include "transport/status.h"
#include "upstream/shard_transport.h"
#include "upstream/topology.h"

namespace esp::move {

// Whether a request over [key, range_end) (etcd's conventions) sent to `shard` must be guarded.
inline bool MustGuard(const Topology& topology, std::size_t shard, std::string_view key, std::string_view range_end) {
  return topology.moving && topology.moving->source == shard &&
         RequestOverlaps(key, range_end, topology.moving->start, topology.moving->end);
}

// Whether any key a Txn compares, reads or writes (nested txns included) is in the moving range
// on `shard`.
bool TxnMustGuard(const Topology& topology, std::size_t shard, const etcdserverpb::TxnRequest& txn);

// The answer for a request the source refused because the fence stood: UNAVAILABLE (a client
// may retry it), naming the range and where it went.
Status Fenced(const MovingRange& moving);
bool IsFenced(const Status& status);

// Sends `op` guarded to the moving range's source. `done` gets the inner response with the
// txn's header copied in, or Fenced() when the source refused it.
using OpDone = std::function<void(Status, etcdserverpb::ResponseOp)>;
void SendGuarded(const Topology& topology, const CallContextPtr& ctx, etcdserverpb::RequestOp op, UnaryOptions options,
                 OpDone done);

}  // namespace esp::move
