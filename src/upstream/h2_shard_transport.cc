#include "upstream/h2_shard_transport.h"

#include <netdb.h>
#include <openssl/err.h>
#include <spdlog/spdlog.h>

#include <array>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>

#include "upstream/retry_policy.h"

namespace esp {

struct H2ShardTransport::Member {
  std::string endpoint;
  std::string host;
  sockaddr_storage address{};
  socklen_t address_len = 0;
  // Health, shared by the member's connections on every loop: a failed connection attempt marks
  // the member down (skipped by PickMember, as a channel in TRANSIENT_FAILURE) until a later
  // attempt succeeds; attempts are spaced by a doubling backoff.
  std::atomic<bool> down{false};
  std::atomic<std::int64_t> retry_at_ns{0};
  std::atomic<int> backoff_ms{0};
  // Why the last attempt failed: calls failed fast during the backoff say it too.
  mutable std::mutex error_mu;
  std::string last_error;
};

struct H2ShardTransport::Attempt {
  std::string method;
  CallContextPtr ctx;
  UnaryOptions options;
  UnaryDone done;
  std::string request;
  std::size_t loop = 0;
  std::size_t tries_left = 1;
  std::size_t member = 0;
  std::optional<std::string> response;
  Cancellation::HookId cancel_hook = 0;
};

namespace {

std::int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string SslError(const std::string& what) {
  std::array<char, 256> text{};
  ERR_error_string_n(ERR_get_error(), text.data(), text.size());
  return what + ": " + text.data();
}

SSL_CTX* MakeSslContext(const TlsClientConfig& tls) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  const bool ca_ok = tls.ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx) == 1
                                         : SSL_CTX_load_verify_locations(ctx, tls.ca_file.c_str(), nullptr) == 1;
  if (!ca_ok) {
    SSL_CTX_free(ctx);
    throw ConfigError(SslError("cannot load shard CA " + tls.ca_file));
  }
  if (!tls.cert_file.empty() &&
      (SSL_CTX_use_certificate_chain_file(ctx, tls.cert_file.c_str()) != 1 ||
       SSL_CTX_use_PrivateKey_file(ctx, tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1)) {
    SSL_CTX_free(ctx);
    throw ConfigError(SslError("cannot load shard client certificate " + tls.cert_file));
  }
  static constexpr unsigned char kAlpn[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(ctx, kAlpn, sizeof(kAlpn));
  return ctx;
}

// Resolved once, at start-up: no name lookups on the request path.
void Resolve(H2ShardTransport::Member& member) {
  const auto colon = member.endpoint.rfind(':');
  if (colon == std::string::npos) throw ConfigError("shard endpoint without a port: " + member.endpoint);
  std::string host = member.endpoint.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string port = member.endpoint.substr(colon + 1);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &result) != 0 || result == nullptr) {
    throw ConfigError("cannot resolve shard endpoint " + member.endpoint);
  }
  std::memcpy(&member.address, result->ai_addr, result->ai_addrlen);
  member.address_len = result->ai_addrlen;
  freeaddrinfo(result);
  member.host = host;
}

// The upstream half of a bidirectional stream. Public methods may run on any thread and post to
// the stream's loop; the observer is called on that loop, one call at a time.
class H2UpstreamStream final : public UpstreamStream, public std::enable_shared_from_this<H2UpstreamStream> {
 public:
  H2UpstreamStream(EventLoop& loop, std::shared_ptr<UpstreamStreamObserver> observer)
      : loop_(loop), observer_(std::move(observer)) {}

  void Open(std::shared_ptr<H2ShardTransport> transport, std::size_t loop_index, std::string method,
            Metadata metadata) {
    call_ = std::make_shared<H2ClientCall>();
    call_->path = std::move(method);
    call_->metadata = std::move(metadata);
    const std::weak_ptr<H2UpstreamStream> weak = shared_from_this();
    call_->on_message = [weak](std::string message) {
      if (const auto self = weak.lock(); self && self->observer_) self->observer_->OnMessage(std::move(message));
    };
    // The call keeps the stream (and its observer) alive until it ends.
    call_->on_close = [self = shared_from_this()](Status status, bool) {
      self->ended_.store(true, std::memory_order_release);
      auto observer = std::move(self->observer_);
      if (observer) observer->OnClose(std::move(status));
    };
    loop_.Post([self = shared_from_this(), transport = std::move(transport), loop_index] {
      const std::size_t member = transport->PickMember(SIZE_MAX);
      self->connection_ = transport->ConnectionTo(loop_index, member);
      if (self->connection_) return self->connection_->Start(self->call_);
      auto on_close = std::move(self->call_->on_close);
      on_close(transport->BackoffStatus(member), true);
    });
  }

  bool Write(std::string message) override {
    if (ended_.load(std::memory_order_acquire) || half_closed_.load()) return false;
    loop_.Post([self = shared_from_this(), message = std::move(message)] {
      if (self->connection_) self->connection_->Write(self->call_, message);
    });
    return true;
  }

