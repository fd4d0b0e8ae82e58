#pragma once
// Each shard's revision over time, as the health probe sees it (once a second), so that a
// Compact across shards can keep a retention period of every shard's history whatever revision
// the client names (docs/semantics.md, Compact). Fed from the probe: requests pay nothing.
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace esp {

class RevisionHistory {
 public:
  using SteadyClock = std::chrono::steady_clock;

  // `retention` 0: no limit (Limit answers nothing is held back).
  explicit RevisionHistory(std::chrono::nanoseconds retention) : retention_(retention) {}

  std::chrono::nanoseconds retention() const { return retention_; }

  // `shard` had reached `revision` by `at` (taken once the answer was in).
  void Record(const std::string& shard, std::int64_t revision, SteadyClock::time_point at);

  // The highest revision `shard` is known to have reached `retention` before `now`: compacting it
  // there or below removes nothing a client got from it within the retention. nullopt when no
  // sample is that old (the proxy has not watched the shard that long).
  std::optional<std::int64_t> Limit(const std::string& shard, SteadyClock::time_point now) const;

 private:
  struct Sample {
    SteadyClock::time_point at;
    std::int64_t revision = 0;
  };
  const std::chrono::nanoseconds retention_;
  mutable std::mutex mu_;
  // Per shard: samples from the newest one older than the retention on, oldest first.
  std::map<std::string, std::deque<Sample>> samples_;
};

}  // namespace esp
