#pragma once
// One client connection of the event-loop data plane: a socket (optionally TLS), its nghttp2
// server session and the gRPC calls multiplexed on it. Lives on, and is only touched by, the
// loop that accepted it; services reach a call through Post() (see H2Stream's weak handles).
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "transport/call_context.h"
#include "transport/client_connection.h"
#include "transport/event_loop.h"
#include "transport/grpc_framing.h"
#include "transport/header_limits.h"
#include "transport/http_call.h"
#include "transport/ping_policy.h"
#include "transport/router.h"
#include "transport/socket_io.h"

namespace esp {

struct H2Limits {
  std::size_t max_receive_bytes = 2 * 1024 * 1024;
  // Response bytes one call may have queued for a peer that does not read (flow control holds
  // them back); a message arriving past this resets and cancels the call instead of growing
  // without bound. A single message is never refused for its size.
  std::size_t max_pending_bytes_per_stream = 32 * 1024 * 1024;
  std::uint32_t max_concurrent_streams = 65536;
  // Request headers decoded and kept (header_limits.h); the list bound is also advertised as
  // SETTINGS_MAX_HEADER_LIST_SIZE.
  HeaderLimits headers;
  // Client PINGs: how often they may come (etcd's --grpc-keepalive-min-time).
  PingPolicyOptions ping_policy;
  // Our own PINGs (etcd's --grpc-keepalive-interval / --grpc-keepalive-timeout): after this much
  // silence from the client we ping it, and close the connection if it stays silent for the
  // timeout after that. Zero interval: never.
  std::chrono::steady_clock::duration keepalive_interval = std::chrono::hours(2);
  std::chrono::steady_clock::duration keepalive_timeout = std::chrono::seconds(20);
};

class H2Connection;
using H2ConnectionOwner = ClientConnectionOwner;

// One gRPC call (an HTTP/2 stream). Owned by its connection's stream table; everything else
// holds weak pointers, so a completion for a call the client already reset finds nothing.
struct H2Stream {
  std::int32_t id = 0;
  H2Connection* connection = nullptr;  // null once closed

  // Request, while headers arrive.
  std::string method;
  std::string path;
  bool grpc_content_type = false;  // content-type application/grpc*
  std::string encoding;
  std::optional<std::chrono::nanoseconds> timeout;
  Metadata metadata;
  // The request headers' cost as HPACK counts it, charged to the connection until the stream
  // closes (header_limits.h).
  std::size_t header_fields = 0;
  std::size_t header_bytes = 0;
  // Set once the headers passed a bound: nothing more of them is kept, what was kept is freed,
  // and the stream is reset with this HTTP/2 error code when its header block ends.
  std::optional<std::uint32_t> header_refusal;

  CallContextPtr context;
  std::optional<MessageDeframer> deframer;
  const UnaryHandler* unary = nullptr;
  std::shared_ptr<StreamHandler> handler;  // bidirectional calls
  std::shared_ptr<class H2Sink> sink;
  bool dispatched = false;      // unary: the handler has the request
  bool remote_closed = false;   // the client half-closed
  bool handler_closed = false;  // OnClose delivered
  EventLoop::TimerId deadline_timer = 0;

  // Plain HTTP on this stream (not gRPC): the body as it arrives, and the end of the response.
  bool http = false;
  std::string http_body;
  bool http_end = false;
  std::shared_ptr<class H2HttpReply> http_reply;

  // Response.
  std::string out;  // framed messages not yet taken by nghttp2
  std::size_t out_offset = 0;
  bool headers_sent = false;
  bool deferred = false;  // nghttp2 was told there is nothing to send yet
  std::optional<Status> final_status;
  bool trailers_sent = false;

  std::size_t pending() const { return out.size() - out_offset; }
};

class H2Connection final : public ClientConnection {
 public:
  // Where a connection without a socket writes: returns how many bytes it took (fewer than
  // offered: the "socket" is full, the rest waits for the next Flush, as on EAGAIN).
  using Output = std::function<std::size_t(std::string_view bytes)>;

  // Takes ownership of `fd` and `ssl` (may be null: h2c with prior knowledge).
  H2Connection(std::shared_ptr<EventLoop> loop, int fd, SSL* ssl, const Router& router, const H2Limits& limits,
               H2ConnectionOwner& owner);
  // No socket: bytes come in through Receive() and go out to `output` (the fuzz target drives the
  // same session, callbacks and Router as production this way).
  H2Connection(std::shared_ptr<EventLoop> loop, Output output, const Router& router, const H2Limits& limits,
               H2ConnectionOwner& owner);
  ~H2Connection();
  H2Connection(const H2Connection&) = delete;
  H2Connection& operator=(const H2Connection&) = delete;

