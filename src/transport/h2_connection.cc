#include "transport/h2_connection.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <vector>

#include "transport/peer_identity.h"

namespace esp {
namespace {

// Output a connection may hold serialized but unwritten before it stops asking nghttp2 for
// more: a slow reader then backs up into the calls' own (capped) queues.
constexpr std::size_t kOutbufHighWater = 1024 * 1024;
constexpr std::size_t kReadChunk = 64 * 1024;
// Reads per readiness event: level-triggered epoll brings the loop back for the rest, so one
// busy connection cannot starve the others of the same loop.
constexpr int kMaxReadsPerEvent = 16;
constexpr std::int32_t kInitialWindow = 1024 * 1024;
constexpr std::int32_t kConnectionWindow = 16 * 1024 * 1024;

H2Connection* Self(void* user_data) { return static_cast<H2Connection*>(user_data); }

nghttp2_nv Header(std::string_view name, std::string_view value) {
  return {reinterpret_cast<std::uint8_t*>(const_cast<char*>(name.data())),
          reinterpret_cast<std::uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
          NGHTTP2_NV_FLAG_NONE};
}

bool IsForwardedHeader(std::string_view key) {
  // As grpc_server.cc: hop headers stay here, the client's own (token, hasleader, ...) go on. The
  // client-certificate identity key is ours alone: a client sending it would pick its own user.
  return !(key.empty() || key.front() == ':' || key.starts_with("grpc-") || key == "user-agent" ||
           key == "content-type" || key == "te" || key == "authority" || key == "host" ||
           key == kClientCertCnKey);
}

// The CN of a client certificate the handshake verified (the server asks for one only with
// --client-cert-auth), as etcd's AuthInfoFromTLS takes it; "" without one.
std::string VerifiedClientCn(SSL* ssl) {
  if (ssl == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return {};
  X509* cert = SSL_get1_peer_certificate(ssl);
  std::string cn = CommonName(cert);
  X509_free(cert);
  return cn;
}

// Binary metadata ("-bin" keys) travels base64-encoded, padded or not; services get the bytes,
// as gRPC C++ hands them over.
std::string DecodeBase64(std::string_view in) {
  static const auto kTable = [] {
    std::array<int, 256> t{};
    t.fill(-1);
    const std::string_view chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (std::size_t i = 0; i < chars.size(); ++i) t[static_cast<unsigned char>(chars[i])] = static_cast<int>(i);
    return t;
  }();
  std::string out;
  unsigned bits = 0;
  int count = 0;
  for (const char c : in) {
    const int v = kTable[static_cast<unsigned char>(c)];
    if (v < 0) continue;  // padding, whitespace
    bits = (bits << 6) | static_cast<unsigned>(v);
    count += 6;
    if (count >= 8) {
      count -= 8;
      out.push_back(static_cast<char>((bits >> count) & 0xff));
    }
  }
  return out;
}

std::string StatusText(StatusCode code) { return std::to_string(static_cast<int>(code)); }

std::string PeerAddress(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return "an unknown peer";
  char host[INET6_ADDRSTRLEN] = {};
  int port = 0;
  if (address.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&address);
    inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host));
    port = ntohs(v4->sin_port);
  } else if (address.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&address);
    inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host));
    port = ntohs(v6->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

// The first queued OpenSSL error as text ("...:peer did not return a certificate"), or a
// placeholder when the peer simply went away mid-handshake.
std::string OpenSslReason() {
  const unsigned long code = ERR_peek_error();
  if (code == 0) return "connection closed during the handshake";
  std::array<char, 256> text{};
  ERR_error_string_n(code, text.data(), text.size());
  return text.data();
}

}  // namespace

// The service's handle on a bidirectional call: thread-safe. Messages are framed straight into
// one buffer under the sink's lock and reach the loop in batches: one posted task per batch,
// however many messages a broadcast or a burst adds before the loop gets to it, and no string
// or task allocated per message (the two buffers below trade places and keep their capacity).
class H2Sink final : public StreamSink, public std::enable_shared_from_this<H2Sink> {
 public:
  H2Sink(std::shared_ptr<EventLoop> loop, std::weak_ptr<H2Stream> stream)
      : loop_(std::move(loop)), stream_(std::move(stream)) {}

  bool Write(std::string message) override { return Append(message, {}); }
  bool WriteParts(std::string_view head, std::string_view body) override { return Append(head, body); }

  void Finish(Status status) override {
    // Posted under the lock: a batch scheduled before is taken before the status goes out.
    const std::lock_guard lock(mu_);
    if (done_.exchange(true)) return;
    loop_->Post([stream = stream_, status = std::move(status)]() mutable {
      if (const auto s = stream.lock(); s && s->connection != nullptr) s->connection->Finish(*s, std::move(status));
    });
  }

  // Bytes written by the service and not yet handed to nghttp2: what the watch service's
  // slow-client budget looks at (the loop-side cap below is the last line of defence).
  std::size_t QueuedBytes() const override { return queued_.load(std::memory_order_relaxed); }

