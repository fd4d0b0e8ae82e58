#pragma once
// gRPC's framing over HTTP/2, done by hand for the event-loop data plane: the 5-byte message
// prefix (compressed flag + big-endian length), grpc-timeout values and grpc-message escaping.
// Pure functions and a small state machine: no sockets, no nghttp2, so they are unit-testable.
#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "transport/status.h"

namespace esp {

constexpr std::size_t kGrpcPrefixBytes = 5;

// Reassembles length-prefixed messages from DATA payloads cut anywhere (inside the prefix too).
class MessageDeframer {
 public:
  explicit MessageDeframer(std::size_t max_message_bytes) : max_(max_message_bytes) {}

  // Appends bytes. Returns a non-ok status (and refuses everything after) on a compressed
  // message or one larger than the limit: the status the call must end with. Checked as soon as
  // a prefix is complete, so an oversize message is never buffered.
  Status Feed(std::string_view bytes);
  // Takes the next complete message, if any.
  std::optional<std::string> Next();
  // True when bytes of an incomplete message are buffered (a half-close now is a broken call).
  bool partial() const { return prefix_fill_ > 0 || in_message_; }

 private:
  Status StartMessage();
  void EndMessage();

  std::size_t max_;
  std::array<char, kGrpcPrefixBytes> prefix_{};
  std::size_t prefix_fill_ = 0;
  bool in_message_ = false;  // prefix read; current_ collects the body
  std::size_t expected_ = 0;
  std::string current_;
  // Complete messages not taken yet: the first apart, since a unary call only ever has one.
  std::string first_;
  bool has_first_ = false;
  std::vector<std::string> more_;
  std::size_t next_more_ = 0;
  bool failed_ = false;
};

// Appends the 5-byte prefix of an uncompressed message of `message_size` bytes to `out`.
// Inline: it runs once per message on the streaming path.
inline void AppendGrpcPrefix(std::string& out, std::size_t message_size) {
  const auto n = static_cast<std::uint32_t>(message_size);
  const char prefix[kGrpcPrefixBytes] = {0, static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                                         static_cast<char>(n >> 8), static_cast<char>(n)};
  out.append(prefix, kGrpcPrefixBytes);
}
// Appends the 5-byte prefix and `message` to `out`.
void AppendGrpcMessage(std::string& out, std::string_view message);

// The longest timeout we keep: "99999999H" (the largest the spec allows, ~11,000 years) does not
// fit in int64 nanoseconds, and now() plus anything near that overflows the clocks. Longer
// values are clamped here, as grpc-go saturates its own; 100 years is no deadline in practice.
constexpr std::chrono::nanoseconds kMaxGrpcTimeout = std::chrono::hours(24 * 365 * 100);

// "100m" -> 100 ms (at most kMaxGrpcTimeout). nullopt for a malformed value (gRPC then ignores
// the header).
std::optional<std::chrono::nanoseconds> ParseGrpcTimeout(std::string_view value);

// Percent-encodes a grpc-message value as the gRPC spec asks (bytes outside 0x20-0x7e and '%').
std::string PercentEncodeGrpcMessage(std::string_view message);

}  // namespace esp
