#pragma once
// A published routing snapshot: the shard map and, for each shard, its transport. Requests take
// one snapshot at their start and use it to the end; publishing a new one never stops traffic.
#include <atomic>
#include <memory>
#include <vector>

#include "config/config.h"
#include "shard/shard_map.h"
#include "upstream/shard_transport.h"

namespace esp {

struct Topology {
  ShardMap map;
  std::vector<std::shared_ptr<ShardTransport>> shards;  // indexed like map
  std::vector<ShardConfig> configs;  // how each shard is reached (endpoints, TLS), indexed like map
  std::int64_t map_version = 0;      // the meta store's map version; 0 for a static YAML layout
};

// What a Topology is built from: the shards (name, endpoints, TLS) and the ranges they own.
struct ShardLayout {
  std::vector<ShardConfig> shards;
  std::vector<OwnedRange> ranges;  // indexes into shards
  std::int64_t version = 0;
};

// The YAML layout: one range per shard, as the file says.
ShardLayout LayoutFromConfig(const Config& config);

class TopologyHolder {
 public:
  explicit TopologyHolder(std::shared_ptr<const Topology> initial) : current_(std::move(initial)) {}

  std::shared_ptr<const Topology> Get() const { return current_.load(std::memory_order_acquire); }
  void Publish(std::shared_ptr<const Topology> next) { current_.store(std::move(next), std::memory_order_release); }

 private:
  std::atomic<std::shared_ptr<const Topology>> current_;
};

}  // namespace esp
