#include "support/fixtures.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/create_channel.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

#ifndef ESP_PROXY_BINARY
#error "ESP_PROXY_BINARY must name the proxy binary"
#endif

namespace esp::test {

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "esp-test-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

namespace {

// Ports are taken from below the kernel's ephemeral range: an outgoing connection or another
// program's bind(0) never picks one there, so a port stays free between FreePort() and the
// child's bind (bind(0)-then-close handed the same port to two members of one setup about once
// in a hundred setups, and etcd's second member then died while the first answered for it).
std::pair<int, int> PortRange() {
  int ephemeral_low = 32768, ephemeral_high = 60999;
  std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> ephemeral_low >> ephemeral_high;
  return {std::min(15000, ephemeral_low / 2), ephemeral_low};
}

bool CanBind(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// Hands out each port once per process and reserves it for the life of the process with a
// one-byte lock (at offset = port) on a file every test binary on the machine shares: test
// binaries running at the same time (ctest -j2, other worktrees) never get the same port. The
// kernel drops the locks when the process ends, however it ends.
class PortReservations {
 public:
  PortReservations() : range_(PortRange()) {
    const auto path = std::filesystem::temp_directory_path() / "esp-test-ports.lock";
    fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    const int span = range_.second - range_.first;
    next_ = range_.first + static_cast<int>((static_cast<unsigned>(getpid()) * 7919u) % static_cast<unsigned>(span));
  }
  // Never closed: closing any descriptor of the file would drop every lock this process holds.
  PortReservations(const PortReservations&) = delete;
  PortReservations& operator=(const PortReservations&) = delete;

  int Take() {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (int tried = 0; tried < range_.second - range_.first; ++tried) {
      const int port = next_;
      next_ = next_ + 1 < range_.second ? next_ + 1 : range_.first;
      if (Reserve(port) && CanBind(port)) return port;
    }
    throw std::runtime_error("no free port left below the ephemeral range");
  }

 private:
  bool Reserve(int port) const {
    if (fd_ < 0) return true;  // no shared file: ports are still unique within this process
    struct flock lock{};
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    lock.l_start = port;
    lock.l_len = 1;
    return fcntl(fd_, F_SETLK, &lock) == 0;
  }

  const std::pair<int, int> range_;
  int fd_ = -1;
  int next_ = 0;
  std::mutex mutex_;
};

}  // namespace

int FreePort() {
  static PortReservations reservations;
  return reservations.Take();
}

ChildProcess::ChildProcess(std::vector<std::string> argv, std::filesystem::path log_file)
    : log_file_(std::move(log_file)) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    const int fd = open(log_file_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    // Die with the test process, so that a crashed test leaves nothing behind.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    execvp(args[0], args.data());
    _exit(127);
  }
}

ChildProcess::~ChildProcess() { Kill(); }

bool ChildProcess::running() {
  if (pid_ <= 0) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    pid_ = -1;
    return false;
  }
  return true;
}

void ChildProcess::Signal(int signal) {
  if (pid_ > 0) kill(pid_, signal);
}

void ChildProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

std::optional<int> ChildProcess::Terminate(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return std::nullopt;
  kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Kill();
  return std::nullopt;
}

