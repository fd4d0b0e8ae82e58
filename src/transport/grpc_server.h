#pragma once
// The gRPC front end: one generic callback service that hands every call to the Router.
// Everything gRPC-specific on the client side of the proxy lives in grpc_server.cc.
#include <chrono>
#include <memory>
#include <string>

#include "transport/router.h"

namespace grpc {
class Server;
class ServerCredentials;
class CallbackGenericService;
}  // namespace grpc

namespace esp {

struct GrpcServerOptions {
  std::string listen_address;
  // Largest request message accepted (etcd: --max-request-bytes plus 512 KiB of gRPC overhead).
  int max_receive_bytes = 2 * 1024 * 1024;
  std::shared_ptr<grpc::ServerCredentials> credentials;  // insecure when null
  // etcd's --grpc-keepalive-min-time / -interval / -timeout, as on the h2 plane (zero: off).
  std::chrono::milliseconds keepalive_min_time = std::chrono::seconds(5);
  std::chrono::milliseconds keepalive_interval = std::chrono::hours(2);
  std::chrono::milliseconds keepalive_timeout = std::chrono::seconds(20);
};

class GrpcServer {
 public:
  GrpcServer(const Router& router, GrpcServerOptions options);
  ~GrpcServer();
  GrpcServer(const GrpcServer&) = delete;
  GrpcServer& operator=(const GrpcServer&) = delete;

  // Binds and starts serving. Returns false (with a logged reason) when the port cannot be bound.
  bool Start();
  // The port actually bound (useful when listening on port 0).
  int port() const { return port_; }
  // Stops accepting calls and cancels the ones in flight after `grace`.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  const Router& router_;
  GrpcServerOptions options_;
  std::unique_ptr<grpc::CallbackGenericService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace esp
