#include "watch/watch_group.h"

#include <algorithm>
#include <chrono>

#include "watch/watch_encoding.h"

namespace esp {

WatchGroup::WatchGroup(std::weak_ptr<UpstreamWatchHub> hub, std::shared_ptr<ShardTransport> shard, Metadata metadata,
                       etcdserverpb::WatchCreateRequest request, std::string key)
    : hub_(std::move(hub)),
      shard_(std::move(shard)),
      metadata_(std::move(metadata)),
      request_(std::move(request)),
      key_(std::move(key)) {}

std::optional<std::int64_t> WatchGroup::Join(std::shared_ptr<UpstreamWatchTarget> member) {
  const std::lock_guard delivery(delivery_mu_);
  etcdserverpb::WatchResponse created;
  std::int64_t id = 0;
  bool resuming = false;
  {
    const std::lock_guard lock(mu_);
    if (dissolved_) return std::nullopt;
    id = next_member_++;
    if (!created_) {
      members_.emplace(id, std::move(member));  // gets the upstream watcher's own `created`
      snapshot_.reset();
      return id;
    }
    if (fragmenting_) {
      waiting_.emplace_back(id, std::move(member));
      return id;
    }
    members_.emplace(id, member);
    snapshot_.reset();
    created = JoinerCreatedLocked();
    resuming = resuming_;
  }
  member->OnUpstreamResponse(std::move(created));
  if (resuming) member->OnSharedResuming(true);
  return id;
}

const std::shared_ptr<const WatchGroup::Members>& WatchGroup::MembersLocked() {
  if (!snapshot_) {
    auto members = std::make_shared<Members>();
    members->reserve(members_.size());
    for (const auto& [id, member] : members_) members->push_back(member);
    snapshot_ = std::move(members);
  }
  return snapshot_;
}

etcdserverpb::WatchResponse WatchGroup::JoinerCreatedLocked() const {
  // The joiner's "now" is what the group has delivered up to: it gets exactly the events after
  // it, which is what etcd promises a watch created at that revision.
  etcdserverpb::WatchResponse created;
  *created.mutable_header() = header_;
  created.mutable_header()->set_revision(next_revision_ - 1);
  created.set_created(true);
  return created;
}

void WatchGroup::Leave(std::int64_t member) {
  UpstreamWatcherHandle upstream;
  {
    const std::lock_guard lock(mu_);
    if (members_.erase(member) > 0) {
      snapshot_.reset();
    } else {
      std::erase_if(waiting_, [member](const auto& entry) { return entry.first == member; });
    }
    if (dissolved_ || !members_.empty() || !waiting_.empty()) return;
    dissolved_ = true;
    upstream = std::move(upstream_);
    upstream_ = {};
  }
  Dissolve(std::move(upstream));
}

void WatchGroup::Dissolve(UpstreamWatcherHandle upstream) {
  auto hub = hub_.lock();
  if (!hub) return;
  hub->ForgetGroup(shared_from_this());
  hub->Release(upstream);
}

void WatchGroup::Start() {
  auto hub = hub_.lock();
  if (!hub) return;
  AdoptUpstream(hub->CreateDirect(shard_, metadata_, request_, shared_from_this()));
}

void WatchGroup::AdoptUpstream(UpstreamWatcherHandle handle) {
  {
    const std::lock_guard lock(mu_);
    if (!dissolved_) {
      upstream_ = std::move(handle);
      return;
    }
  }
  // Everyone left while it was being created.
  if (auto hub = hub_.lock()) hub->Release(handle);
}

std::size_t WatchGroup::MemberCount() {
  const std::lock_guard lock(mu_);
  return members_.size() + waiting_.size();
}

void WatchGroup::OnUpstreamResponse(etcdserverpb::WatchResponse response) { Deliver(std::move(response), nullptr); }

void WatchGroup::OnUpstreamMessage(etcdserverpb::WatchResponse response, std::string bytes) {
  Deliver(std::move(response), &bytes);
}

void WatchGroup::Deliver(etcdserverpb::WatchResponse response, const std::string* bytes) {
  const std::lock_guard delivery(delivery_mu_);
  std::shared_ptr<const Members> to;
  std::shared_ptr<SharedWatchResponse> shared;
  Members joined;
  etcdserverpb::WatchResponse joined_created;
  bool dissolve = false;
  bool resumed = false;
  {
    const std::lock_guard lock(mu_);
    if (dissolved_) return;
    if (response.has_header()) header_ = response.header();
    to = MembersLocked();
    if (response.created() && !response.canceled()) {
      if (resuming_) {  // resumed transparently: members saw their `created` long ago
        resuming_ = false;
        retries_ = 0;
        resumed = true;
      }
      if (!resumed) {
        created_ = true;
        next_revision_ = response.header().revision() + 1;
      }
    } else if (response.canceled()) {
      // A refused create, compaction, or a cancel by the shard: every member's watch ends.
      if (resuming_) response.set_created(false);  // members were created long ago
      if (!waiting_.empty()) {
        auto all = std::make_shared<Members>(*to);
        for (auto& [id, member] : waiting_) all->push_back(std::move(member));
        to = std::move(all);
      }
      members_.clear();
      snapshot_.reset();
      waiting_.clear();
      upstream_ = {};
      dissolved_ = dissolve = true;
    } else {
      fragmenting_ = response.fragment();
      if (fragmenting_) {
        // The rest of this revision's events is still to come.
      } else if (response.events_size() > 0) {
        next_revision_ = response.events(response.events_size() - 1).kv().mod_revision() + 1;
      } else {
        next_revision_ = std::max(next_revision_, response.header().revision() + 1);  // progress
      }
      shared = std::make_shared<SharedWatchResponse>();
      shared->response = std::move(response);
      shared->response.set_watch_id(0);
      // The shard's own bytes less its watch id: not serialized again.
      std::optional<std::string> body;
      if (bytes != nullptr) body = StripWatchId(*bytes);
      shared->body = body ? std::move(*body) : shared->response.SerializeAsString();
      if (!fragmenting_ && !waiting_.empty()) {
        for (auto& entry : waiting_) {
          joined.push_back(entry.second);
          members_.insert(std::move(entry));
          snapshot_.reset();
        }
        waiting_.clear();
        joined_created = JoinerCreatedLocked();
      }
    }
  }
  if (resumed) {
    for (const auto& member : *to) member->OnSharedResuming(false);
    return;
  }
  if (shared) {
    const std::shared_ptr<const SharedWatchResponse> once = shared;
    for (const auto& member : *to) member->OnSharedResponse(once);
  } else {
    for (const auto& member : *to) member->OnUpstreamResponse(response);
  }
  for (const auto& member : joined) member->OnUpstreamResponse(joined_created);
  if (dissolve) {
    if (auto hub = hub_.lock()) hub->ForgetGroup(shared_from_this());
  }
}

void WatchGroup::OnUpstreamBroken(const Status&) {
  {
    const std::lock_guard delivery(delivery_mu_);
    Members to;
    {
      const std::lock_guard lock(mu_);
      if (dissolved_) return;
      upstream_ = {};  // gone with its stream
      resuming_ = created_;
      fragmenting_ = false;
      if (resuming_) {
        for (const auto& [id, member] : members_) to.push_back(member);
      }
    }
    for (const auto& member : to) member->OnSharedResuming(true);
  }
  ScheduleResume();
}

void WatchGroup::ScheduleResume() {
  const std::lock_guard lock(mu_);
  // Back off while the shard stays down: 50 ms doubling to 2 s, then every 2 s, indefinitely.
  const auto delay = std::min(std::chrono::milliseconds(2000), std::chrono::milliseconds(50 << std::min(retries_, 6)));
  ++retries_;
  std::weak_ptr<WatchGroup> weak = weak_from_this();
  retry_alarm_ = std::make_unique<grpc::Alarm>();
  retry_alarm_->Set(std::chrono::system_clock::now() + delay, [weak](bool fired) {
    if (auto self = weak.lock(); fired && self) self->Resume();
  });
}

void WatchGroup::Resume() {
  auto hub = hub_.lock();
  if (!hub) return;
  etcdserverpb::WatchCreateRequest request = request_;
  {
    const std::lock_guard lock(mu_);
    if (dissolved_) return;
    // From the first revision not yet delivered: nothing lost, nothing twice.
    if (created_) request.set_start_revision(next_revision_);
  }
  AdoptUpstream(hub->CreateDirect(shard_, metadata_, std::move(request), shared_from_this()));
}

}  // namespace esp
