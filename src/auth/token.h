#pragma once
// The proxy's composite auth token: one etcd token per shard, packed into one opaque string the
// client sends like any etcd token. It is self-contained (no state in any proxy's memory), so
// every proxy in front of the same shards can translate a token another proxy issued.
//
// Format: "esp1." + base64url(no padding) of repeated `<shard name> NUL <shard token> NUL`.
// Shard names come from the config and etcd tokens are printable ASCII, so NUL separates both.
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace esp::auth {

inline constexpr std::string_view kTokenPrefix = "esp1.";

// Sent to a shard instead of a token the proxy cannot translate for it (garbled composite, or
// the shard was down at Authenticate time): etcd answers `etcdserver: invalid auth token`, the
// error on which clients authenticate again.
inline constexpr std::string_view kNoShardToken = "esp-no-token-for-this-shard";

// shard name -> that shard's etcd token.
using ShardTokens = std::map<std::string, std::string>;

std::string EncodeToken(const ShardTokens& tokens);

// nullopt when `token` is not a well-formed composite token.
std::optional<ShardTokens> DecodeToken(std::string_view token);

// What to send to shard `shard_name` for the client's `token` metadata value. A value that is not
// a composite token at all goes on unchanged: the shard judges it exactly as etcd would.
std::string TokenForShard(std::string_view token, const std::string& shard_name);

}  // namespace esp::auth
