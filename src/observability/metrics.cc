#include "observability/metrics.h"

#include <spdlog/spdlog.h>

#include <google/protobuf/descriptor.h>

#include <chrono>
#include <mutex>

#include "etcdserverpb/rpc.pb.h"

namespace esp {
namespace {

using SteadyClock = std::chrono::steady_clock;

double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

// etcd's own grpc latency buckets (grpc_server_handling_seconds) span 5 ms to ~40 s; the proxy
// adds sub-millisecond work, so the scale starts lower.
prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

// A client stream counted in the open-streams gauge: open from its creation until the service
// finishes it or the client cancels it, whichever comes first. Not until OnClose: a client
// half-closes a server-streaming call (health Watch) right after its request, yet the call
// stays open.
class OpenStream {
 public:
  explicit OpenStream(prometheus::Gauge& open) : open_(open) { open_.Increment(); }
  void End() {
    if (!ended_.exchange(true)) open_.Decrement();
  }

 private:
  prometheus::Gauge& open_;
  std::atomic<bool> ended_{false};
};

// Counts a client stream's final status and latency, and ends its open-stream count.
class CountingSink final : public StreamSink {
 public:
  CountingSink(std::shared_ptr<StreamSink> inner, std::shared_ptr<CallMetrics> metrics, std::shared_ptr<OpenStream> open)
      : inner_(std::move(inner)), metrics_(std::move(metrics)), open_(std::move(open)), start_(SteadyClock::now()) {}
  bool Write(std::string message) override { return inner_->Write(std::move(message)); }
  bool WriteParts(std::string_view head, std::string_view body) override { return inner_->WriteParts(head, body); }
  std::size_t QueuedBytes() const override { return inner_->QueuedBytes(); }
  void Finish(Status status) override {
    if (!finished_.exchange(true)) {
      metrics_->Record(status.code(), SecondsSince(start_));
      open_->End();
    }
    inner_->Finish(std::move(status));
  }

 private:
  std::shared_ptr<StreamSink> inner_;
  std::shared_ptr<CallMetrics> metrics_;
  std::shared_ptr<OpenStream> open_;
  SteadyClock::time_point start_;
  std::atomic<bool> finished_{false};
};

// A ShardTransport that records every unary call's outcome and latency under its shard's name.
// Handles for every etcd method are resolved up front; other methods get theirs on first use.
class InstrumentedTransport final : public ShardTransport {
 public:
  InstrumentedTransport(std::shared_ptr<ShardTransport> inner, std::string shard, Metrics& metrics)
      : inner_(std::move(inner)), shard_(std::move(shard)), metrics_(metrics) {
    const auto* file = etcdserverpb::RangeRequest::descriptor()->file();
    for (int s = 0; s < file->service_count(); ++s) {
      const auto* service = file->service(s);
      for (int m = 0; m < service->method_count(); ++m) {
        const std::string path = "/" + service->full_name() + "/" + service->method(m)->name();
        known_.emplace(path, metrics_.ForUpstream(shard_, path));
      }
    }
  }
  const std::string& description() const override { return inner_->description(); }
  void Unary(const std::string& method, const CallContextPtr& ctx, std::string request, UnaryOptions options,
             UnaryDone done) override {
    inner_->Unary(method, ctx, std::move(request), options,
                  [metrics = Lookup(method), start = SteadyClock::now(), done = std::move(done)](Status status,
                                                                                             std::string bytes) {
                    metrics->Record(status.code(), SecondsSince(start));
                    done(std::move(status), std::move(bytes));
                  });
  }
  std::shared_ptr<UpstreamStream> OpenStream(const std::string& method, const Metadata& metadata,
                                             std::shared_ptr<UpstreamStreamObserver> observer) override {
    return inner_->OpenStream(method, metadata, std::move(observer));
  }

 private:
  std::shared_ptr<CallMetrics> Lookup(const std::string& method) {
    if (const auto it = known_.find(method); it != known_.end()) return it->second;  // read-only map
    const std::lock_guard lock(mu_);
    auto& entry = others_[method];
    if (!entry) entry = metrics_.ForUpstream(shard_, method);
    return entry;
  }

