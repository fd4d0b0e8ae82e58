#pragma once
// The standard gRPC health service (grpc.health.v1.Health) on the main port, for load balancers
// and gRPC clients with health checking. The server as a whole (service "") is SERVING while
// every shard is reachable with a leader, as ShardHealthMonitor last saw it. Alarms do not count:
// etcd keeps its own gRPC health SERVING under a NOSPACE alarm (reads and deletes still work).
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "observability/shard_health.h"
#include "transport/router.h"

namespace esp {

class GrpcHealthService {
 public:
  // Subscribes to `monitor`: construct before the monitor starts.
  explicit GrpcHealthService(ShardHealthMonitor& monitor);
  void Register(Router& router);
  // Tells every watcher NOT_SERVING and ends its stream, so that the server's shutdown does
  // not wait for streams that would otherwise never end.
  void Shutdown();

  // Adds a Watch stream and sends it its first status; false once shut down. Used by the
  // stream handler.
  bool AddWatcher(std::uint64_t id, std::shared_ptr<StreamSink> sink);
  void RemoveWatcher(std::uint64_t id);

 private:
  struct Watcher {
    std::shared_ptr<StreamSink> sink;
    bool last_sent_serving = false;
  };
  bool ServingNow() const;
  void Broadcast(bool serving);

  ShardHealthMonitor& monitor_;
  std::mutex mu_;
  bool shut_down_ = false;
  std::uint64_t next_id_ = 1;
  std::map<std::uint64_t, Watcher> watchers_;

  friend class HealthWatchStream;
  std::uint64_t NextId();
};

}  // namespace esp
