// libFuzzer target for the JSON gateway's request decoding (src/gateway/json_gateway): what an
// HTTP client posts to /v3/... becomes the RPC's protobuf bytes through protobuf's JSON parser
// before any service sees it. The first byte picks the route (the path); the rest is the body.
// Checked besides ASan/UBSan:
// - an accepted body yields bytes that parse as the route's request message and serialize back
//   to themselves (the services read these bytes with their own scanners);
// - the JSON the gateway would write for those bytes decodes to the same bytes again (int64 as
//   strings, bytes as base64, enum names: the gateway's two directions agree);
// - a refused body is INVALID_ARGUMENT (HTTP 400) with etcd's error body, valid JSON whatever
//   bytes protobuf's error message quotes.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include <google/protobuf/message.h>
#include <nlohmann/json.hpp>

#include "gateway/json_gateway.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

std::unique_ptr<google::protobuf::Message> NewMessage(const google::protobuf::Descriptor* type) {
  return std::unique_ptr<google::protobuf::Message>(
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(type)->New());
}

void CheckAccepted(const esp::gateway::GatewayRoute& route, const std::string& bytes) {
  const auto message = NewMessage(route.request);
  Check(message->ParseFromString(bytes), "decoded bytes do not parse as the route's request");
  Check(message->SerializeAsString() == bytes, "decoded bytes do not serialize back to themselves");
  // The gateway's JSON for these bytes (as it writes answers) reads back to the same request.
  const std::string json = esp::gateway::EncodeResponse(route.request, bytes);
  Check(!json.empty(), "a decoded request has no JSON form");
  const esp::gateway::DecodedRequest again = esp::gateway::DecodeRequest(route, json);
  if (!again.status.ok() || again.bytes != bytes) {
    std::fprintf(stderr, "route %.*s json %s\n", static_cast<int>(route.path.size()), route.path.data(), json.c_str());
    Check(false, "the gateway's JSON of a request does not decode to the same request");
  }
}

void CheckRefused(const esp::Status& status) {
  Check(status.code() == esp::StatusCode::kInvalidArgument, "a refused body is not INVALID_ARGUMENT");
  Check(esp::gateway::HttpStatusFromCode(status.code()) == 400, "a refused body is not HTTP 400");
  const auto body = nlohmann::json::parse(esp::gateway::ErrorBody(status), nullptr, /*allow_exceptions=*/false);
  Check(!body.is_discarded(), "etcd's error body is not JSON");
  Check(body["code"] == 3 && body["error"].is_string() && body["message"] == body["error"], "error body fields");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const auto& routes = esp::gateway::AllRoutes();
  const esp::gateway::GatewayRoute& route = routes[data[0] % routes.size()];
  Check(esp::gateway::FindRoute(route.path) == &route, "a route is not found by its own path");
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  const esp::gateway::DecodedRequest decoded = esp::gateway::DecodeRequest(route, body);
  if (decoded.status.ok()) {
    CheckAccepted(route, decoded.bytes);
  } else {
    CheckRefused(decoded.status);
  }
  return 0;
}
