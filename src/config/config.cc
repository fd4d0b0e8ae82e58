#include "config/config.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "common/base64.h"

namespace esp {
namespace {

std::string DecodeBase64OrThrow(const std::string& text, const std::string& where) {
  auto out = DecodeBase64(text);
  if (!out) throw ConfigError(where + ": invalid base64 '" + text + "'");
  return std::move(*out);
}

std::string ShardLabel(std::size_t index, const ShardConfig& shard) {
  std::ostringstream os;
  os << "shard " << index;
  if (!shard.name.empty()) os << " (" << shard.name << ")";
  return os.str();
}

std::string Bound(const std::string& key) { return key.empty() ? "unbounded" : "\"" + PrintableKey(key) + "\""; }

std::string ReadBoundary(const YAML::Node& node, const char* field, const std::string& where) {
  const std::string b64_field = std::string(field) + "_base64";
  if (node[b64_field]) {
    if (node[field]) throw ConfigError(where + ": give either '" + field + "' or '" + b64_field + "', not both");
    return DecodeBase64OrThrow(node[b64_field].as<std::string>(), where);
  }
  if (!node[field] || node[field].IsNull()) return "";
  return node[field].as<std::string>();
}

ShardConfig ReadShard(const YAML::Node& node, std::size_t index) {
  const std::string where = "shard " + std::to_string(index);
  if (!node.IsMap()) throw ConfigError(where + ": expected a mapping with start, end and address");
  static const std::set<std::string> known = {"name",         "start", "end",      "start_base64",
                                              "end_base64",   "address", "endpoints", "tls"};
  for (const auto& item : node) {
    const auto key = item.first.as<std::string>();
    if (!known.contains(key)) throw ConfigError(where + ": unknown field '" + key + "'");
  }
  ShardConfig shard;
  shard.name = node["name"] ? node["name"].as<std::string>() : "shard-" + std::to_string(index);
  shard.start = ReadBoundary(node, "start", where);
  shard.end = ReadBoundary(node, "end", where);
  if (node["address"]) shard.endpoints.push_back(node["address"].IsNull() ? "" : node["address"].as<std::string>());
  if (node["endpoints"]) {
    if (!node["endpoints"].IsSequence()) throw ConfigError(where + ": 'endpoints' must be a list");
    for (const auto& endpoint : node["endpoints"]) {
      shard.endpoints.push_back(endpoint.IsNull() ? "" : endpoint.as<std::string>());
    }
  }
  for (auto& endpoint : shard.endpoints) endpoint = NormalizeEndpoint(endpoint);
  if (const auto tls = node["tls"]) {
    TlsClientConfig t;
    if (tls["ca_file"]) t.ca_file = tls["ca_file"].as<std::string>();
    if (tls["cert_file"]) t.cert_file = tls["cert_file"].as<std::string>();
    if (tls["key_file"]) t.key_file = tls["key_file"].as<std::string>();
    if (tls["server_name"]) t.server_name = tls["server_name"].as<std::string>();
    shard.tls = t;
  }
  return shard;
}

const ShardConfig* FirstNamed(const std::vector<ShardConfig>& shards, const std::string& name) {
  for (const auto& s : shards) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

bool SameCluster(const ShardConfig& a, const ShardConfig& b) { return a.endpoints == b.endpoints && SameTls(a.tls, b.tls); }

}  // namespace

std::string NormalizeEndpoint(std::string endpoint) {
  for (const char* scheme : {"http://", "https://", "unix://"}) {
    if (endpoint.starts_with(scheme)) return endpoint.substr(std::string(scheme).size());
  }
  return endpoint;
}

bool SameTls(const std::optional<TlsClientConfig>& a, const std::optional<TlsClientConfig>& b) {
  if (a.has_value() != b.has_value()) return false;
  return !a || (a->ca_file == b->ca_file && a->cert_file == b->cert_file && a->key_file == b->key_file &&
                a->server_name == b->server_name);
}

std::string PrintableKey(const std::string& key) {
  static const char* const kHex = "0123456789abcdef";
  std::string out;
  for (const unsigned char c : key) {
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') {
      out.push_back(static_cast<char>(c));
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    }
  }
  return out;
}

void ValidateConfig(const Config& config) {
  const auto& shards = config.shards;
  if (shards.empty()) throw ConfigError("no shards configured: 'shards' needs at least one entry");
  std::set<std::string> names;
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const auto& s = shards[i];
    const std::string label = ShardLabel(i, s);
    // Entries with one name are one cluster owning several ranges: they must name it alike.
    if (!names.insert(s.name).second && !SameCluster(s, *FirstNamed(shards, s.name))) {
      throw ConfigError(label + ": duplicate shard name '" + s.name + "' with other endpoints or TLS (entries with "
                        "one name are one cluster owning several ranges, and must give the same endpoints and TLS)");
    }
    if (s.endpoints.empty()) throw ConfigError(label + ": no endpoint; set 'address' or 'endpoints'");
    for (const auto& endpoint : s.endpoints) {
      if (endpoint.empty()) throw ConfigError(label + ": empty endpoint address");
    }
    // The identity is a client certificate: only a TLS connection can carry it to the shard.
    if (config.client_cert_identity && !s.tls) {
      throw ConfigError(label + ": 'client_cert_identity' needs a 'tls' block on every shard (the user's identity "
                        "reaches the shard as a client certificate)");
    }
    const bool last = i + 1 == shards.size();
    if (s.end.empty() && !last) {
      throw ConfigError(label + ": end is unbounded but more shards follow; shards overlap");
    }
    if (!s.end.empty() && s.start >= s.end) {
      throw ConfigError(label + ": start " + Bound(s.start) + " is not below end " + Bound(s.end));
    }
    if (i == 0) {
      if (!s.start.empty()) {
        throw ConfigError(label + ": the first shard must start at \"\" so that the whole keyspace is covered (starts at " +
                          Bound(s.start) + ")");
      }
      continue;
    }
    const auto& prev = shards[i - 1];
    const std::string prev_label = ShardLabel(i - 1, prev);
    if (s.start < prev.start) {
      throw ConfigError("shards are not sorted: " + label + " starts at " + Bound(s.start) +
                        ", before " + prev_label + " at " + Bound(prev.start));
    }
    if (s.start < prev.end) {
      throw ConfigError(label + " overlaps " + prev_label + ": it starts at " + Bound(s.start) +
                        " but " + prev_label + " ends at " + Bound(prev.end));
    }
    if (s.start > prev.end) {
      throw ConfigError("gap in the keyspace between " + prev_label + " (ends at " + Bound(prev.end) +
                        ") and " + label + " (starts at " + Bound(s.start) + ")");
    }
  }
  if (!shards.back().end.empty()) {
    throw ConfigError(ShardLabel(shards.size() - 1, shards.back()) +
                      ": the last shard must end at \"\" (unbounded) so that the whole keyspace is covered (ends at " +
                      Bound(shards.back().end) + ")");
  }
}

