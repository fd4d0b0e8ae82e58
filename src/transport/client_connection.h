#pragma once
// What a loop of the client-facing data plane holds per accepted socket, whatever it speaks:
// HTTP/2 (gRPC, or plain HTTP on h2) in H2Connection, HTTP/1.1 in Http1Connection. The loop
// flushes dirty connections once per turn and drops closed ones after the turn.
namespace esp {

class ClientConnection {
 public:
  virtual ~ClientConnection() = default;
  virtual bool Start() = 0;
  // Writes whatever the turn produced: once per loop turn (coalescing).
  virtual void Flush() = 0;
  // Graceful shutdown: the requests in flight finish, then the connection closes.
  virtual void Drain() = 0;
  // Closes now, cancelling the calls in flight.
  virtual void Close() = 0;
  virtual bool closed() const = 0;
  // The owner clears this when it flushes.
  virtual void ClearDirty() = 0;
};

// The per-loop table of connections: told when a connection has output to flush this turn and
// when it has closed (to drop it after the turn, never from inside its own callbacks).
class ClientConnectionOwner {
 public:
  virtual ~ClientConnectionOwner() = default;
  virtual void OnDirty(ClientConnection* connection) = 0;
  virtual void OnClosed(ClientConnection* connection) = 0;
};

}  // namespace esp
