#pragma once
// ShardTransport over gRPC C++: one channel per member of the shard's etcd cluster.
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "upstream/shard_transport.h"

namespace grpc {
class Channel;
template <class RequestType, class ResponseType>
class TemplatedGenericStub;
class ByteBuffer;
class Status;
}  // namespace grpc

namespace esp {

namespace auth {
class IdentityIssuer;
}

struct UpstreamTuning {
  int keepalive_time_ms = 30000;   // etcd refuses pings more often than every 5 s
  int keepalive_timeout_ms = 10000;
  int min_reconnect_backoff_ms = 100;
  int max_reconnect_backoff_ms = 1000;
  // How long one connection attempt (TCP, TLS handshake, the server's SETTINGS) may take.
  int connect_timeout_ms = 5000;
  // Told of every retry on another member (metrics); may be empty.
  std::function<void(const std::string& method)> on_retry;
  // Rewrites the client's `token` metadata for this shard (the proxy's composite auth tokens
  // carry one token per shard); empty: forwarded unchanged. Applied to every call and stream,
  // so services never see per-shard tokens.
  std::function<std::string(std::string_view token)> translate_token;
  // Mints the certificates that carry a client-certificate identity (CN) to the shard; empty: calls
  // carrying one go over the shard's usual connection (config `client_cert_identity`, h2 only).
  std::shared_ptr<auth::IdentityIssuer> identity_issuer;
  // Bounds on those identities' connections: identities kept per event loop (the least recently
  // used idle one is closed to make room), and how long an identity's connections stay idle.
  std::size_t max_identities_per_loop = 64;
  std::chrono::milliseconds identity_idle{60000};
};

class GrpcShardTransport final : public ShardTransport,
                                 public std::enable_shared_from_this<GrpcShardTransport> {
 public:
  // Create with std::make_shared: calls in flight keep the transport alive.
  GrpcShardTransport(const ShardConfig& shard, std::string description, UpstreamTuning tuning = {});
  ~GrpcShardTransport() override;

  const std::string& description() const override { return description_; }
  void Unary(const std::string& method, const CallContextPtr& ctx, std::string request,
             UnaryOptions options, UnaryDone done) override;
  std::shared_ptr<UpstreamStream> OpenStream(const std::string& method, const Metadata& metadata,
                                             std::shared_ptr<UpstreamStreamObserver> observer) override;

  struct Member;

 private:
  struct Attempt;
  void StartAttempt(std::shared_ptr<Attempt> attempt);
  void NoteReachability(Member& member, const grpc::Status& status);
  std::size_t PickMember(std::size_t avoid);

  std::string description_;
  std::function<void(const std::string& method)> on_retry_;
  std::function<std::string(std::string_view token)> translate_token_;
  std::vector<std::unique_ptr<Member>> members_;
  std::atomic<std::size_t> next_member_{0};
};

}  // namespace esp
