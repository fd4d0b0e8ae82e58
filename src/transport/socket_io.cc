#include "transport/socket_io.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>

namespace esp {
namespace {

bool Transient(int error) { return error == EAGAIN || error == EWOULDBLOCK || error == EINTR; }

// OpenSSL's words for the failure `result` (of SSL_read or SSL_write) stands for.
IoResult TlsFailure(SSL* ssl, int result, const char* what) {
  const int error = SSL_get_error(ssl, result);
  if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) return IoResult::WouldBlock();
  if (error == SSL_ERROR_ZERO_RETURN) return IoResult::Closed("TLS connection closed");
  std::array<char, 256> reason{};
  const unsigned long queued = ERR_peek_last_error();
  if (queued != 0) ERR_error_string_n(queued, reason.data(), reason.size());
  std::string message = std::string("TLS ") + what + " failed";
  if (queued != 0) message += std::string(": ") + reason.data();
  else if (error == SSL_ERROR_SYSCALL && errno != 0) message += std::string(": ") + std::strerror(errno);
  return IoResult::Failed(std::move(message));
}

}  // namespace

IoResult ReadSome(int fd, SSL* ssl, std::span<std::uint8_t> buffer) {
  if (ssl != nullptr) {
    ERR_clear_error();
    const int n = SSL_read(ssl, buffer.data(), static_cast<int>(std::min<std::size_t>(buffer.size(), INT_MAX)));
    if (n > 0) return IoResult::Bytes(static_cast<std::size_t>(n));
    return TlsFailure(ssl, n, "read");
  }
  const ssize_t n = recv(fd, buffer.data(), buffer.size(), 0);
  if (n > 0) return IoResult::Bytes(static_cast<std::size_t>(n));
  if (n == 0) return IoResult::Closed("Socket closed");
  if (Transient(errno)) return IoResult::WouldBlock();
  return IoResult::Failed(std::strerror(errno));
}

IoResult WriteSome(int fd, SSL* ssl, std::string_view data) {
  if (ssl != nullptr) {
    ERR_clear_error();
    const int n = SSL_write(ssl, data.data(), static_cast<int>(std::min<std::size_t>(data.size(), 1 << 30)));
    if (n > 0) return IoResult::Bytes(static_cast<std::size_t>(n));
    return TlsFailure(ssl, n, "write");
  }
  const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
  if (n >= 0) return IoResult::Bytes(static_cast<std::size_t>(n));
  if (Transient(errno)) return IoResult::WouldBlock();
  return IoResult::Failed(std::strerror(errno));
}

}  // namespace esp
