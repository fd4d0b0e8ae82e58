#include "observability/shard_health.h"

#include <algorithm>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <future>
#include <nlohmann/json.hpp>

#include "common/etcd_errors.h"
#include "etcdserverpb/rpc.pb.h"
#include "upstream/every_shard.h"

namespace esp {
namespace {

namespace pb = etcdserverpb;

constexpr const char* kStatus = "/etcdserverpb.Maintenance/Status";
constexpr const char* kAlarm = "/etcdserverpb.Maintenance/Alarm";

// Distinct alarm types, in etcd's names; one alarm per member would repeat them.
std::vector<std::string> AlarmTypes(const pb::AlarmResponse& response) {
  std::set<std::string> types;
  for (const auto& alarm : response.alarms()) {
    if (alarm.alarm() != pb::NONE) types.insert(pb::AlarmType_Name(alarm.alarm()));
  }
  return {types.begin(), types.end()};
}

void AddReason(HealthVerdict& verdict, const ShardState& shard, const std::string& why) {
  verdict.healthy = false;
  if (!verdict.reason.empty()) verdict.reason += "; ";
  // Transport errors already start with the shard's description: not twice.
  verdict.reason += why.starts_with(shard.description) ? why : shard.description + ": " + why;
}

// `counts(alarm)` says whether an active alarm of that type makes the shard fail.
template <class CountsAlarm>
HealthVerdict Judge(const std::vector<ShardState>& shards, CountsAlarm counts) {
  HealthVerdict verdict;
  for (const auto& s : shards) {
    if (!s.healthy) {
      AddReason(verdict, s, s.error);
      continue;
    }
    for (const auto& alarm : s.alarms) {
      if (counts(alarm)) AddReason(verdict, s, "ALARM " + alarm);  // etcd 3.5's reason for an alarm
    }
  }
  return verdict;
}

// Another shard whose last answer came from the same etcd cluster as shard `i`'s, if any.
std::optional<std::size_t> SameClusterAs(const std::vector<ShardState>& states, std::size_t i) {
  if (states[i].cluster_id == 0) return std::nullopt;
  for (std::size_t j = 0; j < states.size(); ++j) {
    if (j != i && states[j].cluster_id == states[i].cluster_id) return j;
  }
  return std::nullopt;
}

}  // namespace

HealthVerdict JudgeHealth(const std::vector<ShardState>& shards, const std::set<std::string>& excluded_alarms) {
  return Judge(shards, [&](const std::string& alarm) { return !excluded_alarms.contains(alarm); });
}

HealthVerdict JudgeReadiness(const std::vector<ShardState>& shards) {
  return Judge(shards, [](const std::string& alarm) { return alarm == "CORRUPT"; });
}

HealthVerdict JudgeServing(const std::vector<ShardState>& shards) {
  return Judge(shards, [](const std::string&) { return false; });
}

ShardHealthMonitor::ShardHealthMonitor(const TopologyHolder& topology, Metrics& metrics,
                                       std::chrono::milliseconds interval)
    : topology_(topology), metrics_(metrics), interval_(interval) {
  const std::lock_guard lock(mu_);
  FollowTopologyLocked(topology_.Get());
}

void ShardHealthMonitor::FollowTopologyLocked(std::shared_ptr<const Topology> topology) const {
  const Topology& t = *topology;
  std::vector<ShardState> next;
  for (std::size_t i = 0; i < t.map.size(); ++i) {
    ShardState s;
    const auto before = std::find_if(states_.begin(), states_.end(),
                                     [&](const ShardState& old) { return old.name == t.map.shard(i).name; });
    if (before != states_.end()) {
      s = *before;
    } else {
      s.name = t.map.shard(i).name;
      s.error = "not probed yet";
    }
    s.description = t.map.Describe(i);
    s.ranges = t.map.shard(i).ranges;
    s.endpoints = i < t.configs.size() ? t.configs[i].endpoints : std::vector<std::string>{};
    next.push_back(std::move(s));
  }
  states_ = std::move(next);
  states_topology_ = std::move(topology);
}

ShardHealthMonitor::~ShardHealthMonitor() { Stop(); }

void ShardHealthMonitor::Start() {
  thread_ = std::thread([this] { Run(); });
}

void ShardHealthMonitor::Stop() {
  {
    const std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  // No probe will come: whoever waits for one answers with what is known.
  std::vector<std::function<void()>> waiters;
  {
    const std::lock_guard lock(mu_);
    waiters.swap(probed_waiters_);
  }
  for (const auto& done : waiters) done();
}

namespace {

bool AllProbed(const std::vector<ShardState>& states) {
  return std::all_of(states.begin(), states.end(), [](const ShardState& s) { return s.probed; });
}

}  // namespace

void ShardHealthMonitor::WhenProbed(std::function<void()> done) {
  {
    const std::lock_guard lock(mu_);
    if (auto topology = topology_.Get(); topology != states_topology_) FollowTopologyLocked(std::move(topology));
    if (!AllProbed(states_) && !stopping_) {
      probed_waiters_.push_back(std::move(done));
      return;
    }
  }
  done();
}

std::vector<ShardState> ShardHealthMonitor::Snapshot() const {
  const std::lock_guard lock(mu_);
  if (auto topology = topology_.Get(); topology != states_topology_) FollowTopologyLocked(std::move(topology));
  return states_;
}

void ShardHealthMonitor::Run() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    lock.unlock();
    ProbeOnce();
    lock.lock();
    wake_.wait_for(lock, interval_, [this] { return stopping_; });
  }
}

