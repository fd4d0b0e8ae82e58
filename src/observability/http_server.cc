#include "observability/http_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>

#include <cstring>
#include <optional>

namespace esp {
namespace {

std::optional<sockaddr_in> ParseIpv4(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  if (inet_pton(AF_INET, address.substr(0, colon).c_str(), &addr.sin_addr) != 1) return std::nullopt;
  const std::string port = address.substr(colon + 1);
  char* end = nullptr;
  const long value = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || value < 0 || value > 65535) return std::nullopt;
  addr.sin_port = htons(static_cast<std::uint16_t>(value));
  return addr;
}

MHD_Result CollectQuery(void* cls, MHD_ValueKind, const char* key, const char* value) {
  static_cast<HttpRequest*>(cls)->query.emplace(key, value ? value : "");
  return MHD_YES;
}

MHD_Result Send(MHD_Connection* connection, const HttpResponse& response, bool head) {
  // MUST_COPY: the body string dies when this function returns.
  MHD_Response* reply = MHD_create_response_from_buffer(head ? 0 : response.body.size(),
                                                        const_cast<char*>(response.body.data()), MHD_RESPMEM_MUST_COPY);
  if (reply == nullptr) return MHD_NO;
  MHD_add_response_header(reply, MHD_HTTP_HEADER_CONTENT_TYPE, response.content_type.c_str());
  if (response.status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(reply, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
  const MHD_Result queued = MHD_queue_response(connection, static_cast<unsigned>(response.status), reply);
  MHD_destroy_response(reply);
  return queued;
}

MHD_Result OnRequest(void* cls, MHD_Connection* connection, const char* url, const char* method, const char*,
                    const char*, size_t* upload_size, void** state) {
  // libmicrohttpd calls once for the headers, then again for the body: answer on the second call
  // (operator endpoints take no body; anything uploaded is discarded).
  if (*state == nullptr) {
    *state = connection;
    return MHD_YES;
  }
  if (*upload_size != 0) {
    *upload_size = 0;
    return MHD_YES;
  }
  const bool get = std::strcmp(method, MHD_HTTP_METHOD_GET) == 0;
  const bool head = std::strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
  if (!get && !head) return Send(connection, {MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "Method Not Allowed\n"}, false);
  HttpRequest request{url, {}};
  MHD_get_connection_values(connection, MHD_GET_ARGUMENT_KIND, &CollectQuery, &request);
  return Send(connection, static_cast<const HttpServer*>(cls)->Dispatch(request), head);
}

}  // namespace

void HttpServer::DaemonDeleter::operator()(MHD_Daemon* daemon) const { MHD_stop_daemon(daemon); }

HttpServer::HttpServer(std::string address) : address_(std::move(address)) {}

HttpServer::~HttpServer() { Stop(); }

bool HttpServer::Start() {
  auto addr = ParseIpv4(address_);
  if (!addr) {
    spdlog::error("invalid metrics address {} (want IPv4 host:port)", address_);
    return false;
  }
  // epoll, not select(): select() cannot watch a descriptor numbered FD_SETSIZE (1024) or more,
  // and the data plane's client connections push the listener's numbers past it. In select mode
  // libmicrohttpd then drops every operator connection, and /livez failing restarts a healthy
  // proxy.
  daemon_.reset(MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0, nullptr, nullptr,
                                 &OnRequest, this, MHD_OPTION_SOCK_ADDR, &*addr,
                                 MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END));
  if (!daemon_) {
    spdlog::error("cannot listen on {}: {}", address_, std::strerror(errno));
    return false;
  }
  const MHD_DaemonInfo* info = MHD_get_daemon_info(daemon_.get(), MHD_DAEMON_INFO_BIND_PORT);
  port_ = info != nullptr ? info->port : ntohs(addr->sin_port);
  return true;
}

void HttpServer::Stop() { daemon_.reset(); }

HttpResponse HttpServer::Dispatch(const HttpRequest& request) const {
  const auto it = handlers_.find(request.path);
  if (it == handlers_.end()) return {404, "text/plain; charset=utf-8", "404 page not found\n"};
  return it->second(request);
}

}  // namespace esp
