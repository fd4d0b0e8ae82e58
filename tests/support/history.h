#pragma once
// A history of what clients did against the proxy, and a checker for it (issue #16: range moves
// between etcd clusters are tested by a history checker; see /work/shared/reference/resharding.md).
//
// Clients record every operation with its invoke and completion times (steady clock) and its
// outcome; watchers record every event they got and how their watch ended; at the end the test
// records a final scan of the workload's keys (through the proxy, after every client stopped) and,
// per shard ("revision space"), the shard's own log of events read directly from the shard.
// CheckHistory then reports every violation it finds, each naming the key and the value.
//
// The workload's contract (what makes the rules below sound):
//  - register keys take kPut (every value written once in the whole history: globally unique),
//    kDelete and kGet; counter keys take only kCasIncrement (read c, then a Txn that compares
//    the key's mod_revision/version with what was read and puts c+1); no key is both;
//  - an outcome is kOk only when the server acknowledged the operation (a CAS whose compare
//    failed is kFailed: definitely not applied), kFailed only when the operation definitely did
//    not take effect, kUnknown otherwise (timeouts, unavailable, broken connections).
//
// Times: an operation "precedes" another when its completion is strictly before the other's
// invoke. A kUnknown write has no completion: it may take effect at any time after its invoke, so
// it precedes nothing. A kFailed write never took effect and is ignored except to explain values.
//
// The rules (per register key k; "write" = kPut or kDelete with outcome kOk or kUnknown; the
// initial state is "absent", as if written by a delete that completed before everything):
//  R1 phantom: a value read (by a kGet or the final scan) under k must come from a kOk or kUnknown
//     kPut of k invoked before the read completed. A value never written, written under another
//     key, written only by a kFailed put, or written by a put invoked after the read completed is a
//     phantom; so is a key in the final scan that no operation of the history used.
//  R2 stale read: the write w that explains what a kGet observed (its put, or for "absent" the
//     initial state or some delete) must not be overwritten before the read began: there must be no
//     kOk write w2 of k with w precedes w2 and w2 precedes the read. For "absent" it suffices that
//     one explaining delete (or the initial state) passes.
//  R3 lost write: the same rule for the final scan, which is a read invoked after everything: the
//     final value (or absence) of k must come from a write that no kOk write follows. So every kOk
//     write is either the final state or is followed by a later kOk write, or is concurrent with
//     the write that is final. The report names the kOk writes that no other kOk write follows.
//  R4 read order: two kGets of k where the first precedes the second must not observe puts p1, p2
//     with p2 preceding p1 (a read going back in time, e.g. a value applied again after being
//     overwritten). Only checked between reads that observed values (not absence).
//  R5 duplicates: in the final scan a key appears at most once and a register value under at most
//     one key; in a shard's own log a register value is put at most once (applied twice otherwise);
//     a watcher receives a given register value in at most one PUT event. (In shard logs and watch
//     events only keys the history's operations used count: the proxy may keep keys of its own.)
// These are necessary conditions of linearizability per key, not a full linearizability check
// (no search over orderings); they are what a lost, duplicated or resurrected write breaks.
//
// Counters (per counter key k, a = kOk increments, u = kUnknown increments, N = final value, absent
// = 0):
//  C1 a <= N <= a + u (each acknowledged increment applied exactly once, unknown ones at most once);
//  C2 no two kOk increments wrote the same value (a compare passed against a stale value).
//
// Watches (per watcher, per revision space s: the shard whose revisions the events carry; with a
// mover a watcher may see several):
//  W1 order: events in s are non-decreasing in mod_revision; an event with the same (mod_revision,
//     key) as an earlier one is a duplicate, one with a lower mod_revision than the previous is out
//     of order;
//  W2 phantom event: when s's log is recorded, each event must be in it (same key, revision,
//     type, and value for puts);
//  W3 gap: when s's log is recorded and the watch was not canceled with a compact_revision, every
//     event of s's log in the watched range with start <= revision <= horizon must have been
//     received, where start is the watch's start_revision (0: its first received event in s) and
//     horizon is the revision the test knows the watcher has caught up to in s (synced_through;
//     unset: its last received event in s). A watch that ended with another error is checked like
//     an open one, up to its horizon. A log that says kCompacted with compact_revision <= 0 is
//     reported (etcd's cancel for compaction always names the revision).
// Not checked yet: revisions of KV responses (recorded, unused: with moves a key's revisions
// change spaces), and multi-key transactions.
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace esp::test {

using HistoryClock = std::chrono::steady_clock;

enum class OpKind { kPut, kDelete, kGet, kCasIncrement };
enum class Outcome { kOk, kFailed, kUnknown };

struct Operation {
  int process = 0;  // the client (thread, or proxy x thread) that issued it
  OpKind kind = OpKind::kGet;
  std::string key;
  // kPut: the value written; kGet: the value read (when found); kCasIncrement: the value put (c+1).
  std::string value;
  bool found = false;    // kGet: the key existed
  std::string expected;  // kCasIncrement: the value compared against ("" for absent)
  Outcome outcome = Outcome::kUnknown;
  HistoryClock::time_point invoke;
  HistoryClock::time_point complete;  // meaningless for kUnknown
  std::int64_t revision = 0;          // the response header's revision, when known
  std::int64_t mod_revision = 0;      // kGet: the kv's mod_revision, when found
};

enum class EventType { kPut, kDelete };

struct WatchEvent {
  int space = 0;  // the revision space (shard) whose revision mod_revision is
  EventType type = EventType::kPut;
  std::string key;
  std::string value;
  std::int64_t mod_revision = 0;
};

enum class WatchEnd { kOpen, kCompacted, kError };

struct WatchLog {
  int watcher = 0;
  std::string key;
  std::string range_end;  // etcd's convention: "" one key, "\0" to the end of the keyspace
  std::int64_t start_revision = 0;
  std::vector<WatchEvent> events;  // in the order received
  WatchEnd end = WatchEnd::kOpen;
  std::int64_t compact_revision = 0;  // kCompacted
  std::string error;                  // kError
  // Per space: the revision up to which the test knows this watcher received everything (W3).
  std::map<int, std::int64_t> synced_through;
};

// Thread-safe recorder. Operations are recorded once they ended (with their outcome); a watcher's
// log is kept by its owner and handed over whole when it ended or the run stopped.
class History {
 public:
  static HistoryClock::time_point Now() { return HistoryClock::now(); }

  void Record(Operation op);
  void RecordWatch(WatchLog log);
  // The final state of the workload's keys, read through the proxy after all clients stopped.
  void RecordFinalScan(std::vector<std::pair<std::string, std::string>> kvs);
  // A shard's own log: every event of its revision space, in revision order.
  void RecordShardLog(int space, std::vector<WatchEvent> events);

  // Copies, for the checker and for tests.
  std::vector<Operation> operations() const;
  std::vector<WatchLog> watches() const;
  std::optional<std::vector<std::pair<std::string, std::string>>> final_scan() const;
  std::map<int, std::vector<WatchEvent>> shard_logs() const;

 private:
  mutable std::mutex mu_;
  std::vector<Operation> ops_;
  std::vector<WatchLog> watches_;
  std::optional<std::vector<std::pair<std::string, std::string>>> final_scan_;
  std::map<int, std::vector<WatchEvent>> shard_logs_;
};

enum class ViolationKind {
  kMisuse,          // the history breaks the workload's contract (value written twice, mixed key)
  kPhantom,         // R1, W2
  kStaleRead,       // R2
  kLostWrite,       // R3
  kReadOrder,       // R4
  kDuplicate,       // R5
  kCounter,         // C1, C2
  kWatchOrder,      // W1 out of order
  kWatchDuplicate,  // W1 duplicate
  kWatchGap,        // W3
  kWatchCancel,     // compacted without compact_revision
};

const char* ToString(ViolationKind kind);

struct Violation {
  ViolationKind kind;
  std::string key;
  std::string value;    // the value concerned, when one is
  std::string message;  // says what was expected and what was seen
};

struct HistoryReport {
  std::vector<Violation> violations;
  bool ok() const { return violations.empty(); }
  // Every violation, one per line ("" when none).
  std::string ToString() const;
};

HistoryReport CheckHistory(const History& history);

}  // namespace esp::test
