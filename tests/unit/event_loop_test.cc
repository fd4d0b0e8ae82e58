// EventLoop's timers and posted work, on a running loop: the deadline of every call goes through
// them, so order, cancellation and the bound on cancelled entries matter.
#include "transport/event_loop.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <random>
#include <thread>
#include <vector>

namespace esp {
namespace {

using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

// Runs `fn` on the loop thread and waits for its result.
template <class Fn>
auto OnLoop(EventLoop& loop, Fn fn) {
  std::promise<decltype(fn())> done;
  auto result = done.get_future();
  loop.Post([&] {
    if constexpr (std::is_void_v<decltype(fn())>) {
      fn();
      done.set_value();
    } else {
      done.set_value(fn());
    }
  });
  return result.get();
}

class EventLoopTest : public ::testing::Test {
 protected:
  void SetUp() override { loop_.Start(); }
  EventLoop loop_;
};

TEST_F(EventLoopTest, TimersFireInDeadlineOrderAndEqualDeadlinesInAddOrder) {
  std::vector<int> fired;
  std::promise<void> all;
  const auto base = SteadyClock::now() + milliseconds(30);
  // Shuffled deadlines, with pairs sharing one.
  const std::vector<std::pair<int, int>> timers = {{5, 50}, {1, 10}, {3, 30}, {2, 10}, {4, 30}, {6, 60}};
  OnLoop(loop_, [&] {
    for (const auto& [tag, offset] : timers) {
      loop_.AddTimer(base + milliseconds(offset), [&, tag = tag] {
        fired.push_back(tag);
        if (fired.size() == timers.size()) all.set_value();
      });
    }
  });
  ASSERT_EQ(all.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(fired, (std::vector<int>{1, 2, 3, 4, 5, 6}));
}

TEST_F(EventLoopTest, CancelledTimersNeverRunAndReleaseTheirTaskAtOnce) {
  auto held = std::make_shared<int>(7);
  std::promise<void> later_fired;
  bool cancelled_ran = false;
  OnLoop(loop_, [&] {
    const auto id = loop_.AddTimer(SteadyClock::now() + milliseconds(10), [&, held] { cancelled_ran = true; });
    EXPECT_NE(id, 0u);
    loop_.CancelTimer(id);
    loop_.CancelTimer(id);  // twice: ignored
    EXPECT_EQ(held.use_count(), 1);  // the task (and what it holds) is gone already
    loop_.AddTimer(SteadyClock::now() + milliseconds(40), [&] { later_fired.set_value(); });
  });
  ASSERT_EQ(later_fired.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_FALSE(OnLoop(loop_, [&] { return cancelled_ran; }));
}

TEST_F(EventLoopTest, AStaleIdDoesNotCancelTheTimerThatReusedItsSlot) {
  std::promise<void> fired;
  OnLoop(loop_, [&] {
    const auto first = loop_.AddTimer(SteadyClock::now() + std::chrono::hours(1), [] {});
    loop_.CancelTimer(first);
    const auto second = loop_.AddTimer(SteadyClock::now() + milliseconds(5), [&] { fired.set_value(); });
    EXPECT_NE(first, second);
    loop_.CancelTimer(first);  // the slot is the same, the generation is not
  });
  EXPECT_EQ(fired.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
}

TEST_F(EventLoopTest, ATimerMayCancelAnotherDueInTheSameTurnAndAddNewOnes) {
  std::vector<int> fired;
  std::promise<void> done;
  EventLoop::TimerId victim = 0;
  OnLoop(loop_, [&] {
    const auto when = SteadyClock::now() + milliseconds(20);
    loop_.AddTimer(when, [&] {
      fired.push_back(1);
      loop_.CancelTimer(victim);
      loop_.AddTimer(SteadyClock::now(), [&] {
        fired.push_back(3);
        done.set_value();
      });
    });
    victim = loop_.AddTimer(when, [&] { fired.push_back(2); });
  });
  ASSERT_EQ(done.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(fired, (std::vector<int>{1, 3}));
}

// A deadline per call, cancelled when the call ends, far in the future: the entries left behind
// must not grow with the number of calls.
TEST_F(EventLoopTest, CancelledFarDeadlinesDoNotAccumulate) {
  OnLoop(loop_, [&] {
    std::mt19937 rng(42);
    std::vector<EventLoop::TimerId> open;
    for (int call = 0; call < 200'000; ++call) {
      open.push_back(loop_.AddTimer(SteadyClock::now() + std::chrono::hours(1 + rng() % 5), [] {}));
      // About 100 calls in flight, ending in random order.
      if (open.size() > 100) {
        const std::size_t i = rng() % open.size();
        loop_.CancelTimer(open[i]);
        open[i] = open.back();
        open.pop_back();
      }
    }
    EXPECT_EQ(loop_.armed_timers(), open.size());
    EXPECT_LE(loop_.timer_entries(), 2 * open.size() + 64);
    for (const auto id : open) loop_.CancelTimer(id);
    EXPECT_EQ(loop_.armed_timers(), 0u);
  });
}

TEST_F(EventLoopTest, PostsFromEveryThreadRunInPostOrder) {
  std::vector<int> order;
  std::promise<void> done;
  OnLoop(loop_, [&] {
    loop_.Post([&] { order.push_back(1); });
    loop_.Post([&] {
      order.push_back(2);
      loop_.Post([&] {
        order.push_back(4);
        done.set_value();
      });
    });
    // Posted from another thread after the two above, before any of them ran.
    std::thread([&] { loop_.Post([&] { order.push_back(3); }); }).join();
  });
  ASSERT_EQ(done.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));
}

}  // namespace
}  // namespace esp
