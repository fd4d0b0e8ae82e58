#pragma once
// What the client port answers to plain HTTP (HTTP/1.1, or HTTP/2 without a gRPC content type),
// as an etcd server does on its client port: the JSON gateway under /v3/, and /health, /livez,
// /readyz, /version, /metrics served by the same handlers as the operator port. Everything
// else gets etcd's 404.
#include <map>
#include <memory>
#include <string>

#include "gateway/json_gateway.h"
#include "observability/http_server.h"
#include "transport/http_call.h"

namespace esp::gateway {

class HttpFace {
 public:
  // `endpoints`: path -> handler for the plain endpoints (/health, /version, ...).
  HttpFace(const Router& router, std::size_t max_message_bytes, std::map<std::string, HttpServer::Handler> endpoints)
      : gateway_(router, max_message_bytes), endpoints_(std::move(endpoints)) {}

  // The data plane's HttpHandler.
  void Serve(HttpCall call, CallContextPtr context, std::shared_ptr<HttpReply> reply) const;

 private:
  JsonGateway gateway_;
  std::map<std::string, HttpServer::Handler> endpoints_;
};

}  // namespace esp::gateway
