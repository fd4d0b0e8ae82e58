#pragma once
// The shard map as the meta store keeps it: which etcd clusters (shards) there are, how to reach
// each, and which ranges of the keyspace each owns, under a version that only grows. One JSON
// document under one key, so that every change is one compare-and-swap.
//
//   {"version": 3, "cluster_id": "9f1c...", "change": "add-shard shard-3", "changed_at": "...",
//    "shards": [{"name": "shard-0", "endpoints": ["127.0.0.1:12379"], "tls": {...}}, ...],
//    "ranges": [{"start_base64": "", "end_base64": "aQ==", "shard": "shard-0"}, ...]}
//
// Keys are base64 in the stored document (binary-safe); `map show -w json` adds printable ones.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "shard/shard_map.h"
#include "upstream/topology.h"

namespace esp::meta {

struct MapRange {
  std::string start;
  std::string end;  // "" = unbounded
  std::string shard;
  // Set by a move: the first revision of these keys on their owner; pinned reads and watches
  // below it are told "compacted" (the keys' older revisions lived on another cluster).
  std::int64_t min_revision = 0;
};

// A range move in progress (`reshard move`). The map carries it so that every proxy knows it:
//   "copying": the range (its own entry in `ranges`) is still owned by `from`; proxies send
//              requests touching it there guarded by the fence key (shard/moving_range.h).
//   "cleanup": the range is owned by `to`; the mover is deleting the old copy on `from`.
// The mover's progress (keys copied, lag) lives beside the map, not in it: see reshard/.
struct MoveRecord {
  std::string id;  // random, names the fence key
  std::string start;
  std::string end;  // "" = unbounded
  std::string from;
  std::string to;
  std::string state;  // "copying" | "cleanup"
  std::string started_at;
};

struct MapDocument {
  std::int64_t version = 0;
  std::uint64_t cluster_id = 0;  // chosen at `map init`; MemberList's cluster id for every proxy
  std::string change;            // what made this version, for `map history`
  std::string changed_at;        // RFC 3339, UTC
  std::vector<ShardConfig> shards;  // name, endpoints, tls (start/end unused: see ranges)
  std::vector<MapRange> ranges;
  std::optional<MoveRecord> move;

  // Throws ConfigError naming what is wrong: duplicate or empty names, a shard without endpoint,
  // ranges unsorted, overlapping, with gaps, not covering the keyspace, or naming no shard.
  void Validate() const;
  const ShardConfig* FindShard(const std::string& name) const;
  // The index in `ranges` of the range [start, end), or nullopt.
  std::optional<std::size_t> FindRange(const std::string& start, const std::string& end) const;
  // Whether `name` owns at least one range.
  bool Owns(const std::string& name) const;

  std::string ToJson() const;
  // Throws ConfigError for a document that does not parse or does not validate.
  static MapDocument FromJson(const std::string& text);
  // The YAML layout as a map: one range per shard, as the file says.
  static MapDocument FromConfig(const Config& config);

  // Shard names and ranges as ShardMap takes them (indexes into `shards`).
  std::vector<std::string> ShardNames() const;
  std::vector<OwnedRange> OwnedRanges() const;
  // What the proxy builds its Topology from.
  ShardLayout ToLayout() const;
};

// A fresh random cluster id for `map init` (never 0).
std::uint64_t NewClusterId();
// Now, as RFC 3339 in UTC.
std::string NowRfc3339();

}  // namespace esp::meta
