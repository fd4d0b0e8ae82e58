#include "kv/compaction.h"

#include <algorithm>

#include "common/etcd_errors.h"
#include "kv/range_merge.h"

namespace esp {

std::optional<std::int64_t> CompactTarget(std::int64_t requested, bool retention_set,
                                          std::optional<std::int64_t> limit) {
  if (!retention_set) return requested;
  if (!limit) return std::nullopt;
  return std::min(requested, *limit);
}

std::variant<Status, etcdserverpb::CompactionResponse> CombineCompactions(std::int64_t requested,
                                                                          const std::vector<ShardCompaction>& parts) {
  std::vector<const etcdserverpb::ResponseHeader*> compacted;
  const Status* failure = nullptr;
  bool already_compacted = false;
  std::vector<std::string> held;
  for (const auto& part : parts) {
    if (!part.target && part.status.ok()) {
      held.push_back(part.description);  // it has reached the revision, but the retention holds it
    } else if (part.status.ok()) {
      compacted.push_back(&part.response.header());
    } else if (part.status.message() == etcd_errors::Compacted().message()) {
      already_compacted = true;
    } else if (part.status.message() != etcd_errors::FutureRev().message() && failure == nullptr) {
      failure = &part.status;
    }
  }
  // Compacting a shard takes nothing a client could still read there (the target is at most
  // the client's revision, and at most what the retention allows), so some shards compacted
  // and others not is a success: the others keep more history, never less.
  if (failure == nullptr && !compacted.empty()) {
    etcdserverpb::CompactionResponse response;
    *response.mutable_header() = PickSpanningHeader(compacted);
    return response;
  }
  // A failure is reported even if others compacted: the client repeats the request, which
  // compacts the shard that failed and is refused (ErrCompacted) where it was done.
  // etcd's own errors pass unchanged (clients match on them); transport errors name the shard.
  if (failure != nullptr) return *failure;
  if (already_compacted) return etcd_errors::Compacted();
  if (!held.empty()) {
    std::string names;
    for (const auto& name : held) names += (names.empty() ? "" : ", ") + name;
    return Status(StatusCode::kFailedPrecondition,
                  "etcd-sharding-proxy: nothing compacted at revision " + std::to_string(requested) + ": " + names +
                      " keep(s) the history of the last --compaction-retention, and this proxy has not seen "
                      "their revisions that long ago yet; retry later");
  }
  return etcd_errors::FutureRev();
}

}  // namespace esp
