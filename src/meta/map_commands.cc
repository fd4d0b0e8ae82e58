#include "meta/map_commands.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <iomanip>
#include <set>

#include "common/base64.h"
#include "shard/kubernetes_layout.h"

namespace esp::meta {
namespace {

using Json = nlohmann::ordered_json;

std::string Printable(const std::string& key, bool is_end) {
  if (key.empty()) return is_end ? "(end of keyspace)" : "\"\"";
  return "\"" + PrintableKey(key) + "\"";
}

// Reads the current map; a missing map is a refusal for every command but init.
std::optional<StoredMap> LoadOrRefuse(MapStore& store, CommandIo io) {
  auto stored = store.Load();
  if (!stored) {
    io.err << "no shard map under '" << store.prefix() << "' in the meta store: write one with `map init`\n";
  }
  return stored;
}

int Write(MapStore& store, const std::optional<StoredMap>& read, MapDocument next, CommandIo io) {
  const auto result = store.CompareAndSwap(read, std::move(next));
  if (result.outcome == CasOutcome::kConflict) {
    io.err << "the shard map changed meanwhile (it is now at version " << result.current_version
           << "; this command read version " << (read ? read->doc.version : 0)
           << "): nothing was written; look at `map show` and run the command again\n";
    return 1;
  }
  io.out << "shard map version " << result.current_version << " written\n";
  return 0;
}

Json ProxiesJson(const std::vector<ProxyRecord>& proxies) {
  auto out = Json::array();
  for (const auto& p : proxies) {
    out.push_back({{"name", p.name},
                   {"member_id", std::to_string(p.member_id)},
                   {"client_urls", p.client_urls},
                   {"map_version", p.map_version},
                   {"started_at", p.started_at}});
  }
  return out;
}

Json DocumentJson(const MapDocument& doc) {
  Json j{{"version", doc.version},
         {"cluster_id", std::to_string(doc.cluster_id)},
         {"change", doc.change},
         {"changed_at", doc.changed_at}};
  j["ranges"] = Json::array();
  for (const auto& r : doc.ranges) {
    j["ranges"].push_back({{"start", PrintableKey(r.start)},
                           {"end", PrintableKey(r.end)},
                           {"start_base64", EncodeBase64(r.start)},
                           {"end_base64", EncodeBase64(r.end)},
                           {"shard", r.shard}});
  }
  j["shards"] = Json::array();
  for (const auto& s : doc.shards) {
    Json shard{{"name", s.name}, {"endpoints", s.endpoints}};
    shard["owns_ranges"] = std::count_if(doc.ranges.begin(), doc.ranges.end(),
                                         [&](const MapRange& r) { return r.shard == s.name; });
    if (s.tls) shard["tls"] = {{"ca_file", s.tls->ca_file}, {"cert_file", s.tls->cert_file},
                               {"key_file", s.tls->key_file}, {"server_name", s.tls->server_name}};
    j["shards"].push_back(std::move(shard));
  }
  return j;
}

std::string Join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
  return out;
}

// A cluster is one shard: the same member in two shards would make two "clusters" one.
const ShardConfig* SharesAnEndpoint(const MapDocument& doc, const std::vector<std::string>& endpoints,
                                    const std::string& except) {
  for (const auto& s : doc.shards) {
    if (s.name == except) continue;
    for (const auto& e : endpoints) {
      if (std::find(s.endpoints.begin(), s.endpoints.end(), e) != s.endpoints.end()) return &s;
    }
  }
  return nullptr;
}

std::optional<std::string> CheckEndpoints(const std::vector<std::string>& endpoints) {
  if (endpoints.empty()) return "no endpoint given (--endpoints host:port,...)";
  std::set<std::string> seen;
  for (const auto& e : endpoints) {
    if (e.empty()) return "empty endpoint address";
    if (e.find(':') == std::string::npos) return "endpoint '" + e + "' has no port (host:port)";
    if (!seen.insert(e).second) return "endpoint '" + e + "' given twice";
  }
  return std::nullopt;
}

// The cluster id a shard's members answer with, or nullopt when none answers.
std::optional<std::uint64_t> ClusterIdOf(const ShardConfig& shard) {
  EtcdClientOptions options;
  options.endpoints = shard.endpoints;
  options.tls = shard.tls;
  options.call_timeout = std::chrono::milliseconds(3000);
  EtcdClient client(options);
  etcdserverpb::StatusResponse status;
  if (!client.Status(&status).ok()) return std::nullopt;
  return status.header().cluster_id();
}

}  // namespace

