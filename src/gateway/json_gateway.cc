#include "gateway/json_gateway.h"

#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>

#include <array>
#include <atomic>
#include <mutex>

#include "etcdserverpb/rpc.pb.h"
#include "transport/peer_identity.h"

namespace esp::gateway {
namespace {

namespace pb = etcdserverpb;
using google::protobuf::Descriptor;

template <class Req, class Resp>
constexpr GatewayRoute Route(std::string_view path, std::string_view rpc, RpcShape shape = RpcShape::kUnary) {
  return {path, rpc, nullptr, nullptr, shape};
}

// The google.api.http mappings of etcd's rpc.proto (3.5's, a superset of 3.4's: the /v3/kv/lease
// aliases, /v3/auth/status, /v3/maintenance/downgrade). "/v3/maintenance/hash" is Hash, as in
// etcd's gateway (HashKV has the same path there and loses).
std::vector<GatewayRoute> MakeRoutes() {
  struct Entry {
    std::string_view path;
    std::string_view rpc;
    const Descriptor* request;
    const Descriptor* response;
    RpcShape shape;
  };
  const std::vector<Entry> entries = {
      {"/v3/kv/range", "/etcdserverpb.KV/Range", pb::RangeRequest::descriptor(), pb::RangeResponse::descriptor(), RpcShape::kUnary},
      {"/v3/kv/put", "/etcdserverpb.KV/Put", pb::PutRequest::descriptor(), pb::PutResponse::descriptor(), RpcShape::kUnary},
      {"/v3/kv/deleterange", "/etcdserverpb.KV/DeleteRange", pb::DeleteRangeRequest::descriptor(), pb::DeleteRangeResponse::descriptor(), RpcShape::kUnary},
      {"/v3/kv/txn", "/etcdserverpb.KV/Txn", pb::TxnRequest::descriptor(), pb::TxnResponse::descriptor(), RpcShape::kUnary},
      {"/v3/kv/compaction", "/etcdserverpb.KV/Compact", pb::CompactionRequest::descriptor(), pb::CompactionResponse::descriptor(), RpcShape::kUnary},
      {"/v3/watch", "/etcdserverpb.Watch/Watch", pb::WatchRequest::descriptor(), pb::WatchResponse::descriptor(), RpcShape::kWatch},
      {"/v3/lease/grant", "/etcdserverpb.Lease/LeaseGrant", pb::LeaseGrantRequest::descriptor(), pb::LeaseGrantResponse::descriptor(), RpcShape::kUnary},
      {"/v3/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke", pb::LeaseRevokeRequest::descriptor(), pb::LeaseRevokeResponse::descriptor(), RpcShape::kUnary},
      {"/v3/kv/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke", pb::LeaseRevokeRequest::descriptor(), pb::LeaseRevokeResponse::descriptor(), RpcShape::kUnary},
      {"/v3/lease/keepalive", "/etcdserverpb.Lease/LeaseKeepAlive", pb::LeaseKeepAliveRequest::descriptor(), pb::LeaseKeepAliveResponse::descriptor(), RpcShape::kKeepAlive},
      {"/v3/lease/timetolive", "/etcdserverpb.Lease/LeaseTimeToLive", pb::LeaseTimeToLiveRequest::descriptor(), pb::LeaseTimeToLiveResponse::descriptor(), RpcShape::kUnary},
      {"/v3/kv/lease/timetolive", "/etcdserverpb.Lease/LeaseTimeToLive", pb::LeaseTimeToLiveRequest::descriptor(), pb::LeaseTimeToLiveResponse::descriptor(), RpcShape::kUnary},
      {"/v3/lease/leases", "/etcdserverpb.Lease/LeaseLeases", pb::LeaseLeasesRequest::descriptor(), pb::LeaseLeasesResponse::descriptor(), RpcShape::kUnary},
      {"/v3/kv/lease/leases", "/etcdserverpb.Lease/LeaseLeases", pb::LeaseLeasesRequest::descriptor(), pb::LeaseLeasesResponse::descriptor(), RpcShape::kUnary},
      {"/v3/cluster/member/add", "/etcdserverpb.Cluster/MemberAdd", pb::MemberAddRequest::descriptor(), pb::MemberAddResponse::descriptor(), RpcShape::kUnary},
      {"/v3/cluster/member/remove", "/etcdserverpb.Cluster/MemberRemove", pb::MemberRemoveRequest::descriptor(), pb::MemberRemoveResponse::descriptor(), RpcShape::kUnary},
      {"/v3/cluster/member/update", "/etcdserverpb.Cluster/MemberUpdate", pb::MemberUpdateRequest::descriptor(), pb::MemberUpdateResponse::descriptor(), RpcShape::kUnary},
      {"/v3/cluster/member/list", "/etcdserverpb.Cluster/MemberList", pb::MemberListRequest::descriptor(), pb::MemberListResponse::descriptor(), RpcShape::kUnary},
      {"/v3/cluster/member/promote", "/etcdserverpb.Cluster/MemberPromote", pb::MemberPromoteRequest::descriptor(), pb::MemberPromoteResponse::descriptor(), RpcShape::kUnary},
      {"/v3/maintenance/alarm", "/etcdserverpb.Maintenance/Alarm", pb::AlarmRequest::descriptor(), pb::AlarmResponse::descriptor(), RpcShape::kUnary},
      {"/v3/maintenance/status", "/etcdserverpb.Maintenance/Status", pb::StatusRequest::descriptor(), pb::StatusResponse::descriptor(), RpcShape::kUnary},
      {"/v3/maintenance/defragment", "/etcdserverpb.Maintenance/Defragment", pb::DefragmentRequest::descriptor(), pb::DefragmentResponse::descriptor(), RpcShape::kUnary},
      {"/v3/maintenance/hash", "/etcdserverpb.Maintenance/Hash", pb::HashRequest::descriptor(), pb::HashResponse::descriptor(), RpcShape::kUnary},
      {"/v3/maintenance/snapshot", "/etcdserverpb.Maintenance/Snapshot", pb::SnapshotRequest::descriptor(), pb::SnapshotResponse::descriptor(), RpcShape::kServerStream},
      {"/v3/maintenance/transfer-leadership", "/etcdserverpb.Maintenance/MoveLeader", pb::MoveLeaderRequest::descriptor(), pb::MoveLeaderResponse::descriptor(), RpcShape::kUnary},
      {"/v3/maintenance/downgrade", "/etcdserverpb.Maintenance/Downgrade", pb::DowngradeRequest::descriptor(), pb::DowngradeResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/enable", "/etcdserverpb.Auth/AuthEnable", pb::AuthEnableRequest::descriptor(), pb::AuthEnableResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/disable", "/etcdserverpb.Auth/AuthDisable", pb::AuthDisableRequest::descriptor(), pb::AuthDisableResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/status", "/etcdserverpb.Auth/AuthStatus", pb::AuthStatusRequest::descriptor(), pb::AuthStatusResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/authenticate", "/etcdserverpb.Auth/Authenticate", pb::AuthenticateRequest::descriptor(), pb::AuthenticateResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/user/add", "/etcdserverpb.Auth/UserAdd", pb::AuthUserAddRequest::descriptor(), pb::AuthUserAddResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/user/get", "/etcdserverpb.Auth/UserGet", pb::AuthUserGetRequest::descriptor(), pb::AuthUserGetResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/user/list", "/etcdserverpb.Auth/UserList", pb::AuthUserListRequest::descriptor(), pb::AuthUserListResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/user/delete", "/etcdserverpb.Auth/UserDelete", pb::AuthUserDeleteRequest::descriptor(), pb::AuthUserDeleteResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/user/changepw", "/etcdserverpb.Auth/UserChangePassword", pb::AuthUserChangePasswordRequest::descriptor(), pb::AuthUserChangePasswordResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/user/grant", "/etcdserverpb.Auth/UserGrantRole", pb::AuthUserGrantRoleRequest::descriptor(), pb::AuthUserGrantRoleResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/user/revoke", "/etcdserverpb.Auth/UserRevokeRole", pb::AuthUserRevokeRoleRequest::descriptor(), pb::AuthUserRevokeRoleResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/role/add", "/etcdserverpb.Auth/RoleAdd", pb::AuthRoleAddRequest::descriptor(), pb::AuthRoleAddResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/role/get", "/etcdserverpb.Auth/RoleGet", pb::AuthRoleGetRequest::descriptor(), pb::AuthRoleGetResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/role/list", "/etcdserverpb.Auth/RoleList", pb::AuthRoleListRequest::descriptor(), pb::AuthRoleListResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/role/delete", "/etcdserverpb.Auth/RoleDelete", pb::AuthRoleDeleteRequest::descriptor(), pb::AuthRoleDeleteResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/role/grant", "/etcdserverpb.Auth/RoleGrantPermission", pb::AuthRoleGrantPermissionRequest::descriptor(), pb::AuthRoleGrantPermissionResponse::descriptor(), RpcShape::kUnary},
      {"/v3/auth/role/revoke", "/etcdserverpb.Auth/RoleRevokePermission", pb::AuthRoleRevokePermissionRequest::descriptor(), pb::AuthRoleRevokePermissionResponse::descriptor(), RpcShape::kUnary},
  };
  std::vector<GatewayRoute> routes;
  routes.reserve(entries.size());
  for (const Entry& e : entries) routes.push_back({e.path, e.rpc, e.request, e.response, e.shape});
  return routes;
}

const std::vector<GatewayRoute>& Routes() {
  static const std::vector<GatewayRoute> routes = MakeRoutes();
  return routes;
}

std::unique_ptr<google::protobuf::Message> NewMessage(const Descriptor* type) {
  return std::unique_ptr<google::protobuf::Message>(
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(type)->New());
}

// etcd's stream answers: one object per line, `{"result": <answer>}`.
std::string ResultLine(const Descriptor* type, std::string_view bytes) {
  std::string line = "{\"result\":";
  line.append(EncodeResponse(type, bytes));
  line.append("}\n");
  return line;
}

// grpc-gateway's in-stream error once answers have gone out (the HTTP status is already sent).
std::string StreamErrorLine(const Status& status) {
  const int http = HttpStatusFromCode(status.code());
  nlohmann::json error = {{"grpc_code", static_cast<int>(status.code())},
                          {"http_code", http},
                          {"message", status.message()},
                          {"http_status", std::string(HttpReason(http))}};
  return nlohmann::json({{"error", error}}).dump() + "\n";
}

// The metadata a gateway call carries to the services: the token from `Authorization` (under
// the key grpc-gateway gives it) and the connection's verified client-certificate name.
Metadata CallMetadata(const HttpCall& call) {
  Metadata metadata;
  if (const std::string* token = call.Header("authorization")) metadata.emplace_back("authorization", *token);
  if (!call.client_cn.empty()) metadata.emplace_back(kClientCertCnKey, call.client_cn);
  return metadata;
}

void SendError(HttpReply& reply, const Status& status) {
  reply.Send(HttpStatusFromCode(status.code()), JsonHeaders(), ErrorBody(status));
}

// The service's sink for a gateway stream: each answer becomes a `{"result": ...}` line of the
// chunked response. Its lag is the HTTP reply's, so the watch service's slow-client budget
// (--watch-buffer-bytes) applies to gateway watchers as to gRPC ones.
class JsonLinesSink final : public StreamSink {
 public:
  JsonLinesSink(std::shared_ptr<HttpReply> reply, const Descriptor* type, std::function<void()> on_answer)
      : reply_(std::move(reply)), type_(type), on_answer_(std::move(on_answer)) {}

