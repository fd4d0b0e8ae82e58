// The keepalive enforcement policy of the h2 plane (transport/ping_policy.h) and the Go-style
// durations its flags take, with a clock the test moves.
#include "transport/ping_policy.h"

#include <gtest/gtest.h>

#include "common/go_duration.h"

namespace esp {
namespace {

using namespace std::chrono_literals;
const PingPolicy::TimePoint kStart = std::chrono::steady_clock::now();

TEST(PingPolicyTest, PingsAtTheMinimumIntervalAreNeverStrikes) {
  PingPolicy policy({.min_time = 5s, .max_strikes = 2});
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(policy.OnPing(kStart + i * 5s));
  EXPECT_EQ(policy.strikes(), 0);
}

TEST(PingPolicyTest, TheThirdStrikeIsTooMany) {
  PingPolicy policy({.min_time = 5s, .max_strikes = 2});
  EXPECT_FALSE(policy.OnPing(kStart));         // the first ping is free
  EXPECT_FALSE(policy.OnPing(kStart + 1s));    // strike 1
  EXPECT_FALSE(policy.OnPing(kStart + 2s));    // strike 2
  EXPECT_TRUE(policy.OnPing(kStart + 3s));     // strike 3: GOAWAY
  EXPECT_EQ(policy.strikes(), 3);
}

TEST(PingPolicyTest, CompliantPingsInBetweenDoNotForgiveStrikes) {
  // As grpc-go and gRPC core: only what the server sends clears strikes.
  PingPolicy policy({.min_time = 5s, .max_strikes = 2});
  EXPECT_FALSE(policy.OnPing(kStart));
  EXPECT_FALSE(policy.OnPing(kStart + 1s));   // strike 1
  EXPECT_FALSE(policy.OnPing(kStart + 10s));  // fine
  EXPECT_FALSE(policy.OnPing(kStart + 11s));  // strike 2
  EXPECT_FALSE(policy.OnPing(kStart + 20s));  // fine
  EXPECT_TRUE(policy.OnPing(kStart + 21s));   // strike 3
}

TEST(PingPolicyTest, SendingDataClearsStrikes) {
  // BDP pings follow the data we send: a busy stream may bring one per response.
  PingPolicy policy({.min_time = 5s, .max_strikes = 2});
  for (int i = 0; i < 100; ++i) {
    policy.OnResponseSent();
    EXPECT_FALSE(policy.OnPing(kStart + i * 10ms)) << i;
  }
  EXPECT_EQ(policy.strikes(), 0);
  EXPECT_FALSE(policy.OnPing(kStart + 1001ms));
  EXPECT_FALSE(policy.OnPing(kStart + 1002ms));
  EXPECT_TRUE(policy.OnPing(kStart + 1003ms));
}

TEST(PingPolicyTest, ZeroMinTimeDisablesEnforcement) {
  PingPolicy policy({.min_time = 0s, .max_strikes = 2});
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(policy.OnPing(kStart));
}

TEST(GoDurationTest, ParsesEtcdFlagValues) {
  EXPECT_EQ(ParseGoDuration("5s"), std::chrono::nanoseconds(5s));
  EXPECT_EQ(ParseGoDuration("2h"), std::chrono::nanoseconds(2h));
  EXPECT_EQ(ParseGoDuration("20s"), std::chrono::nanoseconds(20s));
  EXPECT_EQ(ParseGoDuration("100ms"), std::chrono::nanoseconds(100ms));
  EXPECT_EQ(ParseGoDuration("1m30s"), std::chrono::nanoseconds(90s));
  EXPECT_EQ(ParseGoDuration("1.5s"), std::chrono::nanoseconds(1500ms));
  EXPECT_EQ(ParseGoDuration("250us"), std::chrono::nanoseconds(250us));
  EXPECT_EQ(ParseGoDuration("0"), std::chrono::nanoseconds(0));
}

TEST(GoDurationTest, RefusesWhatGoRefuses) {
  for (const char* bad : {"", "5", "s", "-5s", "5x", "5s ", "1h-1m"}) EXPECT_FALSE(ParseGoDuration(bad)) << bad;
}

}  // namespace
}  // namespace esp
