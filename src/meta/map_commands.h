#pragma once
// The operator's `map` commands (etcd-sharding-proxy map ...), as functions of a meta-store
// client: main wires them to CLI11, the tests run the binary. Every change is one
// compare-and-swap on the map's version: a command that lost a race, or that is refused, writes
// nothing and says why.
//
// Exit status: 0 done; 1 refused (bad input, conflict, a shard that may not be removed) or the
// meta store could not be reached; the message goes to `err`.
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "config/config.h"
#include "meta/map_store.h"

namespace esp::meta {

struct CommandIo {
  std::ostream& out;
  std::ostream& err;
};

enum class OutputFormat { kTable, kJson };

struct DryRunDone {};

int MapInit(MapStore& store, const Config& layout, bool force, CommandIo io);
int MapShow(MapStore& store, OutputFormat format, CommandIo io);
int MapHistory(MapStore& store, OutputFormat format, CommandIo io);

// Called with the current map and the new shard before anything is written: makes the new
// cluster ready to serve (users, roles, auth, leases) or throws ConfigError with the reason, or
// DryRunDone after a check that was only to report.
using PrepareShard = std::function<void(const MapDocument& current, const ShardConfig& shard, std::ostream& out)>;
int MapAddShard(MapStore& store, const ShardConfig& shard, const PrepareShard& prepare, CommandIo io);
int MapRemoveShard(MapStore& store, const std::string& name, CommandIo io);
int MapSetEndpoints(MapStore& store, const std::string& name, const std::vector<std::string>& endpoints, CommandIo io);

// The JSON `map show -w json` prints: the map with printable keys, and the live proxies.
std::string ShowJson(const MapDocument& doc, const std::vector<ProxyRecord>& proxies);

}  // namespace esp::meta
