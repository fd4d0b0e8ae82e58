#pragma once
// Keepalive enforcement on the client-facing HTTP/2 plane, as gRPC servers do it (grpc-go's
// EnforcementPolicy, gRPC core's ping abuse policy): a PING from the client that comes sooner than
// `min_time` after the previous one is a strike; one strike more than `max_strikes` since we
// last sent the client anything earns GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings"), then the close.
// Sending the client headers or data clears the strikes (and the next PING is never a strike),
// so BDP pings, which clients send when data arrives, never add up.
//
// Pure logic with the clock passed in, so tests can drive it without waiting.
#include <chrono>

namespace esp {

struct PingPolicyOptions {
  // etcd's --grpc-keepalive-min-time (5 s). Zero: no enforcement.
  std::chrono::steady_clock::duration min_time = std::chrono::seconds(5);
  // Strikes tolerated before the GOAWAY (grpc-go's maxPingStrikes, gRPC core's default).
  int max_strikes = 2;
};

class PingPolicy {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;

  explicit PingPolicy(PingPolicyOptions options) : options_(options) {}

  // A PING (not an ACK) arrived at `now`. True: too many; answer with GOAWAY too_many_pings.
  bool OnPing(TimePoint now);
  // We sent the client HEADERS or DATA: its next PING is not held against it.
  void OnResponseSent() { reset_ = true; }
  int strikes() const { return strikes_; }

 private:
  PingPolicyOptions options_;
  // No ping seen yet: the first one is always fine.
  TimePoint last_ping_ = TimePoint::min();
  bool reset_ = false;
  int strikes_ = 0;
};

}  // namespace esp
