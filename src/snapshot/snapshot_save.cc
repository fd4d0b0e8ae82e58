#include "snapshot/snapshot_save.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "meta/etcd_client.h"

namespace esp::snapshot {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;
constexpr std::size_t kSha256Size = 32;

std::string Hex(const unsigned char* bytes, std::size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    out += kDigits[bytes[i] >> 4];
    out += kDigits[bytes[i] & 0xf];
  }
  return out;
}

// Ids in hex as etcdctl prints them, and as strings: JSON readers keep 53 bits of a number.
std::string HexId(std::uint64_t id) {
  char text[17];
  std::snprintf(text, sizeof text, "%llx", static_cast<unsigned long long>(id));
  return text;
}

// One SHA-256 computation (OpenSSL's EVP interface), owned.
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) { EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr); }
  void Update(const char* data, std::size_t n) { EVP_DigestUpdate(ctx_.get(), data, n); }
  std::array<unsigned char, kSha256Size> Final() {
    std::array<unsigned char, kSha256Size> digest{};
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx_.get(), digest.data(), &n);
    return digest;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx_;
};

// Makes a written file durable before it is renamed into place.
void Fsync(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// What this run created, removed again unless the run completes: a failed save leaves no file
// behind, and no directory that it made.
class Cleanup {
 public:
  explicit Cleanup(fs::path dir) : dir_(std::move(dir)), created_dir_(!fs::exists(dir_)) {}
  ~Cleanup() {
    if (committed_) return;
    std::error_code ignored;
    for (const auto& path : files_) fs::remove(path, ignored);
    if (created_dir_) fs::remove(dir_, ignored);
  }
  Cleanup(const Cleanup&) = delete;
  Cleanup& operator=(const Cleanup&) = delete;
  void Track(const fs::path& path) { files_.push_back(path); }
  void Commit() { committed_ = true; }

 private:
  fs::path dir_;
  bool created_dir_;
  bool committed_ = false;
  std::vector<fs::path> files_;
};

struct Taken {
  std::string shard;
  std::string file;
  std::string endpoint;
  std::uint64_t cluster_id = 0;
  std::uint64_t member_id = 0;
  std::string etcd_version;
  std::int64_t revision = 0;        // Status header just before the snapshot began
  std::int64_t revision_after = 0;  // Status header just after it ended
  std::uint64_t size = 0;
  std::string sha256;
  std::string started_at;
  std::string finished_at;
};

meta::EtcdClientOptions MemberClient(const ShardConfig& shard, const std::string& endpoint, const SaveOptions& options) {
  meta::EtcdClientOptions client;
  client.endpoints = {endpoint};
  client.tls = shard.tls;
  client.user = options.user;
  client.password = options.password;
  client.call_timeout = std::chrono::seconds(5);
  return client;
}

std::string Describe(const ShardConfig& shard, const std::string& endpoint) {
  return "shard \"" + shard.name + "\" (" + endpoint + ")";
}

// Streams the member's snapshot into `part`, checking etcd's sha256 trailer. Returns the size and
// the sha256 of the whole file.
std::pair<std::uint64_t, std::string> StreamTo(meta::EtcdClient& client, const fs::path& part,
                                               const std::string& what, std::chrono::seconds timeout) {
  std::ofstream file(part, std::ios::binary | std::ios::trunc);
  if (!file) throw SnapshotError("cannot write " + part.string());
  fs::permissions(part, fs::perms::owner_read | fs::perms::owner_write);  // a database holds secrets
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  auto stream = client.Snapshot(context);
  if (!stream) throw SnapshotError(what + ": authentication failed");
  Sha256 whole;
  Sha256 database;    // every byte but the trailer
  std::string tail;   // the last bytes seen, held back until more arrive: they may be the trailer
  std::uint64_t size = 0;
  etcdserverpb::SnapshotResponse chunk;
  while (stream->Read(&chunk)) {
    const std::string& blob = chunk.blob();
    file.write(blob.data(), static_cast<std::streamsize>(blob.size()));
    whole.Update(blob.data(), blob.size());
    size += blob.size();
    tail += blob;
    if (tail.size() > kSha256Size) {
      database.Update(tail.data(), tail.size() - kSha256Size);
      tail.erase(0, tail.size() - kSha256Size);
    }
  }
  const grpc::Status status = stream->Finish();
  if (!status.ok()) throw SnapshotError(what + ": snapshot failed: " + meta::DescribeStatus(status));
  file.close();
  if (!file) throw SnapshotError("cannot write " + part.string());
  // etcdctl refuses a stream without the trailer; restoring checks the digest, so do it now, while
  // the member can still be asked again.
  if (!HasSha256Trailer(size)) {
    throw SnapshotError(what + ": sha256 checksum not found [bytes: " + std::to_string(size) + "]");
  }
  const auto expected = database.Final();
  if (tail != std::string(reinterpret_cast<const char*>(expected.data()), expected.size())) {
    throw SnapshotError(what + ": the snapshot's sha256 trailer does not match its data (" +
                        Hex(reinterpret_cast<const unsigned char*>(tail.data()), tail.size()) + " != " +
                        Hex(expected.data(), expected.size()) + ")");
  }
  Fsync(part);
  const auto digest = whole.Final();
  return {size, Hex(digest.data(), digest.size())};
}

// The shard's snapshot from its first member that answers Status; throws naming the shard.
Taken SaveShard(const ShardConfig& shard, const SaveOptions& options, Cleanup& cleanup, std::ostream& out) {
  std::string failures;
  for (const auto& raw_endpoint : shard.endpoints) {
    const std::string endpoint = NormalizeEndpoint(raw_endpoint);
    const std::string what = Describe(shard, endpoint);
    meta::EtcdClient client(MemberClient(shard, endpoint, options));
    etcdserverpb::StatusResponse before;
    if (const auto status = client.Status(&before); !status.ok()) {
      failures += (failures.empty() ? "" : "; ") + endpoint + ": " + meta::DescribeStatus(status);
      continue;  // another member may answer: any member's database is the shard's
    }
    Taken taken;
    taken.shard = shard.name;
    taken.file = shard.name + ".db";
    taken.endpoint = endpoint;
    taken.cluster_id = before.header().cluster_id();
    taken.member_id = before.header().member_id();
    taken.etcd_version = before.version();
    taken.revision = before.header().revision();
    taken.started_at = meta::NowRfc3339();
    out << "saving " << what << " at revision " << taken.revision << "\n";
    const fs::path part = options.dir / (taken.file + ".part");
    cleanup.Track(part);
    std::tie(taken.size, taken.sha256) = StreamTo(client, part, what, options.timeout);
    etcdserverpb::StatusResponse after;
    if (const auto status = client.Status(&after); !status.ok()) {
      throw SnapshotError(what + ": Status after the snapshot failed: " + meta::DescribeStatus(status));
    }
    taken.revision_after = after.header().revision();
    taken.finished_at = meta::NowRfc3339();
    const fs::path final_path = options.dir / taken.file;
    cleanup.Track(final_path);
    fs::rename(part, final_path);
    out << "saved " << what << ": " << final_path.string() << ", " << taken.size << " bytes, sha256 " << taken.sha256
        << "\n";
    return taken;
  }
  throw SnapshotError("shard \"" + shard.name + "\": no member answered: " + failures);
}

Json ManifestJson(const SaveOptions& options, const std::vector<Taken>& taken, const std::string& created_at) {
  Json snapshots = Json::array();
  for (const auto& t : taken) {
    snapshots.push_back({{"shard", t.shard},
                         {"file", t.file},
                         {"endpoint", t.endpoint},
                         {"cluster_id", HexId(t.cluster_id)},
                         {"member_id", HexId(t.member_id)},
                         {"etcd_version", t.etcd_version},
                         {"revision", t.revision},
                         {"revision_after", t.revision_after},
                         {"size", t.size},
                         {"sha256", t.sha256},
                         {"started_at", t.started_at},
                         {"finished_at", t.finished_at}});
  }
  return {{"format", "etcd-sharding-proxy snapshot 1"},
          {"created_at", created_at},
          {"map_source", options.map_source},
          {"map", Json::parse(options.map.ToJson())},
          {"snapshots", std::move(snapshots)}};
}

}  // namespace

