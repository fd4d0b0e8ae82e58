#include "server/unimplemented.h"

#include <google/protobuf/descriptor.h>

#include "etcdserverpb/rpc.pb.h"

namespace esp {
namespace {

class RefusingStream final : public StreamHandler {
 public:
  void OnMessage(std::string) override {}
  void OnClose() override {}
};

}  // namespace

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
      if (method->client_streaming() || method->server_streaming()) {
        router.AddStream(path, [message](CallContextPtr, std::shared_ptr<StreamSink> sink) {
          sink->Finish(Status(StatusCode::kUnimplemented, message));
          return std::make_shared<RefusingStream>();
        });
      } else {
        router.AddUnary(path, [message](CallContextPtr, std::string, UnaryDone done) {
          done(Status(StatusCode::kUnimplemented, message), {});
        });
      }
    }
  }
}

}  // namespace esp
