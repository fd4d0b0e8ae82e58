#pragma once
// The proxy's side of the meta store: follows the shard map (a watch on the store's prefix,
// every new version handed to `apply`, which swaps the Topology), keeps this proxy registered
// under a lease with the map version it serves, and keeps the list of live proxies for
// MemberList. Runs on two threads of its own; nothing here is on a request path. While the meta
// store is unreachable the proxy keeps serving the last map it applied (see docs/operations.md).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "meta/map_store.h"

namespace esp::meta {

struct FollowerOptions {
  std::string prefix = kDefaultPrefix;
  std::chrono::seconds lease_ttl{10};  // registration: a dead proxy vanishes within this
  ProxyRecord self;                    // name, member id, client URLs, started_at
};

// How long before its registration lease could expire a proxy stops serving keys: covers a
// renewal's time in flight and scheduling delays between the check and a write.
inline std::chrono::milliseconds FenceMargin(std::chrono::seconds ttl) {
  return std::max<std::chrono::milliseconds>(std::chrono::milliseconds(1000), ttl / 5);
}

class MapFollower {
 public:
  // Called on the follower's watch thread with each map version newer than the last applied one;
  // returns false when the map could not be applied (the proxy then keeps serving the old one).
  using ApplyMap = std::function<bool(const MapDocument&)>;

  MapFollower(std::unique_ptr<EtcdClient> client, FollowerOptions options, ApplyMap apply);
  ~MapFollower();

  // Registers this proxy (blocking, one attempt): key requests are served only under a live
  // registration (upstream/upstream_fence.h). False when the store did not answer.
  bool RegisterNow();
  // Reads the map at start-up, before serving: MetaError when the store is unreachable,
  // ConfigError when it holds no map (run `map init`) or an invalid one. Does not call apply.
  MapDocument LoadInitial();
  // The caller has applied `version` (LoadInitial's): registers (one attempt, blocking), then
  // starts following and registering on the follower's threads.
  void Start(std::int64_t applied_version);
  void Stop();

  bool connected() const { return connected_.load(); }
  std::int64_t served_version() const { return served_version_.load(); }
  // Seconds since the meta store was last seen (0 while connected).
  double SecondsDisconnected() const;
  // Live proxies as registered in the store (this one included once registered).
  std::vector<ProxyRecord> LiveProxies() const;
  // The running move's progress as the mover last wrote it (JSON), or "".
  std::string MoveProgress() const;

 private:
  void WatchLoop();
  // One snapshot + watch session; returns when the stream ends, or when a new map could not
  // be applied (the session is then started again later).
  enum class SessionEnd { kStreamEnded, kApplyFailed };
  SessionEnd FollowOnce();
  // False when the map is newer but could not be applied.
  bool ApplyIfNewer(const std::string& json);
  void RegisterLoop();
  bool RenewOnce();
  bool RefreshMap();
  void AllowSendsAfterRenewal(std::chrono::steady_clock::time_point sent, std::int64_t ttl_seconds);
  bool PutSelf(std::int64_t lease_id);
  void SetWatchUp(bool up);
  void SetLeaseUp(bool up);
  void UpdateConnected();
  // Sleeps up to `d`; false when stopping.
  bool Pause(std::chrono::milliseconds d);

  std::unique_ptr<EtcdClient> client_;
  MapStore store_;
  FollowerOptions options_;
  ApplyMap apply_;

  std::atomic<std::int64_t> served_version_{0};
  std::atomic<bool> connected_{true};
  std::atomic<bool> watch_up_{true};
  std::atomic<bool> lease_up_{true};
  std::atomic<std::int64_t> down_since_ms_{0};  // steady clock, ms; 0 while connected

  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::int64_t published_version_ = -1;  // in our record in the store
  std::shared_ptr<grpc::ClientContext> watch_context_;  // to cancel the blocking watch
  std::map<std::string, ProxyRecord> proxies_;          // by key
  std::int64_t lease_id_ = 0;
  std::string move_progress_;
  std::mutex apply_mu_;  // ApplyIfNewer runs on both threads

  std::thread watch_thread_;
  std::thread register_thread_;
};

}  // namespace esp::meta