std::string ShowJson(const MapDocument& doc, const std::vector<ProxyRecord>& proxies) {
  Json j = DocumentJson(doc);
  j["proxies"] = ProxiesJson(proxies);
  return j.dump(2) + "\n";
}

int MapInit(MapStore& store, const Config& layout, bool force, CommandIo io) {
  const auto read = store.Load();
  if (read && !force) {
    io.err << "the meta store already holds a shard map (version " << read->doc.version
           << "): nothing was written; `map init --force` replaces it (only with no proxy serving, and with "
              "the same data on the same clusters: a new layout does not move keys)\n";
    return 1;
  }
  MapDocument doc = MapDocument::FromConfig(layout);
  doc.cluster_id = read ? read->doc.cluster_id : NewClusterId();
  doc.change = read ? "init --force" : "init";
  for (const auto& warning : KubernetesLayoutWarnings(ShardMap(doc.ShardNames(), doc.OwnedRanges()))) {
    io.err << "warning: " << warning << "\n";
  }
  return Write(store, read, std::move(doc), io);
}

int MapShow(MapStore& store, OutputFormat format, CommandIo io) {
  const auto read = LoadOrRefuse(store, io);
  if (!read) return 1;
  const auto proxies = store.Proxies();
  const auto& doc = read->doc;
  if (format == OutputFormat::kJson) {
    io.out << ShowJson(doc, proxies);
    return 0;
  }
  io.out << "shard map version " << doc.version << " (changed " << doc.changed_at << ": " << doc.change << ")\n\n";
  io.out << std::left << std::setw(44) << "RANGE" << "SHARD\n";
  for (const auto& r : doc.ranges) {
    io.out << std::setw(44) << ("[" + Printable(r.start, false) + ", " + Printable(r.end, true) + ")") << r.shard << "\n";
  }
  io.out << "\n" << std::setw(20) << "SHARD" << std::setw(10) << "RANGES" << "ENDPOINTS\n";
  for (const auto& s : doc.shards) {
    const auto owned = std::count_if(doc.ranges.begin(), doc.ranges.end(), [&](const MapRange& r) { return r.shard == s.name; });
    io.out << std::setw(20) << s.name << std::setw(10) << owned << Join(s.endpoints) << (s.tls ? " (tls)" : "") << "\n";
  }
  io.out << "\n" << std::setw(36) << "PROXY" << std::setw(14) << "MAP VERSION" << "STARTED\n";
  if (proxies.empty()) io.out << "(none registered)\n";
  for (const auto& p : proxies) {
    io.out << std::setw(36) << Join(p.client_urls) << std::setw(14)
           << (std::to_string(p.map_version) + (p.map_version == doc.version ? "" : " (behind)")) << p.started_at << "\n";
  }
  return 0;
}

int MapHistory(MapStore& store, OutputFormat format, CommandIo io) {
  const auto history = store.History();
  if (history.empty()) {
    io.err << "no shard map under '" << store.prefix() << "' in the meta store: write one with `map init`\n";
    return 1;
  }
  if (format == OutputFormat::kJson) {
    auto out = Json::array();
    for (const auto& doc : history) out.push_back(DocumentJson(doc));
    io.out << out.dump(2) << "\n";
    return 0;
  }
  io.out << std::left << std::setw(10) << "VERSION" << std::setw(24) << "CHANGED" << std::setw(8) << "SHARDS"
         << std::setw(8) << "RANGES" << "CHANGE\n";
  for (const auto& doc : history) {
    io.out << std::setw(10) << doc.version << std::setw(24) << doc.changed_at << std::setw(8) << doc.shards.size()
           << std::setw(8) << doc.ranges.size() << doc.change << "\n";
  }
  return 0;
}

