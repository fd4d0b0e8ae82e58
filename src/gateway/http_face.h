#pragma once
// What the client port answers to plain HTTP (HTTP/1.1, or HTTP/2 without a gRPC content type),
// as an etcd server does on its client port: the JSON gateway under /v3/, and /health, /livez,
// /readyz, /version, /metrics served by the same handlers as the operator port. Everything
// else gets etcd's 404.
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "gateway/json_gateway.h"
#include "observability/http_server.h"
#include "transport/http_call.h"

namespace esp::gateway {

// A plain endpoint that may answer later, from any thread (/version waits for the shards' first
// probe): it calls `answer` once.
using AsyncEndpoint = std::function<void(const HttpRequest& request, std::function<void(HttpResponse)> answer)>;

class HttpFace {
 public:
  // `endpoints`: path -> handler for the plain endpoints that answer at once (/health, ...);
  // `async_endpoints`: those that may answer later (/version).
  HttpFace(const Router& router, std::size_t max_message_bytes, std::map<std::string, HttpServer::Handler> endpoints,
           std::map<std::string, AsyncEndpoint> async_endpoints = {})
      : gateway_(router, max_message_bytes),
        endpoints_(std::move(endpoints)),
        async_endpoints_(std::move(async_endpoints)) {}

  // The data plane's HttpHandler.
  void Serve(HttpCall call, CallContextPtr context, std::shared_ptr<HttpReply> reply) const;

 private:
  JsonGateway gateway_;
  std::map<std::string, HttpServer::Handler> endpoints_;
  std::map<std::string, AsyncEndpoint> async_endpoints_;
};

}  // namespace esp::gateway
