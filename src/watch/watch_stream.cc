#include "watch/watch_stream.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "common/etcd_errors.h"
#include "common/methods.h"
#include "upstream/typed_call.h"

namespace esp {
namespace {

constexpr char kWatchMethod[] = "/etcdserverpb.Watch/Watch";
// etcd's own strings (mvcc/watcher.go): clients match on them.
constexpr char kDuplicateId[] = "mvcc: duplicate watch ID provided on the WatchStream";
constexpr char kSpanningStartRevision[] =
    "etcd-sharding-proxy: start_revision cannot be honoured on a watch spanning shards "
    "(revisions are per shard); re-list and watch from the current revision";
constexpr char kMovedRange[] =
    "etcd-sharding-proxy: the watched keys moved to another shard, whose revisions are its own; "
    "re-list and watch from the current revision";
constexpr char kBelowFloor[] =
    "etcd-sharding-proxy: the requested revision of these keys lived on the shard they moved from; "
    "re-list and watch from the current revision";
// How long the cluster may take to confirm that a start revision lies in its future.
constexpr auto kStartCheckTimeout = std::chrono::seconds(5);

// etcd's check (mvcc watchStream.Watch): a range, not "every key >= key", that is empty.
bool EmptyRange(const etcdserverpb::WatchCreateRequest& request) {
  const std::string key = request.key().empty() ? std::string(kRangeEndAll) : request.key();
  const std::string& end = request.range_end();
  return !end.empty() && end != kRangeEndAll && key >= end;
}

// A range move's fence key (shard/moving_range.h) is written on the source inside the moving
// range at the cut-over; watches of that range see its event before the new map ends them. It is
// the proxy's, not the client's: dropped. A NUL byte first, so ordinary keys cost one memchr.
bool IsFenceEvent(const mvccpb::Event& event) {
  const std::string& key = event.kv().key();
  return std::memchr(key.data(), 0, key.size()) != nullptr && IsFenceKey(key);
}

bool HasFenceEvent(const etcdserverpb::WatchResponse& response) {
  return std::any_of(response.events().begin(), response.events().end(), IsFenceEvent);
}

void DropFenceEvents(etcdserverpb::WatchResponse& response) {
  auto* events = response.mutable_events();
  events->erase(std::remove_if(events->begin(), events->end(), IsFenceEvent), events->end());
}

etcdserverpb::WatchResponse Response(const etcdserverpb::ResponseHeader& header, std::int64_t id) {
  etcdserverpb::WatchResponse response;
  *response.mutable_header() = header;
  response.set_watch_id(id);
  return response;
}

}  // namespace

WatchStream::WatchStream(CallContextPtr ctx, std::shared_ptr<StreamSink> sink, const TopologyHolder& topology,
                         std::shared_ptr<UpstreamWatchHub> hub, std::size_t buffer_bytes)
    : ctx_(std::move(ctx)),
      sink_(std::move(sink)),
      topology_(topology),
      hub_(std::move(hub)),
      buffer_bytes_(buffer_bytes) {}

WatchStream::~WatchStream() {
  // A stream dropped without OnClose (never happens with the gRPC transport) must not leave
  // client watches counted.
  if (!closed_) hub_->AddClientWatches(-static_cast<std::ptrdiff_t>(watches_.size()));
}

void WatchStream::OnMessage(std::string message) {
  etcdserverpb::WatchRequest request;
  if (!request.ParseFromString(message)) {
    sink_->Finish(Status(StatusCode::kInternal, "grpc: error unmarshalling request"));
    return;
  }
  switch (request.request_union_case()) {
    case etcdserverpb::WatchRequest::kCreateRequest:
      OnCreate(request.create_request());
      break;
    case etcdserverpb::WatchRequest::kCancelRequest:
      OnCancel(request.cancel_request().watch_id());
      break;
    case etcdserverpb::WatchRequest::kProgressRequest:
      OnProgress();
      break;
    default:
      break;  // etcd ignores an empty request
  }
}

void WatchStream::RegisterLocked(const WatchPtr& watch) {
  watches_[watch->id] = watch;
  hub_->AddClientWatches(1);
  etcdserverpb::WatchResponse prefix;
  prefix.set_watch_id(watch->id);
  watch->id_prefix = prefix.SerializeAsString();
}

std::int64_t WatchStream::AssignIdLocked(std::int64_t requested) {
  if (requested != 0) return requested;  // 0 is etcd's "pick one for me"
  while (watches_.contains(next_id_)) ++next_id_;
  return next_id_++;
}

void WatchStream::OnCreate(const etcdserverpb::WatchCreateRequest& request) {
  const std::string key = request.key().empty() ? std::string(kRangeEndAll) : request.key();
  const auto topology = topology_.Get();
  auto pieces = topology->map.Split(key, request.range_end());
  auto watch = std::make_shared<Watch>();
  std::vector<std::pair<std::shared_ptr<Piece>, etcdserverpb::WatchCreateRequest>> to_create;
  {
    const std::lock_guard lock(mu_);
    if (closed_) return;
    if (request.watch_id() != 0 && watches_.contains(request.watch_id())) {
      auto answer = Response(last_header_, -1);
      answer.set_created(true);
      answer.set_canceled(true);
      answer.set_cancel_reason(kDuplicateId);
      watch->created = std::move(answer);
      watch->done = true;
      create_order_.push_back(watch);
      FlushCreatesLocked();
      return;
    }
    // An empty range gets no id (etcd's watchStream refuses it first); the owning shard still
    // gives its own answer, header included. A client-chosen id is taken now (later creates
    // must see it as a duplicate); an assigned one when the `created` goes out.
    const bool refused_by_shard = EmptyRange(request);
    watch->id = refused_by_shard ? -1 : (request.watch_id() != 0 ? request.watch_id() : kPendingId);
    const std::int64_t floor =
        request.start_revision() > 0 ? FloorFor(topology->floors, key, request.range_end()) : 0;
    if ((pieces.size() > 1 && request.start_revision() > 0) || floor > request.start_revision()) {
      // Refused the way etcd says history is gone, so clients take their re-list path.
      auto created = Response(last_header_, watch->id);
      created.set_created(true);
      auto canceled = Response(last_header_, watch->id);
      canceled.set_canceled(true);
      canceled.set_compact_revision(std::max(floor, request.start_revision()));
      canceled.set_cancel_reason(pieces.size() > 1 ? kSpanningStartRevision : kBelowFloor);
      watch->created = std::move(created);
      watch->held.push_back(std::move(canceled));
      watch->done = true;
      create_order_.push_back(watch);
      FlushCreatesLocked();
      return;
    }
    for (const auto& range : pieces) {
      auto piece = std::make_shared<Piece>();
      piece->owner = weak_from_this();
      piece->watch = watch;
      piece->shard = topology->shards[range.shard];
      piece->shard_name = topology->map.shard(range.shard).name;
      piece->self = piece;
      watch->pieces.push_back(piece);
      etcdserverpb::WatchCreateRequest upstream = request;
      if (pieces.size() > 1) {
        upstream.set_key(range.key);
        upstream.set_range_end(range.range_end);
      }
      piece->request = upstream;
      to_create.emplace_back(piece, std::move(upstream));
    }
    if (watch->id != -1 && watch->id != kPendingId) RegisterLocked(watch);
    create_order_.push_back(watch);
    // A map published since this create read it may have moved these keys; OnMapChanged ran
    // before the watch was listed, or runs after and finds it.
    if (const auto now = topology_.Get(); now->map_version != topology->map_version && MovedLocked(*watch, *now)) {
      CancelMovedLocked(watch, release_early_);
    }
  }
  // Outside our lock: the hub takes its own, and responses may already arrive meanwhile.
  Handles release;
  {
    const std::lock_guard lock(mu_);
    release.swap(release_early_);
  }
  for (auto& [piece, upstream] : to_create) {
    auto handle = hub_->Create(piece->shard, ctx_->metadata(), std::move(upstream), piece);
    const std::lock_guard lock(mu_);
    piece->handle = handle;
    if (watch->done || closed_) release.push_back(handle);  // canceled before we knew the id
  }
  ReleaseAll(release);
}

void WatchStream::OnCancel(std::int64_t id) {
  Handles release;
  {
    const std::lock_guard lock(mu_);
    const auto it = watches_.find(id);
    if (it == watches_.end()) return;  // etcd does not answer an unknown id
    auto canceled = Response(last_header_, id);
    canceled.set_canceled(true);
    CancelWatchLocked(it->second, std::move(canceled), release);
  }
  ReleaseAll(release);
}

void WatchStream::OnProgress() {
  // Which shards the stream's watches sit on, and which watches sit on each. A create whose
  // `created` has not gone out yet counts for where the request goes (it gets no answer itself):
  // etcd 3.5+ answers only on an upstream stream that has watchers, all synced, so the request
  // must follow the new watcher's create to its shard, as it follows it on a direct stream.
  std::map<const ShardTransport*, std::pair<std::shared_ptr<ShardTransport>, std::vector<std::int64_t>>> by_shard;
  {
    const std::lock_guard lock(mu_);
    for (const auto& [id, watch] : watches_) {
      for (const auto& piece : watch->pieces) {
        auto& [transport, ids] = by_shard[piece->shard.get()];
        transport = piece->shard;
        ids.push_back(id);
      }
    }
    for (const auto& watch : create_order_) {
      if (watch->done) continue;
      for (const auto& piece : watch->pieces) by_shard[piece->shard.get()].first = piece->shard;
    }
  }
  // No watch at all: nothing to answer for. etcd 3.5+ sends nothing on a stream without
  // watchers; 3.4 answered with its own revision, which over several shards would mean nothing.
  if (by_shard.empty()) return;
  std::weak_ptr<WatchStream> weak = weak_from_this();
  if (by_shard.size() == 1) {
    // One shard: exactly etcd's answer, watch_id -1 with that shard's revision.
    const ShardTransport* shard = by_shard.begin()->first;
    hub_->Progress(by_shard.begin()->second.first, ctx_->metadata(),
                   [weak, shard](std::optional<etcdserverpb::WatchResponse> response) {
                     auto self = weak.lock();
                     if (!response || !self) return;
                     self->OnProgressAnswer({.shard = shard, .stream_wide = true, .ids = {}, .response = *response});
                   });
    return;
  }
  // Several shards: one -1 answer would carry a revision wrong for some watches; answer per
  // watch with its shard's revision instead.
  for (auto& [shard, entry] : by_shard) {
    auto& [transport, ids] = entry;
    if (ids.empty()) continue;  // only creates still pending there: they get no answer
    hub_->Progress(transport, ctx_->metadata(),
                   [weak, shard, ids = std::move(ids)](std::optional<etcdserverpb::WatchResponse> response) {
                     auto self = weak.lock();
                     if (!response || !self) return;
                     self->OnProgressAnswer({.shard = shard, .stream_wide = false, .ids = ids, .response = *response});
                   });
  }
}

void WatchStream::OnProgressAnswer(PendingProgress progress) {
  const std::lock_guard lock(mu_);
  if (closed_) return;
  pending_progress_.push_back(std::move(progress));
  FlushProgressLocked();
}

bool WatchStream::SyncedLocked(const Watch& watch, const ShardTransport* shard) const {
  // Synced as far as the proxy is concerned: nothing of this watch waits in the proxy (held
  // behind its `created`, deferred behind a fragment) and no piece on the shard is resuming.
  if (!watch.created_sent || !watch.deferred.empty() || watch.fragmenting != nullptr) return false;
  return std::none_of(watch.pieces.begin(), watch.pieces.end(), [shard](const auto& piece) {
    return piece->shard.get() == shard && (!piece->created || piece->resuming || piece->shared_resuming);
  });
}

void WatchStream::FlushProgressLocked() {
  // In arrival order: an earlier answer carries a lower revision than a later one.
  while (!closed_ && !pending_progress_.empty()) {
    const PendingProgress& front = pending_progress_.front();
    if (front.stream_wide) {
      // etcd answers only once every watcher of the stream is synced, the new ones included.
      if (!create_order_.empty()) return;
      for (const auto& [id, watch] : watches_) {
        if (!SyncedLocked(*watch, front.shard)) return;
      }
    } else {
      for (const std::int64_t id : front.ids) {
        const auto it = watches_.find(id);
        if (it != watches_.end() && !SyncedLocked(*it->second, front.shard)) return;
      }
    }
    // Taken off the queue before writing: a write may end the stream (slow client).
    PendingProgress progress = std::move(pending_progress_.front());
    pending_progress_.pop_front();
    if (progress.stream_wide) {
      progress.response.set_watch_id(-1);
      WriteLocked(progress.response.SerializeAsString());
      continue;
    }
    for (const std::int64_t id : progress.ids) {
      if (!watches_.contains(id)) continue;  // canceled meanwhile
      progress.response.set_watch_id(id);
      WriteLocked(progress.response.SerializeAsString());
    }
  }
}

void WatchStream::OnPieceResponse(const std::shared_ptr<Piece>& piece, etcdserverpb::WatchResponse response) {
  Handles release;
  std::shared_ptr<Piece> check;  // a start revision to confirm with the cluster, outside mu_
  {
    const std::lock_guard lock(mu_);
    auto watch = piece ? piece->watch.lock() : nullptr;
    if (response.has_header()) last_header_ = response.header();
    if (closed_ || !watch || watch->done) return;
    if (response.created() && piece->resuming && !response.canceled()) {
      piece->resuming = false;  // resumed transparently: the client saw its `created` long ago
      piece->retries = 0;
      FlushProgressLocked();
      return;
    }
    TrackRevision(*piece, response);
    if (response.created() && piece->resuming) {
      // The shard refused the re-created watcher (e.g. the token expired): end the watch.
      response.set_created(false);
      response.set_watch_id(watch->id);
      CancelWatchLocked(watch, std::move(response), release);
    } else if (response.created() && StartsInTheFuture(piece->request, response)) {
      // Held (with whatever follows it) until the cluster confirms or clears it.
      piece->unconfirmed_created = std::move(response);
      check = piece;
    } else if (response.created()) {
      OnPieceCreatedLocked(watch, *piece, std::move(response), release);
    } else if (response.canceled()) {
      // Compaction (compact_revision set) or another reason the shard gave: the whole watch ends.
      response.set_watch_id(watch->id);
      CancelWatchLocked(watch, std::move(response), release);
    } else if (HasFenceEvent(response)) {
      DropFenceEvents(response);
      if (response.events_size() > 0) {
        response.set_watch_id(watch->id);
        EmitPieceLocked(watch, piece.get(), std::move(response));
      }
    } else {
      response.set_watch_id(watch->id);
      EmitPieceLocked(watch, piece.get(), std::move(response));
    }
    FlushProgressLocked();
  }
  ReleaseAll(release);
  if (check) CheckStartRevision(check);
}

void WatchStream::OnPieceCreatedLocked(const WatchPtr& watch, Piece& piece, etcdserverpb::WatchResponse response,
                                       Handles& release) {
  piece.created = true;
  ++watch->pieces_created;
  if (response.canceled()) {
    // The shard refused the create (empty range, permission), or the proxy refused a start
    // revision in the shard's future: that answer is the client's, and, as in etcd, the refused
    // create takes no id.
    response.set_watch_id(-1);
    watch->created = std::move(response);
    watch->held.clear();
    FinishWatchLocked(watch, release);
    watch->id = -1;
  } else if (!watch->created || response.header().revision() < watch->created->header().revision()) {
    // A spanning watch's `created` carries the header of the shard with the lowest revision, as
    // every spanning answer does (docs/semantics.md, "Revisions across shards").
    response.set_watch_id(watch->id);
    watch->created = std::move(response);
  }
  FlushCreatesLocked();
}

bool WatchStream::StartsInTheFuture(const etcdserverpb::WatchCreateRequest& request,
                                    const etcdserverpb::WatchResponse& created) {
  // etcd's created header carries the member's revision when the watcher was made; a watch from
  // that revision + 1 is a watch from "now".
  return !created.canceled() && request.start_revision() > created.header().revision() + 1;
}

void WatchStream::CheckStartRevision(const std::shared_ptr<Piece>& piece) {
  // The member that holds the watcher may lag its cluster by a few milliseconds (a client that
  // wrote through another member and watches from its write's revision + 1): a linearizable
  // read of the watched key asks the cluster itself before the start is called a future one.
  etcdserverpb::RangeRequest probe;
  probe.set_key(piece->request.key().empty() ? std::string(kRangeEndAll) : piece->request.key());
  probe.set_count_only(true);
  auto ctx = std::make_shared<CallContext>(Clock::now() + kStartCheckTimeout, ctx_->metadata());
  std::weak_ptr<WatchStream> weak = weak_from_this();
  CallShard<etcdserverpb::RangeResponse>(
      *piece->shard, methods::kRange, ctx, probe, kRead,
      [weak, piece](Status status, etcdserverpb::RangeResponse answer) {
        if (auto self = weak.lock()) self->OnStartChecked(piece, status, answer);
      });
}

void WatchStream::OnStartChecked(const std::shared_ptr<Piece>& piece, const Status& status,
                                 const etcdserverpb::RangeResponse& answer) {
  Handles release;
  {
    const std::lock_guard lock(mu_);
    auto watch = piece->watch.lock();
    if (closed_ || !watch || watch->done || !piece->unconfirmed_created) return;
    etcdserverpb::WatchResponse created = std::move(*piece->unconfirmed_created);
    piece->unconfirmed_created.reset();
    // Without an answer the member's word stands: a refusal is a clear error, a watch left
    // waiting for a revision another shard gave the client would miss events in silence.
    const auto& header = status.ok() ? answer.header() : created.header();
    if (piece->request.start_revision() > header.revision() + 1) {
      created = etcdserverpb::WatchResponse();
      *created.mutable_header() = header;
      created.set_created(true);
      created.set_canceled(true);
      created.set_cancel_reason(std::string(etcd_errors::FutureRev().message()));
    }
    OnPieceCreatedLocked(watch, *piece, std::move(created), release);
    FlushProgressLocked();
  }
  ReleaseAll(release);
}

void WatchStream::OnPieceShared(const std::shared_ptr<Piece>& piece,
                                const std::shared_ptr<const SharedWatchResponse>& shared) {
  const std::lock_guard lock(mu_);
  auto watch = piece ? piece->watch.lock() : nullptr;
  if (closed_ || !watch || watch->done) return;
  const auto& response = shared->response;
  last_header_ = response.header();
  TrackRevision(*piece, response);
  if (HasFenceEvent(response)) {
    auto own = response;
    DropFenceEvents(own);
    if (own.events_size() > 0) {
      own.set_watch_id(watch->id);
      EmitPieceLocked(watch, piece.get(), std::move(own));
    }
    return;
  }
  const bool in_turn = watch->fragmenting == nullptr || watch->fragmenting == piece.get();
  if (watch->created_sent && watch->deferred.empty() && in_turn) {
    // The common case: straight out, the body serialized once for every member.
    watch->fragmenting = response.fragment() ? piece.get() : nullptr;
    WritePartsLocked(watch->id_prefix, shared->body);
  } else {
    auto own = response;
    own.set_watch_id(watch->id);
    EmitPieceLocked(watch, piece.get(), std::move(own));
  }
  FlushProgressLocked();
}

void WatchStream::TrackRevision(Piece& piece, const etcdserverpb::WatchResponse& response) {
  if (response.canceled()) return;
  if (response.created()) {
    // A watch from "now" has seen everything up to the created header; one with a start
    // revision still owes everything from there.
    const std::int64_t start = piece.request.start_revision();
    piece.next_revision = start > 0 ? start : response.header().revision() + 1;
    return;
  }
  if (response.fragment()) return;  // the rest of this revision's events is still to come
  if (response.events_size() > 0) {
    piece.next_revision = response.events(response.events_size() - 1).kv().mod_revision() + 1;
  } else if (piece.next_revision > 0) {
    // A progress notification: every event up to its revision has been delivered.
    piece.next_revision = std::max(piece.next_revision, response.header().revision() + 1);
  }
}

void WatchStream::OnPieceBroken(const std::shared_ptr<Piece>& piece, const Status&) {
  {
    const std::lock_guard lock(mu_);
    auto watch = piece ? piece->watch.lock() : nullptr;
    if (closed_ || !watch || watch->done) return;
    piece->handle = {};  // gone with its stream
    piece->resuming = piece->created;
    if (watch->fragmenting == piece.get()) watch->fragmenting = nullptr;  // its fragments end here
  }
  ScheduleResume(piece);
}

void WatchStream::OnPieceSharedResuming(const std::shared_ptr<Piece>& piece, bool resuming) {
  const std::lock_guard lock(mu_);
  if (closed_ || !piece) return;
  piece->shared_resuming = resuming;
  if (!resuming) FlushProgressLocked();
}

void WatchStream::ScheduleResume(const std::shared_ptr<Piece>& piece) {
  const std::lock_guard lock(mu_);
  // Back off while the shard stays down: 50 ms doubling to 2 s, then every 2 s, indefinitely.
  const auto delay = std::min(std::chrono::milliseconds(2000), std::chrono::milliseconds(50 << std::min(piece->retries, 6)));
  ++piece->retries;
  std::weak_ptr<Piece> weak = piece;
  std::weak_ptr<WatchStream> owner = weak_from_this();
  piece->retry_alarm = std::make_unique<grpc::Alarm>();
  piece->retry_alarm->Set(std::chrono::system_clock::now() + delay, [weak, owner](bool fired) {
    auto p = weak.lock();
    auto o = owner.lock();
    if (fired && p && o) o->Resume(p);
  });
}

void WatchStream::Resume(const std::shared_ptr<Piece>& piece) {
  etcdserverpb::WatchCreateRequest request;
  WatchPtr watch;
  {
    const std::lock_guard lock(mu_);
    watch = piece->watch.lock();
    if (closed_ || !watch || watch->done) return;
    request = piece->request;
    request.set_watch_id(0);
    // From the first revision not yet delivered: nothing lost, nothing twice.
    if (piece->created) request.set_start_revision(piece->next_revision);
  }
  auto handle = hub_->Create(piece->shard, ctx_->metadata(), std::move(request), piece);
  Handles release;
  {
    const std::lock_guard lock(mu_);
    piece->handle = handle;
    if (watch->done || closed_) release.push_back(handle);
  }
  ReleaseAll(release);
}

void WatchStream::EmitLocked(const WatchPtr& watch, etcdserverpb::WatchResponse response) {
  if (!watch->created_sent) {
    watch->held.push_back(std::move(response));  // `created` must come first
    return;
  }
  WriteLocked(response.SerializeAsString());
}

bool WatchStream::RoomLocked(std::size_t bytes) {
  if (closed_) return false;
  const std::size_t queued = sink_->QueuedBytes();
  // One response larger than the budget still goes out to a client that keeps up.
  if (queued > 0 && queued + bytes > buffer_bytes_) {
    AbortSlowClientLocked();
    return false;
  }
  return true;
}

void WatchStream::WriteLocked(std::string bytes) {
  if (RoomLocked(bytes.size())) sink_->Write(std::move(bytes));
}

void WatchStream::WritePartsLocked(std::string_view head, std::string_view body) {
  if (RoomLocked(head.size() + body.size())) sink_->WriteParts(head, body);
}

void WatchStream::AbortSlowClientLocked() {
  // Memory stays bounded: nothing more is queued for this client, its watches (and their share
  // of upstream watchers) go now; a coalesced watcher's other members are not held up.
  Handles release;
  const std::size_t queued = sink_->QueuedBytes();
  CloseLocked(release);
  const Status status(StatusCode::kResourceExhausted,
                      "etcd-sharding-proxy: watch stream canceled: the client does not keep up (" +
                          std::to_string(queued) + " bytes of responses pending, limit " +
                          std::to_string(buffer_bytes_) + ")");
  // Released outside mu_ (a release may call back into this stream's pieces), by an alarm that
  // runs on a gRPC thread; run even if the alarm is cancelled, so nothing leaks.
  abort_alarm_ = std::make_unique<grpc::Alarm>();
  abort_alarm_->Set(std::chrono::system_clock::now(),
                    [hub = hub_, sink = sink_, release = std::move(release), status](bool) {
                      for (const auto& handle : release) hub->Release(handle);
                      sink->Finish(status);
                    });
}

void WatchStream::EmitPieceLocked(const WatchPtr& watch, const Piece* piece, etcdserverpb::WatchResponse response) {
  watch->deferred.emplace_back(piece, std::move(response));
  // In arrival order, except that another shard's response never splits a fragmented one.
  while (!watch->deferred.empty()) {
    auto it = watch->deferred.begin();
    if (watch->fragmenting != nullptr) {
      while (it != watch->deferred.end() && it->first != watch->fragmenting) ++it;
      if (it == watch->deferred.end()) return;
    }
    watch->fragmenting = it->second.fragment() ? it->first : nullptr;
    EmitLocked(watch, std::move(it->second));
    watch->deferred.erase(it);
  }
}

void WatchStream::FlushCreatesLocked() {
  // `created` answers leave in create-request order: clientv3 binds each to its oldest pending
  // create, so a later watch's answer waits for the earlier ones.
  while (!create_order_.empty()) {
    const WatchPtr& watch = create_order_.front();
    const bool ready = watch->created && (watch->done || watch->pieces_created == watch->pieces.size());
    if (!ready) return;
    if (watch->id == kPendingId) {
      // Ids are assigned in create order as the answers go out (a compacted start revision
      // takes one, as etcd's watcher is created before it is canceled).
      watch->id = AssignIdLocked(0);
      if (!watch->done) RegisterLocked(watch);
      watch->created->set_watch_id(watch->id);
      for (auto& held : watch->held) held.set_watch_id(watch->id);
    }
    const WatchPtr sending = watch;  // the pop below must not free it before its writes
    create_order_.pop_front();
    sending->created_sent = true;
    WriteLocked(sending->created->SerializeAsString());
    for (auto& held : sending->held) WriteLocked(held.SerializeAsString());
    sending->held.clear();
  }
}

// By value: `watch` may be the very map entry this erases.
void WatchStream::FinishWatchLocked(WatchPtr watch, Handles& release) {
  watch->done = true;
  const auto it = watches_.find(watch->id);
  if (it != watches_.end() && it->second == watch) {
    watches_.erase(it);
    hub_->AddClientWatches(-1);
  }
  for (const auto& piece : watch->pieces) {
    if (piece->handle) release.push_back(piece->handle);
  }
}

void WatchStream::CancelWatchLocked(WatchPtr watch, etcdserverpb::WatchResponse canceled, Handles& release) {
  EmitLocked(watch, std::move(canceled));
  FinishWatchLocked(watch, release);
  if (!watch->created_sent) {
    if (!watch->created) {
      auto created = Response(last_header_, watch->id);
      created.set_created(true);
      watch->created = std::move(created);
    }
    FlushCreatesLocked();
  }
}

bool WatchStream::MovedLocked(const Watch& watch, const Topology& next) const {
  for (const auto& piece : watch.pieces) {
    const std::string& key = piece->request.key();
    const auto shard = next.map.SingleShard(key.empty() ? kRangeEndAll : std::string_view(key), piece->request.range_end());
    if (!shard || next.map.shard(*shard).name != piece->shard_name) return true;
  }
  return false;
}

void WatchStream::CancelMovedLocked(const WatchPtr& watch, Handles& release) {
  // Told the way etcd says history is gone (clientv3: ErrCompacted; Kubernetes: 410 Gone), at
  // the revision it would have resumed from, so clients re-list from the new owner.
  std::int64_t resume = 0;
  for (const auto& piece : watch->pieces) resume = std::max(resume, piece->next_revision);
  if (resume == 0) resume = std::max<std::int64_t>(last_header_.revision() + 1, 1);
  auto canceled = Response(last_header_, watch->id);
  canceled.set_canceled(true);
  canceled.set_compact_revision(resume);
  canceled.set_cancel_reason(kMovedRange);
  CancelWatchLocked(watch, std::move(canceled), release);
}

void WatchStream::OnMapChanged(const Topology& next) {
  Handles release;
  {
    const std::lock_guard lock(mu_);
    if (closed_) return;
    std::vector<WatchPtr> moved;
    for (const auto& [id, watch] : watches_) {
      if (!watch->done && MovedLocked(*watch, next)) moved.push_back(watch);
    }
    for (const auto& watch : create_order_) {
      if (!watch->done && MovedLocked(*watch, next) && std::find(moved.begin(), moved.end(), watch) == moved.end()) {
        moved.push_back(watch);
      }
    }
    for (const auto& watch : moved) CancelMovedLocked(watch, release);
    spdlog::debug("map version {}: {} watch(es) of {} ended, their keys moved", next.map_version, moved.size(),
                  watches_.size());
  }
  ReleaseAll(release);
}

void WatchService::OnMapChanged(const Topology& next) {
  std::vector<std::shared_ptr<WatchStream>> live;
  {
    const std::lock_guard lock(streams_mu_);
    std::erase_if(streams_, [&live](const std::weak_ptr<WatchStream>& weak) {
      auto stream = weak.lock();
      if (!stream) return true;
      live.push_back(std::move(stream));
      return false;
    });
  }
  for (const auto& stream : live) stream->OnMapChanged(next);
}

void WatchStream::ReleaseAll(const Handles& handles) {
  for (const auto& handle : handles) hub_->Release(handle);
}

void WatchStream::CloseLocked(Handles& release) {
  closed_ = true;
  for (const auto& [id, watch] : watches_) {
    for (const auto& piece : watch->pieces) {
      if (piece->handle) release.push_back(piece->handle);
    }
  }
  for (const auto& watch : create_order_) {
    for (const auto& piece : watch->pieces) {
      if (piece->handle) release.push_back(piece->handle);
    }
  }
  hub_->AddClientWatches(-static_cast<std::ptrdiff_t>(watches_.size()));
  watches_.clear();
  create_order_.clear();
  pending_progress_.clear();
}

void WatchStream::OnClose() {
  Handles release;
  {
    const std::lock_guard lock(mu_);
    if (closed_) return;
    CloseLocked(release);
  }
  ReleaseAll(release);  // Release is idempotent: a watch in both lists is released once upstream
  sink_->Finish(Status::Ok());
}

void WatchService::Register(Router& router) {
  router.AddStream(kWatchMethod, [this](CallContextPtr ctx, std::shared_ptr<StreamSink> sink) {
    auto stream = std::make_shared<WatchStream>(std::move(ctx), std::move(sink), topology_, hub_, buffer_bytes_);
    const std::lock_guard lock(streams_mu_);
    if (streams_.size() >= prune_at_) {  // ended streams are dropped as the list doubles
      std::erase_if(streams_, [](const std::weak_ptr<WatchStream>& weak) { return weak.expired(); });
      prune_at_ = std::max<std::size_t>(64, 2 * streams_.size());
    }
    streams_.push_back(stream);
    return stream;
  });
}

}  // namespace esp
