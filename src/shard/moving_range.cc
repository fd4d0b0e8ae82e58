#include "shard/moving_range.h"

#include <algorithm>

namespace esp {
namespace {

constexpr std::string_view kFenceMarker{"\0etcd-sharding-proxy/move-fence/", 32};

}  // namespace

bool RequestOverlaps(std::string_view key, std::string_view range_end, std::string_view start, std::string_view end) {
  const bool unbounded_end = end.empty();
  if (range_end.empty()) return key >= start && (unbounded_end || key < end);  // one key
  const bool all_from_key = range_end == std::string_view("\0", 1);
  if (!all_from_key && range_end <= key) return key >= start && (unbounded_end || key < end);  // as etcd: one key
  // [key, range_end) ∩ [start, end) is non-empty
  const bool request_ends_after_start = all_from_key || range_end > start;
  const bool request_starts_before_end = unbounded_end || key < end;
  return request_ends_after_start && request_starts_before_end;
}

std::string FenceKey(std::string_view start, std::string_view id) {
  std::string key(start);
  key.append(kFenceMarker);
  key.append(id);
  return key;
}

bool IsFenceKey(std::string_view key) { return key.find(kFenceMarker) != std::string_view::npos; }

std::int64_t FloorFor(const std::vector<RevisionFloor>& floors, std::string_view key, std::string_view range_end) {
  std::int64_t floor = 0;
  for (const auto& f : floors) {
    if (RequestOverlaps(key, range_end, f.start, f.end)) floor = std::max(floor, f.revision);
  }
  return floor;
}

}  // namespace esp
