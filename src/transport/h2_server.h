#pragma once
// The event-loop data plane's front end: N epoll loops (one per core by default), each owning
// the client connections it was handed, speaking gRPC over HTTP/2 (nghttp2) in clear text with
// prior knowledge or over TLS (OpenSSL, ALPN "h2"). Calls go to the same Router as GrpcServer's.
#include <openssl/ssl.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "transport/h2_connection.h"
#include "transport/http1_connection.h"
#include "transport/router.h"

namespace esp {

struct H2TlsFiles {
  std::string cert_file;
  std::string key_file;
  std::string trusted_ca_file;
  bool client_cert_auth = false;
  bool enabled() const { return !cert_file.empty(); }
};

struct H2ServerOptions {
  std::string listen_address;
  int loops = 0;  // 0: one per core
  // Loops to run on instead of our own (already started, and left running by Shutdown): the
  // upstream pool's, so a forwarded call stays on one thread from client read to client write.
  std::vector<std::shared_ptr<EventLoop>> shared_loops;
  H2Limits limits;
  H2TlsFiles tls;
  // etcd's HTTP face on the same port: HTTP/1.1 (told apart from HTTP/2 by the first bytes, or by
  // ALPN "http/1.1" over TLS) and HTTP/2 requests that are not gRPC go here. Empty: gRPC only.
  HttpHandler http_handler;
  Http1Limits http1_limits;
};

class H2Server {
 public:
  H2Server(const Router& router, H2ServerOptions options);
  ~H2Server();
  H2Server(const H2Server&) = delete;
  H2Server& operator=(const H2Server&) = delete;

  bool Start();
  int port() const { return port_; }
  // GOAWAY on every connection, waits up to `grace` for the calls in flight, then closes the rest.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  class Loop;
  class FirstBytes;

  bool Listen();
  void OnAcceptable();
  // After a failed accept (the open-file limit, usually) the listener's read interest is off for
  // a short while: level-triggered, it would otherwise wake the loop, fail and log on every turn
  // until a descriptor is freed. Connections meanwhile wait in the listen backlog. Loop 0 only.
  void PauseAccepting(int error);
  void ResumeAccepting();
  void ReportAcceptingAgain();

  const Router& router_;
  H2ServerOptions options_;
  SSL_CTX* ssl_ctx_ = nullptr;
  std::vector<std::unique_ptr<Loop>> loops_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::size_t next_loop_ = 0;
  bool running_ = false;
  // Accept failures (loop 0 only): the timer that resumes accepting, failures not reported yet,
  // failures since accepting last worked, and when each kind of line was last logged.
  std::uint64_t resume_timer_ = 0;
  std::uint64_t unreported_failures_ = 0;
  std::uint64_t failures_in_run_ = 0;
  std::chrono::steady_clock::time_point last_failure_report_{};
  std::chrono::steady_clock::time_point last_recovery_report_{};

  // Open connections over all loops, for the drain at shutdown.
  std::mutex mu_;
  std::condition_variable drained_;
  std::size_t open_connections_ = 0;
};

}  // namespace esp
