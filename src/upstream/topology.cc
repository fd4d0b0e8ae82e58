#include "upstream/topology.h"

#include <grpcpp/alarm.h>

#include <algorithm>

namespace esp {

struct TopologyHolder::Waiter {
  std::int64_t version = 0;
  std::function<void(bool)> done;
  std::atomic<bool> finished{false};
  grpc::Alarm timeout;

  void Finish(bool arrived) {
    if (!finished.exchange(true)) done(arrived);
  }
};

TopologyHolder::~TopologyHolder() {
  std::vector<std::shared_ptr<Waiter>> left;
  {
    const std::lock_guard lock(mu_);
    left.swap(waiters_);
  }
  for (const auto& w : left) w->Finish(false);
}

void TopologyHolder::Publish(std::shared_ptr<const Topology> next) {
  const std::int64_t version = next->map_version;
  current_.store(std::move(next), std::memory_order_release);
  std::vector<std::shared_ptr<Waiter>> woken;
  {
    const std::lock_guard lock(mu_);
    const auto passed = std::partition(waiters_.begin(), waiters_.end(),
                                       [version](const auto& w) { return w->version >= version; });
    woken.assign(passed, waiters_.end());
    waiters_.erase(passed, waiters_.end());
  }
  for (const auto& w : woken) w->Finish(true);
}

void TopologyHolder::AwaitNewer(std::int64_t version, std::chrono::system_clock::time_point deadline,
                                std::function<void(bool)> done) const {
  auto waiter = std::make_shared<Waiter>();
  waiter->version = version;
  waiter->done = std::move(done);
  {
    const std::lock_guard lock(mu_);
    if (Get()->map_version <= version) {
      waiters_.push_back(waiter);
      // The alarm holds the waiter only weakly: a waiter woken by Publish is freed, which
      // cancels its alarm (the callback then finds nothing to do).
      waiter->timeout.Set(deadline, [this, weak = std::weak_ptr<Waiter>(waiter)](bool fired) {
        const auto w = weak.lock();
        if (!w || !fired) return;
        {
          const std::lock_guard lock(mu_);
          std::erase(waiters_, w);
        }
        w->Finish(false);
      });
      return;
    }
  }
  waiter->Finish(true);
}

}  // namespace esp
