#include "transport/ping_policy.h"

namespace esp {

bool PingPolicy::OnPing(TimePoint now) {
  const TimePoint previous = last_ping_;
  last_ping_ = now;
  if (options_.min_time <= std::chrono::steady_clock::duration::zero()) return false;
  if (reset_) {
    // Data went out since the last PING: start counting afresh from this one (as grpc-go).
    reset_ = false;
    strikes_ = 0;
    return false;
  }
  if (previous != TimePoint::min() && now - previous < options_.min_time) ++strikes_;
  return strikes_ > options_.max_strikes;
}

}  // namespace esp
