#pragma once
// Full gRPC method paths of the etcd v3 API.
namespace esp::methods {

inline constexpr const char* kRange = "/etcdserverpb.KV/Range";
inline constexpr const char* kPut = "/etcdserverpb.KV/Put";
inline constexpr const char* kDeleteRange = "/etcdserverpb.KV/DeleteRange";
inline constexpr const char* kTxn = "/etcdserverpb.KV/Txn";
inline constexpr const char* kCompact = "/etcdserverpb.KV/Compact";

inline constexpr const char* kLeaseGrant = "/etcdserverpb.Lease/LeaseGrant";
inline constexpr const char* kLeaseRevoke = "/etcdserverpb.Lease/LeaseRevoke";
inline constexpr const char* kLeaseKeepAlive = "/etcdserverpb.Lease/LeaseKeepAlive";
inline constexpr const char* kLeaseTimeToLive = "/etcdserverpb.Lease/LeaseTimeToLive";
inline constexpr const char* kLeaseLeases = "/etcdserverpb.Lease/LeaseLeases";

}  // namespace esp::methods
