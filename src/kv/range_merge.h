#pragma once
// Combines the answers of several shards to one Range so that the client gets what a single
// etcd holding all the keys would answer.
#include <vector>

#include "etcdserverpb/rpc.pb.h"

namespace esp {

// etcd (3.4 and main) applies `limit` before sorting when `sort_order` is NONE and no revision
// filter is set, even when `sort_target` is not KEY: it reads the first limit+1 keys in key
// order, sorts only those ascending by the target, and cuts to `limit`.
bool SortsOnlyTheFirstKeys(const etcdserverpb::RangeRequest& request);

// What each shard of a spanning Range is asked (the caller clips key and range_end): the client's
// request, except that for SortsOnlyTheFirstKeys each shard returns its first limit+1 keys in
// key order, from which the merge picks the first limit+1 of all shards.
etcdserverpb::RangeRequest ShardRangeRequest(const etcdserverpb::RangeRequest& request);

// `parts` are the shards' answers to ShardRangeRequest, in key order of the shards. Each shard
// already applied filters, sort and `limit`, which suffices: the first `limit` of the merged
// order are among the first `limit` of each shard.
etcdserverpb::RangeResponse MergeRangeResponses(const etcdserverpb::RangeRequest& request,
                                                std::vector<etcdserverpb::RangeResponse> parts);

// The header of a multi-shard answer: the header of the shard with the lowest revision. Revisions
// are per shard; the lowest is the one revision that no shard of the answer had passed when it
// answered, so a watch or a read from it on any of those shards misses nothing the answer did
// not hold (it may repeat some of what it held). docs/semantics.md, "Revisions across shards".
etcdserverpb::ResponseHeader PickSpanningHeader(const std::vector<const etcdserverpb::ResponseHeader*>& headers);

}  // namespace esp
