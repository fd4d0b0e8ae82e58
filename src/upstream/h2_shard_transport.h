#pragma once
// ShardTransport over our own HTTP/2 client (nghttp2 on the upstream event loops): one
// connection per member per loop, so a call stays on the loop that started it. Same retry rules,
// error texts and member health as GrpcShardTransport (upstream/retry_policy.h).
#include <openssl/ssl.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.h"
#include "upstream/grpc_shard_transport.h"  // UpstreamTuning
#include "upstream/h2_client_connection.h"
#include "upstream/shard_transport.h"

namespace esp {

class H2ShardTransport final : public ShardTransport, public std::enable_shared_from_this<H2ShardTransport> {
 public:
  // Create with std::make_shared. Throws ConfigError on unreadable TLS files or unresolvable members.
  H2ShardTransport(const ShardConfig& shard, std::string description, UpstreamTuning tuning = {},
                   std::shared_ptr<UpstreamLoops> loops = UpstreamLoops::Shared());
  ~H2ShardTransport() override;

  const std::string& description() const override { return description_; }
  void Unary(const std::string& method, const CallContextPtr& ctx, std::string request, UnaryOptions options,
             UnaryDone done) override;
  std::shared_ptr<UpstreamStream> OpenStream(const std::string& method, const Metadata& metadata,
                                             std::shared_ptr<UpstreamStreamObserver> observer) override;

  struct Member;
  struct Attempt;

  // Loop thread only: the member's connection on `loop`, (re)connecting when needed. With an
  // `identity` (a client-certificate CN), a connection presenting a certificate for that CN.
  std::shared_ptr<H2ClientConnection> ConnectionTo(std::size_t loop, std::size_t member,
                                                   const std::string& identity = {});
  // The CN a call with this metadata runs as on the shard, or "" for the usual connection: only
  // with an identity issuer, and only without a token (etcd lets a token win over a certificate).
  std::string IdentityOf(const Metadata& metadata) const;

  // Identities with connections, over every loop (bounded by UpstreamTuning). Any thread.
  std::size_t identity_connection_count() const { return identity_rows_total_.load(); }
  // Round robin over members not known to be down, avoiding `avoid`; any thread.
  std::size_t PickMember(std::size_t avoid);
  // Whether `member` is down and still inside its reconnect backoff (calls fail fast).
  bool InBackoff(std::size_t member) const;
  // UNAVAILABLE for a call failed fast inside `member`'s backoff, with its last connect error.
  Status BackoffStatus(std::size_t member) const;
  const std::string& endpoint(std::size_t member) const;

 private:
  // The request's metadata as this shard must see it (the auth token translated).
  Metadata Translated(const Metadata& metadata) const;
  void StartAttempt(const std::shared_ptr<Attempt>& attempt);
  void NoteConnectResult(std::size_t member, bool ok, const std::string& error);
  // Loop thread only: (re)connects `slot` to `member` with `ssl_ctx` unless it is usable;
  // `on_connected` hears the attempt's outcome.
  std::shared_ptr<H2ClientConnection> Connect(std::shared_ptr<H2ClientConnection>& slot, std::size_t loop,
                                              std::size_t member, SSL_CTX* ssl_ctx,
                                              std::function<void(bool ok, const std::string& error)> on_connected);
  struct IdentityRow;
  // Loop thread only: the row of `identity`'s connections on `loop`, created (and the loop's rows
  // pruned) when missing; nullptr when no certificate can be had.
  std::shared_ptr<IdentityRow> IdentityRowFor(std::size_t loop, const std::string& identity);
  // A freshly minted certificate for `identity` into `row`; false (logged) when none can be had.
  bool IssueInto(IdentityRow& row, const std::string& identity);
  void PruneIdentities(std::size_t loop, bool make_room);
  // Loop thread only: a timer that closes idle identities while the loop has any.
  void ArmPruneTimer(std::size_t loop);

  std::string description_;
  UpstreamTuning tuning_;
  std::string server_name_;  // the shard's `tls.server_name`: checked instead of the member's host
  std::shared_ptr<UpstreamLoops> loops_;
  SSL_CTX* ssl_ctx_ = nullptr;
  std::vector<std::unique_ptr<Member>> members_;
  // connections_[loop][member]; each row touched only on its loop's thread.
  std::vector<std::vector<std::shared_ptr<H2ClientConnection>>> connections_;
  // Per loop: connections replaced after a GOAWAY, kept until their calls have finished.
  std::vector<std::vector<std::shared_ptr<H2ClientConnection>>> retired_;
  std::atomic<std::size_t> next_member_{0};
  std::shared_ptr<auth::IdentityIssuer> issuer_;
  // Per loop: CN -> that identity's connections; touched only on the loop's thread.
  std::vector<std::unordered_map<std::string, std::shared_ptr<IdentityRow>>> identity_rows_;
  std::vector<EventLoop::TimerId> prune_timers_;  // per loop; 0: none armed
  std::atomic<std::size_t> identity_rows_total_{0};
};

}  // namespace esp