  // On the loop: `n` framed bytes left the call's queue.
  void OnSent(std::size_t n) {
    std::size_t current = queued_.load(std::memory_order_relaxed);
    while (!queued_.compare_exchange_weak(current, current - std::min(current, n), std::memory_order_relaxed)) {
    }
  }

  void MarkDone() { done_.store(true, std::memory_order_release); }

 private:
  // A drained buffer keeps its capacity for the next batch, up to this much.
  static constexpr std::size_t kKeepCapacity = 256 * 1024;

  bool Append(std::string_view head, std::string_view body) {
    const std::size_t size = head.size() + body.size();
    const std::lock_guard lock(mu_);
    if (done_.load(std::memory_order_acquire)) return false;
    queued_.fetch_add(size + kGrpcPrefixBytes, std::memory_order_relaxed);
    AppendGrpcPrefix(batch_, size);
    if (!head.empty()) batch_.append(head);
    batch_.append(body);
    if (!scheduled_) {
      scheduled_ = true;
      loop_->Post([self = shared_from_this()] { self->Drain(); });
    }
    return true;
  }

  // On the loop: hands everything framed so far to the call in one piece.
  void Drain() {
    {
      const std::lock_guard lock(mu_);
      taken_.swap(batch_);
      scheduled_ = false;
    }
    if (const auto s = stream_.lock(); s && s->connection != nullptr) s->connection->SendFramed(*s, taken_);
    taken_.clear();
    if (taken_.capacity() > kKeepCapacity) taken_ = std::string();  // a burst's buffer is not kept
  }

  std::shared_ptr<EventLoop> loop_;
  std::weak_ptr<H2Stream> stream_;
  std::atomic<bool> done_{false};
  std::atomic<std::size_t> queued_{0};
  std::mutex mu_;
  std::string batch_;       // framed messages not yet posted to the loop (mu_)
  bool scheduled_ = false;  // a Drain is posted and has not taken batch_ yet (mu_)
  std::string taken_;       // the loop's side of the two buffers
};

// The HTTP face's handle on a plain HTTP request carried by an HTTP/2 stream: thread-safe, every
// method posts to the connection's loop and reaches the stream through a weak pointer.
class H2HttpReply final : public LoopHttpReply<H2Connection, H2Stream> {
 public:
  using LoopHttpReply::LoopHttpReply;

  void Send(int status, HttpHeaders headers, std::string body) override {
    if (!MarkEnded()) return;
    Queue(body.size());
    OnLoop([status, headers = std::move(headers), body = std::move(body)](H2Connection& c, H2Stream& s) {
      c.SendHttpHead(s, status, headers);
      c.SendHttpBody(s, body);
      c.EndHttp(s);
    });
  }
  void Begin(int status, HttpHeaders headers) override {
    OnLoop([status, headers = std::move(headers)](H2Connection& c, H2Stream& s) { c.SendHttpHead(s, status, headers); });
  }
  bool Write(std::string piece) override {
    if (!Writable()) return false;
    Queue(piece.size());
    OnLoop([piece = std::move(piece)](H2Connection& c, H2Stream& st) { c.SendHttpBody(st, piece); });
    return true;
  }
  void End() override {
    if (!MarkEnded()) return;
    OnLoop([](H2Connection& c, H2Stream& s) { c.EndHttp(s); });
  }
};

namespace {

int OnBeginHeadersCb(nghttp2_session*, const nghttp2_frame* frame, void* user) {
  return Self(user)->OnBeginHeaders(frame);
}
int OnHeaderCb(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name, std::size_t namelen,
               const std::uint8_t* value, std::size_t valuelen, std::uint8_t, void* user) {
  return Self(user)->OnHeader(frame, {reinterpret_cast<const char*>(name), namelen},
                              {reinterpret_cast<const char*>(value), valuelen});
}
int OnFrameRecvCb(nghttp2_session*, const nghttp2_frame* frame, void* user) { return Self(user)->OnFrameRecv(frame); }
int OnDataChunkCb(nghttp2_session*, std::uint8_t, std::int32_t stream_id, const std::uint8_t* data, std::size_t len,
                  void* user) {
  return Self(user)->OnDataChunk(stream_id, data, len);
}
int OnStreamCloseCb(nghttp2_session*, std::int32_t stream_id, std::uint32_t error_code, void* user) {
  return Self(user)->OnStreamClose(stream_id, error_code);
}
int OnFrameSendCb(nghttp2_session*, const nghttp2_frame* frame, void* user) { return Self(user)->OnFrameSend(frame); }
ssize_t ReadDataCb(nghttp2_session*, std::int32_t stream_id, std::uint8_t* buf, std::size_t length,
                   std::uint32_t* flags, nghttp2_data_source*, void* user) {
  return Self(user)->ReadData(stream_id, buf, length, flags);
}

nghttp2_session_callbacks* Callbacks() {
  static nghttp2_session_callbacks* const callbacks = [] {
    nghttp2_session_callbacks* cb = nullptr;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, OnBeginHeadersCb);
    nghttp2_session_callbacks_set_on_header_callback(cb, OnHeaderCb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, OnFrameRecvCb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, OnDataChunkCb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, OnStreamCloseCb);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, OnFrameSendCb);
    return cb;
  }();
  return callbacks;
}

}  // namespace

