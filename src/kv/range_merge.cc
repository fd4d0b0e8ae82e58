#include "kv/range_merge.h"

#include <algorithm>

namespace esp {
namespace {

using etcdserverpb::RangeRequest;
using mvccpb::KeyValue;

// Orders by the sort target; equal targets fall back to ascending key so that the merged answer
// is deterministic (etcd's own order among equal targets is unspecified).
bool TargetLess(RangeRequest::SortTarget target, const KeyValue& a, const KeyValue& b) {
  switch (target) {
    case RangeRequest::VERSION:
      return a.version() < b.version();
    case RangeRequest::CREATE:
      return a.create_revision() < b.create_revision();
    case RangeRequest::MOD:
      return a.mod_revision() < b.mod_revision();
    case RangeRequest::VALUE:
      return a.value() < b.value();
    default:
      return a.key() < b.key();
  }
}

}  // namespace

bool SortsOnlyTheFirstKeys(const RangeRequest& request) {
  return request.limit() > 0 && request.sort_order() == RangeRequest::NONE &&
         request.sort_target() != RangeRequest::KEY && request.min_mod_revision() == 0 &&
         request.max_mod_revision() == 0 && request.min_create_revision() == 0 &&
         request.max_create_revision() == 0;
}

RangeRequest ShardRangeRequest(const RangeRequest& request) {
  RangeRequest out = request;
  if (SortsOnlyTheFirstKeys(request)) {
    out.set_sort_target(RangeRequest::KEY);
    out.set_limit(request.limit() + 1);
  }
  return out;
}

etcdserverpb::ResponseHeader PickSpanningHeader(const std::vector<const etcdserverpb::ResponseHeader*>& headers) {
  const etcdserverpb::ResponseHeader* best = nullptr;
  for (const auto* h : headers) {
    if (best == nullptr || h->revision() < best->revision()) best = h;
  }
  return best == nullptr ? etcdserverpb::ResponseHeader() : *best;
}

etcdserverpb::RangeResponse MergeRangeResponses(const RangeRequest& request,
                                                std::vector<etcdserverpb::RangeResponse> parts) {
  etcdserverpb::RangeResponse out;
  std::vector<const etcdserverpb::ResponseHeader*> headers;
  bool any_more = false;
  std::size_t total = 0;
  for (const auto& part : parts) {
    headers.push_back(&part.header());
    out.set_count(out.count() + part.count());
    any_more = any_more || part.more();
    total += static_cast<std::size_t>(part.kvs_size());
  }
  *out.mutable_header() = PickSpanningHeader(headers);

  const bool first_keys_only = SortsOnlyTheFirstKeys(request);
  if (first_keys_only) {
    // The shards answered in key order with up to limit+1 keys each: keep the first limit+1 of
    // all shards (more than limit means `more`), then sort and cut them below.
    std::size_t kept = 0;
    for (auto& part : parts) {
      auto* part_kvs = part.mutable_kvs();
      const auto room = static_cast<std::size_t>(request.limit() + 1) - kept;
      if (static_cast<std::size_t>(part_kvs->size()) > room) {
        part_kvs->DeleteSubrange(static_cast<int>(room), part_kvs->size() - static_cast<int>(room));
      }
      kept += static_cast<std::size_t>(part_kvs->size());
    }
    any_more = false;  // `more` is decided by the cut to limit below
    total = kept;
  }

  const auto target = request.sort_target();
  auto order = request.sort_order();
  if (target != RangeRequest::KEY && order == RangeRequest::NONE) order = RangeRequest::ASCEND;
  const bool descending = order == RangeRequest::DESCEND;

  auto* kvs = out.mutable_kvs();
  kvs->Reserve(static_cast<int>(total));
  if (target == RangeRequest::KEY) {
    // Shards hold disjoint, ordered key ranges: concatenation is the merge.
    if (descending) std::reverse(parts.begin(), parts.end());
    for (auto& part : parts) {
      for (auto& kv : *part.mutable_kvs()) *kvs->Add() = std::move(kv);
    }
  } else {
    std::vector<KeyValue> all;
    all.reserve(total);
    for (auto& part : parts) {
      for (auto& kv : *part.mutable_kvs()) all.push_back(std::move(kv));
    }
    std::stable_sort(all.begin(), all.end(), [&](const KeyValue& a, const KeyValue& b) {
      if (TargetLess(target, a, b)) return !descending;
      if (TargetLess(target, b, a)) return descending;
      return a.key() < b.key();
    });
    for (auto& kv : all) *kvs->Add() = std::move(kv);
  }

  const auto limit = request.limit();
  if (limit > 0 && kvs->size() > limit) {
    kvs->DeleteSubrange(static_cast<int>(limit), kvs->size() - static_cast<int>(limit));
    any_more = true;
  }
  out.set_more(any_more);
  return out;
}

}  // namespace esp
