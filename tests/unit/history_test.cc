// The history checker (tests/support/history.h) on synthetic histories: a correct one passes, and
// each kind of broken run is reported with a message naming the key and the value.
#include "support/history.h"

#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace esp::test {
namespace {

using std::chrono::milliseconds;

// Builds histories on a fake timeline: times are milliseconds after a fixed origin.
class Builder {
 public:
  HistoryClock::time_point At(int ms) const { return origin_ + milliseconds(ms); }

  void Put(int process, const std::string& key, const std::string& value, int invoke, int complete,
           Outcome outcome = Outcome::kOk) {
    history.Record(Op(process, OpKind::kPut, key, value, invoke, complete, outcome));
  }
  void Delete(int process, const std::string& key, int invoke, int complete) {
    history.Record(Op(process, OpKind::kDelete, key, "", invoke, complete, Outcome::kOk));
  }
  // A read that found `value` (nullopt: absent).
  void Get(int process, const std::string& key, std::optional<std::string> value, int invoke, int complete) {
    auto op = Op(process, OpKind::kGet, key, value.value_or(""), invoke, complete, Outcome::kOk);
    op.found = value.has_value();
    history.Record(op);
  }
  void Cas(int process, const std::string& key, int from, int invoke, int complete, Outcome outcome = Outcome::kOk) {
    auto op = Op(process, OpKind::kCasIncrement, key, std::to_string(from + 1), invoke, complete, outcome);
    op.expected = from == 0 ? "" : std::to_string(from);
    history.Record(op);
  }

  History history;

 private:
  Operation Op(int process, OpKind kind, const std::string& key, const std::string& value, int invoke, int complete,
               Outcome outcome) const {
    Operation op;
    op.process = process;
    op.kind = kind;
    op.key = key;
    op.value = value;
    op.outcome = outcome;
    op.invoke = At(invoke);
    op.complete = At(complete);
    return op;
  }
  const HistoryClock::time_point origin_ = HistoryClock::now();
};

WatchEvent Ev(const std::string& key, const std::string& value, std::int64_t rev, EventType type = EventType::kPut) {
  return WatchEvent{0, type, key, value, rev};
}

// A correct run: overlapping writes, reads of either concurrent value, an unknown put that may or
// may not have landed, a delete, counters with an unknown increment, and a watcher that got all.
void CorrectRun(Builder& b) {
  b.Put(1, "a", "a1", 0, 10);
  b.Put(2, "a", "a2", 5, 20);   // concurrent with a1: either may be last
  b.Get(3, "a", "a1", 21, 25);  // a1 after a2 is a legal order
  b.Put(1, "b", "b1", 0, 10);
  b.Put(2, "b", "b2", 30, 40, Outcome::kUnknown);  // may land any time after 30
  b.Get(3, "b", "b1", 50, 60);
  b.Get(3, "b", "b2", 70, 80);
  b.Put(1, "c", "c1", 0, 10);
  b.Delete(2, "c", 20, 30);
  b.Get(3, "c", std::nullopt, 40, 50);
  b.Cas(1, "n", 0, 0, 10);
  b.Cas(2, "n", 1, 20, 30);
  b.Cas(3, "n", 2, 40, 50, Outcome::kUnknown);
  b.Cas(1, "n", 2, 40, 50, Outcome::kFailed);  // compare failed: definitely not applied
  b.history.RecordFinalScan({{"a", "a1"}, {"b", "b2"}, {"n", "3"}});
  b.history.RecordShardLog(
      0, {Ev("a", "a2", 2), Ev("a", "a1", 3), Ev("b", "b1", 4), Ev("c", "c1", 5), Ev("c", "", 6, EventType::kDelete),
          Ev("n", "1", 7), Ev("n", "2", 8), Ev("b", "b2", 9), Ev("n", "3", 10)});
  WatchLog w;
  w.watcher = 1;
  w.key = "a";
  w.range_end = "c";
  w.start_revision = 2;
  w.events = {Ev("a", "a2", 2), Ev("a", "a1", 3), Ev("b", "b1", 4), Ev("b", "b2", 9)};
  w.synced_through[0] = 10;
  b.history.RecordWatch(w);
}

// The violations of `kind`; fails the test unless there are exactly `count`, and unless each
// message names `key` and `value`.
void ExpectOnly(const HistoryReport& report, ViolationKind kind, const std::string& key, const std::string& value,
                std::size_t count = 1) {
  SCOPED_TRACE(report.ToString());
  ASSERT_EQ(report.violations.size(), count);
  for (const auto& v : report.violations) {
    EXPECT_EQ(v.kind, kind) << v.message;
    EXPECT_EQ(v.key, key) << v.message;
    EXPECT_NE(v.message.find("\"" + key + "\""), std::string::npos) << v.message;
    if (!value.empty()) {
      EXPECT_EQ(v.value, value) << v.message;
      EXPECT_NE(v.message.find("\"" + value + "\""), std::string::npos) << v.message;
    }
  }
}

TEST(HistoryChecker, CorrectRunPasses) {
  Builder b;
  CorrectRun(b);
  const auto report = CheckHistory(b.history);
  EXPECT_TRUE(report.ok()) << report.ToString();
}

TEST(HistoryChecker, LostAcknowledgedWrite) {
  Builder b;
  b.Put(1, "k", "v1", 0, 10);
  b.Put(2, "k", "v2", 20, 30);  // acknowledged after v1: the final state must be v2
  b.history.RecordFinalScan({{"k", "v1"}});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kLostWrite, "k", "v2");
}

