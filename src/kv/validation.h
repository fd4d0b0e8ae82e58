#pragma once
// etcd's own request checks (etcd's v3rpc layer), run by the proxy before any shard is touched so
// that every client gets etcd's answer even when a request would span shards.
#include "etcdserverpb/rpc.pb.h"
#include "transport/status.h"

namespace esp {

inline constexpr int kDefaultMaxTxnOps = 128;  // etcd --max-txn-ops

Status CheckRangeRequest(const etcdserverpb::RangeRequest& r);
Status CheckPutRequest(const etcdserverpb::PutRequest& r);
Status CheckDeleteRequest(const etcdserverpb::DeleteRangeRequest& r);
// Includes the duplicate-write checks etcd applies to each branch.
Status CheckTxnRequest(const etcdserverpb::TxnRequest& r, int max_txn_ops = kDefaultMaxTxnOps);

}  // namespace esp
