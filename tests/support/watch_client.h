#pragma once
// A Watch client for tests: one stream read by a background thread, so tests await responses
// with deadlines; plus etcd's own watch gauges, scraped from a member's /metrics.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>

#include "support/fixtures.h"

namespace esp::test {

using etcdserverpb::WatchCreateRequest;
using etcdserverpb::WatchRequest;
using etcdserverpb::WatchResponse;
using namespace std::chrono_literals;

inline const std::string kAll("\0", 1);

// One Watch stream read by a background thread, so tests await responses with deadlines.
class WatchClient {
 public:
  // Sees each response on the reader thread, under the client's lock, before Next() may: a test
  // can keep its own state of the stream there (guarded by that lock: see Locked, AwaitThen).
  // Returns whether Next() hands the response out as well.
  using Sink = std::function<bool(const WatchResponse&)>;

  // `token`: an etcd auth token, sent as the "token" metadata clientv3 sends.
  explicit WatchClient(const std::string& address, const std::string& token = "", Sink sink = {})
      : WatchClient(Connect(address), token, std::move(sink)) {}
  // Over a channel of the test's own (TLS with a client certificate, say).
  explicit WatchClient(const std::shared_ptr<grpc::Channel>& channel, const std::string& token = "", Sink sink = {})
      : stub_(etcdserverpb::Watch::NewStub(channel)), sink_(std::move(sink)) {
    ctx_.set_deadline(std::chrono::system_clock::now() + 300s);
    if (!token.empty()) ctx_.AddMetadata("token", token);
    stream_ = stub_->Watch(&ctx_);
    reader_ = std::thread([this] { ReadLoop(); });
  }
  ~WatchClient() {
    ctx_.TryCancel();
    reader_.join();
    stream_->Finish();
  }
  WatchClient(const WatchClient&) = delete;
  WatchClient& operator=(const WatchClient&) = delete;

  // False when the stream is broken.
  bool Write(const WatchRequest& request) { return stream_->Write(request); }

  void Create(WatchCreateRequest create) {
    WatchRequest request;
    *request.mutable_create_request() = std::move(create);
    stream_->Write(request);
  }
  void Create(const std::string& key, const std::string& range_end = "", std::int64_t id = 0,
              std::int64_t start_revision = 0) {
    WatchCreateRequest create;
    create.set_key(key);
    create.set_range_end(range_end);
    create.set_watch_id(id);
    create.set_start_revision(start_revision);
    Create(std::move(create));
  }
  void Cancel(std::int64_t id) {
    WatchRequest request;
    request.mutable_cancel_request()->set_watch_id(id);
    stream_->Write(request);
  }
  void Progress() {
    WatchRequest request;
    request.mutable_progress_request();
    stream_->Write(request);
  }
  // Ends the stream from the client side, as a client that goes away does.
  void Close() { ctx_.TryCancel(); }

  std::optional<WatchResponse> Next(std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout, [this] { return !queue_.empty() || ended_; })) return std::nullopt;
    if (queue_.empty()) return std::nullopt;
    WatchResponse response = std::move(queue_.front());
    queue_.pop_front();
    return response;
  }
  // Waits for a response; fails the test if none comes.
  WatchResponse Expect(std::chrono::milliseconds timeout = 10s) {
    auto response = Next(timeout);
    EXPECT_TRUE(response.has_value()) << "no watch response within the deadline";
    return response.value_or(WatchResponse());
  }

  // Runs `read` under the client's lock (the sink's state).
  template <class Read>
  auto Locked(Read read) {
    const std::lock_guard lock(mu_);
    return read();
  }
  // Waits until `done` holds (checked under the lock after each response), the stream ends or
  // `timeout` passes; then runs `read`, still under the lock, and returns what it returns.
  template <class Read>
  auto AwaitThen(const std::function<bool()>& done, std::chrono::milliseconds timeout, Read read) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return ended_ || done(); });
    return read();
  }

 private:
  void ReadLoop() {
    WatchResponse response;
    while (stream_->Read(&response)) {
      const std::lock_guard lock(mu_);
      if (!sink_ || sink_(response)) queue_.push_back(response);
      cv_.notify_all();
    }
    const std::lock_guard lock(mu_);
    ended_ = true;
    cv_.notify_all();
  }

  std::unique_ptr<etcdserverpb::Watch::Stub> stub_;
  const Sink sink_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<WatchRequest, WatchResponse>> stream_;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<WatchResponse> queue_;
  bool ended_ = false;
};

// One of etcd's gauges on a member's client URL; -1 if absent.
inline int Gauge(const std::string& member_address, const std::string& name) {
  const auto result = RunCommand("curl -s http://" + member_address + "/metrics");
  std::smatch match;
  const std::regex line("\n" + name + " (\\d+)");
  if (!std::regex_search(result.output, match, line)) return -1;
  return std::stoi(match[1]);
}
inline int WatcherGauge(const std::string& member_address) {
  return Gauge(member_address, "etcd_debugging_mvcc_watcher_total");
}
inline int WatchStreamGauge(const std::string& member_address) {
  return Gauge(member_address, "etcd_debugging_mvcc_watch_stream_total");
}

}  // namespace esp::test
