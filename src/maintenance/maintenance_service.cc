#include "maintenance/maintenance_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <sstream>

#include "etcdserverpb/rpc.pb.h"
#include "maintenance/alarms.h"
#include "upstream/every_shard.h"
#include "upstream/grpc_shard_transport.h"

namespace esp {
namespace {

namespace pb = etcdserverpb;

constexpr const char* kStatus = "/etcdserverpb.Maintenance/Status";
constexpr const char* kAlarm = "/etcdserverpb.Maintenance/Alarm";
constexpr const char* kDefragment = "/etcdserverpb.Maintenance/Defragment";
constexpr const char* kHash = "/etcdserverpb.Maintenance/Hash";
constexpr const char* kHashKV = "/etcdserverpb.Maintenance/HashKV";
constexpr const char* kMemberList = "/etcdserverpb.Cluster/MemberList";

template <class Resp>
using Reply = std::function<void(Status, Resp)>;

void FillHeader(const ProxyIdentity& identity, pb::ResponseHeader* header) {
  header->set_cluster_id(identity.cluster_id);
  header->set_member_id(identity.member_id);
}

std::vector<int> VersionParts(const std::string& version) {
  std::vector<int> parts;
  std::stringstream in(version);
  std::string part;
  while (std::getline(in, part, '.')) parts.push_back(std::atoi(part.c_str()));
  return parts;
}

// A shard's failure as the client should read it: transport failures already name the shard,
// etcd's own errors do not.
std::string DescribeFailure(const ShardTransport& shard, const Status& status) {
  if (status.message().find(shard.description()) != std::string::npos) return status.message();
  return shard.description() + ": " + status.message();
}

// The first failing shard's status, with the shard named; OK when every shard answered.
template <class Resp>
Status FirstFailure(const Topology& topology, const std::vector<ShardAnswer<Resp>>& answers) {
  for (std::size_t i = 0; i < answers.size(); ++i) {
    if (!answers[i].status.ok()) {
      return Status(answers[i].status.code(), DescribeFailure(*topology.shards[i], answers[i].status));
    }
  }
  return Status::Ok();
}

pb::StatusResponse AggregateStatus(const ProxyIdentity& identity, const Topology& topology,
                                   const std::vector<ShardAnswer<pb::StatusResponse>>& answers) {
  pb::StatusResponse out;
  FillHeader(identity, out.mutable_header());
  std::vector<std::string> versions;
  bool every_shard_has_leader = true;
  for (std::size_t i = 0; i < answers.size(); ++i) {
    const auto& [status, shard] = answers[i];
    if (!status.ok()) {
      out.add_errors(DescribeFailure(*topology.shards[i], status));
      every_shard_has_leader = false;
      continue;
    }
    versions.push_back(shard.version());
    out.set_dbsize(out.dbsize() + shard.dbsize());
    out.set_dbsizeinuse(out.dbsizeinuse() + shard.dbsizeinuse());
    out.set_dbsizequota(out.dbsizequota() + shard.dbsizequota());
    if (shard.leader() == 0) every_shard_has_leader = false;
    for (const auto& error : shard.errors()) {
      // An alarm line is etcd's own text, once for the deployment (as Alarm GET lists each
      // alarm once); other errors (no leader) are that shard's, so they name it.
      if (!IsAlarmError(error)) {
        out.add_errors(topology.shards[i]->description() + ": " + error);
      } else if (std::find(out.errors().begin(), out.errors().end(), error) == out.errors().end()) {
        out.add_errors(error);
      }
    }
  }
  out.set_version(LowestVersion(versions));
  // The proxy reports itself as leader while every shard has one: it can then serve every key.
  // Raft indexes and terms of different clusters cannot be added or compared: left 0.
  if (every_shard_has_leader) out.set_leader(identity.member_id);
  return out;
}

// Members of one shard, as reported by the shard itself, for per-member operations.
struct MemberTarget {
  std::size_t shard;
  std::uint64_t id;
  std::string url;
};

// Defragments `targets` from `next` on, one member at a time: defragmenting blocks a member's
// reads and writes, so never more than one member of the whole deployment at once.
void DefragmentFrom(std::shared_ptr<std::vector<MemberTarget>> targets, std::size_t next,
                    std::shared_ptr<const Topology> topology, std::shared_ptr<std::vector<ShardConfig>> configs,
                    CallContextPtr ctx, MaintenanceService::MemberTransportFactory factory,
                    std::function<void(Status)> done) {
  if (next == targets->size()) {
    done(Status::Ok());
    return;
  }
  const auto& target = (*targets)[next];
  ShardConfig member_config = (*configs)[target.shard];
  member_config.endpoints = {HostPortOfUrl(target.url)};
  const std::string description = topology->shards[target.shard]->description() + " member " + target.url;
  std::shared_ptr<ShardTransport> member = factory ? factory(member_config, description)
                                                  : std::make_shared<GrpcShardTransport>(member_config, description);
  spdlog::info("defragmenting {}", description);
  CallShard<pb::DefragmentResponse>(
      *member, kDefragment, ctx, pb::DefragmentRequest{}, UnaryOptions{.idempotent = true},
      [targets, next, topology, configs, ctx, factory, done, member, description](Status status,
                                                                                   pb::DefragmentResponse) {
        if (!status.ok()) {
          done(Status(status.code(), status.message().find(description) == std::string::npos
                                         ? description + ": " + status.message()
                                         : status.message()));
          return;
        }
        DefragmentFrom(targets, next + 1, topology, configs, ctx, factory, done);
      });
}

using AlarmAnswer = std::function<void(std::vector<ShardAnswer<pb::AlarmResponse>>)>;

// An alarm for a member id other than 0 or this proxy's: to the shard whose cluster has that
// member (each shard's MemberList tells), else to every shard, as etcd applies an alarm of an id
// it does not know to its whole cluster.
void AlarmForMember(std::shared_ptr<const Topology> topology, CallContextPtr ctx, const pb::AlarmRequest& request,
                    AlarmAnswer answer) {
  CallEveryShard<pb::MemberListResponse>(
      topology, kMemberList, ctx, pb::MemberListRequest{},
      [topology, ctx, request, answer](std::vector<ShardAnswer<pb::MemberListResponse>> lists) {
        std::vector<std::vector<std::uint64_t>> members(lists.size());
        for (std::size_t i = 0; i < lists.size(); ++i) {
          for (const auto& member : lists[i].response.members()) members[i].push_back(member.id());
        }
        if (const auto shard = ShardOfMember(members, request.memberid())) {
          // Answers stay indexed by shard, so that a failure names the right one.
          CallShard<pb::AlarmResponse>(*topology->shards[*shard], kAlarm, ctx, request, {},
                                       [answer, n = lists.size(), i = *shard](Status status, pb::AlarmResponse response) {
                                         std::vector<ShardAnswer<pb::AlarmResponse>> answers(n);
                                         answers[i] = {std::move(status), std::move(response)};
                                         answer(std::move(answers));
                                       });
          return;
        }
        // A shard that did not answer may be the one with that member: sending the alarm to
        // every shard could then be wrong, so the call fails naming that shard.
        if (std::any_of(lists.begin(), lists.end(), [](const auto& list) { return !list.status.ok(); })) {
          std::vector<ShardAnswer<pb::AlarmResponse>> failed(lists.size());
          for (std::size_t i = 0; i < lists.size(); ++i) failed[i].status = lists[i].status;
          answer(std::move(failed));
          return;
        }
        CallEveryShard<pb::AlarmResponse>(topology, kAlarm, ctx, request, std::move(answer));
      });
}

}  // namespace

std::string LowestVersion(const std::vector<std::string>& versions) {
  std::string lowest;
  for (const auto& v : versions) {
    if (v.empty()) continue;
    if (lowest.empty() || VersionParts(v) < VersionParts(lowest)) lowest = v;
  }
  return lowest;
}

std::uint32_t CombineHashes(const std::vector<std::uint32_t>& hashes) {
  std::uint32_t combined = 2166136261U;
  for (const std::uint32_t h : hashes) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      combined ^= (h >> shift) & 0xffU;
      combined *= 16777619U;
    }
  }
  return combined;
}

