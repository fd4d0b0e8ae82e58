#pragma once
// A client's verified certificate identity (etcd's --client-cert-auth: the certificate's CN is the
// user of calls that carry no token), from the client-facing TLS session to the upstream
// transport, which presents it to the shards (src/auth/cert_identity.h).
#include <openssl/x509.h>

#include <string>
#include <string_view>

namespace esp {

// The reserved metadata key that carries a call's verified client-certificate CN. Client-facing
// transports drop a client's own header of this name, so it cannot be forged, and set it from the
// TLS session; upstream transports remove it before a call leaves for a shard. Metadata rather
// than a CallContext field because it must follow the call wherever its metadata goes (child
// contexts of fan-outs, shared upstream Watch streams keyed by metadata).
inline constexpr std::string_view kClientCertCnKey = "esp-client-cert-cn";

// The certificate's CN as etcd reads it (Go's Subject.CommonName: the last CN attribute); empty
// when there is none.
std::string CommonName(X509* cert);

}  // namespace esp