  void CloseSend() override {
    if (ended_.load(std::memory_order_acquire) || half_closed_.exchange(true)) return;
    loop_.Post([self = shared_from_this()] {
      if (self->connection_) self->connection_->CloseSend(self->call_);
    });
  }

  void Cancel() override {
    loop_.Post([self = shared_from_this()] {
      if (self->connection_) self->connection_->Reset(self->call_, Status(StatusCode::kCancelled, "Cancelled"));
    });
  }

 private:
  EventLoop& loop_;
  std::shared_ptr<UpstreamStreamObserver> observer_;  // loop thread
  std::shared_ptr<H2ClientCall> call_;
  std::shared_ptr<H2ClientConnection> connection_;  // loop thread
  std::atomic<bool> ended_{false};
  std::atomic<bool> half_closed_{false};
};

}  // namespace

H2ShardTransport::H2ShardTransport(const ShardConfig& shard, std::string description, UpstreamTuning tuning,
                                   std::shared_ptr<UpstreamLoops> loops)
    : description_(std::move(description)), tuning_(std::move(tuning)), loops_(std::move(loops)) {
  if (shard.tls) {
    ssl_ctx_ = MakeSslContext(*shard.tls);
    server_name_ = shard.tls->server_name;
  }
  for (const auto& endpoint : shard.endpoints) {
    auto member = std::make_unique<Member>();
    member->endpoint = endpoint;
    Resolve(*member);
    members_.push_back(std::move(member));
  }
  connections_.resize(loops_->size(), std::vector<std::shared_ptr<H2ClientConnection>>(members_.size()));
  retired_.resize(loops_->size());
}

H2ShardTransport::~H2ShardTransport() {
  // Each connection belongs to its loop: hand it back to be dropped there.
  for (std::size_t loop = 0; loop < connections_.size(); ++loop) {
    loops_->loop(loop).Post([row = std::move(connections_[loop]), retired = std::move(retired_[loop])] {});
  }
  if (ssl_ctx_ != nullptr) SSL_CTX_free(ssl_ctx_);
}

const std::string& H2ShardTransport::endpoint(std::size_t member) const { return members_[member]->endpoint; }

bool H2ShardTransport::InBackoff(std::size_t member) const {
  const Member& m = *members_[member];
  return m.down.load(std::memory_order_relaxed) && NowNs() < m.retry_at_ns.load(std::memory_order_relaxed);
}

std::size_t H2ShardTransport::PickMember(std::size_t avoid) {
  const std::size_t n = members_.size();
  const std::size_t start = next_member_.fetch_add(1, std::memory_order_relaxed);
  std::optional<std::size_t> fallback;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t candidate = (start + i) % n;
    if (n > 1 && candidate == avoid) continue;
    if (!members_[candidate]->down.load(std::memory_order_relaxed)) return candidate;
    if (!fallback) fallback = candidate;
  }
  // Every member is down: the first whose backoff has expired gets a reconnect attempt.
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t candidate = (start + i) % n;
    if (!(n > 1 && candidate == avoid) && !InBackoff(candidate)) return candidate;
  }
  return fallback.value_or(start % n);
}

void H2ShardTransport::NoteConnectResult(std::size_t index, bool ok, const std::string& error) {
  Member& member = *members_[index];
  if (ok) {
    member.backoff_ms.store(0, std::memory_order_relaxed);
    if (member.down.exchange(false)) spdlog::info("{}: member {} reachable again", description_, member.endpoint);
    return;
  }
  const int previous = member.backoff_ms.load(std::memory_order_relaxed);
  const int backoff = previous == 0 ? tuning_.min_reconnect_backoff_ms
                                    : std::min(previous * 2, tuning_.max_reconnect_backoff_ms);
  member.backoff_ms.store(backoff, std::memory_order_relaxed);
  member.retry_at_ns.store(NowNs() + std::int64_t{backoff} * 1000000, std::memory_order_relaxed);
  {
    const std::lock_guard lock(member.error_mu);
    member.last_error = error;
  }
  if (!member.down.exchange(true)) spdlog::warn("{}: member {} unreachable: {}", description_, member.endpoint, error);
}

Status H2ShardTransport::BackoffStatus(std::size_t index) const {
  const Member& member = *members_[index];
  std::string message = std::string(kFailedToConnect) + "; member in reconnect backoff";
  const std::lock_guard lock(member.error_mu);
  if (!member.last_error.empty()) message += "; last error: " + member.last_error;
  return Status(StatusCode::kUnavailable, std::move(message));
}

