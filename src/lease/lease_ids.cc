#include "lease/lease_ids.h"

#include <openssl/rand.h>

#include <array>
#include <cstddef>
#include <random>

namespace esp {
namespace {

// Ids are drawn from OpenSSL in batches, per thread: one RAND_bytes call costs OpenSSL 3 about
// 5,000 instructions whatever its size (provider and parameter lookups), a tenth of all the rest
// of forwarding a grant to a shard.
constexpr std::size_t kBatch = 64;

void Refill(std::array<uint64_t, kBatch>& batch) {
  if (RAND_bytes(reinterpret_cast<unsigned char*>(batch.data()), sizeof batch) == 1) return;
  // RAND_bytes only fails without an entropy source; random_device is the next best.
  std::random_device device;
  for (auto& bits : batch) bits = (static_cast<uint64_t>(device()) << 32) ^ device();
}

}  // namespace

int64_t NewLeaseId() {
  thread_local std::array<uint64_t, kBatch> batch;
  thread_local std::size_t next = kBatch;
  for (;;) {
    if (next == kBatch) {
      Refill(batch);
      next = 0;
    }
    const auto id = static_cast<int64_t>(batch[next++] & 0x7fffffffffffffffULL);
    if (id != 0) return id;  // 0 means "let the server choose" on the wire
  }
}

}  // namespace esp
