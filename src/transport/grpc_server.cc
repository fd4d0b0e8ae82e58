#include "transport/grpc_server.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>

#include "transport/grpc_bytes.h"
#include "transport/peer_identity.h"

namespace esp {
namespace {

grpc::Status ToGrpc(const Status& status) {
  return {static_cast<grpc::StatusCode>(status.code()), status.message()};
}

bool IsForwardedHeader(std::string_view key) {
  // Transport headers belong to the hop; everything else (token, hasleader, client-api-version,
  // custom headers) is the client's and goes on to the shards.
  // The client-certificate identity key is set here from the TLS session, never by a client.
  return !(key.empty() || key.front() == ':' || key.starts_with("grpc-") || key == "user-agent" ||
           key == "content-type" || key == "te" || key == "authority" || key == "host" ||
           key == kClientCertCnKey);
}

// gRPC verified the certificate (the server asks for one only with --client-cert-auth, and then
// requires and verifies it); its CN is the user of calls without a token, as in etcd.
std::string VerifiedClientCn(const grpc::GenericCallbackServerContext& ctx) {
  const auto auth = ctx.auth_context();
  if (!auth || !auth->IsPeerAuthenticated()) return {};
  const auto names = auth->FindPropertyValues("x509_common_name");
  return names.empty() ? std::string() : std::string(names.back().data(), names.back().size());
}

CallContextPtr MakeContext(const grpc::GenericCallbackServerContext& ctx) {
  Metadata metadata;
  for (const auto& [key, value] : ctx.client_metadata()) {
    const std::string_view k(key.data(), key.size());
    if (IsForwardedHeader(k)) metadata.emplace_back(std::string(k), std::string(value.data(), value.size()));
  }
  if (std::string cn = VerifiedClientCn(ctx); !cn.empty()) metadata.emplace_back(kClientCertCnKey, std::move(cn));
  std::optional<Clock::time_point> deadline;
  const auto d = ctx.deadline();
  // gRPC reports "no deadline" as a point centuries away.
  if (d < Clock::now() + std::chrono::hours(24 * 365 * 10)) deadline = d;
  return std::make_shared<CallContext>(deadline, std::move(metadata));
}

// A reactor that owns itself from creation until gRPC calls OnDone.
template <class Derived>
class SelfOwned : public grpc::ServerGenericBidiReactor {
 public:
  template <class... Args>
  static Derived* Create(Args&&... args) {
    auto owned = std::make_unique<Derived>(std::forward<Args>(args)...);
    Derived* raw = owned.get();
    raw->self_ = std::move(owned);
    raw->Begin();
    return raw;
  }

 protected:
  void ReleaseSelf() {
    const auto self = std::move(self_);  // destroyed when this function returns
  }

 private:
  std::unique_ptr<Derived> self_;
};

class UnimplementedReactor final : public SelfOwned<UnimplementedReactor> {
 public:
  explicit UnimplementedReactor(std::string method) : method_(std::move(method)) {}
  void Begin() {
    Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "unknown method " + method_));
  }
  void OnDone() override { ReleaseSelf(); }

 private:
  std::string method_;
};

class UnaryReactor final : public SelfOwned<UnaryReactor> {
 public:
  UnaryReactor(grpc::GenericCallbackServerContext* ctx, const UnaryHandler& handler)
      : context_(MakeContext(*ctx)), handler_(handler) {}

  void Begin() { StartRead(&request_); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INTERNAL, "request message missing"));
      return;
    }
    handler_(context_, ByteBufferToString(request_), [this](Status status, std::string response) {
      if (!status.ok()) {
        Finish(ToGrpc(status));
        return;
      }
      response_ = StringToByteBuffer(response);
      StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
    });
  }

  void OnCancel() override { context_->cancellation().Cancel(); }
  void OnDone() override { ReleaseSelf(); }

 private:
  CallContextPtr context_;
  const UnaryHandler& handler_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
};

class StreamReactor;

// The service's handle on a stream. It outlives the reactor when a service keeps it, so it
// holds the reactor by a pointer that OnDone clears.
class GrpcStreamSink final : public StreamSink {
 public:
  explicit GrpcStreamSink(StreamReactor* reactor) : reactor_(reactor) {}
  bool Write(std::string message) override;
  void Finish(Status status) override;
  std::size_t QueuedBytes() const override { return queued_bytes_.load(std::memory_order_relaxed); }

  // Called by the reactor.
  void OnWriteDone(bool ok);
  void Detach();

 private:
  void StartNextWriteLocked(std::unique_lock<std::mutex>& lock);
  void ClearQueueLocked() {
    for (const auto& message : queue_) queued_bytes_ -= message.size();
    queue_.clear();
  }

  std::mutex mu_;
  StreamReactor* reactor_;
  std::deque<std::string> queue_;
  std::atomic<std::size_t> queued_bytes_{0};  // queue_ plus the write in flight
  grpc::ByteBuffer in_flight_buffer_;
  std::size_t in_flight_bytes_ = 0;
  bool write_in_flight_ = false;
  bool finished_ = false;  // Finish() was called by the service
  bool finish_sent_ = false;
  std::optional<Status> pending_finish_;
};

class StreamReactor final : public SelfOwned<StreamReactor> {
 public:
  StreamReactor(grpc::GenericCallbackServerContext* ctx, const StreamFactory& factory)
      : context_(MakeContext(*ctx)), factory_(factory) {}

