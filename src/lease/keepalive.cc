#include "lease/keepalive.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <unordered_set>

#include "common/methods.h"

namespace esp {
namespace {

using etcdserverpb::LeaseKeepAliveRequest;
using etcdserverpb::LeaseKeepAliveResponse;

// Feeds one shard's shared keep-alive stream back into the hub. Holds the hub weakly: the hub
// owns the streams, and the streams own their observers.
class ShardObserver final : public UpstreamStreamObserver {
 public:
  ShardObserver(std::weak_ptr<KeepAliveHub> hub, std::size_t shard, uint64_t generation)
      : hub_(std::move(hub)), shard_(shard), generation_(generation) {}

  void OnMessage(std::string message) override {
    LeaseKeepAliveResponse response;
    if (!response.ParseFromString(message)) return;
    if (auto hub = hub_.lock()) hub->OnShardAnswer(shard_, generation_, response);
  }
  void OnClose(Status status) override {
    if (auto hub = hub_.lock()) hub->OnStreamClosed(shard_, generation_, status);
  }

 private:
  std::weak_ptr<KeepAliveHub> hub_;
  std::size_t shard_;
  uint64_t generation_;
};

// One client's LeaseKeepAlive stream: each request is answered on its own, in completion order.
class ClientStream final : public StreamHandler {
 public:
  ClientStream(std::weak_ptr<KeepAliveHub> hub, std::shared_ptr<StreamSink> sink)
      : hub_(std::move(hub)), sink_(std::move(sink)) {}

  void OnMessage(std::string message) override {
    LeaseKeepAliveRequest request;
    if (!request.ParseFromString(message)) {
      sink_->Finish(Status(StatusCode::kInternal, "grpc: error unmarshalling request"));
      return;
    }
    auto hub = hub_.lock();
    if (!hub) return sink_->Finish(Status(StatusCode::kUnavailable, "etcd-sharding-proxy: shutting down"));
    if (leases_.insert(request.id()).second) hub->TrackKeptAlive(request.id());
    hub->KeepAlive(request.id(), [sink = sink_](Status status, LeaseKeepAliveResponse response) {
      // No shard answered: the client's library reconnects and retries, as with a dead etcd.
      if (!status.ok()) return sink->Finish(std::move(status));
      sink->Write(response.SerializeAsString());
    });
  }
  // etcd ends the stream when the client half-closes; answers still in flight are dropped.
  void OnClose() override {
    if (auto hub = hub_.lock()) {
      for (const int64_t id : leases_) hub->UntrackKeptAlive(id);
    }
    leases_.clear();
    sink_->Finish(Status::Ok());
  }

