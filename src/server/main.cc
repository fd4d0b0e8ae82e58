// etcd-sharding-proxy: serves the etcd v3 API and spreads the keyspace over several etcd clusters.
#include <CLI/CLI.hpp>
#include <absl/synchronization/mutex.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>

#include "common/go_duration.h"
#include "config/config.h"
#include "observability/grpc_log.h"
#include "server/proxy.h"
#include "upstream/h2_client_connection.h"

namespace {

// A duration flag written as etcd's are ("5s", "2h", "100ms").
void AddDurationOption(CLI::App& app, const std::string& name, std::chrono::nanoseconds& target,
                       const std::string& default_text, const std::string& help) {
  app.add_option_function<std::string>(
         name,
         [&target, name](const std::string& text) {
           const auto parsed = esp::ParseGoDuration(text);
           if (!parsed) throw CLI::ValidationError(name, "not a duration (e.g. 5s, 2h, 100ms): " + text);
           target = *parsed;
         },
         help)
      ->default_str(default_text);
}

// Raises the soft open-file limit to the hard one, as etcd gets it (the Go runtime does this at
// start since Go 1.19): every client, shard and operator connection is a descriptor, and the usual
// soft default of 1024 is reached by a modest fleet of clients. The hard limit is the
// administrator's ceiling; the soft one only a default.
void RaiseOpenFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    spdlog::warn("open-file limit: getrlimit: {}", std::strerror(errno));
    return;
  }
  const rlim_t before = limit.rlim_cur;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
      spdlog::warn("open-file limit: cannot raise {} to the hard limit {}: {}", before, limit.rlim_max,
                   std::strerror(errno));
      return;
    }
  }
  spdlog::info("open-file limit: {} (was {}; hard limit {})", limit.rlim_cur, before, limit.rlim_max);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"etcd-sharding-proxy: one etcd v3 endpoint over several etcd clusters, split by key range"};
  std::string config_path;
  std::string log_level = "info";
  esp::ProxyOptions options;
  app.add_option("--config", config_path, "YAML file with the shard layout")->required();
  app.add_option("--listen-addr", options.listen_address, "address for etcd clients")->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  app.add_option("--max-request-bytes", options.max_request_bytes, "largest client request accepted, as etcd's flag")
      ->capture_default_str();
  app.add_option("--max-txn-ops", options.max_txn_ops, "most operations in one txn, as etcd's flag")
      ->capture_default_str();
  app.add_option("--advertise-client-urls", options.advertise_client_urls,
                 "URLs MemberList gives clients for this proxy (comma-separated; default http://<listen-addr>)")
      ->delimiter(',');
  app.add_option("--listen-metrics-addr", options.metrics_address,
                 "host:port for /metrics, /health, /livez, /readyz, /shards over HTTP (empty: off)");
  app.add_option("--watch-buffer-bytes", options.watch_buffer_bytes,
                 "responses a Watch stream may queue for a slow client before it is canceled")
      ->capture_default_str();
  app.add_option("--cert-file", options.tls.cert_file, "TLS certificate for clients (as etcd's flag)");
  app.add_option("--key-file", options.tls.key_file, "TLS key for clients (as etcd's flag)");
  app.add_option("--trusted-ca-file", options.tls.trusted_ca_file, "CA that signs client certificates");
  app.add_flag("--client-cert-auth", options.tls.client_cert_auth,
               "require a client certificate signed by --trusted-ca-file (mutual TLS)");
  app.add_option("--data-plane", options.data_plane, "client-facing transport: h2 (event loops on nghttp2) or grpc (gRPC C++'s server)")
      ->check(CLI::IsMember({"grpc", "h2"}))
      ->capture_default_str();
  app.add_option("--data-plane-threads", options.data_plane_threads,
                 "event loops of the h2 data plane, shared by client and shard connections (0: one per core)")
      ->capture_default_str();
  app.add_option("--data-plane-stream-buffer", options.data_plane_stream_buffer,
                 "h2: response bytes one call may queue for a client that does not read before it is reset")
      ->capture_default_str();
  AddDurationOption(app, "--grpc-keepalive-min-time", options.grpc_keepalive_min_time, "5s",
                    "shortest interval between client PINGs; sooner ones get GOAWAY too_many_pings (as etcd's flag)");
  AddDurationOption(app, "--grpc-keepalive-interval", options.grpc_keepalive_interval, "2h",
                    "PING a client silent this long (0 to disable; as etcd's flag)");
  AddDurationOption(app, "--grpc-keepalive-timeout", options.grpc_keepalive_timeout, "20s",
                    "close a connection whose client stays silent this long after our PING (0 to disable)");
  app.add_option("--upstream-transport", options.upstream_transport,
                 "transport towards the shards: h2 (nghttp2 client on event loops) or grpc (gRPC C++ client)")
      ->check(CLI::IsMember({"grpc", "h2"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  spdlog::set_level(spdlog::level::from_str(log_level));
  esp::RouteGrpcLogsToSpdlog();
  // Debian builds abseil with its mutex deadlock detector on: it records a lock-order graph on
  // every gRPC mutex acquisition, ~10% of the proxy's instructions per request (see
  // docs/BENCHMARKS.md). It is a debugging aid, not a safety net; switch it off before gRPC starts.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  esp::Config config;
  try {
    config = esp::LoadConfigFile(config_path);
  } catch (const esp::ConfigError& e) {
    spdlog::error("invalid configuration {}: {}", config_path, e.what());
    return 2;
  }

  RaiseOpenFileLimit();
  // A peer that closed its connection must cost an EPIPE, not the process: OpenSSL writes TLS
  // records with write(2), which raises SIGPIPE (plain sockets use send(MSG_NOSIGNAL)).
  std::signal(SIGPIPE, SIG_IGN);
  // Block the stop signals in every thread (gRPC's included) and wait for them here.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  if (options.tls.enabled() != !options.tls.key_file.empty() ||
      (options.tls.client_cert_auth && options.tls.trusted_ca_file.empty())) {
    spdlog::error("TLS needs --cert-file and --key-file together; --client-cert-auth needs --trusted-ca-file");
    return 2;
  }
  // Both sides of the data plane run on the same loops (a call read on loop i goes to the shard
  // from loop i), so the upstream pool takes the client side's size.
  if (options.data_plane_threads > 0) esp::UpstreamLoops::SetSharedSize(static_cast<std::size_t>(options.data_plane_threads));
  try {
    esp::Proxy proxy(config, options);
    if (!proxy.Start()) return 1;
    int signal = 0;
    sigwait(&stop_signals, &signal);
    spdlog::info("received {}, shutting down", signal == SIGINT ? "SIGINT" : "SIGTERM");
    proxy.Shutdown();
  } catch (const esp::ConfigError& e) {
    spdlog::error("{}", e.what());
    return 2;
  }
  return 0;
}