  void Begin() {
    sink_ = std::make_shared<GrpcStreamSink>(this);
    handler_ = factory_(context_, sink_);
    StartRead(&read_buffer_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      CloseHandler();
      return;
    }
    handler_->OnMessage(ByteBufferToString(read_buffer_));
    StartRead(&read_buffer_);
  }

  void OnWriteDone(bool ok) override { sink_->OnWriteDone(ok); }
  void OnCancel() override { context_->cancellation().Cancel(); }

  void OnDone() override {
    sink_->Detach();
    CloseHandler();
    ReleaseSelf();
  }

 private:
  friend class GrpcStreamSink;

  void CloseHandler() {
    if (closed_) return;
    closed_ = true;
    handler_->OnClose();
  }

  CallContextPtr context_;
  const StreamFactory& factory_;
  std::shared_ptr<GrpcStreamSink> sink_;
  std::shared_ptr<StreamHandler> handler_;
  grpc::ByteBuffer read_buffer_;
  bool closed_ = false;
};

bool GrpcStreamSink::Write(std::string message) {
  std::unique_lock lock(mu_);
  if (finished_ || reactor_ == nullptr) return false;
  queued_bytes_ += message.size();
  queue_.push_back(std::move(message));
  if (!write_in_flight_) StartNextWriteLocked(lock);
  return true;
}

void GrpcStreamSink::Finish(Status status) {
  std::unique_lock lock(mu_);
  if (finished_ || reactor_ == nullptr) return;
  finished_ = true;
  if (write_in_flight_) {
    pending_finish_ = std::move(status);  // sent after the queue drains
    return;
  }
  finish_sent_ = true;
  StreamReactor* const reactor = reactor_;
  lock.unlock();
  reactor->Finish(ToGrpc(status));
}

void GrpcStreamSink::StartNextWriteLocked(std::unique_lock<std::mutex>& lock) {
  in_flight_buffer_ = StringToByteBuffer(queue_.front());
  in_flight_bytes_ = queue_.front().size();
  queue_.pop_front();
  write_in_flight_ = true;
  StreamReactor* const reactor = reactor_;
  lock.unlock();
  // Safe without the lock: the reactor cannot reach OnDone before this write completes.
  reactor->StartWrite(&in_flight_buffer_);
}

void GrpcStreamSink::OnWriteDone(bool ok) {
  std::unique_lock lock(mu_);
  write_in_flight_ = false;
  queued_bytes_ -= in_flight_bytes_;
  in_flight_bytes_ = 0;
  if (!ok) ClearQueueLocked();  // the client is gone; nothing more can be delivered
  if (!queue_.empty()) {
    StartNextWriteLocked(lock);
    return;
  }
  if (pending_finish_ && !finish_sent_) {
    finish_sent_ = true;
    const Status status = std::move(*pending_finish_);
    StreamReactor* const reactor = reactor_;
    lock.unlock();
    reactor->Finish(ToGrpc(status));
  }
}

void GrpcStreamSink::Detach() {
  const std::lock_guard lock(mu_);
  reactor_ = nullptr;
  ClearQueueLocked();
}

class RouterService final : public grpc::CallbackGenericService {
 public:
  explicit RouterService(const Router& router) : router_(router) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    if (const UnaryHandler* handler = router_.FindUnary(ctx->method())) {
      return UnaryReactor::Create(ctx, *handler);
    }
    if (const StreamFactory* factory = router_.FindStream(ctx->method())) {
      return StreamReactor::Create(ctx, *factory);
    }
    return UnimplementedReactor::Create(ctx->method());
  }

 private:
  const Router& router_;
};

}  // namespace

GrpcServer::GrpcServer(const Router& router, GrpcServerOptions options)
    : router_(router), options_(std::move(options)) {}

GrpcServer::~GrpcServer() { Shutdown(std::chrono::milliseconds(0)); }

bool GrpcServer::Start() {
  // No default health service: it would answer grpc.health.v1 (always SERVING) before the
  // router, whose health service follows the shards.
  grpc::EnableDefaultHealthCheckService(false);
  service_ = std::make_unique<RouterService>(router_);
  grpc::ServerBuilder builder;
  auto credentials = options_.credentials ? options_.credentials : grpc::InsecureServerCredentials();
  builder.AddListeningPort(options_.listen_address, credentials, &port_);
  builder.SetMaxReceiveMessageSize(options_.max_receive_bytes);
  builder.SetMaxSendMessageSize(INT_MAX);
  // Accept client keepalive pings as etcd does (no more often than --grpc-keepalive-min-time),
  // also on idle connections: clientv3 pings without active streams when told to.
  const auto millis = [](std::chrono::milliseconds d) {
    return static_cast<int>(std::min<std::int64_t>(d.count(), std::numeric_limits<int>::max()));
  };
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, millis(options_.keepalive_min_time));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Our own pings to silent clients (gRPC's server default is the same 2 h).
  if (options_.keepalive_interval.count() > 0) {
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, millis(options_.keepalive_interval));
    if (options_.keepalive_timeout.count() > 0) {
      builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, millis(options_.keepalive_timeout));
    }
  }
  builder.RegisterCallbackGenericService(service_.get());
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    spdlog::error("cannot listen on {}", options_.listen_address);
    server_.reset();
    return false;
  }
  return true;
}

void GrpcServer::Shutdown(std::chrono::milliseconds grace) {
  if (!server_) return;
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
  server_.reset();
}

}  // namespace esp