  std::shared_ptr<ShardTransport> inner_;
  std::string shard_;
  Metrics& metrics_;
  std::unordered_map<std::string, std::shared_ptr<CallMetrics>> known_;
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<CallMetrics>> others_;
};

}  // namespace

const char* StatusCodeName(StatusCode code) {
  static constexpr const char* kNames[] = {
      "OK",         "Canceled",          "Unknown",  "InvalidArgument", "DeadlineExceeded", "NotFound",
      "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
      "OutOfRange", "Unimplemented",     "Internal", "Unavailable",     "DataLoss",         "Unauthenticated"};
  const auto index = static_cast<std::size_t>(code);
  return index < std::size(kNames) ? kNames[index] : "Unknown";
}

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("etcd_proxy_requests_total")
                    .Help("Client RPCs handled, by method and gRPC status code")
                    .Register(*registry_)),
      latency_(prometheus::BuildHistogram()
                   .Name("etcd_proxy_request_duration_seconds")
                   .Help("Client RPC latency (streams: open to finish), by method")
                   .Register(*registry_)),
      in_flight_(prometheus::BuildGauge()
                     .Name("etcd_proxy_requests_in_flight")
                     .Help("Unary client RPCs being served, by method")
                     .Register(*registry_)),
      open_streams_(prometheus::BuildGauge()
                        .Name("etcd_proxy_open_streams")
                        .Help("Open client streams (Watch, LeaseKeepAlive, ...), by method")
                        .Register(*registry_)),
      upstream_requests_(prometheus::BuildCounter()
                             .Name("etcd_proxy_upstream_requests_total")
                             .Help("Unary calls to shards, by shard, method and gRPC status code")
                             .Register(*registry_)),
      upstream_errors_(prometheus::BuildCounter()
                           .Name("etcd_proxy_upstream_errors_total")
                           .Help("Unary calls to shards that failed, by shard and method")
                           .Register(*registry_)),
      upstream_latency_(prometheus::BuildHistogram()
                            .Name("etcd_proxy_upstream_request_duration_seconds")
                            .Help("Latency of unary calls to shards, by shard and method")
                            .Register(*registry_)),
      upstream_retries_(prometheus::BuildCounter()
                            .Name("etcd_proxy_upstream_retries_total")
                            .Help("Calls sent again to another member of the shard after a transport failure")
                            .Register(*registry_)),
      shard_up_(prometheus::BuildGauge()
                    .Name("etcd_proxy_shard_up")
                    .Help("1 when the shard answered the last health probe, else 0")
                    .Register(*registry_)) {}

CallMetrics::CallMetrics(prometheus::Family<prometheus::Counter>& calls,
                         prometheus::Family<prometheus::Histogram>& latency,
                         prometheus::Family<prometheus::Counter>* errors, const prometheus::Labels& labels)
    : calls_(calls),
      labels_(labels),
      latency_(latency.Add(labels, LatencyBuckets())),
      errors_(errors ? &errors->Add(labels) : nullptr) {}

void CallMetrics::Record(StatusCode code, double seconds) {
  std::size_t index = static_cast<std::size_t>(code);
  if (index >= kCodes) index = static_cast<std::size_t>(StatusCode::kUnknown);
  prometheus::Counter* counter = by_code_[index].load(std::memory_order_acquire);
  if (counter == nullptr) {
    // Family::Add returns the existing child for equal labels, so a race here is harmless.
    prometheus::Labels labels = labels_;
    labels.emplace("code", StatusCodeName(code));
    counter = &calls_.Add(labels);
    by_code_[index].store(counter, std::memory_order_release);
  }
  counter->Increment();
  latency_.Observe(seconds);
  if (errors_ != nullptr && code != StatusCode::kOk) errors_->Increment();
}

