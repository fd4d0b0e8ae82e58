#include "shard/shard_map.h"

#include <algorithm>

#include "config/config.h"

namespace esp {

ShardMap::ShardMap(std::vector<ShardBounds> shards) : shards_(std::move(shards)) {}

std::size_t ShardMap::ShardForKey(std::string_view key) const {
  // The last shard whose start is <= key. Shard 0 starts at "", so there always is one.
  const auto it = std::upper_bound(shards_.begin(), shards_.end(), key,
                                   [](std::string_view k, const ShardBounds& s) { return k < s.start; });
  return static_cast<std::size_t>(std::distance(shards_.begin(), it)) - 1;
}

std::vector<RangePiece> ShardMap::Split(std::string_view key, std::string_view range_end) const {
  // Inside one shard (a single key, an empty or inverted range included) the one piece is the
  // client's range unchanged: the shard's bounds cannot clip it.
  if (const auto shard = SingleShard(key, range_end)) {
    return {RangePiece{*shard, std::string(key), std::string(range_end)}};
  }
  const bool to_infinity = range_end == kRangeEndAll;
  std::vector<RangePiece> pieces;
  for (std::size_t i = ShardForKey(key); i < shards_.size(); ++i) {
    const ShardBounds& s = shards_[i];
    if (!to_infinity && std::string_view(s.start) >= range_end) break;
    RangePiece piece{i, std::max(std::string(key), s.start), {}};
    if (s.end.empty()) {
      piece.range_end = std::string(range_end);  // the last shard keeps the client's end
    } else if (to_infinity || range_end > std::string_view(s.end)) {
      piece.range_end = s.end;
    } else {
      piece.range_end = std::string(range_end);
    }
    pieces.push_back(std::move(piece));
  }
  return pieces;
}

std::optional<std::size_t> ShardMap::SingleShard(std::string_view key, std::string_view range_end) const {
  const std::size_t first = ShardForKey(key);
  const bool to_infinity = range_end == kRangeEndAll;
  if (range_end.empty() || (!to_infinity && range_end <= key)) return first;
  // The next shard is touched unless the range ends at or before its start.
  if (first + 1 == shards_.size() || (!to_infinity && range_end <= std::string_view(shards_[first + 1].start))) {
    return first;
  }
  return std::nullopt;
}

std::vector<std::size_t> ShardMap::ShardsForRange(std::string_view key, std::string_view range_end) const {
  std::vector<std::size_t> out;
  for (const auto& piece : Split(key, range_end)) out.push_back(piece.shard);
  return out;
}

std::string ShardMap::Describe(std::size_t index) const {
  const ShardBounds& s = shards_[index];
  return "shard \"" + s.name + "\" [\"" + PrintableKey(s.start) + "\", " +
         (s.end.empty() ? std::string("end of keyspace") : "\"" + PrintableKey(s.end) + "\"") + ")";
}

}  // namespace esp
