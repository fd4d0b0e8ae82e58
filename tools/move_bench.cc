// esp-move-bench: what a range move costs (issue 16; scripts/bench-move.sh, docs/BENCHMARKS.md
// "Range moves"). Against a running deployment (a meta etcd, shard etcds, proxies following the
// meta store), it
//   - optionally loads --load-keys keys of --value-size bytes into the moving range, directly on
//     the shard owning it (Txns of 128 puts, as etcd's default --max-txn-ops allows);
//   - starts --writers-per-proxy writers per proxy, each putting its own key in the moving range
//     one put after the other (a continuous writer), recording each put's send and answer times;
//   - runs --moves moves of [--range-start, --range-end) back and forth between the two shards of
//     --shards, as an operator does (`etcd-sharding-proxy reshard move ...`, a child process whose
//     own CPU time wait4() returns), --settle-ms apart;
//   - watches the meta store meanwhile: the mover's progress (steps, keys copied, its own
//     tail_after_fence_ms), the map's versions (the switch) and the proxies' registrations (the
//     map version each serves), each stamped when the tool received it; at the progress steps
//     "acked" and "copied" it reads the CPU ticks of the --pid processes (/proc/<pid>/stat).
// Per move it reports the longest gap between consecutive acknowledged puts of any writer while
// the move ran (the write pause), the gap around the cut-over and where its time went (tail after
// the fence, the switch's CAS, the new map reaching the proxies, the held put's retry), copy speed
// and CPU; then p50/p99/max over moves. One JSON object on stdout; --log-dir keeps the movers'
// output. Exit 1 when a move or a put failed.
#include <grpcpp/grpcpp.h>
#include <spawn.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "etcdserverpb/rpc.grpc.pb.h"
#include "meta/map_store.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::ordered_json;
namespace pb = etcdserverpb;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto index = static_cast<std::size_t>(p * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(index, values.size() - 1)];
}

Json Summary(const std::vector<double>& values) {
  if (values.empty()) return Json();
  return Json{{"p50", Percentile(values, 0.5)}, {"p99", Percentile(values, 0.99)},
              {"max", *std::max_element(values.begin(), values.end())}};
}

// utime+stime+cutime+cstime of a process, in clock ticks.
std::int64_t CpuTicks(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream fields(text.substr(close + 2));
  std::string f;
  std::int64_t sum = 0;
  for (int i = 3; fields >> f; ++i) {  // field 3 is the state
    if (i >= 14 && i <= 17) sum += std::stoll(f);
    if (i == 17) break;
  }
  return sum;
}

double TicksToSeconds(std::int64_t ticks) { return static_cast<double>(ticks) / static_cast<double>(sysconf(_SC_CLK_TCK)); }

struct Sample {
  Clock::time_point invoke;
  Clock::time_point complete;
  bool ok = false;
};

// One continuous writer: its own channel to one proxy, one put at a time to its own key.
class Writer {
 public:
  Writer(const std::string& proxy, std::string key, std::size_t value_size)
      : proxy_(proxy), key_(std::move(key)), value_(value_size, 'w') {
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);  // its own connection
    kv_ = pb::KV::NewStub(grpc::CreateCustomChannel(proxy, grpc::InsecureChannelCredentials(), args));
    samples_.reserve(1 << 20);
  }
  void Start() {
    thread_ = std::thread([this] {
      std::uint64_t n = 0;
      while (!stop_) {
        pb::PutRequest request;
        request.set_key(key_);
        value_.replace(0, 16, std::to_string(++n) + std::string(16, ' '), 0, 16);
        request.set_value(value_);
        pb::PutResponse response;
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(15));
        Sample s;
        s.invoke = Clock::now();
        const auto status = kv_->Put(&context, request, &response);
        s.complete = Clock::now();
        s.ok = status.ok();
        if (!status.ok()) {
          const std::lock_guard lock(mu_);
          errors_.push_back(std::to_string(status.error_code()) + " " + status.error_message());
        }
        const std::lock_guard lock(mu_);
        samples_.push_back(s);
      }
    });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  const std::vector<Sample>& samples() const { return samples_; }
  const std::vector<std::string>& errors() const { return errors_; }
  const std::string& proxy() const { return proxy_; }

 private:
  std::string proxy_;
  std::string key_;
  std::string value_;
  std::unique_ptr<pb::KV::Stub> kv_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::vector<Sample> samples_;
  std::vector<std::string> errors_;
};

