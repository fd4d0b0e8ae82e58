#include "server/proxy.h"

#include "upstream/upstream_fence.h"

#include <grpcpp/security/server_credentials.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <set>
#include <future>
#include <sstream>

#include "auth/cert_identity.h"
#include "auth/token.h"
#include "server/unimplemented.h"
#include "shard/kubernetes_layout.h"
#include "upstream/grpc_shard_transport.h"
#include "upstream/h2_shard_transport.h"

namespace esp {

// A keep-alive round answers without a shard that has not answered within this time; below the
// 2 s minimum lease TTL, so a hung shard cannot let a lease lapse on the living ones.
constexpr std::chrono::milliseconds kKeepAliveShardTimeout(1000);
constexpr std::chrono::milliseconds kHousekeepingTick(200);
// Pending lease grants and revokes are retried every this many ticks.
constexpr int kPendingFlushTicks = 5;

// /auth/consistency answers from a check at most this old (and starts a new one when it is older).
constexpr std::chrono::seconds kConsistencyMaxAge(5);

// gRPC's framing and metadata on top of the largest request etcd accepts (etcd adds the same).
constexpr int kGrpcOverheadBytes = 512 * 1024;

namespace {

// Client-certificate identities need a connection per identity, which only our HTTP/2 client
// keeps (per member, per loop, bounded); with gRPC's client that would be a channel per user.
std::shared_ptr<auth::IdentityIssuer> MakeIdentityIssuer(const Config& config, const std::string& upstream_transport) {
  if (!config.client_cert_identity) return nullptr;
  if (upstream_transport != "h2") {
    throw ConfigError("'client_cert_identity' needs --upstream-transport=h2 (the gRPC upstream transport cannot "
                      "present a certificate per client identity)");
  }
  return std::make_shared<auth::IdentityIssuer>(*config.client_cert_identity);
}

}  // namespace

namespace {

// The previous topology's transport for `shard`, if it reaches the same cluster the same way.
std::shared_ptr<ShardTransport> ReusableTransport(const Topology* previous, const ShardConfig& shard) {
  if (previous == nullptr) return nullptr;
  const auto index = previous->map.Find(shard.name);
  if (!index || *index >= previous->configs.size()) return nullptr;
  const ShardConfig& before = previous->configs[*index];
  if (before.endpoints != shard.endpoints || !SameTls(before.tls, shard.tls)) return nullptr;
  return previous->shards[*index];
}

std::shared_ptr<ShardTransport> NewTransport(const ShardConfig& shard, std::string description, Metrics* metrics,
                                             const std::string& upstream_transport,
                                             std::shared_ptr<auth::IdentityIssuer> identity_issuer) {
  UpstreamTuning tuning;
  tuning.identity_issuer = std::move(identity_issuer);
  if (metrics != nullptr) {
    tuning.on_retry = [metrics, name = shard.name](const std::string& method) { metrics->RecordRetry(name, method); };
  }
  tuning.translate_token = [name = shard.name](std::string_view token) { return auth::TokenForShard(token, name); };
  std::shared_ptr<ShardTransport> transport;
  if (upstream_transport == "h2") {
    transport = std::make_shared<H2ShardTransport>(shard, std::move(description), std::move(tuning));
  } else {
    transport = std::make_shared<GrpcShardTransport>(shard, std::move(description), std::move(tuning));
  }
  return metrics != nullptr ? metrics->InstrumentTransport(std::move(transport), shard.name) : transport;
}

}  // namespace

ShardLayout LayoutFromConfig(const Config& config) {
  ShardLayout layout;
  for (const auto& entry : config.shards) {
    // Entries with one name are one cluster (ValidateConfig checked they name it alike).
    const auto known = std::find_if(layout.shards.begin(), layout.shards.end(),
                                    [&](const ShardConfig& s) { return s.name == entry.name; });
    const auto index = static_cast<std::size_t>(known - layout.shards.begin());
    if (known == layout.shards.end()) layout.shards.push_back(entry);
    layout.ranges.push_back({entry.start, entry.end, index});
  }
  return layout;
}

std::shared_ptr<const Topology> BuildTopology(const ShardLayout& layout, Metrics* metrics,
                                              const std::string& upstream_transport,
                                              std::shared_ptr<auth::IdentityIssuer> identity_issuer,
                                              const Topology* previous) {
  std::vector<std::string> names;
  for (const auto& shard : layout.shards) names.push_back(shard.name);
  ShardMap map(std::move(names), layout.ranges);
  std::vector<std::shared_ptr<ShardTransport>> transports;
  for (std::size_t i = 0; i < layout.shards.size(); ++i) {
    auto transport = ReusableTransport(previous, layout.shards[i]);
    if (!transport) transport = NewTransport(layout.shards[i], map.Describe(i), metrics, upstream_transport, identity_issuer);
    transports.push_back(std::move(transport));
  }
  return std::make_shared<const Topology>(
      Topology{std::move(map), std::move(transports), layout.shards, layout.version, layout.moving, layout.floors});
}

std::shared_ptr<const Topology> BuildTopology(const Config& config, Metrics* metrics,
                                              const std::string& upstream_transport,
                                              std::shared_ptr<auth::IdentityIssuer> identity_issuer) {
  return BuildTopology(LayoutFromConfig(config), metrics, upstream_transport, std::move(identity_issuer));
}

namespace {

std::chrono::milliseconds Millis(std::chrono::nanoseconds d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d);
}

std::vector<std::string> AdvertisedUrls(const ProxyOptions& options) {
  if (!options.advertise_client_urls.empty()) return options.advertise_client_urls;
  return {(options.tls.enabled() ? "https://" : "http://") + options.listen_address};
}

std::shared_ptr<grpc::ServerCredentials> ServerCredentials(const ClientTlsOptions& tls) {
  if (!tls.enabled()) return nullptr;
  grpc::SslServerCredentialsOptions options(tls.client_cert_auth
                                                ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                                : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (!tls.trusted_ca_file.empty()) options.pem_root_certs = ReadFileOrThrow(tls.trusted_ca_file);
  options.pem_key_cert_pairs.push_back({ReadFileOrThrow(tls.key_file), ReadFileOrThrow(tls.cert_file)});
  return grpc::SslServerCredentials(options);
}

std::unique_ptr<meta::MapFollower> MakeFollower(const ProxyOptions& options, meta::MapFollower::ApplyMap apply) {
  if (!options.meta.enabled()) return nullptr;
  meta::FollowerOptions follower;
  follower.prefix = options.meta.prefix;
  follower.lease_ttl = options.meta.lease_ttl;
  const auto urls = AdvertisedUrls(options);
  follower.self.name = urls.front();
  follower.self.member_id = Fnv1a64(urls.front());  // as MakeProxyIdentity
  follower.self.client_urls = urls;
  follower.self.started_at = meta::NowRfc3339();
  return std::make_unique<meta::MapFollower>(std::make_unique<meta::EtcdClient>(options.meta.client),
                                             std::move(follower), std::move(apply));
}

std::optional<meta::MapDocument> LoadInitialMap(meta::MapFollower* follower) {
  if (follower == nullptr) return std::nullopt;
  return follower->LoadInitial();
}

ProxyIdentity Identity(const ShardMap& map, const ProxyOptions& options, const Config& config,
                       const std::optional<meta::MapDocument>& initial_map) {
  auto identity = MakeProxyIdentity(map, AdvertisedUrls(options), config.proxies);
  // One id for every proxy of the map, whatever the map's version: chosen at `map init`.
  if (initial_map) identity.cluster_id = initial_map->cluster_id;
  return identity;
}

}  // namespace

Proxy::Proxy(const Config& config, ProxyOptions options)
    : options_(std::move(options)),
      identity_issuer_(MakeIdentityIssuer(config, options_.upstream_transport)),
      follower_(MakeFollower(options_, [this](const meta::MapDocument& doc) { return ApplyMap(doc); })),
      initial_map_(LoadInitialMap(follower_.get())),
      topology_(BuildTopology(initial_map_ ? initial_map_->ToLayout() : LayoutFromConfig(config), &metrics_,
                              options_.upstream_transport, identity_issuer_)),
      revision_history_(std::make_shared<RevisionHistory>(options_.compaction_retention)),
      kv_(topology_, KvOptions{.max_txn_ops = options_.max_txn_ops,
                               .revision_history = revision_history_,
                               .hold_stats = hold_stats_}),
      cluster_(topology_, Identity(topology_.Get()->map, options_, config, initial_map_)),
      maintenance_(topology_, Identity(topology_.Get()->map, options_, config, initial_map_)),
      watch_(topology_, options_.watch_buffer_bytes),
      health_(std::make_unique<ShardHealthMonitor>(topology_, metrics_)),
      grpc_health_(*health_),
      pending_leases_(std::make_shared<PendingLeases>(topology_)),
      keepalive_(std::make_shared<KeepAliveHub>(topology_, pending_leases_, kKeepAliveShardTimeout)),
      lease_repair_(std::make_shared<LeaseRepair>(topology_, pending_leases_)),
      lease_(topology_, pending_leases_, keepalive_, lease_repair_),
      auth_(topology_, LoadCredentials(config)),
      housekeeper_(kHousekeepingTick) {
  kv_.SetLeaseHook(lease_repair_);
  if (follower_) {
    cluster_.SetPeerSource([follower = follower_.get()] {
      std::vector<PeerProxy> peers;
      for (const auto& record : follower->LiveProxies()) {
        peers.push_back({record.member_id, record.name, record.client_urls});
      }
      return peers;
    });
  }
  if (options_.upstream_transport == "h2") {
    // Per-member calls (Defragment) carry the caller's identity like any other: the shard's own
    // token for a composite one, the client certificate's CN.
    maintenance_.SetMemberTransportFactory([issuer = identity_issuer_](const ShardConfig& member,
                                                                       std::string description) {
      UpstreamTuning tuning;
      tuning.translate_token = [shard = member.name](std::string_view token) {
        return auth::TokenForShard(token, shard);
      };
      tuning.identity_issuer = issuer;
      return std::make_shared<H2ShardTransport>(member, std::move(description), std::move(tuning));
    });
  }
  keepalive_->SetSplitHandler([repair = lease_repair_](const LeaseSplit& split) { repair->Resolve(split); });
  // The proxy's own identity (config `credentials`) for every call it makes on its own behalf.
  const ProxyCredentials own = auth_.internal_tokens()->AsProxyCredentials();
  pending_leases_->SetCredentials(own);
  health_->SetCredentials(own);
  health_->SetRevisionHistory(revision_history_);
  lease_repair_->SetCredentials(own);
  kv_.Register(router_);
  lease_.Register(router_);
  cluster_.Register(router_);
  maintenance_.Register(router_);
  watch_.Register(router_);
  grpc_health_.Register(router_);
  RegisterGauges();
  auth_.Register(router_);
  housekeeper_.OnTick([hub = keepalive_] { hub->Tick(); });
  housekeeper_.OnTick([pending = pending_leases_, ticks = 0]() mutable {
    if (++ticks % kPendingFlushTicks == 0) pending->Flush();
  });
  WarnAboutCertificateIdentity(config, options_.tls.client_cert_auth);
  RegisterUnimplemented(router_);
  // Last: the wrapper must see every handler, the UNIMPLEMENTED ones included.
  metrics_.InstrumentRouter(router_);
  if (!options_.metrics_address.empty()) {
    http_ = std::make_unique<HttpServer>(options_.metrics_address);
    RegisterHttpEndpoints();
  }
  if (options_.data_plane == "h2") {
    H2ServerOptions h2;
    h2.listen_address = options_.listen_address;
    h2.loops = options_.data_plane_threads;
    // One set of loops for both sides (issue #4): a call read on loop i goes out on loop i's
    // connection to the shard and its answer is written back from loop i, with no thread hop.
    if (options_.upstream_transport == "h2") {
      const auto upstream = UpstreamLoops::Shared();
      if (h2.loops <= 0 || static_cast<std::size_t>(h2.loops) == upstream->size()) h2.shared_loops = upstream->loops();
    }
    h2.limits.max_pending_bytes_per_stream = options_.data_plane_stream_buffer;
    h2.limits.max_receive_bytes = static_cast<std::size_t>(options_.max_request_bytes + kGrpcOverheadBytes);
    h2.limits.ping_policy.min_time = options_.grpc_keepalive_min_time;
    h2.limits.keepalive_interval = options_.grpc_keepalive_interval;
    h2.limits.keepalive_timeout = options_.grpc_keepalive_timeout;
    h2.tls = {options_.tls.cert_file, options_.tls.key_file, options_.tls.trusted_ca_file, options_.tls.client_cert_auth};
    http_face_ = std::make_unique<gateway::HttpFace>(router_, h2.limits.max_receive_bytes, SharedHttpEndpoints(),
                                                     std::map<std::string, gateway::AsyncEndpoint>{
                                                         {"/version", VersionEndpoint()}});
    h2.http_handler = [face = http_face_.get()](HttpCall call, CallContextPtr context, std::shared_ptr<HttpReply> reply) {
      face->Serve(std::move(call), std::move(context), std::move(reply));
    };
    // A JSON body holds the request's bytes in base64 (4/3) plus names and quotes: room for the
    // largest message the gRPC planes accept, which the gateway then checks on the protobuf.
    h2.http1_limits.max_body_bytes = 3 * h2.limits.max_receive_bytes;
    h2.http1_limits.headers = h2.limits.headers;
    h2.http1_limits.max_pending_bytes = options_.data_plane_stream_buffer;
    h2_server_ = std::make_unique<H2Server>(router_, std::move(h2));
    return;
  }
  server_ = std::make_unique<GrpcServer>(
      router_, GrpcServerOptions{.listen_address = options_.listen_address,
                                 .max_receive_bytes = options_.max_request_bytes + kGrpcOverheadBytes,
                                 .credentials = ServerCredentials(options_.tls),
                                 .keepalive_min_time = Millis(options_.grpc_keepalive_min_time),
                                 .keepalive_interval = Millis(options_.grpc_keepalive_interval),
                                 .keepalive_timeout = Millis(options_.grpc_keepalive_timeout)});
}

Proxy::~Proxy() { Shutdown(); }

void Proxy::RegisterGauges() {
  metrics_.AddSampledGauge("etcd_proxy_map_version", "Version of the shard map this proxy serves (0: a static YAML layout)",
                           [this] { return static_cast<double>(topology_.Get()->map_version); });
  if (follower_) {
    // The running move's progress as its mover last wrote it to the meta store (reshard status).
    const auto progress = [follower = follower_.get()](const char* field) {
      const auto j = nlohmann::json::parse(follower->MoveProgress(), nullptr, false);
      return j.is_object() && j.contains(field) && j[field].is_number() ? j[field].get<double>() : 0.0;
    };
    metrics_.AddSampledGauge("etcd_proxy_move_keys_copied", "Keys the running range move has copied (0: none running)",
                             [progress] { return progress("keys_copied"); });
    metrics_.AddSampledGauge("etcd_proxy_move_lag_revisions",
                             "Revisions the running move's copy was behind its source when last measured",
                             [progress] { return progress("lag"); });
    metrics_.AddSampledGauge("etcd_proxy_self_fenced",
                             "1 while this proxy serves no key because its meta-store registration may have lapsed",
                             [] { return fence::SendAllowed() ? 0.0 : 1.0; });
    metrics_.AddSampledGauge("etcd_proxy_meta_store_up",
                             "1 while the meta store (shard map, proxy registration) is reachable",
                             [follower = follower_.get()] { return follower->connected() ? 1.0 : 0.0; });
  }
  metrics_.AddSampledGauge("etcd_proxy_move_in_progress",
                           "1 while a range this proxy serves is being copied to another shard (requests to it go guarded)",
                           [this] { return topology_.Get()->moving ? 1.0 : 0.0; });
  metrics_.AddSampledGauge("etcd_proxy_move_held_requests",
                           "Requests to a moving range held at its cut-over until the new map arrived (since start)",
                           [stats = hold_stats_] { return static_cast<double>(stats->count()); });
  metrics_.AddSampledGauge("etcd_proxy_move_hold_seconds_sum", "Total time requests were held at cut-overs",
                           [stats = hold_stats_] { return stats->sum_seconds(); });
  metrics_.AddSampledGauge("etcd_proxy_move_hold_seconds_max", "Longest time one request was held at a cut-over",
                           [stats = hold_stats_] { return stats->max_seconds(); });
  metrics_.AddSampledGauge("etcd_proxy_client_watches", "Watches open on client Watch streams",
                           [hub = watch_.hub()] { return static_cast<double>(hub->ClientWatchCount()); });
  metrics_.AddSampledGauge("etcd_proxy_upstream_watchers", "Watchers the proxy holds on shards' Watch streams",
                           [hub = watch_.hub()] { return static_cast<double>(hub->UpstreamWatcherCount()); });
  metrics_.AddSampledGauge("etcd_proxy_leases_kept_alive",
                           "Distinct leases that open client LeaseKeepAlive streams have renewed",
                           [hub = keepalive_] { return static_cast<double>(hub->KeptAliveLeaseCount()); });
  metrics_.AddSampledGauge("etcd_proxy_keepalive_lanes",
                           "Client identities with their own upstream LeaseKeepAlive streams (one without auth)",
                           [hub = keepalive_] { return static_cast<double>(hub->LaneCount()); });
}

namespace {

// Lowest first: "3.4.23" < "3.5.0" < "3.10.1" (numeric per component).
bool VersionLess(const std::string& a, const std::string& b) {
  std::istringstream sa(a), sb(b);
  for (;;) {
    std::string pa, pb;
    const bool ha = static_cast<bool>(std::getline(sa, pa, '.'));
    const bool hb = static_cast<bool>(std::getline(sb, pb, '.'));
    if (!ha || !hb) return !ha && hb;
    const long na = std::strtol(pa.c_str(), nullptr, 10), nb = std::strtol(pb.c_str(), nullptr, 10);
    if (na != nb) return na < nb;
  }
}

// etcd's /version for the sharded cluster: the lowest server version among the shards (from the
// health probe's Maintenance.Status) and, as etcd derives its cluster version, its major.minor.0.
std::string VersionJson(const std::vector<ShardState>& shards) {
  std::string lowest;
  for (const ShardState& shard : shards) {
    if (shard.version.empty()) continue;
    if (lowest.empty() || VersionLess(shard.version, lowest)) lowest = shard.version;
  }
  std::string cluster = "not_decided";
  if (!lowest.empty()) {
    const auto first = lowest.find('.');
    const auto second = first == std::string::npos ? std::string::npos : lowest.find('.', first + 1);
    cluster = lowest.substr(0, second) + ".0";
  }
  return nlohmann::ordered_json{{"etcdserver", lowest.empty() ? "not_decided" : lowest}, {"etcdcluster", cluster}}.dump();
}

}  // namespace

std::map<std::string, HttpServer::Handler> Proxy::SharedHttpEndpoints() {
  std::map<std::string, HttpServer::Handler> endpoints;
  endpoints["/metrics"] = [this](const HttpRequest&) {
    prometheus::TextSerializer serializer;
    return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", serializer.Serialize(metrics_.Collect())};
  };
  // As etcd: ?exclude=NOSPACE (repeatable) ignores alarms of that type.
  endpoints["/health"] = [this](const HttpRequest& request) {
    std::set<std::string> excluded;
    for (const auto& [key, value] : request.query) {
      if (key == "exclude") excluded.insert(value);
    }
    HealthVerdict verdict = JudgeHealth(health_->Snapshot(), excluded);
    // The proxy serves its last map without the meta store until its registration may have
    // lapsed (healthy, with the reason said); then it serves no key: unhealthy, so that a load
    // balancer sends clients to a proxy that can (upstream/upstream_fence.h).
    if (verdict.healthy && follower_ && !fence::SendAllowed()) {
      verdict.healthy = false;
      verdict.reason = fence::FencedMessage();
    } else if (verdict.healthy && follower_ && !follower_->connected()) {
      verdict.reason = fmt::format("meta store unreachable for {:.0f} s; serving shard map version {}",
                                   follower_->SecondsDisconnected(), follower_->served_version());
    }
    return HttpResponse{verdict.healthy ? 200 : 503, "application/json", HealthJson(verdict)};
  };
  // Alive while the process serves HTTP at all: a shard outage must not get the proxy restarted.
  endpoints["/livez"] = [](const HttpRequest&) { return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"}; };
  // Ready when every shard serves: only then can the proxy serve the whole keyspace.
  endpoints["/readyz"] = [this](const HttpRequest&) {
    const HealthVerdict verdict = JudgeReadiness(health_->Snapshot());
    return verdict.healthy ? HttpResponse{200, "text/plain; charset=utf-8", "ok\n"}
                           : HttpResponse{503, "application/json", HealthJson(verdict)};
  };
  return endpoints;
}

gateway::AsyncEndpoint Proxy::VersionEndpoint() {
  return [this](const HttpRequest&, std::function<void(HttpResponse)> answer) {
    // At once once every shard has been probed; else right after the probe that completes it
    // (bounded by the probe's own deadline), on the probe thread.
    health_->WhenProbed([this, answer = std::move(answer)] {
      answer(HttpResponse{200, "application/json", VersionJson(health_->Snapshot())});
    });
  };
}

void Proxy::RegisterHttpEndpoints() {
  for (auto& [path, handler] : SharedHttpEndpoints()) http_->Handle(path, std::move(handler));
  // The operator listener answers on its own thread (never the data plane's): it may wait there
  // for the first probe, which its deadline bounds; past kVersionWait it answers what is known.
  http_->Handle("/version", [endpoint = VersionEndpoint()](const HttpRequest& request) {
    constexpr auto kVersionWait = std::chrono::seconds(3);
    auto promise = std::make_shared<std::promise<HttpResponse>>();
    auto future = promise->get_future();
    endpoint(request, [promise](HttpResponse response) { promise->set_value(std::move(response)); });
    if (future.wait_for(kVersionWait) == std::future_status::ready) return future.get();
    return HttpResponse{200, "application/json", R"({"etcdserver":"not_decided","etcdcluster":"not_decided"})"};
  });
  http_->Handle("/shards", [this](const HttpRequest&) {
    return HttpResponse{200, "application/json", ShardsJson(health_->Snapshot(), topology_.Get()->map_version)};
  });
  // From the last check, refreshed in the background at most every kConsistencyMaxAge: the check
  // reads every user and role of every shard as the proxy's own user, which a caller of this
  // unauthenticated listener must not be able to repeat at will, nor make /health wait for. The
  // answer is the verdict and counts; what differs is in the log (it names users, roles and
  // permission ranges).
  http_->Handle("/auth/consistency", [this](const HttpRequest&) {
    const auto latest = auth_.LatestConsistency(kConsistencyMaxAge);
    if (!latest) return HttpResponse{503, "application/json", "{\"consistent\":false,\"checked\":false}\n"};
    return HttpResponse{latest->report.consistent() ? 200 : 409, "application/json",
                        latest->report.SummaryJson(latest->age)};
  });
}

bool Proxy::Start() {
  if (!(h2_server_ ? h2_server_->Start() : server_->Start())) return false;
  health_->Start();
  if (http_ && !http_->Start()) return false;
  if (follower_) {
    // Key requests are served only under a live registration (upstream/upstream_fence.h).
    fence::Engage();
    follower_->Start(topology_.Get()->map_version);
  }
  housekeeper_.Start();
  auth_.StartConsistencyCheck();
  const auto topology = topology_.Get();
  spdlog::info("serving the etcd v3 API on {}{} ({} data plane) over {} shard(s)", options_.listen_address,
               options_.tls.enabled() ? (options_.tls.client_cert_auth ? " (mutual TLS)" : " (TLS)") : "",
               options_.data_plane, topology->map.size());
  if (follower_) {
    spdlog::info("shard map version {} from the meta store {}{}", topology->map_version,
                 options_.meta.client.endpoints.front(), options_.meta.client.endpoints.size() > 1 ? ", ..." : "");
  }
  for (std::size_t i = 0; i < topology->map.size(); ++i) spdlog::info("  {}", topology->map.Describe(i));
  for (const auto& warning : KubernetesLayoutWarnings(topology->map)) spdlog::warn("{}", warning);
  if (http_) spdlog::info("operator endpoints (/metrics, /health, /livez, /readyz, /shards, /auth/consistency) on {}", options_.metrics_address);
  return true;
}

bool Proxy::ApplyMap(const meta::MapDocument& doc) {
  try {
    const auto previous = topology_.Get();
    auto next = BuildTopology(doc.ToLayout(), &metrics_, options_.upstream_transport, identity_issuer_, previous.get());
    for (const auto& warning : KubernetesLayoutWarnings(next->map)) spdlog::warn("map version {}: {}", doc.version, warning);
    const auto published = next;
    topology_.Publish(std::move(next));
    watch_.OnMapChanged(*published);
    return true;
  } catch (const std::exception& e) {
    spdlog::error("cannot serve shard map version {}: {}; still serving version {}", doc.version, e.what(),
                  topology_.Get()->map_version);
    return false;
  }
}

void Proxy::Shutdown() {
  // First: a stopping proxy leaves MemberList at once (its registration is revoked).
  if (follower_) follower_->Stop();
  grpc_health_.Shutdown();
  if (server_) server_->Shutdown(std::chrono::seconds(2));
  if (h2_server_) h2_server_->Shutdown(std::chrono::seconds(2));
  housekeeper_.Stop();
  keepalive_->Shutdown();
  if (http_) http_->Stop();
  if (health_) health_->Stop();
  auth_.Stop();
}

}  // namespace esp
