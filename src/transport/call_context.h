#pragma once
// What a service knows about the client call it is serving: deadline, the metadata that must
// reach the shards (auth token, require-leader, ...) and cancellation. Transports fill it in;
// services and upstream calls read it. It never exposes a transport's own call objects.
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace esp {

using Clock = std::chrono::system_clock;
using Metadata = std::vector<std::pair<std::string, std::string>>;

// Cancellation that fans out: upstream calls register a hook, the transport fires it when the
// client goes away. Hooks registered after the fact run at once.
class Cancellation {
 public:
  using Hook = std::function<void()>;
  using HookId = std::size_t;

  HookId Add(Hook hook);
  void Remove(HookId id);
  void Cancel();
  bool cancelled() const;

 private:
  mutable std::mutex mu_;
  bool cancelled_ = false;
  HookId next_id_ = 1;
  std::vector<std::pair<HookId, Hook>> hooks_;
};

class CallContext {
 public:
  CallContext() = default;
  CallContext(std::optional<Clock::time_point> deadline, Metadata metadata)
      : deadline_(deadline), metadata_(std::move(metadata)) {}

  const std::optional<Clock::time_point>& deadline() const { return deadline_; }
  const Metadata& metadata() const { return metadata_; }
  Cancellation& cancellation() { return cancellation_; }

 private:
  std::optional<Clock::time_point> deadline_;
  Metadata metadata_;
  Cancellation cancellation_;
};

using CallContextPtr = std::shared_ptr<CallContext>;

}  // namespace esp
