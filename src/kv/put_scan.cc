#include "kv/put_scan.h"

#include "common/etcd_errors.h"
#include "common/wire_fields.h"

namespace esp {
namespace {

// PutRequest's field numbers (proto/etcdserverpb/rpc.proto).
constexpr int kKey = 1;
constexpr int kValue = 2;
constexpr int kLease = 3;
constexpr int kPrevKv = 4;
constexpr int kIgnoreValue = 5;
constexpr int kIgnoreLease = 6;

}  // namespace

std::optional<PutFields> ScanPutRequest(std::string_view bytes) {
  PutFields put;
  // A known number with another wire type is an unknown field to the parser: skipped here too.
  const bool parses = ForEachWireField(bytes, [&put](const WireField& field) {
    if (field.type == WireType::WIRETYPE_LENGTH_DELIMITED) {
      if (field.number == kKey) put.key = field.payload;
      if (field.number == kValue) put.has_value = !field.payload.empty();
    } else if (field.type == WireType::WIRETYPE_VARINT) {
      switch (field.number) {
        case kLease: put.lease = static_cast<std::int64_t>(field.varint); break;
        case kPrevKv: put.prev_kv = field.varint != 0; break;
        case kIgnoreValue: put.ignore_value = field.varint != 0; break;
        case kIgnoreLease: put.ignore_lease = field.varint != 0; break;
        default: break;
      }
    }
  });
  if (!parses) return std::nullopt;
  return put;
}

Status CheckPutFields(const PutFields& put) {
  if (put.key.empty()) return etcd_errors::EmptyKey();
  if (put.ignore_value && put.has_value) return etcd_errors::ValueProvided();
  if (put.ignore_lease && put.lease != 0) return etcd_errors::LeaseProvided();
  return Status::Ok();
}

}  // namespace esp
