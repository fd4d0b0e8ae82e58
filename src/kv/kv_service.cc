#include "kv/kv_service.h"

#include <algorithm>
#include <memory>
#include <sstream>

#include "common/etcd_errors.h"
#include "common/methods.h"
#include "kv/compaction.h"
#include "kv/delete_check.h"
#include "kv/range_merge.h"
#include "kv/request_scan.h"
#include "kv/txn_routing.h"
#include "kv/validation.h"
#include "move/guarded_call.h"
#include "transport/auth_metadata.h"
#include "upstream/scatter_gather.h"
#include "upstream/typed_call.h"
#include "upstream/upstream_fence.h"

namespace esp {

using etcdserverpb::RequestOp;
using etcdserverpb::ResponseOp;
namespace {

using etcdserverpb::CompactionRequest;
using etcdserverpb::DeleteRangeRequest;
using etcdserverpb::DeleteRangeResponse;
using etcdserverpb::RangeRequest;
using etcdserverpb::RangeResponse;
using etcdserverpb::TxnRequest;


Status Unparsable() { return {StatusCode::kInternal, "grpc: error unmarshalling request"}; }

// A proxy whose meta-store registration may have lapsed serves no key (upstream_fence.h).
Status FencedProxy() { return {StatusCode::kUnavailable, fence::FencedMessage()}; }

std::string DescribeShards(const ShardMap& map, const std::vector<RangePiece>& pieces) {
  std::ostringstream os;
  for (std::size_t i = 0; i < pieces.size(); ++i) os << (i ? ", " : "") << map.Describe(pieces[i].shard);
  return os.str();
}

bool IsReadOnly(const TxnRequest& txn) {
  for (const auto* branch : {&txn.success(), &txn.failure()}) {
    for (const auto& op : *branch) {
      if (op.has_request_put() || op.has_request_delete_range()) return false;
      if (op.has_request_txn() && !IsReadOnly(op.request_txn())) return false;
    }
  }
  return true;
}

// The leases a txn's puts attach (both branches, nested txns included), each once.
void CollectLeases(const TxnRequest& txn, std::vector<int64_t>& out) {
  for (const auto* branch : {&txn.success(), &txn.failure()}) {
    for (const auto& op : *branch) {
      if (op.has_request_put() && op.request_put().lease() != 0 &&
          std::find(out.begin(), out.end(), op.request_put().lease()) == out.end()) {
        out.push_back(op.request_put().lease());
      }
      if (op.has_request_txn()) CollectLeases(op.request_txn(), out);
    }
  }
}

}  // namespace

KvService::KvService(const TopologyHolder& topology, KvOptions options)
    : topology_(topology), options_(options) {}

void KvService::Register(Router& router) {
  const auto bind = [this](auto method) {
    return [this, method](CallContextPtr ctx, std::string bytes, UnaryDone done) {
      (this->*method)(std::move(ctx), std::move(bytes), std::move(done));
    };
  };
  router.AddUnary(methods::kRange, bind(&KvService::Range));
  router.AddUnary(methods::kPut, bind(&KvService::Put));
  router.AddUnary(methods::kDeleteRange, bind(&KvService::DeleteRange));
  router.AddUnary(methods::kTxn, bind(&KvService::Txn));
  router.AddUnary(methods::kCompact, bind(&KvService::Compact));
}

// Single-shard requests are forwarded as the client's own bytes and answered with the shard's
// own bytes: nothing is re-encoded on the common path.

void KvService::Range(CallContextPtr ctx, std::string bytes, UnaryDone done) {
  if (!fence::SendAllowed()) return done(FencedProxy(), {});
  // Routed by the key range read from the wire; only a spanning range builds the message.
  const std::optional<KeyRangeFields> scanned = ScanRangeRequest(bytes);
  if (!scanned) return done(Unparsable(), {});
  if (Status s = CheckRangeFields(*scanned); !s.ok()) return done(std::move(s), {});
  const auto topology = topology_.Get();
  if (scanned->revision > 0 && !topology->floors.empty() &&
      FloorFor(topology->floors, scanned->key, scanned->range_end) > scanned->revision) {
    return done(etcd_errors::Compacted(), {});  // that revision of these keys lived on the shard they moved from
  }
  const bool guard_linearizable = topology->moving && !scanned->serializable;
  if (const auto shard = topology->map.SingleShard(scanned->key, scanned->range_end)) {
    if (guard_linearizable && move::MustGuard(*topology, *shard, scanned->key, scanned->range_end)) {
      return GuardedRange(ctx, std::move(bytes), topology, std::move(done));
    }
    topology->shards[*shard]->Unary(methods::kRange, ctx, std::move(bytes), kRead, std::move(done));
    return;
  }
  RangeRequest request;
  if (!request.ParseFromString(bytes)) return done(Unparsable(), {});  // the scan read the same framing
  const auto pieces = topology->map.Split(request.key(), request.range_end());
  if (request.revision() > 0) {
    return done(Status(StatusCode::kFailedPrecondition,
                       "etcd-sharding-proxy: a Range at revision " + std::to_string(request.revision()) +
                           " cannot span shards, because each shard has its own revisions; the range covers " +
                           DescribeShards(topology->map, pieces)),
                {});
  }
  SpanningRange(ctx, *topology, request, pieces,
                [this, ctx, bytes = std::move(bytes), version = topology->map_version,
                 done = std::move(done)](Status status, std::string response) mutable {
                  if (!move::IsFenced(status)) return done(std::move(status), std::move(response));
                  HoldThenRetry(ctx, version, std::move(status), std::move(done),
                                [this, ctx, bytes = std::move(bytes)](UnaryDone retry_done) mutable {
                                  Range(ctx, std::move(bytes), std::move(retry_done));
                                });
                });
}

void KvService::GuardedRange(const CallContextPtr& ctx, std::string bytes, const std::shared_ptr<const Topology>& topology,
                             UnaryDone done) {
  RequestOp op;
  if (!op.mutable_request_range()->ParseFromString(bytes)) return done(Unparsable(), {});
  SendGuarded(ctx, topology, std::move(op), kRead, std::move(bytes), &KvService::Range, std::move(done));
}

void KvService::SendGuarded(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology,
                            RequestOp op, UnaryOptions options, std::string bytes, Handler again, UnaryDone done) {
  move::SendGuarded(
      *topology, ctx, std::move(op), options,
      [this, ctx, bytes = std::move(bytes), again, version = topology->map_version,
       done = std::move(done)](Status status, ResponseOp response) mutable {
        if (move::IsFenced(status)) {
          return HoldThenRetry(ctx, version, std::move(status), std::move(done),
                               [this, ctx, bytes = std::move(bytes), again](UnaryDone retry_done) mutable {
                                 (this->*again)(ctx, std::move(bytes), std::move(retry_done));
                               });
        }
        if (!status.ok()) return done(std::move(status), {});
        switch (response.response_case()) {
          case ResponseOp::kResponseRange: return done(Status::Ok(), response.response_range().SerializeAsString());
          case ResponseOp::kResponsePut: return done(Status::Ok(), response.response_put().SerializeAsString());
          case ResponseOp::kResponseDeleteRange:
            return done(Status::Ok(), response.response_delete_range().SerializeAsString());
          case ResponseOp::kResponseTxn: return done(Status::Ok(), response.response_txn().SerializeAsString());
          default: return done(Status(StatusCode::kInternal, "etcd-sharding-proxy: empty guarded response"), {});
        }
      });
}

void KvService::HoldThenRetry(const CallContextPtr& ctx, std::int64_t version, Status fenced, UnaryDone done,
                              std::function<void(UnaryDone)> retry) {
  // Held until the map naming the new owner arrives, within the client's deadline and at most
  // kMaxHold: the request was refused by the source, not applied, so sending it again is safe.
  const auto now = Clock::now();
  auto deadline = now + kMaxHold;
  if (ctx->deadline() && *ctx->deadline() < deadline) deadline = *ctx->deadline();
  topology_.AwaitNewer(version, deadline,
                       [stats = options_.hold_stats, now, fenced = std::move(fenced), done = std::move(done),
                        retry = std::move(retry)](bool arrived) mutable {
                         if (stats) stats->Record(Clock::now() - now);
                         if (!arrived) return done(std::move(fenced), {});
                         retry(std::move(done));
                       });
}

void KvService::SpanningRange(const CallContextPtr& ctx, const Topology& topology,
                              const RangeRequest& request, const std::vector<RangePiece>& pieces,
                              UnaryDone done) {
  auto shared_request = std::make_shared<const RangeRequest>(request);
  auto shards = std::make_shared<std::vector<std::shared_ptr<ShardTransport>>>();
  for (const auto& piece : pieces) shards->push_back(topology.shards[piece.shard]);
  // etcd sorts by value before it drops values for keys_only; the merge needs them too.
  const bool strip_values_after_merge =
      request.keys_only() && request.sort_target() == RangeRequest::VALUE && !request.count_only();
  ScatterGather<RangeResponse>(
      ctx, pieces.size(), /*cancel_on_error=*/true,
      [&](std::size_t i, const CallContextPtr& child, PieceDone<RangeResponse> piece_done) {
        RangeRequest clipped = ShardRangeRequest(*shared_request);
        if (strip_values_after_merge) clipped.set_keys_only(false);
        clipped.set_key(pieces[i].key);
        clipped.set_range_end(pieces[i].range_end);
        if (!clipped.serializable() && move::MustGuard(topology, pieces[i].shard, clipped.key(), clipped.range_end())) {
          RequestOp op;
          *op.mutable_request_range() = std::move(clipped);
          return move::SendGuarded(topology, child, std::move(op), kRead,
                                   [piece_done = std::move(piece_done)](Status status, ResponseOp response) {
                                     piece_done(std::move(status), std::move(*response.mutable_response_range()));
                                   });
        }
        CallShard<RangeResponse>(*(*shards)[i], methods::kRange, child, clipped, kRead, std::move(piece_done));
      },
      [shared_request, strip_values_after_merge, done = std::move(done)](Status status,
                                                                         std::vector<RangeResponse> parts) {
        if (!status.ok()) return done(std::move(status), {});
        RangeResponse merged = MergeRangeResponses(*shared_request, std::move(parts));
        if (strip_values_after_merge) {
          for (auto& kv : *merged.mutable_kvs()) kv.clear_value();
        }
        done(Status::Ok(), merged.SerializeAsString());
      });
}

void KvService::Put(CallContextPtr ctx, std::string bytes, UnaryDone done) {
  if (!fence::SendAllowed()) return done(FencedProxy(), {});
  // Read from the wire, not parsed: the value is not copied just to be forwarded as it came.
  const std::optional<PutFields> request = ScanPutRequest(bytes);
  if (!request) return done(Unparsable(), {});
  if (Status s = CheckPutFields(*request); !s.ok()) return done(std::move(s), {});
  const auto topology = topology_.Get();
  const std::size_t shard = topology->map.ShardForKey(request->key);
  if (topology->moving && move::MustGuard(*topology, shard, request->key, {})) {
    RequestOp op;
    if (!op.mutable_request_put()->ParseFromString(bytes)) return done(Unparsable(), {});
    return SendGuarded(ctx, topology, std::move(op), kWrite, std::move(bytes), &KvService::Put, std::move(done));
  }
  std::vector<int64_t> leases;
  if (request->lease != 0) leases.push_back(request->lease);
  ForwardWithLeases(topology, shard, methods::kPut, std::move(ctx), std::move(bytes), std::move(leases), kWrite,
                    std::move(done));
}

void KvService::ForwardWithLeases(const std::shared_ptr<const Topology>& topology, std::size_t shard_index,
                                  const char* method, CallContextPtr ctx, std::string bytes,
                                  std::vector<int64_t> leases, UnaryOptions options, UnaryDone done) {
  const auto shard = topology->shards[shard_index];
  if (leases.empty() || !lease_hook_) {
    shard->Unary(method, ctx, std::move(bytes), options, std::move(done));
    return;
  }
  // The lease may have been granted while this shard was down: on "lease not found", let the
  // lease layer grant it there, then send the request once more.
  shard->Unary(method, ctx, bytes, options,
               [hook = lease_hook_, shard, shard_index, method, ctx, bytes, leases = std::move(leases), options,
                done = std::move(done)](Status status, std::string response) mutable {
                 if (status.message() != etcd_errors::LeaseNotFound().message()) {
                   return done(std::move(status), std::move(response));
                 }
                 hook->OnLeaseNotFound(shard_index, std::move(leases),
                                       [shard, method, ctx, bytes = std::move(bytes), options, status,
                                        done = std::move(done)](bool granted) mutable {
                                         if (!granted) return done(std::move(status), {});
                                         shard->Unary(method, ctx, std::move(bytes), options, std::move(done));
                                       });
               });
}

void KvService::DeleteRange(CallContextPtr ctx, std::string bytes, UnaryDone done) {
  if (!fence::SendAllowed()) return done(FencedProxy(), {});
  const std::optional<KeyRangeFields> scanned = ScanDeleteRangeRequest(bytes);
  if (!scanned) return done(Unparsable(), {});
  if (Status s = CheckDeleteFields(*scanned); !s.ok()) return done(std::move(s), {});
  const auto topology = topology_.Get();
  if (const auto shard = topology->map.SingleShard(scanned->key, scanned->range_end)) {
    if (topology->moving && move::MustGuard(*topology, *shard, scanned->key, scanned->range_end)) {
      RequestOp op;
      if (!op.mutable_request_delete_range()->ParseFromString(bytes)) return done(Unparsable(), {});
      return SendGuarded(ctx, topology, std::move(op), kWrite, std::move(bytes), &KvService::DeleteRange,
                         std::move(done));
    }
    topology->shards[*shard]->Unary(methods::kDeleteRange, ctx, std::move(bytes), kWrite, std::move(done));
    return;
  }
  DeleteRangeRequest request;
  if (!request.ParseFromString(bytes)) return done(Unparsable(), {});
  SpanningDelete(ctx, topology, request, topology->map.Split(request.key(), request.range_end()), std::move(done));
}

void KvService::SpanningDelete(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology,
                               const DeleteRangeRequest& request, const std::vector<RangePiece>& pieces,
                               UnaryDone done) {
  auto shards = std::make_shared<std::vector<std::shared_ptr<ShardTransport>>>();
  auto clipped = std::make_shared<std::vector<DeleteRangeRequest>>();
  for (const auto& piece : pieces) {
    shards->push_back(topology->shards[piece.shard]);
    clipped->push_back(request);
    clipped->back().set_key(piece.key);
    clipped->back().set_range_end(piece.range_end);
  }
  auto piece_shards = std::make_shared<std::vector<std::size_t>>();
  for (const auto& piece : pieces) piece_shards->push_back(piece.shard);
  if (!CarriesIdentity(ctx->metadata())) return DeletePieces(ctx, topology, piece_shards, clipped, std::move(done));
  // With auth in use a piece may be denied on one shard only: ask every shard first, so that a
  // denied request deletes nothing anywhere, as on one etcd. Costs one round trip, auth only.
  CheckDeletePermitted(ctx, *shards, *clipped,
                       [this, ctx, topology, piece_shards, clipped, done = std::move(done)](Status status) mutable {
                         if (!status.ok()) return done(std::move(status), {});
                         DeletePieces(ctx, topology, piece_shards, clipped, std::move(done));
                       });
}

void KvService::DeletePiece(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology,
                            std::size_t shard, const DeleteRangeRequest& piece,
                            std::function<void(Status, DeleteRangeResponse)> done) {
  if (!move::MustGuard(*topology, shard, piece.key(), piece.range_end())) {
    return CallShard<DeleteRangeResponse>(*topology->shards[shard], methods::kDeleteRange, ctx, piece, kWrite,
                                          std::move(done));
  }
  // A piece in a moving range that the source refused deleted nothing there: once the new map
  // is in, it is routed (and split, if it must be) again on its own, the other pieces' answers
  // kept.
  RequestOp op;
  *op.mutable_request_delete_range() = piece;
  move::SendGuarded(*topology, ctx, std::move(op), kWrite,
                    [this, ctx, piece, version = topology->map_version, done = std::move(done)](
                        Status status, ResponseOp response) mutable {
                      if (!move::IsFenced(status)) {
                        return done(std::move(status), std::move(*response.mutable_response_delete_range()));
                      }
                      auto parse = [done](Status s, std::string bytes) {
                        DeleteRangeResponse answer;
                        if (s.ok() && !answer.ParseFromString(bytes)) {
                          s = Status(StatusCode::kInternal, "cannot parse the shard's response");
                        }
                        done(std::move(s), std::move(answer));
                      };
                      HoldThenRetry(ctx, version, std::move(status), std::move(parse),
                                    [this, ctx, bytes = piece.SerializeAsString()](UnaryDone retry_done) mutable {
                                      DeleteRange(ctx, std::move(bytes), std::move(retry_done));
                                    });
                    });
}

void KvService::DeletePieces(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology,
                             const std::shared_ptr<std::vector<std::size_t>>& shards,
                             const std::shared_ptr<std::vector<DeleteRangeRequest>>& clipped, UnaryDone done) {
  // Every piece runs to completion even if another fails: a delete that reached a shard cannot
  // be taken back, so the client must learn of the failure rather than have it hidden.
  ScatterGather<DeleteRangeResponse>(
      ctx, clipped->size(), /*cancel_on_error=*/false,
      [&](std::size_t i, const CallContextPtr& child, PieceDone<DeleteRangeResponse> piece_done) {
        DeletePiece(child, topology, (*shards)[i], (*clipped)[i], std::move(piece_done));
      },
      [done = std::move(done)](Status status, std::vector<DeleteRangeResponse> parts) {
        if (!status.ok()) return done(std::move(status), {});
        DeleteRangeResponse merged;
        std::vector<const etcdserverpb::ResponseHeader*> headers;
        for (auto& part : parts) {
          headers.push_back(&part.header());
          merged.set_deleted(merged.deleted() + part.deleted());
          for (auto& kv : *part.mutable_prev_kvs()) *merged.add_prev_kvs() = std::move(kv);
        }
        *merged.mutable_header() = PickSpanningHeader(headers);
        done(Status::Ok(), merged.SerializeAsString());
      });
}

void KvService::Txn(CallContextPtr ctx, std::string bytes, UnaryDone done) {
  if (!fence::SendAllowed()) return done(FencedProxy(), {});
  TxnRequest request;
  if (!request.ParseFromString(bytes)) return done(Unparsable(), {});
  if (Status s = CheckTxnRequest(request, options_.max_txn_ops); !s.ok()) return done(std::move(s), {});
  const auto topology = topology_.Get();
  auto route = RouteTxn(topology->map, request);
  if (auto* error = std::get_if<Status>(&route)) return done(std::move(*error), {});
  const UnaryOptions options = IsReadOnly(request) ? kRead : kWrite;
  const std::size_t shard = std::get<std::size_t>(route);
  if (topology->moving && move::TxnMustGuard(*topology, shard, request)) {
    RequestOp op;
    *op.mutable_request_txn() = std::move(request);
    return SendGuarded(ctx, topology, std::move(op), options, std::move(bytes), &KvService::Txn, std::move(done));
  }
  std::vector<int64_t> leases;
  CollectLeases(request, leases);
  ForwardWithLeases(topology, std::get<std::size_t>(route), methods::kTxn, std::move(ctx), std::move(bytes),
                    std::move(leases), options, std::move(done));
}

void KvService::Compact(CallContextPtr ctx, std::string bytes, UnaryDone done) {
  CompactionRequest request;
  if (!request.ParseFromString(bytes)) return done(Unparsable(), {});
  const auto topology = topology_.Get();
  if (topology->map.size() == 1) {
    // One shard is one etcd: the revision came from it.
    topology->shards[0]->Unary(methods::kCompact, ctx, std::move(bytes), kWrite, std::move(done));
    return;
  }
  CompactShards(ctx, topology, request, std::move(done));
}

void KvService::CompactShards(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology,
                              const CompactionRequest& request, UnaryDone done) {
  // Every shard that has reached the revision is compacted there (at most at what the retention
  // allows); the others are left alone. docs/semantics.md, Compact.
  const auto now = RevisionHistory::SteadyClock::now();
  const bool retention_set = options_.revision_history && options_.revision_history->retention().count() > 0;
  auto parts = std::make_shared<std::vector<ShardCompaction>>(topology->map.size());
  for (std::size_t i = 0; i < parts->size(); ++i) {
    const std::string& name = topology->map.shard(i).name;
    auto& part = (*parts)[i];
    part.description = topology->map.Describe(i);
    part.target = CompactTarget(request.revision(), retention_set,
                                retention_set ? options_.revision_history->Limit(name, now) : std::nullopt);
  }
  ScatterGather<int>(
      ctx, parts->size(), /*cancel_on_error=*/false,
      [&](std::size_t i, const CallContextPtr& child, PieceDone<int> piece_done) {
        const auto& part = (*parts)[i];
        const bool held = !part.target;
        CompactionRequest clipped = request;  // `physical` as the client asked, on every shard
        clipped.set_revision(part.target.value_or(0));
        auto shard = topology->shards[i];
        auto finish = std::make_shared<PieceDone<int>>(std::move(piece_done));
        auto compact = [shard, child, clipped, parts, i, finish]() {
          CallShard<etcdserverpb::CompactionResponse>(
              *shard, methods::kCompact, child, clipped, kWrite,
              [parts, i, finish](Status status, etcdserverpb::CompactionResponse response) {
                (*parts)[i].status = std::move(status);
                (*parts)[i].response = std::move(response);
                (*finish)(Status::Ok(), 0);  // every shard's own answer is judged below
              });
        };
        if (!held && *part.target == request.revision()) return compact();
        // Held below R (or entirely) by the retention: compacted only if the shard has reached R
        // at all, as etcd would refuse a Compact at R itself otherwise; a linearizable read tells.
        RangeRequest probe;
        probe.set_key(std::string(kRangeEndAll));
        probe.set_count_only(true);
        CallShard<RangeResponse>(*shard, methods::kRange, child, probe, kRead,
                                 [parts, i, finish, held, requested = request.revision(), compact](
                                     Status status, RangeResponse answer) {
                                   if (status.ok() && answer.header().revision() < requested) {
                                     status = etcd_errors::FutureRev();
                                   }
                                   if (status.ok() && !held) return compact();
                                   (*parts)[i].status = std::move(status);
                                   (*finish)(Status::Ok(), 0);
                                 });
      },
      [parts, requested = request.revision(), topology, done = std::move(done)](Status, std::vector<int>) {
        auto outcome = CombineCompactions(requested, *parts);
        if (auto* status = std::get_if<Status>(&outcome)) return done(std::move(*status), {});
        done(Status::Ok(), std::get<etcdserverpb::CompactionResponse>(outcome).SerializeAsString());
      });
}

}  // namespace esp
