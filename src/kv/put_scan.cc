#include "kv/put_scan.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include "common/etcd_errors.h"

namespace esp {
namespace {

using google::protobuf::internal::WireFormatLite;

// PutRequest's field numbers (proto/etcdserverpb/rpc.proto).
constexpr int kKey = 1;
constexpr int kValue = 2;
constexpr int kLease = 3;
constexpr int kPrevKv = 4;
constexpr int kIgnoreValue = 5;
constexpr int kIgnoreLease = 6;

}  // namespace

std::optional<PutFields> ScanPutRequest(std::string_view bytes) {
  google::protobuf::io::CodedInputStream input(reinterpret_cast<const std::uint8_t*>(bytes.data()),
                                               static_cast<int>(bytes.size()));
  PutFields put;
  while (static_cast<std::size_t>(input.CurrentPosition()) < bytes.size()) {
    const int tag_start = input.CurrentPosition();
    const std::uint32_t tag = input.ReadTag();
    // The parser refuses a zero or truncated tag, and a tag longer than five bytes (the coded
    // stream would read up to ten).
    if (tag == 0 || input.CurrentPosition() - tag_start > 5) return std::nullopt;
    const int number = WireFormatLite::GetTagFieldNumber(tag);
    const auto type = WireFormatLite::GetTagWireType(tag);
    if (type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED && (number == kKey || number == kValue)) {
      std::uint32_t length = 0;
      if (!input.ReadVarint32(&length)) return std::nullopt;
      const auto start = static_cast<std::size_t>(input.CurrentPosition());
      if (length > bytes.size() - start || !input.Skip(static_cast<int>(length))) return std::nullopt;
      if (number == kKey) {
        put.key = bytes.substr(start, length);
      } else {
        put.has_value = length > 0;
      }
    } else if (type == WireFormatLite::WIRETYPE_VARINT && number >= kLease && number <= kIgnoreLease) {
      std::uint64_t value = 0;
      if (!input.ReadVarint64(&value)) return std::nullopt;
      switch (number) {
        case kLease: put.lease = static_cast<std::int64_t>(value); break;
        case kPrevKv: put.prev_kv = value != 0; break;
        case kIgnoreValue: put.ignore_value = value != 0; break;
        default: put.ignore_lease = value != 0; break;
      }
    } else if (!WireFormatLite::SkipField(&input, tag)) {
      return std::nullopt;
    }
  }
  return put;
}

Status CheckPutFields(const PutFields& put) {
  if (put.key.empty()) return etcd_errors::EmptyKey();
  if (put.ignore_value && put.has_value) return etcd_errors::ValueProvided();
  if (put.ignore_lease && put.lease != 0) return etcd_errors::LeaseProvided();
  return Status::Ok();
}

}  // namespace esp
