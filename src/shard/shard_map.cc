#include "shard/shard_map.h"

#include <algorithm>

#include "config/config.h"

namespace esp {
namespace {

std::vector<std::string> Names(const std::vector<ShardBounds>& shards) {
  std::vector<std::string> names;
  for (const auto& s : shards) names.push_back(s.name);
  return names;
}

std::vector<OwnedRange> OneRangeEach(const std::vector<ShardBounds>& shards) {
  std::vector<OwnedRange> ranges;
  for (std::size_t i = 0; i < shards.size(); ++i) ranges.push_back({shards[i].start, shards[i].end, i});
  return ranges;
}

std::string Bound(std::string_view key) { return "\"" + PrintableKey(std::string(key)) + "\""; }

}  // namespace

ShardMap::ShardMap(std::vector<ShardBounds> shards) : ShardMap(Names(shards), OneRangeEach(shards)) {}

ShardMap::ShardMap(std::vector<std::string> names, std::vector<OwnedRange> ranges) {
  for (auto& name : names) shards_.push_back({std::move(name), {}});
  for (auto& range : ranges) {
    if (!ranges_.empty() && ranges_.back().shard == range.shard) {
      ranges_.back().end = std::move(range.end);  // contiguous with the previous one: join
    } else {
      ranges_.push_back(std::move(range));
    }
  }
  for (const auto& range : ranges_) shards_[range.shard].ranges.push_back({range.start, range.end});
}

std::optional<std::size_t> ShardMap::Find(std::string_view name) const {
  for (std::size_t i = 0; i < shards_.size(); ++i) {
    if (shards_[i].name == name) return i;
  }
  return std::nullopt;
}

std::size_t ShardMap::RangeForKey(std::string_view key) const {
  // The last range whose start is <= key. The first starts at "", so there always is one.
  const auto it = std::upper_bound(ranges_.begin(), ranges_.end(), key,
                                   [](std::string_view k, const OwnedRange& r) { return k < r.start; });
  return static_cast<std::size_t>(std::distance(ranges_.begin(), it)) - 1;
}

std::size_t ShardMap::ShardForKey(std::string_view key) const { return ranges_[RangeForKey(key)].shard; }

std::vector<RangePiece> ShardMap::Split(std::string_view key, std::string_view range_end) const {
  // Inside one range (a single key, an empty or inverted range included) the one piece is the
  // client's range unchanged: the range's bounds cannot clip it.
  if (const auto shard = SingleShard(key, range_end)) {
    return {RangePiece{*shard, std::string(key), std::string(range_end)}};
  }
  const bool to_infinity = range_end == kRangeEndAll;
  std::vector<RangePiece> pieces;
  for (std::size_t i = RangeForKey(key); i < ranges_.size(); ++i) {
    const OwnedRange& r = ranges_[i];
    if (!to_infinity && std::string_view(r.start) >= range_end) break;
    RangePiece piece{r.shard, std::max(std::string(key), r.start), {}};
    if (r.end.empty()) {
      piece.range_end = std::string(range_end);  // the last range keeps the client's end
    } else if (to_infinity || range_end > std::string_view(r.end)) {
      piece.range_end = r.end;
    } else {
      piece.range_end = std::string(range_end);
    }
    pieces.push_back(std::move(piece));
  }
  return pieces;
}

std::optional<std::size_t> ShardMap::SingleShard(std::string_view key, std::string_view range_end) const {
  const std::size_t first = RangeForKey(key);
  const bool to_infinity = range_end == kRangeEndAll;
  if (range_end.empty() || (!to_infinity && range_end <= key)) return ranges_[first].shard;
  // The next range is touched unless the range ends at or before its start. Adjacent ranges have
  // different owners (joined otherwise), so touching it means a second shard.
  if (first + 1 == ranges_.size() || (!to_infinity && range_end <= std::string_view(ranges_[first + 1].start))) {
    return ranges_[first].shard;
  }
  return std::nullopt;
}

std::vector<std::size_t> ShardMap::ShardsForRange(std::string_view key, std::string_view range_end) const {
  std::vector<std::size_t> out;
  for (const auto& piece : Split(key, range_end)) {
    if (std::find(out.begin(), out.end(), piece.shard) == out.end()) out.push_back(piece.shard);
  }
  return out;
}

std::string DescribeRange(std::string_view start, std::string_view end) {
  return "[" + Bound(start) + ", " + (end.empty() ? std::string("end of keyspace") : Bound(end)) + ")";
}

std::string ShardMap::Describe(std::size_t index) const {
  const ShardInfo& s = shards_[index];
  std::string out = "shard \"" + s.name + "\" ";
  if (s.ranges.empty()) return out + "(no range)";
  for (std::size_t i = 0; i < s.ranges.size(); ++i) {
    if (i > 0) out += ", ";
    out += DescribeRange(s.ranges[i].start, s.ranges[i].end);
  }
  return out;
}

void ValidateRanges(const std::vector<std::string>& names, const std::vector<OwnedRange>& ranges) {
  if (ranges.empty()) throw ConfigError("the map has no range: the keyspace must be covered");
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    const auto& r = ranges[i];
    const std::string label = "range " + DescribeRange(r.start, r.end);
    if (r.shard >= names.size()) throw ConfigError(label + ": owned by an unknown shard");
    if (i == 0 && !r.start.empty()) {
      throw ConfigError(label + ": the first range must start at \"\" so that the whole keyspace is covered");
    }
    const bool last = i + 1 == ranges.size();
    if (r.end.empty() && !last) throw ConfigError(label + ": end is unbounded but more ranges follow; ranges overlap");
    if (!r.end.empty() && r.start >= r.end) throw ConfigError(label + ": start is not below end");
    if (last && !r.end.empty()) {
      throw ConfigError(label + ": the last range must end at \"\" (unbounded) so that the whole keyspace is covered");
    }
    if (i > 0) {
      const auto& prev = ranges[i - 1];
      if (r.start < prev.end) throw ConfigError(label + " overlaps " + DescribeRange(prev.start, prev.end));
      if (r.start > prev.end) {
        throw ConfigError("gap in the keyspace between " + DescribeRange(prev.start, prev.end) + " and " +
                          DescribeRange(r.start, r.end));
      }
    }
  }
}

}  // namespace esp
