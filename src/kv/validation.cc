#include "kv/validation.h"

#include <set>
#include <string>
#include <vector>

#include "common/etcd_errors.h"
#include "kv/request_scan.h"

namespace esp {
namespace {

using etcdserverpb::RequestOp;

// etcd compares txn write intervals with "" meaning +infinity and every other bound taken
// literally (so a delete ending at "\0" covers nothing); mirror that exactly.
int AffineCompare(const std::string& a, const std::string& b) {
  if (a.empty()) return b.empty() ? 0 : 1;
  if (b.empty()) return -1;
  return a.compare(b) < 0 ? -1 : (a == b ? 0 : 1);
}

struct Interval {
  std::string begin;
  std::string end;
};

bool Overlaps(const Interval& a, const Interval& b) {
  return AffineCompare(a.begin, b.end) < 0 && AffineCompare(b.begin, a.end) < 0;
}

Interval Point(const std::string& key) { return {key, key + std::string(1, '\0')}; }

bool Intersects(const std::vector<Interval>& dels, const std::string& key) {
  const Interval p = Point(key);
  for (const auto& d : dels) {
    if (Overlaps(d, p)) return true;
  }
  return false;
}

struct Writes {
  std::set<std::string> puts;
  std::vector<Interval> dels;
};

// etcd's checkIntervals: within one branch (nested txns included) a key may be put once and
// must not be both put and deleted; the same key in the then and else branch of a nested txn
// is allowed.
Status CheckIntervals(const google::protobuf::RepeatedPtrField<RequestOp>& reqs, Writes& out) {
  for (const auto& req : reqs) {
    if (!req.has_request_delete_range()) continue;
    const auto& d = req.request_delete_range();
    out.dels.push_back(d.range_end().empty() ? Point(d.key()) : Interval{d.key(), d.range_end()});
  }
  for (const auto& req : reqs) {
    if (!req.has_request_txn()) continue;
    Writes then_w;
    Writes else_w;
    if (Status s = CheckIntervals(req.request_txn().success(), then_w); !s.ok()) return s;
    if (Status s = CheckIntervals(req.request_txn().failure(), else_w); !s.ok()) return s;
    for (const auto& k : then_w.puts) {
      if (out.puts.contains(k) || Intersects(out.dels, k)) return etcd_errors::DuplicateKey();
      out.puts.insert(k);
    }
    for (const auto& k : else_w.puts) {
      if (out.puts.contains(k) && !then_w.puts.contains(k)) return etcd_errors::DuplicateKey();
      if (Intersects(out.dels, k)) return etcd_errors::DuplicateKey();
      out.puts.insert(k);
    }
    out.dels.insert(out.dels.end(), then_w.dels.begin(), then_w.dels.end());
    out.dels.insert(out.dels.end(), else_w.dels.begin(), else_w.dels.end());
  }
  for (const auto& req : reqs) {
    if (!req.has_request_put()) continue;
    const auto& k = req.request_put().key();
    if (out.puts.contains(k) || Intersects(out.dels, k)) return etcd_errors::DuplicateKey();
    out.puts.insert(k);
  }
  return Status::Ok();
}

Status CheckTxnShape(const etcdserverpb::TxnRequest& r, int max_txn_ops);

Status CheckRequestOp(const RequestOp& op, int max_txn_ops) {
  switch (op.request_case()) {
    case RequestOp::kRequestRange:
      return CheckRangeRequest(op.request_range());
    case RequestOp::kRequestPut:
      return CheckPutRequest(op.request_put());
    case RequestOp::kRequestDeleteRange:
      return CheckDeleteRequest(op.request_delete_range());
    case RequestOp::kRequestTxn:
      return CheckTxnShape(op.request_txn(), max_txn_ops);
    default:
      return etcd_errors::KeyNotFound();
  }
}

Status CheckTxnShape(const etcdserverpb::TxnRequest& r, int max_txn_ops) {
  const int ops = std::max({r.compare_size(), r.success_size(), r.failure_size()});
  if (ops > max_txn_ops) return etcd_errors::TooManyOps();
  for (const auto& c : r.compare()) {
    if (c.key().empty()) return etcd_errors::EmptyKey();
  }
  // Nested txns are checked against what is left of the budget, as etcd does.
  for (const auto& op : r.success()) {
    if (Status s = CheckRequestOp(op, max_txn_ops - ops); !s.ok()) return s;
  }
  for (const auto& op : r.failure()) {
    if (Status s = CheckRequestOp(op, max_txn_ops - ops); !s.ok()) return s;
  }
  return Status::Ok();
}

}  // namespace

Status CheckRangeRequest(const etcdserverpb::RangeRequest& r) {
  return CheckRangeFields({.key = r.key(),
                           .range_end = r.range_end(),
                           .sort_order = r.sort_order(),
                           .sort_target = r.sort_target()});
}

Status CheckPutRequest(const etcdserverpb::PutRequest& r) {
  return CheckPutFields({.key = r.key(),
                         .has_value = !r.value().empty(),
                         .lease = r.lease(),
                         .prev_kv = r.prev_kv(),
                         .ignore_value = r.ignore_value(),
                         .ignore_lease = r.ignore_lease()});
}

Status CheckDeleteRequest(const etcdserverpb::DeleteRangeRequest& r) {
  return CheckDeleteFields({.key = r.key(), .range_end = r.range_end()});
}

Status CheckTxnRequest(const etcdserverpb::TxnRequest& r, int max_txn_ops) {
  if (Status s = CheckTxnShape(r, max_txn_ops); !s.ok()) return s;
  Writes success;
  if (Status s = CheckIntervals(r.success(), success); !s.ok()) return s;
  Writes failure;
  return CheckIntervals(r.failure(), failure);
}

}  // namespace esp