H2Connection::H2Connection(std::shared_ptr<EventLoop> loop, int fd, SSL* ssl, const Router& router,
                           const H2Limits& limits, H2ConnectionOwner& owner)
    : loop_(std::move(loop)), fd_(fd), ssl_(ssl), router_(router), limits_(limits), owner_(owner),
      peer_(PeerAddress(fd)), ping_policy_(limits.ping_policy) {}

H2Connection::H2Connection(std::shared_ptr<EventLoop> loop, Output output, const Router& router,
                           const H2Limits& limits, H2ConnectionOwner& owner)
    : loop_(std::move(loop)), fd_(-1), ssl_(nullptr), output_(std::move(output)), router_(router), limits_(limits),
      owner_(owner), ping_policy_(limits.ping_policy) {}

H2Connection::~H2Connection() {
  Close();
  if (session_ != nullptr) nghttp2_session_del(session_);
}

bool H2Connection::Start() {
  // nghttp2's HTTP messaging checks validate every header of every request (a twentieth of the
  // proxy's instructions per call). A gRPC server needs few of them: BeginCall checks :method and
  // content-type, an unknown :path is UNIMPLEMENTED, and the headers that travel on to the shards
  // are validated one by one in OnHeader. Everything else a client sends is read and dropped.
  nghttp2_option* option = nullptr;
  nghttp2_option_new(&option);
  nghttp2_option_set_no_http_messaging(option, 1);
  nghttp2_session_server_new2(&session_, Callbacks(), this, option);
  nghttp2_option_del(option);
  // No RFC 7540 priority tree (RFC 9218 section 2.1): gRPC clients send no priorities, and
  // without the tree nghttp2 schedules streams from a simple queue and keeps no closed streams.
  // MAX_HEADER_LIST_SIZE as a grpc-go server configured with MaxHeaderListSize sends it: grpc-go
  // clients then fail an over-large call themselves, with a status naming the cause, instead of
  // sending it to be refused (gRPC C++ 1.51 sends it anyway: AnswerRefusedHeaders says why).
  const std::array<nghttp2_settings_entry, 4> settings = {{
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, limits_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<std::uint32_t>(kInitialWindow)},
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<std::uint32_t>(limits_.headers.max_list_bytes)},
  }};
  if (nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings.data(), settings.size()) != 0 ||
      nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow) != 0) {
    return false;
  }
  if (fd_ >= 0) loop_->AddFd(fd_, EPOLLIN, [this](std::uint32_t events) { OnEvents(events); });
  if (limits_.keepalive_interval > std::chrono::steady_clock::duration::zero()) {
    ArmKeepalive(last_read_ + limits_.keepalive_interval);
  }
  MarkDirty();
  return true;
}

void H2Connection::ArmKeepalive(std::chrono::steady_clock::time_point when) {
  keepalive_timer_ = loop_->AddTimer(when, [this, alive = std::weak_ptr<bool>(alive_)] {
    if (alive.expired() || closed()) return;
    keepalive_timer_ = 0;
    OnKeepaliveTimer();
  });
}

// As grpc-go's server keepalive: silence for the interval earns a PING; any bytes from the client
// answer it (the ACK or anything else); still nothing after the timeout closes the connection.
void H2Connection::OnKeepaliveTimer() {
  const auto now = std::chrono::steady_clock::now();
  if (keepalive_ping_outstanding_) {
    spdlog::info("h2: {} did not answer a keepalive PING within {} s: closing", peer_,
                 std::chrono::duration_cast<std::chrono::seconds>(limits_.keepalive_timeout).count());
    Close();
    return;
  }
  if (now - last_read_ < limits_.keepalive_interval) return ArmKeepalive(last_read_ + limits_.keepalive_interval);
  nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, nullptr);
  MarkDirty();
  if (limits_.keepalive_timeout > std::chrono::steady_clock::duration::zero()) {
    keepalive_ping_outstanding_ = true;
    ArmKeepalive(now + limits_.keepalive_timeout);
  } else {
    ArmKeepalive(now + limits_.keepalive_interval);
  }
}

void H2Connection::RefusePings() {
  if (terminating_) return;
  terminating_ = true;
  spdlog::warn("h2: {} pings more often than every {} ms: GOAWAY too_many_pings", peer_,
               std::chrono::duration_cast<std::chrono::milliseconds>(limits_.ping_policy.min_time).count());
  static constexpr std::string_view kDebug = "too_many_pings";
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(session_),
                        NGHTTP2_ENHANCE_YOUR_CALM, reinterpret_cast<const std::uint8_t*>(kDebug.data()), kDebug.size());
  MarkDirty();
}

