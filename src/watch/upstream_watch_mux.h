#pragma once
// Shared upstream watch streams. Per shard and per set of forwarded metadata (auth token,
// require-leader, ...) one upstream Watch stream carries the watchers of every client stream, so
// thousands of client streams do not become thousands of upstream streams. The proxy picks every
// upstream watch id itself (client-chosen ids never go upstream) and routes each upstream response
// back to the watcher's target.
#include <atomic>
#include <cstddef>
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

// An upstream events or progress response broadcast to the members of a coalesced watcher:
// serialized once, without its watch_id, so each member only prepends its own id (protobuf
// merges concatenated messages, so prefix + body parses as the whole response).
struct SharedWatchResponse {
  etcdserverpb::WatchResponse response;
  std::string body;
};

class WatchGroup;

// Receives what one upstream watcher produces. Calls are serialized per upstream stream and made
// without any mux lock held, so a target may call back into the hub.
class UpstreamWatchTarget {
 public:
  virtual ~UpstreamWatchTarget() = default;
  // `created` (possibly created+canceled when the shard refused it), events, progress
  // notifications and `canceled`. After a canceled response the watcher is gone.
  virtual void OnUpstreamResponse(etcdserverpb::WatchResponse response) = 0;
  // The same, with the shard's bytes it was parsed from (a broadcaster reuses them).
  virtual void OnUpstreamMessage(etcdserverpb::WatchResponse response, std::string /*bytes*/) {
    OnUpstreamResponse(std::move(response));
  }
  // Events and progress notifications of a coalesced watcher, shared by every member.
  virtual void OnSharedResponse(const std::shared_ptr<const SharedWatchResponse>& shared) {
    OnUpstreamResponse(shared->response);
  }
  // The upstream stream ended (shard restart, connection loss); the watcher is gone.
  virtual void OnUpstreamBroken(const Status& status) = 0;
  // A coalesced watcher lost its upstream watcher (true) and re-created it (false): until then
  // a member's events may lag behind the shard, so its progress answers must wait.
  virtual void OnSharedResuming(bool /*resuming*/) {}
};

class UpstreamWatchStream;
class UpstreamWatchHub;

// A watcher's place upstream: which shared stream and upstream id, or which coalesced watcher
// (group) and member id.
struct UpstreamWatcherHandle {
  std::shared_ptr<UpstreamWatchStream> stream;
  std::int64_t id = 0;
  std::shared_ptr<WatchGroup> group;
  explicit operator bool() const { return stream != nullptr || group != nullptr; }
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
  std::size_t WatcherCount();
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
  // A watch from "now" joins the coalesced watcher with the same shard, metadata, range and
  // options (one upstream watcher for all of them); any other gets its own upstream watcher.
  UpstreamWatcherHandle Create(const std::shared_ptr<ShardTransport>& shard, const Metadata& metadata,
                               etcdserverpb::WatchCreateRequest request,
                               std::shared_ptr<UpstreamWatchTarget> target);
  // Always a watcher of its own (coalesced watchers use it for their upstream watcher).
  UpstreamWatcherHandle CreateDirect(const std::shared_ptr<ShardTransport>& shard, const Metadata& metadata,
                                     etcdserverpb::WatchCreateRequest request,
                                     std::shared_ptr<UpstreamWatchTarget> target);
  // Idempotent: releasing a watcher the shard already canceled does nothing.
  void Release(const UpstreamWatcherHandle& handle);
  void Progress(const std::shared_ptr<ShardTransport>& shard, const Metadata& metadata, ProgressDone done);

  // Called by a stream that became idle on its own (its last watcher canceled by the shard).
  void RetireIfIdle(const std::shared_ptr<UpstreamWatchStream>& stream);
  // Called by a stream that ended: it takes no watcher any more.
  void Forget(const std::shared_ptr<UpstreamWatchStream>& stream);
  // Called by a coalesced watcher that dissolved (last member left, or the shard canceled it).
  void ForgetGroup(const std::shared_ptr<WatchGroup>& group);

  // For metrics and tests: upstream streams, upstream watchers (what the shards hold),
  // coalesced watchers, and client watches (counted by the client streams).
  std::size_t stream_count();
  std::size_t UpstreamWatcherCount();
  std::size_t GroupCount();
  std::size_t ClientWatchCount() const { return client_watches_.load(std::memory_order_relaxed); }
  void AddClientWatches(std::ptrdiff_t delta) { client_watches_.fetch_add(delta, std::memory_order_relaxed); }

 private:
  UpstreamWatcherHandle CreateCoalesced(const std::shared_ptr<ShardTransport>& shard, const Metadata& metadata,
                                        etcdserverpb::WatchCreateRequest request,
                                        std::shared_ptr<UpstreamWatchTarget> target);

  using Key = std::pair<const ShardTransport*, std::string>;
  std::shared_ptr<UpstreamWatchStream> AddLocked(const Key& key, const std::shared_ptr<ShardTransport>& shard,
                                                  const Metadata& metadata);

  std::mutex mu_;
  std::map<Key, std::shared_ptr<UpstreamWatchStream>> streams_;
  std::map<std::string, std::shared_ptr<WatchGroup>> groups_;
  std::atomic<std::size_t> client_watches_{0};
};

}  // namespace esp
