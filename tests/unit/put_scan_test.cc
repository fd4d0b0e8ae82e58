// ScanPutRequest must read exactly what protobuf's parser reads, and fail exactly where it
// fails: the proxy routes puts by what it scans and forwards the bytes as they came.
#include "kv/put_scan.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "etcdserverpb/rpc.pb.h"
#include "kv/validation.h"

namespace esp {
namespace {

using etcdserverpb::PutRequest;

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

// Wire-level noise the parser has rules for: unknown fields of every wire type, known numbers
// with the wrong wire type, repeated fields (last wins), random bytes, truncation.
std::string Mutate(std::mt19937& rng, std::string bytes) {
  switch (rng() % 8) {
    case 0: bytes += RandomPut(rng).SerializeAsString(); break;  // a second message: fields repeat
    case 1: bytes += std::string("\x3a\x03xyz", 5); break;        // field 7, length-delimited
    case 2: bytes += std::string("\x08\x05", 2); break;           // field 1 (key) as a varint
    case 3: bytes += std::string("\x1a\x02hi", 4); break;         // field 3 (lease) as bytes
    case 4: bytes += std::string("\x4b\x50\x01\x4c", 4); break;   // field 9 as a group
    case 5: bytes += RandomBytes(rng, 6); break;
    case 6: if (!bytes.empty()) bytes.resize(rng() % bytes.size()); break;
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

TEST(PutScanTest, AgreesWithTheProtobufParserOnRandomRequests) {
  std::mt19937 rng(20261124);
  for (int i = 0; i < 20000; ++i) ExpectSameAsParser(RandomPut(rng).SerializeAsString());
}

TEST(PutScanTest, AgreesWithTheProtobufParserOnMangledBytes) {
  std::mt19937 rng(4);
  for (int i = 0; i < 50000; ++i) {
    std::string bytes = RandomPut(rng).SerializeAsString();
    for (int m = 1 + static_cast<int>(rng() % 3); m > 0; --m) bytes = Mutate(rng, std::move(bytes));
    ExpectSameAsParser(bytes);
    if (HasFatalFailure()) return;
  }
}

TEST(PutScanTest, AgreesWithTheProtobufParserOnRandomBytes) {
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) {
    // Short strings, biased towards small tag bytes so that known field numbers come up often.
    std::string bytes(rng() % 12, '\0');
    for (auto& c : bytes) c = static_cast<char>(rng() % 2 == 0 ? rng() % 0x40 : rng());
    ExpectSameAsParser(bytes);
    if (HasFatalFailure()) return;
  }
}

TEST(PutScanTest, EdgeCasesOfTheWireFormat) {
  for (const std::string bytes : {std::string(), std::string("\x00", 1), std::string("\x0a", 1),
                                  std::string("\x0a\x05k", 3), std::string("\x0c", 1), std::string("\x01", 1),
                                  std::string("\x0a\x01k\x00", 4), std::string("\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11),
                                  std::string("\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12),
                                  // Field number 0 with each wire type; groups, balanced and not.
                                  std::string("\x02\x00", 2), std::string("\x01\x00\x00\x00\x00\x00\x00\x00\x00", 9),
                                  std::string("\x05\x00\x00\x00\x00", 5), std::string("\x0b\x0c", 2),
                                  std::string("\x13\x14", 2), std::string("\x13", 1),
                                  // A length prefix of more than five bytes.
                                  std::string("\x0a\x81\x80\x80\x80\x80\x00k", 8)}) {
    ExpectSameAsParser(bytes);
  }
}

TEST(PutScanTest, TheKeyIsAViewIntoTheBytes) {
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