TEST(HistoryChecker, LostWriteWhenKeyVanishes) {
  Builder b;
  b.Put(1, "k", "v1", 0, 10);
  b.history.RecordFinalScan({});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kLostWrite, "k", "v1");
}

TEST(HistoryChecker, AbsenceAfterAcknowledgedDeleteIsFine) {
  Builder b;
  b.Put(1, "k", "v1", 0, 10);
  b.Delete(1, "k", 20, 30);
  b.Get(2, "k", std::nullopt, 40, 50);
  b.history.RecordFinalScan({});
  EXPECT_TRUE(CheckHistory(b.history).ok()) << CheckHistory(b.history).ToString();
}

TEST(HistoryChecker, DuplicatedWriteInFinalScan) {
  Builder b;
  b.Put(1, "k", "v1", 0, 10);
  b.Put(1, "m", "m1", 0, 10);
  // A mover that copied k's value to m (and lost m's own write) as well.
  b.history.RecordFinalScan({{"k", "v1"}, {"m", "v1"}});
  const auto report = CheckHistory(b.history);
  SCOPED_TRACE(report.ToString());
  bool duplicate = false;
  for (const auto& v : report.violations) {
    if (v.kind == ViolationKind::kDuplicate) {
      duplicate = true;
      EXPECT_EQ(v.value, "v1");
      EXPECT_NE(v.message.find("\"k\""), std::string::npos);
      EXPECT_NE(v.message.find("\"m\""), std::string::npos);
    }
  }
  EXPECT_TRUE(duplicate);
}

TEST(HistoryChecker, DuplicatedWriteInShardLog) {
  Builder b;
  b.Put(1, "k", "v1", 0, 10);
  b.Put(1, "k", "v2", 20, 30);
  b.history.RecordShardLog(0, {Ev("k", "v1", 2), Ev("k", "v2", 3), Ev("k", "v1", 4)});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kDuplicate, "k", "v1");
}

TEST(HistoryChecker, KeyTwiceInFinalScan) {
  Builder b;
  b.Put(1, "k", "v1", 0, 10);
  b.history.RecordFinalScan({{"k", "v1"}, {"k", "v1"}});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kDuplicate, "k", "v1");
}

TEST(HistoryChecker, PhantomValue) {
  Builder b;
  b.Put(1, "k", "v1", 0, 10);
  b.Get(2, "k", "ghost", 20, 30);
  b.history.RecordFinalScan({{"k", "v1"}});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kPhantom, "k", "ghost");
}

TEST(HistoryChecker, PhantomValueFromFailedPut) {
  Builder b;
  b.Put(1, "k", "v1", 0, 10, Outcome::kFailed);
  b.history.RecordFinalScan({{"k", "v1"}});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kPhantom, "k", "v1");
}

TEST(HistoryChecker, ReadOfValueWrittenAfterItCompleted) {
  Builder b;
  b.Get(2, "k", "v1", 0, 10);
  b.Put(1, "k", "v1", 20, 30);
  b.history.RecordFinalScan({{"k", "v1"}});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kPhantom, "k", "v1");
}

TEST(HistoryChecker, StaleRead) {
  Builder b;
  b.Put(1, "k", "v1", 0, 10);
  b.Put(1, "k", "v2", 20, 30);
  b.Get(2, "k", "v1", 40, 50);  // v2 was acknowledged before this read began
  b.history.RecordFinalScan({{"k", "v2"}});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kStaleRead, "k", "v1");
}

TEST(HistoryChecker, StaleAbsentRead) {
  Builder b;
  b.Put(1, "k", "v1", 0, 10);
  b.Get(2, "k", std::nullopt, 20, 30);
  b.history.RecordFinalScan({{"k", "v1"}});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kStaleRead, "k", "");
}

