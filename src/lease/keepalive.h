#pragma once
// LeaseKeepAlive across shards. Every client stream's keep-alives go to every shard over the
// proxy's shared upstream keep-alive streams of the client's identity "lane" (one stream per
// shard and lane, opened on first use and reopened after it broke). A lane is one client
// identity as a shard sees it: the `token` and client-certificate entries of the metadata.
// etcd 3.5 checks each renewal against the stream's identity, so clients of different
// identities must not share a stream; without auth every client is in the empty lane. On the
// h2 data plane lanes are per event loop too, so that a renewal stays on its client's loop.
// Per lane and lease at most one upstream round is in flight: requests arriving meanwhile (from
// any client of the lane) wait for the next round, which starts as soon as the current one
// completes and answers all of them. Hence upstream traffic per lease is bounded by the shards'
// round-trip time times the lanes using it, not by the number of clients, and every answer
// reflects a renewal that happened after its request arrived.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "etcdserverpb/rpc.pb.h"
#include "lease/pending.h"
#include "lease/repair.h"
#include "transport/router.h"
#include "upstream/topology.h"

namespace esp {

class KeepAliveHub : public std::enable_shared_from_this<KeepAliveHub> {
 public:
  using Answer = std::function<void(Status, etcdserverpb::LeaseKeepAliveResponse)>;

  // Who a client is on the shards: the lane's key and the metadata its upstream streams carry.
  // Empty for a client without token or certificate identity.
  struct Identity {
    std::string key;
    Metadata metadata;
  };
  static Identity IdentityOf(const Metadata& metadata);

  // `shard_timeout`: how long a round waits for a shard before answering without it.
  // `lane_idle`: how long a lane without rounds stays (its streams open) after its last use.
  KeepAliveHub(const TopologyHolder& topology, std::shared_ptr<PendingLeases> pending,
               std::chrono::milliseconds shard_timeout,
               std::chrono::milliseconds lane_idle = std::chrono::seconds(60));

  // The client's identity lane comes from ctx->metadata() (none when ctx is null) and from the
  // event loop it is called on (EventLoop::Current(), if any).
  std::shared_ptr<StreamHandler> NewClientStream(CallContextPtr ctx, std::shared_ptr<StreamSink> sink);
  // Renews `id` on every shard in `identity`'s lane; `answer` gets the merged response (TTL:
  // smallest positive TTL of the shards, 0 when no shard has the lease), a shard's refusal
  // (auth), or an error when no shard answered.
  void KeepAlive(const Identity& identity, int64_t id, Answer answer);
  void KeepAlive(int64_t id, Answer answer) { KeepAlive(Identity{}, id, std::move(answer)); }
  // Housekeeping: answers rounds without shards that did not answer in time; retires idle lanes.
  void Tick();
  // Cancels the upstream streams.
  void Shutdown();
  // Called (outside any lock) with every round that found the lease on some shards and not on
  // others; the proxy hands it to LeaseRepair. A round judged kGone is answered with TTL 0.
  void SetSplitHandler(std::function<void(const LeaseSplit&)> handler) { on_split_ = std::move(handler); }

  // Distinct leases that open client keep-alive streams are keeping alive: sent at least once on
  // a stream that is still open, and not answered with TTL 0 (gone) since. For the metrics.
  std::size_t KeptAliveLeaseCount() const;
  // Client streams: `id` is being kept alive by one more stream / one fewer.
  void Track(int64_t id);
  void Untrack(int64_t id);

  // Lanes currently held (for tests and metrics).
  std::size_t LaneCount() const;

  // Called by the upstream streams' observers.
  void OnShardAnswer(uint64_t lane, std::size_t shard, uint64_t generation,
                     const etcdserverpb::LeaseKeepAliveResponse& response);
  void OnStreamClosed(uint64_t lane, std::size_t shard, uint64_t generation, const Status& status);

