#include "lease/revoke_check.h"

#include <atomic>
#include <mutex>
#include <optional>

#include "common/methods.h"
#include "lease/fanout.h"

namespace esp {
namespace {

constexpr std::chrono::seconds kCheckTimeout(5);

// Answers once every probe has: OK, or the first error.
struct ProbeJoin {
  std::atomic<std::size_t> remaining;
  std::mutex mu;
  std::optional<Status> error;
  std::function<void(Status)> done;

  void Complete(Status status) {
    if (!status.ok()) {
      const std::lock_guard lock(mu);
      if (!error) error = std::move(status);
    }
    if (remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    done(error ? std::move(*error) : Status::Ok());
  }
};

}  // namespace

std::vector<etcdserverpb::TxnRequest> RevokePermissionProbes(const std::vector<std::string>& keys) {
  std::vector<etcdserverpb::TxnRequest> probes;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i % kRevokeProbeKeys == 0) probes.emplace_back();
    probes.back().add_failure()->mutable_request_delete_range()->set_key(keys[i]);
  }
  return probes;
}

void CheckRevokePermitted(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology, int64_t id,
                          std::function<void(Status)> done) {
  etcdserverpb::LeaseTimeToLiveRequest request;
  request.set_id(id);
  request.set_keys(true);
  CallShards<etcdserverpb::LeaseTimeToLiveResponse>(
      *topology, AllShards(*topology), methods::kLeaseTimeToLive, BoundedContext(ctx, kCheckTimeout), request, kRead,
      [ctx, topology, done = std::move(done)](
          std::vector<ShardOutcome<etcdserverpb::LeaseTimeToLiveResponse>> outcomes) mutable {
        std::vector<std::pair<std::size_t, etcdserverpb::TxnRequest>> probes;
        for (const auto& o : outcomes) {
          if (!o.status.ok() || o.response.keys().empty()) continue;  // down, not there, or no keys
          const std::vector<std::string> keys(o.response.keys().begin(), o.response.keys().end());
          for (auto& probe : RevokePermissionProbes(keys)) probes.emplace_back(o.shard, std::move(probe));
        }
        if (probes.empty()) return done(Status::Ok());
        auto join = std::make_shared<ProbeJoin>();
        join->remaining.store(probes.size());
        join->done = std::move(done);
        const auto probe_ctx = BoundedContext(ctx, kCheckTimeout);
        for (const auto& [shard, probe] : probes) {
          CallShard<etcdserverpb::TxnResponse>(*topology->shards[shard], methods::kTxn, probe_ctx, probe, kRead,
                                               [join](Status status, etcdserverpb::TxnResponse) {
                                                 join->Complete(std::move(status));
                                               });
        }
      });
}

}  // namespace esp
