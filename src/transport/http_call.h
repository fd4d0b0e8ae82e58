#pragma once
// The seam for plain HTTP on the client port (etcd's HTTP face: the JSON gateway, /health,
// /version, /metrics). The HTTP/1.1 connection and the HTTP/2 connection (a request that is not
// gRPC) both hand an `HttpCall` and an `HttpReply` to one `HttpHandler`; the handler never sees
// either connection. Cancellation of the call's context says the client went away.
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "transport/call_context.h"

namespace esp {

// Header names in lower case (HTTP/2 sends them so; the HTTP/1.1 parser's are folded).
using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpCall {
  std::string method;
  std::string target;  // path and query, as sent
  HttpHeaders headers;
  std::string body;
  // A verified client certificate's CN ("" without one): the same identity a gRPC call gets.
  std::string client_cn;

  std::string_view path() const {
    const std::string_view t = target;
    return t.substr(0, t.find('?'));
  }
  std::string_view query() const {
    const auto q = target.find('?');
    return q == std::string::npos ? std::string_view() : std::string_view(target).substr(q + 1);
  }
  const std::string* Header(std::string_view name) const {
    for (const auto& [key, value] : headers) {
      if (key == name) return &value;
    }
    return nullptr;
  }
};

// The response side. Thread-safe: completions may come from any thread; each method posts to the
// connection's loop. Either one Send, or Begin, any number of Write, then End.
class HttpReply {
 public:
  virtual ~HttpReply() = default;
  // A whole response (Content-Length on HTTP/1.1).
  virtual void Send(int status, HttpHeaders headers, std::string body) = 0;
  // A streamed response (chunked on HTTP/1.1, DATA frames on HTTP/2).
  virtual void Begin(int status, HttpHeaders headers) = 0;
  // Queues a piece of a streamed response; false once the client is gone (the piece is dropped).
  virtual bool Write(std::string piece) = 0;
  virtual void End() = 0;
  // Bytes written and not yet taken by the socket: how far a streaming client lags.
  virtual std::size_t QueuedBytes() const = 0;
};

using HttpHandler = std::function<void(HttpCall call, CallContextPtr context, std::shared_ptr<HttpReply> reply)>;

// Reason phrases for the status lines the HTTP face answers with.
inline std::string_view HttpReason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 412: return "Precondition Failed";
    case 413: return "Request Entity Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
  }
}

}  // namespace esp
