#include "kv/delete_check.h"

#include <algorithm>

#include "common/methods.h"
#include "upstream/scatter_gather.h"
#include "upstream/typed_call.h"

namespace esp {

etcdserverpb::TxnRequest DeletePermissionProbe(const etcdserverpb::DeleteRangeRequest& piece) {
  // No compare: a compare needs read permission on its key, which a delete does not.
  etcdserverpb::TxnRequest txn;
  *txn.add_failure()->mutable_request_delete_range() = piece;
  return txn;
}

void CheckDeletePermitted(const CallContextPtr& ctx, const std::vector<std::shared_ptr<ShardTransport>>& shards,
                          const std::vector<etcdserverpb::DeleteRangeRequest>& pieces,
                          std::function<void(Status)> done) {
  // Nothing is changed by a probe, so it may be retried, and the first refusal cancels the rest.
  ScatterGather<etcdserverpb::TxnResponse>(
      ctx, pieces.size(), /*cancel_on_error=*/true,
      [&](std::size_t i, const CallContextPtr& child, PieceDone<etcdserverpb::TxnResponse> piece_done) {
        CallShard<etcdserverpb::TxnResponse>(*shards[i], methods::kTxn, child, DeletePermissionProbe(pieces[i]),
                                             kRead, std::move(piece_done));
      },
      [done = std::move(done)](Status status, std::vector<etcdserverpb::TxnResponse>) { done(std::move(status)); });
}

}  // namespace esp
