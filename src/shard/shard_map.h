#pragma once
// The immutable routing table: which shard owns a key, and how a key range splits into
// per-shard pieces. Built once per map version and shared read-only between threads.
//
// Shards (etcd clusters) and ranges are distinct: the keyspace is cut into contiguous ranges,
// each owned by one shard; a shard may own several ranges (after moves) or none (a cluster just
// added, not given a range yet). Shard indexes are positions in the shard list and are what
// `Topology::shards` is indexed by.
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace esp {

// One shard owning one range: the static YAML layout (`shards: [{start, end, ...}]`).
struct ShardBounds {
  std::string name;
  std::string start;  // inclusive; "" only for the first shard
  std::string end;    // exclusive; "" = unbounded (last shard only)
};

// A range of the keyspace and the index of the shard that owns it.
struct OwnedRange {
  std::string start;  // inclusive
  std::string end;    // exclusive; "" = unbounded (last range only)
  std::size_t shard = 0;
};

struct KeyRange {
  std::string start;
  std::string end;  // "" = unbounded
};

struct ShardInfo {
  std::string name;
  std::vector<KeyRange> ranges;  // in key order; empty for a shard that owns nothing
};

// One shard's part of a client range, in etcd's request conventions: `range_end` empty means a
// single key, "\0" means "every key >= key".
struct RangePiece {
  std::size_t shard;
  std::string key;
  std::string range_end;
};

class ShardMap {
 public:
  // One range per shard, in order. `shards` must be validated: sorted, contiguous, covering the
  // keyspace (see ValidateConfig).
  explicit ShardMap(std::vector<ShardBounds> shards);
  // Shards by name and the ranges they own. `ranges` must be sorted, contiguous and cover the
  // keyspace, each naming a shard index below names.size() (see ValidateRanges). Adjacent ranges
  // of one shard are joined: a piece is then one shard's whole contiguous part.
  ShardMap(std::vector<std::string> names, std::vector<OwnedRange> ranges);

  std::size_t size() const { return shards_.size(); }
  const ShardInfo& shard(std::size_t index) const { return shards_[index]; }
  const std::vector<OwnedRange>& ranges() const { return ranges_; }
  // The index of the shard named `name`, or nullopt.
  std::optional<std::size_t> Find(std::string_view name) const;

  std::size_t ShardForKey(std::string_view key) const;

  // Splits the etcd range [key, range_end) into the pieces each shard must serve, in key order
  // (one per owned range it touches). A single key or an empty/inverted range (range_end <= key)
  // yields one piece on the shard owning `key`, unchanged, so that the shard gives etcd's own
  // answer for it.
  std::vector<RangePiece> Split(std::string_view key, std::string_view range_end) const;

  // The one shard [key, range_end) lies in (Split's single piece), or nullopt if it spans shards.
  // Allocates nothing: the common path of every single-shard request asks this first.
  std::optional<std::size_t> SingleShard(std::string_view key, std::string_view range_end) const;

  // The shards that [key, range_end) touches (same conventions as Split), in key order.
  std::vector<std::size_t> ShardsForRange(std::string_view key, std::string_view range_end) const;

  // `shard "name" ["start", "end")` for messages (every range it owns; "(no range)" for none).
  std::string Describe(std::size_t index) const;

 private:
  std::size_t RangeForKey(std::string_view key) const;

  std::vector<ShardInfo> shards_;
  std::vector<OwnedRange> ranges_;
};

// Checks a range list as ShardMap's second constructor needs it; throws ConfigError naming the
// offending range (`names` give the shards' names for messages).
void ValidateRanges(const std::vector<std::string>& names, const std::vector<OwnedRange>& ranges);

// `["start", "end")` with printable keys.
std::string DescribeRange(std::string_view start, std::string_view end);

// etcd's range_end for "every key >= key".
inline constexpr std::string_view kRangeEndAll{"\0", 1};

}  // namespace esp
