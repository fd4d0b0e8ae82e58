#pragma once
// Bounds on the request headers a client makes the h2 plane decode and keep. HPACK lets one byte
// on the wire stand for a whole dynamic-table entry (up to 4 KiB), and every header we keep is a
// copy, so without these a few KiB of references held the proxy at hundreds of MB (issue #19).
// Sizes are counted as HPACK counts them (RFC 7541 section 4.1: name + value + 32 per field):
// the unit of SETTINGS_MAX_HEADER_LIST_SIZE, of grpc-go's MaxHeaderListSize and of gRPC core's
// metadata limits, so a client that honours our advertised setting never reaches the refusal.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace esp {

inline constexpr std::size_t kHpackFieldOverhead = 32;

constexpr std::size_t HeaderFieldSize(std::string_view name, std::string_view value) {
  return name.size() + value.size() + kHpackFieldOverhead;
}

struct HeaderLimits {
  // One stream's header list. 64 KiB also keeps a client within nghttp2's own inflater limit
  // (a single name or value over 65,536 bytes is a COMPRESSION_ERROR, which closes the whole
  // connection): a list that fits this cannot hold such a field.
  std::size_t max_list_bytes = 64 * 1024;
  // Fields of one list, whatever their size: each kept field costs two strings, so many tiny
  // references amplify too. gRPC clients send about ten.
  std::size_t max_fields = 1024;
  // All streams of one connection together while they are open: the per-stream bound times
  // SETTINGS_MAX_CONCURRENT_STREAMS would still be gigabytes. Thousands of watch streams with a
  // token each (a few hundred bytes) fit.
  std::size_t max_connection_bytes = 16 * 1024 * 1024;
};

enum class HeaderVerdict {
  kKeep,
  kListTooLarge,    // this stream's list is over max_list_bytes or max_fields
  kConnectionFull,  // the connection's open streams hold max_connection_bytes already
};

// Whether one more field of `field_size` may be kept, given what the stream (`fields`, `list_bytes`)
// and its connection (`connection_bytes`) hold so far.
constexpr HeaderVerdict JudgeHeaderField(std::size_t fields, std::size_t list_bytes, std::size_t connection_bytes,
                                         std::size_t field_size, const HeaderLimits& limits) {
  if (fields + 1 > limits.max_fields || list_bytes + field_size > limits.max_list_bytes) {
    return HeaderVerdict::kListTooLarge;
  }
  if (connection_bytes + field_size > limits.max_connection_bytes) return HeaderVerdict::kConnectionFull;
  return HeaderVerdict::kKeep;
}

// Why a request whose header list is `list_size` (HPACK's count) must not be sent, or nullopt:
// over the peer's SETTINGS_MAX_HEADER_LIST_SIZE (`peer_limit`; UINT32_MAX when it sent none, as
// etcd does) in grpc-go's client words, or over `own_limit`, the largest block our encoder may
// produce (past it nghttp2 fails the block and ends the whole connection). A list never encodes
// larger than its HPACK size, so checking the list is enough.
inline std::optional<std::string> SendHeaderListError(std::size_t list_size, std::uint32_t peer_limit,
                                                      std::size_t own_limit) {
  if (list_size > peer_limit) {
    return "header list size to send violates the maximum size (" + std::to_string(peer_limit) +
           " bytes) set by server";
  }
  if (list_size > own_limit) {
    return "header list size to send (" + std::to_string(list_size) + " bytes) violates the maximum size (" +
           std::to_string(own_limit) + " bytes) the proxy sends";
  }
  return std::nullopt;
}

}  // namespace esp
