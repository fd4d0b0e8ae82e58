#pragma once
// One HTTP/1.1 client connection on the client port (etcd's HTTP face: JSON gateway, /health,
// /version, /metrics), parsed by Debian's http-parser. Lives on, and is only touched by, the loop
// that accepted it, like H2Connection. Keep-alive and pipelining: requests are parsed as they
// arrive and answered strictly in order, one at a time; a streamed answer (/v3/watch) holds the
// connection until it ends. Reading pauses while parsed requests wait past a bound, so a client
// pipelining faster than it is answered costs bounded memory.
#include <http_parser.h>
#include <openssl/ssl.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "transport/client_connection.h"
#include "transport/event_loop.h"
#include "transport/header_limits.h"
#include "transport/http_call.h"
#include "transport/socket_io.h"

namespace esp {

struct Http1Limits {
  std::size_t max_body_bytes = 8 * 1024 * 1024;
  HeaderLimits headers;
  // Output queued for a client that does not read; past it the connection closes.
  std::size_t max_pending_bytes = 32 * 1024 * 1024;
  // Parsed requests waiting for their turn; past either bound reading pauses.
  std::size_t max_waiting_requests = 64;
  std::size_t max_waiting_bytes = 16 * 1024 * 1024;
};

class Http1Connection;

// One request being answered, as the reply sees it: null connection once the connection closed.
struct Http1Exchange {
  Http1Connection* connection = nullptr;
  CallContextPtr context;
  bool keep_alive = true;
  // A HEAD request: the answer's head as for GET, never a body (Go's net/http drops it too); a
  // body would be read by the client as the start of the next answer.
  bool head_only = false;
  bool head_sent = false;
  bool chunked = false;
  bool ended = false;
  std::shared_ptr<class Http1Reply> reply;
};

class Http1Connection final : public ClientConnection {
 public:
  // Where a connection without a socket writes (the fuzz target): returns how many bytes it took.
  using Output = std::function<std::size_t(std::string_view bytes)>;

  // Takes ownership of `fd` and `ssl` (may be null). `first_bytes` were read while telling
  // HTTP/1.1 from HTTP/2 and are parsed first.
  Http1Connection(std::shared_ptr<EventLoop> loop, int fd, SSL* ssl, std::string first_bytes, const HttpHandler& handler,
                  const Http1Limits& limits, ClientConnectionOwner& owner);
  // No socket: bytes come in through Receive() and go out to `output`.
  Http1Connection(std::shared_ptr<EventLoop> loop, Output output, const HttpHandler& handler, const Http1Limits& limits,
                  ClientConnectionOwner& owner);
  ~Http1Connection() override;
  Http1Connection(const Http1Connection&) = delete;
  Http1Connection& operator=(const Http1Connection&) = delete;

  bool Start() override;
  void Flush() override;
  void Drain() override;
  void Close() override;
  bool closed() const override { return closed_; }
  void ClearDirty() override { dirty_ = false; }
  void Receive(const std::uint8_t* data, std::size_t size);

  // On the loop, through Http1Reply.
  void ReplyHead(Http1Exchange& exchange, int status, const HttpHeaders& headers, bool chunked,
                 std::size_t content_length);
  void ReplyBody(Http1Exchange& exchange, std::string_view piece);
  void ReplyEnd(Http1Exchange& exchange);

  // http-parser callbacks (static trampolines in the .cc forward here).
  int OnMessageBegin();
  int OnUrl(std::string_view piece);
  int OnHeaderField(std::string_view piece);
  int OnHeaderValue(std::string_view piece);
  int OnHeadersComplete();
  int OnBody(std::string_view piece);
  int OnMessageComplete();

 private:
  struct Parsed {
    HttpCall call;
    bool keep_alive = true;
  };

  void OnEvents(std::uint32_t events);
  void DoRead();
  void Parse(std::string_view bytes);
  // Answers a request the connection refuses itself (bad syntax, limits), then closes.
  void RefuseAndClose(int status, std::string_view body);
  // Starts the next waiting request when none is being answered.
  void Next();
  void MarkDirty();
  void UpdateInterest();
  bool Charge(std::size_t bytes);

  std::shared_ptr<EventLoop> loop_;
  int fd_;
  SSL* ssl_;
  Output output_;
  std::string first_bytes_;
  const HttpHandler& handler_;
  const Http1Limits& limits_;
  ClientConnectionOwner& owner_;
  http_parser parser_{};
  bool closed_ = false;
  bool dirty_ = false;
  bool draining_ = false;
  bool close_after_write_ = false;  // the last response is queued: close once it is out
  bool parse_failed_ = false;
  bool reading_ = true;
  bool want_write_ = false;
  std::string client_cn_;

  // The request being parsed.
  Parsed current_;
  std::string header_name_;
  std::string header_value_;
  bool in_value_ = false;
  std::size_t header_bytes_ = 0;
  std::size_t header_fields_ = 0;
  bool expect_continue_ = false;

  std::deque<Parsed> waiting_;
  std::size_t waiting_bytes_ = 0;
  std::shared_ptr<Http1Exchange> active_;
  OutBuffer outbuf_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace esp
