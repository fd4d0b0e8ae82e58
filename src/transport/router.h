#pragma once
// The seam between transports and services. A transport (today gRPC's generic callback server,
// later our own HTTP/2 event loop) looks a method path up here and hands over raw message bytes;
// services register typed handlers and never see a transport's call objects.
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "transport/call_context.h"
#include "transport/status.h"

namespace esp {

// Completion of a unary call: status plus the serialized response (ignored unless ok).
using UnaryDone = std::function<void(Status, std::string)>;
using UnaryHandler = std::function<void(CallContextPtr, std::string request, UnaryDone done)>;

// Transport side of a bidirectional stream, as seen by a service. Thread-safe.
class StreamSink {
 public:
  virtual ~StreamSink() = default;
  // Queues one message. Returns false once the stream has finished (the message is dropped).
  virtual bool Write(std::string message) = 0;
  // Queues one message made of `head` then `body`: a broadcast body serialized once for many
  // streams goes out behind each stream's own head without being joined into a string first.
  virtual bool WriteParts(std::string_view head, std::string_view body) {
    std::string message;
    message.reserve(head.size() + body.size());
    message.append(head).append(body);
    return Write(std::move(message));
  }
  // Ends the stream with `status`; later calls and writes are ignored.
  virtual void Finish(Status status) = 0;
  // Bytes written but not yet taken by the transport: how far the client lags behind, so a
  // service can bound what a slow client costs.
  virtual std::size_t QueuedBytes() const { return 0; }
};

// Service side of a bidirectional stream. The transport calls it from one thread at a time.
class StreamHandler {
 public:
  virtual ~StreamHandler() = default;
  virtual void OnMessage(std::string message) = 0;
  // The client half-closed, cancelled or the stream finished. Called once, last.
  virtual void OnClose() = 0;
};

using StreamFactory =
    std::function<std::shared_ptr<StreamHandler>(CallContextPtr, std::shared_ptr<StreamSink>)>;

// Handlers that answer every call with `status`, for methods the proxy refuses or lacks.
UnaryHandler RefuseUnary(Status status);
StreamFactory RefuseStream(Status status);

class Router {
  // Lookups by string_view without building a std::string per call (C++20 heterogeneous lookup).
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  template <class V>
  using Table = std::unordered_map<std::string, V, Hash, std::equal_to<>>;

 public:
  void AddUnary(std::string method, UnaryHandler handler);
  void AddStream(std::string method, StreamFactory factory);

  // Typed registration: parses the request, serializes the response.
  template <class Req, class Resp>
  void AddTyped(std::string method,
                std::function<void(CallContextPtr, const Req&, std::function<void(Status, Resp)>)> fn);

  // Wraps every handler registered so far: cross-cutting concerns (metrics, request logs) sit at
  // the seam once instead of inside each service. Call after every service has registered.
  void WrapUnary(const std::function<UnaryHandler(const std::string& method, UnaryHandler)>& wrap);
  void WrapStreams(const std::function<StreamFactory(const std::string& method, StreamFactory)>& wrap);

  const UnaryHandler* FindUnary(std::string_view method) const;
  const StreamFactory* FindStream(std::string_view method) const;

 private:
  Table<UnaryHandler> unary_;
  Table<StreamFactory> streams_;
};

template <class Req, class Resp>
void Router::AddTyped(
    std::string method,
    std::function<void(CallContextPtr, const Req&, std::function<void(Status, Resp)>)> fn) {
  AddUnary(std::move(method), [fn = std::move(fn)](CallContextPtr ctx, std::string bytes,
                                                   UnaryDone done) {
    Req request;
    if (!request.ParseFromString(bytes)) {
      done(Status(StatusCode::kInternal, "grpc: error unmarshalling request"), {});
      return;
    }
    fn(std::move(ctx), request, [done = std::move(done)](Status status, Resp response) {
      if (!status.ok()) {
        done(std::move(status), {});
        return;
      }
      done(Status::Ok(), response.SerializeAsString());
    });
  });
}

}  // namespace esp
