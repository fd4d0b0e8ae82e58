#pragma once
// gRPC core reports connection-level failures itself (a client's TLS handshake refused, a
// malformed HTTP/2 preface, ...), one line each, in its own format on stderr. Routed into spdlog
// so that the proxy's log has one format. GRPC_VERBOSITY still sets what gRPC emits (ERROR by
// default); --log-level then filters as for every other line.
namespace esp {

// Call once, before gRPC starts.
void RouteGrpcLogsToSpdlog();

}  // namespace esp
