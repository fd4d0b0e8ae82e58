#pragma once
// Standard base64 (RFC 4648, with padding), as etcd's JSON and our config use it for binary keys.
#include <optional>
#include <string>
#include <string_view>

namespace esp {

std::string EncodeBase64(std::string_view bytes);
// nullopt for text that is not valid padded base64.
std::optional<std::string> DecodeBase64(std::string_view text);

}  // namespace esp
