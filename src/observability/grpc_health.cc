#include "observability/grpc_health.h"

#include <optional>

#include "grpc/health/v1/health.pb.h"

namespace esp {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr const char* kCheck = "/grpc.health.v1.Health/Check";
constexpr const char* kWatch = "/grpc.health.v1.Health/Watch";

// etcd registers its health status under the empty service name only.
bool KnownService(const std::string& service) { return service.empty(); }

std::string Encode(HealthCheckResponse::ServingStatus status) {
  HealthCheckResponse response;
  response.set_status(status);
  return response.SerializeAsString();
}

std::string EncodeServing(bool serving) {
  return Encode(serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING);
}

}  // namespace

// One Watch call. The client half-closes right after its request (server streaming), so
// OnClose is not the end of the call: the call ends when the client cancels it or the service
// shuts down.
class HealthWatchStream final : public StreamHandler {
 public:
  HealthWatchStream(GrpcHealthService& service, CallContextPtr ctx, std::shared_ptr<StreamSink> sink)
      : service_(service), ctx_(std::move(ctx)), sink_(std::move(sink)), id_(service.NextId()) {}
  ~HealthWatchStream() override {
    if (hook_) ctx_->cancellation().Remove(*hook_);
  }

  void OnMessage(std::string message) override {
    HealthCheckRequest request;
    if (started_ || !request.ParseFromString(message)) {
      sink_->Finish(Status(StatusCode::kInternal, "grpc: error unmarshalling request"));
      return;
    }
    started_ = true;
    if (!KnownService(request.service())) {
      // As gRPC's own health servers: say so and keep the call open.
      sink_->Write(Encode(HealthCheckResponse::SERVICE_UNKNOWN));
      return;
    }
    if (!service_.AddWatcher(id_, sink_)) {
      sink_->Finish(Status(StatusCode::kUnavailable, "etcd-sharding-proxy: shutting down"));
      return;
    }
    // The service must not keep writing to a call the client gave up. Runs at once if the
    // client is already gone. `service_` outlives every call: the proxy stops its server first.
    hook_ = ctx_->cancellation().Add([service = &service_, id = id_] { service->RemoveWatcher(id); });
  }
  void OnClose() override {}

 private:
  GrpcHealthService& service_;
  CallContextPtr ctx_;
  std::shared_ptr<StreamSink> sink_;
  const std::uint64_t id_;
  bool started_ = false;
  std::optional<Cancellation::HookId> hook_;
};

GrpcHealthService::GrpcHealthService(ShardHealthMonitor& monitor) : monitor_(monitor) {
  monitor_.OnServingChange([this](bool serving) { Broadcast(serving); });
}

void GrpcHealthService::Register(Router& router) {
  router.AddUnary(kCheck, [this](CallContextPtr, std::string bytes, UnaryDone done) {
    HealthCheckRequest request;
    if (!request.ParseFromString(bytes)) {
      return done(Status(StatusCode::kInternal, "grpc: error unmarshalling request"), {});
    }
    if (!KnownService(request.service())) return done(Status(StatusCode::kNotFound, "unknown service"), {});
    done(Status::Ok(), EncodeServing(ServingNow()));
  });
  router.AddStream(kWatch, [this](CallContextPtr ctx, std::shared_ptr<StreamSink> sink) {
    return std::make_shared<HealthWatchStream>(*this, std::move(ctx), std::move(sink));
  });
}

bool GrpcHealthService::ServingNow() const { return JudgeServing(monitor_.Snapshot()).healthy; }

std::uint64_t GrpcHealthService::NextId() {
  const std::lock_guard lock(mu_);
  return next_id_++;
}

bool GrpcHealthService::AddWatcher(std::uint64_t id, std::shared_ptr<StreamSink> sink) {
  const std::lock_guard lock(mu_);
  if (shut_down_) return false;
  // Read and written under the lock that Broadcast takes: a probe's change either is in this
  // snapshot or reaches the watcher through Broadcast afterwards, never neither.
  const bool serving = ServingNow();
  sink->Write(EncodeServing(serving));
  watchers_[id] = Watcher{std::move(sink), serving};
  return true;
}

void GrpcHealthService::RemoveWatcher(std::uint64_t id) {
  const std::lock_guard lock(mu_);
  watchers_.erase(id);
}

void GrpcHealthService::Broadcast(bool serving) {
  const std::lock_guard lock(mu_);
  for (auto& [id, watcher] : watchers_) {
    // A watcher added after this probe already has the newest status.
    if (watcher.last_sent_serving == serving) continue;
    watcher.last_sent_serving = serving;
    watcher.sink->Write(EncodeServing(serving));
  }
}

void GrpcHealthService::Shutdown() {
  std::map<std::uint64_t, Watcher> watchers;
  {
    const std::lock_guard lock(mu_);
    shut_down_ = true;
    watchers.swap(watchers_);
  }
  for (auto& [id, watcher] : watchers) {
    watcher.sink->Write(EncodeServing(false));
    watcher.sink->Finish(Status(StatusCode::kUnavailable, "etcd-sharding-proxy: shutting down"));
  }
}

}  // namespace esp
