#pragma once
// Assembles the proxy: topology from the config, the services, the router and the front end.
#include <memory>
#include <string>

#include "config/config.h"
#include "kv/kv_service.h"
#include "lease/housekeeper.h"
#include "lease/keepalive.h"
#include "lease/lease_service.h"
#include "lease/pending.h"
#include "transport/grpc_server.h"
#include "transport/router.h"
#include "upstream/topology.h"

namespace esp {

struct ProxyOptions {
  std::string listen_address = "127.0.0.1:2379";
  int max_request_bytes = 1572864;  // etcd --max-request-bytes
  int max_txn_ops = 128;            // etcd --max-txn-ops
};

// Builds the routing snapshot (shard map plus one transport per shard) for a configuration.
std::shared_ptr<const Topology> BuildTopology(const Config& config);

class Proxy {
 public:
  Proxy(const Config& config, ProxyOptions options);
  ~Proxy();

  bool Start();
  int port() const { return server_->port(); }
  void Shutdown();

 private:
  ProxyOptions options_;
  TopologyHolder topology_;
  Router router_;
  KvService kv_;
  std::shared_ptr<PendingLeases> pending_leases_;
  std::shared_ptr<KeepAliveHub> keepalive_;
  LeaseService lease_;
  Housekeeper housekeeper_;
  std::unique_ptr<GrpcServer> server_;
};

}  // namespace esp
