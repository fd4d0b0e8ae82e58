#include "meta/etcd_client.h"

#include <fstream>

namespace esp::meta {
namespace {

std::shared_ptr<grpc::ChannelCredentials> Credentials(const std::optional<TlsClientConfig>& tls) {
  if (!tls) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  if (!tls->ca_file.empty()) options.pem_root_certs = ReadFileOrThrow(tls->ca_file);
  if (!tls->cert_file.empty()) {
    options.pem_cert_chain = ReadFileOrThrow(tls->cert_file);
    options.pem_private_key = ReadFileOrThrow(tls->key_file);
  }
  return grpc::SslCredentials(options);
}

}  // namespace

bool TokenRefused(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
         (status.error_code() == grpc::StatusCode::INVALID_ARGUMENT &&
          status.error_message() == "etcdserver: revision of auth store is old");
}

EtcdClient::EtcdClient(EtcdClientOptions options) : options_(std::move(options)) {
  if (options_.endpoints.empty()) throw ConfigError("no endpoint given");
  const auto credentials = Credentials(options_.tls);
  for (const auto& raw : options_.endpoints) {
    Endpoint e;
    e.address = NormalizeEndpoint(raw);
    if (e.address.empty()) throw ConfigError("empty endpoint address");
    grpc::ChannelArguments args;
    if (options_.tls && !options_.tls->server_name.empty()) args.SetSslTargetNameOverride(options_.tls->server_name);
    // A dead member must be noticed on an idle watch stream too; etcd refuses pings more often
    // than every 5 s (--grpc-keepalive-min-time), so 10 s.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    // Not without calls: etcd answers pings on a connection with no call open with GOAWAY
    // too_many_pings (its enforcement policy does not permit them); the follower keeps a watch open.
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
    // Reconnect quickly after the meta store comes back (gRPC's default backoff grows to 120 s).
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    // gRPC core reads grpc.min_reconnect_backoff_ms as the minimum *connect timeout* (see
    // upstream/grpc_shard_transport.cc): at 200 ms a handshake with a busy or distant member
    // failed the call with UNAVAILABLE ("timed out before receiving SETTINGS frame").
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, static_cast<int>(options_.call_timeout.count()));
    e.channel = grpc::CreateCustomChannel(e.address, credentials, args);
    e.kv = etcdserverpb::KV::NewStub(e.channel);
    e.lease = etcdserverpb::Lease::NewStub(e.channel);
    e.watch = etcdserverpb::Watch::NewStub(e.channel);
    e.maintenance = etcdserverpb::Maintenance::NewStub(e.channel);
    e.auth = etcdserverpb::Auth::NewStub(e.channel);
    endpoints_.push_back(std::move(e));
  }
}

std::string EtcdClient::EndpointList() const {
  std::string out;
  for (const auto& e : endpoints_) out += (out.empty() ? "" : ",") + e.address;
  return out;
}

EtcdClient::Endpoint& EtcdClient::Current() {
  const std::lock_guard lock(mu_);
  return endpoints_[current_];
}

// A blocking call waits, up to its deadline, for a connection: gRPC C++ drives a connection's
// handshake only from threads that poll for it, and a fail-fast call on a channel in backoff
// returns at once without polling; a reconnect after the member came back then never completes
// (seen: "timed out before receiving SETTINGS frame" for as long as calls kept failing fast).
static void Bound(grpc::ClientContext& context, std::chrono::milliseconds timeout) {
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  context.set_wait_for_ready(true);
}

grpc::Status EtcdClient::EnsureToken(Endpoint& endpoint, bool renew) {
  if (options_.user.empty()) return grpc::Status::OK;
  {
    const std::lock_guard lock(mu_);
    if (!renew && !token_.empty()) return grpc::Status::OK;
  }
  etcdserverpb::AuthenticateRequest request;
  request.set_name(options_.user);
  request.set_password(options_.password);
  etcdserverpb::AuthenticateResponse response;
  grpc::ClientContext context;
  Bound(context, options_.call_timeout);
  const auto status = endpoint.auth->Authenticate(&context, request, &response);
  if (!status.ok()) return status;
  const std::lock_guard lock(mu_);
  token_ = response.token();
  return grpc::Status::OK;
}

grpc::Status EtcdClient::Prepare(grpc::ClientContext& context, bool renew_token) {
  auto& endpoint = Current();
  if (auto status = EnsureToken(endpoint, renew_token); !status.ok()) return status;
  Bound(context, options_.call_timeout);
  const std::lock_guard lock(mu_);
  if (!token_.empty()) context.AddMetadata("token", token_);
  return grpc::Status::OK;
}

