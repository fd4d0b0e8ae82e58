#include "shard/shard_map.h"

#include <gtest/gtest.h>

#include <random>

namespace esp {
namespace {

ShardMap ThreeShards() { return ShardMap({{"s0", "", "i"}, {"s1", "i", "s"}, {"s2", "s", ""}}); }

const std::string kAll(1, '\0');

TEST(ShardMapTest, KeysGoToTheShardWhoseRangeHoldsThem) {
  const ShardMap map = ThreeShards();
  EXPECT_EQ(map.ShardForKey(std::string(1, '\0')), 0u);
  EXPECT_EQ(map.ShardForKey("a"), 0u);
  EXPECT_EQ(map.ShardForKey("hzzzz"), 0u);
  EXPECT_EQ(map.ShardForKey("i"), 1u);  // start is inclusive
  EXPECT_EQ(map.ShardForKey("i\x00"), 1u);
  EXPECT_EQ(map.ShardForKey("r\xff\xff"), 1u);
  EXPECT_EQ(map.ShardForKey("s"), 2u);
  EXPECT_EQ(map.ShardForKey("\xff\xff\xff"), 2u);
}

TEST(ShardMapTest, SingleKeyIsOnePieceUnchanged) {
  const auto pieces = ThreeShards().Split("j", "");
  ASSERT_EQ(pieces.size(), 1u);
  EXPECT_EQ(pieces[0].shard, 1u);
  EXPECT_EQ(pieces[0].key, "j");
  EXPECT_EQ(pieces[0].range_end, "");
}

TEST(ShardMapTest, RangeIsClippedToEachShard) {
  const auto pieces = ThreeShards().Split("b", "t");
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(pieces[0].key, "b");
  EXPECT_EQ(pieces[0].range_end, "i");
  EXPECT_EQ(pieces[1].key, "i");
  EXPECT_EQ(pieces[1].range_end, "s");
  EXPECT_EQ(pieces[2].key, "s");
  EXPECT_EQ(pieces[2].range_end, "t");
}

TEST(ShardMapTest, RangeEndingAtABoundaryDoesNotTouchTheNextShard) {
  const auto pieces = ThreeShards().Split("a", "i");
  ASSERT_EQ(pieces.size(), 1u);
  EXPECT_EQ(pieces[0].shard, 0u);
  EXPECT_EQ(pieces[0].range_end, "i");
}

TEST(ShardMapTest, FromKeyReachesTheEndOfTheKeyspace) {
  const auto pieces = ThreeShards().Split("j", kAll);
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[0].key, "j");
  EXPECT_EQ(pieces[0].range_end, "s");
  EXPECT_EQ(pieces[1].key, "s");
  EXPECT_EQ(pieces[1].range_end, kAll);
}

TEST(ShardMapTest, EverythingCoversEveryShard) {
  const auto pieces = ThreeShards().Split(kAll, kAll);
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(pieces[0].key, kAll);
  EXPECT_EQ(pieces[0].range_end, "i");
  EXPECT_EQ(pieces[2].range_end, kAll);
}

TEST(ShardMapTest, EmptyOrInvertedRangeGoesToTheKeysShardUnchanged) {
  const auto pieces = ThreeShards().Split("t", "b");
  ASSERT_EQ(pieces.size(), 1u);
  EXPECT_EQ(pieces[0].shard, 2u);
  EXPECT_EQ(pieces[0].range_end, "b");
}

TEST(ShardMapTest, BinaryBoundaries) {
  const ShardMap map({{"a", "", std::string("\x00\x01", 2)}, {"b", std::string("\x00\x01", 2), "\xff"}, {"c", "\xff", ""}});
  EXPECT_EQ(map.ShardForKey(std::string("\x00", 1)), 0u);
  EXPECT_EQ(map.ShardForKey(std::string("\x00\x01", 2)), 1u);
  EXPECT_EQ(map.ShardForKey("\xfe\xff"), 1u);
  EXPECT_EQ(map.ShardForKey("\xff"), 2u);
  EXPECT_EQ(map.Split(kAll, kAll).size(), 3u);
}

// Property: for random ranges, the pieces are in key order, disjoint, inside their shards, and
// their union is exactly the range.
TEST(ShardMapTest, PiecesPartitionRandomRanges) {
  const ShardMap map = ThreeShards();
  std::mt19937 rng(7);
  const std::string alphabet = std::string("\x00", 1) + "ahirsz\xff";
  auto random_key = [&] {
    std::string k;
    const int len = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < len; ++i) k += alphabet[rng() % alphabet.size()];
    return k;
  };
  for (int iter = 0; iter < 2000; ++iter) {
    const std::string key = random_key();
    std::string end = rng() % 4 == 0 ? kAll : random_key();
    if (end != kAll && end <= key) continue;
    const auto pieces = map.Split(key, end);
    ASSERT_FALSE(pieces.empty());
    EXPECT_EQ(pieces.front().key, key);
    EXPECT_EQ(pieces.back().range_end, end == kAll && map.shard(pieces.back().shard).ranges.back().end.empty() ? kAll : end);
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      const auto& p = pieces[i];
      const auto& s = map.shard(p.shard).ranges.front();  // one range per shard here
      EXPECT_GE(p.key, s.start);
      if (!s.end.empty()) EXPECT_LE(p.range_end, s.end);
      if (i > 0) {
        EXPECT_EQ(p.key, pieces[i - 1].range_end);
        EXPECT_EQ(p.shard, pieces[i - 1].shard + 1);
      }
    }
  }
}

// SingleShard is Split's answer to "one piece?" without building the pieces: it must agree with
// Split on every range, empty and inverted ones included, and on maps of one to four shards.
TEST(ShardMapTest, SingleShardAgreesWithSplit) {
  const std::vector<ShardMap> maps = {ShardMap({{"only", "", ""}}), ThreeShards(),
                                      ShardMap({{"a", "", "b"}, {"b", "b", "b\x00"}, {"c", "b\x00", "h"},
                                                {"d", "h", ""}})};
  std::mt19937 rng(11);
  const std::string alphabet = std::string("\x00", 1) + "abhirsz\xff";
  auto random_key = [&] {
    std::string k;
    const int len = static_cast<int>(rng() % 4);
    for (int i = 0; i < len; ++i) k += alphabet[rng() % alphabet.size()];
    return k;
  };
  int single = 0, spanning = 0;
  for (const ShardMap& map : maps) {
    for (int iter = 0; iter < 5000; ++iter) {
      const std::string key = random_key();
      const std::string end = rng() % 5 == 0 ? kAll : random_key();
      const auto pieces = map.Split(key, end);
      const auto shard = map.SingleShard(key, end);
      ASSERT_EQ(shard.has_value(), pieces.size() == 1) << testing::PrintToString(key) << " " << testing::PrintToString(end);
      if (shard) {
        EXPECT_EQ(*shard, pieces[0].shard);
        ++single;
      } else {
        ++spanning;
      }
    }
  }
  // Both answers came up often enough for the comparison to mean something.
  EXPECT_GT(single, 1000);
  EXPECT_GT(spanning, 1000);
}

}  // namespace
}  // namespace esp
