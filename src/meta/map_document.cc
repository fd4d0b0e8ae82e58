#include "meta/map_document.h"

#include <nlohmann/json.hpp>
#include <openssl/rand.h>

#include <chrono>
#include <ctime>
#include <set>

#include "common/base64.h"

namespace esp::meta {
namespace {

using Json = nlohmann::ordered_json;

Json TlsToJson(const TlsClientConfig& tls) {
  return {{"ca_file", tls.ca_file}, {"cert_file", tls.cert_file}, {"key_file", tls.key_file},
          {"server_name", tls.server_name}};
}

TlsClientConfig TlsFromJson(const Json& j) {
  TlsClientConfig tls;
  tls.ca_file = j.value("ca_file", "");
  tls.cert_file = j.value("cert_file", "");
  tls.key_file = j.value("key_file", "");
  tls.server_name = j.value("server_name", "");
  return tls;
}

std::string KeyFromJson(const Json& j, const char* field) {
  const auto text = j.value(field, "");
  auto key = DecodeBase64(text);
  if (!key) throw ConfigError(std::string("map document: invalid base64 in '") + field + "': " + text);
  return std::move(*key);
}

void ValidateMove(const MapDocument& doc, const MoveRecord& move) {
  const std::string what = "move " + DescribeRange(move.start, move.end) + " from '" + move.from + "' to '" + move.to + "'";
  if (move.id.empty()) throw ConfigError(what + ": no id");
  if (doc.FindShard(move.from) == nullptr || doc.FindShard(move.to) == nullptr || move.from == move.to) {
    throw ConfigError(what + ": names an unknown shard or the same shard twice");
  }
  const auto range = doc.FindRange(move.start, move.end);
  if (!range) throw ConfigError(what + ": the range is not an entry of the map's ranges");
  const std::string& owner = doc.ranges[*range].shard;
  if (move.state == "copying" ? owner != move.from : move.state == "cleanup" ? owner != move.to : true) {
    throw ConfigError(what + ": state '" + move.state + "' with the range owned by '" + owner + "'");
  }
}

Json MoveToJson(const MoveRecord& m) {
  return {{"id", m.id},     {"start_base64", EncodeBase64(m.start)}, {"end_base64", EncodeBase64(m.end)},
          {"from", m.from}, {"to", m.to},
          {"state", m.state}, {"started_at", m.started_at}};
}

MoveRecord MoveFromJson(const Json& j) {
  MoveRecord m;
  m.id = j.at("id").get<std::string>();
  m.start = KeyFromJson(j, "start_base64");
  m.end = KeyFromJson(j, "end_base64");
  m.from = j.at("from").get<std::string>();
  m.to = j.at("to").get<std::string>();
  m.state = j.at("state").get<std::string>();
  m.started_at = j.value("started_at", "");
  return m;
}

}  // namespace

void MapDocument::Validate() const {
  if (shards.empty()) throw ConfigError("the map has no shard");
  std::set<std::string> names;
  for (const auto& s : shards) {
    if (s.name.empty()) throw ConfigError("a shard has an empty name");
    if (!names.insert(s.name).second) throw ConfigError("duplicate shard name '" + s.name + "'");
    if (s.endpoints.empty()) throw ConfigError("shard '" + s.name + "': no endpoint");
    for (const auto& e : s.endpoints) {
      if (e.empty()) throw ConfigError("shard '" + s.name + "': empty endpoint address");
    }
  }
  for (const auto& r : ranges) {
    if (!names.contains(r.shard)) {
      throw ConfigError("range " + DescribeRange(r.start, r.end) + " is owned by unknown shard '" + r.shard + "'");
    }
  }
  ValidateRanges(ShardNames(), OwnedRanges());
  if (move) ValidateMove(*this, *move);
}

std::optional<std::size_t> MapDocument::FindRange(const std::string& start, const std::string& end) const {
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    if (ranges[i].start == start && ranges[i].end == end) return i;
  }
  return std::nullopt;
}