TEST(HistoryChecker, ReadGoingBackInTime) {
  Builder b;
  b.Put(1, "k", "v1", 0, 10);
  b.Put(1, "k", "v2", 20, 100);
  b.Get(2, "k", "v2", 25, 35);  // concurrent with v2's put: fine
  b.Get(3, "k", "v1", 40, 50);  // concurrent with v2's put too, but after a read that saw v2
  b.history.RecordFinalScan({{"k", "v2"}});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kReadOrder, "k", "v1");
}

TEST(HistoryChecker, CounterShortByOne) {
  Builder b;
  b.Cas(1, "n", 0, 0, 10);
  b.Cas(2, "n", 1, 20, 30);
  b.Cas(1, "n", 2, 40, 50);
  b.history.RecordFinalScan({{"n", "2"}});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kCounter, "n", "2");
}

TEST(HistoryChecker, CounterIncrementAppliedTwice) {
  Builder b;
  b.Cas(1, "n", 0, 0, 10);
  b.Cas(2, "n", 0, 0, 10);  // both compares passed against 0: one increment is lost
  b.history.RecordFinalScan({{"n", "2"}});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kCounter, "n", "1");
}

TEST(HistoryChecker, CounterWithinUnknownIncrements) {
  Builder b;
  b.Cas(1, "n", 0, 0, 10);
  b.Cas(2, "n", 1, 20, 30, Outcome::kUnknown);
  for (const char* final : {"1", "2"}) {
    b.history.RecordFinalScan({{"n", final}});
    EXPECT_TRUE(CheckHistory(b.history).ok()) << final;
  }
  b.history.RecordFinalScan({{"n", "3"}});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kCounter, "n", "3");
}

// A watcher over [a, c) from revision 2, synced through 5, against this shard log.
void WatchRun(Builder& b, std::vector<WatchEvent> received, WatchEnd end = WatchEnd::kOpen, std::int64_t compact = 0) {
  b.Put(1, "a", "a1", 0, 10);
  b.Put(1, "b", "b1", 20, 30);
  b.Put(1, "a", "a2", 40, 50);
  b.history.RecordShardLog(0, {Ev("a", "a1", 2), Ev("b", "b1", 3), Ev("a", "a2", 4)});
  WatchLog w;
  w.watcher = 7;
  w.key = "a";
  w.range_end = "c";
  w.start_revision = 2;
  w.events = std::move(received);
  w.synced_through[0] = 4;
  w.end = end;
  w.compact_revision = compact;
  b.history.RecordWatch(w);
}

TEST(HistoryChecker, WatchGap) {
  Builder b;
  WatchRun(b, {Ev("a", "a1", 2), Ev("a", "a2", 4)});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kWatchGap, "b", "b1");
}

TEST(HistoryChecker, WatchTailGapUpToSyncedRevision) {
  Builder b;
  WatchRun(b, {Ev("a", "a1", 2), Ev("b", "b1", 3)});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kWatchGap, "a", "a2");
}

TEST(HistoryChecker, WatchDuplicate) {
  Builder b;
  WatchRun(b, {Ev("a", "a1", 2), Ev("b", "b1", 3), Ev("b", "b1", 3), Ev("a", "a2", 4)});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kWatchDuplicate, "b", "b1");
}

TEST(HistoryChecker, WatchOutOfOrder) {
  Builder b;
  WatchRun(b, {Ev("a", "a1", 2), Ev("a", "a2", 4), Ev("b", "b1", 3)});
  ExpectOnly(CheckHistory(b.history), ViolationKind::kWatchOrder, "b", "b1");
}

TEST(HistoryChecker, WatchPhantomEvent) {
  Builder b;
  WatchRun(b, {Ev("a", "a1", 2), Ev("b", "b1", 3), Ev("a", "a1", 4)});
  const auto report = CheckHistory(b.history);
  SCOPED_TRACE(report.ToString());
  // The wrong value at revision 4 is a phantom; it is also a1 received twice.
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.violations[0].kind, ViolationKind::kDuplicate);
  EXPECT_EQ(report.violations[1].kind, ViolationKind::kPhantom);
  EXPECT_EQ(report.violations[1].value, "a1");
}

TEST(HistoryChecker, CompactedWatcherMayMissEvents) {
  Builder compacted;
  WatchRun(compacted, {}, WatchEnd::kCompacted, 3);
  EXPECT_TRUE(CheckHistory(compacted.history).ok()) << CheckHistory(compacted.history).ToString();
  Builder unnamed;
  WatchRun(unnamed, {}, WatchEnd::kCompacted, 0);
  ExpectOnly(CheckHistory(unnamed.history), ViolationKind::kWatchCancel, "a", "");
}

}  // namespace
}  // namespace esp::test