 private:
  std::weak_ptr<KeepAliveHub> hub_;
  std::shared_ptr<StreamSink> sink_;
  std::unordered_set<int64_t> leases_;  // the transport calls OnMessage and OnClose one at a time
};

}  // namespace

KeepAliveHub::KeepAliveHub(const TopologyHolder& topology, std::shared_ptr<PendingLeases> pending,
                           std::chrono::milliseconds shard_timeout)
    : topology_(topology), pending_(std::move(pending)), shard_timeout_(shard_timeout) {}

std::shared_ptr<StreamHandler> KeepAliveHub::NewClientStream(CallContextPtr, std::shared_ptr<StreamSink> sink) {
  return std::make_shared<ClientStream>(weak_from_this(), std::move(sink));
}

void KeepAliveHub::TrackKeptAlive(int64_t id) {
  const std::lock_guard lock(mu_);
  ++kept_alive_[id];
}

void KeepAliveHub::UntrackKeptAlive(int64_t id) {
  const std::lock_guard lock(mu_);
  const auto it = kept_alive_.find(id);
  if (it != kept_alive_.end() && --it->second == 0) kept_alive_.erase(it);
}

std::size_t KeepAliveHub::kept_alive_count() {
  const std::lock_guard lock(mu_);
  return kept_alive_.size();
}

void KeepAliveHub::KeepAlive(int64_t id, Answer answer) {
  std::optional<uint64_t> serial;
  {
    const std::lock_guard lock(mu_);
    LeaseState& state = leases_[id];
    state.next.push_back(std::move(answer));
    if (!state.round) serial = BeginRoundLocked(id, state);
  }
  if (serial) SendRound(id, *serial);
}

std::optional<uint64_t> KeepAliveHub::BeginRoundLocked(int64_t, LeaseState& state) {
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

void KeepAliveHub::SendRound(int64_t id, uint64_t serial) {
  LeaseKeepAliveRequest request;
  request.set_id(id);
  const std::string bytes = request.SerializeAsString();
  std::size_t n = 0;  // the round's own shard count, even if a new topology was published since
  {
    const std::lock_guard lock(mu_);
    const auto it = leases_.find(id);
    if (it == leases_.end() || !it->second.round || it->second.round->serial != serial) return;
    n = std::min(it->second.round->settled.size(), topology_.Get()->shards.size());
  }
  for (std::size_t shard = 0; shard < n; ++shard) {
    auto [stream, generation] = StreamFor(shard);
    {
      const std::lock_guard lock(mu_);
      const auto it = leases_.find(id);
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
      DropStreamLocked(shard, generation);
      const auto it = leases_.find(id);
      if (it != leases_.end() && it->second.round && it->second.round->serial == serial &&
          !it->second.round->settled[shard]) {
        SettleLocked(id, shard, nullptr, completions);
      }
    }
    Deliver(std::move(completions));
  }
}

std::pair<std::shared_ptr<UpstreamStream>, uint64_t> KeepAliveHub::StreamFor(std::size_t shard) {
  const auto topology = topology_.Get();
  {
    const std::lock_guard lock(mu_);
    if (shut_down_) return {nullptr, 0};
    if (streams_.size() < topology->shards.size()) streams_.resize(topology->shards.size());
    if (streams_[shard].stream) return {streams_[shard].stream, streams_[shard].generation};
  }
  // Opened outside the lock: a failing stream may report its end from inside OpenStream.
  const uint64_t generation = next_generation_.fetch_add(1);
  auto observer = std::make_shared<ShardObserver>(weak_from_this(), shard, generation);
  // No client metadata: the stream is shared by all clients (see docs/semantics.md).
  auto stream = topology->shards[shard]->OpenStream(methods::kLeaseKeepAlive, Metadata{}, std::move(observer));
  std::shared_ptr<UpstreamStream> loser;
  std::pair<std::shared_ptr<UpstreamStream>, uint64_t> result{stream, generation};
  {
    const std::lock_guard lock(mu_);
    if (streams_[shard].stream) {  // another request opened one meanwhile: use that
      loser = stream;
      result = {streams_[shard].stream, streams_[shard].generation};
    } else {
      streams_[shard] = ShardStream{stream, generation};
    }
  }
  if (loser) loser->Cancel();
  return result;
}

void KeepAliveHub::DropStreamLocked(std::size_t shard, uint64_t generation) {
  if (shard < streams_.size() && streams_[shard].generation == generation) streams_[shard] = ShardStream{};
}

void KeepAliveHub::OnShardAnswer(std::size_t shard, uint64_t generation, const LeaseKeepAliveResponse& response) {
  std::vector<Completion> completions;
  {
    const std::lock_guard lock(mu_);
    const auto it = leases_.find(response.id());
    if (it == leases_.end() || !it->second.round) return;
    const Round& round = *it->second.round;
    if (shard >= round.settled.size() || round.settled[shard] || round.generation[shard] != generation) return;
    SettleLocked(response.id(), shard, &response, completions);
  }
  Deliver(std::move(completions));
}

void KeepAliveHub::OnStreamClosed(std::size_t shard, uint64_t generation, const Status& status) {
  std::vector<Completion> completions;
  {
    const std::lock_guard lock(mu_);
    DropStreamLocked(shard, generation);
    std::vector<int64_t> affected;
    for (const auto& [id, state] : leases_) {
      const Round* round = state.round.get();
      if (round && shard < round->settled.size() && !round->settled[shard] && round->generation[shard] == generation) {
        affected.push_back(id);
      }
    }
    for (int64_t id : affected) SettleLocked(id, shard, nullptr, completions);
  }
  if (!status.ok()) spdlog::debug("keep-alive stream to shard {} ended: {}", shard, status.message());
  Deliver(std::move(completions));
}

void KeepAliveHub::Tick() {
  std::vector<Completion> completions;
  std::vector<std::shared_ptr<UpstreamStream>> stalled;
  {
    const std::lock_guard lock(mu_);
    const auto deadline = std::chrono::steady_clock::now() - shard_timeout_;
    std::vector<std::pair<int64_t, std::size_t>> late;
    for (const auto& [id, state] : leases_) {
      const Round* round = state.round.get();
      if (!round || round->started > deadline) continue;
      for (std::size_t shard = 0; shard < round->settled.size(); ++shard) {
        if (!round->settled[shard]) late.emplace_back(id, shard);
      }
    }
    for (const auto& [id, shard] : late) {
      // A stream that lets a request go unanswered this long is presumed hung: start afresh.
      const uint64_t generation = leases_[id].round->generation[shard];
      if (shard < streams_.size() && streams_[shard].stream && streams_[shard].generation == generation) {
        stalled.push_back(streams_[shard].stream);
        streams_[shard] = ShardStream{};
      }
      SettleLocked(id, shard, nullptr, completions);
    }
  }
  for (auto& stream : stalled) stream->Cancel();
  Deliver(std::move(completions));
}

void KeepAliveHub::Shutdown() {
  std::vector<ShardStream> streams;
  {
    const std::lock_guard lock(mu_);
    shut_down_ = true;
    streams.swap(streams_);
  }
  for (auto& s : streams) {
    if (s.stream) s.stream->Cancel();
  }
}

void KeepAliveHub::SettleLocked(int64_t id, std::size_t shard, const LeaseKeepAliveResponse* response,
                                std::vector<Completion>& out) {
  Round& round = *leases_[id].round;
  round.settled[shard] = true;
  --round.remaining;
  if (response) {
    ++round.answered;
    if (!round.header) round.header = response->header();
    // A shard without the lease (TTL 0) while others have it: it was down at grant time and
    // gets the lease from PendingLeases; the lease lives on as long as any shard has it.
    if (response->ttl() > 0 && (round.min_ttl == 0 || response->ttl() < round.min_ttl)) round.min_ttl = response->ttl();
  }
  if (round.remaining == 0) out.push_back(CompleteLocked(id));
}

KeepAliveHub::Completion KeepAliveHub::CompleteLocked(int64_t id) {
  LeaseState& state = leases_[id];
  Completion done;
  done.id = id;
  done.waiters = std::move(state.round->waiters);
  if (state.round->answered == 0) {
    done.status = Status(StatusCode::kUnavailable,
                         "etcd-sharding-proxy: no shard answered the keep-alive of lease " + std::to_string(id));
  } else {
    if (state.round->header) *done.response.mutable_header() = *state.round->header;
    done.response.set_id(id);
    done.response.set_ttl(state.round->min_ttl);
  }
  state.round.reset();
  done.next_serial = BeginRoundLocked(id, state);
  if (!done.next_serial) leases_.erase(id);
  return done;
}

void KeepAliveHub::Deliver(std::vector<Completion> completions) {
  for (auto& done : completions) {
    if (done.status.ok() && done.response.ttl() > 0) pending_->Touch(done.id);
    for (auto& waiter : done.waiters) waiter(done.status, done.response);
    if (done.next_serial) SendRound(done.id, *done.next_serial);
  }
}

}  // namespace esp
