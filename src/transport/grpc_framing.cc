#include "transport/grpc_framing.h"

#include <algorithm>
#include <charconv>
#include <cstring>

namespace esp {
namespace {

std::size_t ReadLength(std::string_view prefix) {
  return (std::size_t{static_cast<unsigned char>(prefix[1])} << 24) |
         (std::size_t{static_cast<unsigned char>(prefix[2])} << 16) |
         (std::size_t{static_cast<unsigned char>(prefix[3])} << 8) | std::size_t{static_cast<unsigned char>(prefix[4])};
}

}  // namespace

Status MessageDeframer::Feed(std::string_view bytes) {
  if (failed_) return Status(StatusCode::kInternal, "grpc: message after a framing error");
  while (!bytes.empty()) {
    if (!in_message_) {
      const std::size_t take = std::min(bytes.size(), kGrpcPrefixBytes - prefix_fill_);
      std::memcpy(prefix_.data() + prefix_fill_, bytes.data(), take);
      prefix_fill_ += take;
      bytes.remove_prefix(take);
      if (prefix_fill_ < kGrpcPrefixBytes) break;
      // Checked as soon as the prefix is complete, so a bad one is refused before its body arrives.
      if (Status s = StartMessage(); !s.ok()) return s;
      continue;
    }
    const std::size_t take = std::min(bytes.size(), expected_ - current_.size());
    current_.append(bytes.data(), take);
    bytes.remove_prefix(take);
    if (current_.size() == expected_) EndMessage();
  }
  return Status::Ok();
}

Status MessageDeframer::StartMessage() {
  const std::string_view prefix(prefix_.data(), kGrpcPrefixBytes);
  prefix_fill_ = 0;
  if (prefix[0] != 0) {
    failed_ = true;
    // What grpc-go says for a compressed message on a call without a known grpc-encoding.
    return Status(StatusCode::kUnimplemented, "grpc: compressed messages are not supported by this server");
  }
  const std::size_t length = ReadLength(prefix);
  if (length > max_) {
    failed_ = true;
    return Status(StatusCode::kResourceExhausted, "grpc: received message larger than max (" +
                                                      std::to_string(length) + " vs. " + std::to_string(max_) + ")");
  }
  // The body goes straight into the string handed out: one copy, no growth, no prefix to strip.
  // Reserved up to 4 MiB only: a peer announcing 2 GiB must send it before it costs that much.
  in_message_ = true;
  expected_ = length;
  current_.reserve(std::min<std::size_t>(length, 4 << 20));
  if (length == 0) EndMessage();
  return Status::Ok();
}

void MessageDeframer::EndMessage() {
  in_message_ = false;
  if (!has_first_) {
    first_ = std::move(current_);
    has_first_ = true;
  } else {
    more_.push_back(std::move(current_));
  }
  current_ = std::string();
}

std::optional<std::string> MessageDeframer::Next() {
  // After a refusal nothing comes out, not even messages completed before it: the call ends with
  // the refusal's status.
  if (failed_ || !has_first_) return std::nullopt;
  std::string message = std::move(first_);
  if (next_more_ < more_.size()) {
    first_ = std::move(more_[next_more_++]);
  } else {
    has_first_ = false;
    more_.clear();
    next_more_ = 0;
  }
  return message;
}

void AppendGrpcMessage(std::string& out, std::string_view message) {
  AppendGrpcPrefix(out, message.size());
  out.append(message);
}

std::optional<std::chrono::nanoseconds> ParseGrpcTimeout(std::string_view value) {
  // At most 8 digits and one unit letter (gRPC over HTTP/2 spec).
  if (value.size() < 2 || value.size() > 9) return std::nullopt;
  std::int64_t amount = 0;
  const auto digits = value.substr(0, value.size() - 1);
  // from_chars takes a sign; the spec's value is digits only ("-0S" is malformed).
  if (digits.front() < '0' || digits.front() > '9') return std::nullopt;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), amount);
  if (ec != std::errc() || end != digits.data() + digits.size() || amount < 0) return std::nullopt;
  using namespace std::chrono;
  nanoseconds unit{1};
  switch (value.back()) {
    case 'H': unit = hours(1); break;
    case 'M': unit = minutes(1); break;
    case 'S': unit = seconds(1); break;
    case 'm': unit = milliseconds(1); break;
    case 'u': unit = microseconds(1); break;
    case 'n': break;
    default: return std::nullopt;
  }
  // Compared before multiplying: 99999999H in nanoseconds overflows int64 (found by the fuzzer).
  if (amount > kMaxGrpcTimeout / unit) return kMaxGrpcTimeout;
  return unit * amount;
}

std::string PercentEncodeGrpcMessage(std::string_view message) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(message.size());
  for (const char c : message) {
    const auto b = static_cast<unsigned char>(c);
    if (b >= 0x20 && b <= 0x7e && b != '%') {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[b >> 4]);
      out.push_back(kHex[b & 0xf]);
    }
  }
  return out;
}

}  // namespace esp
