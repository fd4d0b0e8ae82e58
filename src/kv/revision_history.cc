#include "kv/revision_history.h"

namespace esp {

void RevisionHistory::Record(const std::string& shard, std::int64_t revision, SteadyClock::time_point at) {
  const std::lock_guard lock(mu_);
  auto& samples = samples_[shard];
  samples.push_back({at, revision});
  // Only the newest sample older than the retention can ever be the limit: drop those before it.
  const auto cutoff = at - retention_;
  while (samples.size() >= 2 && samples[1].at <= cutoff) samples.pop_front();
}

std::optional<std::int64_t> RevisionHistory::Limit(const std::string& shard, SteadyClock::time_point now) const {
  const std::lock_guard lock(mu_);
  const auto it = samples_.find(shard);
  if (it == samples_.end()) return std::nullopt;
  const auto cutoff = now - retention_;
  std::optional<std::int64_t> limit;
  for (const auto& sample : it->second) {
    if (sample.at > cutoff) break;
    limit = sample.revision;  // revisions only grow: the newest old-enough sample is the highest
  }
  return limit;
}

}  // namespace esp
