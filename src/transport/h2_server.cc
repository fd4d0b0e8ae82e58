#include "transport/h2_server.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <array>
#include <future>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "transport/first_bytes.h"

namespace esp {

// One event loop and the connections it owns. Everything but the constructor, Start/Stop and
// Post runs on the loop's thread.
class H2Server::Loop final : public H2ConnectionOwner {
 public:
  // Our own loop (started and stopped with the server) or a shared one (`loop`, already running).
  Loop(H2Server& server, std::shared_ptr<EventLoop> loop)
      : server_(server), shared_(loop != nullptr), loop_(shared_ ? std::move(loop) : std::make_shared<EventLoop>()) {
    if (!shared_) loop_->SetEndOfTurn([this] { FlushDirty(); });
  }
  ~Loop() override {
    if (!shared_) {
      loop_->Stop();
      connections_.clear();
      graveyard_.clear();
      return;
    }
    // A shared loop runs on: our connections and hook leave on its thread.
    RunOnLoop([this] {
      if (hook_ != 0) loop_->RemoveEndOfTurn(hook_);
      hook_ = 0;
      connections_.clear();
      graveyard_.clear();
    });
  }

  bool shared() const { return shared_; }
  // Starts serving on the loop: our own thread, or our flush hook on the shared one.
  void Start() {
    if (!shared_) return loop_->Start();
    RunOnLoop([this] { hook_ = loop_->AddEndOfTurn([this] { FlushDirty(); }); });
  }
  // Runs `task` on the loop's thread and waits for it (never called from that thread).
  void RunOnLoop(const std::function<void()>& task) {
    if (loop_->InLoopThread()) return task();
    std::promise<void> done;
    loop_->Post([&] {
      task();
      done.set_value();
    });
    done.get_future().wait();
  }

  EventLoop& loop() { return *loop_; }

  void Adopt(int fd, SSL* ssl);

  // FirstBytes has decided: the connection it read from goes on as HTTP/2 or HTTP/1.1, with the
  // bytes read so far. The sniffer leaves the table without counting as a closed connection.
  void HandOver(ClientConnection* sniffer, bool h2, int fd, SSL* ssl, std::string first) {
    const auto it = connections_.find(sniffer);
    if (it == connections_.end()) return;
    graveyard_.push_back(std::move(it->second));
    connections_.erase(it);
    if (!h2) {
      Keep(std::make_unique<Http1Connection>(loop_, fd, ssl, std::move(first), server_.options_.http_handler,
                                             server_.options_.http1_limits, *this));
      return;
    }
    auto connection = std::make_unique<H2Connection>(loop_, fd, ssl, server_.router_, server_.options_.limits, *this);
    connection->SetHttpHandler(&server_.options_.http_handler, server_.options_.http1_limits.max_body_bytes);
    H2Connection* const raw = connection.get();
    Keep(std::move(connection));
    if (!raw->closed()) raw->Receive(reinterpret_cast<const std::uint8_t*>(first.data()), first.size());
  }

  void DrainAll() {
    draining_ = true;
    for (auto& [raw, connection] : connections_) connection->Drain();
  }

  void CloseAll() {
    std::vector<ClientConnection*> all;
    for (auto& [raw, connection] : connections_) all.push_back(raw);
    for (ClientConnection* c : all) c->Close();
  }

  void OnDirty(ClientConnection* connection) override { dirty_.push_back(connection); }

  void OnClosed(ClientConnection* connection) override {
    const auto it = connections_.find(connection);
    if (it == connections_.end()) return;
    // Destroyed after the turn: the connection may be deep in its own call stack right now.
    graveyard_.push_back(std::move(it->second));
    connections_.erase(it);
    const std::lock_guard lock(server_.mu_);
    --server_.open_connections_;
    server_.drained_.notify_all();
  }

 private:
  void Keep(std::unique_ptr<ClientConnection> connection) {
    ClientConnection* const raw = connection.get();
    connections_.emplace(raw, std::move(connection));
    if (!raw->Start()) {
      raw->Close();
    } else if (draining_) {
      raw->Drain();
    }
  }

