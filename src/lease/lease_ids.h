#pragma once
// Lease ids chosen by the proxy when a client grants with ID 0.
#include <cstdint>

namespace esp {

// A random positive 63-bit id from OpenSSL's CSPRNG (RAND_bytes, drawn in batches per thread).
// Several proxies grant side by side without coordinating; with 2^63 values the chance that two
// of them pick the same id is negligible (birthday bound: ~1e-7 after 1.4 million live leases),
// and the rare collision with a live lease is caught by the shards themselves ("lease already
// exists"), after which the grant is retried with a fresh id. A time-based prefix would not make
// ids more unique across proxies (clocks and starts coincide) and would make them guessable.
int64_t NewLeaseId();

}  // namespace esp