void H2Connection::MarkDirty() {
  if (dirty_ || closed()) return;
  dirty_ = true;
  owner_.OnDirty(this);
}

void H2Connection::OnEvents(std::uint32_t events) {
  if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) DoRead();
  if (closed()) return;
  // Writable again (or TLS wanting a read to progress): the end-of-turn flush retries.
  MarkDirty();
}

// One line per refused connection, with OpenSSL's reason (no certificate, unknown CA, plaintext
// on a TLS port, ...): what an operator needs to tell a misconfigured client.
void H2Connection::LogHandshakeFailure() {
  if (handshake_failure_logged_) return;
  handshake_failure_logged_ = true;
  spdlog::error("h2: TLS handshake failed with {}: {}", peer_, OpenSslReason());
}

void H2Connection::DoRead() {
  std::array<std::uint8_t, kReadChunk> buffer;
  for (int i = 0; i < kMaxReadsPerEvent && !closed(); ++i) {
    const IoResult read = ReadSome(fd_, ssl_, buffer);
    if (read.would_block()) return;
    if (!read.done()) {
      if (ssl_ != nullptr && !SSL_is_init_finished(ssl_)) {
        LogHandshakeFailure();
      } else if (read.kind == IoResult::Kind::kFailed) {
        spdlog::debug("h2: read from {} failed ({}): closing", peer_, read.error);
      }
      Close();
      return;
    }
    Receive(buffer.data(), read.bytes);
    if (closed()) return;
    // A short plain read drained the socket; TLS reads stop at record ends, so go on until
    // OpenSSL says it wants more.
    if (ssl_ == nullptr && read.bytes < buffer.size()) return;
  }
  // Out of turns with decrypted bytes still inside OpenSSL: epoll will not report them.
  if (!closed() && ssl_ != nullptr && SSL_pending(ssl_) > 0) {
    loop_->Post([this, alive = std::weak_ptr<bool>(alive_)] {
      if (!alive.expired() && !closed()) DoRead();
    });
  }
}

void H2Connection::Receive(const std::uint8_t* data, std::size_t size) {
  if (closed() || terminating_) return;
  if (keepalive_timer_ != 0 || keepalive_ping_outstanding_) {
    last_read_ = std::chrono::steady_clock::now();
    keepalive_ping_outstanding_ = false;
  }
  const ssize_t used = nghttp2_session_mem_recv(session_, data, size);
  if (used < 0) {
    spdlog::debug("h2: protocol error from client: {}", nghttp2_strerror(static_cast<int>(used)));
    // nghttp2 has queued a GOAWAY for the protocol error: send it, then close.
    Flush();
    Close();
  }
}

void H2Connection::Flush() {
  if (closed()) return;
  // Serialize up to the high-water mark, write, and go on while the socket takes it all: one
  // write per turn in the common case, bounded memory for large answers.
  for (bool more = true; more;) {
    more = false;
    while (outbuf_.pending() < kOutbufHighWater) {
      const std::uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) {
        spdlog::debug("h2: cannot serialize frames: {}", nghttp2_strerror(static_cast<int>(n)));
        Close();
        return;
      }
      if (n == 0) break;
      outbuf_.Append(data, static_cast<std::size_t>(n));
      more = outbuf_.pending() >= kOutbufHighWater;
    }
    if (!WriteOut()) {
      Close();
      return;
    }
    more = more && outbuf_.pending() == 0;
  }
  if (terminating_ && outbuf_.pending() == 0) {
    Close();  // the GOAWAY too_many_pings is out
    return;
  }
  UpdateWriteInterest();
  const bool nothing_to_do = !nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_);
  if ((nothing_to_do || (draining_ && streams_.empty())) && outbuf_.pending() == 0) Close();
}

// One send (or one SSL_write run) for everything this turn produced. False on a dead peer.
bool H2Connection::WriteOut() {
  const IoResult written = output_ ? outbuf_.WriteWith([this](std::string_view data) {
    return IoResult::Bytes(output_(data));
  })
                                   : outbuf_.WriteTo(fd_, ssl_);
  if (written.done()) return true;
  // The server's first frames go out before the handshake is done, so a write is often where a
  // refused client certificate shows.
  if (ssl_ != nullptr && !SSL_is_init_finished(ssl_)) LogHandshakeFailure();
  return false;
}

void H2Connection::UpdateWriteInterest() {
  const bool want = outbuf_.pending() > 0;
  if (want == want_write_event_ || fd_ < 0) return;
  want_write_event_ = want;
  loop_->ModifyFd(fd_, want ? (EPOLLIN | EPOLLOUT) : EPOLLIN);
}

void H2Connection::Drain() {
  if (closed() || draining_) return;
  draining_ = true;
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(session_),
                        NGHTTP2_NO_ERROR, nullptr, 0);
  MarkDirty();
}

