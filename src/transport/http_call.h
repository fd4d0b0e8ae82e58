#pragma once
// The seam for plain HTTP on the client port (etcd's HTTP face: the JSON gateway, /health,
// /version, /metrics). The HTTP/1.1 connection and the HTTP/2 connection (a request that is not
// gRPC) both hand an `HttpCall` and an `HttpReply` to one `HttpHandler`; the handler never sees
// either connection. Cancellation of the call's context says the client went away.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "transport/call_context.h"
#include "transport/event_loop.h"

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

// What the HTTP/1.1 and the HTTP/2 replies share: thread-safe bookkeeping of the bytes queued
// towards the client and of the end, and every operation posted to the connection's loop, where
// it runs only while `Exchange` (reached through a weak pointer: the request's stream or
// exchange) still has its `connection`. A reply for a closed connection finds nothing.
template <class Connection, class Exchange>
class LoopHttpReply : public HttpReply {
 public:
  LoopHttpReply(std::shared_ptr<EventLoop> loop, std::weak_ptr<Exchange> exchange)
      : loop_(std::move(loop)), exchange_(std::move(exchange)) {}

  std::size_t QueuedBytes() const final { return queued_.load(std::memory_order_relaxed); }
  // The socket took `n` queued bytes.
  void OnSent(std::size_t n) {
    std::size_t current = queued_.load(std::memory_order_relaxed);
    while (!queued_.compare_exchange_weak(current, current - std::min(current, n), std::memory_order_relaxed)) {
    }
  }

 protected:
  // True the first time only: what ends the reply runs once.
  bool MarkEnded() { return !ended_.exchange(true); }
  bool Writable() const { return !ended_.load(std::memory_order_acquire) && !exchange_.expired(); }
  void Queue(std::size_t bytes) { queued_.fetch_add(bytes, std::memory_order_relaxed); }
  template <class Task>
  void OnLoop(Task task) {
    loop_->Post([exchange = exchange_, task = std::move(task)]() mutable {
      if (const auto e = exchange.lock(); e && e->connection != nullptr) task(*e->connection, *e);
    });
  }

 private:
  std::shared_ptr<EventLoop> loop_;
  std::weak_ptr<Exchange> exchange_;
  std::atomic<std::size_t> queued_{0};
  std::atomic<bool> ended_{false};
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