  // The write coalescing point: each connection that produced frames this turn writes them once.
  void FlushDirty() {
    for (int round = 0; round < 4 && !dirty_.empty(); ++round) {
      flushing_.swap(dirty_);  // both keep their capacity: no allocation per turn
      for (ClientConnection* c : flushing_) {
        c->ClearDirty();
        c->Flush();
      }
      flushing_.clear();
    }
    // Still more (frames queued while flushing): come back at once instead of sleeping in epoll.
    if (!dirty_.empty()) loop_->Post([] {});
    graveyard_.clear();
  }

  H2Server& server_;
  const bool shared_;
  std::shared_ptr<EventLoop> loop_;
  EventLoop::HookId hook_ = 0;  // shared loop: our FlushDirty
  std::unordered_map<ClientConnection*, std::unique_ptr<ClientConnection>> connections_;
  std::vector<ClientConnection*> dirty_;
  std::vector<ClientConnection*> flushing_;
  std::vector<std::unique_ptr<ClientConnection>> graveyard_;
  bool draining_ = false;
};


// A new connection until its first bytes say what it speaks, as etcd's cmux does on its client
// port: the HTTP/2 client preface (gRPC, or HTTP/2 with prior knowledge) or anything else
// (HTTP/1.1). Over TLS, ALPN decides when the client offered it. It reads, never writes: both
// protocols start with the client.
class H2Server::FirstBytes final : public ClientConnection {
 public:
  // `silence`: how long a client may send nothing at all before it is closed (what the HTTP/2
  // connection's keepalive enforcement, interval + timeout, would allow it); zero: forever.
  FirstBytes(Loop& owner, int fd, SSL* ssl, std::chrono::steady_clock::duration silence)
      : owner_(owner), fd_(fd), ssl_(ssl), silence_(silence) {}
  ~FirstBytes() override { Close(); }

  bool Start() override {
    owner_.loop().AddFd(fd_, EPOLLIN, [this](std::uint32_t) { OnReadable(); });
    if (silence_ > std::chrono::steady_clock::duration::zero()) {
      timer_ = owner_.loop().AddTimer(std::chrono::steady_clock::now() + silence_, [this] {
        timer_ = 0;
        Close();
      });
    }
    return true;
  }
  void Flush() override {}
  void Drain() override { Close(); }
  void ClearDirty() override {}
  bool closed() const override { return closed_; }
  void Close() override {
    if (closed_) return;
    closed_ = true;
    CancelTimer();
    if (fd_ >= 0) {
      owner_.loop().RemoveFd(fd_);
      if (ssl_ != nullptr) SSL_free(ssl_);
      close(fd_);
    }
    fd_ = -1;
    ssl_ = nullptr;
    owner_.OnClosed(this);
  }

 private:
  void OnReadable() {
    if (closed_) return;
    std::array<std::uint8_t, 4096> buffer;
    const IoResult read = ReadSome(fd_, ssl_, buffer);
    if (read.would_block()) return;
    if (!read.done() || read.bytes == 0) {
      if (ssl_ != nullptr && !SSL_is_init_finished(ssl_)) {
        spdlog::error("h2: TLS handshake failed: {}", ERR_error_string(ERR_get_error(), nullptr));
      }
      return Close();
    }
    first_.append(reinterpret_cast<const char*>(buffer.data()), read.bytes);
    if (const auto h2 = Decide()) HandOver(*h2);
  }

  std::optional<bool> Decide() const {
    std::string_view chosen;
    if (ssl_ != nullptr) {
      const unsigned char* alpn = nullptr;
      unsigned int length = 0;
      SSL_get0_alpn_selected(ssl_, &alpn, &length);
      chosen = std::string_view(reinterpret_cast<const char*>(alpn), length);
    }
    return SpeaksHttp2(first_, chosen);
  }

  void CancelTimer() {
    if (timer_ != 0) owner_.loop().CancelTimer(std::exchange(timer_, 0));
  }

  void HandOver(bool h2) {
    CancelTimer();
    owner_.loop().RemoveFd(fd_);
    const int fd = std::exchange(fd_, -1);
    SSL* const ssl = std::exchange(ssl_, nullptr);
    closed_ = true;
    owner_.HandOver(this, h2, fd, ssl, std::move(first_));
  }

