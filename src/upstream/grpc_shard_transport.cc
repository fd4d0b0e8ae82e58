#include "upstream/grpc_shard_transport.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/client_callback.h>
#include <spdlog/spdlog.h>

#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>

#include "transport/auth_metadata.h"
#include "transport/grpc_bytes.h"
#include "transport/peer_identity.h"
#include "upstream/retry_policy.h"

namespace esp {

struct GrpcShardTransport::Member {
  std::string endpoint;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::GenericStub> stub;
  // Whether the last unary call failed to reach this member: connection errors are logged once
  // when a member becomes unreachable and once when it answers again, not once per call.
  std::atomic<bool> unreachable{false};
};

namespace {

std::shared_ptr<grpc::ChannelCredentials> MakeCredentials(const ShardConfig& shard) {
  if (!shard.tls) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  if (!shard.tls->ca_file.empty()) options.pem_root_certs = ReadFileOrThrow(shard.tls->ca_file);
  if (!shard.tls->cert_file.empty()) options.pem_cert_chain = ReadFileOrThrow(shard.tls->cert_file);
  if (!shard.tls->key_file.empty()) options.pem_private_key = ReadFileOrThrow(shard.tls->key_file);
  return grpc::SslCredentials(options);
}

grpc::ChannelArguments MakeChannelArgs(const ShardConfig& shard, const UpstreamTuning& tuning) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);  // large Range answers must not be cut at gRPC's 4 MiB
  args.SetMaxSendMessageSize(-1);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, tuning.keepalive_time_ms);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, tuning.keepalive_timeout_ms);
  // etcd answers pings on a connection without calls with GOAWAY too_many_pings.
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  // Despite its name, gRPC core reads grpc.min_reconnect_backoff_ms as the minimum *connect
  // timeout* (the backoff starts at grpc.initial_reconnect_backoff_ms). At 100 ms a TLS handshake
  // on a busy machine was cut off ("Handshaker shutdown", "timed out before receiving SETTINGS").
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, tuning.connect_timeout_ms);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, tuning.min_reconnect_backoff_ms);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, tuning.max_reconnect_backoff_ms);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (shard.tls && !shard.tls->server_name.empty()) {
    args.SetSslTargetNameOverride(shard.tls->server_name);
  }
  return args;
}

StatusCode CodeOf(const grpc::Status& status) { return static_cast<StatusCode>(status.error_code()); }

bool IsTransportFailure(const grpc::Status& status) {
  return esp::IsTransportFailure(CodeOf(status), status.error_message());
}

using TokenTranslator = std::function<std::string(std::string_view token)>;

// etcd reads the auth token from the `token` metadata key (clientv3's TokenFieldNameGRPC) or from
// `authorization` (transport/auth_metadata.h): a composite token under either is translated.
void AddMetadata(grpc::ClientContext& ctx, const Metadata& metadata, const TokenTranslator& translate) {
  for (const auto& [key, value] : metadata) {
    // Client-certificate identities need the h2 upstream transport (the proxy refuses the config
    // otherwise); the reserved key never leaves the proxy.
    if (key == kClientCertCnKey) continue;
    if (translate && IsAuthTokenKey(key)) {
      ctx.AddMetadata(key, translate(value));
    } else {
      ctx.AddMetadata(key, value);
    }
  }
}

void PrepareContext(grpc::ClientContext& ctx, const CallContext& call, const TokenTranslator& translate) {
  if (call.deadline()) ctx.set_deadline(*call.deadline());
  AddMetadata(ctx, call.metadata(), translate);
}

