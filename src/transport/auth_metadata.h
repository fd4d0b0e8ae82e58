#pragma once
// Where a call carries its caller's etcd identity in metadata.
#include <algorithm>
#include <string_view>

#include "transport/call_context.h"
#include "transport/peer_identity.h"

namespace esp {

// etcd reads a call's auth token from the `token` metadata key or, when there is none, from
// `authorization` (AuthInfoFromCtx: rpctypes.TokenFieldNameGRPC, then TokenFieldNameSwagger, the
// key the gRPC gateway and some non-Go clients use). Both hold the same kind of value, so both
// are translated per shard and both identify the caller.
inline bool IsAuthTokenKey(std::string_view key) { return key == "token" || key == "authorization"; }

// True when the call says who its caller is: an auth token under either key, or a verified
// client-certificate name (etcd's --client-cert-auth identity). With auth on, a call without
// any of them is refused by every shard alike.
inline bool CarriesIdentity(const Metadata& metadata) {
  return std::any_of(metadata.begin(), metadata.end(),
                     [](const auto& entry) { return IsAuthTokenKey(entry.first) || entry.first == kClientCertCnKey; });
}

}  // namespace esp