// What the meta store said, stamped on arrival.
struct MetaEvent {
  Clock::time_point at;
  enum Kind { kProgress, kMap, kProxy } kind;
  Json progress;                  // kProgress
  std::int64_t map_version = 0;   // kMap: the map's version; kProxy: the version it serves
  std::string move_state;         // kMap: "copying", "cleanup" or "" (no move)
  std::string proxy;              // kProxy
  std::map<int, std::int64_t> ticks;  // kProgress "acked"/"copied": CPU ticks of the --pid processes
};

class MetaWatch {
 public:
  MetaWatch(esp::meta::EtcdClient& client, esp::meta::MapStore& store, std::vector<int> pids)
      : client_(client), store_(store), pids_(std::move(pids)) {}

  bool Start() {
    pb::RangeRequest probe;
    probe.set_key(store_.MapKey());
    pb::RangeResponse answer;
    if (!client_.Range(probe, &answer).ok()) return false;
    stream_ = client_.Watch(context_);
    if (!stream_) return false;
    pb::WatchRequest create;
    create.mutable_create_request()->set_key(store_.prefix());
    create.mutable_create_request()->set_range_end(esp::meta::PrefixEnd(store_.prefix()));
    create.mutable_create_request()->set_start_revision(answer.header().revision() + 1);
    pb::WatchResponse created;
    if (!stream_->Write(create) || !stream_->Read(&created) || !created.created()) return false;
    thread_ = std::thread([this] { Run(); });
    return true;
  }
  void Stop() {
    context_.TryCancel();
    if (thread_.joinable()) thread_.join();
  }
  std::vector<MetaEvent> Events(Clock::time_point from, Clock::time_point to) {
    const std::lock_guard lock(mu_);
    std::vector<MetaEvent> out;
    for (const auto& e : events_) {
      if (e.at >= from && e.at <= to) out.push_back(e);
    }
    return out;
  }

 private:
  void Run() {
    pb::WatchResponse response;
    while (stream_->Read(&response)) {
      const auto at = Clock::now();
      for (const auto& event : response.events()) {
        if (event.type() != mvccpb::Event::PUT) continue;
        const auto& key = event.kv().key();
        MetaEvent e{at, MetaEvent::kProgress, {}, 0, {}, {}, {}};
        if (key == store_.MoveProgressKey()) {
          e.progress = Json::parse(event.kv().value(), nullptr, false);
          const std::string step = e.progress.is_object() ? e.progress.value("step", "") : "";
          if (step == "acked" || step == "copied") {
            for (const int pid : pids_) e.ticks[pid] = CpuTicks(pid);
          }
        } else if (key == store_.MapKey()) {
          e.kind = MetaEvent::kMap;
          try {
            const auto doc = esp::meta::MapDocument::FromJson(event.kv().value());
            e.map_version = doc.version;
            e.move_state = doc.move ? doc.move->state : "";
          } catch (const std::exception&) {
            continue;
          }
        } else if (key.starts_with(store_.ProxiesPrefix())) {
          e.kind = MetaEvent::kProxy;
          const auto record = esp::meta::ProxyRecord::FromJson(event.kv().value());
          if (!record) continue;
          e.proxy = record->name;
          e.map_version = record->map_version;
        } else {
          continue;
        }
        const std::lock_guard lock(mu_);
        events_.push_back(std::move(e));
      }
    }
  }

  esp::meta::EtcdClient& client_;
  esp::meta::MapStore& store_;
  std::vector<int> pids_;
  grpc::ClientContext context_;
  std::unique_ptr<esp::meta::WatchStream> stream_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<MetaEvent> events_;
};

