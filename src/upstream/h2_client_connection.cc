#include "upstream/h2_client_connection.h"

#include "upstream/upstream_fence.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <mutex>
#include <thread>

namespace esp {
namespace {

// A decimal header value (":status", "grpc-status"); -1 if it is not one.
int ParseInt(std::string_view text) {
  int value = -1;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  return error == std::errc() && end == text.data() + text.size() ? value : -1;
}

constexpr std::size_t kReadChunk = 64 * 1024;
// At most 128 KiB from one shard connection per loop turn: the loop is shared with client
// connections, whose queued responses are written only at the end of the turn, so a big read
// burst would look like a lagging client to the watch service's byte budget (and would hold
// other connections on the loop up). The socket stays readable: the next turn reads on.
constexpr int kMaxReadsPerEvent = 2;
constexpr std::int32_t kStreamWindow = 1024 * 1024;
constexpr std::int32_t kConnectionWindow = 16 * 1024 * 1024;
// The largest header block we encode (nghttp2's default is 64 KiB, and a larger block makes it
// end the whole connection with every call on it). Clients' lists are bounded at 64 KiB
// (HeaderLimits), a call adds little to its forwarded metadata, and etcd takes up to 16 MiB.
constexpr std::size_t kMaxSendHeaderBlock = 1024 * 1024;

H2ClientConnection* Self(void* user) { return static_cast<H2ClientConnection*>(user); }

nghttp2_nv Header(std::string_view name, std::string_view value) {
  return {reinterpret_cast<std::uint8_t*>(const_cast<char*>(name.data())),
          reinterpret_cast<std::uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
          NGHTTP2_NV_FLAG_NONE};
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
ssize_t ReadDataCb(nghttp2_session*, std::int32_t stream_id, std::uint8_t* buf, std::size_t length,
                   std::uint32_t* flags, nghttp2_data_source*, void* user) {
  return Self(user)->ReadData(stream_id, buf, length, flags);
}

nghttp2_session_callbacks* Callbacks() {
  static nghttp2_session_callbacks* const callbacks = [] {
    nghttp2_session_callbacks* cb = nullptr;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, OnHeaderCb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, OnFrameRecvCb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, OnDataChunkCb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, OnStreamCloseCb);
    return cb;
  }();
  return callbacks;
}

std::string EncodeBase64(std::string_view in) {
  static constexpr char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  unsigned bits = 0;
  int count = 0;
  for (const char c : in) {
    bits = (bits << 8) | static_cast<unsigned char>(c);
    count += 8;
    while (count >= 6) {
      count -= 6;
      out.push_back(kChars[(bits >> count) & 0x3f]);
    }
  }
  if (count > 0) out.push_back(kChars[(bits << (6 - count)) & 0x3f]);
  while (out.size() % 4 != 0) out.push_back('=');
  return out;
}

// grpc-timeout allows at most 8 digits: pick the finest unit that fits.
std::string GrpcTimeout(std::chrono::nanoseconds left) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(left).count();
  if (us < 100000000) return std::to_string(std::max<long long>(us, 1)) + "u";
  const auto ms = us / 1000;
  if (ms < 100000000) return std::to_string(ms) + "m";
  return std::to_string(std::min<long long>(ms / 1000, 99999999)) + "S";
}

std::string PercentDecode(std::string_view in) {
  std::string out;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size()) {
      const std::string hex(in.substr(i + 1, 2));
      char* end = nullptr;
      const long v = std::strtol(hex.c_str(), &end, 16);
      if (end == hex.c_str() + 2) {
        out.push_back(static_cast<char>(v));
        i += 2;
        continue;
      }
    }
    out.push_back(in[i]);
  }
  return out;
}

// gRPC's mapping of an HTTP status without grpc-status to a code.
StatusCode FromHttpStatus(int http) {
  switch (http) {
    case 400: return StatusCode::kInternal;
    case 401: return StatusCode::kUnauthenticated;
    case 403: return StatusCode::kPermissionDenied;
    case 404: return StatusCode::kUnimplemented;
    case 429: case 502: case 503: case 504: return StatusCode::kUnavailable;
    default: return StatusCode::kUnknown;
  }
}

}  // namespace

// ---- UpstreamLoops ----

