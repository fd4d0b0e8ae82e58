#include "transport/grpc_framing.h"

#include <charconv>

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
  buffer_.append(bytes);
  return CheckPrefix();
}

// Walks the prefixes that became complete, so that a bad one is refused before its body arrives.
Status MessageDeframer::CheckPrefix() {
  while (buffer_.size() >= checked_ + kGrpcPrefixBytes) {
    const std::string_view prefix(buffer_.data() + checked_, kGrpcPrefixBytes);
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
    checked_ += kGrpcPrefixBytes + length;
  }
  return Status::Ok();
}

std::optional<std::string> MessageDeframer::Next() {
  if (failed_ || buffer_.size() < offset_ + kGrpcPrefixBytes) return std::nullopt;
  const std::size_t length = ReadLength(std::string_view(buffer_.data() + offset_, kGrpcPrefixBytes));
  if (buffer_.size() < offset_ + kGrpcPrefixBytes + length) return std::nullopt;
  std::string message;
  if (offset_ == 0 && buffer_.size() == kGrpcPrefixBytes + length) {
    // The common case (one whole message buffered): move instead of copying.
    message = std::move(buffer_);
    message.erase(0, kGrpcPrefixBytes);
    buffer_.clear();
    checked_ = 0;
    return message;
  }
  message.assign(buffer_, offset_ + kGrpcPrefixBytes, length);
  offset_ += kGrpcPrefixBytes + length;
  if (offset_ == buffer_.size()) {
    buffer_.clear();
    checked_ = offset_ = 0;
  } else if (offset_ > 64 * 1024 && offset_ * 2 > buffer_.size()) {
    // Compact now and then so that a long stream does not keep every byte it ever received.
    buffer_.erase(0, offset_);
    checked_ -= offset_;
    offset_ = 0;
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
