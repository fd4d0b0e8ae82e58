#pragma once
// The Cluster service. Clients that auto-sync their endpoints (clientv3 Sync = MemberList) must
// keep talking to proxies, so MemberList lists the proxies, never a shard's members. Membership
// changes belong to each shard's own cluster and are refused with the shards named.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "transport/router.h"
#include "upstream/topology.h"

namespace esp {

// Who this proxy is, in etcd's terms (the ids go into every response header it writes itself).
struct ProxyIdentity {
  std::uint64_t cluster_id = 0;  // hash of the shard layout: equal for proxies of one layout
  std::uint64_t member_id = 0;   // hash of this proxy's first advertised URL
  std::string name;
  std::vector<std::string> client_urls;  // this proxy's advertised URLs
  std::vector<std::string> peer_proxies;  // other proxies' URLs (config `proxies:`)
};

// 64-bit FNV-1a: stable across builds and platforms, unlike std::hash.
std::uint64_t Fnv1a64(const std::string& bytes);
// Builds the identity from the advertised URLs and the shard map's description of the layout.
ProxyIdentity MakeProxyIdentity(const ShardMap& map, std::vector<std::string> client_urls,
                                std::vector<std::string> peer_proxies);

// A live proxy as another source (the meta store's registrations) knows it.
struct PeerProxy {
  std::uint64_t member_id = 0;
  std::string name;
  std::vector<std::string> client_urls;
};

class ClusterService {
 public:
  ClusterService(const TopologyHolder& topology, ProxyIdentity identity)
      : topology_(topology), identity_(std::move(identity)) {}
  void Register(Router& router);
  // With a meta store, MemberList lists the proxies registered there (live ones: each under a
  // lease) instead of the static `proxies:` list. Set before serving.
  using PeerSource = std::function<std::vector<PeerProxy>()>;
  void SetPeerSource(PeerSource source) { peers_ = std::move(source); }

 private:
  std::string ShardNames() const;
  const TopologyHolder& topology_;
  ProxyIdentity identity_;
  PeerSource peers_;
};

}  // namespace esp