void H2Connection::Close() {
  if (closed()) return;
  closed_ = true;
  if (keepalive_timer_ != 0) loop_->CancelTimer(keepalive_timer_);
  keepalive_timer_ = 0;
  if (fd_ >= 0) loop_->RemoveFd(fd_);
  // Cancel every call still open: services see their clients go away.
  auto streams = std::move(streams_);
  streams_.clear();
  for (auto& [id, stream] : streams) CloseStream(*stream, /*cancelled=*/true);
  if (ssl_ != nullptr) {
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  owner_.OnClosed(this);
}

int H2Connection::OnBeginHeaders(const nghttp2_frame* frame) {
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  auto stream = std::make_shared<H2Stream>();
  stream->id = frame->hd.stream_id;
  stream->connection = this;
  nghttp2_session_set_stream_user_data(session_, stream->id, stream.get());
  streams_.emplace(stream->id, std::move(stream));
  return 0;
}

int H2Connection::OnHeader(const nghttp2_frame* frame, std::string_view name, std::string_view value) {
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  auto* stream = static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(session_, frame->hd.stream_id));
  // A refused list is still decoded to its end by nghttp2 (the HPACK table must stay in step with
  // the client's), but nothing more of it is kept.
  if (stream == nullptr || stream->header_refusal) return 0;
  if (!KeepHeader(*stream, HeaderFieldSize(name, value))) return 0;
  if (name == ":path") {
    stream->path = value;
  } else if (name == ":method") {
    stream->method = value;
  } else if (name == "content-type") {
    stream->grpc_content_type = value.starts_with("application/grpc");
  } else if (name == "grpc-encoding") {
    stream->encoding = value;
  } else if (name == "grpc-timeout") {
    stream->timeout = ParseGrpcTimeout(value);
  } else if (IsForwardedHeader(name)) {
    // What HTTP messaging would have checked, for the headers that leave the proxy: a malformed
    // one resets the stream (PROTOCOL_ERROR's place) rather than reaching a shard.
    const auto* n = reinterpret_cast<const std::uint8_t*>(name.data());
    const auto* v = reinterpret_cast<const std::uint8_t*>(value.data());
    if (nghttp2_check_header_name(n, name.size()) == 0 || nghttp2_check_header_value(v, value.size()) == 0) {
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    stream->metadata.emplace_back(std::string(name), name.ends_with("-bin") ? DecodeBase64(value) : std::string(value));
  }
  return 0;
}

int H2Connection::OnFrameRecv(const nghttp2_frame* frame) {
  if (frame->hd.type == NGHTTP2_PING) {
    // nghttp2 answers it; we only count how often it comes.
    if ((frame->hd.flags & NGHTTP2_FLAG_ACK) == 0 && ping_policy_.OnPing(std::chrono::steady_clock::now())) RefusePings();
    return 0;
  }
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  auto* stream = static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(session_, frame->hd.stream_id));
  if (stream == nullptr) return 0;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    if (stream->header_refusal) {
      AnswerRefusedHeaders(*stream);
      return 0;
    }
    BeginCall(*stream);
  }
  if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0 && stream->connection != nullptr) OnRemoteClosed(*stream);
  return 0;
}

bool H2Connection::KeepHeader(H2Stream& stream, std::size_t field_size) {
  switch (JudgeHeaderField(stream.header_fields, stream.header_bytes, header_bytes_, field_size, limits_.headers)) {
    case HeaderVerdict::kKeep:
      ++stream.header_fields;
      stream.header_bytes += field_size;
      header_bytes_ += field_size;
      return true;
    case HeaderVerdict::kListTooLarge:
      // grpc-go's code for a list over its bound (FRAME_SIZE_ERROR: INTERNAL in gRPC clients).
      RefuseHeaders(stream, NGHTTP2_FRAME_SIZE_ERROR);
      return false;
    case HeaderVerdict::kConnectionFull:
      // The list itself is fine, the connection holds too much: RESOURCE_EXHAUSTED in gRPC clients.
      RefuseHeaders(stream, NGHTTP2_ENHANCE_YOUR_CALM);
      return false;
  }
  return false;
}

void H2Connection::RefuseHeaders(H2Stream& stream, std::uint32_t error_code) {
  spdlog::debug("h2: {} stream {}: request headers over the bound ({} fields, {} bytes kept so far): resetting it",
                peer_, stream.id, stream.header_fields, stream.header_bytes);
  stream.header_refusal = error_code;
  ReleaseHeaders(stream);
  // Freed now, not when the stream closes: the client may hold it open.
  Metadata().swap(stream.metadata);
  std::string().swap(stream.path);
  std::string().swap(stream.method);
  std::string().swap(stream.encoding);
}

