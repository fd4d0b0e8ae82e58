#pragma once
// What a new client-port connection speaks, decided from its first bytes as etcd's cmux does:
// the HTTP/2 client preface (gRPC, or HTTP/2 with prior knowledge) or anything else (HTTP/1.1).
// Over TLS, ALPN decides when the client offered it. Shared by H2Server and the fuzz target, so
// that the fuzzer hands bytes to the connection the server would.
#include <algorithm>
#include <optional>
#include <string_view>

namespace esp {

inline constexpr std::string_view kH2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// True: HTTP/2; false: HTTP/1.1; nullopt: a strict prefix of the preface so far, read on.
// `alpn` is the protocol TLS negotiated ("" without TLS or without ALPN).
inline std::optional<bool> SpeaksHttp2(std::string_view first, std::string_view alpn = {}) {
  if (alpn == "h2") return true;
  if (alpn == "http/1.1") return false;
  const std::size_t n = std::min(first.size(), kH2Preface.size());
  if (first.substr(0, n) != kH2Preface.substr(0, n)) return false;
  if (first.size() >= kH2Preface.size()) return true;
  return std::nullopt;
}

}  // namespace esp