std::string ChildProcess::Log() const {
  std::ifstream in(log_file_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---------------------------------------------------------------------------------------------

TestCertificates::TestCertificates() {
  const std::string d = dir_.path().string();
  // One script so that a failure shows every openssl message at once.
  const std::string script =
      "set -e; cd " + d + "; "
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.crt; "
      "printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > ext.cnf; "
      "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout node.key -out node.csr; "
      "openssl x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out node.crt; "
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=rogue-ca -keyout rogue-ca.key -out rogue-ca.crt; "
      "openssl req -newkey rsa:2048 -nodes -subj /CN=rogue -keyout rogue.key -out rogue.csr; "
      "openssl x509 -req -in rogue.csr -CA rogue-ca.crt -CAkey rogue-ca.key -CAcreateserial -days 2 -extfile ext.cnf "
      "-out rogue.crt";
  const auto result = RunCommand("sh -c \"" + script + "\"", std::chrono::seconds(60));
  if (result.exit_code != 0) throw std::runtime_error("openssl failed:\n" + result.output);
}

EtcdCluster::EtcdCluster(int members, std::string name, std::optional<EtcdTls> tls,
                         std::vector<std::string> extra_args)
    : name_(std::move(name)), tls_(std::move(tls)), extra_args_(std::move(extra_args)) {
  for (int i = 0; i < members; ++i) {
    EtcdMember m;
    m.name = name_ + "-m" + std::to_string(i);
    m.client_port = FreePort();
    m.peer_port = FreePort();
    m.data_dir = dir_.path() / m.name;
    members_.push_back(std::move(m));
  }
}

EtcdCluster::~EtcdCluster() {
  for (auto& m : members_) {
    if (m.process) {
      m.process->Signal(SIGCONT);
      m.process->Kill();
    }
  }
}

std::string EtcdCluster::InitialCluster() const {
  std::string out;
  for (const auto& m : members_) {
    if (!out.empty()) out += ",";
    out += m.name + "=http://127.0.0.1:" + std::to_string(m.peer_port);
  }
  return out;
}

void EtcdCluster::StartMember(std::size_t i) {
  EtcdMember& m = members_[i];
  const std::string client = (tls_ ? "https://" : "http://") + m.client_address();
  const std::string peer = "http://127.0.0.1:" + std::to_string(m.peer_port);
  std::vector<std::string> argv{"etcd", "--name", m.name, "--data-dir", m.data_dir.string(),
                                "--listen-client-urls", client, "--advertise-client-urls", client,
                                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                                "--initial-cluster", InitialCluster(), "--initial-cluster-token", name_,
                                "--initial-cluster-state", "new", "--heartbeat-interval", "50",
                                "--election-timeout", "500", "--log-level", "warn", "--logger", "zap"};
  if (tls_) {
    argv.insert(argv.end(), {"--cert-file", tls_->cert_file, "--key-file", tls_->key_file, "--trusted-ca-file",
                             tls_->ca_file, "--client-cert-auth"});
  }
  argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
  m.process = std::make_unique<ChildProcess>(argv, dir_.path() / (m.name + ".log"));
}

void EtcdCluster::Start() {
  for (std::size_t i = 0; i < members_.size(); ++i) StartMember(i);
  WaitReady();
}

void EtcdCluster::KillMember(std::size_t i) {
  if (members_[i].process) members_[i].process->Kill();
}

void EtcdCluster::PauseMember(std::size_t i) { members_[i].process->Signal(SIGSTOP); }
void EtcdCluster::ResumeMember(std::size_t i) { members_[i].process->Signal(SIGCONT); }

std::vector<std::string> EtcdCluster::ClientAddresses() const {
  std::vector<std::string> out;
  for (const auto& m : members_) out.push_back(m.client_address());
  return out;
}

void EtcdCluster::WaitReady(std::chrono::seconds timeout) {
  // Ready when every running member serves a linearizable read (which needs a leader).
  const bool ok = WaitFor(
      [this] {
        for (auto& m : members_) {
          if (!m.process || !m.process->running()) {
            // A member that ended by itself (not killed by the test) did not start: say so rather
            // than let whoever else listens on its port answer for it.
            if (m.process && m.process->exit_status()) {
              throw std::runtime_error("etcd member " + m.name + " exited with status " +
                                       std::to_string(*m.process->exit_status()) + ":\n" + m.process->Log());
            }
            continue;
          }
          auto stub = etcdserverpb::KV::NewStub(ConnectMember(m));
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
          etcdserverpb::RangeRequest req;
          req.set_key("health");
          etcdserverpb::RangeResponse resp;
          if (!stub->Range(&ctx, req, &resp).ok()) return false;
        }
        return true;
      },
      timeout);
  if (!ok) throw std::runtime_error("etcd cluster " + name_ + " did not become ready");
}

std::shared_ptr<grpc::Channel> EtcdCluster::ConnectMember(const EtcdMember& m) const {
  return tls_ ? Connect(m.client_address(), *tls_) : Connect(m.client_address());
}

std::optional<std::size_t> EtcdCluster::LeaderIndex() {
  for (auto& m : members_) {
    if (!m.process || !m.process->running()) continue;
    auto stub = etcdserverpb::Maintenance::NewStub(Connect(m.client_address()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    etcdserverpb::StatusResponse resp;
    if (!stub->Status(&ctx, {}, &resp).ok()) continue;
    for (std::size_t i = 0; i < members_.size(); ++i) {
      auto s2 = etcdserverpb::Maintenance::NewStub(Connect(members_[i].client_address()));
      grpc::ClientContext c2;
      c2.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      etcdserverpb::StatusResponse r2;
      if (s2->Status(&c2, {}, &r2).ok() && r2.header().member_id() == resp.leader()) return i;
    }
  }
  return std::nullopt;
}

void EtcdCluster::MoveLeader(std::size_t to) {
  const auto leader = LeaderIndex();
  if (!leader) throw std::runtime_error("etcd cluster " + name_ + " has no leader");
  if (*leader == to) return;
  auto target = etcdserverpb::Maintenance::NewStub(Connect(members_[to].client_address()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  etcdserverpb::StatusResponse status;
  if (!target->Status(&ctx, {}, &status).ok()) throw std::runtime_error("no status from " + members_[to].name);
  auto from = etcdserverpb::Maintenance::NewStub(Connect(members_[*leader].client_address()));
  grpc::ClientContext move_ctx;
  move_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  etcdserverpb::MoveLeaderRequest request;
  request.set_targetid(status.header().member_id());
  etcdserverpb::MoveLeaderResponse response;
  const grpc::Status s = from->MoveLeader(&move_ctx, request, &response);
  if (!s.ok()) throw std::runtime_error("MoveLeader failed: " + s.error_message());
  if (!WaitFor([&] { return LeaderIndex() == std::optional<std::size_t>(to); }, std::chrono::seconds(10))) {
    throw std::runtime_error(members_[to].name + " did not become the leader");
  }
}

// ---------------------------------------------------------------------------------------------

namespace {

// A boundary as a YAML field: printable ASCII as a quoted string (the original format), anything
// else as base64, because YAML reads "\xff" as the character U+00FF, not the byte.
std::string YamlQuote(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string YamlBoundary(const std::string& field, const std::string& s) {
  const bool printable = std::all_of(s.begin(), s.end(), [](unsigned char c) { return c >= 0x20 && c < 0x7f; });
  if (printable) return field + ": " + YamlQuote(s);
  static const char* const kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string b64;
  for (std::size_t i = 0; i < s.size(); i += 3) {
    const std::size_t n = std::min<std::size_t>(3, s.size() - i);
    unsigned v = 0;
    for (std::size_t j = 0; j < 3; ++j) v = (v << 8) | (j < n ? static_cast<unsigned char>(s[i + j]) : 0u);
    for (std::size_t j = 0; j < 4; ++j) b64 += j <= n ? kAlphabet[(v >> (18 - 6 * j)) & 63] : '=';
  }
  return field + "_base64: \"" + b64 + "\"";
}

}  // namespace

ProxyProcess::ProxyProcess(std::vector<ShardSpec> shards, std::vector<std::string> extra_args)
    : extra_args_(std::move(extra_args)), config_path_(dir_.path() / "config.yaml"), port_(FreePort()) {
  std::ofstream out(config_path_);
  out << "shards:\n";
  for (const auto& s : shards) {
    out << "  - " << YamlBoundary("start", s.start) << "\n    " << YamlBoundary("end", s.end) << "\n    endpoints:\n";
    for (const auto& e : s.endpoints) out << "      - " << e << "\n";
    if (s.tls) {
      out << "    tls: {ca_file: " << YamlQuote(s.tls->ca_file) << ", cert_file: " << YamlQuote(s.tls->cert_file)
          << ", key_file: " << YamlQuote(s.tls->key_file);
      if (!s.tls->server_name.empty()) out << ", server_name: " << YamlQuote(s.tls->server_name);
      out << "}\n";
    }
  }
}

ProxyProcess::~ProxyProcess() {
  if (process_) process_->Kill();
}

// ESP_DATA_PLANE=grpc or =h2 runs every test's proxy on that data plane (unless the test picks one).
static void AddDataPlaneFromEnv(std::vector<std::string>& argv) {
  const char* plane = std::getenv("ESP_DATA_PLANE");
  if (plane == nullptr || *plane == '\0') return;
  for (const auto& arg : argv) {
    if (arg.starts_with("--data-plane")) return;
  }
  argv.push_back(std::string("--data-plane=") + plane);
}

// ESP_UPSTREAM=grpc or =h2 runs every test's proxy with that transport towards the shards.
static void AddUpstreamFromEnv(std::vector<std::string>& argv) {
  const char* upstream = std::getenv("ESP_UPSTREAM");
  if (upstream == nullptr || *upstream == '\0') return;
  for (const auto& arg : argv) {
    if (arg.starts_with("--upstream-transport")) return;
  }
  argv.push_back(std::string("--upstream-transport=") + upstream);
}

void ProxyProcess::Start() {
  std::vector<std::string> argv = {ESP_PROXY_BINARY, "--config", config_path_.string(), "--listen-addr", address()};
  argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
  AddDataPlaneFromEnv(argv);
  AddUpstreamFromEnv(argv);
  process_ = std::make_unique<ChildProcess>(argv, dir_.path() / "proxy.log");
  const auto channel = Connect(address());
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    throw std::runtime_error("proxy did not start listening:\n" + process_->Log());
  }
}

void ProxyProcess::StartWithoutProbe() {
  std::vector<std::string> argv = {ESP_PROXY_BINARY, "--config", config_path_.string(), "--listen-addr", address()};
  argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
  AddDataPlaneFromEnv(argv);
  AddUpstreamFromEnv(argv);
  process_ = std::make_unique<ChildProcess>(argv, dir_.path() / "proxy.log");
  const bool listening = WaitFor(
      [this] {
        return RunCommand("bash -c 'exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(port_) + "'").exit_code == 0;
      },
      std::chrono::seconds(10), std::chrono::milliseconds(100));
  if (!listening) throw std::runtime_error("proxy did not start listening:\n" + process_->Log());
}

ShardedSetup::ShardedSetup(std::vector<int> members, std::vector<std::string> proxy_args,
                           std::vector<std::string> etcd_args) {
  const std::vector<std::pair<std::string, std::string>> bounds = {{"", "i"}, {"i", "s"}, {"s", ""}};
  std::vector<ShardSpec> specs;
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    shards_.push_back(std::make_unique<EtcdCluster>(members.at(i), "shard" + std::to_string(i)));
    shards_.back()->AddArgs(etcd_args);
  }
  for (auto& s : shards_) {
    for (std::size_t m = 0; m < s->size(); ++m) s->StartMember(m);
  }
  for (std::size_t i = 0; i < bounds.size(); ++i) {
    shards_[i]->WaitReady();
    specs.push_back({bounds[i].first, bounds[i].second, shards_[i]->ClientAddresses()});
  }
  proxy_ = std::make_unique<ProxyProcess>(specs, std::move(proxy_args));
  proxy_->Start();
}

std::shared_ptr<grpc::Channel> Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

std::shared_ptr<grpc::Channel> Connect(const std::string& address, const EtcdTls& tls) {
  const auto read = [](const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = read(tls.ca_file);
  options.pem_cert_chain = read(tls.cert_file);
  options.pem_private_key = read(tls.key_file);
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  if (!tls.server_name.empty()) args.SetSslTargetNameOverride(tls.server_name);
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(options), args);
}

std::unique_ptr<grpc::ClientContext> Ctx(std::chrono::milliseconds timeout) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  return ctx;
}

const std::string& EtcdServerVersion() {
  static const std::string version = [] {
    const std::string out = RunCommand("etcd --version").output;
    const std::string marker = "etcd Version: ";
    const auto at = out.find(marker);
    if (at == std::string::npos) return std::string();
    const auto start = at + marker.size();
    return out.substr(start, out.find_first_of("\r\n", start) - start);
  }();
  return version;
}

bool EtcdServerAtLeast(int major, int minor) {
  int have_major = 0;
  int have_minor = 0;
  if (std::sscanf(EtcdServerVersion().c_str(), "%d.%d", &have_major, &have_minor) != 2) return false;
  return have_major > major || (have_major == major && have_minor >= minor);
}

CommandResult RunCommand(const std::string& command_line, std::chrono::seconds timeout) {
  const std::string full = "timeout " + std::to_string(timeout.count()) + " " + command_line + " 2>&1";
  CommandResult result;
  FILE* pipe = popen(full.c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buf{};
  std::size_t n = 0;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) result.output.append(buf.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

CommandResult Etcdctl(const std::string& address, const std::string& args) {
  return RunCommand("env ETCDCTL_API=3 etcdctl --endpoints " + address + " " + args);
}

bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
             std::chrono::milliseconds interval) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(interval);
  }
}

MetaShards StartMetaShards(const std::string& binary, const std::string& name, int spare,
                           std::vector<std::string> shard_args) {
  MetaShards setup;
  setup.dir = std::make_unique<TempDir>();
  setup.meta = std::make_unique<EtcdCluster>(1, name + "meta");
  setup.meta->Start();
  for (int i = 0; i < 3 + spare; ++i) {
    setup.shards.push_back(std::make_unique<EtcdCluster>(1, name + "shard" + std::to_string(i), std::nullopt, shard_args));
    setup.shards.back()->Start();
  }
  setup.layout = (setup.dir->path() / "layout.yaml").string();
  std::ofstream(setup.layout) << "shards:\n"
                              << "  - {name: s0, start: \"\", end: i, address: " << setup.shards[0]->ClientAddresses()[0] << "}\n"
                              << "  - {name: s1, start: i, end: s, address: " << setup.shards[1]->ClientAddresses()[0] << "}\n"
                              << "  - {name: s2, start: s, end: \"\", address: " << setup.shards[2]->ClientAddresses()[0] << "}\n";
  setup.init = RunCommand(binary + " map init --config " + setup.layout + " --meta-endpoints " + setup.MetaAddress());
  return setup;
}

}  // namespace esp::test
