#pragma once
// A deliberately simple blocking HTTP/2 client on nghttp2 (prior knowledge, like gRPC's h2c) for
// tests of the proxy's own h2 plane: it can cut a gRPC message into any DATA frames, leave
// streams half open, reset them, send PINGs, stop reading, and records every frame that tests
// look at (per-stream headers, data and close, GOAWAY, PINGs, the peer closing).
#include <nghttp2/nghttp2.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace esp::test {

// A TCP connection to 127.0.0.1:`port` with TCP_NODELAY; `receive_buffer` > 0 shrinks SO_RCVBUF
// first (a peer that stops reading then fills up quickly). Throws when the connect fails.
int ConnectLoopback(int port, int receive_buffer = 0);

// The port of a "host:port" address.
int PortOf(const std::string& address);

// `message` behind gRPC's 5-byte prefix (uncompressed).
std::string Framed(const std::string& message);

// What the raw client saw of one stream.
struct RawStream {
  std::deque<std::string> chunks;  // request DATA frames still to send, one frame each
  bool end_stream = true;
  std::map<std::string, std::string> headers;  // response headers and trailers together
  std::string data;
  bool closed = false;
  std::uint32_t close_error = 0;
  std::string grpc_status() const;
};

class RawH2Client {
 public:
  explicit RawH2Client(int port, int receive_buffer = 0);
  ~RawH2Client();
  RawH2Client(const RawH2Client&) = delete;
  RawH2Client& operator=(const RawH2Client&) = delete;

  // A gRPC request whose body goes out as the given DATA frames; `end_stream` half-closes after.
  std::int32_t Submit(const std::string& path, std::vector<std::string> chunks, bool end_stream = true,
                      std::vector<std::pair<std::string, std::string>> extra = {});
  // Queues more DATA for a stream left open by Submit(..., end_stream = false).
  void Continue(std::int32_t id, std::string chunk, bool end_stream);
  void Reset(std::int32_t id);
  void Ping();

  // Sends everything pending (blocking).
  void Send();
  // Sends and receives until `done` holds, the peer closes, or `timeout` passes; returns `done()`.
  bool RunUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout = std::chrono::seconds(15));

  RawStream& stream(std::int32_t id) { return streams_[id]; }
  bool goaway() const { return goaway_code_.has_value(); }
  std::optional<std::uint32_t> goaway_code() const { return goaway_code_; }
  const std::string& goaway_data() const { return goaway_data_; }
  int ping_acks() const { return ping_acks_; }
  int server_pings() const { return server_pings_; }
  int streams_closed() const { return streams_closed_; }
  bool peer_closed() const { return peer_closed_; }

 private:
  static int OnFrame(nghttp2_session*, const nghttp2_frame* frame, void* user);
  static int OnHeader(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name, std::size_t namelen,
                      const std::uint8_t* value, std::size_t valuelen, std::uint8_t, void* user);
  static int OnData(nghttp2_session*, std::uint8_t, std::int32_t id, const std::uint8_t* data, std::size_t len,
                    void* user);
  static int OnStreamClose(nghttp2_session*, std::int32_t id, std::uint32_t error, void* user);
  static ssize_t ReadBody(nghttp2_session*, std::int32_t id, std::uint8_t* buf, std::size_t length,
                          std::uint32_t* flags, nghttp2_data_source*, void* user);

  int fd_ = -1;
  nghttp2_session* session_ = nullptr;
  std::map<std::int32_t, RawStream> streams_;
  std::optional<std::uint32_t> goaway_code_;
  std::string goaway_data_;
  int ping_acks_ = 0;
  int server_pings_ = 0;
  int streams_closed_ = 0;
  bool peer_closed_ = false;
};

}  // namespace esp::test
