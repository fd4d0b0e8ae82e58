// gRPC message framing of the h2 data plane: prefixes and bodies cut anywhere, limits, timeouts.
#include "transport/grpc_framing.h"

#include <gtest/gtest.h>

#include <random>

namespace esp {
namespace {

std::string Framed(const std::vector<std::string>& messages) {
  std::string out;
  for (const auto& m : messages) AppendGrpcMessage(out, m);
  return out;
}

TEST(MessageDeframer, MessagesCutAtEveryByteComeBackWhole) {
  const std::vector<std::string> messages = {"", "a", std::string(300, 'x'), std::string("\0\1\2", 3)};
  const std::string wire = Framed(messages);
  MessageDeframer deframer(1024);
  std::vector<std::string> got;
  for (const char c : wire) {
    ASSERT_TRUE(deframer.Feed(std::string_view(&c, 1)).ok());
    while (auto m = deframer.Next()) got.push_back(*m);
  }
  EXPECT_EQ(got, messages);
  EXPECT_FALSE(deframer.partial());
}

TEST(MessageDeframer, RandomSplitsOfManyMessages) {
  std::mt19937 rng(7);
  std::vector<std::string> messages;
  for (int i = 0; i < 200; ++i) messages.push_back(std::string(rng() % 5000, static_cast<char>('a' + i % 26)));
  const std::string wire = Framed(messages);
  MessageDeframer deframer(1 << 20);
  std::vector<std::string> got;
  for (std::size_t at = 0; at < wire.size();) {
    const std::size_t n = std::min<std::size_t>(wire.size() - at, 1 + rng() % 20000);
    ASSERT_TRUE(deframer.Feed(std::string_view(wire).substr(at, n)).ok());
    at += n;
    while (auto m = deframer.Next()) got.push_back(*m);
  }
  EXPECT_EQ(got, messages);
}

TEST(MessageDeframer, HalfAMessageIsPartial) {
  const std::string wire = Framed({"hello"});
  MessageDeframer deframer(1024);
  ASSERT_TRUE(deframer.Feed(std::string_view(wire).substr(0, 3)).ok());
  EXPECT_TRUE(deframer.partial());
  EXPECT_FALSE(deframer.Next());
  ASSERT_TRUE(deframer.Feed(std::string_view(wire).substr(3)).ok());
  EXPECT_EQ(deframer.Next(), "hello");
}

TEST(MessageDeframer, OversizeIsRefusedFromItsPrefixAlone) {
  MessageDeframer deframer(100);
  const std::string prefix("\0\0\0\0\x65", 5);  // 101 bytes announced, none sent
  const Status status = deframer.Feed(prefix);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(), "grpc: received message larger than max (101 vs. 100)");
  EXPECT_FALSE(deframer.Feed("more").ok());
}

TEST(MessageDeframer, ExactlyTheLimitFits) {
  MessageDeframer deframer(100);
  ASSERT_TRUE(deframer.Feed(Framed({std::string(100, 'z')})).ok());
  EXPECT_EQ(deframer.Next()->size(), 100u);
}

// A whole message followed, in the same bytes, by a refused prefix: the refusal ends the call,
// so the message before it does not come out either (the fuzz target's invariant).
TEST(MessageDeframer, NothingComesOutAfterARefusal) {
  MessageDeframer deframer(100);
  const Status status = deframer.Feed(Framed({"ok"}) + std::string("\1\0\0\0\1x", 6));
  EXPECT_EQ(status.code(), StatusCode::kUnimplemented);
  EXPECT_FALSE(deframer.Next());
  EXPECT_EQ(deframer.Feed(Framed({"later"})).code(), StatusCode::kInternal);
  EXPECT_FALSE(deframer.Next());
}

TEST(MessageDeframer, CompressedMessagesAreUnimplemented) {
  MessageDeframer deframer(100);
  const Status status = deframer.Feed(std::string("\1\0\0\0\1x", 6));
  EXPECT_EQ(status.code(), StatusCode::kUnimplemented);
  EXPECT_FALSE(deframer.Next());
}

TEST(GrpcTimeout, UnitsAndMalformedValues) {
  using namespace std::chrono;
  EXPECT_EQ(ParseGrpcTimeout("100m"), milliseconds(100));
  EXPECT_EQ(ParseGrpcTimeout("2S"), seconds(2));
  EXPECT_EQ(ParseGrpcTimeout("1H"), hours(1));
  EXPECT_EQ(ParseGrpcTimeout("3M"), minutes(3));
  EXPECT_EQ(ParseGrpcTimeout("7u"), microseconds(7));
  EXPECT_EQ(ParseGrpcTimeout("99999999n"), nanoseconds(99999999));
  EXPECT_FALSE(ParseGrpcTimeout("123456789S"));  // nine digits
  EXPECT_FALSE(ParseGrpcTimeout("10"));
  EXPECT_FALSE(ParseGrpcTimeout("S"));
  EXPECT_FALSE(ParseGrpcTimeout("1x"));
  EXPECT_FALSE(ParseGrpcTimeout("-1S"));
  EXPECT_FALSE(ParseGrpcTimeout("-0S"));  // from_chars takes a sign; the spec does not
}

// Found by grpc_framing_fuzz under UBSan: 99999999H in int64 nanoseconds overflowed.
TEST(GrpcTimeout, HugeValuesSaturateInsteadOfOverflowing) {
  using namespace std::chrono;
  EXPECT_EQ(ParseGrpcTimeout("99999999H"), kMaxGrpcTimeout);
  EXPECT_EQ(ParseGrpcTimeout("99999999M"), kMaxGrpcTimeout);
  EXPECT_EQ(ParseGrpcTimeout("99999999S"), seconds(99999999));  // ~3 years: kept as is
  // A deadline that far away still fits the clocks the plane adds it to.
  EXPECT_GT(system_clock::now() + duration_cast<system_clock::duration>(kMaxGrpcTimeout), system_clock::now());
}

TEST(GrpcMessage, PercentEncodesWhatHeadersCannotCarry) {
  EXPECT_EQ(PercentEncodeGrpcMessage("etcdserver: key not found"), "etcdserver: key not found");
  EXPECT_EQ(PercentEncodeGrpcMessage("100% \xc3\xa9\n"), "100%25 %C3%A9%0A");
}

}  // namespace
}  // namespace esp
