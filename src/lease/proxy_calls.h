#pragma once
// Lease calls the proxy makes on its own behalf (repairs), with the proxy's own credentials
// (config `credentials`): with auth on, etcd refuses a LeaseRevoke without the right to delete
// the lease's keys. A shard token that has expired (etcd's simple tokens die after
// --auth-token-ttl unused) is forgotten and the call is made once more with a fresh one.
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "auth/proxy_credentials.h"
#include "lease/fanout.h"

namespace esp {

template <class Resp, class Req>
void CallShardAsProxy(const ProxyCredentials& credentials, const std::shared_ptr<const Topology>& topology,
                      std::size_t shard, const std::string& method, std::chrono::seconds timeout, const Req& request,
                      UnaryOptions options, std::function<void(Status, Resp)> done, bool retry = true) {
  auto call = [credentials, topology, shard, method, timeout, request, options, retry,
               done = std::move(done)](Metadata metadata) mutable {
    const bool with_token = !metadata.empty();
    auto ctx = std::make_shared<CallContext>(Clock::now() + timeout, std::move(metadata));
    CallShard<Resp>(*topology->shards[shard], method, ctx, request, options,
                    [credentials, topology, shard, method, timeout, request, options, retry, with_token,
                     done = std::move(done)](Status status, Resp response) mutable {
                      const bool expired = with_token && status.code() == StatusCode::kUnauthenticated;
                      if (expired && credentials.on_invalid_token) credentials.on_invalid_token(shard);
                      if (expired && retry) {
                        spdlog::info("{}: the proxy's own token was refused ({}); authenticating again",
                                     topology->map.Describe(shard), status.message());
                        return CallShardAsProxy<Resp>(credentials, topology, shard, method, timeout, request,
                                                      options, std::move(done), /*retry=*/false);
                      }
                      done(std::move(status), std::move(response));
                    });
  };
  if (!credentials.metadata) return call({});
  credentials.metadata(shard, std::move(call));
}

// CallShards with the proxy's credentials: one outcome per shard, in the order of `shards`.
template <class Resp, class Req>
void CallShardsAsProxy(const ProxyCredentials& credentials, const std::shared_ptr<const Topology>& topology,
                       const std::vector<std::size_t>& shards, const std::string& method,
                       std::chrono::seconds timeout, const Req& request, UnaryOptions options,
                       std::function<void(std::vector<ShardOutcome<Resp>>)> done) {
  GatherShards<Resp>(
      shards,
      [&](std::size_t shard, std::function<void(Status, Resp)> on_done) {
        CallShardAsProxy<Resp>(credentials, topology, shard, method, timeout, request, options, std::move(on_done));
      },
      std::move(done));
}

}  // namespace esp
