#pragma once
// etcd's error statuses, with the exact messages clients match on (clientv3 maps errors by
// message text; Kubernetes turns ErrCompacted into HTTP 410).
#include "transport/status.h"

namespace esp::etcd_errors {

inline Status EmptyKey() { return {StatusCode::kInvalidArgument, "etcdserver: key is not provided"}; }
inline Status KeyNotFound() { return {StatusCode::kInvalidArgument, "etcdserver: key not found"}; }
inline Status ValueProvided() { return {StatusCode::kInvalidArgument, "etcdserver: value is provided"}; }
inline Status LeaseProvided() { return {StatusCode::kInvalidArgument, "etcdserver: lease is provided"}; }
inline Status TooManyOps() {
  return {StatusCode::kInvalidArgument, "etcdserver: too many operations in txn request"};
}
inline Status DuplicateKey() {
  return {StatusCode::kInvalidArgument, "etcdserver: duplicate key given in txn request"};
}
inline Status InvalidSortOption() { return {StatusCode::kInvalidArgument, "etcdserver: invalid sort option"}; }
inline Status Compacted() {
  return {StatusCode::kOutOfRange, "etcdserver: mvcc: required revision has been compacted"};
}
inline Status FutureRev() {
  return {StatusCode::kOutOfRange, "etcdserver: mvcc: required revision is a future revision"};
}
inline Status LeaseNotFound() { return {StatusCode::kNotFound, "etcdserver: requested lease not found"}; }
inline Status LeaseExists() { return {StatusCode::kFailedPrecondition, "etcdserver: lease already exists"}; }
inline Status RequestTooLarge() { return {StatusCode::kInvalidArgument, "etcdserver: request is too large"}; }
inline Status UserEmpty() { return {StatusCode::kInvalidArgument, "etcdserver: user name is empty"}; }

// etcd refusing the caller's identity (no token, a token it does not know, or a user without the
// permission): the shard is up and answered, unlike a transport error.
inline bool IsAuthRefusal(const Status& status) {
  return status.code() == StatusCode::kPermissionDenied || status.code() == StatusCode::kUnauthenticated ||
         status.message() == UserEmpty().message();
}

}  // namespace esp::etcd_errors
