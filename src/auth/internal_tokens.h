#pragma once
// Tokens for the calls the proxy makes on its own behalf (config `credentials`): one etcd token
// per shard, obtained when first needed and again after a shard has refused it. etcd 3.4 asks
// none for Status, LeaseGrant or LeaseKeepAlive; a LeaseRevoke needs the right to delete the
// lease's keys, so the revokes left pending for a shard that was down use these.
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "auth/consistency.h"
#include "auth/proxy_credentials.h"
#include "transport/call_context.h"
#include "upstream/topology.h"

namespace esp::auth {

class InternalTokens : public std::enable_shared_from_this<InternalTokens> {
 public:
  InternalTokens(const TopologyHolder& topology, std::optional<Credentials> credentials)
      : topology_(topology), credentials_(std::move(credentials)) {}

  // Calls `then` (on any thread) with the metadata for a call to shard `shard`: the shard's
  // token, or nothing without credentials, while auth is off there or when it cannot get one.
  void WithMetadata(std::size_t shard, std::function<void(Metadata)> then);
  // The shard answered "invalid auth token" (expired): the next call authenticates again.
  void Forget(std::size_t shard);
  // Both of the above, for the proxy's own calls.
  ProxyCredentials AsProxyCredentials();

 private:
  const TopologyHolder& topology_;
  const std::optional<Credentials> credentials_;
  std::mutex mu_;
  std::map<std::size_t, std::string> tokens_;
};

}  // namespace esp::auth
