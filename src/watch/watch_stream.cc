#include "watch/watch_stream.h"

#include <algorithm>
#include <chrono>
#include <utility>

namespace esp {
namespace {

constexpr char kWatchMethod[] = "/etcdserverpb.Watch/Watch";
// etcd's own strings (mvcc/watcher.go): clients match on them.
constexpr char kDuplicateId[] = "mvcc: duplicate watch ID provided on the WatchStream";
constexpr char kSpanningStartRevision[] =
    "etcd-sharding-proxy: start_revision cannot be honoured on a watch spanning shards "
    "(revisions are per shard); re-list and watch from the current revision";

// etcd's check (mvcc watchStream.Watch): a range, not "every key >= key", that is empty.
bool EmptyRange(const etcdserverpb::WatchCreateRequest& request) {
  const std::string key = request.key().empty() ? std::string(kRangeEndAll) : request.key();
  const std::string& end = request.range_end();
  return !end.empty() && end != kRangeEndAll && key >= end;
}

etcdserverpb::WatchResponse Response(const etcdserverpb::ResponseHeader& header, std::int64_t id) {
  etcdserverpb::WatchResponse response;
  *response.mutable_header() = header;
  response.set_watch_id(id);
  return response;
}

}  // namespace

WatchStream::WatchStream(CallContextPtr ctx, std::shared_ptr<StreamSink> sink, std::shared_ptr<const Topology> topology,
                         std::shared_ptr<UpstreamWatchHub> hub)
    : ctx_(std::move(ctx)), sink_(std::move(sink)), topology_(std::move(topology)), hub_(std::move(hub)) {}

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

std::int64_t WatchStream::AssignIdLocked(std::int64_t requested) {
  if (requested != 0) return requested;  // 0 is etcd's "pick one for me"
  while (watches_.contains(next_id_)) ++next_id_;
  return next_id_++;
}

void WatchStream::OnCreate(const etcdserverpb::WatchCreateRequest& request) {
  const std::string key = request.key().empty() ? std::string(kRangeEndAll) : request.key();
  auto pieces = topology_->map.Split(key, request.range_end());
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
    // gives its own answer, header included.
    const bool refused_by_shard = EmptyRange(request);
    watch->id = refused_by_shard ? -1 : AssignIdLocked(request.watch_id());
    if (pieces.size() > 1 && request.start_revision() > 0) {
      // Refused the way etcd says history is gone, so clients take their re-list path.
      auto created = Response(last_header_, watch->id);
      created.set_created(true);
      auto canceled = Response(last_header_, watch->id);
      canceled.set_canceled(true);
      canceled.set_compact_revision(request.start_revision());
      canceled.set_cancel_reason(kSpanningStartRevision);
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
      piece->shard = range.shard;
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
    if (watch->id != -1) {
      watches_[watch->id] = watch;
      hub_->CountClientWatches(1);
    }
    create_order_.push_back(watch);
  }
  // Outside our lock: the hub takes its own, and responses may already arrive meanwhile.
  Handles release;
  for (auto& [piece, upstream] : to_create) {
    auto handle = hub_->Create(topology_->shards[piece->shard], ctx_->metadata(), std::move(upstream), piece);
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
  // Which shards the stream's watches sit on, and which watches sit on each.
  std::map<std::size_t, std::vector<std::int64_t>> by_shard;
  {
    const std::lock_guard lock(mu_);
    for (const auto& [id, watch] : watches_) {
      for (const auto& piece : watch->pieces) by_shard[piece->shard].push_back(id);
    }
  }
  auto self = shared_from_this();
  if (by_shard.size() <= 1) {
    // One shard: exactly etcd's answer, watch_id -1 with that shard's revision.
    const std::size_t shard = by_shard.empty() ? 0 : by_shard.begin()->first;
    hub_->Progress(topology_->shards[shard], ctx_->metadata(),
                   [self](std::optional<etcdserverpb::WatchResponse> response) {
                     if (!response) return;
                     response->set_watch_id(-1);
                     const std::lock_guard lock(self->mu_);
                     if (!self->closed_) self->sink_->Write(response->SerializeAsString());
                   });
    return;
  }
  // Several shards: one -1 answer would carry a revision wrong for some watches; answer per
  // watch with its shard's revision instead.
  for (auto& [shard, ids] : by_shard) {
    hub_->Progress(topology_->shards[shard], ctx_->metadata(),
                   [self, ids = std::move(ids)](std::optional<etcdserverpb::WatchResponse> response) {
                     if (!response) return;
                     const std::lock_guard lock(self->mu_);
                     for (const std::int64_t id : ids) {
                       const auto it = self->watches_.find(id);
                       if (self->closed_ || it == self->watches_.end() || !it->second->created_sent) continue;
                       response->set_watch_id(id);
                       self->sink_->Write(response->SerializeAsString());
                     }
                   });
  }
}

void WatchStream::OnPieceResponse(const std::shared_ptr<Piece>& piece, etcdserverpb::WatchResponse response) {
  Handles release;
  {
    const std::lock_guard lock(mu_);
    auto watch = piece ? piece->watch.lock() : nullptr;
    if (response.has_header()) last_header_ = response.header();
    if (closed_ || !watch || watch->done) return;
    if (response.created() && piece->resuming && !response.canceled()) {
      piece->resuming = false;  // resumed transparently: the client saw its `created` long ago
      piece->retries = 0;
      return;
    }
    TrackRevision(*piece, response);
    if (response.created() && piece->resuming) {
      // The shard refused the re-created watcher (e.g. the token expired): end the watch.
      response.set_created(false);
      response.set_watch_id(watch->id);
      CancelWatchLocked(watch, std::move(response), release);
    } else if (response.created()) {
      piece->created = true;
      ++watch->pieces_created;
      if (response.canceled()) {
        // The shard refused the create (empty range, permission): its answer is the client's.
        response.set_watch_id(-1);
        watch->created = std::move(response);
        watch->held.clear();
        FinishWatchLocked(watch, release);
      } else if (!watch->created || response.header().revision() > watch->created->header().revision()) {
        // A spanning watch's `created` carries the header of the most advanced shard.
        response.set_watch_id(watch->id);
        watch->created = std::move(response);
      }
      FlushCreatesLocked();
    } else if (response.canceled()) {
      // Compaction (compact_revision set) or another reason the shard gave: the whole watch ends.
      response.set_watch_id(watch->id);
      CancelWatchLocked(watch, std::move(response), release);
    } else {
      response.set_watch_id(watch->id);
      EmitPieceLocked(watch, piece.get(), std::move(response));
    }
  }
  ReleaseAll(release);
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
    // From the first revision not yet delivered: nothing lost, nothing twice.
    if (piece->created) request.set_start_revision(piece->next_revision);
  }
  auto handle = hub_->Create(topology_->shards[piece->shard], ctx_->metadata(), std::move(request), piece);
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
  sink_->Write(response.SerializeAsString());
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
    sink_->Write(watch->created->SerializeAsString());
    watch->created_sent = true;
    for (auto& held : watch->held) sink_->Write(held.SerializeAsString());
    watch->held.clear();
    create_order_.pop_front();
  }
}

// By value: `watch` may be the very map entry this erases.
void WatchStream::FinishWatchLocked(WatchPtr watch, Handles& release) {
  watch->done = true;
  const auto it = watches_.find(watch->id);
  if (it != watches_.end() && it->second == watch) {
    watches_.erase(it);
    hub_->CountClientWatches(-1);
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

void WatchStream::ReleaseAll(const Handles& handles) {
  for (const auto& handle : handles) hub_->Release(handle);
}

void WatchStream::OnClose() {
  Handles release;
  {
    const std::lock_guard lock(mu_);
    if (closed_) return;
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
    hub_->CountClientWatches(-static_cast<std::int64_t>(watches_.size()));
    watches_.clear();
    create_order_.clear();
  }
  ReleaseAll(release);  // Release is idempotent: a watch in both lists is released once upstream
  sink_->Finish(Status::Ok());
}

void WatchService::Register(Router& router) {
  router.AddStream(kWatchMethod, [this](CallContextPtr ctx, std::shared_ptr<StreamSink> sink) {
    return std::make_shared<WatchStream>(std::move(ctx), std::move(sink), topology_.Get(), hub_);
  });
}

}  // namespace esp
