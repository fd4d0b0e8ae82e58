#pragma once
// LeaseKeepAlive across shards. Every client stream's keep-alives go to every shard over the
// proxy's shared upstream keep-alive streams (one per shard, opened on first use and reopened
// after it broke). Per lease at most one upstream round is in flight: requests for that lease
// arriving meanwhile (from any client) wait for the next round, which starts as soon as the
// current one completes and answers all of them. Hence upstream traffic per lease is bounded
// by the shards' round-trip time, not by the number of clients, and every answer reflects a
// renewal that happened after its request arrived.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "etcdserverpb/rpc.pb.h"
#include "lease/pending.h"
#include "transport/router.h"
#include "upstream/topology.h"

namespace esp {

class KeepAliveHub : public std::enable_shared_from_this<KeepAliveHub> {
 public:
  using Answer = std::function<void(Status, etcdserverpb::LeaseKeepAliveResponse)>;

  // `shard_timeout`: how long a round waits for a shard before answering without it.
  KeepAliveHub(const TopologyHolder& topology, std::shared_ptr<PendingLeases> pending,
               std::chrono::milliseconds shard_timeout);

  std::shared_ptr<StreamHandler> NewClientStream(CallContextPtr ctx, std::shared_ptr<StreamSink> sink);
  // Renews `id` on every shard; `answer` gets the merged response (TTL: smallest positive TTL
  // of the shards, 0 when no shard has the lease) or an error when no shard answered.
  void KeepAlive(int64_t id, Answer answer);
  // Housekeeping: answers rounds without shards that did not answer in time.
  void Tick();
  // Cancels the upstream streams.
  void Shutdown();

  // Called by the upstream streams' observers.
  void OnShardAnswer(std::size_t shard, uint64_t generation, const etcdserverpb::LeaseKeepAliveResponse& response);
  void OnStreamClosed(std::size_t shard, uint64_t generation, const Status& status);

  uint64_t upstream_writes() const { return upstream_writes_.load(); }
  // For the metrics: distinct leases that open client streams have asked to renew. Each client
  // stream tracks its leases once and untracks them when it closes.
  void TrackKeptAlive(int64_t id);
  void UntrackKeptAlive(int64_t id);
  std::size_t kept_alive_count();

 private:
  struct Round {
    uint64_t serial = 0;
    std::chrono::steady_clock::time_point started;
    std::vector<Answer> waiters;
    std::vector<uint64_t> generation;  // stream generation the request went out on; 0: not yet
    std::vector<bool> settled;
    std::size_t remaining = 0;
    std::size_t answered = 0;
    int64_t min_ttl = 0;  // smallest positive TTL seen; 0 if none
    std::optional<etcdserverpb::ResponseHeader> header;
  };
  struct LeaseState {
    std::unique_ptr<Round> round;
    std::vector<Answer> next;  // requests that arrived while `round` was in flight
  };
  struct ShardStream {
    std::shared_ptr<UpstreamStream> stream;
    uint64_t generation = 0;
  };
  // A completed round, answered outside the lock.
  struct Completion {
    int64_t id = 0;
    std::vector<Answer> waiters;
    Status status;
    etcdserverpb::LeaseKeepAliveResponse response;
    std::optional<uint64_t> next_serial;  // a follow-up round to send
  };

  std::optional<uint64_t> BeginRoundLocked(int64_t id, LeaseState& state);
  void SendRound(int64_t id, uint64_t serial);
  std::pair<std::shared_ptr<UpstreamStream>, uint64_t> StreamFor(std::size_t shard);
  void DropStreamLocked(std::size_t shard, uint64_t generation);
  // Marks `shard` done for the round of `id`; appends to `out` when that completes the round.
  void SettleLocked(int64_t id, std::size_t shard, const etcdserverpb::LeaseKeepAliveResponse* response,
                    std::vector<Completion>& out);
  Completion CompleteLocked(int64_t id);
  void Deliver(std::vector<Completion> completions);

  const TopologyHolder& topology_;
  std::shared_ptr<PendingLeases> pending_;
  const std::chrono::milliseconds shard_timeout_;
  std::atomic<uint64_t> next_generation_{1};
  std::atomic<uint64_t> upstream_writes_{0};
  std::mutex mu_;  // never held while calling into a transport: its callbacks may run inline
  uint64_t next_serial_ = 1;
  std::unordered_map<int64_t, LeaseState> leases_;
  std::vector<ShardStream> streams_;
  bool shut_down_ = false;
  std::unordered_map<int64_t, std::size_t> kept_alive_;  // lease -> client streams renewing it
};

}  // namespace esp
