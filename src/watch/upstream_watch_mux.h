#pragma once
// Shared upstream watch streams. Per shard and per set of forwarded metadata (auth token,
// require-leader, ...) one upstream Watch stream carries the watchers of every client stream, so
// thousands of client streams do not become thousands of upstream streams. The proxy picks every
// upstream watch id itself (client-chosen ids never go upstream) and routes each upstream response
// back to the watcher's target.
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "etcdserverpb/rpc.pb.h"
#include "upstream/shard_transport.h"

namespace esp {

// Receives what one upstream watcher produces. Calls are serialized per upstream stream and made
// without any mux lock held, so a target may call back into the hub.
class UpstreamWatchTarget {
 public:
  virtual ~UpstreamWatchTarget() = default;
  // `created` (possibly created+canceled when the shard refused it), events, progress
  // notifications and `canceled`. After a canceled response the watcher is gone.
  virtual void OnUpstreamResponse(etcdserverpb::WatchResponse response) = 0;
  // The upstream stream ended (shard restart, connection loss); the watcher is gone.
  virtual void OnUpstreamBroken(const Status& status) = 0;
};

class UpstreamWatchStream;
class UpstreamWatchHub;

// A watcher's place upstream: which shared stream, which upstream id.
struct UpstreamWatcherHandle {
  std::shared_ptr<UpstreamWatchStream> stream;
  std::int64_t id = 0;
  explicit operator bool() const { return stream != nullptr; }
};

// Answer to a progress request: the shard's response, or nullopt if the stream broke first.
using ProgressDone = std::function<void(std::optional<etcdserverpb::WatchResponse>)>;

class UpstreamWatchStream : public std::enable_shared_from_this<UpstreamWatchStream> {
 public:
  UpstreamWatchStream(std::weak_ptr<UpstreamWatchHub> hub, std::shared_ptr<ShardTransport> shard, Metadata metadata);

  // Starts the upstream call and sends what was queued before. Call without the hub lock.
  void Open();
  // Registers a watcher and sends its create with an upstream id chosen here; nullopt once the
  // stream has ended (the caller then opens a new one).
  std::optional<std::int64_t> AddWatcher(etcdserverpb::WatchCreateRequest request,
                                         std::shared_ptr<UpstreamWatchTarget> target);
  // Forgets the watcher and cancels it upstream. Returns true when the stream is left idle.
  bool RemoveWatcher(std::int64_t id);
  bool RequestProgress(ProgressDone done);
  bool Idle();
  std::size_t watcher_count();
  // Ends the upstream stream: etcd frees every watcher the stream still had.
  void Close();
  const std::string& shard_description() const { return shard_->description(); }

  // From the transport's observer.
  void OnMessage(std::string bytes);
  void OnClose(Status status);

 private:
  bool IdleLocked() const { return watchers_.empty() && progress_waiters_.empty(); }
  void Send(const etcdserverpb::WatchRequest& request);

  std::weak_ptr<UpstreamWatchHub> hub_;
  std::shared_ptr<ShardTransport> shard_;
  Metadata metadata_;
  std::mutex mu_;
  std::shared_ptr<UpstreamStream> stream_;  // null until Open
  std::deque<std::string> outbox_;          // requests made before Open
  bool closed_ = false;
  // Upstream ids start at 1: 0 asks etcd to pick one.
  std::int64_t next_id_ = 1;
  std::map<std::int64_t, std::shared_ptr<UpstreamWatchTarget>> watchers_;
  // etcd answers creates in request order per stream, also the refused ones (watch_id -1).
  std::deque<std::int64_t> pending_creates_;
  std::deque<ProgressDone> progress_waiters_;
};

class UpstreamWatchHub : public std::enable_shared_from_this<UpstreamWatchHub> {
 public:
  UpstreamWatcherHandle Create(const std::shared_ptr<ShardTransport>& shard, const Metadata& metadata,
                               etcdserverpb::WatchCreateRequest request,
                               std::shared_ptr<UpstreamWatchTarget> target);
  // Idempotent: releasing a watcher the shard already canceled does nothing.
  void Release(const UpstreamWatcherHandle& handle);
  void Progress(const std::shared_ptr<ShardTransport>& shard, const Metadata& metadata, ProgressDone done);

  // Called by a stream that became idle on its own (its last watcher canceled by the shard).
  void RetireIfIdle(const std::shared_ptr<UpstreamWatchStream>& stream);
  std::size_t stream_count();
  // For the metrics: watches open on client streams (WatchStream counts them here, as every
  // stream shares this hub) and watchers held on the shards.
  void CountClientWatches(std::int64_t delta) { client_watches_.fetch_add(delta, std::memory_order_relaxed); }
  std::int64_t client_watch_count() const { return client_watches_.load(std::memory_order_relaxed); }
  std::size_t watcher_count();

 private:
  using Key = std::pair<const ShardTransport*, std::string>;
  std::shared_ptr<UpstreamWatchStream> AddLocked(const Key& key, const std::shared_ptr<ShardTransport>& shard,
                                                  const Metadata& metadata);

  std::mutex mu_;
  std::map<Key, std::shared_ptr<UpstreamWatchStream>> streams_;
  std::atomic<std::int64_t> client_watches_{0};
};

}  // namespace esp
