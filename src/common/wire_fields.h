#pragma once
// Walks the top-level fields of serialized protobuf bytes as protobuf's parser reads them,
// without building the message, through protobuf's own coded stream. For the few fields the
// proxy reads out of bytes it forwards as they came: a put's key and lease, a range's or a
// delete's key range (kv/request_scan.h), a watch response's id (watch/watch_encoding.h).
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace esp {

using WireType = google::protobuf::internal::WireFormatLite::WireType;

struct WireField {
  int number = 0;
  WireType type = WireType::WIRETYPE_VARINT;
  std::size_t start = 0;      // offset of the field's tag
  std::size_t end = 0;        // one past the field's last byte
  std::uint64_t varint = 0;   // WIRETYPE_VARINT: the value
  std::string_view payload;   // WIRETYPE_LENGTH_DELIMITED: the bytes after the length
};

// Calls visit(const WireField&) for each top-level field, in order. Returns false, having visited
// the fields before, exactly where ParseFromString fails on the framing: a zero, truncated or
// over-long tag, field number 0, a value running past the end, an unbalanced group.
template <class Visit>
bool ForEachWireField(std::string_view bytes, Visit&& visit) {
  using Lite = google::protobuf::internal::WireFormatLite;
  google::protobuf::io::CodedInputStream input(reinterpret_cast<const std::uint8_t*>(bytes.data()),
                                               static_cast<int>(bytes.size()));
  const auto at = [&input] { return static_cast<std::size_t>(input.CurrentPosition()); };
  while (at() < bytes.size()) {
    WireField field;
    field.start = at();
    const std::uint32_t tag = input.ReadTag();
    // The coded stream would read a tag of up to ten bytes; the parser refuses more than five.
    if (tag == 0 || at() - field.start > 5) return false;
    field.number = Lite::GetTagFieldNumber(tag);
    field.type = Lite::GetTagWireType(tag);
    if (field.number == 0) return false;
    if (field.type == Lite::WIRETYPE_VARINT) {
      if (!input.ReadVarint64(&field.varint)) return false;
    } else if (field.type == Lite::WIRETYPE_LENGTH_DELIMITED) {
      const std::size_t length_start = at();
      std::uint32_t length = 0;
      if (!input.ReadVarint32(&length) || at() - length_start > 5) return false;
      const std::size_t payload_start = at();
      if (length > bytes.size() - payload_start || !input.Skip(static_cast<int>(length))) return false;
      field.payload = bytes.substr(payload_start, length);
    } else if (!Lite::SkipField(&input, tag)) {
      return false;
    }
    field.end = at();
    visit(field);
  }
  return true;
}

}  // namespace esp