UpstreamLoops::UpstreamLoops(std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    auto slot = std::make_unique<Slot>();
    slot->loop = std::make_shared<EventLoop>();
    Slot* const raw = slot.get();
    // Coalescing: every connection that produced output this turn is written once, here.
    slot->loop->AddEndOfTurn([raw] {
      while (!raw->dirty.empty()) {
        raw->flushing.swap(raw->dirty);  // both keep their capacity: no allocation per turn
        for (const auto& connection : raw->flushing) connection->Flush();
        raw->flushing.clear();
      }
    });
    slot->loop->Start();
    slots_.push_back(std::move(slot));
  }
}

UpstreamLoops::~UpstreamLoops() {
  for (auto& slot : slots_) slot->loop->Stop();
}

namespace {
std::atomic<std::size_t> shared_size{0};
}  // namespace

void UpstreamLoops::SetSharedSize(std::size_t count) { shared_size.store(count); }

std::shared_ptr<UpstreamLoops> UpstreamLoops::Shared() {
  // Lives until exit: the last transport may well be dropped on one of these loops' threads
  // (from a completion), where stopping the pool would mean a thread joining itself.
  static const auto shared = std::make_shared<UpstreamLoops>(
      shared_size.load() > 0 ? shared_size.load() : std::max(1u, std::thread::hardware_concurrency()));
  return shared;
}

std::vector<std::shared_ptr<EventLoop>> UpstreamLoops::loops() const {
  std::vector<std::shared_ptr<EventLoop>> out;
  for (const auto& slot : slots_) out.push_back(slot->loop);
  return out;
}

std::size_t UpstreamLoops::Pick() {
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i]->loop->InLoopThread()) return i;
  }
  return next_.fetch_add(1, std::memory_order_relaxed) % slots_.size();
}

void UpstreamLoops::MarkDirty(std::size_t index, std::shared_ptr<H2ClientConnection> connection) {
  slots_[index]->dirty.push_back(std::move(connection));
}

// ---- H2ClientConnection ----

H2ClientConnection::H2ClientConnection(UpstreamLoops& loops, std::size_t loop_index, sockaddr_storage address,
                                       socklen_t address_len, SSL_CTX* ssl_ctx, std::string verify_name,
                                       H2ClientOptions options,
                                       std::function<void(bool, const std::string&)> on_connected)
    : loops_(loops),
      loop_index_(loop_index),
      loop_(loops.loop(loop_index)),
      address_(address),
      address_len_(address_len),
      ssl_ctx_(ssl_ctx),
      verify_name_(std::move(verify_name)),
      options_(std::move(options)),
      on_connected_(std::move(on_connected)) {
  // The connection may outlive its transport (calls in flight): it keeps its own reference.
  if (ssl_ctx_ != nullptr) SSL_CTX_up_ref(ssl_ctx_);
}

H2ClientConnection::~H2ClientConnection() {
  if (connect_timer_ != 0) loop_.CancelTimer(connect_timer_);
  if (keepalive_timer_ != 0) loop_.CancelTimer(keepalive_timer_);
  if (fd_ >= 0) {
    loop_.RemoveFd(fd_);
    fence::UnregisterSocket(fd_);
    close(fd_);
  }
  if (ssl_ != nullptr) SSL_free(ssl_);
  if (session_ != nullptr) nghttp2_session_del(session_);
  if (ssl_ctx_ != nullptr) SSL_CTX_free(ssl_ctx_);
}

void H2ClientConnection::Connect() {
  state_ = State::kConnecting;
  fd_ = socket(address_.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return FailConnect(std::string("socket: ") + std::strerror(errno));
  fence::RegisterSocket(fd_);
  const int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (connect(fd_, reinterpret_cast<const sockaddr*>(&address_), address_len_) != 0 && errno != EINPROGRESS) {
    return FailConnect(std::strerror(errno));
  }
  const std::weak_ptr<H2ClientConnection> weak = shared_from_this();
  interest_ = EPOLLOUT;
  loop_.AddFd(fd_, interest_, [weak](std::uint32_t events) {
    if (const auto self = weak.lock()) self->OnEvents(events);
  });
  connect_timer_ = loop_.AddTimer(std::chrono::steady_clock::now() + options_.connect_timeout, [weak] {
    const auto self = weak.lock();
    if (!self) return;
    self->connect_timer_ = 0;
    if (self->state_ == State::kConnecting || self->state_ == State::kHandshaking) {
      self->FailConnect("connection attempt timed out");
    }
  });
}

void H2ClientConnection::OnEvents(std::uint32_t events) {
  const auto self = shared_from_this();  // handlers may drop the last outside reference
  switch (state_) {
    case State::kConnecting: return OnConnectDone();
    case State::kHandshaking: return ContinueHandshake();
    case State::kReady:
      if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) DoRead();
      if (state_ == State::kReady) MarkDirty();
      return;
    default: return;
  }
}

