#pragma once
// What the proxy needs from a Put, Range or DeleteRange request (the key or key range to route by,
// a put's lease to repair, the fields etcd's checks read), taken from the wire bytes without
// building the message: a single-shard request is forwarded as the client's own bytes anyway, and
// a put's value is most of its bytes.
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

// A RangeRequest's or DeleteRangeRequest's key range; the sort fields are a Range's only.
struct KeyRangeFields {
  std::string_view key;        // both point into the scanned bytes
  std::string_view range_end;
  std::int32_t sort_order = 0;
  std::int32_t sort_target = 0;
  std::int64_t revision = 0;   // a Range's only, as are these
  bool serializable = false;
};

// As ScanPutRequest, for a serialized etcdserverpb.RangeRequest and DeleteRangeRequest.
std::optional<KeyRangeFields> ScanRangeRequest(std::string_view bytes);
std::optional<KeyRangeFields> ScanDeleteRangeRequest(std::string_view bytes);

// etcd's checks of a range and of a delete (v3rpc's checkRangeRequest, checkDeleteRequest).
Status CheckRangeFields(const KeyRangeFields& range);
Status CheckDeleteFields(const KeyRangeFields& range);

}  // namespace esp
