#include "transport/router.h"

namespace esp {

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
  const auto it = unary_.find(std::string(method));
  return it == unary_.end() ? nullptr : &it->second;
}

const StreamFactory* Router::FindStream(std::string_view method) const {
  const auto it = streams_.find(std::string(method));
  return it == streams_.end() ? nullptr : &it->second;
}

}  // namespace esp