void H2ClientConnection::OnConnectDone() {
  int error = 0;
  socklen_t len = sizeof(error);
  getsockopt(fd_, SOL_SOCKET, SO_ERROR, &error, &len);
  if (error != 0) return FailConnect(std::strerror(error));
  if (ssl_ctx_ == nullptr) return BecomeReady();
  ssl_ = SSL_new(ssl_ctx_);
  SSL_set_fd(ssl_, fd_);
  SSL_set_connect_state(ssl_);
  if (!verify_name_.empty()) {
    in6_addr ip{};
    const bool is_ip = inet_pton(AF_INET, verify_name_.c_str(), &ip) == 1 || inet_pton(AF_INET6, verify_name_.c_str(), &ip) == 1;
    if (is_ip) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), verify_name_.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl_, verify_name_.c_str());
      SSL_set1_host(ssl_, verify_name_.c_str());
    }
  }
  state_ = State::kHandshaking;
  ContinueHandshake();
}

void H2ClientConnection::ContinueHandshake() {
  ERR_clear_error();
  const int rc = SSL_do_handshake(ssl_);
  if (rc == 1) return BecomeReady();
  const int err = SSL_get_error(ssl_, rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    const std::uint32_t want = err == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT;
    if (want != interest_) loop_.ModifyFd(fd_, interest_ = want);
    return;
  }
  std::array<char, 256> text{};
  ERR_error_string_n(ERR_peek_last_error(), text.data(), text.size());
  std::string reason = std::string("TLS handshake failed: ") + text.data();
  // "certificate verify failed" alone does not say why: add OpenSSL's verdict (IP address
  // mismatch, hostname mismatch, unable to get local issuer certificate, ...).
  if (const long verdict = SSL_get_verify_result(ssl_); verdict != X509_V_OK) {
    reason += std::string(" (") + X509_verify_cert_error_string(verdict) + ")";
  }
  FailConnect(std::move(reason));
}

void H2ClientConnection::BecomeReady() {
  if (connect_timer_ != 0) {
    loop_.CancelTimer(connect_timer_);
    connect_timer_ = 0;
  }
  nghttp2_option* option = nullptr;
  nghttp2_option_new(&option);
  // gRPC servers may answer a reset call with more frames; not worth a connection error.
  nghttp2_option_set_no_auto_window_update(option, 0);
  // The shard is etcd, not an arbitrary peer: its headers are not validated one by one (that was
  // a tenth of nghttp2's work per call); OnHeader reads the three it needs.
  nghttp2_option_set_no_http_messaging(option, 1);
  nghttp2_option_set_max_send_header_block_length(option, kMaxSendHeaderBlock);
  nghttp2_session_client_new2(&session_, Callbacks(), this, option);
  nghttp2_option_del(option);
  // No RFC 7540 priority tree (RFC 9218 section 2.1): nghttp2 then schedules streams from a
  // simple queue and keeps no closed streams around; our streams are all equal anyway.
  const std::array<nghttp2_settings_entry, 3> settings = {{
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<std::uint32_t>(kStreamWindow)},
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
  }};
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings.data(), settings.size());
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow);
  state_ = State::kReady;
  loop_.ModifyFd(fd_, interest_ = EPOLLIN);
  on_connected_(true, {});
  auto waiting = std::move(waiting_);
  waiting_.clear();
  for (const auto& call : waiting) {
    if (!call->closed) Submit(call);
  }
  ArmKeepalive();
  MarkDirty();
}

void H2ClientConnection::FailConnect(const std::string& error) {
  const auto self = shared_from_this();
  on_connected_(false, error);
  CloseWithError(error);
}

void H2ClientConnection::CloseWithError(const std::string& error) {
  if (state_ == State::kClosed) return;
  const bool was_ready = state_ == State::kReady;
  state_ = State::kClosed;
  if (fd_ >= 0) {
    loop_.RemoveFd(fd_);
    fence::UnregisterSocket(fd_);
    close(fd_);
    fd_ = -1;
  }
  if (connect_timer_ != 0) loop_.CancelTimer(connect_timer_);
  if (keepalive_timer_ != 0) loop_.CancelTimer(keepalive_timer_);
  connect_timer_ = keepalive_timer_ = 0;
  // Calls that never left fail with gRPC's words for "no connection": the transport may try them
  // elsewhere, writes included. Calls already sent may have been applied.
  auto waiting = std::move(waiting_);
  waiting_.clear();
  for (const auto& call : waiting) {
    Complete(call, Status(StatusCode::kUnavailable, "failed to connect to all addresses; last error: " + error), true);
  }
  auto calls = std::move(calls_);
  calls_.clear();
  for (const auto& [id, call] : calls) {
    Complete(call, Status(StatusCode::kUnavailable, was_ready ? "connection lost: " + error : error), false);
  }
}

