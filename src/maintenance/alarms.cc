#include "maintenance/alarms.h"

#include <algorithm>

namespace esp {

namespace pb = etcdserverpb;

Status CheckAlarmRequest(const pb::AlarmRequest& request) {
  if (!pb::AlarmRequest_AlarmAction_IsValid(request.action())) {
    return Status(StatusCode::kInvalidArgument,
                  "etcd-sharding-proxy: unknown alarm action " + std::to_string(request.action()) +
                      " (GET, ACTIVATE or DEACTIVATE); not sent to the shards");
  }
  // DEACTIVATE of an unknown type is let through: it can clear such an alarm that a 3.4 shard
  // stored when raised on it directly, and no release fails on it.
  if (request.action() == pb::AlarmRequest::ACTIVATE && !pb::AlarmType_IsValid(request.alarm())) {
    return Status(StatusCode::kInvalidArgument,
                  "etcd-sharding-proxy: unknown alarm type " + std::to_string(request.alarm()) +
                      " (NOSPACE or CORRUPT); not sent to the shards");
  }
  return Status::Ok();
}

bool IsAlarmNoOp(const pb::AlarmRequest& request) {
  return request.action() == pb::AlarmRequest::ACTIVATE && request.alarm() == pb::NONE;
}

void AddAlarmsOnce(const pb::AlarmResponse& from, pb::AlarmResponse& into) {
  for (const auto& alarm : from.alarms()) {
    const bool held = std::any_of(into.alarms().begin(), into.alarms().end(), [&](const pb::AlarmMember& have) {
      return have.memberid() == alarm.memberid() && have.alarm() == alarm.alarm();
    });
    if (!held) *into.add_alarms() = alarm;
  }
}

std::optional<std::size_t> ShardOfMember(const std::vector<std::vector<std::uint64_t>>& members_by_shard,
                                         std::uint64_t member_id) {
  for (std::size_t i = 0; i < members_by_shard.size(); ++i) {
    const auto& members = members_by_shard[i];
    if (std::find(members.begin(), members.end(), member_id) != members.end()) return i;
  }
  return std::nullopt;
}

bool IsAlarmError(const std::string& error) {
  return error.starts_with("alarm:") || (error.starts_with("memberID:") && error.find(" alarm:") != std::string::npos);
}

}  // namespace esp
