#include "auth/token.h"

#include <absl/strings/escaping.h>

namespace esp::auth {
namespace {

// etcd's tokens (simple and JWT) are printable ASCII, and gRPC refuses (aborts on) metadata
// values that are not: a decoded token with any other byte is a forgery.
bool IsPrintable(std::string_view token) {
  if (token.empty()) return false;
  for (const unsigned char c : token) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

}  // namespace

std::string EncodeToken(const ShardTokens& tokens) {
  std::string packed;
  for (const auto& [shard, token] : tokens) {
    packed += shard;
    packed.push_back('\0');
    packed += token;
    packed.push_back('\0');
  }
  return std::string(kTokenPrefix) + absl::WebSafeBase64Escape(packed);
}

std::optional<ShardTokens> DecodeToken(std::string_view token) {
  if (!token.starts_with(kTokenPrefix)) return std::nullopt;
  std::string packed;
  const std::string_view encoded = token.substr(kTokenPrefix.size());
  // Debian's abseil has its own string_view type.
  if (!absl::WebSafeBase64Unescape(absl::string_view(encoded.data(), encoded.size()), &packed)) return std::nullopt;
  ShardTokens tokens;
  std::size_t pos = 0;
  while (pos < packed.size()) {
    const std::size_t name_end = packed.find('\0', pos);
    if (name_end == std::string::npos) return std::nullopt;
    const std::size_t token_end = packed.find('\0', name_end + 1);
    if (token_end == std::string::npos) return std::nullopt;
    std::string token_value = packed.substr(name_end + 1, token_end - name_end - 1);
    if (!IsPrintable(token_value)) return std::nullopt;
    tokens[packed.substr(pos, name_end - pos)] = std::move(token_value);
    pos = token_end + 1;
  }
  if (tokens.empty()) return std::nullopt;
  return tokens;
}

std::string TokenForShard(std::string_view token, const std::string& shard_name) {
  if (!token.starts_with(kTokenPrefix)) return std::string(token);
  const auto tokens = DecodeToken(token);
  if (!tokens) return std::string(kNoShardToken);
  const auto it = tokens->find(shard_name);
  return it != tokens->end() ? it->second : std::string(kNoShardToken);
}

}  // namespace esp::auth
