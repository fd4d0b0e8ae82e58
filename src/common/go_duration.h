#pragma once
// Durations written as etcd's flags take them (Go's time.ParseDuration): "5s", "2h", "100ms",
// "1m30s", "0". Used for the --grpc-keepalive-* flags, so they read as etcd's.
#include <chrono>
#include <optional>
#include <string_view>

namespace esp {

// Nullopt for anything else (no number, unknown unit, negative).
std::optional<std::chrono::nanoseconds> ParseGoDuration(std::string_view text);

}  // namespace esp