// One upstream bidirectional stream. Owns itself from StartCall until OnDone.
// Writes come from service threads, outside gRPC's reactions. gRPC destroys the call right
// before OnDone, so such a write racing with the stream's end would touch a freed call: a hold
// (AddHold) keeps the call alive until the server has ended the stream and no write or
// writes-done started outside a reaction is still being handed to gRPC.
class GrpcUpstreamStream final : public UpstreamStream,
                                 public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit GrpcUpstreamStream(std::shared_ptr<UpstreamStreamObserver> observer)
      : observer_(std::move(observer)) {}

  void Start(const std::shared_ptr<GrpcUpstreamStream>& self, grpc::GenericStub& stub,
             const std::string& method, const Metadata& metadata, const TokenTranslator& translate) {
    self_ = self;
    AddMetadata(context_, metadata, translate);
    stub.PrepareBidiStreamingCall(&context_, method, grpc::StubOptions(), this);
    AddHold();
    StartRead(&read_buffer_);
    StartCall();
  }

  bool Write(std::string message) override {
    std::unique_lock lock(mu_);
    if (done_ || ended_ || half_closed_) return false;
    queue_.push_back(std::move(message));
    if (!write_in_flight_) StartNextLocked(lock);
    return true;
  }

  void CloseSend() override {
    std::unique_lock lock(mu_);
    if (done_ || ended_ || half_closed_) return;
    half_closed_ = true;
    if (!write_in_flight_) {
      writes_done_in_flight_ = true;
      lock.unlock();
      StartWritesDone();
    }
  }

  void Cancel() override { context_.TryCancel(); }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the stream has ended; OnDone follows with the final status
      std::unique_lock lock(mu_);
      ended_ = true;
      queue_.clear();
      ReleaseHoldIfIdle(lock);
      return;
    }
    observer_->OnMessage(ByteBufferToString(read_buffer_));
    StartRead(&read_buffer_);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock lock(mu_);
    write_in_flight_ = false;
    if (!ok) {
      queue_.clear();
      ReleaseHoldIfIdle(lock);
      return;
    }
    if (!queue_.empty()) {
      StartNextLocked(lock);
    } else if (half_closed_) {
      writes_done_in_flight_ = true;
      lock.unlock();
      StartWritesDone();
    } else {
      ReleaseHoldIfIdle(lock);
    }
  }

  void OnWritesDoneDone(bool) override {
    std::unique_lock lock(mu_);
    writes_done_in_flight_ = false;
    ReleaseHoldIfIdle(lock);
  }

  void OnDone(const grpc::Status& status) override {
    {
      const std::lock_guard lock(mu_);
      done_ = true;
      queue_.clear();
    }
    auto observer = std::move(observer_);
    observer->OnClose(Status(static_cast<StatusCode>(status.error_code()), status.error_message()));
    const auto self = std::move(self_);
  }

 private:
  // Drops the hold once the stream has ended and nothing is being started from outside.
  void ReleaseHoldIfIdle(std::unique_lock<std::mutex>& lock) {
    if (!ended_ || write_in_flight_ || writes_done_in_flight_ || hold_released_) return;
    hold_released_ = true;
    lock.unlock();
    RemoveHold();
  }

  void StartNextLocked(std::unique_lock<std::mutex>& lock) {
    in_flight_ = StringToByteBuffer(queue_.front());
    queue_.pop_front();
    write_in_flight_ = true;
    lock.unlock();
    StartWrite(&in_flight_);
  }

  std::shared_ptr<UpstreamStreamObserver> observer_;
  std::shared_ptr<GrpcUpstreamStream> self_;
  grpc::ClientContext context_;
  grpc::ByteBuffer read_buffer_;
  grpc::ByteBuffer in_flight_;
  std::mutex mu_;
  std::deque<std::string> queue_;
  bool write_in_flight_ = false;
  bool half_closed_ = false;
  bool writes_done_in_flight_ = false;
  bool ended_ = false;  // the server ended the stream (last read failed)
  bool hold_released_ = false;
  bool done_ = false;
};

}  // namespace

struct GrpcShardTransport::Attempt {
  std::string method;
  CallContextPtr call;
  UnaryOptions options;
  UnaryDone done;
  grpc::ByteBuffer request;
  std::size_t tries_left = 1;
  std::size_t member = 0;
  // Per try:
  std::unique_ptr<grpc::ClientContext> context;
  grpc::ByteBuffer response;
  Cancellation::HookId cancel_hook = 0;
};

GrpcShardTransport::GrpcShardTransport(const ShardConfig& shard, std::string description,
                                       UpstreamTuning tuning)
    : description_(std::move(description)),
      on_retry_(std::move(tuning.on_retry)),
      translate_token_(std::move(tuning.translate_token)) {
  const auto credentials = MakeCredentials(shard);
  for (const auto& endpoint : shard.endpoints) {
    auto member = std::make_unique<Member>();
    member->endpoint = endpoint;
    member->channel = grpc::CreateCustomChannel(endpoint, credentials, MakeChannelArgs(shard, tuning));
    member->stub = std::make_unique<grpc::GenericStub>(member->channel);
    members_.push_back(std::move(member));
  }
}