  bool Write(std::string message) override {
    {
      const std::lock_guard lock(mu_);
      if (finished_) return false;
      if (!begun_) {
        begun_ = true;
        reply_->Begin(200, JsonHeaders());
      }
      if (!reply_->Write(ResultLine(type_, message))) return false;
    }
    if (on_answer_) on_answer_();
    return true;
  }
  void Finish(Status status) override {
    const std::lock_guard lock(mu_);
    if (finished_) return;
    finished_ = true;
    if (!begun_) {
      // Nothing went out yet: a plain error answer (or an empty 200), as grpc-gateway does.
      if (!status.ok()) return SendError(*reply_, status);
      reply_->Begin(200, JsonHeaders());
    } else if (!status.ok()) {
      reply_->Write(StreamErrorLine(status));
    }
    reply_->End();
  }
  std::size_t QueuedBytes() const override { return reply_->QueuedBytes(); }

 private:
  std::shared_ptr<HttpReply> reply_;
  const Descriptor* type_;
  std::function<void()> on_answer_;
  std::mutex mu_;
  bool begun_ = false;
  bool finished_ = false;
};

}  // namespace

const std::vector<GatewayRoute>& AllRoutes() { return Routes(); }

const GatewayRoute* FindRoute(std::string_view path) {
  for (const GatewayRoute& route : Routes()) {
    if (route.path == path) return &route;
  }
  return nullptr;
}

DecodedRequest DecodeRequest(const GatewayRoute& route, std::string_view json) {
  const auto message = NewMessage(route.request);
  if (json.find_first_not_of(" \t\r\n") != std::string_view::npos) {
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    const auto status = google::protobuf::util::JsonStringToMessage(
        google::protobuf::StringPiece(json.data(), json.size()), message.get(), options);
    if (!status.ok()) return {Status(StatusCode::kInvalidArgument, std::string(status.message())), {}};
  }
  return {Status::Ok(), message->SerializeAsString()};
}

std::string EncodeResponse(const Descriptor* type, std::string_view bytes) {
  const auto message = NewMessage(type);
  if (!message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return {};
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(*message, &json, options).ok()) return {};
  return json;
}

int HttpStatusFromCode(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return 200;
    case StatusCode::kCancelled: return 408;
    case StatusCode::kUnknown: return 500;
    case StatusCode::kInvalidArgument: return 400;
    case StatusCode::kDeadlineExceeded: return 504;
    case StatusCode::kNotFound: return 404;
    case StatusCode::kAlreadyExists: return 409;
    case StatusCode::kPermissionDenied: return 403;
    case StatusCode::kUnauthenticated: return 401;
    case StatusCode::kResourceExhausted: return 429;
    case StatusCode::kFailedPrecondition: return 412;
    case StatusCode::kAborted: return 409;
    case StatusCode::kOutOfRange: return 400;
    case StatusCode::kUnimplemented: return 501;
    case StatusCode::kInternal: return 500;
    case StatusCode::kUnavailable: return 503;
    case StatusCode::kDataLoss: return 500;
  }
  return 500;
}

