#pragma once
// The socket steps both HTTP/2 sides share (client connections in h2_connection, shard
// connections in upstream/h2_client_connection): one read or write on a non-blocking socket,
// plain or TLS through OpenSSL, and the buffer of serialized frames waiting for the socket.
// What counts as "would block", "closed" and "failed" is decided here, once.
#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace esp {

struct IoResult {
  enum class Kind { kDone, kWouldBlock, kClosed, kFailed };
  Kind kind = Kind::kDone;
  std::size_t bytes = 0;  // kDone: how many bytes were read or written
  std::string error;      // kClosed, kFailed: why, in words for logs and call statuses

  static IoResult Bytes(std::size_t n) { return {Kind::kDone, n, {}}; }
  static IoResult WouldBlock() { return {Kind::kWouldBlock, 0, {}}; }
  static IoResult Closed(std::string why) { return {Kind::kClosed, 0, std::move(why)}; }
  static IoResult Failed(std::string why) { return {Kind::kFailed, 0, std::move(why)}; }

  bool done() const { return kind == Kind::kDone; }
  bool would_block() const { return kind == Kind::kWouldBlock; }
};

// One recv(2), or one SSL_read when `ssl` is set, into `buffer`.
IoResult ReadSome(int fd, SSL* ssl, std::span<std::uint8_t> buffer);
// One send(2) without SIGPIPE, or one SSL_write, of a prefix of `data`.
IoResult WriteSome(int fd, SSL* ssl, std::string_view data);

// Frames serialized this turn and not yet taken by the socket. Appended to as nghttp2 produces
// them and written in as few calls as the socket allows: one per turn in the common case.
class OutBuffer {
 public:
  void Append(const std::uint8_t* data, std::size_t size) { bytes_.append(reinterpret_cast<const char*>(data), size); }
  std::size_t pending() const { return bytes_.size() - offset_; }

  // Writes with `write` (std::string_view -> IoResult) until everything is out or it would
  // block. A kClosed or kFailed result is returned as it came: the connection is over.
  template <class Write>
  IoResult WriteWith(Write&& write) {
    while (pending() > 0) {
      IoResult result = write(std::string_view(bytes_).substr(offset_));
      if (result.would_block() || (result.done() && result.bytes == 0)) break;
      if (!result.done()) return result;
      offset_ += result.bytes;
    }
    if (pending() == 0) {
      bytes_.clear();  // keeps its capacity for the next turn
      offset_ = 0;
    }
    return {};
  }
  IoResult WriteTo(int fd, SSL* ssl) {
    return WriteWith([fd, ssl](std::string_view data) { return WriteSome(fd, ssl, data); });
  }

 private:
  std::string bytes_;
  std::size_t offset_ = 0;
};

}  // namespace esp
