#pragma once
// Hand-made HTTP/2 frames and HPACK blocks, for what no nghttp2 session would send: header
// blocks built byte by byte (dynamic-table references repeated thousands of times, lists past
// any limit), cut into HEADERS + CONTINUATION frames. FrameClient writes them on a loopback
// connection and decodes what comes back (headers through an HPACK inflater, RST_STREAM codes,
// GOAWAY, SETTINGS), so a test can compare the proxy's answer with etcd's.
#include <nghttp2/nghttp2.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace esp::test {

// HPACK representations (RFC 7541 section 6), strings never Huffman-coded.
namespace hpack {
// An integer with an N-bit prefix; `flags` are the first byte's bits above the prefix.
std::string Integer(int prefix_bits, std::uint8_t flags, std::size_t value);
// Indexed header field: one byte for indices below 127 (62 is the newest dynamic entry).
std::string Indexed(std::size_t index);
// Literal with incremental indexing, new name: the field enters the dynamic table.
std::string LiteralIndexed(std::string_view name, std::string_view value);
// Literal without indexing, new name.
std::string Literal(std::string_view name, std::string_view value);
// The request headers of a gRPC call to `path` that leave the dynamic table alone.
std::string GrpcRequest(std::string_view path);
}  // namespace hpack

// One frame: the 9-byte header and `payload`.
std::string Frame(std::uint8_t type, std::uint8_t flags, std::uint32_t stream, std::string_view payload);
// A header block as HEADERS plus as many CONTINUATION frames as `max_frame` needs; END_HEADERS
// on the last, END_STREAM on the HEADERS if `end_stream`.
std::string HeaderFrames(std::uint32_t stream, std::string_view block, bool end_stream, std::size_t max_frame = 16384);

class FrameClient {
 public:
  struct Stream {
    std::map<std::string, std::string> headers;  // response headers and trailers together
    std::string data;
    bool ended = false;                   // END_STREAM seen
    std::optional<std::uint32_t> reset;   // RST_STREAM's error code
    bool done() const { return ended || reset.has_value(); }
  };

  // Connects and sends the client preface and an empty SETTINGS frame.
  explicit FrameClient(int port);
  ~FrameClient();
  FrameClient(const FrameClient&) = delete;
  FrameClient& operator=(const FrameClient&) = delete;

  // Writes everything (blocking, while still reading what the peer sends); false once the peer
  // has gone.
  bool Write(std::string_view bytes);
  // Reads until `done` holds, the peer closes, or `timeout` passes; returns `done()`.
  bool RunUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout = std::chrono::seconds(15));

  Stream& stream(std::uint32_t id) { return streams_[id]; }
  std::optional<std::uint32_t> goaway_code() const { return goaway_code_; }
  bool peer_closed() const { return peer_closed_; }
  // A SETTINGS value the peer sent, if it sent one.
  std::optional<std::uint32_t> setting(std::uint16_t id) const;

 private:
  bool SendAll(std::string_view bytes);
  // Parses what was read and sends the replies it calls for (SETTINGS and PING ACKs).
  void Pump();
  void ReadAvailable(int wait_ms);
  void Parse();
  void OnFrame(std::uint8_t type, std::uint8_t flags, std::uint32_t id, std::string_view payload);
  void Inflate(std::uint32_t id, std::string_view block, bool last);

  int fd_ = -1;
  nghttp2_hd_inflater* inflater_ = nullptr;
  std::string in_;       // read, not parsed yet
  std::string replies_;  // ACKs waiting for the end of the current write
  std::map<std::uint32_t, Stream> streams_;
  std::map<std::uint16_t, std::uint32_t> settings_;
  std::optional<std::uint32_t> goaway_code_;
  bool peer_closed_ = false;
};

}  // namespace esp::test
