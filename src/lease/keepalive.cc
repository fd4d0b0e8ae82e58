#include "lease/keepalive.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>
#include <unordered_set>

#include "common/methods.h"
#include "transport/auth_metadata.h"
#include "transport/event_loop.h"
#include "transport/peer_identity.h"

namespace esp {
namespace {

using etcdserverpb::LeaseKeepAliveRequest;
using etcdserverpb::LeaseKeepAliveResponse;

// Feeds one lane's shared keep-alive stream to one shard back into the hub. Holds the hub
// weakly: the hub owns the streams, and the streams own their observers.
class ShardObserver final : public UpstreamStreamObserver {
 public:
  ShardObserver(std::weak_ptr<KeepAliveHub> hub, uint64_t lane, std::size_t shard, uint64_t generation)
      : hub_(std::move(hub)), lane_(lane), shard_(shard), generation_(generation) {}

  void OnMessage(std::string message) override {
    LeaseKeepAliveResponse response;
    if (!response.ParseFromString(message)) return;
    if (auto hub = hub_.lock()) hub->OnShardAnswer(lane_, shard_, generation_, response);
  }
  void OnClose(Status status) override {
    if (auto hub = hub_.lock()) hub->OnStreamClosed(lane_, shard_, generation_, status);
  }

 private:
  std::weak_ptr<KeepAliveHub> hub_;
  uint64_t lane_;
  std::size_t shard_;
  uint64_t generation_;
};

// How etcd refuses a renewal for auth reasons (3.5: "etcdserver: user name is empty",
// "etcdserver: permission denied", "etcdserver: invalid auth token", ...). Such a refusal is
// etcd's answer to the client, not a shard being down.
bool IsRefusal(const Status& status) {
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kPermissionDenied:
    case StatusCode::kUnauthenticated:
    case StatusCode::kFailedPrecondition:
      return true;
    default:
      return false;
  }
}

// The leases one client stream keeps alive, counted in the hub (KeptAliveLeaseCount). Shared with
// the answer callbacks, which may outlive the stream's handler.
class TrackedLeases {
 public:
  explicit TrackedLeases(std::weak_ptr<KeepAliveHub> hub) : hub_(std::move(hub)) {}
  void Add(int64_t id) { Change(id, true); }
  void Remove(int64_t id) { Change(id, false); }
  void Clear() {
    std::set<int64_t> ids;
    {
      const std::lock_guard lock(mu_);
      ids.swap(ids_);
      closed_ = true;
    }
    if (auto hub = hub_.lock()) {
      for (int64_t id : ids) hub->Untrack(id);
    }
  }

 private:
  void Change(int64_t id, bool add) {
    {
      const std::lock_guard lock(mu_);
      if (closed_) return;
      if (add ? !ids_.insert(id).second : ids_.erase(id) == 0) return;
    }
    if (auto hub = hub_.lock()) add ? hub->Track(id) : hub->Untrack(id);
  }

  std::weak_ptr<KeepAliveHub> hub_;
  std::mutex mu_;
  std::set<int64_t> ids_;
  bool closed_ = false;
};

// One client's LeaseKeepAlive stream: each request is answered on its own, in completion order.
// Its renewals go over the upstream streams of its identity's lane (docs/semantics.md,
// LeaseKeepAlive, "Client identity").
class ClientStream final : public StreamHandler {
 public:
  ClientStream(std::weak_ptr<KeepAliveHub> hub, KeepAliveHub::Identity identity, std::shared_ptr<StreamSink> sink)
      : hub_(hub), identity_(std::move(identity)), sink_(std::move(sink)),
        tracked_(std::make_shared<TrackedLeases>(hub)) {}

