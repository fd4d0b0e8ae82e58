#pragma once
// How the KV service asks the lease layer for help when a shard does not know a lease the client
// holds: the lease may have been granted while that shard was down (see src/lease/pending.h).
#include <cstddef>
#include <cstdint>
#include <functional>

namespace esp {

class LeaseHook {
 public:
  virtual ~LeaseHook() = default;
  // `shard` answered "requested lease not found" for `lease`. `done(true)` once the lease has
  // been granted there (the request may be sent once more); `done(false)` when there is nothing
  // the proxy can do (the lease is unknown to it, expired, or the grant failed).
  virtual void OnLeaseNotFound(std::size_t shard, int64_t lease, std::function<void(bool)> done) = 0;
};

}  // namespace esp