  uint64_t upstream_writes() const { return upstream_writes_.load(); }

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
    std::vector<std::size_t> holders;  // shards that answered with a positive TTL
    std::vector<std::size_t> lacking;  // shards that answered TTL 0 (no such lease)
    std::optional<etcdserverpb::ResponseHeader> header;
    std::optional<Status> refusal;  // a shard's auth refusal: the round's answer, whatever others said
  };
  struct LeaseState {
    std::unique_ptr<Round> round;
    std::vector<Answer> next;  // requests that arrived while `round` was in flight
  };
  struct ShardStream {
    std::shared_ptr<UpstreamStream> stream;
    uint64_t generation = 0;
    // The shard's transport it was opened on: after a map change the same index may name
    // another shard (or another set of members), and the stream is then opened anew.
    const ShardTransport* transport = nullptr;
  };
  struct Lane {
    uint64_t number = 0;
    Metadata metadata;  // what its upstream streams are opened with
    std::vector<ShardStream> streams;
    bool used = true;  // since the last Tick
    std::chrono::steady_clock::time_point idle_since;
  };
  struct RoundKey {
    uint64_t lane = 0;
    int64_t id = 0;
    bool operator==(const RoundKey&) const = default;
  };
  struct RoundKeyHash {
    std::size_t operator()(const RoundKey& key) const {
      return std::hash<int64_t>{}(key.id) ^ (std::hash<uint64_t>{}(key.lane) * 0x9e3779b97f4a7c15ULL);
    }
  };
  // A completed round, answered outside the lock.
  struct Completion {
    RoundKey key;
    std::vector<Answer> waiters;
    Status status;
    etcdserverpb::LeaseKeepAliveResponse response;
    std::optional<uint64_t> next_serial;  // a follow-up round to send
    std::optional<LeaseSplit> split;      // the shards disagree on whether the lease exists
  };

  std::optional<uint64_t> BeginRoundLocked(LeaseState& state);
  void SendRound(RoundKey key, uint64_t serial);
  std::pair<std::shared_ptr<UpstreamStream>, uint64_t> StreamFor(uint64_t lane, std::size_t shard);
  void DropStreamLocked(uint64_t lane, std::size_t shard, uint64_t generation);
  // Marks `shard` done for the round of `key`: with its answer, with its refusal, or (both null)
  // as down; appends to `out` when that completes the round.
  void SettleLocked(RoundKey key, std::size_t shard, const etcdserverpb::LeaseKeepAliveResponse* response,
                    const Status* refusal, std::vector<Completion>& out);
  Completion CompleteLocked(RoundKey key);
  void RetireIdleLanesLocked(std::chrono::steady_clock::time_point now, const std::unordered_set<uint64_t>& busy,
                             std::vector<std::shared_ptr<UpstreamStream>>& streams);
  void Deliver(std::vector<Completion> completions);

  const TopologyHolder& topology_;
  std::shared_ptr<PendingLeases> pending_;
  const std::chrono::milliseconds shard_timeout_;
  const std::chrono::milliseconds lane_idle_;
  std::atomic<uint64_t> next_generation_{1};
  std::atomic<uint64_t> upstream_writes_{0};
  mutable std::mutex mu_;  // never held while calling into a transport: its callbacks may run inline
  uint64_t next_serial_ = 1;
  uint64_t next_lane_ = 1;
  std::unordered_map<RoundKey, LeaseState, RoundKeyHash> leases_;
  std::unordered_map<std::string, Lane> lanes_;          // by Identity::key
  std::unordered_map<uint64_t, Lane*> lanes_by_number_;  // nodes of lanes_ (stable addresses)
  bool shut_down_ = false;
  std::function<void(const LeaseSplit&)> on_split_;  // set before serving
  mutable std::mutex kept_mu_;
  std::unordered_map<int64_t, std::size_t> kept_;  // lease -> client streams keeping it alive
};

}  // namespace esp
