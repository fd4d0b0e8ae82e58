#include "lease/lease_ids.h"

#include <openssl/rand.h>

#include <cstring>
#include <random>

namespace esp {

int64_t NewLeaseId() {
  for (;;) {
    uint64_t bits = 0;
    unsigned char bytes[sizeof bits];
    if (RAND_bytes(bytes, sizeof bytes) == 1) {
      std::memcpy(&bits, bytes, sizeof bits);
    } else {
      // RAND_bytes only fails without an entropy source; random_device is the next best.
      std::random_device device;
      bits = (static_cast<uint64_t>(device()) << 32) ^ device();
    }
    const auto id = static_cast<int64_t>(bits & 0x7fffffffffffffffULL);
    if (id != 0) return id;  // 0 means "let the server choose" on the wire
  }
}

}  // namespace esp
