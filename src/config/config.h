#pragma once
// Proxy configuration: the shard layout and how to reach each shard.
//
// The original project's format loads unchanged:
//   shards:
//     - {start: "", end: i, address: 127.0.0.1:12379}
//     - {start: i, end: s, address: 127.0.0.1:22379}
//     - {start: s, end: "", address: 127.0.0.1:32379}
// Extensions: `name`, `endpoints: [...]` (every member of the shard's cluster), `start_base64` /
// `end_base64` for binary boundaries, and a per-shard `tls` block.
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace esp {

struct TlsClientConfig {
  std::string ca_file;    // trusted CA bundle; empty: the system's roots
  std::string cert_file;  // client certificate for mutual TLS (optional)
  std::string key_file;
  std::string server_name;  // name checked against the shard's certificate (optional)
};

struct ShardConfig {
  std::string name;
  std::string start;  // inclusive; "" on the first shard means "from the smallest key"
  std::string end;    // exclusive; "" on the last shard means "to the end of the keyspace"
  std::vector<std::string> endpoints;  // host:port of each member
  std::optional<TlsClientConfig> tls;
};

// The proxy's own etcd user for the calls it makes on its own behalf when auth is enabled on the
// shards (the auth consistency check). The password stays in a file, never in the config.
//   credentials: {user: root, password_file: /etc/etcd-sharding-proxy/root.password}
struct CredentialsConfig {
  std::string user;
  std::string password_file;
};

// A CA the shards trust for client certificates (etcd --trusted-ca-file), held by the proxy so it
// can present, towards each shard, a certificate naming the same user (CN) as the verified client
// certificate of a client that sent no token (etcd's --client-cert-auth identity).
//   client_cert_identity: {ca_cert_file: /etc/esp/identity-ca.crt, ca_key_file: /etc/esp/identity-ca.key}
struct ClientCertIdentityConfig {
  std::string ca_cert_file;
  std::string ca_key_file;
};

struct Config {
  std::vector<ShardConfig> shards;
  // Client URLs of the other proxies in front of the same shards (`proxies:`), for MemberList.
  std::vector<std::string> proxies;
  std::optional<CredentialsConfig> credentials;
  std::optional<ClientCertIdentityConfig> client_cert_identity;
};

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses and validates; throws ConfigError with a message naming the offending shard.
Config ParseConfig(const std::string& yaml_text);
Config LoadConfigFile(const std::string& path);

// Checks the shard layout: at least one shard, sorted, contiguous, covering the whole keyspace,
// every shard with at least one non-empty endpoint. Entries may share a name when they give the
// same endpoints and TLS: one cluster owning several ranges (events and leases of a Kubernetes
// keyspace apart, the rest around them on a third cluster).
void ValidateConfig(const Config& config);

// "http://host:port" -> "host:port": endpoints are given as etcd's flags take them, with or
// without a scheme; gRPC targets carry none.
std::string NormalizeEndpoint(std::string endpoint);

// Whether two TLS settings (or their absence) reach a cluster the same way.
bool SameTls(const std::optional<TlsClientConfig>& a, const std::optional<TlsClientConfig>& b);

// The whole content of a file; throws ConfigError naming it when it cannot be read.
std::string ReadFileOrThrow(const std::string& path);

// Checks a file that holds a secret (`what`: "credentials.password_file", ...) before it is read.
// Refused (ConfigError) when other users may read or write it, as ssh refuses such a private
// key: a secret anyone on the host can read is no longer one, and starting anyway would hide it.
// Group access is the usual way to share a secret with a service's group (Kubernetes:
// defaultMode 0440 with fsGroup), so it only earns a warning. Symbolic links are followed.
void CheckSecretFile(const std::string& path, const std::string& what);

// Printable form of a key for messages: printable ASCII as is, other bytes as \xNN.
std::string PrintableKey(const std::string& key);

}  // namespace esp
