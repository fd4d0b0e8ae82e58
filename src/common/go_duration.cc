#include "common/go_duration.h"

#include <array>
#include <charconv>
#include <utility>

namespace esp {
namespace {

// Longest unit names first: "ms" must win over "m".
constexpr std::array<std::pair<std::string_view, long long>, 7> kUnits = {{
    {"ns", 1},
    {"us", 1'000},
    {"µs", 1'000},
    {"ms", 1'000'000},
    {"s", 1'000'000'000},
    {"m", 60'000'000'000},
    {"h", 3'600'000'000'000},
}};

}  // namespace

std::optional<std::chrono::nanoseconds> ParseGoDuration(std::string_view text) {
  if (text == "0") return std::chrono::nanoseconds::zero();
  if (text.empty()) return std::nullopt;
  long double total = 0;
  while (!text.empty()) {
    double number = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), number);
    if (error != std::errc() || end == text.data() || number < 0 || text.front() == '-') return std::nullopt;
    text.remove_prefix(static_cast<std::size_t>(end - text.data()));
    bool matched = false;
    for (const auto& [unit, nanos] : kUnits) {
      if (!text.starts_with(unit)) continue;
      // "m" must not take the "m" of "ms".
      if (unit == "m" && text.starts_with("ms")) continue;
      total += static_cast<long double>(number) * nanos;
      text.remove_prefix(unit.size());
      matched = true;
      break;
    }
    if (!matched) return std::nullopt;
  }
  return std::chrono::nanoseconds(static_cast<long long>(total));
}

}  // namespace esp