struct MoveRun {
  std::string from, to;
  Clock::time_point launched, exited;
  int exit_code = -1;
  double mover_cpu_s = 0;
  std::map<int, std::int64_t> ticks_before, ticks_after;
};

// `binary reshard move ...` as a child; its output to `log`. Returns the exit code and fills CPU.
int RunMover(const std::string& binary, const std::vector<std::string>& args, const std::string& log, double* cpu_s) {
  std::vector<std::string> argv{binary};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, binary.c_str(), &actions, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) return -1;
  int status = 0;
  rusage usage{};
  if (wait4(pid, &status, 0, &usage) != pid) return -1;
  *cpu_s = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
           static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"times range moves under a continuous writer (docs/BENCHMARKS.md, \"Range moves\")"};
  std::vector<std::string> meta_endpoints, proxies, shards, pid_specs;
  std::string binary, range_start = "m", range_end = "n", log_dir = "/tmp";
  int moves = 20, writers_per_proxy = 1, settle_ms = 500, lock_ttl = 5;
  std::int64_t load_keys = 0;
  std::size_t value_size = 100;
  app.add_option("--meta-endpoints", meta_endpoints, "meta store members")->required()->delimiter(',');
  app.add_option("--binary", binary, "the etcd-sharding-proxy binary (runs `reshard move`)")->required();
  app.add_option("--proxies", proxies, "proxy client addresses the writers use")->delimiter(',');
  app.add_option("--shards", shards, "the two shards the range moves between")->required()->delimiter(',')->expected(2);
  app.add_option("--pid", pid_specs, "NAME=PID: a shard's etcd process, for CPU")->delimiter(',');
  app.add_option("--range-start", range_start)->capture_default_str();
  app.add_option("--range-end", range_end)->capture_default_str();
  app.add_option("--moves", moves)->capture_default_str();
  app.add_option("--writers-per-proxy", writers_per_proxy)->capture_default_str();
  app.add_option("--settle-ms", settle_ms, "pause between moves")->capture_default_str();
  app.add_option("--load-keys", load_keys, "keys loaded into the range before the first move")->capture_default_str();
  app.add_option("--value-size", value_size, "bytes per loaded and written value")->capture_default_str();
  app.add_option("--lock-ttl", lock_ttl, "the mover's --lock-ttl")->capture_default_str();
  app.add_option("--log-dir", log_dir, "where mover-<n>.log go")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  std::map<std::string, int> pid_of;
  std::vector<int> pids;
  for (const auto& spec : pid_specs) {
    const auto eq = spec.find('=');
    if (eq == std::string::npos) {
      std::cerr << "--pid takes NAME=PID\n";
      return 2;
    }
    pid_of[spec.substr(0, eq)] = std::stoi(spec.substr(eq + 1));
    pids.push_back(pid_of[spec.substr(0, eq)]);
  }

  esp::meta::EtcdClient meta(esp::meta::EtcdClientOptions{.endpoints = meta_endpoints});
  esp::meta::MapStore store(meta);
  const auto map = store.Load();
  if (!map) {
    std::cerr << "no map in the meta store\n";
    return 1;
  }
  const auto owner_of = [&](const esp::meta::MapDocument& doc) {
    for (const auto& r : doc.ranges) {
      if (r.start <= range_start && (r.end.empty() || range_start < r.end)) return r.shard;
    }
    return std::string();
  };
  std::string owner = owner_of(map->doc);
  if (owner != shards[0] && owner != shards[1]) {
    std::cerr << "the range belongs to " << owner << ", not to one of --shards\n";
    return 1;
  }

  // Load: directly on the owner, Txns of 128 puts.
  Json load_report;
  if (load_keys > 0) {
    const auto* shard = map->doc.FindShard(owner);
    esp::meta::EtcdClient direct(esp::meta::EtcdClientOptions{.endpoints = shard->endpoints, .tls = shard->tls,
                                                              .call_timeout = std::chrono::seconds(30)});
    const auto start = Clock::now();
    const std::string value(value_size, 'v');
    char key[64];
    for (std::int64_t i = 0; i < load_keys;) {
      pb::TxnRequest txn;
      for (int n = 0; n < 128 && i < load_keys; ++n, ++i) {
        std::snprintf(key, sizeof key, "/load/%08lld", static_cast<long long>(i));
        auto* put = txn.add_success()->mutable_request_put();
        put->set_key(range_start + key);
        put->set_value(value);
      }
      pb::TxnResponse answer;
      const auto status = direct.Txn(txn, &answer);
      if (!status.ok()) {
        std::cerr << "loading: " << status.error_message() << "\n";
        return 1;
      }
    }
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    load_report = Json{{"keys", load_keys}, {"value_bytes", value_size}, {"seconds", s}, {"keys_per_s", load_keys / s}};
    std::cerr << "loaded " << load_keys << " keys into " << owner << " in " << s << " s\n";
  }

  MetaWatch watch(meta, store, pids);
  if (!watch.Start()) {
    std::cerr << "cannot watch the meta store\n";
    return 1;
  }
  std::vector<std::unique_ptr<Writer>> writers;
  for (std::size_t p = 0; p < proxies.size(); ++p) {
    for (int w = 0; w < writers_per_proxy; ++w) {
      writers.push_back(std::make_unique<Writer>(proxies[p], range_start + "/w/" + std::to_string(p) + "-" + std::to_string(w),
                                                 value_size));
      writers.back()->Start();
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(settle_ms));

  std::vector<MoveRun> runs;
  bool failed = false;
  for (int i = 0; i < moves; ++i) {
    MoveRun run;
    run.from = owner;
    run.to = owner == shards[0] ? shards[1] : shards[0];
    for (const int pid : pids) run.ticks_before[pid] = CpuTicks(pid);
    run.launched = Clock::now();
    run.exit_code = RunMover(binary,
                             {"reshard", "move", "--range", range_start, range_end, "--to", run.to, "--meta-endpoints",
                              meta_endpoints[0], "--lock-ttl", std::to_string(lock_ttl)},
                             log_dir + "/mover-" + std::to_string(i) + ".log", &run.mover_cpu_s);
    run.exited = Clock::now();
    for (const int pid : pids) run.ticks_after[pid] = CpuTicks(pid);
    runs.push_back(run);
    std::cerr << "move " << i << ": " << run.from << " -> " << run.to << " exit " << run.exit_code << " in "
              << Ms(run.exited - run.launched) << " ms\n";
    if (run.exit_code != 0) {
      failed = true;
      break;
    }
    owner = run.to;
    std::this_thread::sleep_for(std::chrono::milliseconds(settle_ms));
  }
  for (auto& w : writers) w->Stop();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  watch.Stop();

  // Analysis, move by move.
  Json per_move = Json::array();
  std::vector<double> pauses, cutover_gaps, max_latencies, walls, tails, switch_ms, propagation_ms, resume_ms,
      before_fence_ms, copy_keys_per_s, copy_mb_per_s, move_keys_per_s, move_mb_per_s, mover_cpu, source_cpu,
      source_cpu_copy, target_cpu, copy_s;
  std::int64_t put_errors = 0;
  for (const auto& w : writers) put_errors += static_cast<std::int64_t>(w->errors().size());
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const auto& run = runs[i];
    const auto window_end = run.exited + std::chrono::milliseconds(settle_ms / 2);
    const auto events = watch.Events(run.launched, window_end);
    std::optional<Clock::time_point> acked_at, copied_at, fenced_at, switch_at, proxies_at, start_map_at, done_map_at;
    std::map<int, std::int64_t> ticks_acked, ticks_copied;
    double tail_after_fence = -1;
    std::int64_t keys = 0, bytes = 0, switch_version = 0;
    for (const auto& e : events) {
      if (e.kind == MetaEvent::kProgress && e.progress.is_object()) {
        const std::string step = e.progress.value("step", "");
        if (step == "acked" && !acked_at) acked_at = e.at, ticks_acked = e.ticks;
        if (step == "copied" && !copied_at) {
          copied_at = e.at;
          ticks_copied = e.ticks;
          keys = e.progress.value("keys_copied", 0);
          bytes = e.progress.value("bytes_copied", 0);
        }
        if (step == "fenced" && !fenced_at) {
          fenced_at = e.at;
          tail_after_fence = e.progress.value("tail_after_fence_ms", -1.0);
        }
      } else if (e.kind == MetaEvent::kMap && e.move_state == "cleanup" && !switch_at) {
        switch_at = e.at;
        switch_version = e.map_version;
      } else if (e.kind == MetaEvent::kMap && e.move_state == "copying" && !start_map_at) {
        start_map_at = e.at;
      } else if (e.kind == MetaEvent::kMap && e.move_state.empty() && switch_at && !done_map_at) {
        done_map_at = e.at;
      }
    }
    if (switch_at) {
      std::map<std::string, Clock::time_point> served;
      for (const auto& e : events) {
        if (e.kind == MetaEvent::kProxy && e.map_version >= switch_version && !served.contains(e.proxy)) served[e.proxy] = e.at;
      }
      for (const auto& [name, at] : served) proxies_at = std::max(proxies_at.value_or(at), at);
    }
    // The fence's write was answered tail_after_fence_ms before the "fenced" progress was written.
    std::optional<Clock::time_point> fence_at;
    if (fenced_at && tail_after_fence >= 0) {
      fence_at = *fenced_at - std::chrono::microseconds(static_cast<std::int64_t>(tail_after_fence * 1000));
    }
    // Writers: the longest gap between consecutive acknowledged puts while the move ran, and the
    // gap spanning the fence.
    double max_gap = 0, max_latency = 0, cut_gap = 0;
    std::optional<Clock::time_point> max_gap_end;
    std::optional<Clock::time_point> cut_gap_start, cut_gap_end;
    std::int64_t puts = 0;
    for (const auto& w : writers) {
      std::optional<Clock::time_point> previous;
      for (const auto& s : w->samples()) {
        if (!s.ok) continue;
        if (s.complete < run.launched) {
          previous = s.complete;
          continue;
        }
        if (s.invoke <= run.exited) {
          max_latency = std::max(max_latency, Ms(s.complete - s.invoke));
          ++puts;
        }
        if (previous) {
          const double gap = Ms(s.complete - *previous);
          if (gap > max_gap) max_gap = gap, max_gap_end = s.complete;
          if (fence_at && *previous <= *fence_at && s.complete >= *fence_at && gap > cut_gap) {
            cut_gap = gap;
            cut_gap_start = *previous;
            cut_gap_end = s.complete;
          }
        }
        previous = s.complete;
        if (s.complete > run.exited) break;  // the gap that spans the mover's exit is the last one
      }
    }
    const double wall = Ms(run.exited - run.launched);
    Json m{{"move", i},          {"from", run.from},      {"to", run.to},           {"exit", run.exit_code},
           {"wall_ms", wall},    {"puts", puts},          {"max_gap_ms", max_gap},  {"cutover_gap_ms", cut_gap},
           {"max_put_latency_ms", max_latency}, {"mover_cpu_s", run.mover_cpu_s}};
    // When things happened, in ms after the mover was started: where the longest gap ended,
    // against the map's three changes (start, switch, done) and the fence.
    const auto at = [&](const std::optional<Clock::time_point>& t) { return t ? Json(Ms(*t - run.launched)) : Json(); };
    m["timeline_ms"] = Json{{"map_start", at(start_map_at)}, {"fence", at(fence_at)},  {"map_switch", at(switch_at)},
                            {"map_done", at(done_map_at)},   {"max_gap_end", at(max_gap_end)}};
    walls.push_back(wall);
    mover_cpu.push_back(run.mover_cpu_s);
    if (!writers.empty()) {
      pauses.push_back(max_gap);
      cutover_gaps.push_back(cut_gap);
      max_latencies.push_back(max_latency);
    }
    if (tail_after_fence >= 0) {
      m["tail_after_fence_ms"] = tail_after_fence;
      tails.push_back(tail_after_fence);
    }
    if (fenced_at && switch_at) switch_ms.push_back(Ms(*switch_at - *fenced_at)), m["fenced_to_map_switch_ms"] = switch_ms.back();
    if (switch_at && proxies_at) {
      propagation_ms.push_back(Ms(*proxies_at - *switch_at));
      m["map_switch_to_all_proxies_ms"] = propagation_ms.back();
    }
    if (cut_gap_end && switch_at) resume_ms.push_back(Ms(*cut_gap_end - *switch_at)), m["map_switch_to_resumed_put_ms"] = resume_ms.back();
    if (cut_gap_start && fence_at) {
      before_fence_ms.push_back(Ms(*fence_at - *cut_gap_start));
      m["last_ack_to_fence_ms"] = before_fence_ms.back();
    }
    if (acked_at && copied_at) {
      const double s = std::chrono::duration<double>(*copied_at - *acked_at).count();
      m["keys_copied"] = keys;
      m["bytes_copied"] = bytes;
      m["copy_ms"] = s * 1000;
      copy_s.push_back(s);
      if (keys > 0 && s > 0) {
        copy_keys_per_s.push_back(static_cast<double>(keys) / s);
        copy_mb_per_s.push_back(static_cast<double>(bytes) / s / 1e6);
        move_keys_per_s.push_back(static_cast<double>(keys) / (wall / 1000));
        move_mb_per_s.push_back(static_cast<double>(bytes) / (wall / 1000) / 1e6);
      }
    }
    if (pid_of.contains(run.from)) {
      const int pid = pid_of[run.from];
      source_cpu.push_back(TicksToSeconds(run.ticks_after.at(pid) - run.ticks_before.at(pid)));
      m["source_cpu_s"] = source_cpu.back();
      if (ticks_acked.contains(pid) && ticks_copied.contains(pid)) {
        source_cpu_copy.push_back(TicksToSeconds(ticks_copied[pid] - ticks_acked[pid]));
        m["source_cpu_copy_s"] = source_cpu_copy.back();
      }
    }
    if (pid_of.contains(run.to)) {
      const int pid = pid_of[run.to];
      target_cpu.push_back(TicksToSeconds(run.ticks_after.at(pid) - run.ticks_before.at(pid)));
      m["target_cpu_s"] = target_cpu.back();
    }
    per_move.push_back(m);
  }
  Json out{{"moves", runs.size()},
           {"proxies", proxies.size()},
           {"writers", writers.size()},
           {"load", load_report},
           {"put_errors", put_errors},
           {"pause_ms", Summary(pauses)},
           {"cutover_gap_ms", Summary(cutover_gaps)},
           {"max_put_latency_ms", Summary(max_latencies)},
           {"wall_ms", Summary(walls)},
           {"last_ack_to_fence_ms", Summary(before_fence_ms)},
           {"tail_after_fence_ms", Summary(tails)},
           {"fenced_to_map_switch_ms", Summary(switch_ms)},
           {"map_switch_to_all_proxies_ms", Summary(propagation_ms)},
           {"map_switch_to_resumed_put_ms", Summary(resume_ms)},
           {"copy_s", Summary(copy_s)},
           {"copy_keys_per_s", Summary(copy_keys_per_s)},
           {"copy_mb_per_s", Summary(copy_mb_per_s)},
           {"move_keys_per_s", Summary(move_keys_per_s)},
           {"move_mb_per_s", Summary(move_mb_per_s)},
           {"mover_cpu_s", Summary(mover_cpu)},
           {"source_cpu_s", Summary(source_cpu)},
           {"source_cpu_copy_s", Summary(source_cpu_copy)},
           {"target_cpu_s", Summary(target_cpu)},
           {"per_move", per_move}};
  for (const auto& w : writers) {
    for (const auto& e : w->errors()) std::cerr << "put error via " << w->proxy() << ": " << e << "\n";
  }
  std::cout << out.dump() << "\n";
  return failed || put_errors > 0 ? 1 : 0;
}