  bool Start() override;
  // Serializes whatever nghttp2 has to send and writes it: once per loop turn (coalescing).
  void Flush() override;
  // Graceful shutdown: GOAWAY, the calls in flight finish, then the connection closes.
  void Drain() override;
  // Closes now, cancelling the calls in flight.
  void Close() override;
  bool closed() const override { return closed_; }
  // Requests that are not gRPC (no application/grpc content type) go here instead of being
  // refused with 415: etcd's HTTP face on h2 (curl --http2-prior-knowledge, browsers over TLS).
  void SetHttpHandler(const HttpHandler* handler, std::size_t max_body_bytes) {
    http_handler_ = handler;
    http_max_body_ = max_body_bytes;
  }
  // Hands bytes read from the peer to nghttp2 (and through it to the calls). On a protocol
  // error the GOAWAY nghttp2 queued is flushed and the connection closes.
  void Receive(const std::uint8_t* data, std::size_t size);
  bool idle() const { return streams_.empty() && outbuf_.pending() == 0; }
  // Request header bytes the open streams hold (HPACK's count), at most HeaderLimits's bound.
  std::size_t header_bytes() const { return header_bytes_; }
  // The owner clears this when it flushes.
  void ClearDirty() override { dirty_ = false; }

  // Called on the loop thread (through Post) by the transport's completions.
  void SendMessage(H2Stream& stream, std::string message);
  // Already framed messages (one or more); may take `framed`'s buffer and leave another behind.
  void SendFramed(H2Stream& stream, std::string& framed);
  // Plain HTTP responses (on the loop, through H2HttpReply): headers, body pieces, the end.
  void SendHttpHead(H2Stream& stream, int status, const HttpHeaders& headers);
  void SendHttpBody(H2Stream& stream, std::string_view piece);
  void EndHttp(H2Stream& stream);
  void Finish(H2Stream& stream, Status status);

  // nghttp2 callbacks (static trampolines in the .cc forward here).
  int OnBeginHeaders(const nghttp2_frame* frame);
  int OnHeader(const nghttp2_frame* frame, std::string_view name, std::string_view value);
  int OnFrameRecv(const nghttp2_frame* frame);
  int OnDataChunk(std::int32_t stream_id, const std::uint8_t* data, std::size_t length);
  int OnStreamClose(std::int32_t stream_id, std::uint32_t error_code);
  int OnFrameSend(const nghttp2_frame* frame);
  ssize_t ReadData(std::int32_t stream_id, std::uint8_t* buf, std::size_t length, std::uint32_t* flags);

 private:
  void OnEvents(std::uint32_t events);
  void DoRead();
  bool WriteOut();
  void MarkDirty();
  void BeginCall(H2Stream& stream);
  void BeginHttp(H2Stream& stream);
  void DispatchHttp(H2Stream& stream);
  // Charges one request header field to its stream and the connection; false (and the stream
  // refused) when that would pass a bound.
  bool KeepHeader(H2Stream& stream, std::size_t field_size);
  void RefuseHeaders(H2Stream& stream, std::uint32_t error_code);
  // At the end of a refused header block: a RESOURCE_EXHAUSTED status, then RST_STREAM.
  void AnswerRefusedHeaders(H2Stream& stream);
  void ReleaseHeaders(H2Stream& stream);
  void DeliverMessages(H2Stream& stream);
  void OnRemoteClosed(H2Stream& stream);
  void RefuseHttp(H2Stream& stream, const char* status);
  void SubmitResponseHeaders(H2Stream& stream);
  void CloseStream(H2Stream& stream, bool cancelled);
  void ArmDeadline(H2Stream& stream);
  void UpdateWriteInterest();
  // GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings"); the connection closes once it is written.
  void RefusePings();
  void ArmKeepalive(std::chrono::steady_clock::time_point when);
  void OnKeepaliveTimer();

  std::shared_ptr<EventLoop> loop_;
  int fd_;
  // One error line per connection whose TLS handshake failed, with OpenSSL's reason.
  void LogHandshakeFailure();
  SSL* ssl_;
  Output output_;  // set only without a socket
  bool closed_ = false;
  const Router& router_;
  const HttpHandler* http_handler_ = nullptr;
  std::size_t http_max_body_ = 0;
  const H2Limits& limits_;
  H2ConnectionOwner& owner_;
  nghttp2_session* session_ = nullptr;
  std::map<std::int32_t, std::shared_ptr<H2Stream>> streams_;
  std::size_t header_bytes_ = 0;  // the open streams' header_bytes, summed
  OutBuffer outbuf_;
  bool want_write_event_ = false;
  std::string peer_;  // "host:port", taken at accept: getpeername fails once the peer has gone
  // The verified client certificate's CN (etcd's client-cert-auth user), read at the first call:
  // by then the handshake is done. Empty: no verified certificate.
  std::optional<std::string> client_cn_;
  bool handshake_failure_logged_ = false;
  bool dirty_ = false;
  bool draining_ = false;
  PingPolicy ping_policy_;
  // Set by RefusePings: nothing more is read, and the connection closes after its last write.
  bool terminating_ = false;
  std::chrono::steady_clock::time_point last_read_ = std::chrono::steady_clock::now();
  EventLoop::TimerId keepalive_timer_ = 0;
  bool keepalive_ping_outstanding_ = false;
  // Expires with the connection: lets a posted task find out whether it still exists.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace esp
