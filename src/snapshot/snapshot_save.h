#pragma once
// `etcd-sharding-proxy snapshot save DIR`: one etcd snapshot per shard, taken from one member of
// each with the shard's TLS settings and the given etcd user, plus manifest.json describing the
// set (the shard map and, per snapshot, file, shard, endpoint, revisions, size, sha256, times).
//
// The Snapshot RPC through the proxy stays refused: one stream cannot hold several databases, and
// snapshots of several clusters are never one consistent moment. docs/operations.md says how to
// restore a deployment from such a directory.
//
// All or nothing: each snapshot is written to a `.part` file and renamed once verified; the
// manifest is written last, the same way. When any shard fails, what this run wrote is removed
// (and DIR too when this run created it), so a directory with a manifest is always complete.
#include <chrono>
#include <filesystem>
#include <ostream>
#include <stdexcept>
#include <string>

#include "meta/map_document.h"

namespace esp::snapshot {

// A shard (or the file system) failed: the message names which and why.
class SnapshotError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SaveOptions {
  std::filesystem::path dir;
  meta::MapDocument map;
  std::string map_source;  // where the map came from, for the manifest ("meta store ...", "config ...")
  std::string user;        // etcd user on the shards (empty: none)
  std::string password;
  std::chrono::seconds timeout{600};  // for each shard's whole snapshot stream
};

// Refuses (ConfigError) a DIR that exists and is not an empty directory; changes nothing.
void CheckTargetDir(const std::filesystem::path& dir);

// Writes the snapshots and the manifest; progress lines go to `out`. Returns the manifest's path.
// Throws SnapshotError naming the failing shard; ConfigError for a DIR refused by CheckTargetDir.
std::filesystem::path SaveSnapshots(const SaveOptions& options, std::ostream& out);

// Whether `size` bytes can be a database with etcd's sha256 trailer: etcd's database is a whole
// number of 512-byte pages and the snapshot stream appends 32 bytes (etcdctl's own check).
bool HasSha256Trailer(std::uint64_t size);

}  // namespace esp::snapshot
