#pragma once
// The retry and error rules shared by every ShardTransport (gRPC C++ client and our own HTTP/2
// client), so that both fail, retry and describe failures in exactly the same way.
#include <string>
#include <string_view>

#include "transport/status.h"
#include "upstream/shard_transport.h"

namespace esp {

// The text of a call that could not be sent to a member at all (gRPC's words when its channel
// is in TRANSIENT_FAILURE); NeverSent() recognizes it.
inline constexpr std::string_view kFailedToConnect = "failed to connect to all addresses";

// etcd's own errors all carry an "etcdserver: " message; anything else with these codes was
// produced by the client library: the member could not be reached or did not answer in time.
inline bool IsTransportFailure(StatusCode code, std::string_view message) {
  return (code == StatusCode::kUnavailable || code == StatusCode::kDeadlineExceeded) &&
         !message.starts_with("etcdserver:");
}

// The call failed before it was sent anywhere: another member may take it, even a write.
inline bool NeverSent(StatusCode code, std::string_view message) {
  return code == StatusCode::kUnavailable && message.starts_with(kFailedToConnect);
}

// Whether a failed try may go to another member.
inline bool ShouldRetry(StatusCode code, std::string_view message, UnaryOptions options, bool tries_left,
                        bool cancelled) {
  return tries_left && !cancelled && code == StatusCode::kUnavailable && IsTransportFailure(code, message) &&
         (options.idempotent || NeverSent(code, message));
}

// Transport failures name the shard and member; etcd's own errors pass untouched.
inline Status DescribeFailure(StatusCode code, std::string message, const std::string& description,
                              const std::string& endpoint) {
  if (code == StatusCode::kOk) return Status::Ok();
  if (IsTransportFailure(code, message)) return Status(code, description + " at " + endpoint + ": " + message);
  return Status(code, std::move(message));
}

}  // namespace esp