std::string ErrorBody(const Status& status) {
  // Built by hand to keep etcd's key order (error, message, code); dump() escapes the strings.
  const std::string message = nlohmann::json(status.message()).dump(-1, ' ', false,
                                                                     nlohmann::json::error_handler_t::replace);
  return "{\"error\":" + message + ",\"message\":" + message + ",\"code\":" +
         std::to_string(static_cast<int>(status.code())) + "}";
}

HttpHeaders JsonHeaders() {
  return {{"Access-Control-Allow-Headers", "accept, content-type, authorization"},
          {"Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE"},
          {"Access-Control-Allow-Origin", "*"},
          {"Content-Type", "application/json"},
          {"Grpc-Metadata-Content-Type", "application/grpc"}};
}

void JsonGateway::Serve(const GatewayRoute& route, HttpCall call, CallContextPtr context,
                        std::shared_ptr<HttpReply> reply) const {
  DecodedRequest decoded = DecodeRequest(route, call.body);
  if (!decoded.status.ok()) return SendError(*reply, decoded.status);
  // The gRPC planes' receive limit, measured on the protobuf as etcd's own gateway hits it.
  if (decoded.bytes.size() > max_message_bytes_) {
    return SendError(*reply, Status(StatusCode::kResourceExhausted,
                                    "grpc: received message larger than max (" + std::to_string(decoded.bytes.size()) +
                                        " vs. " + std::to_string(max_message_bytes_) + ")"));
  }
  // The call's context, with the metadata a gRPC call would carry; cancelled when the client goes.
  auto call_context = std::make_shared<CallContext>(std::nullopt, CallMetadata(call));
  // Held by the transport's context, which ends with the exchange (answer done or client gone):
  // the call, its stream handler and their hooks live exactly as long.
  context->cancellation().Add([call_context] { call_context->cancellation().Cancel(); });
  if (route.shape == RpcShape::kUnary) return ServeUnary(route, std::move(decoded.bytes), call_context, std::move(reply));
  ServeStream(route, std::move(decoded.bytes), call_context, std::move(reply));
}

