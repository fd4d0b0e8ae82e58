#include "watch/watch_encoding.h"

#include "common/wire_fields.h"

namespace esp {
namespace {

constexpr int kWatchIdField = 2;  // WatchResponse.watch_id (int64, varint)

}  // namespace

std::optional<std::string> StripWatchId(std::string_view message) {
  std::string out;
  out.reserve(message.size());
  std::size_t kept_from = 0;  // start of the span not yet copied
  const bool parses = ForEachWireField(message, [&](const WireField& field) {
    if (field.number != kWatchIdField || field.type != WireType::WIRETYPE_VARINT) return;
    out.append(message.substr(kept_from, field.start - kept_from));
    kept_from = field.end;
  });
  if (!parses) return std::nullopt;
  out.append(message.substr(kept_from));
  return out;
}

}  // namespace esp
