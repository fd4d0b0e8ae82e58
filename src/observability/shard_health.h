#pragma once
// Probes every shard (Maintenance.Status and Alarm GET on one member) at a fixed interval and
// keeps the last result for /health, /readyz, /shards, the gRPC health service and the shard_up
// gauges. Probing in the background keeps the operator endpoints instant and makes every shard
// state change a single log line.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "auth/proxy_credentials.h"
#include "kv/revision_history.h"
#include "observability/metrics.h"
#include "upstream/topology.h"

namespace esp {

struct ShardState {
  std::string name;
  std::string description;  // shard "name" [start, end)
  std::vector<KeyRange> ranges;  // what it owns in the map the probe used
  std::vector<std::string> endpoints;
  bool probed = false;  // false until the first probe completed
  bool healthy = false;  // reachable, with a leader
  std::string error;     // why not healthy
  // Healthy, but not checked in full: the shard answers yet refuses Status and Alarm to the
  // probe's identity (etcd 3.5+ with auth on, and no `credentials` configured).
  std::string note;
  std::vector<std::string> alarms;  // active alarm types ("NOSPACE", "CORRUPT"), from the last probe
  std::uint64_t leader = 0;
  std::uint64_t cluster_id = 0;  // from the last answer's header: two shards must be two clusters
  std::int64_t revision = 0;
  std::int64_t db_size = 0;
  std::string version;
};

// Whether the proxy can serve the whole keyspace, and if not, which shards fail and why.
struct HealthVerdict {
  bool healthy = true;
  std::string reason;  // "" when healthy; else one "<shard>: <why>" per failing shard, "; "-joined
};

// etcd's /health: unreachable shards and any active alarm (unless its type is in `excluded`,
// as etcd's ?exclude=NOSPACE) make it unhealthy.
HealthVerdict JudgeHealth(const std::vector<ShardState>& shards, const std::set<std::string>& excluded_alarms = {});
// etcd 3.6's /readyz: unreachable shards and CORRUPT alarms only. A NOSPACE shard still serves
// reads and deletes, so the proxy stays in rotation.
HealthVerdict JudgeReadiness(const std::vector<ShardState>& shards);
// Reachability only: the gRPC health service (etcd keeps it SERVING under an alarm).
HealthVerdict JudgeServing(const std::vector<ShardState>& shards);

class ShardHealthMonitor {
 public:
  // Called on the probe thread after a probe that changed JudgeServing's answer (and after the first).
  using ServingListener = std::function<void(bool serving)>;

  // Each shard's endpoints come from the topology, which may change between probes.
  ShardHealthMonitor(const TopologyHolder& topology, Metrics& metrics,
                     std::chrono::milliseconds interval = std::chrono::seconds(1));
  ~ShardHealthMonitor();
  // Register listeners and credentials before Start. The credentials are the proxy's own
  // identity for the probes: etcd 3.5+ with auth on refuses Status and Alarm without a token.
  void OnServingChange(ServingListener listener) { listeners_.push_back(std::move(listener)); }
  void SetCredentials(ProxyCredentials credentials) { credentials_ = std::move(credentials); }
  // Where each answered probe records the shard's revision (for Compact's retention).
  void SetRevisionHistory(std::shared_ptr<RevisionHistory> history) { revision_history_ = std::move(history); }
  void Start();
  void Stop();
  std::vector<ShardState> Snapshot() const;
  // Runs `done` once every shard of the current map has been probed (answered or failed): at
  // once on the caller's thread if so, else on the probe thread right after the probe that
  // completes it (bounded by that probe's deadline), or at Stop. For answers that need what
  // only a probe knows, such as /version's shard versions right after start.
  void WhenProbed(std::function<void()> done);

 private:
  void Run();
  void ProbeOnce();
  // A new shard map: one state per shard of `topology`, carried over by name.
  void FollowTopologyLocked(std::shared_ptr<const Topology> topology) const;
  // The metadata a probe of `shard` carries: the proxy's token when credentials are set. Waits
  // (probe thread only) at most until `deadline`.
  Metadata ProbeMetadata(std::size_t shard, Clock::time_point deadline) const;

  const TopologyHolder& topology_;
  Metrics& metrics_;
  std::chrono::milliseconds interval_;
  std::vector<ServingListener> listeners_;
  ProxyCredentials credentials_;
  std::shared_ptr<RevisionHistory> revision_history_;
  std::optional<bool> serving_;  // probe thread only
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::vector<std::function<void()>> probed_waiters_;  // WhenProbed's, until every shard is probed
  // Mutable: a snapshot taken after a map change shows the new shards ("not probed yet").
  mutable std::vector<ShardState> states_;
  mutable std::shared_ptr<const Topology> states_topology_;  // which topology states_ is laid out for
  std::thread thread_;
};

// JSON bodies of the operator endpoints.
std::string HealthJson(const HealthVerdict& verdict);  // etcd's {"health":"true","reason":""}
// `map_version`: the shard map the proxy serves (0 for a static layout), in every entry.
std::string ShardsJson(const std::vector<ShardState>& shards, std::int64_t map_version = 0);

}  // namespace esp