void H2ClientConnection::MarkDirty() {
  if (dirty_ || state_ != State::kReady) return;
  dirty_ = true;
  loops_.MarkDirty(loop_index_, shared_from_this());
}

void H2ClientConnection::ArmKeepalive() {
  // PING only while calls are open (etcd, like gRPC-Go, answers pings on an idle connection
  // with GOAWAY too_many_pings), and never more often than keepalive_time.
  const std::weak_ptr<H2ClientConnection> weak = shared_from_this();
  keepalive_timer_ = loop_.AddTimer(std::chrono::steady_clock::now() + options_.keepalive_time, [weak] {
    const auto self = weak.lock();
    if (!self || self->state_ != State::kReady) return;
    self->keepalive_timer_ = 0;
    if (self->ping_outstanding_) {
      self->CloseWithError("keepalive watchdog timeout");
      return;
    }
    if (!self->calls_.empty()) {
      nghttp2_submit_ping(self->session_, NGHTTP2_FLAG_NONE, nullptr);
      self->ping_outstanding_ = true;
      self->MarkDirty();
    }
    self->ArmKeepalive();
  });
}

void H2ClientConnection::Start(const std::shared_ptr<H2ClientCall>& call) {
  switch (state_) {
    case State::kReady: return Submit(call);
    case State::kClosed:
      return Complete(call, Status(StatusCode::kUnavailable, "failed to connect to all addresses; connection closed"),
                      true);
    default: waiting_.push_back(call);
  }
}

void H2ClientConnection::Submit(const std::shared_ptr<H2ClientCall>& call) {
  std::string timeout;
  if (call->deadline) {
    const auto left = *call->deadline - Clock::now();
    if (left <= Clock::duration::zero()) {
      return Complete(call, Status(StatusCode::kDeadlineExceeded, "Deadline Exceeded"), false);
    }
    timeout = GrpcTimeout(left);
    const std::weak_ptr<H2ClientConnection> weak_conn = shared_from_this();
    const std::weak_ptr<H2ClientCall> weak_call = call;
    call->deadline_timer = loop_.AddTimer(
        std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(left),
        [weak_conn, weak_call] {
          const auto self = weak_conn.lock();
          const auto c = weak_call.lock();
          if (!self || !c) return;
          c->deadline_timer = 0;
          self->Reset(c, Status(StatusCode::kDeadlineExceeded, "Deadline Exceeded"));
        });
  }
  const std::string scheme = ssl_ != nullptr ? "https" : "http";
  std::vector<std::string> encoded;  // keeps "-bin" values alive until submitted
  encoded.reserve(call->metadata.size());
  std::vector<nghttp2_nv> headers;
  headers.reserve(7 + call->metadata.size());  // one allocation, not one per growth
  headers.insert(headers.end(), {Header(":method", "POST"), Header(":scheme", scheme), Header(":path", call->path),
                                 Header(":authority", options_.authority), Header("content-type", "application/grpc"),
                                 Header("te", "trailers")});
  if (!timeout.empty()) {
    // Never indexed: the value differs on every call, so indexing it filled HPACK's dynamic table
    // (ours and etcd's) with dozens of grpc-timeout entries that the encoder then compared
    // one by one for each request: ~15% of the proxy's instructions per forwarded put.
    nghttp2_nv nv = Header("grpc-timeout", timeout);
    nv.flags = NGHTTP2_NV_FLAG_NO_INDEX;
    headers.push_back(nv);
  }
  for (const auto& [key, value] : call->metadata) {
    if (key.ends_with("-bin")) {
      encoded.push_back(EncodeBase64(value));
      headers.push_back(Header(key, encoded.back()));
    } else {
      headers.push_back(Header(key, value));
    }
  }
  if (const auto error = HeaderListTooLarge(headers)) {
    // Refused here, for this call only, with the cause: not sent (nghttp2 would have ended the
    // connection, or the shard reset the stream), and not retried elsewhere (it cannot fit there).
    return Complete(call, Status(StatusCode::kInternal, *error), false);
  }
  nghttp2_data_provider provider{};
  provider.read_callback = ReadDataCb;
  const std::int32_t id = nghttp2_submit_request(session_, nullptr, headers.data(), headers.size(), &provider, nullptr);
  if (id < 0) {
    return Complete(call, Status(StatusCode::kUnavailable, std::string("failed to connect to all addresses; ") +
                                                                nghttp2_strerror(id)),
                    true);
  }
  call->id = id;
  calls_.emplace(id, call);
  MarkDirty();
}

