#include "observability/shard_health.h"

#include <spdlog/spdlog.h>

#include <future>
#include <sstream>

#include "etcdserverpb/rpc.pb.h"
#include "upstream/every_shard.h"

namespace esp {
namespace {

constexpr const char* kStatus = "/etcdserverpb.Maintenance/Status";

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (const unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

}  // namespace

ShardHealthMonitor::ShardHealthMonitor(const TopologyHolder& topology, std::vector<std::vector<std::string>> endpoints,
                                       Metrics& metrics, std::chrono::milliseconds interval)
    : topology_(topology), endpoints_(std::move(endpoints)), metrics_(metrics), interval_(interval) {
  const auto t = topology_.Get();
  for (std::size_t i = 0; i < t->map.size(); ++i) {
    ShardState s;
    s.name = t->map.shard(i).name;
    s.description = t->map.Describe(i);
    s.start = t->map.shard(i).start;
    s.end = t->map.shard(i).end;
    if (i < endpoints_.size()) s.endpoints = endpoints_[i];
    s.error = "not probed yet";
    states_.push_back(std::move(s));
  }
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
}

std::vector<ShardState> ShardHealthMonitor::Snapshot() const {
  const std::lock_guard lock(mu_);
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

void ShardHealthMonitor::ProbeOnce() {
  auto topology = topology_.Get();
  // A probe must not outlive its interval by much: a hung shard is an unhealthy shard.
  auto ctx = std::make_shared<CallContext>(Clock::now() + std::max(interval_, std::chrono::milliseconds(1000)),
                                           Metadata{});
  std::promise<std::vector<ShardAnswer<etcdserverpb::StatusResponse>>> promise;
  auto future = promise.get_future();
  CallEveryShard<etcdserverpb::StatusResponse>(
      topology, kStatus, ctx, etcdserverpb::StatusRequest{},
      [&promise](std::vector<ShardAnswer<etcdserverpb::StatusResponse>> answers) { promise.set_value(std::move(answers)); });
  const auto answers = future.get();

  const std::lock_guard lock(mu_);
  for (std::size_t i = 0; i < answers.size() && i < states_.size(); ++i) {
    ShardState& s = states_[i];
    const auto& [status, response] = answers[i];
    const bool was_healthy = s.healthy, was_probed = s.probed;
    s.probed = true;
    s.healthy = status.ok() && response.leader() != 0;
    s.error = !status.ok() ? status.message() : (response.leader() == 0 ? "no leader" : "");
    if (status.ok()) {
      s.leader = response.leader();
      s.revision = response.header().revision();
      s.db_size = response.dbsize();
      s.version = response.version();
    }
    metrics_.SetShardUp(s.name, s.healthy);
    if (!was_probed || was_healthy != s.healthy) {
      if (s.healthy) {
        spdlog::info("{} is healthy (leader {:x}, revision {})", s.description, s.leader, s.revision);
      } else {
        spdlog::warn("{} is unhealthy: {}", s.description, s.error);
      }
    }
  }
}

std::string HealthJson(const std::vector<ShardState>& shards, bool* healthy) {
  std::string reason;
  for (const auto& s : shards) {
    if (s.healthy) continue;
    if (!reason.empty()) reason += "; ";
    reason += s.description + ": " + s.error;
  }
  *healthy = reason.empty();
  return std::string("{\"health\":\"") + (*healthy ? "true" : "false") + "\",\"reason\":" + JsonString(reason) + "}";
}

std::string ShardsJson(const std::vector<ShardState>& shards) {
  std::ostringstream out;
  out << "[";
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const auto& s = shards[i];
    if (i > 0) out << ",";
    out << "{\"name\":" << JsonString(s.name) << ",\"start\":" << JsonString(s.start)
        << ",\"end\":" << JsonString(s.end) << ",\"endpoints\":[";
    for (std::size_t e = 0; e < s.endpoints.size(); ++e) out << (e > 0 ? "," : "") << JsonString(s.endpoints[e]);
    out << "],\"health\":" << (s.healthy ? "true" : "false") << ",\"error\":" << JsonString(s.error)
        << ",\"leader\":" << JsonString(std::to_string(s.leader)) << ",\"revision\":" << s.revision
        << ",\"db_size\":" << s.db_size << ",\"version\":" << JsonString(s.version) << "}";
  }
  out << "]\n";
  return out.str();
}

}  // namespace esp
