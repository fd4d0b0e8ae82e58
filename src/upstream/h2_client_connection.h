#pragma once
// One HTTP/2 connection from the proxy to one etcd member (h2c with prior knowledge, or TLS with
// ALPN "h2"), carrying gRPC calls. Lives on one event loop and is touched only on its thread;
// the transport reaches it through EventLoop::Post. Output is serialized and written once per
// loop turn for everything the turn produced (UpstreamLoops flushes dirty connections).
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "transport/call_context.h"
#include "transport/event_loop.h"
#include "transport/grpc_framing.h"
#include "transport/header_limits.h"
#include "transport/socket_io.h"
#include "transport/status.h"

namespace esp {

class H2ClientConnection;

// A pool of event loops for upstream connections, shared by every H2ShardTransport of the process.
class UpstreamLoops {
 public:
  explicit UpstreamLoops(std::size_t count);
  ~UpstreamLoops();
  UpstreamLoops(const UpstreamLoops&) = delete;
  UpstreamLoops& operator=(const UpstreamLoops&) = delete;

  // The process-wide pool (one loop per core unless SetSharedSize said otherwise), started on
  // first use, stopped at exit.
  static std::shared_ptr<UpstreamLoops> Shared();
  // Sizes the pool (0: one loop per core). Before the first Shared(); later calls change nothing.
  static void SetSharedSize(std::size_t count);

  std::size_t size() const { return slots_.size(); }
  EventLoop& loop(std::size_t index) { return *slots_[index]->loop; }
  // The loops themselves, for the client-facing data plane to run its connections on too: a
  // call started on loop i then uses loop i's upstream connections and completes on loop i.
  std::vector<std::shared_ptr<EventLoop>> loops() const;
  // The calling thread's loop if it is one of ours (no hop), else the next one round robin.
  std::size_t Pick();
  // Loop thread only: flush `connection` at the end of this turn.
  void MarkDirty(std::size_t index, std::shared_ptr<H2ClientConnection> connection);

 private:
  struct Slot {
    std::shared_ptr<EventLoop> loop;
    std::vector<std::shared_ptr<H2ClientConnection>> dirty;
    std::vector<std::shared_ptr<H2ClientConnection>> flushing;
  };
  std::vector<std::unique_ptr<Slot>> slots_;
  std::atomic<std::size_t> next_{0};
};

struct H2ClientOptions {
  std::string authority;     // host:port for :authority
  bool tls = false;
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds keepalive_time{30000};  // etcd refuses pings more often than every 5 s
  std::chrono::milliseconds keepalive_timeout{10000};
};

// One call on the connection, as the transport sees it. Loop thread only.
struct H2ClientCall {
  std::function<void(std::string message)> on_message;
  // Called once, last. `never_sent`: the request never left (no connection, refused stream).
  std::function<void(Status status, bool never_sent)> on_close;

  // Connection's bookkeeping.
  std::string path;
  Metadata metadata;
  std::optional<Clock::time_point> deadline;
  std::int32_t id = -1;  // -1 until submitted to nghttp2
  std::string out;       // framed messages not yet taken by nghttp2
  std::size_t out_offset = 0;
  bool half_closed = false;
  bool deferred = false;
  bool closed = false;
  MessageDeframer deframer{std::size_t{1} << 31};
  int http_status = 0;
  std::optional<int> grpc_status;
  std::string grpc_message;
  std::optional<Status> local_status;  // set when we reset the stream ourselves
  EventLoop::TimerId deadline_timer = 0;
  std::size_t pending() const { return out.size() - out_offset; }
};

class H2ClientConnection : public std::enable_shared_from_this<H2ClientConnection> {
 public:
  // `on_connected(ok, error)` reports the outcome of the connection attempt (member health).
  H2ClientConnection(UpstreamLoops& loops, std::size_t loop_index, sockaddr_storage address, socklen_t address_len,
                     SSL_CTX* ssl_ctx, std::string verify_name, H2ClientOptions options,
                     std::function<void(bool ok, const std::string& error)> on_connected);
  ~H2ClientConnection();
  H2ClientConnection(const H2ClientConnection&) = delete;
  H2ClientConnection& operator=(const H2ClientConnection&) = delete;

  void Connect();
  // New calls may go here: not closed and no GOAWAY received.
  bool usable() const { return state_ != State::kClosed && !goaway_; }
  bool closed() const { return state_ == State::kClosed; }
  // No call started or waiting: dropping the connection loses nothing.
  bool idle() const { return calls_.empty() && waiting_.empty(); }

  void Start(const std::shared_ptr<H2ClientCall>& call);
  void Write(const std::shared_ptr<H2ClientCall>& call, std::string_view message);
  void CloseSend(const std::shared_ptr<H2ClientCall>& call);
  // Resets the call (RST_STREAM CANCEL) and ends it with `status`.
  void Reset(const std::shared_ptr<H2ClientCall>& call, Status status);
  void Flush();

  // nghttp2 callbacks.
  int OnHeader(const nghttp2_frame* frame, std::string_view name, std::string_view value);
  int OnFrameRecv(const nghttp2_frame* frame);
  int OnDataChunk(std::int32_t stream_id, const std::uint8_t* data, std::size_t length);
  int OnStreamClose(std::int32_t stream_id, std::uint32_t error_code);
  ssize_t ReadData(std::int32_t stream_id, std::uint8_t* buf, std::size_t length, std::uint32_t* flags);

 private:
  enum class State { kIdle, kConnecting, kHandshaking, kReady, kClosed };

  void OnEvents(std::uint32_t events);
  void OnConnectDone();
  void ContinueHandshake();
  void BecomeReady();
  void FailConnect(const std::string& error);
  void DoRead();
  void MarkDirty();
  void Submit(const std::shared_ptr<H2ClientCall>& call);
  // Why a request with these headers must not be sent (header_limits.h), or nullopt.
  std::optional<std::string> HeaderListTooLarge(const std::vector<nghttp2_nv>& headers) const;
  void Complete(const std::shared_ptr<H2ClientCall>& call, Status status, bool never_sent);
  void CloseWithError(const std::string& error);
  void ArmKeepalive();
  void UpdateInterest();
  bool CarriesKeyCalls() const;
  void DeliverMessages(H2ClientCall& call);

  UpstreamLoops& loops_;
  std::size_t loop_index_;
  EventLoop& loop_;
  sockaddr_storage address_;
  socklen_t address_len_;
  SSL_CTX* ssl_ctx_;
  std::string verify_name_;
  H2ClientOptions options_;
  std::function<void(bool, const std::string&)> on_connected_;

  State state_ = State::kIdle;
  int fd_ = -1;
  SSL* ssl_ = nullptr;
  nghttp2_session* session_ = nullptr;
  bool goaway_ = false;
  bool dirty_ = false;
  std::uint32_t interest_ = 0;
  OutBuffer outbuf_;
  std::vector<std::shared_ptr<H2ClientCall>> waiting_;  // started before the connection was ready
  std::map<std::int32_t, std::shared_ptr<H2ClientCall>> calls_;
  EventLoop::TimerId connect_timer_ = 0;
  EventLoop::TimerId keepalive_timer_ = 0;
  bool ping_outstanding_ = false;
  std::chrono::steady_clock::time_point ping_sent_;
};

}  // namespace esp
