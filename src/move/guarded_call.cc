#include "move/guarded_call.h"

#include "common/methods.h"
#include "upstream/typed_call.h"

namespace esp::move {
namespace {

using etcdserverpb::Compare;
using etcdserverpb::RequestOp;
using etcdserverpb::ResponseOp;
using etcdserverpb::TxnRequest;
using etcdserverpb::TxnResponse;

constexpr std::string_view kFencedPrefix = "etcd-sharding-proxy: the range ";

bool Touches(const Topology& t, std::size_t shard, const std::string& key, const std::string& range_end) {
  return MustGuard(t, shard, key, range_end);
}

bool OpTouches(const Topology& t, std::size_t shard, const RequestOp& op) {
  if (op.has_request_range()) return Touches(t, shard, op.request_range().key(), op.request_range().range_end());
  if (op.has_request_put()) return Touches(t, shard, op.request_put().key(), {});
  if (op.has_request_delete_range()) {
    return Touches(t, shard, op.request_delete_range().key(), op.request_delete_range().range_end());
  }
  if (op.has_request_txn()) return TxnMustGuard(t, shard, op.request_txn());
  return false;
}

// The txn's header goes into the inner response, where a client of the plain request finds it.
void CopyHeader(const etcdserverpb::ResponseHeader& header, ResponseOp& op) {
  if (op.has_response_range()) *op.mutable_response_range()->mutable_header() = header;
  if (op.has_response_put()) *op.mutable_response_put()->mutable_header() = header;
  if (op.has_response_delete_range()) *op.mutable_response_delete_range()->mutable_header() = header;
  if (op.has_response_txn()) *op.mutable_response_txn()->mutable_header() = header;
}

}  // namespace

bool TxnMustGuard(const Topology& topology, std::size_t shard, const TxnRequest& txn) {
  if (!topology.moving || topology.moving->source != shard) return false;
  for (const auto& c : txn.compare()) {
    if (Touches(topology, shard, c.key(), c.range_end())) return true;
  }
  for (const auto* branch : {&txn.success(), &txn.failure()}) {
    for (const auto& op : *branch) {
      if (OpTouches(topology, shard, op)) return true;
    }
  }
  return false;
}

Status Fenced(const MovingRange& moving) {
  return Status(StatusCode::kUnavailable, std::string(kFencedPrefix) + DescribeRange(moving.start, moving.end) +
                                              " has moved to shard \"" + moving.target +
                                              "\" and this proxy has not yet received that map; retry");
}

bool IsFenced(const Status& status) {
  return status.code() == StatusCode::kUnavailable && status.message().starts_with(kFencedPrefix);
}

void SendGuarded(const Topology& topology, const CallContextPtr& ctx, RequestOp op, UnaryOptions options, OpDone done) {
  const MovingRange& moving = *topology.moving;
  TxnRequest txn;
  Compare* fence = txn.add_compare();
  fence->set_key(moving.fence_key);
  fence->set_target(Compare::VERSION);
  fence->set_result(Compare::EQUAL);
  fence->set_version(0);
  *txn.add_success() = std::move(op);
  CallShard<TxnResponse>(*topology.shards[moving.source], methods::kTxn, ctx, txn, options,
                         [fenced = Fenced(moving), done = std::move(done)](Status status, TxnResponse response) {
                           if (!status.ok()) return done(std::move(status), {});
                           if (!response.succeeded() || response.responses_size() != 1) return done(fenced, {});
                           ResponseOp inner = std::move(*response.mutable_responses(0));
                           CopyHeader(response.header(), inner);
                           done(Status::Ok(), std::move(inner));
                         });
}

}  // namespace esp::move