namespace {

ClientCertIdentityConfig ReadCertIdentity(const YAML::Node& node) {
  if (!node.IsMap() || !node["ca_cert_file"] || !node["ca_key_file"]) {
    throw ConfigError("'client_cert_identity' needs 'ca_cert_file' and 'ca_key_file' (the CA the shards trust for "
                      "client certificates)");
  }
  ClientCertIdentityConfig out{node["ca_cert_file"].as<std::string>(), node["ca_key_file"].as<std::string>()};
  if (out.ca_cert_file.empty() || out.ca_key_file.empty()) {
    throw ConfigError("'client_cert_identity': 'ca_cert_file' and 'ca_key_file' must not be empty");
  }
  return out;
}

}  // namespace

Config ParseConfig(const std::string& yaml_text) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(std::string("invalid YAML: ") + e.what());
  }
  if (!root.IsMap() || !root["shards"]) throw ConfigError("no shards configured: missing 'shards'");
  const auto shards = root["shards"];
  if (!shards.IsSequence()) throw ConfigError("'shards' must be a list");
  Config config;
  try {
    for (std::size_t i = 0; i < shards.size(); ++i) config.shards.push_back(ReadShard(shards[i], i));
    if (const auto proxies = root["proxies"]) {
      if (!proxies.IsSequence()) throw ConfigError("'proxies' must be a list of client URLs");
      for (const auto& url : proxies) config.proxies.push_back(url.as<std::string>());
    }
    if (const auto credentials = root["credentials"]) {
      // A password written into the config would be used by no one (the file's is) yet sit in a
      // file that is rarely guarded as a secret: refused rather than half used.
      if (credentials.IsMap() && credentials["password"]) {
        throw ConfigError("'credentials' has a 'password': a password is read only from 'password_file' (one line); "
                          "remove it from the config");
      }
      if (!credentials.IsMap() || !credentials["user"] || !credentials["password_file"]) {
        throw ConfigError("'credentials' needs 'user' and 'password_file' (a plain password is not accepted)");
      }
      config.credentials = CredentialsConfig{credentials["user"].as<std::string>(),
                                             credentials["password_file"].as<std::string>()};
    }
    if (const auto identity = root["client_cert_identity"]) config.client_cert_identity = ReadCertIdentity(identity);
  } catch (const YAML::Exception& e) {
    throw ConfigError(std::string("invalid shard entry: ") + e.what());
  }
  ValidateConfig(config);
  return config;
}

std::string ReadFileOrThrow(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError("cannot read " + path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void CheckSecretFile(const std::string& path, const std::string& what) {
  struct stat info {};
  if (stat(path.c_str(), &info) != 0) throw ConfigError("cannot read " + path + " (" + what + "): " + std::strerror(errno));
  const auto mode = fmt::format("{:04o}", info.st_mode & 07777);
  if ((info.st_mode & S_IRWXO) != 0) {
    throw ConfigError(what + " " + path + " is accessible by other users (mode " + mode +
                      "); it holds a secret: chmod o-rwx it (Kubernetes: defaultMode 0400, or 0440 with fsGroup)");
  }
  if ((info.st_mode & S_IRWXG) != 0) {
    spdlog::warn("{} {} is accessible by its group (mode {}); it holds a secret: make sure only the proxy's group can "
                 "read it",
                 what, path, mode);
  }
}

Config LoadConfigFile(const std::string& path) { return ParseConfig(ReadFileOrThrow(path)); }

}  // namespace esp
