#include "watch/upstream_watch_mux.h"

#include "watch/watch_group.h"

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace esp {
namespace {

constexpr char kWatchMethod[] = "/etcdserverpb.Watch/Watch";

// The transport keeps its observer until OnClose; it forwards to the stream it feeds.
class MuxObserver final : public UpstreamStreamObserver {
 public:
  explicit MuxObserver(std::shared_ptr<UpstreamWatchStream> stream) : stream_(std::move(stream)) {}
  void OnMessage(std::string message) override { stream_->OnMessage(std::move(message)); }
  void OnClose(Status status) override { stream_->OnClose(std::move(status)); }

 private:
  std::shared_ptr<UpstreamWatchStream> stream_;
};

// Each part is prefixed with its length: keys, range ends and binary metadata may hold any byte,
// so a separator alone would let two different requests ("s\0" alone and "s" onwards) collide.
void AppendField(std::string& out, std::string_view field) {
  out += std::to_string(field.size());
  out += ':';
  out += field;
}

// Streams are shared by clients with the same forwarded metadata only: the token decides what a
// watcher may see, hasleader how the shard must behave.
std::string MetadataKey(const Metadata& metadata) {
  std::vector<std::pair<std::string, std::string>> sorted(metadata.begin(), metadata.end());
  std::sort(sorted.begin(), sorted.end());
  std::string key;
  for (const auto& [k, v] : sorted) {
    AppendField(key, k);
    AppendField(key, v);
  }
  return key;
}

// Watches that may share one upstream watcher: same shard, same identity, same range and options.
// Only watches from "now" (start_revision 0): a joiner can then start at the revision the shared
// watcher has delivered up to, which is a valid "now" for it.
std::string GroupKey(const ShardTransport* shard, const Metadata& metadata,
                     const etcdserverpb::WatchCreateRequest& request) {
  std::string key = std::to_string(reinterpret_cast<std::uintptr_t>(shard)) + '/';
  AppendField(key, MetadataKey(metadata));
  AppendField(key, request.key());
  AppendField(key, request.range_end());
  for (const int filter : request.filters()) key += std::to_string(filter) + ',';
  key += request.prev_kv() ? 'p' : '-';
  key += request.progress_notify() ? 'n' : '-';
  key += request.fragment() ? 'f' : '-';
  return key;
}

}  // namespace

UpstreamWatchStream::UpstreamWatchStream(std::weak_ptr<UpstreamWatchHub> hub, std::shared_ptr<ShardTransport> shard,
                                         Metadata metadata)
    : hub_(std::move(hub)), shard_(std::move(shard)), metadata_(std::move(metadata)) {}

void UpstreamWatchStream::Open() {
  // Called with no lock held: a failing stream may report OnClose from inside OpenStream.
  auto stream = shard_->OpenStream(kWatchMethod, metadata_, std::make_shared<MuxObserver>(shared_from_this()));
  bool closed_meanwhile = false;
  {
    const std::lock_guard lock(mu_);
    stream_ = stream;
    closed_meanwhile = closed_;
    for (auto& message : outbox_) stream_->Write(std::move(message));
    outbox_.clear();
  }
  // Retired (or ended) before it was opened: nothing may keep it open.
  if (closed_meanwhile) stream->Cancel();
}

void UpstreamWatchStream::Send(const etcdserverpb::WatchRequest& request) {
  // Called with mu_ held: keeps the upstream request order equal to the bookkeeping order.
  // Before Open, requests wait in the outbox.
  if (stream_) {
    stream_->Write(request.SerializeAsString());
  } else {
    outbox_.push_back(request.SerializeAsString());
  }
}

std::optional<std::int64_t> UpstreamWatchStream::AddWatcher(etcdserverpb::WatchCreateRequest request,
                                                            std::shared_ptr<UpstreamWatchTarget> target) {
  const std::lock_guard lock(mu_);
  if (closed_) return std::nullopt;
  const std::int64_t id = next_id_++;
  request.set_watch_id(id);
  watchers_[id] = std::move(target);
  pending_creates_.push_back(id);
  etcdserverpb::WatchRequest wrapped;
  *wrapped.mutable_create_request() = std::move(request);
  Send(wrapped);
  return id;
}

bool UpstreamWatchStream::RemoveWatcher(std::int64_t id) {
  std::deque<ProgressDone> orphaned;
  bool idle = false;
  {
    const std::lock_guard lock(mu_);
    if (watchers_.erase(id) == 0) return IdleLocked();
    if (watchers_.empty()) {
      // The watchers a pending progress answer would speak for are gone, and etcd 3.5+ never
      // answers on a stream without watchers: give up on it rather than keep the stream open.
      orphaned.swap(progress_waiters_);
    }
    idle = IdleLocked();
    if (!idle) {
      // Others still use the stream: cancel just this watcher. When the stream goes idle the
      // caller closes it instead, which frees everything on the shard at once.
      etcdserverpb::WatchRequest cancel;
      cancel.mutable_cancel_request()->set_watch_id(id);
      Send(cancel);
    }
  }
  for (auto& waiter : orphaned) waiter(std::nullopt);
  return idle;
}

bool UpstreamWatchStream::RequestProgress(ProgressDone done) {
  const std::lock_guard lock(mu_);
  if (closed_) return false;
  progress_waiters_.push_back(std::move(done));
  etcdserverpb::WatchRequest request;
  request.mutable_progress_request();
  Send(request);
  return true;
}

bool UpstreamWatchStream::Idle() {
  const std::lock_guard lock(mu_);
  return IdleLocked();
}

std::size_t UpstreamWatchStream::WatcherCount() {
  const std::lock_guard lock(mu_);
  return watchers_.size();
}

void UpstreamWatchStream::Close() {
  std::shared_ptr<UpstreamStream> stream;
  {
    const std::lock_guard lock(mu_);
    closed_ = true;
    stream = stream_;
  }
  if (stream) stream->Cancel();
}

void UpstreamWatchStream::OnMessage(std::string bytes) {
  etcdserverpb::WatchResponse response;
  if (!response.ParseFromString(bytes)) return;
  std::shared_ptr<UpstreamWatchTarget> target;
  ProgressDone progress;
  bool idle = false;
  {
    const std::lock_guard lock(mu_);
    std::int64_t id = response.watch_id();
    if (response.created()) {
      // Matched by order: a refused create comes back with watch_id -1.
      if (pending_creates_.empty()) return;
      id = pending_creates_.front();
      pending_creates_.pop_front();
    } else if (id == -1 && !response.canceled()) {
      if (progress_waiters_.empty()) return;
      progress = std::move(progress_waiters_.front());
      progress_waiters_.pop_front();
    }
    if (!progress) {
      const auto it = watchers_.find(id);
      if (it == watchers_.end()) return;  // released meanwhile
      target = it->second;
      if (response.canceled()) watchers_.erase(it);
    }
    idle = IdleLocked() && !closed_;
  }
  if (progress) progress(std::move(response));
  if (target) target->OnUpstreamMessage(std::move(response), std::move(bytes));
  if (idle) {
    if (auto hub = hub_.lock()) hub->RetireIfIdle(shared_from_this());
  }
}

void UpstreamWatchStream::OnClose(Status status) {
  std::map<std::int64_t, std::shared_ptr<UpstreamWatchTarget>> watchers;
  std::deque<ProgressDone> waiters;
  {
    const std::lock_guard lock(mu_);
    closed_ = true;
    watchers.swap(watchers_);
    waiters.swap(progress_waiters_);
    pending_creates_.clear();
    outbox_.clear();
  }
  // OnClose comes from the transport's completion (never from a call made under the hub lock):
  // an ended stream leaves the hub's map at once instead of lingering until its key is reused.
  if (auto hub = hub_.lock()) hub->Forget(shared_from_this());
  for (auto& waiter : waiters) waiter(std::nullopt);
  for (auto& [id, target] : watchers) target->OnUpstreamBroken(status);
}

std::shared_ptr<UpstreamWatchStream> UpstreamWatchHub::AddLocked(const Key& key,
                                                                 const std::shared_ptr<ShardTransport>& shard,
                                                                 const Metadata& metadata) {
  // Opened by the caller once the hub lock is released.
  auto stream = std::make_shared<UpstreamWatchStream>(weak_from_this(), shard, metadata);
  streams_[key] = stream;
  return stream;
}

UpstreamWatcherHandle UpstreamWatchHub::Create(const std::shared_ptr<ShardTransport>& shard, const Metadata& metadata,
                                               etcdserverpb::WatchCreateRequest request,
                                               std::shared_ptr<UpstreamWatchTarget> target) {
  if (request.start_revision() == 0) return CreateCoalesced(shard, metadata, std::move(request), std::move(target));
  return CreateDirect(shard, metadata, std::move(request), std::move(target));
}

UpstreamWatcherHandle UpstreamWatchHub::CreateCoalesced(const std::shared_ptr<ShardTransport>& shard,
                                                        const Metadata& metadata,
                                                        etcdserverpb::WatchCreateRequest request,
                                                        std::shared_ptr<UpstreamWatchTarget> target) {
  request.set_watch_id(0);
  const std::string key = GroupKey(shard.get(), metadata, request);
  for (;;) {
    std::shared_ptr<WatchGroup> group;
    bool fresh = false;
    {
      const std::lock_guard lock(mu_);
      auto& slot = groups_[key];
      if (!slot) {
        slot = std::make_shared<WatchGroup>(weak_from_this(), shard, metadata, request, key);
        fresh = true;
      }
      group = slot;
    }
    // Joined outside the hub lock: a joiner's `created` is delivered from inside Join, and a
    // delivery may call back into the hub (Release).
    if (const auto id = group->Join(target)) {
      if (fresh) group->Start();  // after the first member joined: it must see the `created`
      return {.stream = nullptr, .id = *id, .group = group};
    }
    ForgetGroup(group);  // dissolved just now: a fresh one takes its place
  }
}

UpstreamWatcherHandle UpstreamWatchHub::CreateDirect(const std::shared_ptr<ShardTransport>& shard,
                                                     const Metadata& metadata,
                                                     etcdserverpb::WatchCreateRequest request,
                                                     std::shared_ptr<UpstreamWatchTarget> target) {
  UpstreamWatcherHandle handle;
  {
    const std::lock_guard lock(mu_);
    const Key key{shard.get(), MetadataKey(metadata)};
    auto it = streams_.find(key);
    if (it != streams_.end()) {
      if (auto id = it->second->AddWatcher(request, target)) return {.stream = it->second, .id = *id, .group = nullptr};
    }
    // None yet, or the old one ended: a fresh stream cannot refuse.
    handle.stream = AddLocked(key, shard, metadata);
    handle.id = handle.stream->AddWatcher(std::move(request), std::move(target)).value_or(0);
  }
  handle.stream->Open();
  return handle;
}

void UpstreamWatchHub::Release(const UpstreamWatcherHandle& handle) {
  if (!handle) return;
  if (handle.group) {
    handle.group->Leave(handle.id);
    return;
  }
  {
    const std::lock_guard lock(mu_);
    if (!handle.stream->RemoveWatcher(handle.id)) return;
    for (auto it = streams_.begin(); it != streams_.end(); ++it) {
      if (it->second == handle.stream) {
        streams_.erase(it);
        break;
      }
    }
  }
  // Outside the lock: cancelling may run the stream's OnClose on this thread.
  handle.stream->Close();
}

void UpstreamWatchHub::Progress(const std::shared_ptr<ShardTransport>& shard, const Metadata& metadata,
                                ProgressDone done) {
  std::shared_ptr<UpstreamWatchStream> fresh;
  {
    const std::lock_guard lock(mu_);
    const Key key{shard.get(), MetadataKey(metadata)};
    auto it = streams_.find(key);
    if (it != streams_.end() && it->second->RequestProgress(done)) return;
    fresh = AddLocked(key, shard, metadata);
    fresh->RequestProgress(std::move(done));
  }
  fresh->Open();
}

void UpstreamWatchHub::RetireIfIdle(const std::shared_ptr<UpstreamWatchStream>& stream) {
  {
    const std::lock_guard lock(mu_);
    // Checked under the hub lock: nobody can add a watcher between the check and the erase.
    if (!stream->Idle()) return;
    for (auto it = streams_.begin(); it != streams_.end(); ++it) {
      if (it->second == stream) {
        streams_.erase(it);
        break;
      }
    }
  }
  stream->Close();
}

void UpstreamWatchHub::Forget(const std::shared_ptr<UpstreamWatchStream>& stream) {
  const std::lock_guard lock(mu_);
  for (auto it = streams_.begin(); it != streams_.end(); ++it) {
    if (it->second == stream) {
      streams_.erase(it);
      return;
    }
  }
}

void UpstreamWatchHub::ForgetGroup(const std::shared_ptr<WatchGroup>& group) {
  const std::lock_guard lock(mu_);
  const auto it = groups_.find(group->key());
  if (it != groups_.end() && it->second == group) groups_.erase(it);
}

std::size_t UpstreamWatchHub::stream_count() {
  const std::lock_guard lock(mu_);
  return streams_.size();
}

std::size_t UpstreamWatchHub::UpstreamWatcherCount() {
  const std::lock_guard lock(mu_);
  std::size_t count = 0;
  for (const auto& [key, stream] : streams_) count += stream->WatcherCount();
  return count;
}

std::size_t UpstreamWatchHub::GroupCount() {
  const std::lock_guard lock(mu_);
  return groups_.size();
}

}  // namespace esp
