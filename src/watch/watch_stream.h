#pragma once
// One client Watch stream: many watches (create, cancel, progress requests interleaved), each
// served by one upstream watcher per shard it covers, through the shared UpstreamWatchHub.
#include <climits>
#include <cstddef>
#include <cstdint>
#include <grpcpp/alarm.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "etcdserverpb/rpc.pb.h"
#include "transport/router.h"
#include "upstream/topology.h"
#include "watch/upstream_watch_mux.h"

namespace esp {

// What a client stream may have queued towards a client that does not read: beyond it the
// client is too slow and its stream ends with RESOURCE_EXHAUSTED (docs/semantics.md).
inline constexpr std::size_t kDefaultWatchBufferBytes = 16 * 1024 * 1024;

class WatchStream final : public StreamHandler, public std::enable_shared_from_this<WatchStream> {
 public:
  WatchStream(CallContextPtr ctx, std::shared_ptr<StreamSink> sink, const TopologyHolder& topology,
              std::shared_ptr<UpstreamWatchHub> hub, std::size_t buffer_bytes = kDefaultWatchBufferBytes);
  ~WatchStream() override;

  void OnMessage(std::string message) override;
  void OnClose() override;
  // A new map was published: watches whose keys now belong to another shard end, told
  // "compacted" (docs/semantics.md, Range moves).
  void OnMapChanged(const Topology& next);

  // One shard's upstream watcher for one client watch.
  struct Piece;
  void OnPieceResponse(const std::shared_ptr<Piece>& piece, etcdserverpb::WatchResponse response);
  void OnPieceShared(const std::shared_ptr<Piece>& piece, const std::shared_ptr<const SharedWatchResponse>& shared);
  void OnPieceBroken(const std::shared_ptr<Piece>& piece, const Status& status);
  void OnPieceSharedResuming(const std::shared_ptr<Piece>& piece, bool resuming);

 private:
  // An auto-assigned id is given when the `created` goes out, in create order, so a create the
  // shard refuses consumes no id (as in etcd).
  static constexpr std::int64_t kPendingId = INT64_MIN;
  // A client watch. `pieces` is empty for a create answered by the proxy itself.
  struct Watch {
    std::int64_t id = -1;
    std::string id_prefix;  // the serialized watch_id field, put before shared response bodies
    std::vector<std::shared_ptr<Piece>> pieces;
    std::size_t pieces_created = 0;
    bool created_sent = false;
    bool done = false;  // canceled: later upstream responses are dropped
    std::optional<etcdserverpb::WatchResponse> created;  // the answer to the create, once known
    std::vector<etcdserverpb::WatchResponse> held;       // what must follow `created`
    // A spanning watch must not interleave another shard's response into one shard's fragments
    // (the client joins fragments until the last): while `fragmenting` sends a fragmented
    // response, the other shards' responses wait in `deferred`.
    const Piece* fragmenting = nullptr;
    // A vector, not a deque: it stays unallocated for the (usual) watch that never defers.
    std::vector<std::pair<const Piece*, etcdserverpb::WatchResponse>> deferred;
  };
  using WatchPtr = std::shared_ptr<Watch>;
  using Handles = std::vector<UpstreamWatcherHandle>;
  // A shard's answer to a progress request, held until the watches it speaks for are synced:
  // a progress revision promises that every event up to it has been delivered.
  struct PendingProgress {
    const ShardTransport* shard = nullptr;
    bool stream_wide = false;        // one watch_id -1 answer for the whole stream
    std::vector<std::int64_t> ids;   // otherwise one answer per watch
    etcdserverpb::WatchResponse response;
  };

  void OnCreate(const etcdserverpb::WatchCreateRequest& request);
  void OnCancel(std::int64_t id);
  void OnProgress();
  void OnProgressAnswer(PendingProgress progress);
  void FlushProgressLocked();
  bool SyncedLocked(const Watch& watch, const ShardTransport* shard) const;
  void RegisterLocked(const WatchPtr& watch);
  void WriteLocked(std::string bytes);
  // A broadcast body behind this stream's watch id, not joined into one string first.
  void WritePartsLocked(std::string_view head, std::string_view body);
  // False (and the stream ended, if the client lags too far) when `bytes` may not be queued.
  bool RoomLocked(std::size_t bytes);
  void AbortSlowClientLocked();
  void CloseLocked(Handles& release);
  std::int64_t AssignIdLocked(std::int64_t requested);
  void EmitLocked(const WatchPtr& watch, etcdserverpb::WatchResponse response);
  void FlushCreatesLocked();
  void EmitPieceLocked(const WatchPtr& watch, const Piece* piece, etcdserverpb::WatchResponse response);
  void FinishWatchLocked(WatchPtr watch, Handles& release);
  // A piece's first `created` (or a refusal standing for it).
  void OnPieceCreatedLocked(const WatchPtr& watch, Piece& piece, etcdserverpb::WatchResponse response,
                            Handles& release);
  // A start revision beyond the shard's revision + 1 most likely came from another shard: a
  // watch left waiting for it would skip this shard's events up to it in silence. Confirmed with
  // the cluster, then refused with etcd's ErrFutureRev (docs/semantics.md, Watch).
  static bool StartsInTheFuture(const etcdserverpb::WatchCreateRequest& request,
                                const etcdserverpb::WatchResponse& created);
  void CheckStartRevision(const std::shared_ptr<Piece>& piece);
  void OnStartChecked(const std::shared_ptr<Piece>& piece, const Status& status,
                      const etcdserverpb::RangeResponse& answer);
  void CancelWatchLocked(WatchPtr watch, etcdserverpb::WatchResponse canceled, Handles& release);
  void ReleaseAll(const Handles& handles);
  bool MovedLocked(const Watch& watch, const Topology& next) const;
  void CancelMovedLocked(const WatchPtr& watch, Handles& release);
  void ScheduleResume(const std::shared_ptr<Piece>& piece);
  void Resume(const std::shared_ptr<Piece>& piece);
  static void TrackRevision(Piece& piece, const etcdserverpb::WatchResponse& response);
  etcdserverpb::ResponseHeader LastHeaderLocked() const { return last_header_; }