void H2Connection::AnswerRefusedHeaders(H2Stream& stream) {
  // grpc-go (etcd) answers a list over its bound with RST_STREAM(FRAME_SIZE_ERROR) alone, which
  // gRPC clients report as INTERNAL "... RST_STREAM with error code 6". A trailers-only status
  // first says why; OnFrameSend then resets the stream with the same code as grpc-go.
  const HeaderLimits& limits = limits_.headers;
  Finish(stream, Status(StatusCode::kResourceExhausted,
                        *stream.header_refusal == NGHTTP2_FRAME_SIZE_ERROR
                            ? "request metadata too large: over " + std::to_string(limits.max_list_bytes) +
                                  " bytes or " + std::to_string(limits.max_fields) +
                                  " fields (name + value + 32 bytes each)"
                            : "request metadata of the calls open on this connection over " +
                                  std::to_string(limits.max_connection_bytes) + " bytes"));
}

void H2Connection::ReleaseHeaders(H2Stream& stream) {
  header_bytes_ -= stream.header_bytes;
  stream.header_bytes = 0;
}

void H2Connection::RefuseHttp(H2Stream& stream, const char* status) {
  const std::array<nghttp2_nv, 1> headers = {Header(":status", status)};
  nghttp2_submit_headers(session_, NGHTTP2_FLAG_END_STREAM, stream.id, nullptr, headers.data(), headers.size(), nullptr);
  stream.headers_sent = stream.trailers_sent = true;
  stream.final_status = Status(StatusCode::kInternal, "not a gRPC request");
  MarkDirty();
}

void H2Connection::BeginHttp(H2Stream& stream) {
  stream.http = true;
  stream.context = std::make_shared<CallContext>(std::nullopt, Metadata());
}

// The whole body is in (END_STREAM): hand the request to the HTTP face.
void H2Connection::DispatchHttp(H2Stream& stream) {
  stream.http_reply = std::make_shared<H2HttpReply>(loop_, streams_.at(stream.id));
  if (stream.http_body.size() > http_max_body_) {
    stream.http_reply->Send(413, {{"content-type", "text/plain; charset=utf-8"}}, "request body too large\n");
    return;
  }
  HttpCall call;
  call.method = std::move(stream.method);
  call.target = std::move(stream.path);
  call.headers = std::move(stream.metadata);
  call.body = std::move(stream.http_body);
  if (!client_cn_) client_cn_ = VerifiedClientCn(ssl_);
  call.client_cn = *client_cn_;
  (*http_handler_)(std::move(call), stream.context, stream.http_reply);
}

void H2Connection::SendHttpHead(H2Stream& stream, int status, const HttpHeaders& headers) {
  if (stream.headers_sent) return;
  const std::string code = std::to_string(status);
  std::vector<nghttp2_nv> nv;
  nv.reserve(headers.size() + 1);
  nv.push_back(Header(":status", code));
  for (const auto& [name, value] : headers) nv.push_back(Header(name, value));
  nghttp2_data_provider provider{};
  provider.read_callback = ReadDataCb;
  nghttp2_submit_response(session_, stream.id, nv.data(), nv.size(), &provider);
  stream.headers_sent = true;
  MarkDirty();
}

void H2Connection::SendHttpBody(H2Stream& stream, std::string_view piece) {
  if (stream.http_end || piece.empty()) return;
  if (stream.pending() > limits_.max_pending_bytes_per_stream) {
    // Bounded as gRPC streams are: a client that stopped reading loses this response only.
    spdlog::warn("h2: HTTP stream {} has {} bytes queued for a client that does not read; resetting it", stream.id,
                 stream.pending());
    stream.out.clear();
    stream.out_offset = 0;
    stream.http_end = true;
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream.id, NGHTTP2_CANCEL);
    MarkDirty();
    return;
  }
  stream.out.append(piece);
  if (stream.deferred) {
    stream.deferred = false;
    nghttp2_session_resume_data(session_, stream.id);
  }
  MarkDirty();
}

void H2Connection::EndHttp(H2Stream& stream) {
  if (stream.http_end) return;
  stream.http_end = true;
  if (stream.deferred) {
    stream.deferred = false;
    nghttp2_session_resume_data(session_, stream.id);
  }
  MarkDirty();
}

void H2Connection::BeginCall(H2Stream& stream) {
  if (!stream.grpc_content_type && http_handler_ != nullptr) return BeginHttp(stream);
  if (stream.method != "POST") return RefuseHttp(stream, "405");
  if (!stream.grpc_content_type) return RefuseHttp(stream, "415");
  std::optional<Clock::time_point> deadline;
  if (stream.timeout) deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(*stream.timeout);
  if (!client_cn_) client_cn_ = VerifiedClientCn(ssl_);
  if (!client_cn_->empty()) stream.metadata.emplace_back(kClientCertCnKey, *client_cn_);
  stream.context = std::make_shared<CallContext>(deadline, std::move(stream.metadata));
  stream.deframer.emplace(limits_.max_receive_bytes);
  if (!stream.encoding.empty() && stream.encoding != "identity") {
    // No decompressor here: refuse before reading a message, with grpc-go's words.
    return Finish(stream, Status(StatusCode::kUnimplemented,
                                 "grpc: Decompressor is not installed for grpc-encoding \"" + stream.encoding + "\""));
  }
  if (stream.timeout) ArmDeadline(stream);
  if ((stream.unary = router_.FindUnary(stream.path)) != nullptr) return;
  if (const StreamFactory* factory = router_.FindStream(stream.path)) {
    const auto self = streams_.at(stream.id);
    stream.sink = std::make_shared<H2Sink>(loop_, self);
    stream.handler = (*factory)(stream.context, stream.sink);
    return;
  }
  Finish(stream, Status(StatusCode::kUnimplemented, "unknown method " + stream.path));
}

