#include "gateway/http_face.h"

#include <string_view>

namespace esp::gateway {
namespace {

// Go's net/http answers for what nobody serves (etcd's mux outside /v3/), and grpc-gateway's
// inside /v3/ (etcd 3.4.23 measured: "404 page not found" and "Not Found", "Method Not Allowed").
void PlainText(HttpReply& reply, int status, std::string body) {
  reply.Send(status, {{"Content-Type", "text/plain; charset=utf-8"}, {"X-Content-Type-Options", "nosniff"}},
             std::move(body));
}

std::multimap<std::string, std::string> ParseQuery(std::string_view query) {
  std::multimap<std::string, std::string> out;
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const auto eq = pair.find('=');
    if (!pair.empty()) {
      out.emplace(std::string(pair.substr(0, eq)), eq == std::string_view::npos ? "" : std::string(pair.substr(eq + 1)));
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return out;
}

}  // namespace

void HttpFace::Serve(HttpCall call, CallContextPtr context, std::shared_ptr<HttpReply> reply) const {
  const std::string path(call.path());
  if (const GatewayRoute* route = FindRoute(path)) {
    if (call.method != "POST") return PlainText(*reply, 405, "Method Not Allowed\n");
    return gateway_.Serve(*route, std::move(call), std::move(context), std::move(reply));
  }
  if (path.starts_with("/v3/")) return PlainText(*reply, 404, "Not Found\n");
  if (const auto async = async_endpoints_.find(path); async != async_endpoints_.end()) {
    // The reply is thread-safe: the answer may come from another thread, after this returns.
    return async->second(HttpRequest{path, ParseQuery(call.query())}, [reply](HttpResponse response) {
      reply->Send(response.status, {{"Content-Type", response.content_type}}, std::move(response.body));
    });
  }
  const auto endpoint = endpoints_.find(path);
  if (endpoint == endpoints_.end()) return PlainText(*reply, 404, "404 page not found\n");
  // The operator port's handlers read snapshots only: they answer at once, on this loop.
  const HttpResponse response = endpoint->second(HttpRequest{path, ParseQuery(call.query())});
  reply->Send(response.status, {{"Content-Type", response.content_type}}, response.body);
}

}  // namespace esp::gateway