template <class Call>
grpc::Status EtcdClient::WithFailover(Call call) {
  grpc::Status last;
  std::size_t start = 0;
  {
    const std::lock_guard lock(mu_);
    start = current_;
  }
  for (std::size_t attempt = 0; attempt < endpoints_.size(); ++attempt) {
    const std::size_t index = (start + attempt) % endpoints_.size();
    auto& endpoint = endpoints_[index];
    for (int auth_try = 0; auth_try < 2; ++auth_try) {
      last = EnsureToken(endpoint, auth_try > 0);
      if (last.ok()) {
        grpc::ClientContext context;
        Bound(context, options_.call_timeout);
        {
          const std::lock_guard lock(mu_);
          if (!token_.empty()) context.AddMetadata("token", token_);
        }
        last = call(endpoint, context);
      }
      if (!TokenRefused(last) || options_.user.empty()) break;
    }
    // Not answered (a dead or hung member): the next member. A write may have been applied;
    // every write this client makes is a compare-and-swap, a lease or a put of the same value.
    if (last.error_code() != grpc::StatusCode::UNAVAILABLE && last.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      const std::lock_guard lock(mu_);
      current_ = index;
      return last;
    }
  }
  return last;
}

#define ESP_UNARY(Method, Stub, Req, Resp)                                                             \
  grpc::Status EtcdClient::Method(const etcdserverpb::Req& request, etcdserverpb::Resp* response) { \
    return WithFailover([&](Endpoint& e, grpc::ClientContext& context) {                             \
      return e.Stub->Method(&context, request, response);                                            \
    });                                                                                              \
  }
ESP_UNARY(Range, kv, RangeRequest, RangeResponse)
ESP_UNARY(Put, kv, PutRequest, PutResponse)
ESP_UNARY(DeleteRange, kv, DeleteRangeRequest, DeleteRangeResponse)
ESP_UNARY(Compact, kv, CompactionRequest, CompactionResponse)
ESP_UNARY(Txn, kv, TxnRequest, TxnResponse)
ESP_UNARY(LeaseGrant, lease, LeaseGrantRequest, LeaseGrantResponse)
ESP_UNARY(LeaseRevoke, lease, LeaseRevokeRequest, LeaseRevokeResponse)
ESP_UNARY(LeaseTimeToLive, lease, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse)
ESP_UNARY(LeaseLeases, lease, LeaseLeasesRequest, LeaseLeasesResponse)
#undef ESP_UNARY

grpc::Status EtcdClient::Status(etcdserverpb::StatusResponse* response) {
  return WithFailover([&](Endpoint& e, grpc::ClientContext& context) {
    return e.maintenance->Status(&context, etcdserverpb::StatusRequest{}, response);
  });
}

etcdserverpb::Auth::Stub& EtcdClient::AuthStub() { return *Current().auth; }

EtcdClient::Endpoint* EtcdClient::StreamEndpoint(grpc::ClientContext& context) {
  auto& endpoint = Current();
  if (!EnsureToken(endpoint, false).ok()) return nullptr;
  const std::lock_guard lock(mu_);
  if (!token_.empty()) context.AddMetadata("token", token_);
  return &endpoint;
}

std::unique_ptr<WatchStream> EtcdClient::Watch(grpc::ClientContext& context) {
  auto* endpoint = StreamEndpoint(context);
  return endpoint != nullptr ? endpoint->watch->Watch(&context) : nullptr;
}

std::unique_ptr<KeepAliveStream> EtcdClient::LeaseKeepAlive(grpc::ClientContext& context) {
  auto* endpoint = StreamEndpoint(context);
  return endpoint != nullptr ? endpoint->lease->LeaseKeepAlive(&context) : nullptr;
}

std::unique_ptr<SnapshotStream> EtcdClient::Snapshot(grpc::ClientContext& context) {
  auto* endpoint = StreamEndpoint(context);
  return endpoint != nullptr ? endpoint->maintenance->Snapshot(&context, etcdserverpb::SnapshotRequest{}) : nullptr;
}

void EtcdClient::Rotate() {
  const std::lock_guard lock(mu_);
  current_ = (current_ + 1) % endpoints_.size();
}

std::string ReadPasswordFile(const std::string& path) {
  CheckSecretFile(path, "password file");
  std::string text = ReadFileOrThrow(path);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (text.empty()) throw ConfigError("password file " + path + " is empty");
  return text;
}

std::string DescribeStatus(const grpc::Status& status) {
  return status.error_message().empty() ? "gRPC status " + std::to_string(status.error_code())
                                        : status.error_message();
}

}  // namespace esp::meta