Metadata ShardHealthMonitor::ProbeMetadata(std::size_t shard, Clock::time_point deadline) const {
  if (!credentials_.metadata) return {};
  auto promise = std::make_shared<std::promise<Metadata>>();
  auto future = promise->get_future();
  credentials_.metadata(shard, [promise](Metadata metadata) { promise->set_value(std::move(metadata)); });
  if (future.wait_until(deadline) != std::future_status::ready) return {};
  return future.get();
}

void ShardHealthMonitor::ProbeOnce() {
  auto topology = topology_.Get();
  // A probe must not outlive its interval by much: a hung shard is an unhealthy shard.
  const auto deadline = Clock::now() + std::max(interval_, std::chrono::milliseconds(1000));
  pb::AlarmRequest alarm_get;
  alarm_get.set_action(pb::AlarmRequest::GET);
  std::vector<std::future<ShardAnswer<pb::StatusResponse>>> status_futures;
  std::vector<std::future<ShardAnswer<pb::AlarmResponse>>> alarm_futures;
  for (std::size_t i = 0; i < topology->shards.size(); ++i) {
    auto ctx = std::make_shared<CallContext>(deadline, ProbeMetadata(i, deadline));
    status_futures.push_back(AskShard<pb::StatusResponse>(*topology->shards[i], kStatus, ctx, pb::StatusRequest{}, kRead));
    alarm_futures.push_back(AskShard<pb::AlarmResponse>(*topology->shards[i], kAlarm, ctx, alarm_get, kRead));
  }
  std::vector<ShardAnswer<pb::StatusResponse>> status_answers;
  std::vector<ShardAnswer<pb::AlarmResponse>> alarm_answers;
  for (auto& f : status_futures) status_answers.push_back(f.get());
  for (auto& f : alarm_futures) alarm_answers.push_back(f.get());
  // Every revision below had been reached by now: the time Compact's retention counts from.
  const auto answered_at = RevisionHistory::SteadyClock::now();
  for (std::size_t i = 0; i < status_answers.size(); ++i) {
    // As CallShardAsProxy and the pending lease calls judge an expired token.
    if (status_answers[i].status.code() == StatusCode::kUnauthenticated && credentials_.on_invalid_token) {
      credentials_.on_invalid_token(i);  // expired: the next probe authenticates again
    }
  }

  std::vector<ShardState> snapshot;
  std::vector<std::function<void()>> waiters;
  {
    const std::lock_guard lock(mu_);
    if (states_topology_ != topology) FollowTopologyLocked(topology);
    // Every shard's cluster id first, so that a twin is seen from both sides in the same probe.
    for (std::size_t i = 0; i < status_answers.size() && i < states_.size(); ++i) {
      if (status_answers[i].status.ok()) states_[i].cluster_id = status_answers[i].response.header().cluster_id();
    }
    for (std::size_t i = 0; i < status_answers.size() && i < states_.size(); ++i) {
      ShardState& s = states_[i];
      const auto& [status, response] = status_answers[i];
      const bool was_healthy = s.healthy, was_probed = s.probed;
      const auto old_alarms = s.alarms;
      s.probed = true;
      s.healthy = status.ok() && response.leader() != 0;
      s.error = !status.ok() ? status.message() : (response.leader() == 0 ? "no leader" : "");
      const std::string old_note = s.note;
      s.note.clear();
      if (etcd_errors::IsAuthRefusal(status)) {
        // It answered, through its auth layer: up. Leader, revision and alarms stay unknown.
        s.healthy = true;
        s.note = fmt::format("refuses Status and Alarm to the probe ({}): configure `credentials` (a user with "
                             "the root role) so that its leader, revision and alarms are checked",
                             status.message());
        s.error.clear();
        if (old_note.empty()) spdlog::warn("{} {}", s.description, s.note);
      }
      if (status.ok()) {
        s.leader = response.leader();
        s.revision = response.header().revision();
        if (revision_history_) revision_history_->Record(s.name, s.revision, answered_at);
        s.db_size = response.dbsize();
        s.version = response.version();
      }
      // An alarm list that could not be read keeps the last one known: a shard that is down says so already.
      if (i < alarm_answers.size() && alarm_answers[i].status.ok()) s.alarms = AlarmTypes(alarm_answers[i].response);
      if (const auto twin = SameClusterAs(states_, i); status.ok() && twin) {
        // Two entries of the config reach one etcd cluster: keys would be answered twice by a
        // spanning range and leases granted twice on one cluster. The proxy leaves rotation.
        s.healthy = false;
        s.error = fmt::format("same etcd cluster (cluster id {:x}) as {}: each shard must be its own cluster",
                              s.cluster_id, states_[*twin].description);
      }
      metrics_.SetShardUp(s.name, s.healthy);
      if (!was_probed || was_healthy != s.healthy) {
        if (s.healthy) {
          spdlog::info("{} is healthy (leader {:x}, revision {})", s.description, s.leader, s.revision);
        } else {
          spdlog::warn("{} is unhealthy: {}", s.description, s.error);
        }
      }
      if (old_alarms != s.alarms) {
        if (s.alarms.empty()) {
          spdlog::info("{} has no active alarm any more", s.description);
        } else {
          spdlog::warn("{} has active alarms: {}", s.description, fmt::join(s.alarms, ", "));
        }
      }
    }
    snapshot = states_;
    if (AllProbed(states_)) waiters.swap(probed_waiters_);
  }
  for (const auto& done : waiters) done();  // outside mu_: they read snapshots
  const bool serving = JudgeServing(snapshot).healthy;
  if (serving_ == serving) return;
  serving_ = serving;
  for (const auto& listener : listeners_) listener(serving);
}

