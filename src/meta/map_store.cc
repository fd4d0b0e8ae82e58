#include "meta/map_store.h"

#include <nlohmann/json.hpp>

#include <cstdio>

namespace esp::meta {
namespace {

namespace pb = etcdserverpb;

[[noreturn]] void Fail(const std::string& what, const EtcdClient& client, const grpc::Status& status) {
  throw MetaError(what + " at the meta store (" + client.EndpointList() + "): " + DescribeStatus(status));
}

}  // namespace

std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    if (static_cast<unsigned char>(end.back()) < 0xff) {
      end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

std::string ProxyRecord::ToJson() const {
  return nlohmann::ordered_json{{"name", name},
                                {"member_id", std::to_string(member_id)},
                                {"client_urls", client_urls},
                                {"map_version", map_version},
                                {"started_at", started_at}}
      .dump();
}

std::optional<ProxyRecord> ProxyRecord::FromJson(const std::string& text) {
  try {
    const auto j = nlohmann::json::parse(text);
    ProxyRecord r;
    r.name = j.value("name", "");
    r.member_id = std::stoull(j.value("member_id", "0"));
    r.client_urls = j.value("client_urls", std::vector<std::string>{});
    r.map_version = j.value("map_version", std::int64_t{0});
    r.started_at = j.value("started_at", "");
    return r;
  } catch (const std::exception&) {
    return std::nullopt;  // someone else's key under our prefix: not a proxy
  }
}

MapStore::MapStore(EtcdClient& client, std::string prefix) : client_(client), prefix_(std::move(prefix)) {
  if (prefix_.empty()) throw ConfigError("--meta-prefix must not be empty");
}

std::string MapStore::HistoryKey(std::int64_t version) const {
  char digits[24];
  std::snprintf(digits, sizeof digits, "%020lld", static_cast<long long>(version));
  return HistoryPrefix() + digits;
}

std::string MapStore::ProxyKey(std::uint64_t member_id) const {
  char hex[20];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(member_id));
  return ProxiesPrefix() + hex;
}

std::optional<StoredMap> MapStore::Load() {
  pb::RangeRequest request;
  request.set_key(MapKey());
  pb::RangeResponse response;
  if (const auto status = client_.Range(request, &response); !status.ok()) Fail("cannot read the shard map", client_, status);
  if (response.kvs_size() == 0) return std::nullopt;
  const auto& kv = response.kvs(0);
  return StoredMap{MapDocument::FromJson(kv.value()), kv.mod_revision()};
}

CasResult MapStore::CompareAndSwap(const std::optional<StoredMap>& read, MapDocument next) {
  next.version = read ? read->doc.version + 1 : 1;
  next.changed_at = NowRfc3339();
  next.Validate();
  pb::TxnRequest txn;
  auto* compare = txn.add_compare();
  compare->set_key(MapKey());
  compare->set_target(pb::Compare::MOD);
  compare->set_result(pb::Compare::EQUAL);
  compare->set_mod_revision(read ? read->mod_revision : 0);  // 0: the key does not exist
  const std::string json = next.ToJson();
  for (const auto& key : {MapKey(), HistoryKey(next.version)}) {
    auto* put = txn.add_success()->mutable_request_put();
    put->set_key(key);
    put->set_value(json);
  }
  txn.add_failure()->mutable_request_range()->set_key(MapKey());
  pb::TxnResponse response;
  if (const auto status = client_.Txn(txn, &response); !status.ok()) Fail("cannot write the shard map", client_, status);
  if (response.succeeded()) return {CasOutcome::kWritten, next.version};
  std::int64_t current = 0;
  const auto& range = response.responses(0).response_range();
  if (range.kvs_size() > 0) current = MapDocument::FromJson(range.kvs(0).value()).version;
  return {CasOutcome::kConflict, current};
}

pb::RangeResponse MapStore::ReadPrefix(const std::string& prefix, const std::string& what) {
  pb::RangeRequest request;
  request.set_key(prefix);
  request.set_range_end(PrefixEnd(prefix));
  pb::RangeResponse response;
  if (const auto status = client_.Range(request, &response); !status.ok()) Fail("cannot read " + what, client_, status);
  return response;
}

std::vector<MapDocument> MapStore::History() {
  // Held: a range-for over a temporary's member would outlive the temporary.
  const auto response = ReadPrefix(HistoryPrefix(), "the map history");
  std::vector<MapDocument> out;
  for (const auto& kv : response.kvs()) {
    out.push_back(MapDocument::FromJson(kv.value()));
  }
  return out;
}

std::vector<ProxyRecord> MapStore::Proxies() {
  const auto response = ReadPrefix(ProxiesPrefix(), "the proxy list");
  std::vector<ProxyRecord> out;
  for (const auto& kv : response.kvs()) {
    if (auto record = ProxyRecord::FromJson(kv.value())) out.push_back(std::move(*record));
  }
  return out;
}

}  // namespace esp::meta