void H2Connection::ArmDeadline(H2Stream& stream) {
  const std::weak_ptr<H2Stream> weak = streams_.at(stream.id);
  stream.deadline_timer = loop_->AddTimer(
      std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(*stream.timeout),
      [weak] {
        const auto s = weak.lock();
        if (!s || s->connection == nullptr) return;
        s->deadline_timer = 0;
        if (s->context) s->context->cancellation().Cancel();
        s->connection->Finish(*s, Status(StatusCode::kDeadlineExceeded, "Deadline Exceeded"));
      });
}

int H2Connection::OnDataChunk(std::int32_t stream_id, const std::uint8_t* data, std::size_t length) {
  auto* stream = static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(session_, stream_id));
  if (stream != nullptr && stream->http) {
    // Kept up to one byte past the bound: enough for DispatchHttp to answer 413.
    if (stream->http_body.size() <= http_max_body_) {
      stream->http_body.append(reinterpret_cast<const char*>(data), std::min(length, http_max_body_ + 1 - stream->http_body.size()));
    }
    return 0;
  }
  if (stream == nullptr || !stream->deframer || stream->final_status) return 0;
  const Status status = stream->deframer->Feed({reinterpret_cast<const char*>(data), length});
  if (!status.ok()) {
    if (stream->context) stream->context->cancellation().Cancel();
    Finish(*stream, status);
    return 0;
  }
  DeliverMessages(*stream);
  return 0;
}

void H2Connection::DeliverMessages(H2Stream& stream) {
  while (auto message = stream.deframer->Next()) {
    if (stream.unary != nullptr) {
      if (stream.dispatched) continue;  // a unary call takes one request; extra ones are ignored
      stream.dispatched = true;
      const std::weak_ptr<H2Stream> weak = streams_.at(stream.id);
      (*stream.unary)(stream.context, std::move(*message), [loop = loop_, weak](Status status, std::string response) {
        loop->Post([weak, status = std::move(status), response = std::move(response)]() mutable {
          const auto s = weak.lock();
          if (!s || s->connection == nullptr) return;  // the client reset the call meanwhile
          if (status.ok()) s->connection->SendMessage(*s, std::move(response));
          s->connection->Finish(*s, std::move(status));
        });
      });
    } else if (stream.handler && !stream.handler_closed) {
      stream.handler->OnMessage(std::move(*message));
    }
  }
}

void H2Connection::OnRemoteClosed(H2Stream& stream) {
  stream.remote_closed = true;
  if (stream.http) {
    if (!stream.http_reply) DispatchHttp(stream);
    return;
  }
  if (stream.final_status) return;
  if (stream.unary != nullptr) {
    if (!stream.dispatched) Finish(stream, Status(StatusCode::kInternal, "request message missing"));
    return;
  }
  // Half-close of a bidirectional call: the service hears it as the end of its input.
  if (stream.handler && !stream.handler_closed) {
    stream.handler_closed = true;
    stream.handler->OnClose();
  }
}

void H2Connection::SubmitResponseHeaders(H2Stream& stream) {
  const std::array<nghttp2_nv, 2> headers = {Header(":status", "200"), Header("content-type", "application/grpc")};
  nghttp2_data_provider provider{};
  provider.read_callback = ReadDataCb;
  nghttp2_submit_response(session_, stream.id, headers.data(), headers.size(), &provider);
  stream.headers_sent = true;
}

void H2Connection::SendMessage(H2Stream& stream, std::string message) {
  std::string framed;
  AppendGrpcMessage(framed, message);
  SendFramed(stream, framed);
}

void H2Connection::Finish(H2Stream& stream, Status status) {
  if (stream.final_status) return;
  if (!stream.headers_sent) {
    // Trailers-only response: one HEADERS frame with the status, ending the stream.
    const std::string code = StatusText(status.code());
    const std::string message = PercentEncodeGrpcMessage(status.message());
    std::array<nghttp2_nv, 4> headers = {Header(":status", "200"), Header("content-type", "application/grpc"),
                                         Header("grpc-status", code), Header("grpc-message", message)};
    const std::size_t count = message.empty() ? 3 : 4;
    nghttp2_submit_headers(session_, NGHTTP2_FLAG_END_STREAM, stream.id, nullptr, headers.data(), count, nullptr);
    stream.headers_sent = stream.trailers_sent = true;
    stream.final_status = std::move(status);
  } else {
    stream.final_status = std::move(status);
    if (stream.deferred) {
      stream.deferred = false;
      nghttp2_session_resume_data(session_, stream.id);
    }
  }
  MarkDirty();
}