  CallContextPtr ctx_;
  std::shared_ptr<StreamSink> sink_;
  // Each create routes by the map current at that moment, not the one the stream began under.
  const TopologyHolder& topology_;
  std::shared_ptr<UpstreamWatchHub> hub_;
  const std::size_t buffer_bytes_;

  std::mutex mu_;
  bool closed_ = false;
  std::unique_ptr<grpc::Alarm> abort_alarm_;  // ends a slow client's stream outside mu_
  std::deque<PendingProgress> pending_progress_;
  std::int64_t next_id_ = 0;
  std::map<std::int64_t, WatchPtr> watches_;  // ids in use
  std::deque<WatchPtr> create_order_;         // creates not yet answered, in request order
  // Headers of answers the proxy makes up (cancel, refusals) come from the latest shard header.
  etcdserverpb::ResponseHeader last_header_;
  Handles release_early_;  // watchers to release once OnCreate has left mu_
};

struct WatchStream::Piece final : UpstreamWatchTarget {
  std::weak_ptr<WatchStream> owner;
  std::weak_ptr<Watch> watch;
  // The shard's transport in the map the watch was created under: a later map never moves a
  // running watch (a move cancels it instead).
  std::shared_ptr<ShardTransport> shard;
  std::string shard_name;  // whose range it watches: a map giving these keys to another shard ends it
  bool created = false;
  UpstreamWatcherHandle handle;
  // What was sent upstream, to re-create the watcher after its stream broke.
  etcdserverpb::WatchCreateRequest request;
  // The revision to resume from: everything before it has been delivered (0: not created yet).
  std::int64_t next_revision = 0;
  bool resuming = false;  // the next `created` is the re-created watcher's: not for the client
  // A `created` whose start revision lies beyond the member's revision, while the cluster is
  // asked whether it lies beyond the cluster's too (StartsInTheFuture).
  std::optional<etcdserverpb::WatchResponse> unconfirmed_created;
  bool shared_resuming = false;  // the coalesced watcher it belongs to is being re-created
  int retries = 0;
  std::unique_ptr<grpc::Alarm> retry_alarm;
  std::weak_ptr<Piece> self;

  void OnUpstreamResponse(etcdserverpb::WatchResponse response) override {
    if (auto o = owner.lock()) o->OnPieceResponse(self.lock(), std::move(response));
  }
  void OnSharedResponse(const std::shared_ptr<const SharedWatchResponse>& shared) override {
    if (auto o = owner.lock()) o->OnPieceShared(self.lock(), shared);
  }
  void OnSharedResuming(bool resuming) override {
    if (auto o = owner.lock()) o->OnPieceSharedResuming(self.lock(), resuming);
  }
  void OnUpstreamBroken(const Status& status) override {
    if (auto o = owner.lock()) o->OnPieceBroken(self.lock(), status);
  }
};

// Registers "/etcdserverpb.Watch/Watch".
class WatchService {
 public:
  explicit WatchService(const TopologyHolder& topology, std::size_t buffer_bytes = kDefaultWatchBufferBytes)
      : topology_(topology), buffer_bytes_(buffer_bytes), hub_(std::make_shared<UpstreamWatchHub>()) {}
  void Register(Router& router);
  const std::shared_ptr<UpstreamWatchHub>& hub() const { return hub_; }

  // For metrics: client watches open on all client streams, and the watchers the proxy holds
  // on the shards (a coalesced watcher counts once however many client watches share it).
  std::size_t ClientWatchCount() const { return hub_->ClientWatchCount(); }
  std::size_t UpstreamWatcherCount() const { return hub_->UpstreamWatcherCount(); }

  // After a new map is published: ends, on every stream, the watches whose keys changed shard.
  void OnMapChanged(const Topology& next);

 private:
  const TopologyHolder& topology_;
  const std::size_t buffer_bytes_;
  std::shared_ptr<UpstreamWatchHub> hub_;
  std::mutex streams_mu_;
  std::vector<std::weak_ptr<WatchStream>> streams_;
  std::size_t prune_at_ = 64;
};

}  // namespace esp
