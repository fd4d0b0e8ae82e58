#pragma once
// A small blocking etcd v3 client (gRPC C++'s synchronous stubs) for the meta store and for the
// operator commands. Never used on a request path: the proxy calls it from the map follower's
// own threads, the `map` commands from main.
//
// One channel per endpoint; a call that finds its endpoint unavailable tries the next one. With
// a user, the client authenticates on first use and again when a token is refused as expired.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "etcdserverpb/rpc.grpc.pb.h"

namespace esp::meta {

struct EtcdClientOptions {
  std::vector<std::string> endpoints;  // host:port (a leading http:// or https:// is dropped)
  std::optional<TlsClientConfig> tls;
  std::string user;      // empty: no authentication
  std::string password;  // read from a file by the caller, never from a flag
  std::chrono::milliseconds call_timeout{3000};
};

using WatchStream = grpc::ClientReaderWriter<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>;
using KeepAliveStream = grpc::ClientReaderWriter<etcdserverpb::LeaseKeepAliveRequest, etcdserverpb::LeaseKeepAliveResponse>;
using SnapshotStream = grpc::ClientReader<etcdserverpb::SnapshotResponse>;

class EtcdClient {
 public:
  explicit EtcdClient(EtcdClientOptions options);

  const EtcdClientOptions& options() const { return options_; }
  // "127.0.0.1:2379,127.0.0.1:2380" for messages.
  std::string EndpointList() const;

  grpc::Status Range(const etcdserverpb::RangeRequest& request, etcdserverpb::RangeResponse* response);
  grpc::Status Put(const etcdserverpb::PutRequest& request, etcdserverpb::PutResponse* response);
  grpc::Status DeleteRange(const etcdserverpb::DeleteRangeRequest& request, etcdserverpb::DeleteRangeResponse* response);
  grpc::Status Compact(const etcdserverpb::CompactionRequest& request, etcdserverpb::CompactionResponse* response);
  grpc::Status Txn(const etcdserverpb::TxnRequest& request, etcdserverpb::TxnResponse* response);
  grpc::Status LeaseGrant(const etcdserverpb::LeaseGrantRequest& request, etcdserverpb::LeaseGrantResponse* response);
  grpc::Status LeaseRevoke(const etcdserverpb::LeaseRevokeRequest& request, etcdserverpb::LeaseRevokeResponse* response);
  grpc::Status LeaseTimeToLive(const etcdserverpb::LeaseTimeToLiveRequest& request,
                               etcdserverpb::LeaseTimeToLiveResponse* response);
  grpc::Status LeaseLeases(const etcdserverpb::LeaseLeasesRequest& request, etcdserverpb::LeaseLeasesResponse* response);
  grpc::Status Status(etcdserverpb::StatusResponse* response);

  // Auth service calls, for copying users and roles to a new shard.
  etcdserverpb::Auth::Stub& AuthStub();
  // Prepares `context` for a call: deadline (call_timeout from now) and the token, if any.
  // Returns an error status when authentication itself failed. `renew_token`: authenticate
  // again first (the previous call's token was refused: TokenRefused).
  grpc::Status Prepare(grpc::ClientContext& context, bool renew_token = false);

  // Long-lived streams on the current endpoint; `context` (the caller's) can cancel them from
  // another thread. No deadline is set; the token is.
  std::unique_ptr<WatchStream> Watch(grpc::ClientContext& context);
  std::unique_ptr<KeepAliveStream> LeaseKeepAlive(grpc::ClientContext& context);
  // The member's database as etcd streams it (Maintenance.Snapshot), from the current endpoint:
  // a snapshot is one member's, so there is no failover within it. The caller sets the deadline.
  std::unique_ptr<SnapshotStream> Snapshot(grpc::ClientContext& context);
  // A stream on the current endpoint failed: the next stream tries the next endpoint.
  void Rotate();

 private:
  struct Endpoint {
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<etcdserverpb::KV::Stub> kv;
    std::unique_ptr<etcdserverpb::Lease::Stub> lease;
    std::unique_ptr<etcdserverpb::Watch::Stub> watch;
    std::unique_ptr<etcdserverpb::Maintenance::Stub> maintenance;
    std::unique_ptr<etcdserverpb::Auth::Stub> auth;
  };

  // Runs `call(endpoint, context)` on the current endpoint, then on the others while the answer
  // is UNAVAILABLE; authenticates again once when a token is refused.
  template <class Call>
  grpc::Status WithFailover(Call call);
  grpc::Status EnsureToken(Endpoint& endpoint, bool renew);
  Endpoint& Current();
  // The current endpoint for a stream, with the token set on `context`; null when
  // authentication failed.
  Endpoint* StreamEndpoint(grpc::ClientContext& context);

  EtcdClientOptions options_;
  std::vector<Endpoint> endpoints_;
  std::mutex mu_;
  std::size_t current_ = 0;
  std::string token_;
};

// A token refused in a way that a fresh token cures, as clientv3 sees it: expired or unknown
// ("etcdserver: invalid auth token", UNAUTHENTICATED) or issued before a change of users, roles or
// permissions ("etcdserver: revision of auth store is old": JWT tokens carry the auth revision).
bool TokenRefused(const grpc::Status& status);

// Reads a one-line password file (trailing newline dropped); throws ConfigError, also for a
// file other users may read (CheckSecretFile).
std::string ReadPasswordFile(const std::string& path);

// "etcdserver: ..." for a failed status, with the endpoint list for UNAVAILABLE.
std::string DescribeStatus(const grpc::Status& status);

}  // namespace esp::meta