int MapAddShard(MapStore& store, const ShardConfig& requested, const PrepareShard& prepare, CommandIo io) {
  ShardConfig shard = requested;
  for (auto& e : shard.endpoints) e = NormalizeEndpoint(e);
  if (shard.name.empty()) {
    io.err << "add-shard: the shard needs a name\n";
    return 1;
  }
  if (const auto bad = CheckEndpoints(shard.endpoints)) {
    io.err << "add-shard " << shard.name << ": " << *bad << "\n";
    return 1;
  }
  const auto read = LoadOrRefuse(store, io);
  if (!read) return 1;
  if (read->doc.FindShard(shard.name) != nullptr) {
    io.err << "add-shard: a shard named '" << shard.name << "' is already in the map (version " << read->doc.version
           << "); nothing was written\n";
    return 1;
  }
  if (const auto* other = SharesAnEndpoint(read->doc, shard.endpoints, "")) {
    io.err << "add-shard " << shard.name << ": an endpoint is already shard '" << other->name << "''s ("
           << Join(other->endpoints) << "): a shard must be a cluster of its own; nothing was written\n";
    return 1;
  }
  // `prepare` checks the rest: the cluster answers, is none of the shards, holds no key.
  try {
    if (prepare) prepare(read->doc, shard, io.out);
  } catch (const ConfigError& e) {
    io.err << "add-shard " << shard.name << ": refused: " << e.what() << "; nothing was written to the meta store\n";
    return 1;
  } catch (const DryRunDone&) {
    io.out << "dry run: the shard map was not changed\n";
    return 0;
  }
  MapDocument next = read->doc;
  shard.start.clear();
  shard.end.clear();
  next.shards.push_back(shard);
  next.change = "add-shard " + shard.name;
  return Write(store, read, std::move(next), io);
}

int MapRemoveShard(MapStore& store, const std::string& name, CommandIo io) {
  const auto read = LoadOrRefuse(store, io);
  if (!read) return 1;
  if (read->doc.FindShard(name) == nullptr) {
    io.err << "remove-shard: no shard named '" << name << "' in the map (version " << read->doc.version
           << "); nothing was written\n";
    return 1;
  }
  if (read->doc.Owns(name)) {
    io.err << "remove-shard: shard '" << name << "' still owns key ranges (move them away first); nothing was written\n";
    return 1;
  }
  MapDocument next = read->doc;
  std::erase_if(next.shards, [&](const ShardConfig& s) { return s.name == name; });
  next.change = "remove-shard " + name;
  return Write(store, read, std::move(next), io);
}

int MapSetEndpoints(MapStore& store, const std::string& name, const std::vector<std::string>& requested, CommandIo io) {
  std::vector<std::string> endpoints;
  for (const auto& e : requested) endpoints.push_back(NormalizeEndpoint(e));
  if (const auto bad = CheckEndpoints(endpoints)) {
    io.err << "set-endpoints " << name << ": " << *bad << "; nothing was written\n";
    return 1;
  }
  const auto read = LoadOrRefuse(store, io);
  if (!read) return 1;
  if (read->doc.FindShard(name) == nullptr) {
    io.err << "set-endpoints: no shard named '" << name << "' in the map (version " << read->doc.version
           << "); nothing was written\n";
    return 1;
  }
  if (const auto* other = SharesAnEndpoint(read->doc, endpoints, name)) {
    io.err << "set-endpoints " << name << ": an endpoint is already shard '" << other->name << "''s; nothing was written\n";
    return 1;
  }
  MapDocument next = read->doc;
  ShardConfig* target = nullptr;
  for (auto& s : next.shards) {
    if (s.name == name) target = &s;
  }
  ShardConfig replaced = *target;
  replaced.endpoints = endpoints;
  // The members may change, the cluster may not: its keys, revisions and leases are the shard.
  const auto now = ClusterIdOf(replaced);
  if (!now) {
    io.err << "set-endpoints " << name << ": no member answers at " << Join(endpoints) << "; nothing was written\n";
    return 1;
  }
  if (const auto before = ClusterIdOf(*target); before && before != now) {
    io.err << "set-endpoints " << name << ": " << Join(endpoints) << " is another cluster than the shard's current "
           << "members (" << Join(target->endpoints) << "): cluster id " << std::hex << *now << " instead of " << *before
           << std::dec << "; nothing was written\n";
    return 1;
  }
  target->endpoints = endpoints;
  next.change = "set-endpoints " + name + " " + Join(endpoints);
  return Write(store, read, std::move(next), io);
}

}  // namespace esp::meta
