#pragma once
// Alarms across shards (docs/semantics.md, "Alarm"): etcd keeps one alarm per (member id, alarm
// type) in each cluster; through the proxy the answer is the union over the shards with each pair
// once, an alarm for a shard member's own id belongs to that shard, and one for any other id
// (0, a proxy's id, an id nobody has) to every shard, since etcd itself applies an alarm of any
// member id to its whole cluster.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "etcdserverpb/rpc.pb.h"
#include "transport/status.h"

namespace esp {

// What the proxy refuses before any shard sees it: values etcd has no code for take a shard down
// (etcd 3.4.23 fails on an unknown action, 3.5.30 stops on ACTIVATE of an unknown type).
Status CheckAlarmRequest(const etcdserverpb::AlarmRequest& request);

// ACTIVATE of NONE: etcd 3.5 and later answer it with no alarm and change nothing (3.4 stored a
// NONE alarm); the proxy answers as the newer releases, without asking the shards.
bool IsAlarmNoOp(const etcdserverpb::AlarmRequest& request);

// Appends the alarms of `from` that `into` does not hold yet (same member id and type).
void AddAlarmsOnce(const etcdserverpb::AlarmResponse& from, etcdserverpb::AlarmResponse& into);

// The shard whose cluster lists `member_id` among its members (each shard's MemberList, in shard
// order; a shard that did not answer has an empty list), or nullopt.
std::optional<std::size_t> ShardOfMember(const std::vector<std::vector<std::uint64_t>>& members_by_shard,
                                         std::uint64_t member_id);

// Whether a StatusResponse error is one of etcd's alarm lines ("memberID:N alarm:NOSPACE ", or
// "alarm:NOSPACE " for member 0: etcd prints the AlarmMember in protobuf's text form).
bool IsAlarmError(const std::string& error);

}  // namespace esp
