#include "cluster/cluster_service.h"

#include <algorithm>

#include "etcdserverpb/rpc.pb.h"

namespace esp {
namespace {

constexpr const char* kMemberList = "/etcdserverpb.Cluster/MemberList";

template <class Resp>
using Reply = std::function<void(Status, Resp)>;

void FillHeader(const ProxyIdentity& identity, etcdserverpb::ResponseHeader* header) {
  header->set_cluster_id(identity.cluster_id);
  header->set_member_id(identity.member_id);
}

void AddMember(etcdserverpb::MemberListResponse& response, const std::string& url, std::uint64_t id) {
  auto* member = response.add_members();
  member->set_id(id);
  // clientv3's Sync skips members without a name (not started yet): the URL is the name.
  member->set_name(url);
  member->add_clienturls(url);
}

}  // namespace

std::uint64_t Fnv1a64(const std::string& bytes) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (const unsigned char c : bytes) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

ProxyIdentity MakeProxyIdentity(const ShardMap& map, std::vector<std::string> client_urls,
                                std::vector<std::string> peer_proxies) {
  // Length-prefixed fields: ("ab","c") and ("a","bc") must not hash alike.
  std::string layout;
  for (const auto& range : map.ranges()) {
    for (const auto* field : {&map.shard(range.shard).name, &range.start, &range.end}) {
      layout += std::to_string(field->size()) + ":" + *field;
    }
  }
  ProxyIdentity identity;
  identity.cluster_id = Fnv1a64(layout);
  identity.member_id = client_urls.empty() ? 0 : Fnv1a64(client_urls.front());
  identity.name = client_urls.empty() ? "etcd-sharding-proxy" : client_urls.front();
  identity.client_urls = std::move(client_urls);
  identity.peer_proxies = std::move(peer_proxies);
  return identity;
}

std::string ClusterService::ShardNames() const {
  const auto topology = topology_.Get();
  std::string names;
  for (std::size_t i = 0; i < topology->map.size(); ++i) {
    if (!names.empty()) names += ", ";
    names += topology->map.Describe(i);
  }
  return names;
}

void ClusterService::Register(Router& router) {
  router.AddTyped<etcdserverpb::MemberListRequest, etcdserverpb::MemberListResponse>(
      kMemberList, [this](CallContextPtr, const etcdserverpb::MemberListRequest&,
                          Reply<etcdserverpb::MemberListResponse> done) {
        etcdserverpb::MemberListResponse response;
        FillHeader(identity_, response.mutable_header());
        auto* self = response.add_members();
        self->set_id(identity_.member_id);
        self->set_name(identity_.name);
        for (const auto& url : identity_.client_urls) self->add_clienturls(url);
        if (peers_) {
          for (const auto& peer : peers_()) {
            if (peer.member_id == identity_.member_id || peer.client_urls.empty()) continue;
            auto* member = response.add_members();
            member->set_id(peer.member_id);
            member->set_name(peer.name.empty() ? peer.client_urls.front() : peer.name);
            for (const auto& url : peer.client_urls) member->add_clienturls(url);
          }
          return done(Status::Ok(), std::move(response));
        }
        // The same config file may serve every proxy, so `proxies:` may list this one too.
        for (const auto& url : identity_.peer_proxies) {
          if (std::find(identity_.client_urls.begin(), identity_.client_urls.end(), url) == identity_.client_urls.end()) {
            AddMember(response, url, Fnv1a64(url));
          }
        }
        done(Status::Ok(), std::move(response));
      });

  // Membership is each shard's business: a member added "to the proxy" would join nothing.
  const auto refuse = [this](const std::string& what) {
    return Status(StatusCode::kFailedPrecondition,
                  "etcd-sharding-proxy: " + what + " is not available through the proxy: members are managed "
                  "on each shard's own etcd cluster (" + ShardNames() + "); run it against that cluster's endpoints");
  };
  router.AddTyped<etcdserverpb::MemberAddRequest, etcdserverpb::MemberAddResponse>(
      "/etcdserverpb.Cluster/MemberAdd",
      [refuse](CallContextPtr, const etcdserverpb::MemberAddRequest&, Reply<etcdserverpb::MemberAddResponse> done) {
        done(refuse("member add"), {});
      });
  router.AddTyped<etcdserverpb::MemberRemoveRequest, etcdserverpb::MemberRemoveResponse>(
      "/etcdserverpb.Cluster/MemberRemove",
      [refuse](CallContextPtr, const etcdserverpb::MemberRemoveRequest&,
               Reply<etcdserverpb::MemberRemoveResponse> done) { done(refuse("member remove"), {}); });
  router.AddTyped<etcdserverpb::MemberUpdateRequest, etcdserverpb::MemberUpdateResponse>(
      "/etcdserverpb.Cluster/MemberUpdate",
      [refuse](CallContextPtr, const etcdserverpb::MemberUpdateRequest&,
               Reply<etcdserverpb::MemberUpdateResponse> done) { done(refuse("member update"), {}); });
  router.AddTyped<etcdserverpb::MemberPromoteRequest, etcdserverpb::MemberPromoteResponse>(
      "/etcdserverpb.Cluster/MemberPromote",
      [refuse](CallContextPtr, const etcdserverpb::MemberPromoteRequest&,
               Reply<etcdserverpb::MemberPromoteResponse> done) { done(refuse("member promote"), {}); });
}

}  // namespace esp
