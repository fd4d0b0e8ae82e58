#include "kv/txn_routing.h"

#include <optional>

#include "config/config.h"

namespace esp {
namespace {

struct Touch {
  std::size_t shard;
  std::string key;
};

class TxnScanner {
 public:
  explicit TxnScanner(const ShardMap& map) : map_(map) {}

  // Returns false as soon as a second shard shows up.
  bool Scan(const etcdserverpb::TxnRequest& txn) {
    for (const auto& c : txn.compare()) {
      if (!Visit(c.key(), c.range_end())) return false;
    }
    for (const auto* branch : {&txn.success(), &txn.failure()}) {
      for (const auto& op : *branch) {
        if (!VisitOp(op)) return false;
      }
    }
    return true;
  }

  const std::optional<Touch>& first() const { return first_; }
  const std::optional<Touch>& conflict() const { return conflict_; }

 private:
  bool VisitOp(const etcdserverpb::RequestOp& op) {
    switch (op.request_case()) {
      case etcdserverpb::RequestOp::kRequestRange:
        return Visit(op.request_range().key(), op.request_range().range_end());
      case etcdserverpb::RequestOp::kRequestPut:
        return Visit(op.request_put().key(), {});
      case etcdserverpb::RequestOp::kRequestDeleteRange:
        return Visit(op.request_delete_range().key(), op.request_delete_range().range_end());
      case etcdserverpb::RequestOp::kRequestTxn:
        return Scan(op.request_txn());
      default:
        return true;
    }
  }

  bool Visit(const std::string& key, const std::string& range_end) {
    // Most keys and ranges lie in one shard: only a spanning one is split into pieces.
    if (const auto shard = map_.SingleShard(key, range_end)) return Touched(*shard, key);
    for (const auto& piece : map_.Split(key, range_end)) {
      if (!Touched(piece.shard, piece.key)) return false;
    }
    return true;
  }

  // Records the first shard touched; false (with the conflicting key kept) at a second one.
  bool Touched(std::size_t shard, const std::string& key) {
    if (!first_) {
      first_ = Touch{shard, key};
    } else if (shard != first_->shard) {
      conflict_ = Touch{shard, key};
      return false;
    }
    return true;
  }

  const ShardMap& map_;
  std::optional<Touch> first_;
  std::optional<Touch> conflict_;
};

}  // namespace

std::variant<std::size_t, Status> RouteTxn(const ShardMap& map, const etcdserverpb::TxnRequest& txn) {
  TxnScanner scanner(map);
  if (scanner.Scan(txn)) return scanner.first() ? scanner.first()->shard : std::size_t{0};
  const Touch& a = *scanner.first();
  const Touch& b = *scanner.conflict();
  return Status(StatusCode::kFailedPrecondition,
                "etcd-sharding-proxy: a transaction must stay within one shard, but key \"" +
                    PrintableKey(a.key) + "\" is in " + map.Describe(a.shard) + " and key \"" +
                    PrintableKey(b.key) + "\" is in " + map.Describe(b.shard));
}

}  // namespace esp