  Loop& owner_;
  int fd_;
  SSL* ssl_;
  const std::chrono::steady_clock::duration silence_;
  EventLoop::TimerId timer_ = 0;
  bool closed_ = false;
  std::string first_;
};

void H2Server::Loop::Adopt(int fd, SSL* ssl) {
  {
    const std::lock_guard lock(server_.mu_);
    ++server_.open_connections_;
  }
  // With the HTTP face on, the first bytes (or ALPN) decide what the connection speaks.
  if (server_.options_.http_handler) {
    const auto& limits = server_.options_.limits;
    const bool enforced = limits.keepalive_interval > std::chrono::steady_clock::duration::zero() &&
                          limits.keepalive_timeout > std::chrono::steady_clock::duration::zero();
    return Keep(std::make_unique<FirstBytes>(*this, fd, ssl,
                                             enforced ? limits.keepalive_interval + limits.keepalive_timeout
                                                      : std::chrono::steady_clock::duration::zero()));
  }
  Keep(std::make_unique<H2Connection>(loop_, fd, ssl, server_.router_, server_.options_.limits, *this));
}

namespace {

// Finds `name` in the client's ALPN list (length-prefixed names).
bool OfferAlpn(std::string_view name, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
               unsigned int inlen) {
  for (unsigned int i = 0; i < inlen;) {
    const unsigned int len = in[i];
    if (i + 1 + len > inlen) break;
    if (len == name.size() && std::memcmp(in + i + 1, name.data(), len) == 0) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(len);
      return true;
    }
    i += 1 + len;
  }
  return false;
}

// gRPC speaks only "h2"; with the HTTP face (`http` non-null) "http/1.1" is served too, h2 first.
int SelectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
               void* http) {
  if (OfferAlpn("h2", out, outlen, in, inlen)) return SSL_TLSEXT_ERR_OK;
  if (http != nullptr && OfferAlpn("http/1.1", out, outlen, in, inlen)) return SSL_TLSEXT_ERR_OK;
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

std::string OpenSslError() {
  char buf[256];
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  return buf;
}

SSL_CTX* MakeSslContext(const H2TlsFiles& tls, bool http) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  if (SSL_CTX_use_certificate_chain_file(ctx, tls.cert_file.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    spdlog::error("TLS: cannot load {} / {}: {}", tls.cert_file, tls.key_file, OpenSslError());
    SSL_CTX_free(ctx);
    return nullptr;
  }
  if (!tls.trusted_ca_file.empty() && SSL_CTX_load_verify_locations(ctx, tls.trusted_ca_file.c_str(), nullptr) != 1) {
    spdlog::error("TLS: cannot load {}: {}", tls.trusted_ca_file, OpenSslError());
    SSL_CTX_free(ctx);
    return nullptr;
  }
  if (tls.client_cert_auth) SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  // Any non-null argument says "HTTP/1.1 too" (the callback only tests it).
  SSL_CTX_set_alpn_select_cb(ctx, SelectAlpn, http ? static_cast<void*>(ctx) : nullptr);
  return ctx;
}

}  // namespace

H2Server::H2Server(const Router& router, H2ServerOptions options) : router_(router), options_(std::move(options)) {
  if (!options_.shared_loops.empty()) {
    for (const auto& loop : options_.shared_loops) loops_.push_back(std::make_unique<Loop>(*this, loop));
    return;
  }
  const int n = options_.loops > 0 ? options_.loops : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 0; i < n; ++i) loops_.push_back(std::make_unique<Loop>(*this, nullptr));
}

H2Server::~H2Server() {
  Shutdown(std::chrono::milliseconds(0));
  loops_.clear();
  if (ssl_ctx_ != nullptr) SSL_CTX_free(ssl_ctx_);
}

bool H2Server::Listen() {
  const std::string& address = options_.listen_address;
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) {
    spdlog::error("listen address {} has no port", address);
    return false;
  }
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* result = nullptr;
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &result) != 0 || result == nullptr) {
    spdlog::error("cannot resolve listen address {}", address);
    return false;
  }
  const std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> owned(result, freeaddrinfo);
  const int fd = socket(result->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, result->ai_addr, result->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
    spdlog::error("cannot listen on {}: {}", address, std::strerror(errno));
    if (fd >= 0) close(fd);
    return false;
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  listen_fd_ = fd;
  return true;
}

