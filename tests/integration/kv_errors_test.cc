// etcd's errors, size limits, compaction and deadlines through the proxy, against real etcd shards.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>

#include "support/fixtures.h"

namespace esp::test {
namespace {

using etcdserverpb::KV;
using etcdserverpb::PutRequest;
using etcdserverpb::PutResponse;
using etcdserverpb::RangeRequest;
using etcdserverpb::RangeResponse;
using etcdserverpb::TxnRequest;
using etcdserverpb::TxnResponse;

class KvErrorsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { setup_ = std::make_unique<ShardedSetup>(); }
  static void TearDownTestSuite() {
    setup_.reset();
  }
  void SetUp() override { kv_ = KV::NewStub(Connect(setup_->proxy().address())); }

  grpc::Status Put(const std::string& key, const std::string& value, PutResponse* out = nullptr) {
    PutRequest req;
    req.set_key(key);
    req.set_value(value);
    PutResponse resp;
    return kv_->Put(Ctx().get(), req, out ? out : &resp);
  }
  grpc::Status Txn(const TxnRequest& req, TxnResponse* out = nullptr) {
    TxnResponse resp;
    return kv_->Txn(Ctx().get(), req, out ? out : &resp);
  }

  static std::unique_ptr<ShardedSetup> setup_;
  std::unique_ptr<KV::Stub> kv_;
};
std::unique_ptr<ShardedSetup> KvErrorsTest::setup_;

void ExpectStatus(const grpc::Status& s, grpc::StatusCode code, const std::string& message) {
  EXPECT_EQ(s.error_code(), code) << s.error_message();
  EXPECT_EQ(s.error_message(), message);
}

TEST_F(KvErrorsTest, ValidationErrorsCarryEtcdsExactMessages) {
  const auto kInvalid = grpc::StatusCode::INVALID_ARGUMENT;
  {
    RangeRequest req;
    RangeResponse resp;
    ExpectStatus(kv_->Range(Ctx().get(), req, &resp), kInvalid, "etcdserver: key is not provided");
  }
  {
    PutRequest req;
    req.set_value("v");
    PutResponse resp;
    ExpectStatus(kv_->Put(Ctx().get(), req, &resp), kInvalid, "etcdserver: key is not provided");
  }
  {
    etcdserverpb::DeleteRangeRequest req;
    etcdserverpb::DeleteRangeResponse resp;
    ExpectStatus(kv_->DeleteRange(Ctx().get(), req, &resp), kInvalid, "etcdserver: key is not provided");
  }
  {
    PutRequest req;
    req.set_key("a");
    req.set_value("v");
    req.set_ignore_value(true);
    PutResponse resp;
    ExpectStatus(kv_->Put(Ctx().get(), req, &resp), kInvalid, "etcdserver: value is provided");
  }
  {
    PutRequest req;
    req.set_key("a");
    req.set_lease(42);
    req.set_ignore_lease(true);
    PutResponse resp;
    ExpectStatus(kv_->Put(Ctx().get(), req, &resp), kInvalid, "etcdserver: lease is provided");
  }
  {
    TxnRequest req;
    for (int i = 0; i < 129; ++i) req.add_success()->mutable_request_put()->set_key("k" + std::to_string(i));
    ExpectStatus(Txn(req), kInvalid, "etcdserver: too many operations in txn request");
  }
  {
    TxnRequest req;
    for (int i = 0; i < 128; ++i) req.add_success()->mutable_request_put()->set_key("max" + std::to_string(i));
    EXPECT_TRUE(Txn(req).ok()) << "128 operations are within etcd's default limit";
  }
  {
    TxnRequest req;
    req.add_success()->mutable_request_put()->set_key("dup");
    req.add_success()->mutable_request_put()->set_key("dup");
    ExpectStatus(Txn(req), kInvalid, "etcdserver: duplicate key given in txn request");
  }
  {
    TxnRequest req;
    req.add_success();  // a RequestOp with no request in it
    ExpectStatus(Txn(req), kInvalid, "etcdserver: key not found");
  }
  {
    TxnRequest req;
    req.add_compare()->set_result(etcdserverpb::Compare::EQUAL);
    ExpectStatus(Txn(req), kInvalid, "etcdserver: key is not provided");
  }
  for (const bool bad_order : {true, false}) {
    RangeRequest req;
    req.set_key("a");
    req.set_range_end("z");  // spanning: the proxy itself must refuse it
    if (bad_order) {
      req.set_sort_order(static_cast<RangeRequest::SortOrder>(7));
    } else {
      req.set_sort_target(static_cast<RangeRequest::SortTarget>(9));
    }
    RangeResponse resp;
    ExpectStatus(kv_->Range(Ctx().get(), req, &resp), kInvalid, "etcdserver: invalid sort option");
  }
}

TEST_F(KvErrorsTest, RequestSizeLimitsMatchEtcd) {
  const std::size_t kMiB = 1024 * 1024;
  EXPECT_TRUE(Put("size-ok", std::string(kMiB * 14 / 10, 'x')).ok()) << "a 1.4 MiB put fits etcd's 1.5 MiB";
  ExpectStatus(Put("size-big", std::string(kMiB * 16 / 10, 'x')), grpc::StatusCode::INVALID_ARGUMENT,
               "etcdserver: request is too large");
  const grpc::Status huge = Put("size-huge", std::string(kMiB * 3, 'x'));
  EXPECT_EQ(huge.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << huge.error_message();
  // Nothing of the refused puts was stored.
  RangeRequest req;
  req.set_key("size-big");
  req.set_range_end("size-hugf");
  req.set_count_only(true);
  RangeResponse resp;
  ASSERT_TRUE(kv_->Range(Ctx().get(), req, &resp).ok());
  EXPECT_EQ(resp.count(), 0);
}

TEST_F(KvErrorsTest, RangeAnswerLargerThanFourMiBComesBackWhole) {
  const std::string value(1024 * 1024, 'v');
  const std::vector<std::string> keys = {"big/0", "big/1", "jbig/0", "jbig/1", "tbig/0", "tbig/1"};
  for (const auto& k : keys) ASSERT_TRUE(Put(k, value + k).ok()) << k;
  RangeRequest req;
  req.set_key("big/");
  req.set_range_end("tbig0");
  RangeResponse resp;
  const grpc::Status s = kv_->Range(Ctx().get(), req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  std::vector<std::string> got;
  std::size_t bytes = 0;
  for (const auto& kv : resp.kvs()) {
    if (std::find(keys.begin(), keys.end(), kv.key()) != keys.end()) {
      got.push_back(kv.key());
      EXPECT_TRUE(kv.value() == value + kv.key()) << kv.key() << ": a value of " << kv.value().size() << " bytes";
      bytes += kv.value().size();
    }
  }
  EXPECT_EQ(got, keys);
  EXPECT_GT(bytes, 6 * value.size());
  EXPECT_FALSE(resp.more());
}

// Compact across shards has a meaning now (issue #17, docs/semantics.md): its tests are in
// cross_shard_revisions_test. A revision no shard has reached is etcd's own error, whatever the
// retention holds back.
TEST_F(KvErrorsTest, CompactAtARevisionNoShardReachedIsEtcdsFutureRev) {
  etcdserverpb::CompactionRequest req;
  req.set_revision(1'000'000'000);
  etcdserverpb::CompactionResponse resp;
  ExpectStatus(kv_->Compact(Ctx().get(), req, &resp), grpc::StatusCode::OUT_OF_RANGE,
               "etcdserver: mvcc: required revision is a future revision");
}

TEST_F(KvErrorsTest, ErrCompactedPassesUnchanged) {
  PutResponse first;
  ASSERT_TRUE(Put("compact-me", "1", &first).ok());
  PutResponse second;
  ASSERT_TRUE(Put("compact-me", "2", &second).ok());
  // Compact shard 0 directly, at its latest revision.
  auto shard = KV::NewStub(Connect(setup_->shard(0).member(0).client_address()));
  etcdserverpb::CompactionRequest creq;
  creq.set_revision(second.header().revision());
  creq.set_physical(true);
  etcdserverpb::CompactionResponse cresp;
  ASSERT_TRUE(shard->Compact(Ctx().get(), creq, &cresp).ok());

  RangeRequest req;
  req.set_key("compact-me");
  req.set_revision(first.header().revision());
  RangeResponse resp;
  ExpectStatus(kv_->Range(Ctx().get(), req, &resp), grpc::StatusCode::OUT_OF_RANGE,
               "etcdserver: mvcc: required revision has been compacted");
  // Reading exactly at the compaction revision still works.
  req.set_revision(second.header().revision());
  ASSERT_TRUE(kv_->Range(Ctx().get(), req, &resp).ok());
  ASSERT_EQ(resp.kvs_size(), 1);
  EXPECT_EQ(resp.kvs(0).value(), "2");
  // A future revision passes etcd's error too.
  req.set_revision(second.header().revision() + 1000000);
  ExpectStatus(kv_->Range(Ctx().get(), req, &resp), grpc::StatusCode::OUT_OF_RANGE,
               "etcdserver: mvcc: required revision is a future revision");
}

TEST_F(KvErrorsTest, ClientDeadlineReachesAHungShard) {
  setup_->shard(2).PauseMember(0);
  struct Resume {
    ~Resume() { setup_->shard(2).ResumeMember(0); }
  } resume;
  RangeRequest req;
  req.set_key("t");
  RangeResponse resp;
  const auto start = std::chrono::steady_clock::now();
  const grpc::Status s = kv_->Range(Ctx(std::chrono::milliseconds(300)).get(), req, &resp);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  EXPECT_LT(elapsed, std::chrono::seconds(2));
  // The same for a spanning read touching the hung shard.
  req.set_key("a");
  req.set_range_end("z");
  const auto start2 = std::chrono::steady_clock::now();
  const grpc::Status s2 = kv_->Range(Ctx(std::chrono::milliseconds(300)).get(), req, &resp);
  EXPECT_EQ(s2.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s2.error_message();
  EXPECT_LT(std::chrono::steady_clock::now() - start2, std::chrono::seconds(2));
}

// AuthStatus exists from etcd 3.5 on: 3.4 shards answer UNIMPLEMENTED, and the proxy passes on
// that answer, identical from every shard; newer shards answer, and agree (auth off on all).
TEST_F(KvErrorsTest, AuthStatusIsWhatTheShardsAnswer) {
  auto stub = etcdserverpb::Auth::NewStub(Connect(setup_->proxy().address()));
  etcdserverpb::AuthStatusResponse resp;
  const auto s = stub->AuthStatus(Ctx().get(), {}, &resp);
  if (EtcdServerAtLeast(3, 5)) {
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_FALSE(resp.enabled());
    return;
  }
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << s.error_message();
  EXPECT_NE(s.error_message().find("AuthStatus"), std::string::npos) << s.error_message();
}

}  // namespace
}  // namespace esp::test
