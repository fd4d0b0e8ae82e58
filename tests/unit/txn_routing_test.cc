#include "kv/txn_routing.h"

#include <gtest/gtest.h>

namespace esp {
namespace {

using etcdserverpb::TxnRequest;

ShardMap ThreeShards() { return ShardMap({{"s0", "", "i"}, {"s1", "i", "s"}, {"s2", "s", ""}}); }

TxnRequest PutTxn(std::vector<std::string> keys) {
  TxnRequest txn;
  for (const auto& k : keys) txn.add_success()->mutable_request_put()->set_key(k);
  return txn;
}

TEST(TxnRoutingTest, SingleShardTxnRoutesToIt) {
  auto txn = PutTxn({"j", "k"});
  auto* cmp = txn.add_compare();
  cmp->set_key("l");
  txn.add_failure()->mutable_request_range()->set_key("m");
  const auto route = RouteTxn(ThreeShards(), txn);
  ASSERT_TRUE(std::holds_alternative<std::size_t>(route));
  EXPECT_EQ(std::get<std::size_t>(route), 1u);
}

TEST(TxnRoutingTest, EmptyTxnGoesToTheFirstShard) {
  const auto route = RouteTxn(ThreeShards(), TxnRequest());
  ASSERT_TRUE(std::holds_alternative<std::size_t>(route));
  EXPECT_EQ(std::get<std::size_t>(route), 0u);
}

TEST(TxnRoutingTest, KeysOfTwoShardsAreRefusedNamingBoth) {
  const auto route = RouteTxn(ThreeShards(), PutTxn({"a", "z"}));
  ASSERT_TRUE(std::holds_alternative<Status>(route));
  const auto& status = std::get<Status>(route);
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("key \"a\" is in shard \"s0\""), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("key \"z\" is in shard \"s2\""), std::string::npos) << status.message();
}

TEST(TxnRoutingTest, ElseBranchCompareRangeAndNestedTxnAllCount) {
  auto txn = PutTxn({"a"});
  txn.add_failure()->mutable_request_delete_range()->set_key("t");
  EXPECT_TRUE(std::holds_alternative<Status>(RouteTxn(ThreeShards(), txn)));

  auto txn2 = PutTxn({"a"});
  auto* cmp = txn2.add_compare();
  cmp->set_key("b");
  cmp->set_range_end("k");  // reaches into shard 1
  EXPECT_TRUE(std::holds_alternative<Status>(RouteTxn(ThreeShards(), txn2)));

  auto txn3 = PutTxn({"a"});
  *txn3.add_success()->mutable_request_txn() = PutTxn({"x"});
  EXPECT_TRUE(std::holds_alternative<Status>(RouteTxn(ThreeShards(), txn3)));

  auto txn4 = PutTxn({"a"});
  *txn4.add_success()->mutable_request_txn() = PutTxn({"b"});
  EXPECT_TRUE(std::holds_alternative<std::size_t>(RouteTxn(ThreeShards(), txn4)));
}

}  // namespace
}  // namespace esp
