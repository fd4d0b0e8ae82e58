#include "kv/validation.h"

#include <gtest/gtest.h>

namespace esp {
namespace {

using etcdserverpb::TxnRequest;

TEST(ValidationTest, EtcdsMessagesForSimpleRequests) {
  etcdserverpb::RangeRequest range;
  EXPECT_EQ(CheckRangeRequest(range).message(), "etcdserver: key is not provided");
  range.set_key("a");
  EXPECT_TRUE(CheckRangeRequest(range).ok());
  range.set_sort_order(static_cast<etcdserverpb::RangeRequest::SortOrder>(7));
  EXPECT_EQ(CheckRangeRequest(range).message(), "etcdserver: invalid sort option");

  etcdserverpb::PutRequest put;
  EXPECT_EQ(CheckPutRequest(put).code(), StatusCode::kInvalidArgument);
  put.set_key("a");
  put.set_ignore_value(true);
  put.set_value("v");
  EXPECT_EQ(CheckPutRequest(put).message(), "etcdserver: value is provided");
  put.clear_value();
  put.set_ignore_lease(true);
  put.set_lease(5);
  EXPECT_EQ(CheckPutRequest(put).message(), "etcdserver: lease is provided");

  etcdserverpb::DeleteRangeRequest del;
  EXPECT_EQ(CheckDeleteRequest(del).message(), "etcdserver: key is not provided");
}

TEST(ValidationTest, TxnLimitsAndEmptyOps) {
  TxnRequest txn;
  for (int i = 0; i < 129; ++i) txn.add_success()->mutable_request_range()->set_key("k" + std::to_string(i));
  EXPECT_EQ(CheckTxnRequest(txn).message(), "etcdserver: too many operations in txn request");
  EXPECT_TRUE(CheckTxnRequest(txn, 200).ok());

  TxnRequest empty_op;
  empty_op.add_success();
  EXPECT_EQ(CheckTxnRequest(empty_op).message(), "etcdserver: key not found");

  TxnRequest empty_compare;
  empty_compare.add_compare();
  EXPECT_EQ(CheckTxnRequest(empty_compare).message(), "etcdserver: key is not provided");
}

TEST(ValidationTest, DuplicateWritesInABranch) {
  TxnRequest twice;
  twice.add_success()->mutable_request_put()->set_key("a");
  twice.add_success()->mutable_request_put()->set_key("a");
  EXPECT_EQ(CheckTxnRequest(twice).message(), "etcdserver: duplicate key given in txn request");

  TxnRequest put_in_deleted;
  auto* del = put_in_deleted.add_success()->mutable_request_delete_range();
  del->set_key("a");
  del->set_range_end("c");
  put_in_deleted.add_success()->mutable_request_put()->set_key("b");
  EXPECT_EQ(CheckTxnRequest(put_in_deleted).message(), "etcdserver: duplicate key given in txn request");

  // Same key in different branches is fine; so is then/else of a nested txn.
  TxnRequest branches;
  branches.add_success()->mutable_request_put()->set_key("a");
  branches.add_failure()->mutable_request_put()->set_key("a");
  EXPECT_TRUE(CheckTxnRequest(branches).ok());
  TxnRequest nested;
  auto* inner = nested.add_success()->mutable_request_txn();
  inner->add_success()->mutable_request_put()->set_key("a");
  inner->add_failure()->mutable_request_put()->set_key("a");
  EXPECT_TRUE(CheckTxnRequest(nested).ok());
  // ... but not a put outside and inside a nested txn.
  nested.add_success()->mutable_request_put()->set_key("a");
  EXPECT_EQ(CheckTxnRequest(nested).message(), "etcdserver: duplicate key given in txn request");

  // etcd takes a delete ending at "\0" literally in this check, so a put after it passes.
  TxnRequest from_key;
  auto* d = from_key.add_success()->mutable_request_delete_range();
  d->set_key("a");
  d->set_range_end(std::string(1, '\0'));
  from_key.add_success()->mutable_request_put()->set_key("b");
  EXPECT_TRUE(CheckTxnRequest(from_key).ok());
}

}  // namespace
}  // namespace esp