void H2Connection::SendFramed(H2Stream& stream, std::string& framed) {
  if (stream.final_status || framed.empty()) return;
  // Checked before appending: one message of any size is fine (etcd answers can be large); a
  // queue that is already over the cap means the peer stopped reading.
  if (stream.pending() > limits_.max_pending_bytes_per_stream) {
    // The peer does not read fast enough (or at all): give up on this call, not on memory.
    spdlog::warn("h2: stream {} has {} bytes queued for a client that does not read; resetting it", stream.id,
                 stream.pending());
    stream.out.clear();
    stream.out_offset = 0;
    stream.final_status = Status(StatusCode::kResourceExhausted, "client does not read");
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream.id, NGHTTP2_CANCEL);
    MarkDirty();
    return;
  }
  if (stream.pending() == 0) {
    stream.out.swap(framed);  // the usual case: no copy, and the old buffer goes back to the sink
    stream.out_offset = 0;
  } else {
    stream.out.append(framed);
  }
  if (!stream.headers_sent) {
    SubmitResponseHeaders(stream);
  } else if (stream.deferred) {
    stream.deferred = false;
    nghttp2_session_resume_data(session_, stream.id);
  }
  MarkDirty();
}

ssize_t H2Connection::ReadData(std::int32_t stream_id, std::uint8_t* buf, std::size_t length, std::uint32_t* flags) {
  auto* stream = static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(session_, stream_id));
  if (stream == nullptr) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  const std::size_t n = std::min(length, stream->pending());
  std::memcpy(buf, stream->out.data() + stream->out_offset, n);
  stream->out_offset += n;
  if (stream->sink != nullptr) stream->sink->OnSent(n);
  if (stream->http_reply != nullptr) stream->http_reply->OnSent(n);
  if (stream->pending() == 0) {
    stream->out.clear();
    stream->out_offset = 0;
  } else if (stream->out_offset > (1 << 20) && stream->out_offset * 2 > stream->out.size()) {
    stream->out.erase(0, stream->out_offset);
    stream->out_offset = 0;
  }
  if (stream->pending() > 0) return static_cast<ssize_t>(n);
  if (stream->http) {
    if (!stream->http_end) {
      if (n > 0) return static_cast<ssize_t>(n);
      stream->deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    // Plain HTTP ends with the last DATA frame: no gRPC trailers.
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    stream->trailers_sent = true;
    return static_cast<ssize_t>(n);
  }
  if (stream->final_status && !stream->trailers_sent) {
    // Everything sent: end with the status as trailers (submitted from here, as nghttp2 asks).
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    const std::string code = StatusText(stream->final_status->code());
    const std::string message = PercentEncodeGrpcMessage(stream->final_status->message());
    const std::array<nghttp2_nv, 2> trailers = {Header("grpc-status", code), Header("grpc-message", message)};
    nghttp2_submit_trailer(session_, stream_id, trailers.data(), message.empty() ? 1 : 2);
    stream->trailers_sent = true;
    return static_cast<ssize_t>(n);
  }
  if (n > 0) return static_cast<ssize_t>(n);
  stream->deferred = true;
  return NGHTTP2_ERR_DEFERRED;
}

int H2Connection::OnFrameSend(const nghttp2_frame* frame) {
  if (frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) ping_policy_.OnResponseSent();
  if (frame->hd.type != NGHTTP2_HEADERS || (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) return 0;
  auto* stream = static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(session_, frame->hd.stream_id));
  // The call is over but the client may still be sending: tell it to stop (as gRPC servers do).
  // Refused headers are always reset, with grpc-go's code for them.
  if (stream != nullptr && (!stream->remote_closed || stream->header_refusal)) {
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                              stream->header_refusal.value_or(NGHTTP2_NO_ERROR));
  }
  return 0;
}

int H2Connection::OnStreamClose(std::int32_t stream_id, std::uint32_t) {
  const auto it = streams_.find(stream_id);
  if (it == streams_.end()) return 0;
  const auto stream = it->second;
  streams_.erase(it);
  // Closed before its status went out: the client reset it (or we did, for a slow reader).
  CloseStream(*stream, /*cancelled=*/!stream->trailers_sent);
  return 0;
}

void H2Connection::CloseStream(H2Stream& stream, bool cancelled) {
  stream.connection = nullptr;
  ReleaseHeaders(stream);
  if (stream.deadline_timer != 0) loop_->CancelTimer(stream.deadline_timer);
  if (stream.sink) stream.sink->MarkDone();
  // A plain HTTP request's context also ends with its answer (what serves it lets go then).
  if ((cancelled || stream.http) && stream.context) stream.context->cancellation().Cancel();
  if (stream.handler && !stream.handler_closed) {
    stream.handler_closed = true;
    stream.handler->OnClose();
  }
}

}  // namespace esp
