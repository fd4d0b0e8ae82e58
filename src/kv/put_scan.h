#pragma once
// What the proxy needs from a PutRequest (the key to route by, the lease to repair, the fields
// etcd's checks read), taken from the wire bytes without building the message: a put's value is
// most of its bytes, and a single-shard put is forwarded as the client's own bytes anyway.
#include <cstdint>
#include <optional>
#include <string_view>

#include "transport/status.h"

namespace esp {

struct PutFields {
  std::string_view key;  // points into the scanned bytes
  bool has_value = false;
  std::int64_t lease = 0;
  bool prev_kv = false;
  bool ignore_value = false;
  bool ignore_lease = false;
};

// Reads a serialized etcdserverpb.PutRequest as protobuf's parser would (last occurrence wins,
// unknown fields and known numbers with another wire type skipped); nullopt exactly where
// ParseFromString fails.
std::optional<PutFields> ScanPutRequest(std::string_view bytes);

// etcd's checks of a put (v3rpc's checkPutRequest).
Status CheckPutFields(const PutFields& put);

}  // namespace esp