std::string HostPortOfUrl(const std::string& url) {
  const auto scheme = url.find("://");
  std::string rest = scheme == std::string::npos ? url : url.substr(scheme + 3);
  const auto slash = rest.find('/');
  return slash == std::string::npos ? rest : rest.substr(0, slash);
}

void MaintenanceService::Register(Router& router) {
  RegisterAggregates(router);
  RegisterRefusals(router);
}

void MaintenanceService::RegisterAggregates(Router& router) {
  router.AddTyped<pb::StatusRequest, pb::StatusResponse>(
      kStatus, [this](CallContextPtr ctx, const pb::StatusRequest& request, Reply<pb::StatusResponse> done) {
        auto topology = topology_.Get();
        CallEveryShard<pb::StatusResponse>(
            topology, kStatus, ctx, request, [this, topology, done](std::vector<ShardAnswer<pb::StatusResponse>> answers) {
              const bool none = std::none_of(answers.begin(), answers.end(), [](const auto& a) { return a.status.ok(); });
              if (none) {
                done(Status(StatusCode::kUnavailable, "etcd-sharding-proxy: no shard answered Status: " +
                                                          FirstFailure(*topology, answers).message()),
                     {});
                return;
              }
              done(Status::Ok(), AggregateStatus(identity_, *topology, answers));
            });
      });

  router.AddTyped<pb::AlarmRequest, pb::AlarmResponse>(
      kAlarm, [this](CallContextPtr ctx, const pb::AlarmRequest& request, Reply<pb::AlarmResponse> done) {
        if (auto refused = CheckAlarmRequest(request); !refused.ok()) return done(std::move(refused), {});
        pb::AlarmResponse empty;
        FillHeader(identity_, empty.mutable_header());
        if (IsAlarmNoOp(request)) return done(Status::Ok(), std::move(empty));
        auto topology = topology_.Get();
        AlarmAnswer answer = [topology, done, empty](std::vector<ShardAnswer<pb::AlarmResponse>> answers) {
          if (auto failure = FirstFailure(*topology, answers); !failure.ok()) return done(std::move(failure), {});
          pb::AlarmResponse out = empty;
          for (const auto& a : answers) AddAlarmsOnce(a.response, out);
          done(Status::Ok(), std::move(out));
        };
        // GET reads every shard; member 0 and a proxy's own id stand for every shard without
        // asking who the member is.
        if (request.action() == pb::AlarmRequest::GET || request.memberid() == 0 ||
            request.memberid() == identity_.member_id) {
          CallEveryShard<pb::AlarmResponse>(topology, kAlarm, ctx, request, std::move(answer));
          return;
        }
        AlarmForMember(topology, ctx, request, std::move(answer));
      });

  router.AddTyped<pb::DefragmentRequest, pb::DefragmentResponse>(
      kDefragment, [this](CallContextPtr ctx, const pb::DefragmentRequest&, Reply<pb::DefragmentResponse> done) {
        auto topology = topology_.Get();
        auto configs = std::make_shared<std::vector<ShardConfig>>(topology->configs);
        CallEveryShard<pb::MemberListResponse>(
            topology, kMemberList, ctx, pb::MemberListRequest{},
            [this, topology, configs, ctx, done](std::vector<ShardAnswer<pb::MemberListResponse>> lists) {
              if (auto failure = FirstFailure(*topology, lists); !failure.ok()) return done(std::move(failure), {});
              auto targets = std::make_shared<std::vector<MemberTarget>>();
              for (std::size_t i = 0; i < lists.size(); ++i) {
                for (const auto& member : lists[i].response.members()) {
                  if (member.clienturls_size() > 0) targets->push_back({i, member.id(), member.clienturls(0)});
                }
              }
              DefragmentFrom(targets, 0, topology, configs, ctx, member_transport_, [this, done](Status status) {
                pb::DefragmentResponse out;
                FillHeader(identity_, out.mutable_header());
                done(std::move(status), std::move(out));
              });
            });
      });

  router.AddTyped<pb::HashRequest, pb::HashResponse>(
      kHash, [this](CallContextPtr ctx, const pb::HashRequest& request, Reply<pb::HashResponse> done) {
        auto topology = topology_.Get();
        CallEveryShard<pb::HashResponse>(
            topology, kHash, ctx, request, [this, topology, done](std::vector<ShardAnswer<pb::HashResponse>> answers) {
              if (auto failure = FirstFailure(*topology, answers); !failure.ok()) return done(std::move(failure), {});
              std::vector<std::uint32_t> hashes;
              for (const auto& a : answers) hashes.push_back(a.response.hash());
              pb::HashResponse out;
              FillHeader(identity_, out.mutable_header());
              out.set_hash(CombineHashes(hashes));
              done(Status::Ok(), std::move(out));
            });
      });

  router.AddTyped<pb::HashKVRequest, pb::HashKVResponse>(
      kHashKV, [this](CallContextPtr ctx, const pb::HashKVRequest& request, Reply<pb::HashKVResponse> done) {
        auto topology = topology_.Get();
        // Revisions are per shard: "the hash at revision R" names a different moment in each.
        if (request.revision() > 0 && topology->shards.size() > 1) {
          done(Status(StatusCode::kFailedPrecondition,
                      "etcd-sharding-proxy: HashKV at a revision has no meaning across shards (each shard "
                      "has its own revisions); use revision 0 or ask each shard directly"),
               {});
          return;
        }
        CallEveryShard<pb::HashKVResponse>(
            topology, kHashKV, ctx, request, [this, topology, done](std::vector<ShardAnswer<pb::HashKVResponse>> answers) {
              if (auto failure = FirstFailure(*topology, answers); !failure.ok()) return done(std::move(failure), {});
              std::vector<std::uint32_t> hashes;
              pb::HashKVResponse out;
              FillHeader(identity_, out.mutable_header());
              for (const auto& a : answers) {
                hashes.push_back(a.response.hash());
                out.set_compact_revision(std::max(out.compact_revision(), a.response.compact_revision()));
              }
              out.set_hash(CombineHashes(hashes));
              done(Status::Ok(), std::move(out));
            });
      });
}

void MaintenanceService::RegisterRefusals(Router& router) {
  std::string names;
  const auto topology = topology_.Get();
  for (std::size_t i = 0; i < topology->shards.size(); ++i) {
    if (!names.empty()) names += "; ";
    names += topology->map.Describe(i);
  }
  const std::string snapshot =
      "etcd-sharding-proxy: there is no single snapshot of several etcd clusters; snapshot each shard directly "
      "(etcdctl snapshot save against one member of each): " + names;
  router.AddStream("/etcdserverpb.Maintenance/Snapshot", RefuseStream(Status(StatusCode::kFailedPrecondition, snapshot)));
  const std::string move_leader =
      "etcd-sharding-proxy: the proxy has no leader to move; move a shard's leader on that shard's cluster: " + names;
  router.AddUnary("/etcdserverpb.Maintenance/MoveLeader", RefuseUnary(Status(StatusCode::kFailedPrecondition, move_leader)));
  const std::string downgrade =
      "etcd-sharding-proxy: downgrade each shard's cluster on its own endpoints: " + names;
  router.AddUnary("/etcdserverpb.Maintenance/Downgrade", RefuseUnary(Status(StatusCode::kFailedPrecondition, downgrade)));
}

}  // namespace esp
