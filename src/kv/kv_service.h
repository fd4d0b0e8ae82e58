#pragma once
// The KV service across shards: Range, Put, DeleteRange, Txn and Compact.
#include <memory>

#include "etcdserverpb/rpc.pb.h"
#include "kv/lease_hook.h"
#include "kv/revision_history.h"
#include "move/hold_stats.h"
#include "transport/router.h"
#include "upstream/topology.h"

namespace esp {

struct KvOptions {
  int max_txn_ops = 128;  // etcd --max-txn-ops
  // Each shard's revision over time (fed by the health probe) and the history a Compact across
  // shards keeps on every shard (--compaction-retention); null: no retention.
  std::shared_ptr<const RevisionHistory> revision_history;
  // Where the time requests spent held during a range move's cut-over is counted (optional).
  std::shared_ptr<move::HoldStats> hold_stats;
};

class KvService {
 public:
  KvService(const TopologyHolder& topology, KvOptions options);
  // Lets a Put or Txn whose lease the shard does not know ask the lease layer (optional).
  void SetLeaseHook(std::shared_ptr<LeaseHook> hook) { lease_hook_ = std::move(hook); }
  void Register(Router& router);

 private:
  void Range(CallContextPtr ctx, std::string bytes, UnaryDone done);
  void Put(CallContextPtr ctx, std::string bytes, UnaryDone done);
  void DeleteRange(CallContextPtr ctx, std::string bytes, UnaryDone done);
  void Txn(CallContextPtr ctx, std::string bytes, UnaryDone done);
  void Compact(CallContextPtr ctx, std::string bytes, UnaryDone done);

  // Forwards to one shard; on "requested lease not found" asks the lease hook and, if it granted
  // one of `leases` there, sends the request once more.
  void ForwardWithLeases(const std::shared_ptr<const Topology>& topology, std::size_t shard, const char* method,
                         CallContextPtr ctx, std::string bytes, std::vector<int64_t> leases, UnaryOptions options,
                         UnaryDone done);
  void CompactShards(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology,
                     const etcdserverpb::CompactionRequest& request, UnaryDone done);
  void SpanningRange(const CallContextPtr& ctx, const Topology& topology,
                     const etcdserverpb::RangeRequest& request,
                     const std::vector<RangePiece>& pieces, UnaryDone done);
  void SpanningDelete(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology,
                      const etcdserverpb::DeleteRangeRequest& request,
                      const std::vector<RangePiece>& pieces, UnaryDone done);
  // Sends clipped[i] to shard shards[i] and merges the answers.
  void DeletePieces(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology,
                    const std::shared_ptr<std::vector<std::size_t>>& shards,
                    const std::shared_ptr<std::vector<etcdserverpb::DeleteRangeRequest>>& clipped, UnaryDone done);
  void DeletePiece(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology, std::size_t shard,
                   const etcdserverpb::DeleteRangeRequest& piece,
                   std::function<void(Status, etcdserverpb::DeleteRangeResponse)> done);

  // Requests that touch a moving range on its source (move/guarded_call.h).
  using Handler = void (KvService::*)(CallContextPtr, std::string, UnaryDone);
  void GuardedRange(const CallContextPtr& ctx, std::string bytes, const std::shared_ptr<const Topology>& topology,
                    UnaryDone done);
  // Sends `op` guarded; if the source refused it, holds the request and runs `again` on its
  // `bytes` under the next map.
  void SendGuarded(const CallContextPtr& ctx, const std::shared_ptr<const Topology>& topology,
                   etcdserverpb::RequestOp op, UnaryOptions options, std::string bytes, Handler again, UnaryDone done);
  void HoldThenRetry(const CallContextPtr& ctx, std::int64_t version, Status fenced, UnaryDone done,
                     std::function<void(UnaryDone)> retry);
  static constexpr std::chrono::seconds kMaxHold{10};

  const TopologyHolder& topology_;
  KvOptions options_;
  std::shared_ptr<LeaseHook> lease_hook_;
};

}  // namespace esp