  void OnMessage(std::string message) override {
    LeaseKeepAliveRequest request;
    if (!request.ParseFromString(message)) {
      sink_->Finish(Status(StatusCode::kInternal, "grpc: error unmarshalling request"));
      return;
    }
    auto hub = hub_.lock();
    if (!hub) return sink_->Finish(Status(StatusCode::kUnavailable, "etcd-sharding-proxy: shutting down"));
    tracked_->Add(request.id());
    hub->KeepAlive(identity_, request.id(), [sink = sink_, tracked = tracked_](Status status,
                                                                               LeaseKeepAliveResponse response) {
      // No shard answered: the client's library reconnects and retries, as with a dead etcd.
      // A shard refused (auth): the stream ends with etcd's own error, as etcd ends it.
      if (!status.ok()) return sink->Finish(std::move(status));
      // Gone: clientv3 stops keeping it alive.
      if (response.ttl() <= 0) tracked->Remove(response.id());
      sink->Write(response.SerializeAsString());
    });
  }
  // etcd ends the stream when the client half-closes; answers still in flight are dropped.
  void OnClose() override {
    tracked_->Clear();
    sink_->Finish(Status::Ok());
  }

 private:
  std::weak_ptr<KeepAliveHub> hub_;
  const KeepAliveHub::Identity identity_;
  std::shared_ptr<StreamSink> sink_;
  std::shared_ptr<TrackedLeases> tracked_;
};

}  // namespace

KeepAliveHub::KeepAliveHub(const TopologyHolder& topology, std::shared_ptr<PendingLeases> pending,
                           std::chrono::milliseconds shard_timeout, std::chrono::milliseconds lane_idle)
    : topology_(topology), pending_(std::move(pending)), shard_timeout_(shard_timeout), lane_idle_(lane_idle) {}

// Only what decides who the client is on a shard: the token (translated per shard by the
// transport) and the verified client-certificate name. Not `hasleader` or anything else, so
// that clients differing only there share a lane.
KeepAliveHub::Identity KeepAliveHub::IdentityOf(const Metadata& metadata) {
  Identity identity;
  for (const auto& [key, value] : metadata) {
    if (!IsAuthTokenKey(key) && key != kClientCertCnKey) continue;
    identity.metadata.emplace_back(key, value);
    // NUL cannot occur in metadata keys or values: the key is unambiguous.
    identity.key.append(key).push_back('\0');
    identity.key.append(value).push_back('\0');
  }
  return identity;
}

std::shared_ptr<StreamHandler> KeepAliveHub::NewClientStream(CallContextPtr ctx, std::shared_ptr<StreamSink> sink) {
  Identity identity = ctx ? IdentityOf(ctx->metadata()) : Identity{};
  // A lane per event loop as well: a lane's upstream streams are opened from, and so live on,
  // the loop of the client that first renewed over them. A client served by another loop would
  // cross threads twice per renewal (its request posted over, the answer posted back).
  if (const EventLoop* loop = EventLoop::Current()) {
    identity.key.push_back('\x01');  // cannot start a metadata key: the tag is unambiguous
    identity.key.append(std::to_string(reinterpret_cast<std::uintptr_t>(loop)));
  }
  return std::make_shared<ClientStream>(weak_from_this(), std::move(identity), std::move(sink));
}

std::size_t KeepAliveHub::LaneCount() const {
  const std::lock_guard lock(mu_);
  return lanes_.size();
}

void KeepAliveHub::Track(int64_t id) {
  const std::lock_guard lock(kept_mu_);
  ++kept_[id];
}

void KeepAliveHub::Untrack(int64_t id) {
  const std::lock_guard lock(kept_mu_);
  const auto it = kept_.find(id);
  if (it != kept_.end() && --it->second == 0) kept_.erase(it);
}

std::size_t KeepAliveHub::KeptAliveLeaseCount() const {
  const std::lock_guard lock(kept_mu_);
  return kept_.size();
}

void KeepAliveHub::KeepAlive(const Identity& identity, int64_t id, Answer answer) {
  std::optional<uint64_t> serial;
  RoundKey key{.lane = 0, .id = id};
  {
    const std::lock_guard lock(mu_);
    auto [it, added] = lanes_.try_emplace(identity.key);
    Lane& lane = it->second;
    if (added) {
      lane.number = next_lane_++;
      lane.metadata = identity.metadata;
      lanes_by_number_.emplace(lane.number, &lane);
    }
    lane.used = true;
    key.lane = lane.number;
    LeaseState& state = leases_[key];
    state.next.push_back(std::move(answer));
    if (!state.round) serial = BeginRoundLocked(state);
  }
  if (serial) SendRound(key, *serial);
}

