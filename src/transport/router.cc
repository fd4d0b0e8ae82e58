#include "transport/router.h"

namespace esp {
namespace {

// The handler of a stream that was finished as soon as it opened: what arrives is dropped.
class IgnoringStream final : public StreamHandler {
 public:
  void OnMessage(std::string) override {}
  void OnClose() override {}
};

}  // namespace

UnaryHandler RefuseUnary(Status status) {
  return [status = std::move(status)](CallContextPtr, std::string, UnaryDone done) { done(status, {}); };
}

StreamFactory RefuseStream(Status status) {
  return [status = std::move(status)](CallContextPtr, std::shared_ptr<StreamSink> sink) {
    sink->Finish(status);
    return std::make_shared<IgnoringStream>();
  };
}

void Router::AddUnary(std::string method, UnaryHandler handler) {
  unary_[std::move(method)] = std::move(handler);
}

void Router::AddStream(std::string method, StreamFactory factory) {
  streams_[std::move(method)] = std::move(factory);
}

void Router::WrapUnary(const std::function<UnaryHandler(const std::string&, UnaryHandler)>& wrap) {
  for (auto& [method, handler] : unary_) handler = wrap(method, std::move(handler));
}

void Router::WrapStreams(const std::function<StreamFactory(const std::string&, StreamFactory)>& wrap) {
  for (auto& [method, factory] : streams_) factory = wrap(method, std::move(factory));
}

const UnaryHandler* Router::FindUnary(std::string_view method) const {
  const auto it = unary_.find(method);
  return it == unary_.end() ? nullptr : &it->second;
}

const StreamFactory* Router::FindStream(std::string_view method) const {
  const auto it = streams_.find(method);
  return it == streams_.end() ? nullptr : &it->second;
}

}  // namespace esp
