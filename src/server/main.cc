// etcd-sharding-proxy: serves the etcd v3 API and spreads the keyspace over several etcd clusters.
#include <CLI/CLI.hpp>
#include <absl/synchronization/mutex.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "common/go_duration.h"
#include "config/config.h"
#include "meta/map_commands.h"
#include "meta/shard_bootstrap.h"
#include "observability/grpc_log.h"
#include "server/proxy.h"
#include <unistd.h>

#include "common/base64.h"
#include "reshard/mover.h"
#include "snapshot/snapshot_save.h"
#include "upstream/h2_client_connection.h"

namespace {

// A duration flag written as etcd's are ("5s", "2h", "100ms").
void AddDurationOption(CLI::App& app, const std::string& name, std::chrono::nanoseconds& target,
                       const std::string& default_text, const std::string& help) {
  app.add_option_function<std::string>(
         name,
         [&target, name](const std::string& text) {
           const auto parsed = esp::ParseGoDuration(text);
           if (!parsed) throw CLI::ValidationError(name, "not a duration (e.g. 5s, 2h, 100ms): " + text);
           target = *parsed;
         },
         help)
      ->default_str(default_text);
}

// How to reach the meta store: flags shared by the proxy and the `map` commands.
struct MetaFlags {
  std::vector<std::string> endpoints;
  std::string prefix = esp::meta::kDefaultPrefix;
  std::string ca_file, cert_file, key_file, server_name;
  std::string user, password_file;
};

void AddMetaFlags(CLI::App& app, MetaFlags& flags) {
  app.add_option("--meta-endpoints", flags.endpoints,
                 "members of the meta etcd cluster holding the shard map (comma-separated host:port)")
      ->delimiter(',');
  app.add_option("--meta-prefix", flags.prefix, "key prefix of the shard map in the meta store")->capture_default_str();
  app.add_option("--meta-cacert", flags.ca_file, "CA bundle for TLS towards the meta store (enables TLS)");
  app.add_option("--meta-cert", flags.cert_file, "client certificate towards the meta store (mutual TLS)");
  app.add_option("--meta-key", flags.key_file, "key of --meta-cert");
  app.add_option("--meta-server-name", flags.server_name, "name checked in the meta store members' certificates");
  app.add_option("--meta-user", flags.user, "etcd user for the meta store (with --meta-password-file)");
  app.add_option("--meta-password-file", flags.password_file, "file holding --meta-user's password (one line)");
}

esp::meta::EtcdClientOptions ClientOptions(const MetaFlags& flags) {
  esp::meta::EtcdClientOptions options;
  options.endpoints = flags.endpoints;
  if (!flags.ca_file.empty() || !flags.cert_file.empty()) {
    options.tls = esp::TlsClientConfig{flags.ca_file, flags.cert_file, flags.key_file, flags.server_name};
  }
  if (flags.user.empty() != flags.password_file.empty()) {
    throw esp::ConfigError("--meta-user and --meta-password-file go together");
  }
  options.user = flags.user;
  if (!flags.password_file.empty()) options.password = esp::meta::ReadPasswordFile(flags.password_file);
  return options;
}

// The `map` subcommands. Each runs to its end before main returns its status.
struct MapCommand {
  MetaFlags meta;
  std::string config_path;
  bool force = false;
  std::string output = "table";
  std::string name;
  std::vector<std::string> endpoints;
  std::string ca_file, cert_file, key_file, server_name;
  // add-shard: the shards' root credentials and the passwords of the users it copies.
  std::string shard_user, shard_password_file, user_passwords_file;
  std::vector<std::string> no_password_users;
  bool dry_run = false;
  std::function<int(esp::meta::MapStore&, esp::meta::CommandIo)> run;
};

// add-shard's preparation of the new cluster (meta/shard_bootstrap.h), with the command's flags.
esp::meta::PrepareShard PrepareWith(const MapCommand& command) {
  return [&command](const esp::meta::MapDocument& current, const esp::ShardConfig& shard, std::ostream& out) {
    esp::meta::BootstrapOptions options;
    options.existing = current.shards;
    options.target = shard;
    options.user = command.shard_user;
    if (!command.shard_password_file.empty()) options.password = esp::meta::ReadPasswordFile(command.shard_password_file);
    if (!command.user_passwords_file.empty()) {
      options.user_passwords = esp::meta::LoadUserPasswordFile(command.user_passwords_file);
    }
    options.no_password_users = {command.no_password_users.begin(), command.no_password_users.end()};
    options.dry_run = command.dry_run;
    const auto report = esp::meta::PrepareNewShard(options);
    out << (report.dry_run ? "would prepare " : "prepared ") << shard.name << ": " << report.roles_created
        << " roles, " << report.users_created << " users, " << report.leases_created << " leases"
        << (report.auth_switched_on ? ", auth enabled" : "") << "\n";
    for (const auto& note : report.notes) out << "  note: " << note << "\n";
    // A dry run stops here: nothing is written to the meta store either.
    if (command.dry_run) throw esp::meta::DryRunDone();
  };
}

esp::meta::OutputFormat Format(const std::string& output) {
  return output == "json" ? esp::meta::OutputFormat::kJson : esp::meta::OutputFormat::kTable;
}

CLI::App* AddMapCommands(CLI::App& app, MapCommand& command) {
  auto* map = app.add_subcommand("map", "read and change the shard map kept in the meta store");
  map->require_subcommand(1);
  AddMetaFlags(*map, command.meta);
  const auto sub = [&](const char* name, const char* help) {
    auto* s = map->add_subcommand(name, help);
    s->fallthrough();  // the meta flags may follow the subcommand's name
    return s;
  };
  auto* init = sub("init", "write the first shard map from a YAML layout (the proxy's --config format)");
  init->add_option("--config", command.config_path, "YAML shard layout")->required();
  init->add_flag("--force", command.force, "replace an existing map (no proxy serving; keys are not moved)");
  init->callback([&] {
    command.run = [&](esp::meta::MapStore& store, esp::meta::CommandIo io) {
      return esp::meta::MapInit(store, esp::LoadConfigFile(command.config_path), command.force, io);
    };
  });
  for (const char* name : {"show", "history"}) {
    auto* s = sub(name, std::string(name) == "show" ? "print the current map and the live proxies" : "print every version of the map");
    s->add_option("-w,--write-out", command.output, "table or json")->check(CLI::IsMember({"table", "json"}));
    const bool show = std::string(name) == "show";
    s->callback([&, show] {
      command.run = [&, show](esp::meta::MapStore& store, esp::meta::CommandIo io) {
        return show ? esp::meta::MapShow(store, Format(command.output), io)
                    : esp::meta::MapHistory(store, Format(command.output), io);
      };
    });
  }
  auto* add = sub("add-shard", "add an etcd cluster that owns no range yet (made ready to serve first)");
  add->add_option("name", command.name, "the new shard's name")->required();
  add->add_option("--endpoints", command.endpoints, "its members, host:port,...")->delimiter(',')->required();
  add->add_option("--cacert", command.ca_file, "TLS towards the new shard: CA bundle");
  add->add_option("--cert", command.cert_file, "TLS towards the new shard: client certificate");
  add->add_option("--key", command.key_file, "TLS towards the new shard: client key");
  add->add_option("--server-name", command.server_name, "TLS towards the new shard: name in its certificates");
  add->add_option("--user", command.shard_user, "a user with the root role on the shards (when auth is on)");
  add->add_option("--password-file", command.shard_password_file, "file holding --user's password (one line)");
  add->add_option("--user-passwords", command.user_passwords_file,
                  "file of user:password lines: the passwords the shards' users get on the new cluster");
  add->add_option("--no-password-users", command.no_password_users,
                  "certificate-only users (needed when auth is off on the shards)")
      ->delimiter(',');
  add->add_flag("--dry-run", command.dry_run, "check and report; write nothing anywhere");
  add->callback([&] {
    command.run = [&](esp::meta::MapStore& store, esp::meta::CommandIo io) {
      esp::ShardConfig shard;
      shard.name = command.name;
      shard.endpoints = command.endpoints;
      if (!command.ca_file.empty() || !command.cert_file.empty()) {
        shard.tls = esp::TlsClientConfig{command.ca_file, command.cert_file, command.key_file, command.server_name};
      }
      return esp::meta::MapAddShard(store, shard, PrepareWith(command), io);
    };
  });
  auto* remove = sub("remove-shard", "remove a shard that owns no range");
  remove->add_option("name", command.name, "the shard's name")->required();
  remove->callback([&] {
    command.run = [&](esp::meta::MapStore& store, esp::meta::CommandIo io) {
      return esp::meta::MapRemoveShard(store, command.name, io);
    };
  });
  auto* set = sub("set-endpoints", "replace a shard's member list (the same cluster, other members)");
  set->add_option("name", command.name, "the shard's name")->required();
  set->add_option("endpoints", command.endpoints, "its members, host:port ...")->required()->delimiter(',');
  set->callback([&] {
    command.run = [&](esp::meta::MapStore& store, esp::meta::CommandIo io) {
      return esp::meta::MapSetEndpoints(store, command.name, command.endpoints, io);
    };
  });
  return map;
}

int RunMapCommand(MapCommand& command) {
  try {
    if (command.meta.endpoints.empty()) throw esp::ConfigError("--meta-endpoints is required");
    esp::meta::EtcdClient client(ClientOptions(command.meta));
    esp::meta::MapStore store(client, command.meta.prefix);
    return command.run(store, esp::meta::CommandIo{std::cout, std::cerr});
  } catch (const esp::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const esp::meta::MetaError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

struct SnapshotCommand {
  MetaFlags meta;
  std::string config_path;
  std::string dir;
  std::string user, password_file;
  std::chrono::nanoseconds timeout = std::chrono::minutes(10);
};

CLI::App* AddSnapshotCommands(CLI::App& app, SnapshotCommand& command) {
  auto* snapshot = app.add_subcommand("snapshot", "per-shard etcd snapshots of the whole deployment");
  snapshot->require_subcommand(1);
  AddMetaFlags(*snapshot, command.meta);
  auto* save = snapshot->add_subcommand("save", "write one etcd snapshot per shard and manifest.json into DIR");
  save->fallthrough();
  save->add_option("dir", command.dir, "a new or empty directory")->required();
  save->add_option("--config", command.config_path,
                   "YAML layout (the proxy's --config): its shards, unless --meta-endpoints gives the map; "
                   "its credentials, unless --user is given");
  save->add_option("--user", command.user, "etcd user on the shards (when auth is on)");
  save->add_option("--password-file", command.password_file, "file holding --user's password (one line)");
  AddDurationOption(*save, "--timeout", command.timeout, "10m", "longest time one shard's snapshot may take");
  return snapshot;
}

// The map to save and where it came from: the meta store's current map, or the YAML layout.
std::pair<esp::meta::MapDocument, std::string> SnapshotMap(const SnapshotCommand& command,
                                                           const std::optional<esp::Config>& config) {
  if (command.meta.endpoints.empty()) {
    if (!config) throw esp::ConfigError("--config or --meta-endpoints is required");
    return {esp::meta::MapDocument::FromConfig(*config), "config " + command.config_path};
  }
  esp::meta::EtcdClient client(ClientOptions(command.meta));
  esp::meta::MapStore store(client, command.meta.prefix);
  auto stored = store.Load();
  if (!stored) throw esp::meta::MetaError("no shard map under " + command.meta.prefix + " at " + client.EndpointList());
  return {std::move(stored->doc), "meta store " + client.EndpointList() + " prefix " + command.meta.prefix +
                                      " version " + std::to_string(stored->doc.version)};
}

// Exit status 2: the input is refused before anything is asked or written (unreadable config, a
// DIR that is not empty); 1: the meta store or a shard failed, and nothing is left written.
int RunSnapshotSave(const SnapshotCommand& command) {
  esp::snapshot::SaveOptions options;
  options.dir = command.dir;
  options.timeout = std::chrono::duration_cast<std::chrono::seconds>(command.timeout);
  std::optional<esp::Config> config;
  try {
    esp::snapshot::CheckTargetDir(options.dir);
    if (!command.config_path.empty()) config = esp::LoadConfigFile(command.config_path);
    if (command.user.empty() != command.password_file.empty()) {
      throw esp::ConfigError("--user and --password-file go together");
    }
    if (!command.user.empty()) {
      options.user = command.user;
      options.password = esp::meta::ReadPasswordFile(command.password_file);
    } else if (config && config->credentials) {
      options.user = config->credentials->user;
      options.password = esp::meta::ReadPasswordFile(config->credentials->password_file);
    }
    if (!command.meta.endpoints.empty()) ClientOptions(command.meta);  // its flags, checked before any call
  } catch (const esp::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  try {
    std::tie(options.map, options.map_source) = SnapshotMap(command, config);
    const auto manifest = esp::snapshot::SaveSnapshots(options, std::cout);
    std::cout << "wrote " << manifest.string() << " (" << options.map.shards.size() << " shards)\n";
    return 0;
  } catch (const esp::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "; nothing was written\n";
    return 1;
  }
}

// The `reshard` subcommands (reshard/mover.h).
struct ReshardCommand {
  MetaFlags meta;
  std::vector<std::string> range;  // START END
  std::string at, to;
  bool base64 = false;
  std::string output = "table";
  std::string user, password_file;
  long lock_ttl = 5, ack_timeout = 120;
  std::function<int(esp::meta::MapStore&, const esp::reshard::MoverOptions&, esp::meta::CommandIo)> run;
};

CLI::App* AddReshardCommands(CLI::App& app, ReshardCommand& command) {
  auto* reshard = app.add_subcommand("reshard", "move key ranges between shards while serving (docs/operations.md)");
  reshard->require_subcommand(1);
  AddMetaFlags(*reshard, command.meta);
  const auto sub = [&](const char* name, const char* help) {
    auto* s = reshard->add_subcommand(name, help);
    s->fallthrough();
    return s;
  };
  const auto mover_flags = [&](CLI::App* s) {
    s->add_option("--user", command.user, "etcd user on the shards (when auth is on): reads and writes the range");
    s->add_option("--password-file", command.password_file, "file holding --user's password (one line)");
    s->add_option("--lock-ttl", command.lock_ttl, "seconds: the mover's lock outlives a killed mover by at most this")
        ->capture_default_str()
        ->check(CLI::Range(2, 600));
    s->add_option("--ack-timeout", command.ack_timeout, "seconds to wait for every proxy to serve a new map")
        ->capture_default_str()
        ->check(CLI::Range(1, 86400));
    s->add_flag("--base64", command.base64, "keys are given in base64 (binary keys)");
  };
  const auto key = [&](const std::string& text) {
    if (!command.base64) return text;
    auto decoded = esp::DecodeBase64(text);
    if (!decoded) throw esp::ConfigError("not base64: " + text);
    return *decoded;
  };
  auto* move = sub("move", "move a range inside one shard to another shard (no arguments: resume the move in progress)");
  move->add_option("--range", command.range, "START END (END \"\" = to the end of the keyspace)")->expected(2);
  move->add_option("--to", command.to, "the shard that gets the range");
  mover_flags(move);
  move->callback([&, key] {
    command.run = [&, key](esp::meta::MapStore& store, const esp::reshard::MoverOptions& options, esp::meta::CommandIo io) {
      if (command.range.empty() != command.to.empty()) throw esp::ConfigError("--range and --to go together");
      const std::string start = command.range.empty() ? "" : key(command.range[0]);
      const std::string end = command.range.empty() ? "" : key(command.range[1]);
      return esp::reshard::Move(store, start, end, command.to, options, io);
    };
  });
  auto* split = sub("split", "move the part of KEY's range from KEY to its end to another shard");
  split->add_option("--at", command.at, "KEY")->required();
  split->add_option("--to", command.to, "the shard that gets the part")->required();
  mover_flags(split);
  split->callback([&, key] {
    command.run = [&, key](esp::meta::MapStore& store, const esp::reshard::MoverOptions& options, esp::meta::CommandIo io) {
      return esp::reshard::Split(store, key(command.at), command.to, options, io);
    };
  });
  auto* status = sub("status", "the move in progress: state, keys copied, revisions behind");
  status->add_option("-w,--write-out", command.output, "table or json")->check(CLI::IsMember({"table", "json"}));
  status->callback([&] {
    command.run = [&](esp::meta::MapStore& store, const esp::reshard::MoverOptions&, esp::meta::CommandIo io) {
      return esp::reshard::Status(store, Format(command.output), io);
    };
  });
  auto* abort = sub("abort", "roll back the move in progress (before its cut-over only)");
  mover_flags(abort);
  abort->callback([&] {
    command.run = [&](esp::meta::MapStore& store, const esp::reshard::MoverOptions& options, esp::meta::CommandIo io) {
      return esp::reshard::Abort(store, options, io);
    };
  });
  return reshard;
}

int RunReshardCommand(ReshardCommand& command) {
  try {
    if (command.meta.endpoints.empty()) throw esp::ConfigError("--meta-endpoints is required");
    if (command.user.empty() != command.password_file.empty()) throw esp::ConfigError("--user and --password-file go together");
    esp::reshard::MoverOptions options;
    options.user = command.user;
    if (!command.password_file.empty()) options.password = esp::meta::ReadPasswordFile(command.password_file);
    options.lock_ttl = std::chrono::seconds(command.lock_ttl);
    options.ack_timeout = std::chrono::seconds(command.ack_timeout);
    options.progress_bar = isatty(STDOUT_FILENO) != 0;
    esp::meta::EtcdClient client(ClientOptions(command.meta));
    esp::meta::MapStore store(client, command.meta.prefix);
    return command.run(store, options, esp::meta::CommandIo{std::cout, std::cerr});
  } catch (const esp::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

// Raises the soft open-file limit to the hard one, as etcd gets it (the Go runtime does this at
// start since Go 1.19): every client, shard and operator connection is a descriptor, and the usual
// soft default of 1024 is reached by a modest fleet of clients. The hard limit is the
// administrator's ceiling; the soft one only a default.
void RaiseOpenFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    spdlog::warn("open-file limit: getrlimit: {}", std::strerror(errno));
    return;
  }
  const rlim_t before = limit.rlim_cur;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
      spdlog::warn("open-file limit: cannot raise {} to the hard limit {}: {}", before, limit.rlim_max,
                   std::strerror(errno));
      return;
    }
  }
  spdlog::info("open-file limit: {} (was {}; hard limit {})", limit.rlim_cur, before, limit.rlim_max);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"etcd-sharding-proxy: one etcd v3 endpoint over several etcd clusters, split by key range"};
  std::string config_path;
  std::string log_level = "info";
  esp::ProxyOptions options;
  app.add_option("--config", config_path,
                 "YAML file with the shard layout (with --meta-endpoints: its other settings only)");
  MetaFlags meta_flags;
  AddMetaFlags(app, meta_flags);
  long lease_ttl_seconds = 10;
  app.add_option("--meta-lease-ttl", lease_ttl_seconds,
                 "seconds: this proxy's registration in the meta store outlives a crash by at most this")
      ->capture_default_str()
      ->check(CLI::Range(2, 3600));
  MapCommand map_command;
  auto* map = AddMapCommands(app, map_command);
  SnapshotCommand snapshot_command;
  auto* snapshot = AddSnapshotCommands(app, snapshot_command);
  ReshardCommand reshard_command;
  auto* reshard = AddReshardCommands(app, reshard_command);
  app.add_option("--listen-addr", options.listen_address, "address for etcd clients")->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  app.add_option("--max-request-bytes", options.max_request_bytes, "largest client request accepted, as etcd's flag")
      ->capture_default_str();
  app.add_option("--max-txn-ops", options.max_txn_ops, "most operations in one txn, as etcd's flag")
      ->capture_default_str();
  app.add_option("--advertise-client-urls", options.advertise_client_urls,
                 "URLs MemberList gives clients for this proxy (comma-separated; default http://<listen-addr>)")
      ->delimiter(',');
  app.add_option("--listen-metrics-addr", options.metrics_address,
                 "host:port for /metrics, /health, /livez, /readyz, /shards over HTTP (empty: off)");
  app.add_option("--watch-buffer-bytes", options.watch_buffer_bytes,
                 "responses a Watch stream may queue for a slow client before it is canceled")
      ->capture_default_str();
  app.add_option("--cert-file", options.tls.cert_file, "TLS certificate for clients (as etcd's flag)");
  app.add_option("--key-file", options.tls.key_file, "TLS key for clients (as etcd's flag)");
  app.add_option("--trusted-ca-file", options.tls.trusted_ca_file, "CA that signs client certificates");
  app.add_flag("--client-cert-auth", options.tls.client_cert_auth,
               "require a client certificate signed by --trusted-ca-file (mutual TLS)");
  app.add_option("--data-plane", options.data_plane, "client-facing transport: h2 (event loops on nghttp2) or grpc (gRPC C++'s server)")
      ->check(CLI::IsMember({"grpc", "h2"}))
      ->capture_default_str();
  app.add_option("--data-plane-threads", options.data_plane_threads,
                 "event loops of the h2 data plane, shared by client and shard connections (0: one per core)")
      ->capture_default_str();
  app.add_option("--data-plane-stream-buffer", options.data_plane_stream_buffer,
                 "h2: response bytes one call may queue for a client that does not read before it is reset")
      ->capture_default_str();
  AddDurationOption(app, "--grpc-keepalive-min-time", options.grpc_keepalive_min_time, "5s",
                    "shortest interval between client PINGs; sooner ones get GOAWAY too_many_pings (as etcd's flag)");
  AddDurationOption(app, "--grpc-keepalive-interval", options.grpc_keepalive_interval, "2h",
                    "PING a client silent this long (0 to disable; as etcd's flag)");
  AddDurationOption(app, "--grpc-keepalive-timeout", options.grpc_keepalive_timeout, "20s",
                    "close a connection whose client stays silent this long after our PING (0 to disable)");
  AddDurationOption(app, "--compaction-retention", options.compaction_retention, "5m",
                    "a Compact across shards never compacts a shard past the revision it had this long ago "
                    "(0: no limit; docs/semantics.md, Compact)");
  app.add_option("--upstream-transport", options.upstream_transport,
                 "transport towards the shards: h2 (nghttp2 client on event loops) or grpc (gRPC C++ client)")
      ->check(CLI::IsMember({"grpc", "h2"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (map->parsed()) {
    // `--meta-*` flags given before `map` count too.
    if (map_command.meta.endpoints.empty()) map_command.meta = meta_flags;
    return RunMapCommand(map_command);
  }
  if (snapshot->parsed()) {
    if (snapshot_command.meta.endpoints.empty()) snapshot_command.meta = meta_flags;
    return RunSnapshotSave(snapshot_command);
  }
  if (reshard->parsed()) {
    if (reshard_command.meta.endpoints.empty()) reshard_command.meta = meta_flags;
    return RunReshardCommand(reshard_command);
  }
  if (config_path.empty() && meta_flags.endpoints.empty()) {
    std::cerr << "--config or --meta-endpoints is required\nRun with --help for more information.\n";
    return 2;
  }

  spdlog::set_level(spdlog::level::from_str(log_level));
  esp::RouteGrpcLogsToSpdlog();
  // Debian builds abseil with its mutex deadlock detector on: it records a lock-order graph on
  // every gRPC mutex acquisition, ~10% of the proxy's instructions per request (see
  // docs/BENCHMARKS.md). It is a debugging aid, not a safety net; switch it off before gRPC starts.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  esp::Config config;
  try {
    if (!config_path.empty()) config = esp::LoadConfigFile(config_path);
    if (!meta_flags.endpoints.empty()) {
      options.meta.client = ClientOptions(meta_flags);
      options.meta.prefix = meta_flags.prefix;
      options.meta.lease_ttl = std::chrono::seconds(lease_ttl_seconds);
      if (!config_path.empty()) {
        spdlog::info("the shard layout in {} is not used: the meta store's map is served", config_path);
      }
    }
  } catch (const esp::ConfigError& e) {
    spdlog::error("invalid configuration {}: {}", config_path, e.what());
    return 2;
  }

  RaiseOpenFileLimit();
  // A peer that closed its connection must cost an EPIPE, not the process: OpenSSL writes TLS
  // records with write(2), which raises SIGPIPE (plain sockets use send(MSG_NOSIGNAL)).
  std::signal(SIGPIPE, SIG_IGN);
  // Block the stop signals in every thread (gRPC's included) and wait for them here.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  if (options.tls.enabled() != !options.tls.key_file.empty() ||
      (options.tls.client_cert_auth && options.tls.trusted_ca_file.empty())) {
    spdlog::error("TLS needs --cert-file and --key-file together; --client-cert-auth needs --trusted-ca-file");
    return 2;
  }
  // Both sides of the data plane run on the same loops (a call read on loop i goes to the shard
  // from loop i), so the upstream pool takes the client side's size.
  if (options.data_plane_threads > 0) esp::UpstreamLoops::SetSharedSize(static_cast<std::size_t>(options.data_plane_threads));
  try {
    esp::Proxy proxy(config, options);
    if (!proxy.Start()) return 1;
    int signal = 0;
    sigwait(&stop_signals, &signal);
    spdlog::info("received {}, shutting down", signal == SIGINT ? "SIGINT" : "SIGTERM");
    proxy.Shutdown();
  } catch (const esp::ConfigError& e) {
    spdlog::error("{}", e.what());
    return 2;
  } catch (const esp::meta::MetaError& e) {
    // Without a map there is nothing to serve: refuse rather than guess a layout.
    spdlog::error("cannot start: {}", e.what());
    return 1;
  }
  return 0;
}
