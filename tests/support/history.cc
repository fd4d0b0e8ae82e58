#include "support/history.h"

#include <algorithm>
#include <cstdio>
#include <set>
#include <sstream>
#include <stdexcept>
#include <tuple>
#include <unordered_map>
#include <utility>

namespace esp::test {

void History::Record(Operation op) {
  const std::lock_guard lock(mu_);
  ops_.push_back(std::move(op));
}

void History::RecordWatch(WatchLog log) {
  const std::lock_guard lock(mu_);
  watches_.push_back(std::move(log));
}

void History::RecordFinalScan(std::vector<std::pair<std::string, std::string>> kvs) {
  const std::lock_guard lock(mu_);
  final_scan_ = std::move(kvs);
}

void History::RecordShardLog(int space, std::vector<WatchEvent> events) {
  const std::lock_guard lock(mu_);
  shard_logs_[space] = std::move(events);
}

std::vector<Operation> History::operations() const {
  const std::lock_guard lock(mu_);
  return ops_;
}

std::vector<WatchLog> History::watches() const {
  const std::lock_guard lock(mu_);
  return watches_;
}

std::optional<std::vector<std::pair<std::string, std::string>>> History::final_scan() const {
  const std::lock_guard lock(mu_);
  return final_scan_;
}

std::map<int, std::vector<WatchEvent>> History::shard_logs() const {
  const std::lock_guard lock(mu_);
  return shard_logs_;
}

const char* ToString(ViolationKind kind) {
  switch (kind) {
    case ViolationKind::kMisuse:
      return "misuse";
    case ViolationKind::kPhantom:
      return "phantom";
    case ViolationKind::kStaleRead:
      return "stale read";
    case ViolationKind::kLostWrite:
      return "lost write";
    case ViolationKind::kReadOrder:
      return "read order";
    case ViolationKind::kDuplicate:
      return "duplicate";
    case ViolationKind::kCounter:
      return "counter";
    case ViolationKind::kWatchOrder:
      return "watch order";
    case ViolationKind::kWatchDuplicate:
      return "watch duplicate";
    case ViolationKind::kWatchGap:
      return "watch gap";
    case ViolationKind::kWatchCancel:
      return "watch cancel";
  }
  return "?";
}

std::string HistoryReport::ToString() const {
  std::string out;
  for (const auto& v : violations) out += std::string(esp::test::ToString(v.kind)) + ": " + v.message + "\n";
  return out;
}

namespace {

// Keys and values with control and non-ASCII bytes as \xNN, quoted.
std::string Q(const std::string& s) {
  std::string out = "\"";
  for (const unsigned char c : s) {
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

constexpr auto kNever = HistoryClock::time_point::max();
constexpr auto kBeforeAll = HistoryClock::time_point::min();

// A write that may have taken effect: a kOk or kUnknown put or delete, or the initial absence.
struct Write {
  const Operation* op = nullptr;  // null: the initial state
  bool acked = false;
  HistoryClock::time_point invoke = kBeforeAll;
  HistoryClock::time_point complete = kBeforeAll;  // kNever when unknown: it precedes nothing

  static Write Initial() { return Write{nullptr, true, kBeforeAll, kBeforeAll}; }
  static Write Of(const Operation& op) {
    const bool acked = op.outcome == Outcome::kOk;
    return Write{&op, acked, op.invoke, acked ? op.complete : kNever};
  }
  bool is_delete() const { return op == nullptr || op->kind == OpKind::kDelete; }
  std::string Describe() const {
    if (op == nullptr) return "the initial absence";
    return (is_delete() ? std::string("delete") : "put of " + Q(op->value)) + " by client " +
           std::to_string(op->process) + (acked ? " (acknowledged)" : " (outcome unknown)");
  }
};

bool Precedes(const Write& a, HistoryClock::time_point b_invoke) { return a.acked && a.complete < b_invoke; }

// A read: a kGet, or the final scan (invoked after everything, completed never).
struct Read {
  bool found = false;
  std::string value;
  HistoryClock::time_point invoke;
  HistoryClock::time_point complete;
  bool final = false;
};

bool InRange(const std::string& key, const std::string& start, const std::string& end) {
  if (end.empty()) return key == start;
  if (end == std::string(1, '\0')) return key >= start;
  return key >= start && key < end;
}

class Checker {
 public:
  explicit Checker(const History& history)
      : ops_(history.operations()),
        watches_(history.watches()),
        final_scan_(history.final_scan()),
        shard_logs_(history.shard_logs()) {}

  HistoryReport Run() {
    Index();
    CheckFinalScanShape();
    for (const auto& [key, writes] : writes_) CheckRegister(key, writes);
    for (const auto& key : counter_keys_) CheckCounter(key);
    CheckShardLogs();
    for (const auto& w : watches_) CheckWatch(w);
    return std::move(report_);
  }

 private:
  void Add(ViolationKind kind, const std::string& key, const std::string& value, std::string message) {
    report_.violations.push_back(Violation{kind, key, value, std::move(message)});
  }

  void Index() {
    for (const auto& op : ops_) {
      if (op.kind == OpKind::kCasIncrement) {
        counter_keys_.insert(op.key);
        continue;
      }
      register_keys_.insert(op.key);
      if (op.kind == OpKind::kPut) {
        const auto [it, fresh] = put_by_value_.emplace(op.value, &op);
        if (!fresh) {
          Add(ViolationKind::kMisuse, op.key, op.value,
              "value " + Q(op.value) + " written twice (keys " + Q(it->second->key) + " and " + Q(op.key) +
                  "): the workload must write unique values");
        }
      }
      if (op.kind != OpKind::kGet) {
        writes_[op.key];  // every written register key is checked, even with no surviving write
        if (op.outcome != Outcome::kFailed) writes_[op.key].push_back(Write::Of(op));
      } else {
        writes_[op.key];
        if (op.outcome == Outcome::kOk) gets_[op.key].push_back(&op);
      }
    }
    for (const auto& key : counter_keys_) {
      if (register_keys_.contains(key)) {
        Add(ViolationKind::kMisuse, key, "", "key " + Q(key) + " is used both as a counter and as a register");
      }
    }
    if (final_scan_) {
      for (const auto& [key, value] : *final_scan_) final_.emplace(key, value);
    }
  }

  // R5 on the final scan, and keys the workload never wrote.
  void CheckFinalScanShape() {
    if (!final_scan_) return;
    std::map<std::string, int> key_count;
    std::map<std::string, std::string> key_of_value;
    for (const auto& [key, value] : *final_scan_) {
      if (++key_count[key] == 2) {
        Add(ViolationKind::kDuplicate, key, value,
            "key " + Q(key) + " appears more than once in the final scan (again as " + Q(value) + ")");
      }
      if (!writes_.contains(key) && !counter_keys_.contains(key)) {
        Add(ViolationKind::kPhantom, key, value,
            "key " + Q(key) + " = " + Q(value) + " in the final scan was never written by the workload");
        continue;
      }
      if (counter_keys_.contains(key)) continue;
      const auto [it, fresh] = key_of_value.emplace(value, key);
      if (!fresh && it->second != key) {
        Add(ViolationKind::kDuplicate, key, value,
            "value " + Q(value) + " is in the final scan under both " + Q(it->second) + " and " + Q(key) +
                " (written once, applied twice)");
      }
    }
  }

  // R1: the put that explains `value` read under `key`, or a phantom violation.
  const Operation* ExplainingPut(const std::string& key, const Read& read, const std::string& who) {
    const auto it = put_by_value_.find(read.value);
    const auto seen = who + " saw " + Q(key) + " = " + Q(read.value) + ", ";
    if (it == put_by_value_.end()) {
      Add(ViolationKind::kPhantom, key, read.value, seen + "a value never written");
      return nullptr;
    }
    const Operation& put = *it->second;
    if (put.key != key) {
      Add(ViolationKind::kPhantom, key, read.value, seen + "a value written under " + Q(put.key));
    } else if (put.outcome == Outcome::kFailed) {
      Add(ViolationKind::kPhantom, key, read.value, seen + "a value whose put definitely failed");
    } else if (!read.final && put.invoke > read.complete) {
      Add(ViolationKind::kPhantom, key, read.value, seen + "a value whose put began after the read completed");
    } else {
      return &put;
    }
    return nullptr;
  }

  // The first kOk write of `writes` that `w` precedes and that precedes `read_invoke`, if any: it
  // makes observing `w` stale (R2, R3).
  static const Write* Overwriter(const Write& w, const std::vector<Write>& writes,
                                 HistoryClock::time_point read_invoke) {
    for (const auto& w2 : writes) {
      if (w2.acked && Precedes(w, w2.invoke) && w2.complete < read_invoke) return &w2;
    }
    return nullptr;
  }

  // The kOk writes no other kOk write follows: what the final state should show.
  static std::string Frontier(const std::vector<Write>& writes, std::string* first_value) {
    std::string out;
    for (const auto& w : writes) {
      if (!w.acked || Overwriter(w, writes, kNever) != nullptr) continue;
      if (first_value->empty() && !w.is_delete()) *first_value = w.op->value;
      out += (out.empty() ? "" : ", ") + w.Describe();
    }
    return out.empty() ? "no acknowledged write" : out;
  }

  // R1-R3 for one read of `key`. Returns the put it observed (for R4), when it checks out.
  const Operation* CheckRead(const std::string& key, const std::vector<Write>& writes, const Read& read,
                             const std::string& who) {
    const auto stale = [&](const Write& observed, const Write& by) {
      if (read.final) {
        std::string lost;
        const auto frontier = Frontier(writes, &lost);
        Add(ViolationKind::kLostWrite, key, lost,
            "final state of " + Q(key) + " is " + (read.found ? Q(read.value) : std::string("absent")) + " (" +
                observed.Describe() + "), but the last acknowledged write(s) were: " + frontier);
      } else {
        Add(ViolationKind::kStaleRead, key, read.found ? read.value : "",
            who + " saw " + Q(key) + " " + (read.found ? "= " + Q(read.value) : "absent") + " (" + observed.Describe() +
                "), overwritten before the read began by " + by.Describe());
      }
    };
    if (read.found) {
      const Operation* put = ExplainingPut(key, read, who);
      if (put == nullptr) return nullptr;
      const Write w = Write::Of(*put);
      if (const Write* by = Overwriter(w, writes, read.invoke)) {
        stale(w, *by);
        return nullptr;
      }
      return put;
    }
    // Absent: explained by the initial state or by some delete begun before the read completed.
    const Write initial = Write::Initial();
    const Write* first_by = Overwriter(initial, writes, read.invoke);
    if (first_by == nullptr) return nullptr;
    for (const auto& d : writes) {
      if (d.is_delete() && (read.final || d.invoke < read.complete) && !Overwriter(d, writes, read.invoke)) {
        return nullptr;
      }
    }
    stale(initial, *first_by);
    return nullptr;
  }

  void CheckRegister(const std::string& key, const std::vector<Write>& writes) {
    if (counter_keys_.contains(key)) return;
    std::vector<std::pair<const Operation*, const Operation*>> observed;  // (get, put it saw)
    for (const Operation* get : gets_[key]) {
      const Read read{get->found, get->value, get->invoke, get->complete, false};
      const Operation* put = CheckRead(key, writes, read, "client " + std::to_string(get->process));
      if (put != nullptr) observed.emplace_back(get, put);
    }
    CheckReadOrder(key, observed);
    if (!final_scan_) return;
    const auto it = final_.find(key);
    const Read read{it != final_.end(), it != final_.end() ? it->second : "", kNever, kNever, true};
    CheckRead(key, writes, read, "the final scan");
  }

  // R4: a later read must not observe a put that precedes the put an earlier read observed.
  void CheckReadOrder(const std::string& key,
                      const std::vector<std::pair<const Operation*, const Operation*>>& observed) {
    for (const auto& [g1, p1] : observed) {
      for (const auto& [g2, p2] : observed) {
        if (g1->complete < g2->invoke && Precedes(Write::Of(*p2), p1->invoke)) {
          Add(ViolationKind::kReadOrder, key, p2->value,
              "client " + std::to_string(g1->process) + " saw " + Q(key) + " = " + Q(p1->value) + ", then client " +
                  std::to_string(g2->process) + " saw the older " + Q(p2->value));
          return;  // one per key: the rest are usually the same fault
        }
      }
    }
  }

  void CheckCounter(const std::string& key) {
    int acked = 0;
    int unknown = 0;
    std::map<std::string, int> acked_values;
    for (const auto& op : ops_) {
      if (op.key != key || op.kind != OpKind::kCasIncrement) continue;
      if (op.outcome == Outcome::kOk) {
        ++acked;
        if (++acked_values[op.value] == 2) {
          Add(ViolationKind::kCounter, key, op.value,
              "counter " + Q(key) + ": two acknowledged increments both wrote " + Q(op.value));
        }
      }
      if (op.outcome == Outcome::kUnknown) ++unknown;
    }
    if (!final_scan_) return;
    const auto it = final_.find(key);
    const std::string value = it == final_.end() ? "0" : it->second;
    long long n = -1;
    try {
      std::size_t used = 0;
      n = std::stoll(value, &used);
      if (used != value.size()) n = -1;
    } catch (const std::exception&) {
    }
    if (n < 0) {
      Add(ViolationKind::kCounter, key, value, "counter " + Q(key) + " ends as " + Q(value) + ", not a count");
    } else if (n < acked || n > acked + unknown) {
      Add(ViolationKind::kCounter, key, value,
          "counter " + Q(key) + " ends at " + Q(value) + ", expected " + std::to_string(acked) +
              " acknowledged increments" +
              (unknown > 0 ? " (+ up to " + std::to_string(unknown) + " of unknown outcome)" : ""));
    }
  }

  // Keys the workload never touched (the proxy's own, say) are not the checker's business in logs.
  bool IsRegisterKey(const std::string& key) const { return register_keys_.contains(key); }

  // R5 on each shard's own log, and phantom puts in it.
  void CheckShardLogs() {
    for (const auto& [space, events] : shard_logs_) {
      std::map<std::string, std::int64_t> revision_of_value;
      for (const auto& e : events) {
        if (e.type != EventType::kPut || !IsRegisterKey(e.key)) continue;
        const auto [it, fresh] = revision_of_value.emplace(e.value, e.mod_revision);
        if (!fresh) {
          Add(ViolationKind::kDuplicate, e.key, e.value,
              "value " + Q(e.value) + " put twice under " + Q(e.key) + " in shard " + std::to_string(space) +
                  " (revisions " + std::to_string(it->second) + " and " + std::to_string(e.mod_revision) +
                  "): applied twice");
        }
        const auto put = put_by_value_.find(e.value);
        if (put == put_by_value_.end() || put->second->key != e.key || put->second->outcome == Outcome::kFailed) {
          Add(ViolationKind::kPhantom, e.key, e.value,
              "shard " + std::to_string(space) + " put " + Q(e.key) + " = " + Q(e.value) + " at revision " +
                  std::to_string(e.mod_revision) + ", which no client wrote");
        }
      }
    }
  }

  static std::string Describe(const WatchEvent& e) {
    return std::string(e.type == EventType::kPut ? "PUT " : "DELETE ") + Q(e.key) +
           (e.type == EventType::kPut ? " = " + Q(e.value) : "") + " at revision " + std::to_string(e.mod_revision) +
           " of shard " + std::to_string(e.space);
  }

  void CheckWatch(const WatchLog& w) {
    const std::string who = "watcher " + std::to_string(w.watcher);
    if (w.end == WatchEnd::kCompacted && w.compact_revision <= 0) {
      Add(ViolationKind::kWatchCancel, w.key, "",
          who + " (range " + Q(w.key) + ".." + Q(w.range_end) +
              ") was canceled as compacted without a compact_revision");
    }
    std::map<int, std::int64_t> last;   // per space
    std::map<int, std::int64_t> first;  // per space
    std::set<std::tuple<int, std::int64_t, std::string>> seen;
    std::map<std::string, const WatchEvent*> put_values;
    for (const auto& e : w.events) {
      const auto id = std::make_tuple(e.space, e.mod_revision, e.key);
      if (seen.contains(id)) {
        Add(ViolationKind::kWatchDuplicate, e.key, e.value, who + " got " + Describe(e) + " twice");
        continue;
      }
      seen.insert(id);
      if (last.contains(e.space) && e.mod_revision < last[e.space]) {
        Add(ViolationKind::kWatchOrder, e.key, e.value,
            who + " got " + Describe(e) + " after revision " + std::to_string(last[e.space]) + ": out of order");
      }
      last[e.space] = std::max(last[e.space], e.mod_revision);
      first.emplace(e.space, e.mod_revision);
      if (e.type == EventType::kPut && IsRegisterKey(e.key)) {
        const auto [it, fresh] = put_values.emplace(e.value, &e);
        if (!fresh) {
          Add(ViolationKind::kDuplicate, e.key, e.value,
              who + " got value " + Q(e.value) + " twice: " + Describe(*it->second) + " and " + Describe(e));
        }
      }
      CheckEventInLog(who, e);
    }
    if (w.end == WatchEnd::kCompacted) return;  // a compacted watcher may miss events: clients re-list
    std::set<int> spaces;
    for (const auto& [space, rev] : last) spaces.insert(space);
    for (const auto& [space, rev] : w.synced_through) spaces.insert(space);
    for (const int space : spaces) {
      const auto lower = w.start_revision > 0    ? std::optional(w.start_revision)
                         : first.contains(space) ? std::optional(first[space])
                                                 : std::nullopt;
      const auto sync = w.synced_through.find(space);
      const auto horizon = sync != w.synced_through.end() ? std::optional(sync->second)
                           : last.contains(space)         ? std::optional(last[space])
                                                          : std::nullopt;
      if (lower && horizon) CheckGaps(w, who, space, *lower, *horizon, seen);
    }
  }

  // W2.
  void CheckEventInLog(const std::string& who, const WatchEvent& e) {
    const auto log = shard_logs_.find(e.space);
    if (log == shard_logs_.end()) return;
    for (const auto& l : log->second) {
      if (l.mod_revision == e.mod_revision && l.key == e.key) {
        if (l.type == e.type && (e.type == EventType::kDelete || l.value == e.value)) return;
        break;
      }
    }
    Add(ViolationKind::kPhantom, e.key, e.value, who + " got " + Describe(e) + ", which is not in the shard's log");
  }

  // W3.
  void CheckGaps(const WatchLog& w, const std::string& who, int space, std::int64_t lower, std::int64_t horizon,
                 const std::set<std::tuple<int, std::int64_t, std::string>>& seen) {
    const auto log = shard_logs_.find(space);
    if (log == shard_logs_.end()) return;
    for (const auto& l : log->second) {
      if (l.mod_revision < lower || l.mod_revision > horizon || !InRange(l.key, w.key, w.range_end)) continue;
      if (!seen.contains(std::make_tuple(space, l.mod_revision, l.key))) {
        Add(ViolationKind::kWatchGap, l.key, l.value,
            who + " (range " + Q(w.key) + ".." + Q(w.range_end) + ") missed " + Describe(l) + " (checked revisions " +
                std::to_string(lower) + ".." + std::to_string(horizon) + ")");
      }
    }
  }

  const std::vector<Operation> ops_;
  const std::vector<WatchLog> watches_;
  const std::optional<std::vector<std::pair<std::string, std::string>>> final_scan_;
  const std::map<int, std::vector<WatchEvent>> shard_logs_;

  std::set<std::string> counter_keys_;
  std::set<std::string> register_keys_;
  std::unordered_map<std::string, const Operation*> put_by_value_;
  std::map<std::string, std::vector<Write>> writes_;  // register keys: kOk and kUnknown writes
  std::map<std::string, std::vector<const Operation*>> gets_;
  std::map<std::string, std::string> final_;
  HistoryReport report_;
};

}  // namespace

HistoryReport CheckHistory(const History& history) { return Checker(history).Run(); }

}  // namespace esp::test
