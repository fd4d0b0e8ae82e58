// The Range merge against a simple model: one store holding every key, answering as etcd does.
#include "kv/range_merge.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "shard/shard_map.h"

namespace esp {
namespace {

using etcdserverpb::RangeRequest;
using etcdserverpb::RangeResponse;
using mvccpb::KeyValue;

// What etcd's apply layer does for one store (`kvs` in key order): filter, sort (ties in
// arbitrary order), limit. Without a sort order or a filter, the store reads only the first
// limit+1 keys, and a sort target other than KEY sorts only those.
RangeResponse EtcdModel(const RangeRequest& req, std::vector<KeyValue> kvs, std::mt19937& rng) {
  RangeResponse resp;
  resp.set_count(static_cast<int64_t>(kvs.size()));
  const bool any_filter = req.max_mod_revision() || req.min_mod_revision() || req.max_create_revision() ||
                          req.min_create_revision();
  if (req.limit() > 0 && req.sort_order() == RangeRequest::NONE && !any_filter &&
      static_cast<int64_t>(kvs.size()) > req.limit() + 1) {
    kvs.resize(static_cast<std::size_t>(req.limit() + 1));
  }
  std::erase_if(kvs, [&](const KeyValue& kv) {
    return (req.max_mod_revision() && kv.mod_revision() > req.max_mod_revision()) ||
           (req.min_mod_revision() && kv.mod_revision() < req.min_mod_revision()) ||
           (req.max_create_revision() && kv.create_revision() > req.max_create_revision()) ||
           (req.min_create_revision() && kv.create_revision() < req.min_create_revision());
  });
  auto order = req.sort_order();
  if (req.sort_target() != RangeRequest::KEY && order == RangeRequest::NONE) order = RangeRequest::ASCEND;
  if (order != RangeRequest::NONE) {
    std::shuffle(kvs.begin(), kvs.end(), rng);  // etcd's sort is not stable
    auto value = [&](const KeyValue& kv) -> std::string {
      char buf[32];
      switch (req.sort_target()) {
        case RangeRequest::VERSION: std::snprintf(buf, sizeof buf, "%020lld", (long long)kv.version()); return buf;
        case RangeRequest::CREATE: std::snprintf(buf, sizeof buf, "%020lld", (long long)kv.create_revision()); return buf;
        case RangeRequest::MOD: std::snprintf(buf, sizeof buf, "%020lld", (long long)kv.mod_revision()); return buf;
        case RangeRequest::VALUE: return kv.value();
        default: return kv.key();
      }
    };
    std::sort(kvs.begin(), kvs.end(), [&](const KeyValue& a, const KeyValue& b) {
      return order == RangeRequest::ASCEND ? value(a) < value(b) : value(b) < value(a);
    });
  }
  if (req.count_only()) kvs.clear();  // the store hands back no pairs, so `more` stays false
  if (req.limit() > 0 && static_cast<int64_t>(kvs.size()) > req.limit()) {
    kvs.resize(static_cast<std::size_t>(req.limit()));
    resp.set_more(true);
  }
  if (!req.count_only()) {
    for (auto& kv : kvs) {
      if (req.keys_only()) kv.clear_value();
      *resp.add_kvs() = kv;
    }
  }
  return resp;
}

int64_t Target(const RangeRequest& req, const KeyValue& kv) {
  switch (req.sort_target()) {
    case RangeRequest::VERSION: return kv.version();
    case RangeRequest::CREATE: return kv.create_revision();
    case RangeRequest::MOD: return kv.mod_revision();
    default: return 0;
  }
}

TEST(RangeMergeTest, MatchesASingleStoreOnRandomData) {
  const ShardMap map({{"s0", "", "g"}, {"s1", "g", "p"}, {"s2", "p", ""}});
  std::mt19937 rng(42);
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<KeyValue> all;
    const int n = static_cast<int>(rng() % 30);
    std::set<std::string> keys;
    while (static_cast<int>(keys.size()) < n) keys.insert(std::string(1, static_cast<char>('a' + rng() % 26)) + std::to_string(rng() % 10));
    for (const auto& k : keys) {
      KeyValue kv;
      kv.set_key(k);
      kv.set_value(std::string(1, static_cast<char>('a' + rng() % 5)));
      kv.set_version(1 + static_cast<int64_t>(rng() % 4));
      kv.set_create_revision(1 + static_cast<int64_t>(rng() % 50));
      kv.set_mod_revision(kv.create_revision() + static_cast<int64_t>(rng() % 20));
      all.push_back(kv);
    }
    RangeRequest req;
    req.set_key("a");
    req.set_range_end(std::string(1, '\0'));
    req.set_limit(rng() % 3 == 0 ? 0 : static_cast<int64_t>(rng() % 12));
    req.set_sort_order(static_cast<RangeRequest::SortOrder>(rng() % 3));
    req.set_sort_target(static_cast<RangeRequest::SortTarget>(rng() % 5));
    req.set_keys_only(rng() % 4 == 0);
    req.set_count_only(rng() % 8 == 0);
    if (rng() % 4 == 0) req.set_min_mod_revision(static_cast<int64_t>(rng() % 40));
    if (rng() % 4 == 0) req.set_max_create_revision(static_cast<int64_t>(rng() % 50));

    std::vector<RangeResponse> parts;
    for (std::size_t s = 0; s < map.size(); ++s) {
      std::vector<KeyValue> mine;
      for (const auto& kv : all) {
        if (map.ShardForKey(kv.key()) == s) mine.push_back(kv);
      }
      parts.push_back(EtcdModel(ShardRangeRequest(req), mine, rng));
      parts.back().mutable_header()->set_revision(static_cast<int64_t>(100 + s * 7 % 3));
    }
    const RangeResponse merged = MergeRangeResponses(req, parts);
    const RangeResponse expected = EtcdModel(req, all, rng);

    SCOPED_TRACE(req.ShortDebugString());
    EXPECT_EQ(merged.count(), expected.count());
    EXPECT_EQ(merged.more(), expected.more());
    ASSERT_EQ(merged.kvs_size(), expected.kvs_size());
    EXPECT_EQ(merged.header().revision(), 100);  // the lowest shard's: docs/semantics.md
    for (int i = 0; i < merged.kvs_size(); ++i) {
      const auto& got = merged.kvs(i);
      const auto& want = expected.kvs(i);
      switch (req.sort_target()) {
        case RangeRequest::KEY:
          EXPECT_EQ(got.SerializeAsString(), want.SerializeAsString()) << "at " << i;
          break;
        case RangeRequest::VALUE:
          // Equal sort values may come in any order (as in etcd); the sequence of values may not.
          EXPECT_EQ(got.value(), want.value()) << "at " << i;
          break;
        default:
          EXPECT_EQ(Target(req, got), Target(req, want)) << "at " << i;
      }
      if (req.keys_only()) EXPECT_TRUE(got.value().empty());
    }
  }
}

TEST(RangeMergeTest, DescendingKeysComeFromTheLastShardFirst) {
  RangeRequest req;
  req.set_sort_order(RangeRequest::DESCEND);
  std::vector<RangeResponse> parts(2);
  parts[0].add_kvs()->set_key("b");
  parts[0].add_kvs()->set_key("a");
  parts[1].add_kvs()->set_key("z");
  parts[1].add_kvs()->set_key("y");
  const auto merged = MergeRangeResponses(req, parts);
  ASSERT_EQ(merged.kvs_size(), 4);
  EXPECT_EQ(merged.kvs(0).key(), "z");
  EXPECT_EQ(merged.kvs(3).key(), "a");
}

TEST(RangeMergeTest, MoreIsSetWhenAnyShardHadMore) {
  RangeRequest req;
  req.set_limit(5);
  std::vector<RangeResponse> parts(2);
  parts[0].add_kvs()->set_key("a");
  parts[0].set_more(true);
  parts[0].set_count(9);
  parts[1].set_count(0);
  const auto merged = MergeRangeResponses(req, parts);
  EXPECT_TRUE(merged.more());
  EXPECT_EQ(merged.count(), 9);
}

}  // namespace
}  // namespace esp
