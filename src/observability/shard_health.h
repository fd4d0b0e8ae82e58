#pragma once
// Probes every shard (Maintenance.Status on one member) at a fixed interval and keeps the last
// result for /health, /readyz, /shards and the shard_up gauges. Probing in the background keeps
// the operator endpoints instant and makes every shard state change a single log line.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "observability/metrics.h"
#include "upstream/topology.h"

namespace esp {

struct ShardState {
  std::string name;
  std::string description;  // shard "name" [start, end)
  std::string start, end;
  std::vector<std::string> endpoints;
  bool probed = false;  // false until the first probe completed
  bool healthy = false;
  std::string error;  // why unhealthy
  std::uint64_t leader = 0;
  std::int64_t revision = 0;
  std::int64_t db_size = 0;
  std::string version;
};

class ShardHealthMonitor {
 public:
  ShardHealthMonitor(const TopologyHolder& topology, std::vector<std::vector<std::string>> endpoints,
                     Metrics& metrics, std::chrono::milliseconds interval = std::chrono::seconds(1));
  ~ShardHealthMonitor();
  void Start();
  void Stop();
  std::vector<ShardState> Snapshot() const;

 private:
  void Run();
  void ProbeOnce();

  const TopologyHolder& topology_;
  std::vector<std::vector<std::string>> endpoints_;
  Metrics& metrics_;
  std::chrono::milliseconds interval_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::vector<ShardState> states_;
  std::thread thread_;
};

// JSON bodies of the operator endpoints, from one snapshot.
std::string HealthJson(const std::vector<ShardState>& shards, bool* healthy);
std::string ShardsJson(const std::vector<ShardState>& shards);

}  // namespace esp
