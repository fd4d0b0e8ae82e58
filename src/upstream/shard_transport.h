#pragma once
// How services reach one shard (one etcd cluster). Requests and responses are serialized
// protobuf bytes, so the implementation (gRPC client today, our own HTTP/2 client later) can
// forward them without knowing their types.
#include <memory>
#include <string>

#include "transport/call_context.h"
#include "transport/router.h"
#include "transport/status.h"

namespace esp {

struct UnaryOptions {
  // Safe to send again to another member after a transport failure (reads).
  bool idempotent = false;
};

inline constexpr UnaryOptions kRead{.idempotent = true};
inline constexpr UnaryOptions kWrite{.idempotent = false};

// Receives what an upstream stream delivers. Calls are serialized per stream.
class UpstreamStreamObserver {
 public:
  virtual ~UpstreamStreamObserver() = default;
  virtual void OnMessage(std::string message) = 0;
  // The stream ended; called once, last.
  virtual void OnClose(Status status) = 0;
};

class UpstreamStream {
 public:
  virtual ~UpstreamStream() = default;
  // Queues a message; false once the stream has ended.
  virtual bool Write(std::string message) = 0;
  // Half-closes after every queued message is sent.
  virtual void CloseSend() = 0;
  virtual void Cancel() = 0;
};

class ShardTransport {
 public:
  virtual ~ShardTransport() = default;

  // A human-readable identity for errors and logs, e.g. `shard "s1" [a, b)`.
  virtual const std::string& description() const = 0;

  // `method` is the full path, e.g. "/etcdserverpb.KV/Range". `done` runs exactly once, on any
  // thread. Transport failures (shard unreachable, deadline) carry the shard's description;
  // errors that etcd itself returned are passed on untouched.
  virtual void Unary(const std::string& method, const CallContextPtr& ctx, std::string request,
                     UnaryOptions options, UnaryDone done) = 0;

  // Opens a bidirectional stream carrying `metadata`. The observer is kept until OnClose.
  virtual std::shared_ptr<UpstreamStream> OpenStream(
      const std::string& method, const Metadata& metadata,
      std::shared_ptr<UpstreamStreamObserver> observer) = 0;
};

}  // namespace esp
