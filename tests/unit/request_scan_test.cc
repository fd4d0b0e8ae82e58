// ScanPutRequest, ScanRangeRequest and ScanDeleteRangeRequest must read exactly what protobuf's
// parser reads, and fail exactly where it fails: the proxy routes these requests by what it scans
// and forwards the bytes as they came.
#include "kv/request_scan.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <type_traits>

#include "etcdserverpb/rpc.pb.h"
#include "kv/validation.h"

namespace esp {
namespace {

using etcdserverpb::DeleteRangeRequest;
using etcdserverpb::PutRequest;
using etcdserverpb::RangeRequest;

std::string RandomBytes(std::mt19937& rng, std::size_t max) {
  std::string out(rng() % (max + 1), '\0');
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

PutRequest RandomPut(std::mt19937& rng) {
  PutRequest put;
  if (rng() % 8 != 0) put.set_key(RandomBytes(rng, 20));
  if (rng() % 3 != 0) put.set_value(RandomBytes(rng, 300));
  if (rng() % 2 == 0) put.set_lease(static_cast<std::int64_t>((std::uint64_t{rng()} << 32) | rng()));
  put.set_prev_kv(rng() % 2 == 0);
  put.set_ignore_value(rng() % 4 == 0);
  put.set_ignore_lease(rng() % 4 == 0);
  return put;
}

RangeRequest RandomRange(std::mt19937& rng) {
  RangeRequest range;
  if (rng() % 8 != 0) range.set_key(RandomBytes(rng, 20));
  if (rng() % 2 != 0) range.set_range_end(rng() % 4 == 0 ? std::string(1, '\0') : RandomBytes(rng, 20));
  if (rng() % 2 == 0) range.set_limit(rng() % 100);
  if (rng() % 2 == 0) range.set_revision(rng() % 1000);
  // Out-of-range enum values too: proto3 keeps them, and etcd refuses them.
  if (rng() % 2 == 0) range.set_sort_order(static_cast<RangeRequest::SortOrder>(static_cast<int>(rng() % 5) - 1));
  if (rng() % 2 == 0) range.set_sort_target(static_cast<RangeRequest::SortTarget>(static_cast<int>(rng() % 7) - 1));
  range.set_serializable(rng() % 2 == 0);
  range.set_keys_only(rng() % 4 == 0);
  return range;
}

DeleteRangeRequest RandomDelete(std::mt19937& rng) {
  DeleteRangeRequest del;
  if (rng() % 8 != 0) del.set_key(RandomBytes(rng, 20));
  if (rng() % 2 != 0) del.set_range_end(RandomBytes(rng, 20));
  del.set_prev_kv(rng() % 2 == 0);
  return del;
}

// Wire-level noise the parser has rules for: unknown fields of every wire type, known numbers
// with the wrong wire type, repeated fields (last wins), random bytes, truncation. `another` is
// a second message of the same type (its fields repeat the first's).
std::string Mutate(std::mt19937& rng, std::string bytes, const std::string& another) {
  switch (rng() % 10) {
    case 0: bytes += another; break;
    case 1: bytes += std::string("\x7a\x03xyz", 5); break;        // field 15, length-delimited
    case 2: bytes += std::string("\x08\x05", 2); break;           // field 1 (key) as a varint
    case 3: bytes += std::string("\x1a\x02hi", 4); break;         // field 3 (a varint in all three) as bytes
    case 4: bytes += std::string("\x7b\x50\x01\x7c", 4); break;   // field 15 as a group
    case 5: bytes += RandomBytes(rng, 6); break;
    case 6: bytes += std::string("\x28\xff\xff\xff\xff\x1f", 6); break;  // field 5 (sort order): a 35-bit varint
    case 7: bytes += std::string("\x32\x01\x02", 3); break;      // field 6 (sort target) length-delimited
    case 8: if (!bytes.empty()) bytes.resize(rng() % bytes.size()); break;
    default: if (!bytes.empty()) bytes[rng() % bytes.size()] = static_cast<char>(rng()); break;
  }
  return bytes;
}

void ExpectSameAsParser(const std::string& bytes) {
  PutRequest parsed;
  const bool parses = parsed.ParseFromString(bytes);
  const auto scanned = ScanPutRequest(bytes);
  ASSERT_EQ(scanned.has_value(), parses) << testing::PrintToString(bytes);
  if (!parses) return;
  EXPECT_EQ(scanned->key, parsed.key());
  EXPECT_EQ(scanned->has_value, !parsed.value().empty());
  EXPECT_EQ(scanned->lease, parsed.lease());
  EXPECT_EQ(scanned->prev_kv, parsed.prev_kv());
  EXPECT_EQ(scanned->ignore_value, parsed.ignore_value());
  EXPECT_EQ(scanned->ignore_lease, parsed.ignore_lease());
  EXPECT_EQ(CheckPutFields(*scanned).message(), CheckPutRequest(parsed).message());
}

// Range and DeleteRange: the scanned key range (and a range's sort fields) against the parsed
// message's, and etcd's checks of each against the checks of the parsed message.
template <class Message>
void ExpectKeyRangeSameAsParser(const std::string& bytes, std::optional<KeyRangeFields> (*scan)(std::string_view),
                                Status (*check_scanned)(const KeyRangeFields&), Status (*check_parsed)(const Message&)) {
  Message parsed;
  const bool parses = parsed.ParseFromString(bytes);
  const auto scanned = scan(bytes);
  ASSERT_EQ(scanned.has_value(), parses) << testing::PrintToString(bytes);
  if (!parses) return;
  EXPECT_EQ(scanned->key, parsed.key());
  EXPECT_EQ(scanned->range_end, parsed.range_end());
  if constexpr (std::is_same_v<Message, RangeRequest>) {
    EXPECT_EQ(scanned->sort_order, parsed.sort_order());
    EXPECT_EQ(scanned->sort_target, parsed.sort_target());
  }
  EXPECT_EQ(check_scanned(*scanned).message(), check_parsed(parsed).message());
}

void ExpectRangeSameAsParser(const std::string& bytes) {
  ExpectKeyRangeSameAsParser<RangeRequest>(bytes, ScanRangeRequest, CheckRangeFields, CheckRangeRequest);
}

void ExpectDeleteSameAsParser(const std::string& bytes) {
  ExpectKeyRangeSameAsParser<DeleteRangeRequest>(bytes, ScanDeleteRangeRequest, CheckDeleteFields,
                                                 CheckDeleteRequest);
}

// Every scan against the parser of its message, on the same bytes.
void ExpectAllSameAsParser(const std::string& bytes) {
  ExpectSameAsParser(bytes);
  ExpectRangeSameAsParser(bytes);
  ExpectDeleteSameAsParser(bytes);
}

template <class RandomMessage, class Expect>
void CheckMangled(std::mt19937& rng, int count, RandomMessage random_message, Expect expect) {
  for (int i = 0; i < count; ++i) {
    std::string bytes = random_message(rng).SerializeAsString();
    for (int m = 1 + static_cast<int>(rng() % 3); m > 0; --m) {
      bytes = Mutate(rng, std::move(bytes), random_message(rng).SerializeAsString());
    }
    expect(bytes);
    if (testing::Test::HasFatalFailure()) return;
  }
}

TEST(RequestScanTest, AgreesWithTheProtobufParserOnRandomRequests) {
  std::mt19937 rng(20261124);
  for (int i = 0; i < 20000; ++i) {
    ExpectSameAsParser(RandomPut(rng).SerializeAsString());
    ExpectRangeSameAsParser(RandomRange(rng).SerializeAsString());
    ExpectDeleteSameAsParser(RandomDelete(rng).SerializeAsString());
  }
}

TEST(RequestScanTest, AgreesWithTheProtobufParserOnMangledBytes) {
  std::mt19937 rng(4);
  CheckMangled(rng, 50000, RandomPut, ExpectSameAsParser);
  CheckMangled(rng, 50000, RandomRange, ExpectRangeSameAsParser);
  CheckMangled(rng, 20000, RandomDelete, ExpectDeleteSameAsParser);
}

TEST(RequestScanTest, AgreesWithTheProtobufParserOnRandomBytes) {
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    // Short strings, biased towards small tag bytes so that known field numbers come up often.
    std::string bytes(rng() % 12, '\0');
    for (auto& c : bytes) c = static_cast<char>(rng() % 2 == 0 ? rng() % 0x40 : rng());
    ExpectAllSameAsParser(bytes);
    if (HasFatalFailure()) return;
  }
}

TEST(RequestScanTest, EdgeCasesOfTheWireFormat) {
  for (const std::string bytes : {std::string(), std::string("\x00", 1), std::string("\x0a", 1),
                                  std::string("\x0a\x05k", 3), std::string("\x0c", 1), std::string("\x01", 1),
                                  std::string("\x0a\x01k\x00", 4), std::string("\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11),
                                  std::string("\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12),
                                  // Field number 0 with each wire type; groups, balanced and not.
                                  std::string("\x02\x00", 2), std::string("\x01\x00\x00\x00\x00\x00\x00\x00\x00", 9),
                                  std::string("\x05\x00\x00\x00\x00", 5), std::string("\x0b\x0c", 2),
                                  std::string("\x13\x14", 2), std::string("\x13", 1),
                                  // A length prefix of more than five bytes.
                                  std::string("\x0a\x81\x80\x80\x80\x80\x00k", 8),
                                  // A negative sort order (ten-byte varint), and one past int32.
                                  std::string("\x28\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11),
                                  std::string("\x0a\x01k\x28\x81\x80\x80\x80\x10", 9)}) {
    ExpectAllSameAsParser(bytes);
  }
}

TEST(RequestScanTest, TheKeyIsAViewIntoTheBytes) {
  PutRequest put;
  put.set_key("routing/key");
  put.set_value(std::string(1000, 'v'));
  const std::string bytes = put.SerializeAsString();
  const auto scanned = ScanPutRequest(bytes);
  ASSERT_TRUE(scanned);
  EXPECT_GE(scanned->key.data(), bytes.data());
  EXPECT_LE(scanned->key.data() + scanned->key.size(), bytes.data() + bytes.size());
}

}  // namespace
}  // namespace esp
