#pragma once
// One non-blocking read or write on a connection's socket, plain or through OpenSSL: the
// step both HTTP/2 connections (client-facing and towards shards) take, with one meaning of
// "would block", "closed" and "failed" for both.
#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace esp {

struct IoResult {
  enum Kind {
    kOk,          // `bytes` moved
    kWouldBlock,  // try again when epoll says so (TLS may want the other direction)
    kEof,         // the peer closed (TCP FIN, or a TLS close_notify)
    kError,       // anything else; `error` says what (errno text, or the SSL_get_error code)
  };
  Kind kind = kOk;
  std::size_t bytes = 0;
  std::string error;
};

// With `ssl`, OpenSSL's queue is cleared first, so after a failure it holds this call's reason
// (ERR_peek_error), e.g. a refused certificate during the handshake.
IoResult ReadSome(int fd, SSL* ssl, std::uint8_t* data, std::size_t size);
IoResult WriteSome(int fd, SSL* ssl, const char* data, std::size_t size);

}  // namespace esp
