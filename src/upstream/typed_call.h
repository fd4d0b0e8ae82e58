#pragma once
// Typed convenience over ShardTransport::Unary for service code.
#include <functional>
#include <string>
#include <utility>

#include "upstream/shard_transport.h"

namespace esp {

template <class Resp, class Req>
void CallShard(ShardTransport& shard, const std::string& method, const CallContextPtr& ctx,
               const Req& request, UnaryOptions options, std::function<void(Status, Resp)> done) {
  shard.Unary(method, ctx, request.SerializeAsString(), options,
              [done = std::move(done)](Status status, std::string bytes) {
                Resp response;
                if (status.ok() && !response.ParseFromString(bytes)) {
                  status = Status(StatusCode::kInternal, "cannot parse the shard's response");
                }
                done(std::move(status), std::move(response));
              });
}

}  // namespace esp
