#include "transport/socket_io.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace esp {
namespace {

bool WouldBlock(int error) { return error == EAGAIN || error == EWOULDBLOCK || error == EINTR; }

IoResult FromSsl(SSL* ssl, int rc) {
  if (rc > 0) return {IoResult::kOk, static_cast<std::size_t>(rc), {}};
  const int err = SSL_get_error(ssl, rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return {IoResult::kWouldBlock, 0, {}};
  if (err == SSL_ERROR_ZERO_RETURN) return {IoResult::kEof, 0, {}};
  return {IoResult::kError, 0, "SSL error " + std::to_string(err)};
}

IoResult FromSyscall(ssize_t rc) {
  if (rc > 0) return {IoResult::kOk, static_cast<std::size_t>(rc), {}};
  if (rc == 0) return {IoResult::kEof, 0, {}};
  if (WouldBlock(errno)) return {IoResult::kWouldBlock, 0, {}};
  return {IoResult::kError, 0, std::strerror(errno)};
}

}  // namespace

IoResult ReadSome(int fd, SSL* ssl, std::uint8_t* data, std::size_t size) {
  if (ssl == nullptr) return FromSyscall(recv(fd, data, size, 0));
  ERR_clear_error();
  return FromSsl(ssl, SSL_read(ssl, data, static_cast<int>(std::min<std::size_t>(size, 1 << 30))));
}

IoResult WriteSome(int fd, SSL* ssl, const char* data, std::size_t size) {
  if (ssl == nullptr) {
    const ssize_t rc = send(fd, data, size, MSG_NOSIGNAL);
    // send() returns 0 only for an empty buffer, which callers never pass: no EOF on writes.
    return rc == 0 ? IoResult{IoResult::kOk, 0, {}} : FromSyscall(rc);
  }
  ERR_clear_error();
  return FromSsl(ssl, SSL_write(ssl, data, static_cast<int>(std::min<std::size_t>(size, 1 << 30))));
}

}  // namespace esp
