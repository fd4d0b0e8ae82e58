#pragma once
// The proxy's own identity on the shards (config `credentials`), for the calls it makes on its
// own behalf: health probes, lease repairs, pending grants and revokes. Filled in by
// auth::InternalTokens; every user takes this one struct.
#include <cstddef>
#include <functional>

#include "transport/call_context.h"

namespace esp {

struct ProxyCredentials {
  // Calls back with the metadata for a call to a shard (its token, or nothing). Unset: none.
  std::function<void(std::size_t shard, std::function<void(Metadata)>)> metadata;
  // The shard answered "invalid auth token": its token must be fetched again.
  std::function<void(std::size_t shard)> on_invalid_token;
};

}  // namespace esp