GrpcShardTransport::~GrpcShardTransport() = default;

std::size_t GrpcShardTransport::PickMember(std::size_t avoid) {
  // Round robin over members whose connection is not known to be broken; when all are broken,
  // any member will do: the call then fails fast with UNAVAILABLE.
  const std::size_t n = members_.size();
  const std::size_t start = next_member_.fetch_add(1, std::memory_order_relaxed);
  std::optional<std::size_t> fallback;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t candidate = (start + i) % n;
    if (n > 1 && candidate == avoid) continue;
    const auto state = members_[candidate]->channel->GetState(true);
    if (state != GRPC_CHANNEL_TRANSIENT_FAILURE && state != GRPC_CHANNEL_SHUTDOWN) return candidate;
    if (!fallback) fallback = candidate;
  }
  return fallback.value_or(start % n);
}

void GrpcShardTransport::Unary(const std::string& method, const CallContextPtr& ctx,
                               std::string request, UnaryOptions options, UnaryDone done) {
  auto attempt = std::make_shared<Attempt>();
  attempt->method = method;
  attempt->call = ctx;
  attempt->options = options;
  attempt->done = std::move(done);
  attempt->request = StringToByteBuffer(request);
  attempt->tries_left = members_.size();  // writes only retry calls that were never sent
  attempt->member = members_.size();  // no member to avoid on the first try
  StartAttempt(std::move(attempt));
}

void GrpcShardTransport::NoteReachability(Member& member, const grpc::Status& status) {
  const bool failed = IsTransportFailure(status) && status.error_code() == grpc::StatusCode::UNAVAILABLE;
  if (member.unreachable.exchange(failed) == failed) return;
  if (failed) {
    spdlog::warn("{}: member {} unreachable: {}", description_, member.endpoint, status.error_message());
  } else {
    spdlog::info("{}: member {} reachable again", description_, member.endpoint);
  }
}

void GrpcShardTransport::StartAttempt(std::shared_ptr<Attempt> attempt) {
  attempt->member = PickMember(attempt->member);
  attempt->tries_left--;
  attempt->context = std::make_unique<grpc::ClientContext>();
  attempt->response.Clear();
  PrepareContext(*attempt->context, *attempt->call, translate_token_);
  grpc::ClientContext* const raw_context = attempt->context.get();
  attempt->cancel_hook = attempt->call->cancellation().Add([attempt, raw_context] {
    raw_context->TryCancel();
  });
  Member& member = *members_[attempt->member];
  member.stub->UnaryCall(
      raw_context, attempt->method, grpc::StubOptions(), &attempt->request, &attempt->response,
      [this, self = shared_from_this(), attempt](grpc::Status status) {
        attempt->call->cancellation().Remove(attempt->cancel_hook);
        const std::string& endpoint = members_[attempt->member]->endpoint;
        NoteReachability(*members_[attempt->member], status);
        if (ShouldRetry(CodeOf(status), status.error_message(), attempt->options, attempt->tries_left > 0,
                        attempt->call->cancellation().cancelled())) {
          spdlog::debug("{}: {} failed at {} ({}); retrying on another member", description_,
                        attempt->method, endpoint, status.error_message());
          if (on_retry_) on_retry_(attempt->method);
          StartAttempt(attempt);
          return;
        }
        Status result = DescribeFailure(CodeOf(status), status.error_message(), description_, endpoint);
        std::string bytes = result.ok() ? ByteBufferToString(attempt->response) : std::string();
        auto done = std::move(attempt->done);
        done(std::move(result), std::move(bytes));
      });
}

std::shared_ptr<UpstreamStream> GrpcShardTransport::OpenStream(
    const std::string& method, const Metadata& metadata,
    std::shared_ptr<UpstreamStreamObserver> observer) {
  auto stream = std::make_shared<GrpcUpstreamStream>(std::move(observer));
  stream->Start(stream, *members_[PickMember(members_.size())]->stub, method, metadata, translate_token_);
  return stream;
}

}  // namespace esp
