#pragma once
// A published routing snapshot: the shard map and, for each shard, its transport. Requests take
// one snapshot at their start and use it to the end; publishing a new one never stops traffic.
#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <memory>
#include <optional>
#include <vector>

#include "config/config.h"
#include "shard/moving_range.h"
#include "shard/shard_map.h"
#include "upstream/shard_transport.h"

namespace esp {

struct Topology {
  ShardMap map;
  std::vector<std::shared_ptr<ShardTransport>> shards;  // indexed like map
  std::vector<ShardConfig> configs;  // how each shard is reached (endpoints, TLS), indexed like map
  std::int64_t map_version = 0;      // the meta store's map version; 0 for a static YAML layout
  std::optional<MovingRange> moving;  // a range on its way to another shard (still the source's)
  std::vector<RevisionFloor> floors;  // moved ranges' first revisions on their new owner
};

// What a Topology is built from: the shards (name, endpoints, TLS) and the ranges they own.
struct ShardLayout {
  std::vector<ShardConfig> shards;
  std::vector<OwnedRange> ranges;  // indexes into shards
  std::int64_t version = 0;
  std::optional<MovingRange> moving;
  std::vector<RevisionFloor> floors;
};

// The YAML layout: one range per shard, as the file says.
ShardLayout LayoutFromConfig(const Config& config);

class TopologyHolder {
 public:
  explicit TopologyHolder(std::shared_ptr<const Topology> initial) : current_(std::move(initial)) {}
  ~TopologyHolder();

  std::shared_ptr<const Topology> Get() const { return current_.load(std::memory_order_acquire); }
  // Swaps the snapshot, then wakes every AwaitNewer whose version it passes (on this thread).
  void Publish(std::shared_ptr<const Topology> next);

  // Calls `done(true)` once a map newer than `version` is published (at once if it already is),
  // or `done(false)` at `deadline`; exactly once, on any thread. For requests a moving range's
  // source refused (move/guarded_call.h): they wait for the map naming the new owner.
  void AwaitNewer(std::int64_t version, std::chrono::system_clock::time_point deadline,
                  std::function<void(bool)> done) const;

 private:
  struct Waiter;
  std::atomic<std::shared_ptr<const Topology>> current_;
  mutable std::mutex mu_;
  mutable std::vector<std::shared_ptr<Waiter>> waiters_;
};

}  // namespace esp
