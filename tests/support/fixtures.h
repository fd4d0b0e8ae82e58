#pragma once
// Test fixtures that run the real thing: etcd processes and the proxy binary, on free loopback
// ports with temporary data directories. Every process is ended by its pid when its owner dies.
#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "etcdserverpb/rpc.grpc.pb.h"

namespace esp::test {

// A temporary directory, removed with everything in it.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A port on 127.0.0.1, below the ephemeral range, free a moment ago and handed to no other test
// process on this machine while this one runs (see fixtures.cc).
int FreePort();

// A child process with its output in a log file.
class ChildProcess {
 public:
  ChildProcess(std::vector<std::string> argv, std::filesystem::path log_file);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // How the process ended, once running() has seen it end: the exit code, or 128 + signal.
  std::optional<int> exit_status() const { return exit_status_; }
  void Signal(int signal);
  // SIGKILL and reap.
  void Kill();
  // SIGTERM, then wait up to `timeout`; returns the exit status, or nullopt if it had to be killed.
  std::optional<int> Terminate(std::chrono::milliseconds timeout = std::chrono::seconds(5));
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  std::optional<int> exit_status_;
  std::filesystem::path log_file_;
};

// A CA, a certificate for 127.0.0.1 (server and client use) and an untrusted client certificate,
// generated with the openssl CLI at test time.
class TestCertificates {
 public:
  TestCertificates();
  std::string ca() const { return (dir_.path() / "ca.crt").string(); }
  std::string cert() const { return (dir_.path() / "node.crt").string(); }
  std::string key() const { return (dir_.path() / "node.key").string(); }
  // Signed by a CA nobody trusts: mutual TLS must refuse it.
  std::string rogue_cert() const { return (dir_.path() / "rogue.crt").string(); }
  std::string rogue_key() const { return (dir_.path() / "rogue.key").string(); }

 private:
  TempDir dir_;
};

// TLS settings for an etcd cluster's client side (https URLs, mutual TLS).
struct EtcdTls {
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // The name to verify the server's certificate against instead of the address (a shard's
  // `tls.server_name`); empty: the address.
  std::string server_name;
};

struct EtcdMember {
  std::string name;
  int client_port = 0;
  int peer_port = 0;
  std::filesystem::path data_dir;
  std::unique_ptr<ChildProcess> process;
  std::string client_address() const { return "127.0.0.1:" + std::to_string(client_port); }
};

// An etcd cluster of `members` members (etcd from Debian's etcd-server package).
class EtcdCluster {
 public:
  // `extra_args` go to every member's command line (e.g. {"--auth-token-ttl", "2"}).
  explicit EtcdCluster(int members = 1, std::string name = "etcd", std::optional<EtcdTls> tls = std::nullopt,
                       std::vector<std::string> extra_args = {});
  ~EtcdCluster();

  // Starts every member and waits until the cluster answers a linearizable read.
  void Start();
  void StartMember(std::size_t i);
  // More etcd flags for every member started from now on.
  void AddArgs(const std::vector<std::string>& args) { extra_args_.insert(extra_args_.end(), args.begin(), args.end()); }
  void KillMember(std::size_t i);
  void PauseMember(std::size_t i);   // SIGSTOP: a hung, not a dead, member
  void ResumeMember(std::size_t i);  // SIGCONT
  void WaitReady(std::chrono::seconds timeout = std::chrono::seconds(30));

  std::size_t size() const { return members_.size(); }
  EtcdMember& member(std::size_t i) { return members_[i]; }
  std::vector<std::string> ClientAddresses() const;
  // Index of the current leader, from the members that answer Status.
  std::optional<std::size_t> LeaderIndex();
  // Makes member `to` the leader (etcd's MoveLeader) and waits until it is.
  void MoveLeader(std::size_t to);

 private:
  std::string InitialCluster() const;
  std::shared_ptr<grpc::Channel> ConnectMember(const EtcdMember& m) const;
  std::string name_;
  std::optional<EtcdTls> tls_;
  std::vector<std::string> extra_args_;
  TempDir dir_;
  std::vector<EtcdMember> members_;
};

struct ShardSpec {
  std::string start;
  std::string end;
  std::vector<std::string> endpoints;
  std::optional<EtcdTls> tls;  // the proxy's `tls:` block for this shard
};

// The proxy binary in front of the given shards.
class ProxyProcess {
 public:
  explicit ProxyProcess(std::vector<ShardSpec> shards, std::vector<std::string> extra_args = {});
  // Waits for the port only (no gRPC handshake): a TLS proxy refuses insecure channels.
  void StartWithoutProbe();
  ~ProxyProcess();
  void Start();
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  ChildProcess& process() { return *process_; }
  const std::filesystem::path& config_path() const { return config_path_; }

 private:
  std::vector<std::string> extra_args_;
  TempDir dir_;
  std::filesystem::path config_path_;
  int port_ = 0;
  std::unique_ptr<ChildProcess> process_;
};

// Three shards split at "i" and "s" (the original project's layout) with the proxy in front,
// plus helpers to reach either. `members` gives each shard's cluster size (one member each by
// default); every member is one of the shard's endpoints in the proxy's config.
class ShardedSetup {
 public:
  explicit ShardedSetup(std::vector<int> members = {1, 1, 1}, std::vector<std::string> proxy_args = {},
                        std::vector<std::string> etcd_args = {});
  EtcdCluster& shard(std::size_t i) { return *shards_[i]; }
  ProxyProcess& proxy() { return *proxy_; }

 private:
  std::vector<std::unique_ptr<EtcdCluster>> shards_;
  std::unique_ptr<ProxyProcess> proxy_;
};

std::shared_ptr<grpc::Channel> Connect(const std::string& address);

// A client context whose call fails after `timeout` instead of hanging a test.
std::unique_ptr<grpc::ClientContext> Ctx(std::chrono::milliseconds timeout = std::chrono::seconds(10));
std::shared_ptr<grpc::Channel> Connect(const std::string& address, const EtcdTls& tls);

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};
// Runs a shell command line (with a timeout) and captures its output.
CommandResult RunCommand(const std::string& command_line, std::chrono::seconds timeout = std::chrono::seconds(30));
// `etcdctl --endpoints <address> <args>` with ETCDCTL_API=3.
CommandResult Etcdctl(const std::string& address, const std::string& args);

// A meta etcd and shard clusters (one member each), with the shard map written into the meta
// store from the original project's three-range layout: s0 ["", i), s1 [i, s), s2 [s, "").
// `spare` more shards are started and left out of the map. `binary` runs `map init`; `init`
// says how it went (the caller asserts it).
struct MetaShards {
  std::unique_ptr<TempDir> dir;
  std::unique_ptr<EtcdCluster> meta;
  std::vector<std::unique_ptr<EtcdCluster>> shards;
  std::string layout;  // the YAML file map init read
  CommandResult init;
  std::string MetaAddress() const { return meta->ClientAddresses()[0]; }
};
MetaShards StartMetaShards(const std::string& binary, const std::string& name, int spare = 0,
                           std::vector<std::string> shard_args = {});

// The version of the etcd server the fixtures start (`etcd --version` of the one on PATH, e.g.
// "3.4.23"), for the few expectations where etcd's own answer changed between releases.
const std::string& EtcdServerVersion();
// Whether that etcd is at least major.minor.
bool EtcdServerAtLeast(int major, int minor);

// Polls `condition` until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
             std::chrono::milliseconds interval = std::chrono::milliseconds(50));

}  // namespace esp::test
