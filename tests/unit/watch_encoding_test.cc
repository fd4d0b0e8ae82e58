// The broadcast encoding of watch events: the shard's bytes without the upstream watch_id, behind
// each client watch's own id field, must read back as exactly the response with that id.
#include "watch/watch_encoding.h"

#include <gtest/gtest.h>

#include <random>

#include "etcdserverpb/rpc.pb.h"

namespace esp {
namespace {

std::string RandomBytes(std::mt19937_64& rng, std::size_t max) {
  std::string s(rng() % (max + 1), '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// Any int64, small ones (one-byte varints) and negative ones (ten bytes) included.
std::int64_t RandomInt(std::mt19937_64& rng) {
  switch (rng() % 4) {
    case 0: return static_cast<std::int64_t>(rng() % 128);
    case 1: return -static_cast<std::int64_t>(rng() % 1000);
    default: return static_cast<std::int64_t>(rng());
  }
}

void FillKv(std::mt19937_64& rng, mvccpb::KeyValue& kv) {
  kv.set_key(RandomBytes(rng, 40));
  kv.set_value(RandomBytes(rng, rng() % 8 == 0 ? 5000 : 300));
  kv.set_create_revision(RandomInt(rng));
  kv.set_mod_revision(RandomInt(rng));
  kv.set_version(RandomInt(rng));
  kv.set_lease(RandomInt(rng));
}

// A client watch's id field, made as WatchStream makes it: a response holding only the id.
std::string IdPrefix(std::int64_t id) {
  etcdserverpb::WatchResponse prefix;
  prefix.set_watch_id(id);
  return prefix.SerializeAsString();
}

etcdserverpb::WatchResponse RandomResponse(std::mt19937_64& rng) {
  etcdserverpb::WatchResponse r;
  if (rng() % 8 != 0) {
    auto* h = r.mutable_header();
    h->set_cluster_id(rng());
    h->set_member_id(rng());
    h->set_revision(RandomInt(rng));
    h->set_raft_term(rng() % 100);
  }
  r.set_watch_id(RandomInt(rng));
  r.set_created(rng() % 4 == 0);
  r.set_canceled(rng() % 8 == 0);
  r.set_compact_revision(rng() % 8 == 0 ? RandomInt(rng) : 0);
  if (rng() % 8 == 0) r.set_cancel_reason(std::string(1 + rng() % 60, static_cast<char>('a' + rng() % 26)));  // UTF-8
  r.set_fragment(rng() % 8 == 0);
  const int events = static_cast<int>(rng() % 5);
  for (int i = 0; i < events; ++i) {
    auto* e = r.add_events();
    e->set_type(rng() % 2 == 0 ? mvccpb::Event::PUT : mvccpb::Event::DELETE);
    FillKv(rng, *e->mutable_kv());
    if (rng() % 2 == 0) FillKv(rng, *e->mutable_prev_kv());
  }
  return r;
}

TEST(WatchEncoding, StrippedBytesAreTheSerializationWithoutTheId) {
  std::mt19937_64 rng(4);
  for (int i = 0; i < 2000; ++i) {
    const auto response = RandomResponse(rng);
    auto without = response;
    without.set_watch_id(0);
    const auto stripped = StripWatchId(response.SerializeAsString());
    ASSERT_TRUE(stripped.has_value()) << i;
    EXPECT_EQ(*stripped, without.SerializeAsString()) << i;
  }
}

TEST(WatchEncoding, IdFieldInFrontOfAStrippedBodyReadsAsTheResponseWithThatId) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 2000; ++i) {
    const auto upstream = RandomResponse(rng);
    const auto body = StripWatchId(upstream.SerializeAsString());
    ASSERT_TRUE(body.has_value()) << i;
    const std::int64_t client_id = RandomInt(rng);
    etcdserverpb::WatchResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(IdPrefix(client_id) + *body)) << i;
    auto expected = upstream;
    expected.set_watch_id(client_id);
    // Field order aside, the same message: compare canonical serializations.
    EXPECT_EQ(parsed.SerializeAsString(), expected.SerializeAsString()) << i;
  }
}

TEST(WatchEncoding, EveryIdFieldGoesAndOtherFieldsStayAsTheyWere) {
  // Two watch_id fields (a parser keeps the last one) and an unknown field (number 99, varint).
  std::string wire = IdPrefix(5) + std::string("\x18\x01", 2) + IdPrefix(300) + std::string("\x98\x06\x07", 3);
  const auto stripped = StripWatchId(wire);
  ASSERT_TRUE(stripped.has_value());
  EXPECT_EQ(*stripped, std::string("\x18\x01\x98\x06\x07", 5));
}

TEST(WatchEncoding, BytesThatAreNotProtobufAreRefused) {
  etcdserverpb::WatchResponse r;
  r.set_watch_id(9);
  r.add_events()->mutable_kv()->set_value(std::string(200, 'v'));
  const std::string wire = r.SerializeAsString();
  // Cut anywhere inside the events field: the length runs past the end.
  for (std::size_t cut = wire.size() - 150; cut < wire.size(); cut += 7) {
    EXPECT_FALSE(StripWatchId(std::string_view(wire).substr(0, cut)).has_value()) << cut;
  }
  EXPECT_FALSE(StripWatchId(std::string("\x00\x01", 2)).has_value());  // field number 0
  EXPECT_FALSE(StripWatchId(std::string("\x02\x00", 2)).has_value());  // field number 0, length-delimited
  EXPECT_FALSE(StripWatchId(std::string("\x13", 1)).has_value());      // a group
  EXPECT_FALSE(StripWatchId(std::string("\x10\xff", 2)).has_value());  // an unfinished varint
  EXPECT_TRUE(StripWatchId("").has_value());
}

}  // namespace
}  // namespace esp
