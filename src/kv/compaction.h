#pragma once
// Compact across shards (docs/semantics.md, Compact): which revision each shard is compacted at,
// and how the shards' answers make the client's.
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "etcdserverpb/rpc.pb.h"
#include "transport/status.h"

namespace esp {

// The revision one shard is compacted at for a client's Compact(`requested`): `requested`, but
// never past `limit`, the revision the shard had a retention period ago. nullopt (the shard is
// held back) when a retention is set and that revision is not known yet. Without a retention
// `limit` is ignored.
std::optional<std::int64_t> CompactTarget(std::int64_t requested, bool retention_set,
                                          std::optional<std::int64_t> limit);

// One shard's part of a Compact across shards.
struct ShardCompaction {
  std::string description;            // the shard, for errors
  std::optional<std::int64_t> target;  // nullopt: held back by the retention, not compacted
  Status status;  // the shard's answer (held back: OK, or ErrFutureRev when it had not reached it)
  etcdserverpb::CompactionResponse response;
};

// The client's answer: success when any shard compacted (header: the lowest such shard's, as
// every spanning answer); otherwise the first error that is neither of etcd's two refusals;
// otherwise etcd's ErrCompacted when a shard had already compacted at its target; otherwise a
// FAILED_PRECONDITION naming the shards the retention held back; otherwise (no shard reached
// the revision) etcd's ErrFutureRev.
std::variant<Status, etcdserverpb::CompactionResponse> CombineCompactions(std::int64_t requested,
                                                                          const std::vector<ShardCompaction>& parts);

}  // namespace esp