std::shared_ptr<CallMetrics> Metrics::ForMethod(const std::string& method) {
  return std::make_shared<CallMetrics>(requests_, latency_, nullptr, prometheus::Labels{{"method", method}});
}

std::shared_ptr<CallMetrics> Metrics::ForUpstream(const std::string& shard, const std::string& method) {
  return std::make_shared<CallMetrics>(upstream_requests_, upstream_latency_, &upstream_errors_,
                                       prometheus::Labels{{"shard", shard}, {"method", method}});
}

void Metrics::RecordRetry(const std::string& shard, const std::string& method) {
  upstream_retries_.Add({{"shard", shard}, {"method", method}}).Increment();
}

prometheus::Gauge& Metrics::InFlight(const std::string& method) { return in_flight_.Add({{"method", method}}); }
prometheus::Gauge& Metrics::OpenStreams(const std::string& method) { return open_streams_.Add({{"method", method}}); }

void Metrics::SetShardUp(const std::string& shard, bool up) { shard_up_.Add({{"shard", shard}}).Set(up ? 1 : 0); }

void Metrics::AddSampledGauge(const std::string& name, const std::string& help, std::function<double()> read) {
  prometheus::Gauge& gauge = prometheus::BuildGauge().Name(name).Help(help).Register(*registry_).Add({});
  const std::lock_guard lock(sampled_mu_);
  sampled_.emplace_back(&gauge, std::move(read));
}

std::vector<prometheus::MetricFamily> Metrics::Collect() {
  {
    const std::lock_guard lock(sampled_mu_);
    for (const auto& [gauge, read] : sampled_) gauge->Set(read());
  }
  return registry_->Collect();
}

void Metrics::InstrumentRouter(Router& router) {
  router.WrapUnary([this](const std::string& method, UnaryHandler inner) -> UnaryHandler {
    prometheus::Gauge& in_flight = InFlight(method);
    auto calls = ForMethod(method);
    return [method, &in_flight, calls, inner = std::move(inner)](CallContextPtr ctx, std::string request, UnaryDone done) {
      in_flight.Increment();
      inner(std::move(ctx), std::move(request),
            [&method, &in_flight, &calls, start = SteadyClock::now(), done = std::move(done)](Status status,
                                                                                          std::string bytes) {
              in_flight.Decrement();
              const double seconds = SecondsSince(start);
              calls->Record(status.code(), seconds);
              // Request logs are debug-only: at info, one line per request would drown the rest.
              spdlog::debug("{} {} {:.3f} ms{}{}", method, StatusCodeName(status.code()), seconds * 1000,
                            status.ok() ? "" : ": ", status.message());
              done(std::move(status), std::move(bytes));
            });
    };
  });
  router.WrapStreams([this](const std::string& method, StreamFactory inner) -> StreamFactory {
    prometheus::Gauge& open = OpenStreams(method);
    auto calls = ForMethod(method);
    return [&open, calls, inner = std::move(inner)](CallContextPtr ctx, std::shared_ptr<StreamSink> sink) {
      auto stream = std::make_shared<OpenStream>(open);
      // The hook stays registered for the context's lifetime, which is the call's.
      ctx->cancellation().Add([stream] { stream->End(); });
      return inner(std::move(ctx), std::make_shared<CountingSink>(std::move(sink), calls, stream));
    };
  });
}

std::shared_ptr<const Topology> Metrics::InstrumentTopology(std::shared_ptr<const Topology> topology) {
  std::vector<std::shared_ptr<ShardTransport>> shards;
  for (std::size_t i = 0; i < topology->shards.size(); ++i) {
    shards.push_back(InstrumentTransport(topology->shards[i], topology->map.shard(i).name));
  }
  return std::make_shared<const Topology>(
      Topology{topology->map, std::move(shards), topology->configs, topology->map_version});
}

std::shared_ptr<ShardTransport> Metrics::InstrumentTransport(std::shared_ptr<ShardTransport> transport,
                                                             const std::string& shard) {
  return std::make_shared<InstrumentedTransport>(std::move(transport), shard, *this);
}

}  // namespace esp