bool HasSha256Trailer(std::uint64_t size) { return size % 512 == kSha256Size; }

void CheckTargetDir(const fs::path& dir) {
  std::error_code error;
  const auto status = fs::status(dir, error);
  if (!fs::exists(status)) return;
  if (!fs::is_directory(status)) throw ConfigError(dir.string() + " exists and is not a directory: nothing was written");
  if (!fs::is_empty(dir, error) || error) {
    throw ConfigError(dir.string() + " exists and is not empty: snapshot save writes into a new or empty directory; "
                      "nothing was written");
  }
}

fs::path SaveSnapshots(const SaveOptions& options, std::ostream& out) {
  CheckTargetDir(options.dir);
  const std::string created_at = meta::NowRfc3339();
  Cleanup cleanup(options.dir);
  std::error_code error;
  fs::create_directories(options.dir, error);
  if (error) throw SnapshotError("cannot create " + options.dir.string() + ": " + error.message());
  std::vector<Taken> taken;
  // One shard at a time: a snapshot reads a member's whole database, and the members of different
  // shards may share a host.
  for (const auto& shard : options.map.shards) taken.push_back(SaveShard(shard, options, cleanup, out));

  const fs::path manifest = options.dir / "manifest.json";
  const fs::path part = options.dir / "manifest.json.part";
  cleanup.Track(part);
  {
    std::ofstream file(part, std::ios::trunc);
    file << ManifestJson(options, taken, created_at).dump(2) << "\n";
    file.close();
    if (!file) throw SnapshotError("cannot write " + part.string());
  }
  Fsync(part);
  cleanup.Track(manifest);
  fs::rename(part, manifest);
  Fsync(options.dir);
  cleanup.Commit();
  return manifest;
}

}  // namespace esp::snapshot
