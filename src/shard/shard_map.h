#pragma once
// The immutable routing table: which shard owns a key, and how a key range splits into
// per-shard pieces. Built once per configuration and shared read-only between threads.
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace esp {

struct ShardBounds {
  std::string name;
  std::string start;  // inclusive; "" only for the first shard
  std::string end;    // exclusive; "" = unbounded (last shard only)
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
  // `shards` must be validated: sorted, contiguous, covering the keyspace (see ValidateConfig).
  explicit ShardMap(std::vector<ShardBounds> shards);

  std::size_t size() const { return shards_.size(); }
  const ShardBounds& shard(std::size_t index) const { return shards_[index]; }

  std::size_t ShardForKey(std::string_view key) const;

  // Splits the etcd range [key, range_end) into the pieces each shard must serve, in key order.
  // A single key or an empty/inverted range (range_end <= key) yields one piece on the shard
  // owning `key`, unchanged, so that the shard gives etcd's own answer for it.
  std::vector<RangePiece> Split(std::string_view key, std::string_view range_end) const;

  // The one shard [key, range_end) lies in (Split's single piece), or nullopt if it spans shards.
  // Allocates nothing: the common path of every single-shard request asks this first.
  std::optional<std::size_t> SingleShard(std::string_view key, std::string_view range_end) const;

  // The shards that [key, range_end) touches (same conventions as Split), in key order.
  std::vector<std::size_t> ShardsForRange(std::string_view key, std::string_view range_end) const;

  // `shard "name" ["start", "end")` for messages.
  std::string Describe(std::size_t index) const;

 private:
  std::vector<ShardBounds> shards_;
};

// etcd's range_end for "every key >= key".
inline constexpr std::string_view kRangeEndAll{"\0", 1};

}  // namespace esp
