#pragma once
// A coalesced watcher: client watches on one shard with the same identity, range and options,
// all from "now", share one upstream watcher whose responses are broadcast to every member.
// A member that joins after the shared watcher was created starts at the revision the group has
// delivered up to (a valid "now": it sees every later event and none before). The group resumes
// its upstream watcher itself when a stream breaks, so members notice nothing; it cancels the
// upstream watcher when its last member leaves.
#include <grpcpp/alarm.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "etcdserverpb/rpc.pb.h"
#include "watch/upstream_watch_mux.h"

namespace esp {

class WatchGroup final : public UpstreamWatchTarget, public std::enable_shared_from_this<WatchGroup> {
 public:
  WatchGroup(std::weak_ptr<UpstreamWatchHub> hub, std::shared_ptr<ShardTransport> shard, Metadata metadata,
             etcdserverpb::WatchCreateRequest request, std::string key);

  // Adds a member and returns its id; nullopt once the group has dissolved. A member joining a
  // created group gets its `created` from inside this call.
  std::optional<std::int64_t> Join(std::shared_ptr<UpstreamWatchTarget> member);
  // Idempotent. The last member out cancels the upstream watcher.
  void Leave(std::int64_t member);
  // Creates the upstream watcher; call once, after the first Join.
  void Start();

  void OnUpstreamResponse(etcdserverpb::WatchResponse response) override;
  void OnUpstreamMessage(etcdserverpb::WatchResponse response, std::string bytes) override;
  void OnUpstreamBroken(const Status& status) override;

  const std::string& key() const { return key_; }
  std::size_t MemberCount();

 private:
  using Members = std::vector<std::shared_ptr<UpstreamWatchTarget>>;
  etcdserverpb::WatchResponse JoinerCreatedLocked() const;
  // The members as a list shared by deliveries: rebuilt only after the membership changed, so
  // a broadcast costs no per-member copy or reference count.
  const std::shared_ptr<const Members>& MembersLocked();
  // `bytes`: what `response` was parsed from, if known (then the broadcast body is cut from it).
  void Deliver(etcdserverpb::WatchResponse response, const std::string* bytes);
  void Dissolve(UpstreamWatcherHandle upstream);
  void ScheduleResume();
  void Resume();
  void AdoptUpstream(UpstreamWatcherHandle handle);

  const std::weak_ptr<UpstreamWatchHub> hub_;
  const std::shared_ptr<ShardTransport> shard_;
  const Metadata metadata_;
  const etcdserverpb::WatchCreateRequest request_;
  const std::string key_;

  // Held while responses are delivered to members (never while calling the hub): members see
  // the group's responses in order, and a joiner's `created` cannot overtake or trail one.
  std::mutex delivery_mu_;
  // Membership and state; taken alone by Leave, which members may call from a delivery.
  std::mutex mu_;
  std::map<std::int64_t, std::shared_ptr<UpstreamWatchTarget>> members_;
  std::shared_ptr<const Members> snapshot_;  // members_ as a list; null when stale
  // Joined while a fragmented response was half delivered: they join when it is complete.
  std::vector<std::pair<std::int64_t, std::shared_ptr<UpstreamWatchTarget>>> waiting_;
  std::int64_t next_member_ = 1;
  bool dissolved_ = false;
  bool created_ = false;     // the upstream watcher's `created` has arrived
  bool fragmenting_ = false;
  bool resuming_ = false;    // the next `created` is the re-created upstream watcher's
  int retries_ = 0;
  etcdserverpb::ResponseHeader header_;  // the latest shard header seen
  std::int64_t next_revision_ = 0;       // every event before it has been delivered
  UpstreamWatcherHandle upstream_;
  std::unique_ptr<grpc::Alarm> retry_alarm_;
};

}  // namespace esp
