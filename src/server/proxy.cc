#include "server/proxy.h"

#include <spdlog/spdlog.h>

#include "server/unimplemented.h"
#include "upstream/grpc_shard_transport.h"

namespace esp {

// A keep-alive round answers without a shard that has not answered within this time; below the
// 2 s minimum lease TTL, so a hung shard cannot let a lease lapse on the living ones.
constexpr std::chrono::milliseconds kKeepAliveShardTimeout(1000);
constexpr std::chrono::milliseconds kHousekeepingTick(200);
// Pending lease grants and revokes are retried every this many ticks.
constexpr int kPendingFlushTicks = 5;

// gRPC's framing and metadata on top of the largest request etcd accepts (etcd adds the same).
constexpr int kGrpcOverheadBytes = 512 * 1024;

std::shared_ptr<const Topology> BuildTopology(const Config& config) {
  std::vector<ShardBounds> bounds;
  for (const auto& shard : config.shards) bounds.push_back({shard.name, shard.start, shard.end});
  ShardMap map(std::move(bounds));
  std::vector<std::shared_ptr<ShardTransport>> transports;
  for (std::size_t i = 0; i < config.shards.size(); ++i) {
    transports.push_back(std::make_shared<GrpcShardTransport>(config.shards[i], map.Describe(i)));
  }
  return std::make_shared<const Topology>(Topology{std::move(map), std::move(transports)});
}

Proxy::Proxy(const Config& config, ProxyOptions options)
    : options_(std::move(options)),
      topology_(BuildTopology(config)),
      kv_(topology_, KvOptions{.max_txn_ops = options_.max_txn_ops}),
      pending_leases_(std::make_shared<PendingLeases>(topology_)),
      keepalive_(std::make_shared<KeepAliveHub>(topology_, pending_leases_, kKeepAliveShardTimeout)),
      lease_(topology_, pending_leases_, keepalive_),
      housekeeper_(kHousekeepingTick) {
  kv_.SetLeaseHook(pending_leases_);
  kv_.Register(router_);
  lease_.Register(router_);
  housekeeper_.OnTick([hub = keepalive_] { hub->Tick(); });
  housekeeper_.OnTick([pending = pending_leases_, ticks = 0]() mutable {
    if (++ticks % kPendingFlushTicks == 0) pending->Flush();
  });
  RegisterUnimplemented(router_);
  server_ = std::make_unique<GrpcServer>(
      router_, GrpcServerOptions{.listen_address = options_.listen_address,
                                 .max_receive_bytes = options_.max_request_bytes + kGrpcOverheadBytes,
                                 .credentials = nullptr});
}

Proxy::~Proxy() { Shutdown(); }

bool Proxy::Start() {
  if (!server_->Start()) return false;
  housekeeper_.Start();
  const auto topology = topology_.Get();
  spdlog::info("serving the etcd v3 API on {} over {} shard(s)", options_.listen_address, topology->map.size());
  for (std::size_t i = 0; i < topology->map.size(); ++i) spdlog::info("  {}", topology->map.Describe(i));
  return true;
}

void Proxy::Shutdown() {
  if (server_) server_->Shutdown(std::chrono::seconds(2));
  housekeeper_.Stop();
  keepalive_->Shutdown();
}

}  // namespace esp
