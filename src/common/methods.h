#pragma once
// Full gRPC method paths of the etcd v3 API.
namespace esp::methods {

inline constexpr const char* kRange = "/etcdserverpb.KV/Range";
inline constexpr const char* kPut = "/etcdserverpb.KV/Put";
inline constexpr const char* kDeleteRange = "/etcdserverpb.KV/DeleteRange";
inline constexpr const char* kTxn = "/etcdserverpb.KV/Txn";
inline constexpr const char* kCompact = "/etcdserverpb.KV/Compact";

}  // namespace esp::methods
