#pragma once
// etcd's JSON gateway (grpc-gateway over etcd's rpc.proto: POST /v3/kv/range and the rest) in
// front of the same Router the gRPC planes feed. A request's JSON becomes the RPC's protobuf
// bytes, the Router's handler serves it exactly as a gRPC call (routing, merging, refusals), and
// the answer's bytes become JSON again. Nothing here knows what a call means.
#include <google/protobuf/descriptor.h>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "transport/http_call.h"
#include "transport/router.h"
#include "transport/status.h"

namespace esp::gateway {

// How the gateway drives an RPC: one answer, or a stream of `{"result": ...}` lines.
enum class RpcShape {
  kUnary,
  kWatch,      // the stream stays open after the request (etcd ignores the half-close)
  kKeepAlive,  // one answer per request, then the stream is half-closed
  kServerStream,
};

struct GatewayRoute {
  std::string_view path;        // "/v3/kv/range"
  std::string_view rpc;         // "/etcdserverpb.KV/Range"
  const google::protobuf::Descriptor* request = nullptr;
  const google::protobuf::Descriptor* response = nullptr;
  RpcShape shape = RpcShape::kUnary;
};

// The route for an HTTP path, or null (etcd answers 404 for it).
const GatewayRoute* FindRoute(std::string_view path);
// Every route, in etcd's rpc.proto order (the fuzz target picks from them).
const std::vector<GatewayRoute>& AllRoutes();

struct DecodedRequest {
  Status status;      // InvalidArgument with the parser's words when the JSON is not a request
  std::string bytes;  // the request's protobuf encoding
};
// A request body as grpc-gateway reads it: an empty body is an empty request, unknown fields are
// ignored, bytes are base64, 64-bit integers strings or numbers, enums names or numbers.
DecodedRequest DecodeRequest(const GatewayRoute& route, std::string_view json);
// An answer's bytes as etcd 3.4's gateway writes them: proto field names, zero values left out,
// 64-bit integers as strings, compact. Empty when the bytes do not parse.
std::string EncodeResponse(const google::protobuf::Descriptor* type, std::string_view bytes);

// grpc-gateway's HTTP status for a gRPC code (the version etcd 3.4 is built with: Canceled 408,
// FailedPrecondition 412).
int HttpStatusFromCode(StatusCode code);
// etcd 3.4's error body: {"error":<message>,"message":<message>,"code":<gRPC code>}.
std::string ErrorBody(const Status& status);
// The headers every gateway answer carries (content type, grpc-gateway's CORS and metadata).
HttpHeaders JsonHeaders();

class JsonGateway {
 public:
  // `max_message_bytes`: the largest request message, as the gRPC planes allow
  // (--max-request-bytes + 512 KiB).
  JsonGateway(const Router& router, std::size_t max_message_bytes)
      : router_(router), max_message_bytes_(max_message_bytes) {}

  // Serves one gateway request (`route` from FindRoute of its path).
  void Serve(const GatewayRoute& route, HttpCall call, CallContextPtr context, std::shared_ptr<HttpReply> reply) const;

 private:
  void ServeUnary(const GatewayRoute& route, std::string request, CallContextPtr context,
                  std::shared_ptr<HttpReply> reply) const;
  void ServeStream(const GatewayRoute& route, std::string request, CallContextPtr context,
                   std::shared_ptr<HttpReply> reply) const;

  const Router& router_;
  const std::size_t max_message_bytes_;
};

}  // namespace esp::gateway
