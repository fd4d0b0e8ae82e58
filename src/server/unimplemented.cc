#include "server/unimplemented.h"

#include <google/protobuf/descriptor.h>

#include "etcdserverpb/rpc.pb.h"

namespace esp {
void RegisterUnimplemented(Router& router) {
  // Make sure the generated descriptors are linked in and registered.
  const auto* file = etcdserverpb::RangeRequest::descriptor()->file();
  for (int s = 0; s < file->service_count(); ++s) {
    const auto* service = file->service(s);
    for (int m = 0; m < service->method_count(); ++m) {
      const auto* method = service->method(m);
      const std::string path = "/" + service->full_name() + "/" + method->name();
      if (router.FindUnary(path) || router.FindStream(path)) continue;
      const std::string message =
          "etcd-sharding-proxy: " + service->full_name() + "." + method->name() + " is not implemented yet";
      const Status status(StatusCode::kUnimplemented, message);
      if (method->client_streaming() || method->server_streaming()) {
        router.AddStream(path, RefuseStream(status));
      } else {
        router.AddUnary(path, RefuseUnary(status));
      }
    }
  }
}

}  // namespace esp