std::optional<uint64_t> KeepAliveHub::BeginRoundLocked(LeaseState& state) {
  if (state.next.empty()) return std::nullopt;
  const std::size_t n = topology_.Get()->shards.size();
  auto round = std::make_unique<Round>();
  round->serial = next_serial_++;
  round->started = std::chrono::steady_clock::now();
  round->waiters = std::move(state.next);
  state.next.clear();
  round->generation.assign(n, 0);
  round->settled.assign(n, false);
  round->remaining = n;
  const uint64_t serial = round->serial;
  state.round = std::move(round);
  return serial;
}

void KeepAliveHub::SendRound(RoundKey key, uint64_t serial) {
  LeaseKeepAliveRequest request;
  request.set_id(key.id);
  const std::string bytes = request.SerializeAsString();
  std::size_t n = 0;  // the round's own shard count, even if a new topology was published since
  {
    const std::lock_guard lock(mu_);
    const auto it = leases_.find(key);
    if (it == leases_.end() || !it->second.round || it->second.round->serial != serial) return;
    n = std::min(it->second.round->settled.size(), topology_.Get()->shards.size());
  }
  for (std::size_t shard = 0; shard < n; ++shard) {
    auto [stream, generation] = StreamFor(key.lane, shard);
    {
      const std::lock_guard lock(mu_);
      const auto it = leases_.find(key);
      if (it == leases_.end() || !it->second.round || it->second.round->serial != serial) return;
      if (it->second.round->settled[shard]) continue;
      it->second.round->generation[shard] = generation;
    }
    if (stream && stream->Write(bytes)) {
      upstream_writes_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    // The stream ended before it could carry the request: the shard counts as down this round.
    std::vector<Completion> completions;
    {
      const std::lock_guard lock(mu_);
      DropStreamLocked(key.lane, shard, generation);
      const auto it = leases_.find(key);
      if (it != leases_.end() && it->second.round && it->second.round->serial == serial &&
          !it->second.round->settled[shard]) {
        SettleLocked(key, shard, nullptr, nullptr, completions);
      }
    }
    Deliver(std::move(completions));
  }
}

std::pair<std::shared_ptr<UpstreamStream>, uint64_t> KeepAliveHub::StreamFor(uint64_t lane_number,
                                                                              std::size_t shard) {
  const auto topology = topology_.Get();
  Metadata metadata;
  std::shared_ptr<UpstreamStream> stale;
  {
    const std::lock_guard lock(mu_);
    const auto it = lanes_by_number_.find(lane_number);
    // A lane is retired only without rounds in flight, so a round's lane is there.
    if (shut_down_ || it == lanes_by_number_.end()) return {nullptr, 0};
    Lane& lane = *it->second;
    if (lane.streams.size() < topology->shards.size()) lane.streams.resize(topology->shards.size());
    if (shard >= topology->shards.size()) return {nullptr, 0};
    ShardStream& slot = lane.streams[shard];
    if (slot.stream && slot.transport == topology->shards[shard].get()) return {slot.stream, slot.generation};
    if (slot.stream) {
      stale = std::move(slot.stream);  // opened on a transport that is no longer this shard's
      slot = ShardStream{};
    }
    metadata = lane.metadata;
  }
  if (stale) stale->Cancel();
  // Opened outside the lock: a failing stream may report its end from inside OpenStream.
  const uint64_t generation = next_generation_.fetch_add(1);
  auto observer = std::make_shared<ShardObserver>(weak_from_this(), lane_number, shard, generation);
  // The lane's identity only: the stream is shared by the lane's clients (docs/semantics.md).
  auto stream = topology->shards[shard]->OpenStream(methods::kLeaseKeepAlive, metadata, std::move(observer));
  std::shared_ptr<UpstreamStream> loser;
  std::pair<std::shared_ptr<UpstreamStream>, uint64_t> result{stream, generation};
  {
    const std::lock_guard lock(mu_);
    const auto it = lanes_by_number_.find(lane_number);
    if (it == lanes_by_number_.end() || shut_down_) {
      loser = stream;
      result = {nullptr, 0};
    } else if (ShardStream& slot = it->second->streams[shard]; slot.stream) {
      loser = stream;  // another request opened one meanwhile: use that
      result = {slot.stream, slot.generation};
    } else {
      slot = ShardStream{stream, generation, topology->shards[shard].get()};
    }
  }
  if (loser) loser->Cancel();
  return result;
}

void KeepAliveHub::DropStreamLocked(uint64_t lane_number, std::size_t shard, uint64_t generation) {
  const auto it = lanes_by_number_.find(lane_number);
  if (it == lanes_by_number_.end()) return;
  auto& streams = it->second->streams;
  if (shard < streams.size() && streams[shard].generation == generation) streams[shard] = ShardStream{};
}

void KeepAliveHub::OnShardAnswer(uint64_t lane, std::size_t shard, uint64_t generation,
                                 const LeaseKeepAliveResponse& response) {
  std::vector<Completion> completions;
  {
    const std::lock_guard lock(mu_);
    const RoundKey key{.lane = lane, .id = response.id()};
    const auto it = leases_.find(key);
    if (it == leases_.end() || !it->second.round) return;
    const Round& round = *it->second.round;
    if (shard >= round.settled.size() || round.settled[shard] || round.generation[shard] != generation) return;
    SettleLocked(key, shard, &response, nullptr, completions);
  }
  Deliver(std::move(completions));
}

void KeepAliveHub::OnStreamClosed(uint64_t lane, std::size_t shard, uint64_t generation, const Status& status) {
  // etcd ends a keep-alive stream on the first renewal it refuses. Every round of the lane still
  // waiting on this stream gets that refusal, including one for another lease whose own renewal
  // etcd never judged: within one client that is what etcd itself does (the whole stream ends),
  // and the clients sharing a lane are the same identity.
  const bool refused = IsRefusal(status);
  std::vector<Completion> completions;
  {
    const std::lock_guard lock(mu_);
    DropStreamLocked(lane, shard, generation);
    std::vector<RoundKey> affected;
    for (const auto& [key, state] : leases_) {
      const Round* round = state.round.get();
      if (key.lane == lane && round && shard < round->settled.size() && !round->settled[shard] &&
          round->generation[shard] == generation) {
        affected.push_back(key);
      }
    }
    for (const RoundKey& key : affected) SettleLocked(key, shard, nullptr, refused ? &status : nullptr, completions);
  }
  if (!status.ok()) spdlog::debug("keep-alive stream to shard {} ended: {}", shard, status.message());
  Deliver(std::move(completions));
}

void KeepAliveHub::Tick() {
  std::vector<Completion> completions;
  std::vector<std::shared_ptr<UpstreamStream>> stalled;
  {
    const std::lock_guard lock(mu_);
    const auto now = std::chrono::steady_clock::now();
    const auto deadline = now - shard_timeout_;
    std::vector<std::pair<RoundKey, std::size_t>> late;
    std::unordered_set<uint64_t> busy;  // lanes with rounds in flight
    for (const auto& [key, state] : leases_) {
      busy.insert(key.lane);
      const Round* round = state.round.get();
      if (!round || round->started > deadline) continue;
      for (std::size_t shard = 0; shard < round->settled.size(); ++shard) {
        if (!round->settled[shard]) late.emplace_back(key, shard);
      }
    }
    for (const auto& [key, shard] : late) {
      // A stream that lets a request go unanswered this long is presumed hung: start afresh.
      const uint64_t generation = leases_[key].round->generation[shard];
      const auto lane = lanes_by_number_.find(key.lane);
      if (lane != lanes_by_number_.end()) {
        auto& streams = lane->second->streams;
        if (shard < streams.size() && streams[shard].stream && streams[shard].generation == generation) {
          stalled.push_back(streams[shard].stream);
          streams[shard] = ShardStream{};
        }
      }
      SettleLocked(key, shard, nullptr, nullptr, completions);
    }
    RetireIdleLanesLocked(now, busy, stalled);
  }
  for (auto& stream : stalled) stream->Cancel();
  Deliver(std::move(completions));
}

// Tokens change (every Authenticate gives a new one), so lanes come and go: one unused for
// `lane_idle_` and without rounds is dropped with its streams. The empty lane too; it comes back
// on the next keep-alive.
void KeepAliveHub::RetireIdleLanesLocked(std::chrono::steady_clock::time_point now,
                                         const std::unordered_set<uint64_t>& busy,
                                         std::vector<std::shared_ptr<UpstreamStream>>& streams) {
  for (auto it = lanes_.begin(); it != lanes_.end();) {
    Lane& lane = it->second;
    if (lane.used || busy.contains(lane.number)) {
      lane.used = false;
      lane.idle_since = now;
      ++it;
      continue;
    }
    if (now - lane.idle_since < lane_idle_) {
      ++it;
      continue;
    }
    for (auto& s : lane.streams) {
      if (s.stream) streams.push_back(std::move(s.stream));
    }
    lanes_by_number_.erase(lane.number);
    it = lanes_.erase(it);
  }
}

void KeepAliveHub::Shutdown() {
  std::vector<ShardStream> streams;
  {
    const std::lock_guard lock(mu_);
    shut_down_ = true;
    for (auto& [key, lane] : lanes_) {
      for (auto& s : lane.streams) streams.push_back(std::move(s));
      lane.streams.clear();
    }
  }
  for (auto& s : streams) {
    if (s.stream) s.stream->Cancel();
  }
}

void KeepAliveHub::SettleLocked(RoundKey key, std::size_t shard, const LeaseKeepAliveResponse* response,
                                const Status* refusal, std::vector<Completion>& out) {
  Round& round = *leases_[key].round;
  round.settled[shard] = true;
  --round.remaining;
  // The first refusal is the answer: etcd would have ended this client's stream with it.
  if (refusal && !round.refusal) round.refusal = *refusal;
  if (response) {
    ++round.answered;
    if (!round.header) round.header = response->header();
    (response->ttl() > 0 ? round.holders : round.lacking).push_back(shard);
    // A shard without the lease (TTL 0) while others have it: it was down at grant time and
    // gets the lease from PendingLeases; the lease lives on as long as any shard has it.
    if (response->ttl() > 0 && (round.min_ttl == 0 || response->ttl() < round.min_ttl)) round.min_ttl = response->ttl();
  }
  if (round.remaining == 0) out.push_back(CompleteLocked(key));
}

KeepAliveHub::Completion KeepAliveHub::CompleteLocked(RoundKey key) {
  const int64_t id = key.id;
  LeaseState& state = leases_[key];
  Completion done;
  done.key = key;
  done.waiters = std::move(state.round->waiters);
  if (state.round->refusal) {
    done.status = *state.round->refusal;
  } else if (state.round->answered == 0) {
    done.status = Status(StatusCode::kUnavailable,
                         "etcd-sharding-proxy: no shard answered the keep-alive of lease " + std::to_string(id));
  } else {
    const Round& round = *state.round;
    if (round.header) *done.response.mutable_header() = *round.header;
    done.response.set_id(id);
    done.response.set_ttl(round.min_ttl);
    if (!round.holders.empty() && !round.lacking.empty()) {
      done.split = LeaseSplit{.id = id,
                              .holders = round.holders,
                              .lacking = round.lacking,
                              .unknown = round.settled.size() - round.answered,
                              .ttl = round.min_ttl};
      // Revoked while the holders were down: etcd answers a revoked lease's keep-alive with 0.
      if (JudgeSplit(*done.split) == SplitVerdict::kGone) done.response.set_ttl(0);
    }
  }
  state.round.reset();
  done.next_serial = BeginRoundLocked(state);
  if (!done.next_serial) leases_.erase(key);
  return done;
}

void KeepAliveHub::Deliver(std::vector<Completion> completions) {
  for (auto& done : completions) {
    if (done.status.ok() && done.response.ttl() > 0) pending_->Touch(done.key.id);
    if (done.split && on_split_) on_split_(*done.split);
    for (auto& waiter : done.waiters) waiter(done.status, done.response);
    if (done.next_serial) SendRound(done.key, *done.next_serial);
  }
}

}  // namespace esp
