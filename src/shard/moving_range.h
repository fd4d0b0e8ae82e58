#pragma once
// What the proxies must know about a range move (docs/semantics.md, "Range moves"):
// - while a range is on its way from one shard to another, requests that touch it on the source
//   go as a Txn guarded by the move's fence key there: once the mover has written that key (the
//   cut-over), the source refuses them, and the proxy holds them until the map that names the
//   new owner arrives;
// - after a move, revisions of the moved keys below the new owner's floor are gone (they lived
//   in the old owner's revision space): a read or watch pinned below it is told "compacted".
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace esp {

struct MovingRange {
  std::string start;
  std::string end;  // "" = unbounded
  std::size_t source = 0;  // shard index in the Topology
  std::string target;      // the destination shard's name, for messages
  std::string fence_key;   // on the source
};

struct RevisionFloor {
  std::string start;
  std::string end;  // "" = unbounded
  std::int64_t revision = 0;  // the first revision that exists for these keys on their owner
};

// Whether the etcd request range [key, range_end) (range_end "" = the single key, "\0" = every key
// >= key) shares a key with [start, end) (end "" = unbounded).
bool RequestOverlaps(std::string_view key, std::string_view range_end, std::string_view start, std::string_view end);

// The fence key of the move `id` of the range starting at `start`: inside the range (so that
// after the cut-over no proxy ever reads it from the source, which no longer owns the range),
// and marked so that the mover never copies one and a later move into that shard removes it.
std::string FenceKey(std::string_view start, std::string_view id);
bool IsFenceKey(std::string_view key);

// The highest floor of the floors that [key, range_end) overlaps, or 0.
std::int64_t FloorFor(const std::vector<RevisionFloor>& floors, std::string_view key, std::string_view range_end);

}  // namespace esp
