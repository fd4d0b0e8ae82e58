#pragma once
// Prometheus metrics of the proxy. Requests are counted where every call passes: at the Router
// (client side) and at ShardTransport (shard side), never inside a service.
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "transport/router.h"
#include "upstream/topology.h"

namespace esp {

// gRPC's name of a status code ("OK", "Unavailable", ...), as Go's grpc-prometheus labels it.
const char* StatusCodeName(StatusCode code);

// The metrics of one label set (one method, or one shard and method), resolved once. Looking a
// child up in a prometheus-cpp Family hashes its labels and takes a lock: too costly per request.
class CallMetrics {
 public:
  CallMetrics(prometheus::Family<prometheus::Counter>& calls, prometheus::Family<prometheus::Histogram>& latency,
              prometheus::Family<prometheus::Counter>* errors, const prometheus::Labels& labels);
  void Record(StatusCode code, double seconds);

 private:
  static constexpr std::size_t kCodes = 17;
  prometheus::Family<prometheus::Counter>& calls_;
  prometheus::Labels labels_;
  prometheus::Histogram& latency_;
  prometheus::Counter* errors_;
  std::array<std::atomic<prometheus::Counter*>, kCodes> by_code_{};  // filled on first use
};

class Metrics {
 public:
  Metrics();
  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  // Wraps every handler on `router` with request counting, latency and in-flight tracking.
  void InstrumentRouter(Router& router);
  // A topology whose transports count their calls, errors and latency under the shard's name.
  std::shared_ptr<const Topology> InstrumentTopology(std::shared_ptr<const Topology> topology);
  std::shared_ptr<ShardTransport> InstrumentTransport(std::shared_ptr<ShardTransport> transport, const std::string& shard);
  void SetShardUp(const std::string& shard, bool up);
  // A gauge whose value `read` gives at scrape time: the services keep their own counts (client
  // watches, upstream watchers, leases kept alive) and need no Metrics on their paths.
  void AddSampledGauge(const std::string& name, const std::string& help, std::function<double()> read);
  // Every metric for a scrape, the sampled gauges read first.
  std::vector<prometheus::MetricFamily> Collect();

  // Used by the wrappers; public so that they need no friendship.
  std::shared_ptr<CallMetrics> ForMethod(const std::string& method);
  std::shared_ptr<CallMetrics> ForUpstream(const std::string& shard, const std::string& method);
  void RecordRetry(const std::string& shard, const std::string& method);
  prometheus::Gauge& InFlight(const std::string& method);
  prometheus::Gauge& OpenStreams(const std::string& method);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Family<prometheus::Gauge>& in_flight_;
  prometheus::Family<prometheus::Gauge>& open_streams_;
  prometheus::Family<prometheus::Counter>& upstream_requests_;
  prometheus::Family<prometheus::Counter>& upstream_errors_;
  prometheus::Family<prometheus::Histogram>& upstream_latency_;
  prometheus::Family<prometheus::Counter>& upstream_retries_;
  prometheus::Family<prometheus::Gauge>& shard_up_;
  std::mutex sampled_mu_;
  std::vector<std::pair<prometheus::Gauge*, std::function<double()>>> sampled_;
};

}  // namespace esp
