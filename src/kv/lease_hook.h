#pragma once
// How the KV service asks the lease layer for help when a shard does not know a lease the client
// holds: the lease may have been granted while that shard was down (see src/lease/pending.h).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace esp {

class LeaseHook {
 public:
  virtual ~LeaseHook() = default;
  // `shard` answered "requested lease not found" to a request using `leases`. `done(true)` once
  // at least one of them has been granted there (the request may be sent once more);
  // `done(false)` when there is nothing the proxy can do (unknown to it, expired, grant failed).
  virtual void OnLeaseNotFound(std::size_t shard, std::vector<int64_t> leases, std::function<void(bool)> done) = 0;
};

}  // namespace esp
