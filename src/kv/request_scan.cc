#include "kv/request_scan.h"

#include "common/etcd_errors.h"
#include "common/wire_fields.h"
#include "etcdserverpb/rpc.pb.h"

namespace esp {
namespace {

// Field numbers (proto/etcdserverpb/rpc.proto). Key and range end are 1 and 2 in all three.
constexpr int kKey = 1;
constexpr int kRangeEnd = 2;
constexpr int kValue = 2;  // PutRequest
constexpr int kLease = 3;
constexpr int kPrevKv = 4;
constexpr int kIgnoreValue = 5;
constexpr int kIgnoreLease = 6;
constexpr int kSortOrder = 5;  // RangeRequest
constexpr int kSortTarget = 6;
constexpr int kRevision = 4;  // RangeRequest
constexpr int kSerializable = 7;

// `with_sort`: a RangeRequest (fields 5 and 6 are its sort enums); else a DeleteRangeRequest,
// whose other fields routing does not read.
std::optional<KeyRangeFields> ScanKeyRange(std::string_view bytes, bool with_sort) {
  KeyRangeFields range;
  const bool parses = ForEachWireField(bytes, [&range, with_sort](const WireField& field) {
    if (field.type == WireType::WIRETYPE_LENGTH_DELIMITED) {
      if (field.number == kKey) range.key = field.payload;
      if (field.number == kRangeEnd) range.range_end = field.payload;
    } else if (with_sort && field.type == WireType::WIRETYPE_VARINT) {
      // An enum is an int32 on the wire: the parser keeps the varint's low 32 bits.
      if (field.number == kSortOrder) range.sort_order = static_cast<std::int32_t>(field.varint);
      if (field.number == kSortTarget) range.sort_target = static_cast<std::int32_t>(field.varint);
      if (field.number == kRevision) range.revision = static_cast<std::int64_t>(field.varint);
      if (field.number == kSerializable) range.serializable = field.varint != 0;
    }
  });
  if (!parses) return std::nullopt;
  return range;
}

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

std::optional<KeyRangeFields> ScanRangeRequest(std::string_view bytes) { return ScanKeyRange(bytes, true); }

std::optional<KeyRangeFields> ScanDeleteRangeRequest(std::string_view bytes) { return ScanKeyRange(bytes, false); }

Status CheckRangeFields(const KeyRangeFields& range) {
  if (range.key.empty()) return etcd_errors::EmptyKey();
  if (!etcdserverpb::RangeRequest_SortOrder_IsValid(range.sort_order) ||
      !etcdserverpb::RangeRequest_SortTarget_IsValid(range.sort_target)) {
    return etcd_errors::InvalidSortOption();
  }
  return Status::Ok();
}

Status CheckDeleteFields(const KeyRangeFields& range) {
  if (range.key.empty()) return etcd_errors::EmptyKey();
  return Status::Ok();
}

}  // namespace esp
