#pragma once
// One client Watch stream: many watches (create, cancel, progress requests interleaved), each
// served by one upstream watcher per shard it covers, through the shared UpstreamWatchHub.
#include <cstdint>
#include <grpcpp/alarm.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "etcdserverpb/rpc.pb.h"
#include "transport/router.h"
#include "upstream/topology.h"
#include "watch/upstream_watch_mux.h"

namespace esp {

class WatchStream final : public StreamHandler, public std::enable_shared_from_this<WatchStream> {
 public:
  WatchStream(CallContextPtr ctx, std::shared_ptr<StreamSink> sink, std::shared_ptr<const Topology> topology,
              std::shared_ptr<UpstreamWatchHub> hub);

  void OnMessage(std::string message) override;
  void OnClose() override;

  // One shard's upstream watcher for one client watch.
  struct Piece;
  void OnPieceResponse(const std::shared_ptr<Piece>& piece, etcdserverpb::WatchResponse response);
  void OnPieceBroken(const std::shared_ptr<Piece>& piece, const Status& status);

 private:
  // A client watch. `pieces` is empty for a create answered by the proxy itself.
  struct Watch {
    std::int64_t id = -1;
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
    std::deque<std::pair<const Piece*, etcdserverpb::WatchResponse>> deferred;
  };
  using WatchPtr = std::shared_ptr<Watch>;
  using Handles = std::vector<UpstreamWatcherHandle>;

  void OnCreate(const etcdserverpb::WatchCreateRequest& request);
  void OnCancel(std::int64_t id);
  void OnProgress();
  void AnswerLocally(std::vector<etcdserverpb::WatchResponse> responses);
  std::int64_t AssignIdLocked(std::int64_t requested);
  void EmitLocked(const WatchPtr& watch, etcdserverpb::WatchResponse response);
  void FlushCreatesLocked();
  void EmitPieceLocked(const WatchPtr& watch, const Piece* piece, etcdserverpb::WatchResponse response);
  void FinishWatchLocked(WatchPtr watch, Handles& release);
  void CancelWatchLocked(WatchPtr watch, etcdserverpb::WatchResponse canceled, Handles& release);
  void ReleaseAll(const Handles& handles);
  void ScheduleResume(const std::shared_ptr<Piece>& piece);
  void Resume(const std::shared_ptr<Piece>& piece);
  static void TrackRevision(Piece& piece, const etcdserverpb::WatchResponse& response);
  etcdserverpb::ResponseHeader LastHeaderLocked() const { return last_header_; }

  CallContextPtr ctx_;
  std::shared_ptr<StreamSink> sink_;
  std::shared_ptr<const Topology> topology_;
  std::shared_ptr<UpstreamWatchHub> hub_;

  std::mutex mu_;
  bool closed_ = false;
  std::int64_t next_id_ = 0;
  std::map<std::int64_t, WatchPtr> watches_;  // ids in use
  std::deque<WatchPtr> create_order_;         // creates not yet answered, in request order
  // Headers of answers the proxy makes up (cancel, refusals) come from the latest shard header.
  etcdserverpb::ResponseHeader last_header_;
};

struct WatchStream::Piece final : UpstreamWatchTarget {
  std::weak_ptr<WatchStream> owner;
  std::weak_ptr<Watch> watch;
  std::size_t shard = 0;
  bool created = false;
  UpstreamWatcherHandle handle;
  // What was sent upstream, to re-create the watcher after its stream broke.
  etcdserverpb::WatchCreateRequest request;
  // The revision to resume from: everything before it has been delivered (0: not created yet).
  std::int64_t next_revision = 0;
  bool resuming = false;  // the next `created` is the re-created watcher's: not for the client
  int retries = 0;
  std::unique_ptr<grpc::Alarm> retry_alarm;
  std::weak_ptr<Piece> self;

  void OnUpstreamResponse(etcdserverpb::WatchResponse response) override {
    if (auto o = owner.lock()) o->OnPieceResponse(self.lock(), std::move(response));
  }
  void OnUpstreamBroken(const Status& status) override {
    if (auto o = owner.lock()) o->OnPieceBroken(self.lock(), status);
  }
};

// Registers "/etcdserverpb.Watch/Watch".
class WatchService {
 public:
  explicit WatchService(const TopologyHolder& topology)
      : topology_(topology), hub_(std::make_shared<UpstreamWatchHub>()) {}
  void Register(Router& router);
  const std::shared_ptr<UpstreamWatchHub>& hub() const { return hub_; }

 private:
  const TopologyHolder& topology_;
  std::shared_ptr<UpstreamWatchHub> hub_;
};

}  // namespace esp