std::string HealthJson(const HealthVerdict& verdict) {
  // etcd's encoding: both values are strings.
  return nlohmann::ordered_json{{"health", verdict.healthy ? "true" : "false"}, {"reason", verdict.reason}}.dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string ShardsJson(const std::vector<ShardState>& shards, std::int64_t map_version) {
  auto out = nlohmann::ordered_json::array();
  for (const auto& s : shards) {
    auto ranges = nlohmann::ordered_json::array();
    for (const auto& r : s.ranges) ranges.push_back({{"start", r.start}, {"end", r.end}});
    out.push_back({{"name", s.name},
                   // One range (the static layout): its bounds at the top level, as before.
                   {"start", s.ranges.size() == 1 ? s.ranges[0].start : ""},
                   {"end", s.ranges.size() == 1 ? s.ranges[0].end : ""},
                   {"ranges", ranges},
                   {"endpoints", s.endpoints},
                   {"health", s.healthy},
                   {"error", s.error},
                   {"note", s.note},
                   {"alarms", s.alarms},
                   // As a string: member ids use all 64 bits, beyond what JSON numbers carry exactly.
                   {"leader", std::to_string(s.leader)},
                   {"cluster_id", std::to_string(s.cluster_id)},
                   {"revision", s.revision},
                   {"db_size", s.db_size},
                   {"version", s.version},
                   {"map_version", map_version}});
  }
  // Binary range boundaries are not UTF-8: replaced rather than failing the whole page.
  return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace esp
