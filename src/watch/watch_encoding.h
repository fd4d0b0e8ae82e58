#pragma once
// Broadcasting one upstream WatchResponse to many client watches: the shard's own bytes are reused
// with the upstream watch_id taken out, and each client stream puts its own watch_id field in
// front (a WatchResponse holding only that id, serialized once per watch: protobuf reads fields
// in any order), so an event is never re-serialized, neither per member nor once per broadcast.
#include <optional>
#include <string>
#include <string_view>

namespace esp {

// `message` (a serialized WatchResponse) without its top-level watch_id field(s), every other
// byte kept as it was. nullopt when the bytes cannot be walked as protobuf fields.
std::optional<std::string> StripWatchId(std::string_view message);

}  // namespace esp
