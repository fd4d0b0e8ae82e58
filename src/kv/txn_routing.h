#pragma once
// Finds the one shard a Txn can run on: every key and range read or written by its compares and
// by both branches (nested txns included) must fall into a single shard.
#include <cstddef>
#include <string>
#include <variant>

#include "etcdserverpb/rpc.pb.h"
#include "shard/shard_map.h"
#include "transport/status.h"

namespace esp {

// The shard to forward to, or a FAILED_PRECONDITION status naming the shards and two keys that
// live in different shards. A txn touching no key goes to shard 0.
std::variant<std::size_t, Status> RouteTxn(const ShardMap& map, const etcdserverpb::TxnRequest& txn);

}  // namespace esp