void JsonGateway::ServeUnary(const GatewayRoute& route, std::string request, CallContextPtr context,
                             std::shared_ptr<HttpReply> reply) const {
  const UnaryHandler* handler = router_.FindUnary(route.rpc);
  if (handler == nullptr) return SendError(*reply, Status(StatusCode::kUnimplemented, "unknown method " + std::string(route.rpc)));
  (*handler)(std::move(context), std::move(request),
             [reply = std::move(reply), type = route.response](Status status, std::string response) {
               if (!status.ok()) return SendError(*reply, status);
               reply->Send(200, JsonHeaders(), EncodeResponse(type, response));
             });
}

void JsonGateway::ServeStream(const GatewayRoute& route, std::string request, CallContextPtr context,
                              std::shared_ptr<HttpReply> reply) const {
  const StreamFactory* factory = router_.FindStream(route.rpc);
  if (factory == nullptr) return SendError(*reply, Status(StatusCode::kUnimplemented, "unknown method " + std::string(route.rpc)));
  // The handler is closed once: when the client goes away, or (keep-alive) after its one answer.
  struct Call {
    std::mutex mu;
    std::shared_ptr<StreamHandler> handler;
    bool closed = false;
    void Close() {
      std::shared_ptr<StreamHandler> h;
      {
        const std::lock_guard lock(mu);
        if (closed || !handler) return;
        closed = true;
        h = handler;
      }
      h->OnClose();
    }
  };
  const auto state = std::make_shared<Call>();
  std::function<void()> on_answer;
  if (route.shape == RpcShape::kKeepAlive) {
    // etcd's gateway half-closes after the request and etcd answers it first; the lease service
    // ends a half-closed stream at once, so the half-close waits for that one answer here.
    on_answer = [weak = std::weak_ptr<Call>(state)] {
      if (const auto s = weak.lock()) s->Close();
    };
  }
  auto sink = std::make_shared<JsonLinesSink>(reply, route.response, std::move(on_answer));
  auto handler = (*factory)(context, sink);
  {
    const std::lock_guard lock(state->mu);
    state->handler = handler;
  }
  context->cancellation().Add([weak = std::weak_ptr<Call>(state)] {
    if (const auto s = weak.lock()) s->Close();
  });
  // The handler lives as long as the call: the transport cancels the context when the client goes
  // away or the answer has ended, which runs and releases this hook.
  context->cancellation().Add([state] {});
  handler->OnMessage(std::move(request));
  if (route.shape == RpcShape::kServerStream) state->Close();
}

}  // namespace esp::gateway