std::optional<std::string> H2ClientConnection::HeaderListTooLarge(const std::vector<nghttp2_nv>& headers) const {
  std::size_t size = 0;
  for (const nghttp2_nv& nv : headers) size += nv.namelen + nv.valuelen + kHpackFieldOverhead;
  const std::uint32_t peer_limit = nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE);
  return SendHeaderListError(size, peer_limit, kMaxSendHeaderBlock);
}

void H2ClientConnection::Write(const std::shared_ptr<H2ClientCall>& call, std::string_view message) {
  if (call->closed || call->half_closed) return;
  AppendGrpcMessage(call->out, message);
  if (call->id >= 0 && call->deferred) {
    call->deferred = false;
    nghttp2_session_resume_data(session_, call->id);
  }
  MarkDirty();
}

void H2ClientConnection::CloseSend(const std::shared_ptr<H2ClientCall>& call) {
  if (call->closed || call->half_closed) return;
  call->half_closed = true;
  if (call->id >= 0 && call->deferred) {
    call->deferred = false;
    nghttp2_session_resume_data(session_, call->id);
  }
  MarkDirty();
}

void H2ClientConnection::Reset(const std::shared_ptr<H2ClientCall>& call, Status status) {
  if (call->closed) return;
  if (call->id < 0 || state_ != State::kReady) {
    std::erase(waiting_, call);
    return Complete(call, std::move(status), false);
  }
  call->local_status = std::move(status);
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, call->id, NGHTTP2_CANCEL);
  MarkDirty();
}

void H2ClientConnection::Complete(const std::shared_ptr<H2ClientCall>& call, Status status, bool never_sent) {
  if (call->closed) return;
  call->closed = true;
  if (call->deadline_timer != 0) {
    loop_.CancelTimer(call->deadline_timer);
    call->deadline_timer = 0;
  }
  auto on_close = std::move(call->on_close);
  call->on_message = nullptr;
  if (on_close) on_close(std::move(status), never_sent);
}

int H2ClientConnection::OnHeader(const nghttp2_frame* frame, std::string_view name, std::string_view value) {
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  const auto it = calls_.find(frame->hd.stream_id);
  if (it == calls_.end()) return 0;
  H2ClientCall& call = *it->second;
  if (name == ":status") {
    call.http_status = ParseInt(value);
  } else if (name == "grpc-status") {
    const int code = ParseInt(value);
    call.grpc_status = code < 0 ? static_cast<int>(StatusCode::kUnknown) : code;
  } else if (name == "grpc-message") {
    call.grpc_message = PercentDecode(value);
  }
  return 0;
}

int H2ClientConnection::OnFrameRecv(const nghttp2_frame* frame) {
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    // New calls go to a fresh connection; nghttp2 closes the calls the server will not process
    // with REFUSED_STREAM (never sent), the others finish here.
    goaway_ = true;
  } else if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK) != 0) {
    ping_outstanding_ = false;
  }
  return 0;
}

int H2ClientConnection::OnDataChunk(std::int32_t stream_id, const std::uint8_t* data, std::size_t length) {
  const auto it = calls_.find(stream_id);
  if (it == calls_.end()) return 0;
  const auto call = it->second;
  const Status status = call->deframer.Feed({reinterpret_cast<const char*>(data), length});
  if (!status.ok()) {
    Reset(call, status);
    return 0;
  }
  DeliverMessages(*call);
  return 0;
}

void H2ClientConnection::DeliverMessages(H2ClientCall& call) {
  while (auto message = call.deframer.Next()) {
    if (call.closed || call.local_status) return;
    if (call.on_message) call.on_message(std::move(*message));
  }
}

