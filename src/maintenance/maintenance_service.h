#pragma once
#include <functional>
// The Maintenance service over several etcd clusters: answers that aggregate every shard where an
// aggregate means something (Status, Alarm GET, Hash, HashKV at the current revision), calls
// every member of every shard where etcd's operation is per member (Defragment), and clear
// refusals where no honest single answer exists (Snapshot, MoveLeader, Downgrade).
// docs/semantics.md ("Maintenance") states each choice.
#include <cstdint>
#include <string>
#include <vector>

#include "cluster/cluster_service.h"
#include "config/config.h"
#include "transport/router.h"
#include "upstream/topology.h"

namespace esp {

// Lowest of etcd version strings ("3.4.23" < "3.5.1"); empty strings are ignored.
std::string LowestVersion(const std::vector<std::string>& versions);
// FNV-1a 32 over the shards' hashes (big-endian, in shard order): changes when any shard's does.
std::uint32_t CombineHashes(const std::vector<std::uint32_t>& hashes);
// "http://127.0.0.1:2379" -> "127.0.0.1:2379" (gRPC targets carry no scheme).
std::string HostPortOfUrl(const std::string& url);

class MaintenanceService {
 public:
  // Per-member connections (Defragment) take each shard's TLS settings from the topology.
  MaintenanceService(const TopologyHolder& topology, ProxyIdentity identity)
      : topology_(topology), identity_(std::move(identity)) {}
  void Register(Router& router);
  // How Defragment reaches one member (default: a GrpcShardTransport); the proxy passes the
  // transport kind it was started with.
  using MemberTransportFactory =
      std::function<std::shared_ptr<ShardTransport>(const ShardConfig& member, std::string description)>;
  void SetMemberTransportFactory(MemberTransportFactory factory) { member_transport_ = std::move(factory); }

 private:
  void RegisterAggregates(Router& router);
  void RegisterRefusals(Router& router);
  const TopologyHolder& topology_;
  ProxyIdentity identity_;
  MemberTransportFactory member_transport_;
};

}  // namespace esp
