#pragma once
// Assembles the proxy: topology from the config, the services, the router and the front end.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "auth/auth_service.h"
#include "cluster/cluster_service.h"
#include "config/config.h"
#include "kv/kv_service.h"
#include "maintenance/maintenance_service.h"
#include "observability/grpc_health.h"
#include "gateway/http_face.h"
#include "observability/http_server.h"
#include "observability/metrics.h"
#include "observability/shard_health.h"
#include "lease/housekeeper.h"
#include "lease/keepalive.h"
#include "lease/lease_service.h"
#include "lease/pending.h"
#include "meta/map_follower.h"
#include "transport/grpc_server.h"
#include "transport/h2_server.h"
#include "transport/router.h"
#include "upstream/topology.h"
#include "watch/watch_stream.h"

namespace esp {

namespace auth {
class IdentityIssuer;
}

// TLS towards clients, with etcd's flag names.
struct ClientTlsOptions {
  std::string cert_file;
  std::string key_file;
  std::string trusted_ca_file;
  bool client_cert_auth = false;  // mutual TLS: refuse clients without a certificate from the CA
  bool enabled() const { return !cert_file.empty(); }
};

// The meta store holding the shard map shared by every proxy (--meta-endpoints). Without
// endpoints the YAML file's layout is served and never changes.
struct MetaStoreOptions {
  meta::EtcdClientOptions client;
  std::string prefix = meta::kDefaultPrefix;
  std::chrono::seconds lease_ttl{10};  // this proxy's registration
  bool enabled() const { return !client.endpoints.empty(); }
};

struct ProxyOptions {
  std::string listen_address = "127.0.0.1:2379";
  int max_request_bytes = 1572864;  // etcd --max-request-bytes
  int max_txn_ops = 128;            // etcd --max-txn-ops
  // URLs clients should use to reach this proxy (MemberList); default http(s)://<listen_address>.
  std::vector<std::string> advertise_client_urls;
  // host:port of the operator HTTP listener (/metrics, /health, ...); empty: none.
  std::string metrics_address;
  ClientTlsOptions tls;
  // Client-facing transport: "h2" (our event loops on nghttp2) or "grpc" (gRPC C++'s server).
  std::string data_plane = "h2";
  int data_plane_threads = 0;  // h2 event loops; 0: one per core
  std::size_t data_plane_stream_buffer = 32 * 1024 * 1024;  // h2: bytes queued per call for a slow reader
  // etcd's --grpc-keepalive-min-time / -interval / -timeout, on either plane: client PINGs more
  // often than the first get GOAWAY too_many_pings; silent clients are pinged, then dropped.
  std::chrono::nanoseconds grpc_keepalive_min_time = std::chrono::seconds(5);
  std::chrono::nanoseconds grpc_keepalive_interval = std::chrono::hours(2);
  std::chrono::nanoseconds grpc_keepalive_timeout = std::chrono::seconds(20);
  // Responses a Watch stream may have queued for a client that does not read them.
  std::size_t watch_buffer_bytes = kDefaultWatchBufferBytes;
  // Towards the shards: "h2" (our nghttp2 client on event loops) or "grpc" (gRPC C++ client).
  std::string upstream_transport = "h2";
  MetaStoreOptions meta;
  // History a Compact across shards keeps on every shard (docs/semantics.md, Compact); 0: none.
  std::chrono::nanoseconds compaction_retention = std::chrono::minutes(5);
};

// Builds the routing snapshot (shard map plus one transport per shard) for a configuration.
// With `metrics`, the transports count their calls and retries there.
// `identity_issuer`: client-certificate identities towards the shards (config client_cert_identity).
std::shared_ptr<const Topology> BuildTopology(const Config& config, Metrics* metrics = nullptr,
                                              const std::string& upstream_transport = "h2",
                                              std::shared_ptr<auth::IdentityIssuer> identity_issuer = nullptr);
// The same from a layout. A shard of `previous` with the same name, endpoints and TLS keeps its
// transport (its connections, and the upstream watch and keep-alive streams keyed by it).
std::shared_ptr<const Topology> BuildTopology(const ShardLayout& layout, Metrics* metrics,
                                              const std::string& upstream_transport,
                                              std::shared_ptr<auth::IdentityIssuer> identity_issuer,
                                              const Topology* previous = nullptr);

class Proxy {
 public:
  // With options.meta enabled the shard layout comes from the meta store (config.shards is
  // ignored): throws meta::MetaError when the store cannot be read, ConfigError when it holds
  // no valid map.
  Proxy(const Config& config, ProxyOptions options);
  ~Proxy();

  bool Start();
  int port() const { return h2_server_ ? h2_server_->port() : server_->port(); }
  void Shutdown();
  // Serves `doc` from now on (the follower's thread); false, keeping the old map, if it cannot.
  bool ApplyMap(const meta::MapDocument& doc);

 private:
  void RegisterGauges();
  void RegisterHttpEndpoints();
  // The endpoints the operator port and the client port's HTTP face share: one handler each.
  std::map<std::string, HttpServer::Handler> SharedHttpEndpoints();
  // /version: the shards' versions come from the health probe, so an answer asked before the
  // first probe has completed waits for it instead of saying "not_decided" while shards are up.
  gateway::AsyncEndpoint VersionEndpoint();

  ProxyOptions options_;
  Metrics metrics_;
  std::shared_ptr<auth::IdentityIssuer> identity_issuer_;  // before topology_: its transports use it
  std::unique_ptr<meta::MapFollower> follower_;  // with a meta store; before topology_: it reads the map
  std::optional<meta::MapDocument> initial_map_;  // the meta store's map at start-up
  TopologyHolder topology_;
  Router router_;
  // Fed by health_, read by kv_'s Compact: before both.
  std::shared_ptr<RevisionHistory> revision_history_;
  std::shared_ptr<move::HoldStats> hold_stats_ = std::make_shared<move::HoldStats>();
  KvService kv_;
  ClusterService cluster_;
  MaintenanceService maintenance_;
  WatchService watch_;
  std::unique_ptr<ShardHealthMonitor> health_;
  GrpcHealthService grpc_health_;
  std::unique_ptr<HttpServer> http_;
  std::shared_ptr<PendingLeases> pending_leases_;
  std::shared_ptr<KeepAliveHub> keepalive_;
  std::shared_ptr<LeaseRepair> lease_repair_;
  LeaseService lease_;
  AuthService auth_;
  Housekeeper housekeeper_;
  std::unique_ptr<GrpcServer> server_;
  // etcd's HTTP face on the client port (h2 data plane only); before h2_server_, which calls it.
  std::unique_ptr<gateway::HttpFace> http_face_;
  std::unique_ptr<H2Server> h2_server_;  // instead of server_ with --data-plane=h2
};

}  // namespace esp