std::shared_ptr<H2ClientConnection> H2ShardTransport::ConnectionTo(std::size_t loop, std::size_t member) {
  auto& slot = connections_[loop][member];
  if (slot && slot->usable()) return slot;
  auto& retired = retired_[loop];
  std::erase_if(retired, [](const auto& connection) { return connection->closed(); });
  if (slot && !slot->closed()) retired.push_back(std::move(slot));
  // Like a gRPC channel in TRANSIENT_FAILURE: calls fail fast until the backoff ends.
  if (InBackoff(member)) return nullptr;
  const Member& m = *members_[member];
  H2ClientOptions options;
  options.authority = m.endpoint;
  options.tls = ssl_ctx_ != nullptr;
  options.keepalive_time = std::chrono::milliseconds(tuning_.keepalive_time_ms);
  options.keepalive_timeout = std::chrono::milliseconds(tuning_.keepalive_timeout_ms);
  options.connect_timeout = std::chrono::milliseconds(tuning_.connect_timeout_ms);
  const std::weak_ptr<H2ShardTransport> weak = shared_from_this();
  slot = std::make_shared<H2ClientConnection>(
      // The certificate must name `server_name` when configured (SNI too), else the host dialled.
      *loops_, loop, m.address, m.address_len, ssl_ctx_, server_name_.empty() ? m.host : server_name_, options,
      [weak, member](bool ok, const std::string& error) {
        if (const auto self = weak.lock()) self->NoteConnectResult(member, ok, error);
      });
  const auto connection = slot;
  connection->Connect();
  return connection;
}

void H2ShardTransport::Unary(const std::string& method, const CallContextPtr& ctx, std::string request,
                             UnaryOptions options, UnaryDone done) {
  auto attempt = std::make_shared<Attempt>();
  attempt->method = method;
  attempt->ctx = ctx;
  attempt->options = options;
  attempt->done = std::move(done);
  attempt->request = std::move(request);
  attempt->loop = loops_->Pick();
  attempt->tries_left = members_.size();  // writes only retry calls that were never sent
  attempt->member = members_.size();      // no member to avoid on the first try
  // Always through the queue: a completion may start a call from inside nghttp2's callbacks.
  loops_->loop(attempt->loop).Post([self = shared_from_this(), attempt] { self->StartAttempt(attempt); });
}

void H2ShardTransport::StartAttempt(const std::shared_ptr<Attempt>& attempt) {
  attempt->member = PickMember(attempt->member);
  attempt->tries_left--;
  attempt->response.reset();
  const auto connection = ConnectionTo(attempt->loop, attempt->member);
  auto call = std::make_shared<H2ClientCall>();
  call->path = attempt->method;
  call->metadata = Translated(attempt->ctx->metadata());
  call->deadline = attempt->ctx->deadline();
  AppendGrpcMessage(call->out, attempt->request);
  call->half_closed = true;
  call->on_message = [attempt](std::string message) {
    if (!attempt->response) attempt->response = std::move(message);
  };
  call->on_close = [self = shared_from_this(), attempt](Status status, bool) {
    attempt->ctx->cancellation().Remove(attempt->cancel_hook);
    const std::string& endpoint = self->members_[attempt->member]->endpoint;
    // A call refused without reaching etcd reads as gRPC's pick failure for the retry rules.
    if (ShouldRetry(status.code(), status.message(), attempt->options, attempt->tries_left > 0,
                    attempt->ctx->cancellation().cancelled())) {
      spdlog::debug("{}: {} failed at {} ({}); retrying on another member", self->description_, attempt->method,
                    endpoint, status.message());
      if (self->tuning_.on_retry) self->tuning_.on_retry(attempt->method);
      self->loops_->loop(attempt->loop).Post([self, attempt] { self->StartAttempt(attempt); });
      return;
    }
    if (status.ok() && !attempt->response) status = Status(StatusCode::kInternal, "no response message from member");
    Status result = DescribeFailure(status.code(), status.message(), self->description_, endpoint);
    std::string bytes = result.ok() ? std::move(*attempt->response) : std::string();
    auto done = std::move(attempt->done);
    done(std::move(result), std::move(bytes));
  };
  if (!connection) {
    auto on_close = std::move(call->on_close);
    return on_close(BackoffStatus(attempt->member), true);
  }
  const std::weak_ptr<H2ClientCall> weak_call = call;
  const std::weak_ptr<H2ClientConnection> weak_connection = connection;
  EventLoop& loop = loops_->loop(attempt->loop);
  attempt->cancel_hook = attempt->ctx->cancellation().Add([&loop, weak_call, weak_connection] {
    loop.Post([weak_call, weak_connection] {
      const auto c = weak_call.lock();
      const auto conn = weak_connection.lock();
      if (c && conn) conn->Reset(c, Status(StatusCode::kCancelled, "Cancelled"));
    });
  });
  connection->Start(call);
}

std::shared_ptr<UpstreamStream> H2ShardTransport::OpenStream(const std::string& method, const Metadata& metadata,
                                                             std::shared_ptr<UpstreamStreamObserver> observer) {
  const std::size_t loop = loops_->Pick();
  auto stream = std::make_shared<H2UpstreamStream>(loops_->loop(loop), std::move(observer));
  stream->Open(shared_from_this(), loop, method, Translated(metadata));
  return stream;
}

// etcd reads the auth token from the `token` key (clientv3's TokenFieldNameGRPC); a client's
// composite token becomes this shard's own (src/auth/token.h).
Metadata H2ShardTransport::Translated(const Metadata& metadata) const {
  Metadata out = metadata;
  if (!tuning_.translate_token) return out;
  for (auto& [key, value] : out) {
    if (key == "token") value = tuning_.translate_token(value);
  }
  return out;
}

}  // namespace esp