const ShardConfig* MapDocument::FindShard(const std::string& name) const {
  for (const auto& s : shards) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

bool MapDocument::Owns(const std::string& name) const {
  for (const auto& r : ranges) {
    if (r.shard == name) return true;
  }
  return false;
}

std::vector<std::string> MapDocument::ShardNames() const {
  std::vector<std::string> names;
  for (const auto& s : shards) names.push_back(s.name);
  return names;
}

std::vector<OwnedRange> MapDocument::OwnedRanges() const {
  std::vector<OwnedRange> out;
  for (const auto& r : ranges) {
    std::size_t index = shards.size();  // unknown: ValidateRanges names it
    for (std::size_t i = 0; i < shards.size(); ++i) {
      if (shards[i].name == r.shard) index = i;
    }
    out.push_back({r.start, r.end, index});
  }
  return out;
}

ShardLayout MapDocument::ToLayout() const {
  ShardLayout layout{shards, OwnedRanges(), version};
  for (const auto& r : ranges) {
    if (r.min_revision > 0) layout.floors.push_back({r.start, r.end, r.min_revision});
  }
  if (move && move->state == "copying") {
    std::size_t source = 0;
    for (std::size_t i = 0; i < shards.size(); ++i) {
      if (shards[i].name == move->from) source = i;
    }
    layout.moving = MovingRange{move->start, move->end, source, move->to, FenceKey(move->start, move->id)};
  }
  return layout;
}

std::string MapDocument::ToJson() const {
  Json j;
  j["version"] = version;
  // As a string: JSON numbers do not carry 64 bits exactly.
  j["cluster_id"] = std::to_string(cluster_id);
  j["change"] = change;
  j["changed_at"] = changed_at;
  j["shards"] = Json::array();
  for (const auto& s : shards) {
    Json shard{{"name", s.name}, {"endpoints", s.endpoints}};
    if (s.tls) shard["tls"] = TlsToJson(*s.tls);
    j["shards"].push_back(std::move(shard));
  }
  j["ranges"] = Json::array();
  for (const auto& r : ranges) {
    Json range{{"start_base64", EncodeBase64(r.start)}, {"end_base64", EncodeBase64(r.end)}, {"shard", r.shard}};
    if (r.min_revision > 0) range["min_revision"] = std::to_string(r.min_revision);
    j["ranges"].push_back(std::move(range));
  }
  if (move) j["move"] = MoveToJson(*move);
  return j.dump();
}

MapDocument MapDocument::FromJson(const std::string& text) {
  MapDocument doc;
  try {
    const Json j = Json::parse(text);
    doc.version = j.at("version").get<std::int64_t>();
    doc.cluster_id = std::stoull(j.value("cluster_id", "0"));
    doc.change = j.value("change", "");
    doc.changed_at = j.value("changed_at", "");
    for (const auto& s : j.at("shards")) {
      ShardConfig shard;
      shard.name = s.at("name").get<std::string>();
      shard.endpoints = s.at("endpoints").get<std::vector<std::string>>();
      if (s.contains("tls")) shard.tls = TlsFromJson(s.at("tls"));
      doc.shards.push_back(std::move(shard));
    }
    for (const auto& r : j.at("ranges")) {
      doc.ranges.push_back({KeyFromJson(r, "start_base64"), KeyFromJson(r, "end_base64"), r.at("shard").get<std::string>(),
                            std::stoll(r.value("min_revision", "0"))});
    }
    if (j.contains("move")) doc.move = MoveFromJson(j.at("move"));
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(std::string("map document does not parse: ") + e.what());
  } catch (const std::logic_error& e) {  // stoull, stoll
    throw ConfigError(std::string("map document: invalid number: ") + e.what());
  }
  doc.Validate();
  return doc;
}

MapDocument MapDocument::FromConfig(const Config& config) {
  MapDocument doc;
  for (const auto& s : config.shards) {
    // Entries with one name are one cluster owning several ranges.
    if (doc.FindShard(s.name) == nullptr) {
      ShardConfig shard = s;
      shard.start.clear();
      shard.end.clear();
      doc.shards.push_back(std::move(shard));
    }
    doc.ranges.push_back({s.start, s.end, s.name});
  }
  return doc;
}

std::uint64_t NewClusterId() {
  std::uint64_t id = 0;
  while (id == 0) RAND_bytes(reinterpret_cast<unsigned char*>(&id), sizeof id);
  return id;
}

std::string NowRfc3339() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

}  // namespace esp::meta
