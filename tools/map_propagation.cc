// esp-map-propagation: how long a shard map change takes to reach every proxy (docs/BENCHMARKS.md).
//
// Each round writes the current map again as a new version (same layout, a new `change` text)
// and watches the proxies' registrations in the meta store until every expected proxy reports
// that it serves the new version. A proxy publishes the version only after it has swapped its
// Topology, so the time measured (from just before the write is sent to the last proxy's
// registration event) bounds from above the time until every proxy serves the change.
// Prints one JSON object: rounds, p50/p90/p99/max in milliseconds.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>

#include "meta/map_store.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace pb = etcdserverpb;

double Percentile(std::vector<double> values, double p) {
  std::sort(values.begin(), values.end());
  const auto index = static_cast<std::size_t>(p * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(index, values.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"measures the time from a shard map change to every proxy serving it"};
  std::vector<std::string> endpoints;
  std::string prefix = esp::meta::kDefaultPrefix;
  int rounds = 100;
  std::size_t proxies = 3;
  app.add_option("--meta-endpoints", endpoints, "meta store members")->required()->delimiter(',');
  app.add_option("--meta-prefix", prefix, "key prefix of the map")->capture_default_str();
  app.add_option("--rounds", rounds, "map changes to time")->capture_default_str();
  app.add_option("--proxies", proxies, "live proxies expected to catch up each round")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  esp::meta::EtcdClient client(esp::meta::EtcdClientOptions{.endpoints = endpoints});
  esp::meta::MapStore store(client, prefix);
  grpc::ClientContext watch_context;
  // Bounded: a proxy that never catches up ends the run instead of hanging it.
  watch_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30 + 5 * rounds));
  auto watch = client.Watch(watch_context);
  pb::WatchRequest create;
  create.mutable_create_request()->set_key(store.ProxiesPrefix());
  create.mutable_create_request()->set_range_end(esp::meta::PrefixEnd(store.ProxiesPrefix()));
  pb::WatchResponse response;
  if (!watch || !watch->Write(create) || !watch->Read(&response) || !response.created()) {
    std::cerr << "cannot watch " << store.ProxiesPrefix() << "\n";
    return 1;
  }
  std::vector<double> millis;
  for (int round = 0; round < rounds; ++round) {
    auto read = store.Load();
    if (!read) {
      std::cerr << "no map in the meta store\n";
      return 1;
    }
    auto next = read->doc;
    next.change = "propagation probe " + std::to_string(round);
    const auto start = Clock::now();
    const auto written = store.CompareAndSwap(read, next);
    if (written.outcome != esp::meta::CasOutcome::kWritten) {
      std::cerr << "the map changed meanwhile: run with no other operator\n";
      return 1;
    }
    std::map<std::string, std::int64_t> served;
    for (const auto& p : store.Proxies()) served[p.name] = p.map_version;
    const auto caught_up = [&] {
      std::size_t n = 0;
      for (const auto& [name, version] : served) n += version >= written.current_version ? 1 : 0;
      return n >= proxies;
    };
    while (!caught_up()) {
      if (!watch->Read(&response)) {
        std::cerr << "the watch ended\n";
        return 1;
      }
      for (const auto& event : response.events()) {
        if (event.type() != mvccpb::Event::PUT) continue;
        if (auto record = esp::meta::ProxyRecord::FromJson(event.kv().value())) served[record->name] = record->map_version;
      }
    }
    millis.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  watch_context.TryCancel();
  nlohmann::ordered_json out{{"rounds", millis.size()},
                             {"proxies", proxies},
                             {"p50_ms", Percentile(millis, 0.5)},
                             {"p90_ms", Percentile(millis, 0.9)},
                             {"p99_ms", Percentile(millis, 0.99)},
                             {"max_ms", *std::max_element(millis.begin(), millis.end())}};
  std::cout << out.dump() << "\n";
  return 0;
}
