#include "transport/call_context.h"

#include <algorithm>

namespace esp {

Cancellation::HookId Cancellation::Add(Hook hook) {
  {
    const std::lock_guard lock(mu_);
    if (!cancelled_) {
      const HookId id = next_id_++;
      hooks_.emplace_back(id, std::move(hook));
      return id;
    }
  }
  hook();
  return 0;
}

void Cancellation::Remove(HookId id) {
  const std::lock_guard lock(mu_);
  std::erase_if(hooks_, [id](const auto& entry) { return entry.first == id; });
}

void Cancellation::Cancel() {
  std::vector<std::pair<HookId, Hook>> hooks;
  {
    const std::lock_guard lock(mu_);
    if (cancelled_) return;
    cancelled_ = true;
    hooks.swap(hooks_);
  }
  // Run outside the lock: a hook may call back into Remove().
  for (auto& [id, hook] : hooks) hook();
}

bool Cancellation::cancelled() const {
  const std::lock_guard lock(mu_);
  return cancelled_;
}

}  // namespace esp
