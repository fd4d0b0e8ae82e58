#pragma once
// Combines the answers of several shards to one Range so that the client gets what a single
// etcd holding all the keys would answer.
#include <vector>

#include "etcdserverpb/rpc.pb.h"

namespace esp {

// `parts` are the shards' answers to the clipped request, in key order of the shards. Each shard
// already applied filters, sort and `limit`, which suffices: the first `limit` of the merged
// order are among the first `limit` of each shard.
etcdserverpb::RangeResponse MergeRangeResponses(const etcdserverpb::RangeRequest& request,
                                                std::vector<etcdserverpb::RangeResponse> parts);

// The header of a multi-shard answer: the header of the shard with the highest revision, so the
// revision a client sees through one proxy never goes backwards across requests.
etcdserverpb::ResponseHeader PickSpanningHeader(const std::vector<const etcdserverpb::ResponseHeader*>& headers);

}  // namespace esp
