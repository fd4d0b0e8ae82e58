#include "watch/watch_encoding.h"

namespace esp {
namespace {

constexpr std::uint32_t kWatchIdField = 2;  // WatchResponse.watch_id (int64, varint)
enum WireType : std::uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

// Reads a varint at `pos` (advanced past it); false if it runs off the end or is too long.
bool ReadVarint(std::string_view in, std::size_t& pos, std::uint64_t& value) {
  value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos >= in.size()) return false;
    const auto byte = static_cast<std::uint8_t>(in[pos++]);
    value |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

// Moves `pos` past the value of a field of `type`; false if it cannot.
bool SkipValue(std::string_view in, std::size_t& pos, std::uint32_t type) {
  std::uint64_t n = 0;
  switch (type) {
    case kVarint:
      return ReadVarint(in, pos, n);
    case kFixed64:
      n = 8;
      break;
    case kFixed32:
      n = 4;
      break;
    case kLengthDelimited:
      if (!ReadVarint(in, pos, n)) return false;
      break;
    default:
      return false;  // groups (deprecated, never in etcd's messages) or garbage
  }
  if (n > in.size() - pos) return false;
  pos += n;
  return true;
}

void AppendVarint(std::string& out, std::uint64_t value) {
  while (value >= 0x80) {
    out += static_cast<char>((value & 0x7f) | 0x80);
    value >>= 7;
  }
  out += static_cast<char>(value);
}

}  // namespace

std::optional<std::string> StripWatchId(std::string_view message) {
  std::string out;
  out.reserve(message.size());
  std::size_t kept_from = 0;  // start of the span not yet copied
  std::size_t pos = 0;
  while (pos < message.size()) {
    const std::size_t field_start = pos;
    std::uint64_t tag = 0;
    if (!ReadVarint(message, pos, tag) || (tag >> 3) == 0) return std::nullopt;
    const auto type = static_cast<std::uint32_t>(tag & 7);
    if (!SkipValue(message, pos, type)) return std::nullopt;
    if ((tag >> 3) == kWatchIdField && type == kVarint) {
      out.append(message.substr(kept_from, field_start - kept_from));
      kept_from = pos;
    }
  }
  out.append(message.substr(kept_from));
  return out;
}

std::string WatchIdField(std::int64_t id) {
  std::string out;
  if (id == 0) return out;
  out += static_cast<char>(kWatchIdField << 3 | kVarint);
  AppendVarint(out, static_cast<std::uint64_t>(id));  // negative ids take ten bytes, as in protobuf
  return out;
}

}  // namespace esp
