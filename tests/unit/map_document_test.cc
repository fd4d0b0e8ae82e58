// The meta store's map document and the ShardMap built from ranges (a shard owning zero, one or
// several ranges), without a meta store: what the integration tests rely on.
#include <gtest/gtest.h>

#include "meta/map_document.h"
#include "shard/kubernetes_layout.h"
#include "shard/shard_map.h"

namespace esp {
namespace {

meta::MapDocument ThreeShards() {
  meta::MapDocument doc;
  doc.version = 7;
  doc.cluster_id = 0xfedcba9876543210ULL;
  doc.change = "test";
  for (const char* name : {"a", "b", "c"}) doc.shards.push_back({name, "", "", {std::string("127.0.0.1:1") + name[0]}, {}});
  doc.shards[1].tls = TlsClientConfig{"ca.pem", "c.pem", "k.pem", "shard-b"};
  doc.ranges = {{"", std::string("i\x00\xff", 3), "a"}, {std::string("i\x00\xff", 3), "s", "b"}, {"s", "", "c"}};
  return doc;
}

TEST(MapDocumentTest, JsonRoundTripKeepsBinaryKeysTlsAndIds) {
  const auto doc = ThreeShards();
  const auto back = meta::MapDocument::FromJson(doc.ToJson());
  EXPECT_EQ(back.version, 7);
  EXPECT_EQ(back.cluster_id, doc.cluster_id);  // all 64 bits, through a JSON string
  ASSERT_EQ(back.ranges.size(), 3u);
  EXPECT_EQ(back.ranges[0].end, std::string("i\x00\xff", 3));
  EXPECT_EQ(back.ranges[1].shard, "b");
  ASSERT_TRUE(back.shards[1].tls.has_value());
  EXPECT_EQ(back.shards[1].tls->server_name, "shard-b");
  EXPECT_FALSE(back.shards[0].tls.has_value());
}

TEST(MapDocumentTest, InvalidDocumentsAreRefusedWithTheReason) {
  const auto refused = [](meta::MapDocument doc, const std::string& expected) {
    try {
      doc.Validate();
      ADD_FAILURE() << "accepted; expected: " << expected;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  };
  auto unknown = ThreeShards();
  unknown.ranges[2].shard = "z";
  refused(unknown, "unknown shard 'z'");
  auto gap = ThreeShards();
  gap.ranges[2].start = "t";
  refused(gap, "gap in the keyspace");
  auto duplicate = ThreeShards();
  duplicate.shards[2].name = "a";
  refused(duplicate, "duplicate shard name 'a'");
  auto no_endpoint = ThreeShards();
  no_endpoint.shards[0].endpoints.clear();
  refused(no_endpoint, "shard 'a': no endpoint");
  auto open_start = ThreeShards();
  open_start.ranges[0].start = "0";
  refused(open_start, "the first range must start at");
  EXPECT_THROW(meta::MapDocument::FromJson("{\"version\": 1}"), ConfigError);
  EXPECT_THROW(meta::MapDocument::FromJson("not json"), ConfigError);
}

TEST(MapDocumentTest, AShardMayOwnNothing) {
  auto doc = ThreeShards();
  doc.shards.push_back({"d", "", "", {"127.0.0.1:9"}, {}});
  EXPECT_NO_THROW(doc.Validate());
  EXPECT_FALSE(doc.Owns("d"));
  EXPECT_TRUE(doc.Owns("a"));
  const ShardMap map(doc.ShardNames(), doc.OwnedRanges());
  ASSERT_EQ(map.size(), 4u);
  EXPECT_TRUE(map.shard(3).ranges.empty());
  EXPECT_EQ(map.Describe(3), "shard \"d\" (no range)");
  EXPECT_EQ(map.Find("d"), 3u);
  EXPECT_FALSE(map.Find("e").has_value());
}

// Shard 0 owns ["", "g") and ["p", end); shard 1 owns ["g", "p"); shard 2 owns nothing.
ShardMap Interleaved() {
  return ShardMap({"s0", "s1", "s2"}, {{"", "g", 0}, {"g", "m", 1}, {"m", "p", 1}, {"p", "", 0}});
}

TEST(ShardMapRangesTest, AdjacentRangesOfOneShardAreJoined) {
  const auto map = Interleaved();
  ASSERT_EQ(map.ranges().size(), 3u);
  EXPECT_EQ(map.ranges()[1].start, "g");
  EXPECT_EQ(map.ranges()[1].end, "p");
  EXPECT_EQ(map.Describe(0), "shard \"s0\" [\"\", \"g\"), [\"p\", end of keyspace)");
  EXPECT_EQ(map.Describe(1), "shard \"s1\" [\"g\", \"p\")");
}

TEST(ShardMapRangesTest, KeysAndRangesFollowTheRangeTable) {
  const auto map = Interleaved();
  EXPECT_EQ(map.ShardForKey("a"), 0u);
  EXPECT_EQ(map.ShardForKey("n"), 1u);
  EXPECT_EQ(map.ShardForKey("z"), 0u);
  EXPECT_EQ(map.SingleShard("h", "o"), 1u);  // across the joined boundary "m"
  EXPECT_FALSE(map.SingleShard("a", "h").has_value());
  // A range over all three ranges: three pieces, two of them on shard 0; ShardsForRange names
  // each shard once.
  const auto pieces = map.Split("a", std::string(kRangeEndAll));
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(pieces[0].shard, 0u);
  EXPECT_EQ(pieces[0].range_end, "g");
  EXPECT_EQ(pieces[1].shard, 1u);
  EXPECT_EQ(pieces[2].shard, 0u);
  EXPECT_EQ(pieces[2].key, "p");
  EXPECT_EQ(pieces[2].range_end, std::string(kRangeEndAll));
  EXPECT_EQ(map.ShardsForRange("a", std::string(kRangeEndAll)), (std::vector<std::size_t>{0, 1}));
}

}  // namespace
}  // namespace esp

namespace esp {
namespace {

// The YAML layout a Kubernetes keyspace wants: events and leases on clusters of their own, the
// rest around them on a third (two entries with one name: one cluster, two ranges).
constexpr const char* kKubernetesLayout = R"(shards:
  - {name: rest, start: "", end: /registry/events/, address: 127.0.0.1:1}
  - {name: events, start: /registry/events/, end: /registry/events0, address: 127.0.0.1:2}
  - {name: rest, start: /registry/events0, end: /registry/leases/, address: 127.0.0.1:1}
  - {name: leases, start: /registry/leases/, end: /registry/leases0, address: 127.0.0.1:3}
  - {name: rest, start: /registry/leases0, end: "", address: 127.0.0.1:1}
)";

TEST(SeveralRangesPerShardTest, EntriesWithOneNameAreOneClusterOwningSeveralRanges) {
  const Config config = ParseConfig(kKubernetesLayout);
  const ShardLayout layout = LayoutFromConfig(config);
  ASSERT_EQ(layout.shards.size(), 3u);
  EXPECT_EQ(layout.shards[0].name, "rest");
  EXPECT_EQ(layout.ranges.size(), 5u);
  const ShardMap map(std::vector<std::string>{"rest", "events", "leases"}, layout.ranges);
  EXPECT_EQ(map.ShardForKey("compact_rev_key"), 0u);  // Kubernetes' compactor key sits with the rest
  EXPECT_EQ(map.ShardForKey("/registry/pods/default/a"), 0u);
  EXPECT_EQ(map.ShardForKey("/registry/events/default/e"), 1u);
  EXPECT_EQ(map.ShardForKey("/registry/leases/kube-node-lease/n"), 2u);
  EXPECT_EQ(map.SingleShard("/registry/pods/", "/registry/pods0"), 0u);
  EXPECT_EQ(map.shard(0).ranges.size(), 3u);
  // The map document from the same file: one shard entry per cluster, every range.
  const auto doc = meta::MapDocument::FromConfig(config);
  EXPECT_EQ(doc.shards.size(), 3u);
  EXPECT_EQ(doc.ranges.size(), 5u);
  EXPECT_NO_THROW(doc.Validate());
}

TEST(SeveralRangesPerShardTest, OneNameWithOtherEndpointsIsRefused) {
  const std::string yaml = R"(shards:
  - {name: rest, start: "", end: m, address: 127.0.0.1:1}
  - {name: other, start: m, end: t, address: 127.0.0.1:2}
  - {name: rest, start: t, end: "", address: 127.0.0.1:9}
)";
  try {
    ParseConfig(yaml);
    ADD_FAILURE() << "accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("duplicate shard name 'rest' with other endpoints"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace esp

namespace esp {
namespace {

TEST(KubernetesLayoutTest, BoundariesInsideAResourcePrefixAreFound) {
  EXPECT_EQ(KubernetesPrefixCutBy("/registry/pods/m"), "/registry/pods/");
  EXPECT_EQ(KubernetesPrefixCutBy("/registry/pods/default/"), "/registry/pods/");
  EXPECT_EQ(KubernetesPrefixCutBy("/registry/example.com/widgets/ns/"), "/registry/example.com/widgets/");
  // Starts and ends of resource prefixes, group starts, other keys: nothing cut.
  for (const char* clean : {"/registry/pods/", "/registry/pods0", "/registry/events/", "/registry/leases0", "/registry/",
                            "/registry/example.com/", "/registry/example.com/widgets/", "/registry/example.com/widgets0",
                            "/registry", "compact_rev_key", "i", ""}) {
    EXPECT_EQ(KubernetesPrefixCutBy(clean), "") << clean;
  }
}

TEST(KubernetesLayoutTest, TheRecommendedLayoutGetsNoWarningAndACutOneDoes) {
  const auto layout = LayoutFromConfig(ParseConfig(kKubernetesLayout));
  EXPECT_TRUE(KubernetesLayoutWarnings(ShardMap({"rest", "events", "leases"}, layout.ranges)).empty());
  const ShardMap cut({"a", "b"}, {{"", "/registry/pods/m", 0}, {"/registry/pods/m", "", 1}});
  const auto warnings = KubernetesLayoutWarnings(cut);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("cuts Kubernetes' resource prefix \"/registry/pods/\""), std::string::npos) << warnings[0];
}

}  // namespace
}  // namespace esp
