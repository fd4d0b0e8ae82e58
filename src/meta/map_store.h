#pragma once
// The meta store's layout, under one prefix (--meta-prefix, default "/etcd-sharding-proxy/"):
//   <prefix>map                    the current MapDocument (JSON)
//   <prefix>history/<version>      every version ever written, zero-padded to sort (map history)
//   <prefix>proxies/<member id>    one record per live proxy, under that proxy's lease
//   <prefix>move/lock              the running mover, under its lease (reshard/)
//   <prefix>move/progress          what the mover has done so far (reshard status)
// Every change to the map is one Txn that compares the map key's mod_revision with the one the
// writer read: of two racing writers exactly one wins.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "meta/etcd_client.h"
#include "meta/map_document.h"

namespace esp::meta {

inline constexpr const char* kDefaultPrefix = "/etcd-sharding-proxy/";

// A failure to talk to the meta store (unreachable, refused): the message says which and why.
class MetaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct StoredMap {
  MapDocument doc;
  std::int64_t mod_revision = 0;  // of the map key: what a compare-and-swap compares
};

// What a live proxy publishes about itself.
struct ProxyRecord {
  std::string name;
  std::uint64_t member_id = 0;
  std::vector<std::string> client_urls;
  std::int64_t map_version = 0;  // the map version it serves
  std::string started_at;
  std::string ToJson() const;
  static std::optional<ProxyRecord> FromJson(const std::string& text);
};

enum class CasOutcome { kWritten, kConflict };

struct CasResult {
  CasOutcome outcome;
  std::int64_t current_version = 0;  // after the write, or the winner's on a conflict
};

class MapStore {
 public:
  MapStore(EtcdClient& client, std::string prefix = kDefaultPrefix);

  const std::string& prefix() const { return prefix_; }
  EtcdClient& client() { return client_; }
  std::string MapKey() const { return prefix_ + "map"; }
  std::string HistoryKey(std::int64_t version) const;
  std::string HistoryPrefix() const { return prefix_ + "history/"; }
  std::string ProxiesPrefix() const { return prefix_ + "proxies/"; }
  std::string ProxyKey(std::uint64_t member_id) const;
  // A range move (reshard/): the mover's lock (under its lease) and its progress.
  std::string MoverLockKey() const { return prefix_ + "move/lock"; }
  std::string MoveProgressKey() const { return prefix_ + "move/progress"; }

  // The current map, or nullopt when none was written; MetaError when unreachable.
  std::optional<StoredMap> Load();
  // Writes `next` as version (read's version + 1) if the map is still what `read` says
  // (nullopt: no map yet). Stamps version and changed_at. MetaError when unreachable.
  CasResult CompareAndSwap(const std::optional<StoredMap>& read, MapDocument next);
  std::vector<MapDocument> History();
  std::vector<ProxyRecord> Proxies();

 private:
  // Every key under `prefix`; MetaError naming `what` when the store cannot be read.
  etcdserverpb::RangeResponse ReadPrefix(const std::string& prefix, const std::string& what);

  EtcdClient& client_;
  std::string prefix_;
};

// etcd's prefix end: the smallest key greater than every key starting with `prefix`.
std::string PrefixEnd(const std::string& prefix);

}  // namespace esp::meta
