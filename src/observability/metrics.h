#pragma once
// Prometheus metrics of the proxy. Requests are counted where every call passes: at the Router
// (client side) and at ShardTransport (shard side), never inside a service.
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "transport/router.h"
#include "upstream/topology.h"

namespace esp {

// gRPC's name of a status code ("OK", "Unavailable", ...), as Go's grpc-prometheus labels it.
const char* StatusCodeName(StatusCode code);

class Metrics {
 public:
  Metrics();
  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  // Wraps every handler on `router` with request counting, latency and in-flight tracking.
  void InstrumentRouter(Router& router);
  // A topology whose transports count their calls, errors and latency under the shard's name.
  std::shared_ptr<const Topology> InstrumentTopology(std::shared_ptr<const Topology> topology);
  void SetShardUp(const std::string& shard, bool up);

  // Used by the wrappers; public so that they need no friendship.
  void RecordRequest(const std::string& method, StatusCode code, double seconds);
  void RecordUpstream(const std::string& shard, const std::string& method, StatusCode code, double seconds);
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
};

}  // namespace esp
