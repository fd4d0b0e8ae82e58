#include "auth/internal_tokens.h"

#include <spdlog/spdlog.h>

#include "etcdserverpb/rpc.pb.h"
#include "upstream/typed_call.h"

namespace esp::auth {

constexpr std::chrono::seconds kAuthenticateTimeout(5);

void InternalTokens::WithMetadata(std::size_t shard, std::function<void(Metadata)> then) {
  if (!credentials_) return then({});
  {
    const std::lock_guard lock(mu_);
    if (const auto it = tokens_.find(shard); it != tokens_.end()) return then({{"token", it->second}});
  }
  const auto topology = topology_.Get();
  if (shard >= topology->shards.size()) return then({});
  etcdserverpb::AuthenticateRequest request;
  request.set_name(credentials_->user);
  request.set_password(credentials_->password);
  auto ctx = std::make_shared<CallContext>(Clock::now() + kAuthenticateTimeout, Metadata{});
  CallShard<etcdserverpb::AuthenticateResponse>(
      *topology->shards[shard], "/etcdserverpb.Auth/Authenticate", ctx, request, kWrite,
      [self = shared_from_this(), shard, topology, then = std::move(then)](
          Status status, etcdserverpb::AuthenticateResponse response) {
        if (!status.ok()) {
          // Auth off (nothing needed) or the shard is down (the call will fail anyway): no token.
          if (status.message() != "etcdserver: authentication is not enabled") {
            spdlog::warn("{}: cannot authenticate the proxy's own user \"{}\": {}", topology->map.Describe(shard),
                         self->credentials_->user, status.message());
          }
          return then({});
        }
        {
          const std::lock_guard lock(self->mu_);
          self->tokens_[shard] = response.token();
        }
        then({{"token", response.token()}});
      });
}

void InternalTokens::Forget(std::size_t shard) {
  const std::lock_guard lock(mu_);
  tokens_.erase(shard);
}

ProxyCredentials InternalTokens::AsProxyCredentials() {
  return {.metadata = [self = shared_from_this()](std::size_t shard,
                                                  std::function<void(Metadata)> then) {
            self->WithMetadata(shard, std::move(then));
          },
          .on_invalid_token = [self = shared_from_this()](std::size_t shard) { self->Forget(shard); }};
}

}  // namespace esp::auth
