// Compact across shards: the target per shard, the shards' answers combined, and the revision
// history the retention is read from.
#include <gtest/gtest.h>

#include "common/etcd_errors.h"
#include "kv/compaction.h"
#include "kv/revision_history.h"

namespace esp {
namespace {

using namespace std::chrono_literals;

ShardCompaction Part(std::optional<std::int64_t> target, Status status, std::int64_t header_revision = 0) {
  ShardCompaction part;
  part.description = "shard \"s\"";
  part.target = target;
  part.status = std::move(status);
  part.response.mutable_header()->set_revision(header_revision);
  return part;
}

Status StatusOf(const std::variant<Status, etcdserverpb::CompactionResponse>& outcome) {
  return std::holds_alternative<Status>(outcome) ? std::get<Status>(outcome) : Status::Ok();
}

TEST(CompactTarget, IsTheRequestCappedByTheRetention) {
  EXPECT_EQ(CompactTarget(100, false, std::nullopt), 100);
  EXPECT_EQ(CompactTarget(100, false, 5), 100);  // no retention: the limit means nothing
  EXPECT_EQ(CompactTarget(100, true, 40), 40);
  EXPECT_EQ(CompactTarget(100, true, 400), 100);
  EXPECT_EQ(CompactTarget(100, true, std::nullopt), std::nullopt);  // not watched long enough
}

TEST(CombineCompactions, AnyShardCompactedIsSuccessWithTheLowestHeader) {
  const auto outcome = CombineCompactions(
      50, {Part(50, Status::Ok(), 70), Part(50, etcd_errors::FutureRev()), Part(50, Status::Ok(), 60),
           Part(50, etcd_errors::Compacted())});
  ASSERT_TRUE(std::holds_alternative<etcdserverpb::CompactionResponse>(outcome));
  EXPECT_EQ(std::get<etcdserverpb::CompactionResponse>(outcome).header().revision(), 60);
}

TEST(CombineCompactions, EtcdsRefusalsWhenNothingWasCompacted) {
  EXPECT_EQ(StatusOf(CombineCompactions(50, {Part(50, etcd_errors::Compacted()), Part(50, etcd_errors::FutureRev())}))
                .message(),
            "etcdserver: mvcc: required revision has been compacted");
  const Status future = StatusOf(CombineCompactions(50, {Part(50, etcd_errors::FutureRev()),
                                                         Part(50, etcd_errors::FutureRev())}));
  EXPECT_EQ(future.code(), StatusCode::kOutOfRange);
  EXPECT_EQ(future.message(), "etcdserver: mvcc: required revision is a future revision");
}

TEST(CombineCompactions, AFailureIsReportedEvenIfAnotherShardCompacted) {
  const Status down(StatusCode::kUnavailable, "shard \"shard-1\" [\"i\", \"s\") at 127.0.0.1:1: connection refused");
  const Status got = StatusOf(CombineCompactions(50, {Part(50, Status::Ok(), 60), Part(50, down)}));
  EXPECT_EQ(got.code(), StatusCode::kUnavailable);
  EXPECT_EQ(got.message(), down.message());
  // etcd's own errors pass unchanged.
  const Status denied(StatusCode::kPermissionDenied, "etcdserver: permission denied");
  EXPECT_EQ(StatusOf(CombineCompactions(50, {Part(50, denied), Part(50, denied)})).message(), denied.message());
}

TEST(CombineCompactions, HeldBackShardsAreNamedWhenNothingElseHappened) {
  const Status held = StatusOf(CombineCompactions(50, {Part(std::nullopt, Status::Ok()), Part(50, etcd_errors::FutureRev())}));
  EXPECT_EQ(held.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(held.message().find("--compaction-retention"), std::string::npos) << held.message();
  EXPECT_NE(held.message().find("shard \"s\""), std::string::npos) << held.message();
  // A held-back shard that had not reached the revision anyway: etcd's ErrFutureRev.
  EXPECT_EQ(StatusOf(CombineCompactions(50, {Part(std::nullopt, etcd_errors::FutureRev())})).message(),
            "etcdserver: mvcc: required revision is a future revision");
  // A shard compacted elsewhere still makes it a success.
  EXPECT_TRUE(StatusOf(CombineCompactions(50, {Part(std::nullopt, Status::Ok()), Part(40, Status::Ok(), 45)})).ok());
}

TEST(RevisionHistory, LimitIsTheNewestRevisionOlderThanTheRetention) {
  RevisionHistory history(10s);
  const auto t0 = RevisionHistory::SteadyClock::time_point() + 1h;
  EXPECT_EQ(history.Limit("a", t0), std::nullopt);
  for (int s = 0; s <= 10; ++s) history.Record("a", 100 + s * 10, t0 + std::chrono::seconds(s));
  EXPECT_EQ(history.Limit("a", t0 + 5s), std::nullopt);  // nothing 10 s old yet
  EXPECT_EQ(history.Limit("a", t0 + 10s), 100);
  for (int s = 11; s <= 30; ++s) history.Record("a", 100 + s * 10, t0 + std::chrono::seconds(s));
  EXPECT_EQ(history.Limit("a", t0 + 30s), 300);             // the sample from t0 + 20 s
  EXPECT_EQ(history.Limit("a", t0 + 30s + 500ms), 300);     // not one from later than 10 s ago
  EXPECT_EQ(history.Limit("a", t0 + 1h), 400);              // the newest, once old enough
  EXPECT_EQ(history.Limit("b", t0 + 1h), std::nullopt);     // another shard is its own
}

}  // namespace
}  // namespace esp
