#include "upstream/h2_shard_transport.h"

#include <netdb.h>
#include <openssl/err.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>

#include "auth/cert_identity.h"
#include "transport/auth_metadata.h"
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

struct H2ShardTransport::IdentityRow {
  std::shared_ptr<const auth::IssuedIdentity> issued;
  std::shared_ptr<SSL_CTX> ssl_ctx;  // the shard's trust settings plus the identity's certificate
  std::vector<std::shared_ptr<H2ClientConnection>> connections;  // per member
  std::chrono::steady_clock::time_point last_used;
  bool failure_logged = false;  // one log line per run of failed connection attempts
  bool idle() const {
    return std::ranges::all_of(connections, [](const auto& c) { return !c || c->idle(); });
  }
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
  std::string identity;  // client-certificate CN to present on the shard, or ""
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

// The shard's trust settings (the base context's CA store, shared) with `issued` as the client
// certificate: what a connection carrying that identity presents.
std::shared_ptr<SSL_CTX> MakeIdentityContext(SSL_CTX* base, const auth::IssuedIdentity& issued) {
  std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  SSL_CTX_set1_cert_store(ctx.get(), SSL_CTX_get_cert_store(base));
  static constexpr unsigned char kAlpn[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(ctx.get(), kAlpn, sizeof(kAlpn));
  if (SSL_CTX_use_certificate(ctx.get(), issued.cert.get()) != 1 ||
      SSL_CTX_use_PrivateKey(ctx.get(), issued.key.get()) != 1) {
    throw std::runtime_error(SslError("cannot use the minted certificate for \"" + issued.cn + "\""));
  }
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
            Metadata metadata, std::string identity) {
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
    loop_.Post([self = shared_from_this(), transport = std::move(transport), loop_index,
                identity = std::move(identity)] {
      const std::size_t member = transport->PickMember(SIZE_MAX);
      self->connection_ = transport->ConnectionTo(loop_index, member, identity);
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
    : description_(std::move(description)),
      tuning_(std::move(tuning)),
      loops_(std::move(loops)),
      issuer_(tuning_.identity_issuer) {
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
  identity_rows_.resize(loops_->size());
  prune_timers_.resize(loops_->size(), 0);
  if (issuer_ && ssl_ctx_ == nullptr) {
    throw ConfigError(description_ + ": client-certificate identities need TLS towards the shard ('tls')");
  }
}

H2ShardTransport::~H2ShardTransport() {
  // Each connection belongs to its loop: hand it back to be dropped there.
  for (std::size_t loop = 0; loop < connections_.size(); ++loop) {
    loops_->loop(loop).Post([row = std::move(connections_[loop]), retired = std::move(retired_[loop]),
                             identities = std::move(identity_rows_[loop])] {});
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

std::shared_ptr<H2ClientConnection> H2ShardTransport::ConnectionTo(std::size_t loop, std::size_t member,
                                                                    const std::string& identity) {
  if (identity.empty()) {
    // The common case first: an open connection, without building the callback below.
    auto& slot = connections_[loop][member];
    if (slot && slot->usable()) return slot;
    const std::weak_ptr<H2ShardTransport> weak = shared_from_this();
    return Connect(slot, loop, member, ssl_ctx_, [weak, member](bool ok, const std::string& error) {
      if (const auto self = weak.lock()) self->NoteConnectResult(member, ok, error);
    });
  }
  const std::shared_ptr<IdentityRow> row = IdentityRowFor(loop, identity);
  if (row == nullptr) return nullptr;
  row->last_used = std::chrono::steady_clock::now();
  auto& slot = row->connections[member];
  // New connections get a fresh certificate; open ones keep theirs (checked at handshake only).
  // A failed renewal keeps the current one, still valid until its end.
  if (!(slot && slot->usable()) && Clock::now() >= row->issued->renew_after) IssueInto(*row, identity);
  // A shard refusing this identity's certificate (say, not trusting the identity CA) is no member
  // outage: the result stays out of the member's health and is logged here instead.
  const std::weak_ptr<H2ShardTransport> weak = shared_from_this();
  const std::weak_ptr<IdentityRow> weak_row = row;
  return Connect(slot, loop, member, row->ssl_ctx.get(),
                 [weak, weak_row, member, identity](bool ok, const std::string& error) {
                   const auto self = weak.lock();
                   const auto row = weak_row.lock();
                   if (!self || !row) return;
                   if (!ok && !row->failure_logged) {
                     spdlog::warn("{}: member {}: connection as client-certificate user \"{}\" failed: {}",
                                  self->description_, self->members_[member]->endpoint, identity, error);
                   }
                   row->failure_logged = !ok;
                 });
}

std::shared_ptr<H2ClientConnection> H2ShardTransport::Connect(
    std::shared_ptr<H2ClientConnection>& slot, std::size_t loop, std::size_t member, SSL_CTX* ssl_ctx,
    std::function<void(bool ok, const std::string& error)> on_connected) {
  if (slot && slot->usable()) return slot;
  auto& retired = retired_[loop];
  std::erase_if(retired, [](const auto& connection) { return connection->closed(); });
  if (slot && !slot->closed()) retired.push_back(std::move(slot));
  // Like a gRPC channel in TRANSIENT_FAILURE: calls fail fast until the backoff ends.
  if (InBackoff(member)) return nullptr;
  const Member& m = *members_[member];
  H2ClientOptions options;
  options.authority = m.endpoint;
  options.tls = ssl_ctx != nullptr;
  options.keepalive_time = std::chrono::milliseconds(tuning_.keepalive_time_ms);
  options.keepalive_timeout = std::chrono::milliseconds(tuning_.keepalive_timeout_ms);
  options.connect_timeout = std::chrono::milliseconds(tuning_.connect_timeout_ms);
  slot = std::make_shared<H2ClientConnection>(
      // The certificate must name `server_name` when configured (SNI too), else the host dialled.
      *loops_, loop, m.address, m.address_len, ssl_ctx, server_name_.empty() ? m.host : server_name_, options,
      std::move(on_connected));
  const auto connection = slot;
  connection->Connect();
  return connection;
}

bool H2ShardTransport::IssueInto(IdentityRow& row, const std::string& identity) {
  try {
    auto issued = issuer_->For(identity);
    row.ssl_ctx = MakeIdentityContext(ssl_ctx_, *issued);
    row.issued = std::move(issued);
    return true;
  } catch (const std::exception& e) {
    spdlog::error("{}: {}", description_, e.what());
    return false;
  }
}

std::shared_ptr<H2ShardTransport::IdentityRow> H2ShardTransport::IdentityRowFor(std::size_t loop,
                                                                                const std::string& identity) {
  auto& rows = identity_rows_[loop];
  if (const auto found = rows.find(identity); found != rows.end()) return found->second;
  PruneIdentities(loop, true);
  auto row = std::make_shared<IdentityRow>();
  if (!IssueInto(*row, identity)) return nullptr;
  row->connections.resize(members_.size());
  row->last_used = std::chrono::steady_clock::now();
  identity_rows_total_.fetch_add(1);
  rows.emplace(identity, row);
  ArmPruneTimer(loop);
  return row;
}

void H2ShardTransport::ArmPruneTimer(std::size_t loop) {
  if (prune_timers_[loop] != 0 || identity_rows_[loop].empty()) return;
  const std::weak_ptr<H2ShardTransport> weak = shared_from_this();
  // Half the idle time: an idle identity is closed between 1 and 1.5 idle times after its last call.
  prune_timers_[loop] = loops_->loop(loop).AddTimer(std::chrono::steady_clock::now() + tuning_.identity_idle / 2,
                                                    [weak, loop] {
                                                      const auto self = weak.lock();
                                                      if (!self) return;
                                                      self->prune_timers_[loop] = 0;
                                                      self->PruneIdentities(loop, false);
                                                      self->ArmPruneTimer(loop);
                                                    });
}

// Bounds what many users can cost: identities idle for `identity_idle` lose their connections,
// and with `make_room` the least recently used idle ones go until a new one fits. Identities with
// calls in flight stay (those calls bound them); rows hold no call, so dropping one loses nothing.
void H2ShardTransport::PruneIdentities(std::size_t loop, bool make_room) {
  auto& rows = identity_rows_[loop];
  const auto now = std::chrono::steady_clock::now();
  const auto erased = std::erase_if(rows, [&](const auto& entry) {
    return entry.second->idle() && now - entry.second->last_used >= tuning_.identity_idle;
  });
  identity_rows_total_.fetch_sub(erased);
  while (make_room && rows.size() >= std::max<std::size_t>(tuning_.max_identities_per_loop, 1)) {
    auto oldest = rows.end();
    for (auto it = rows.begin(); it != rows.end(); ++it) {
      if (it->second->idle() && (oldest == rows.end() || it->second->last_used < oldest->second->last_used)) oldest = it;
    }
    if (oldest == rows.end()) return;
    rows.erase(oldest);
    identity_rows_total_.fetch_sub(1);
  }
}

std::string H2ShardTransport::IdentityOf(const Metadata& metadata) const {
  if (!issuer_) return {};
  std::string identity;
  for (const auto& [key, value] : metadata) {
    if (IsAuthTokenKey(key)) return {};  // a token wins over the certificate, as on etcd
    if (key == kClientCertCnKey) identity = value;
  }
  return identity;
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
  attempt->identity = IdentityOf(ctx->metadata());
  // Always through the queue: a completion may start a call from inside nghttp2's callbacks.
  loops_->loop(attempt->loop).Post([self = shared_from_this(), attempt] { self->StartAttempt(attempt); });
}

void H2ShardTransport::StartAttempt(const std::shared_ptr<Attempt>& attempt) {
  attempt->member = PickMember(attempt->member);
  attempt->tries_left--;
  attempt->response.reset();
  const auto connection = ConnectionTo(attempt->loop, attempt->member, attempt->identity);
  auto call = std::make_shared<H2ClientCall>();
  call->path = attempt->method;
  call->metadata = Translated(attempt->ctx->metadata());
  call->deadline = attempt->ctx->deadline();
  AppendGrpcMessage(call->out, attempt->request);
  call->half_closed = true;
  // A plain pointer fits std::function's inline storage (no allocation per call); on_close,
  // which always runs after the last on_message, holds the attempt alive.
  call->on_message = [raw = attempt.get()](std::string message) {
    if (!raw->response) raw->response = std::move(message);
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
  stream->Open(shared_from_this(), loop, method, Translated(metadata), IdentityOf(metadata));
  return stream;
}

// etcd reads the auth token from the `token` key (clientv3's TokenFieldNameGRPC) or from
// `authorization` (transport/auth_metadata.h); a client's composite token under either becomes
// this shard's own (src/auth/token.h).
Metadata H2ShardTransport::Translated(const Metadata& metadata) const {
  Metadata out = metadata;
  // The identity was chosen from it (IdentityOf); the shard reads it from the certificate.
  std::erase_if(out, [](const auto& entry) { return entry.first == kClientCertCnKey; });
  if (!tuning_.translate_token) return out;
  for (auto& [key, value] : out) {
    if (IsAuthTokenKey(key)) value = tuning_.translate_token(value);
  }
  return out;
}

}  // namespace esp