bool H2Server::Start() {
  if (options_.tls.enabled() && (ssl_ctx_ = MakeSslContext(options_.tls, static_cast<bool>(options_.http_handler))) == nullptr) return false;
  if (!Listen()) return false;
  for (auto& loop : loops_) loop->Start();
  running_ = true;
  // One acceptor (on the first loop) deals connections round-robin: cheap next to the requests
  // they carry, and the port stays exclusively ours (no SO_REUSEPORT sharing with strangers).
  std::promise<void> added;
  loops_.front()->loop().Post([this, &added] {
    loops_.front()->loop().AddFd(listen_fd_, EPOLLIN, [this](std::uint32_t) { OnAcceptable(); });
    added.set_value();
  });
  added.get_future().wait();
  return true;
}

void H2Server::OnAcceptable() {
  for (;;) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;  // this connection only
      if (errno != EAGAIN && errno != EWOULDBLOCK) PauseAccepting(errno);
      return;
    }
    if (failures_in_run_ != 0) ReportAcceptingAgain();
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    SSL* ssl = nullptr;
    if (ssl_ctx_ != nullptr) {
      ssl = SSL_new(ssl_ctx_);
      SSL_set_fd(ssl, fd);
      SSL_set_accept_state(ssl);
    }
    Loop* const target = loops_[next_loop_++ % loops_.size()].get();
    target->loop().Post([target, fd, ssl] { target->Adopt(fd, ssl); });
  }
}

namespace {

// How long accepting pauses after a failure, and how often a run of failures is reported.
constexpr std::chrono::milliseconds kAcceptPause(250);
constexpr std::chrono::seconds kAcceptReportInterval(10);

std::string OpenFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return "unknown";
  return std::to_string(limit.rlim_cur);
}

}  // namespace

void H2Server::PauseAccepting(int error) {
  EventLoop& loop = loops_.front()->loop();
  loop.ModifyFd(listen_fd_, 0);
  // epoll reports errors even without interest: a failure while paused must not stack timers.
  if (resume_timer_ != 0) loop.CancelTimer(resume_timer_);
  resume_timer_ = loop.AddTimer(std::chrono::steady_clock::now() + kAcceptPause, [this] { ResumeAccepting(); });
  ++unreported_failures_;
  ++failures_in_run_;
  // At most one line per interval, however long the limit holds and however often it flaps.
  const auto now = std::chrono::steady_clock::now();
  if (now - last_failure_report_ < kAcceptReportInterval) return;
  spdlog::warn("accept: {} (open-file limit {}): new connections wait in the listen backlog, accepting is retried "
               "every {} ms; {} failed attempt(s) since the last report",
               std::strerror(error), OpenFileLimit(), kAcceptPause.count(), unreported_failures_);
  unreported_failures_ = 0;
  last_failure_report_ = now;
}

void H2Server::ReportAcceptingAgain() {
  const auto now = std::chrono::steady_clock::now();
  if (now - last_recovery_report_ >= kAcceptReportInterval) {
    spdlog::info("accept: accepting connections again after {} failed attempt(s)", failures_in_run_);
    last_recovery_report_ = now;
  }
  failures_in_run_ = 0;
}

void H2Server::ResumeAccepting() {
  resume_timer_ = 0;
  if (listen_fd_ < 0) return;
  loops_.front()->loop().ModifyFd(listen_fd_, EPOLLIN);
}

void H2Server::Shutdown(std::chrono::milliseconds grace) {
  if (!running_) return;
  running_ = false;
  std::promise<void> closed;
  loops_.front()->loop().Post([this, &closed] {
    if (resume_timer_ != 0) loops_.front()->loop().CancelTimer(resume_timer_);
    resume_timer_ = 0;
    loops_.front()->loop().RemoveFd(listen_fd_);
    close(listen_fd_);
    listen_fd_ = -1;
    closed.set_value();
  });
  closed.get_future().wait();
  for (auto& loop : loops_) loop->loop().Post([l = loop.get()] { l->DrainAll(); });
  {
    std::unique_lock lock(mu_);
    drained_.wait_for(lock, grace, [this] { return open_connections_ == 0; });
  }
  for (auto& loop : loops_) {
    if (loop->shared()) {
      // Closed connections are dropped at the end of the loop's turn (graveyard).
      loop->RunOnLoop([l = loop.get()] { l->CloseAll(); });
      continue;
    }
    loop->loop().Post([l = loop.get()] { l->CloseAll(); });
    loop->loop().Stop();
  }
}

}  // namespace esp
