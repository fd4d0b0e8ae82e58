#include "transport/header_limits.h"

#include <gtest/gtest.h>

namespace esp {
namespace {

TEST(HeaderLimitsTest, FieldSizeIsHpacks) {
  // RFC 7541 section 4.1: the entry size is name + value + 32.
  EXPECT_EQ(HeaderFieldSize("token", "abc"), 5u + 3u + 32u);
  EXPECT_EQ(HeaderFieldSize("", ""), 32u);
}

TEST(HeaderLimitsTest, ListBytesBound) {
  const HeaderLimits limits{.max_list_bytes = 100, .max_fields = 10, .max_connection_bytes = 1000};
  EXPECT_EQ(JudgeHeaderField(0, 0, 0, 100, limits), HeaderVerdict::kKeep);  // exactly the limit fits
  EXPECT_EQ(JudgeHeaderField(0, 0, 0, 101, limits), HeaderVerdict::kListTooLarge);
  EXPECT_EQ(JudgeHeaderField(1, 60, 60, 40, limits), HeaderVerdict::kKeep);
  EXPECT_EQ(JudgeHeaderField(1, 60, 60, 41, limits), HeaderVerdict::kListTooLarge);
}

TEST(HeaderLimitsTest, FieldCountBound) {
  // Tiny fields: the count says no before the bytes do.
  const HeaderLimits limits{.max_list_bytes = 1 << 20, .max_fields = 3, .max_connection_bytes = 1 << 20};
  EXPECT_EQ(JudgeHeaderField(2, 66, 66, 33, limits), HeaderVerdict::kKeep);
  EXPECT_EQ(JudgeHeaderField(3, 99, 99, 33, limits), HeaderVerdict::kListTooLarge);
}

TEST(HeaderLimitsTest, ConnectionBound) {
  const HeaderLimits limits{.max_list_bytes = 100, .max_fields = 10, .max_connection_bytes = 250};
  EXPECT_EQ(JudgeHeaderField(0, 0, 200, 50, limits), HeaderVerdict::kKeep);
  EXPECT_EQ(JudgeHeaderField(0, 0, 201, 50, limits), HeaderVerdict::kConnectionFull);
  // A list over its own bound is named as such even on a full connection.
  EXPECT_EQ(JudgeHeaderField(0, 0, 250, 101, limits), HeaderVerdict::kListTooLarge);
}

TEST(HeaderLimitsTest, DefaultsFitNghttp2sInflater) {
  // A list within the advertised bound cannot carry a string nghttp2's inflater refuses (65,536
  // bytes is its largest name or value), which would close the connection instead of the stream.
  const HeaderLimits limits;
  EXPECT_LE(limits.max_list_bytes - kHpackFieldOverhead, 65536u);
  EXPECT_GE(limits.max_connection_bytes, 64 * limits.max_list_bytes);
}

TEST(HeaderLimitsTest, SendCheck) {
  EXPECT_FALSE(SendHeaderListError(1000, UINT32_MAX, 1000).has_value());
  // The peer's SETTINGS_MAX_HEADER_LIST_SIZE, in grpc-go's client words.
  EXPECT_EQ(SendHeaderListError(1001, 1000, 1 << 20),
            "header list size to send violates the maximum size (1000 bytes) set by server");
  EXPECT_EQ(SendHeaderListError(2000, UINT32_MAX, 1000),
            "header list size to send (2000 bytes) violates the maximum size (1000 bytes) the proxy sends");
}

}  // namespace
}  // namespace esp