int H2ClientConnection::OnStreamClose(std::int32_t stream_id, std::uint32_t error_code) {
  const auto it = calls_.find(stream_id);
  if (it == calls_.end()) return 0;
  const auto call = it->second;
  calls_.erase(it);
  if (call->local_status) {
    Complete(call, std::move(*call->local_status), false);
  } else if (call->grpc_status) {
    Complete(call, Status(static_cast<StatusCode>(*call->grpc_status), call->grpc_message), false);
  } else if (error_code == NGHTTP2_REFUSED_STREAM) {
    Complete(call, Status(StatusCode::kUnavailable, "failed to connect to all addresses; stream refused"), true);
  } else if (call->http_status != 0 && call->http_status != 200) {
    Complete(call, Status(FromHttpStatus(call->http_status), "unexpected HTTP status " + std::to_string(call->http_status)),
             false);
  } else {
    Complete(call, Status(error_code == NGHTTP2_NO_ERROR ? StatusCode::kInternal : StatusCode::kUnavailable,
                          std::string("stream closed without a status: ") + nghttp2_http2_strerror(error_code)),
             false);
  }
  return 0;
}

ssize_t H2ClientConnection::ReadData(std::int32_t stream_id, std::uint8_t* buf, std::size_t length,
                                     std::uint32_t* flags) {
  const auto it = calls_.find(stream_id);
  if (it == calls_.end()) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  H2ClientCall& call = *it->second;
  const std::size_t n = std::min(length, call.pending());
  std::memcpy(buf, call.out.data() + call.out_offset, n);
  call.out_offset += n;
  if (call.pending() == 0) {
    call.out.clear();
    call.out_offset = 0;
    if (call.half_closed) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      return static_cast<ssize_t>(n);
    }
  }
  if (n > 0) return static_cast<ssize_t>(n);
  call.deferred = true;
  return NGHTTP2_ERR_DEFERRED;
}

void H2ClientConnection::DoRead() {
  std::array<std::uint8_t, kReadChunk> buffer;
  for (int i = 0; i < kMaxReadsPerEvent && state_ == State::kReady; ++i) {
    const IoResult read = ReadSome(fd_, ssl_, buffer);
    if (read.would_block()) return;
    if (!read.done()) return CloseWithError(read.error);
    const ssize_t used = nghttp2_session_mem_recv(session_, buffer.data(), read.bytes);
    if (used < 0) {
      Flush();
      return CloseWithError(std::string("HTTP/2 error from member: ") + nghttp2_strerror(static_cast<int>(used)));
    }
    if (ssl_ == nullptr && read.bytes < buffer.size()) return;
  }
  if (state_ == State::kReady && ssl_ != nullptr && SSL_pending(ssl_) > 0) {
    const std::weak_ptr<H2ClientConnection> weak = shared_from_this();
    loop_.Post([weak] {
      if (const auto self = weak.lock(); self && self->state_ == State::kReady) self->DoRead();
    });
  }
}

void H2ClientConnection::Flush() {
  dirty_ = false;
  if (state_ != State::kReady) return;
  const auto self = shared_from_this();
  for (;;) {
    const std::uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n < 0) return CloseWithError(std::string("cannot serialize frames: ") + nghttp2_strerror(static_cast<int>(n)));
    if (n == 0) break;
    outbuf_.Append(data, static_cast<std::size_t>(n));
  }
  // The last moment before key requests leave: a proxy whose registration may have expired
  // must not write them (upstream_fence.h). Other calls (watches, keep-alives) are harmless.
  if (!fence::SendAllowed() && CarriesKeyCalls()) return CloseWithError(fence::FencedMessage());
  if (const IoResult written = outbuf_.WriteTo(fd_, ssl_); !written.done()) {
    return CloseWithError("write failed: " + written.error);
  }
  UpdateInterest();
  if (goaway_ && calls_.empty() && outbuf_.pending() == 0) CloseWithError("GOAWAY received");
}

bool H2ClientConnection::CarriesKeyCalls() const {
  const auto is_key_call = [](const std::shared_ptr<H2ClientCall>& call) { return call->path.starts_with("/etcdserverpb.KV/"); };
  for (const auto& [id, call] : calls_) {
    if (is_key_call(call)) return true;
  }
  return std::any_of(waiting_.begin(), waiting_.end(), is_key_call);
}

void H2ClientConnection::UpdateInterest() {
  const std::uint32_t want = outbuf_.pending() > 0 ? (EPOLLIN | EPOLLOUT) : EPOLLIN;
  if (want == interest_) return;
  interest_ = want;
  loop_.ModifyFd(fd_, want);
}

}  // namespace esp
