#pragma once
// How long requests to a moving range were held at its cut-over (the write pause clients see),
// for metrics: count, sum and the longest, updated from any thread.
#include <atomic>
#include <chrono>
#include <cstdint>

namespace esp::move {

class HoldStats {
 public:
  void Record(std::chrono::nanoseconds held) {
    const std::int64_t us = std::chrono::duration_cast<std::chrono::microseconds>(held).count();
    count_.fetch_add(1, std::memory_order_relaxed);
    sum_us_.fetch_add(us, std::memory_order_relaxed);
    std::int64_t max = max_us_.load(std::memory_order_relaxed);
    while (us > max && !max_us_.compare_exchange_weak(max, us, std::memory_order_relaxed)) {
    }
  }
  std::int64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum_seconds() const { return static_cast<double>(sum_us_.load(std::memory_order_relaxed)) / 1e6; }
  double max_seconds() const { return static_cast<double>(max_us_.load(std::memory_order_relaxed)) / 1e6; }

 private:
  std::atomic<std::int64_t> count_{0};
  std::atomic<std::int64_t> sum_us_{0};
  std::atomic<std::int64_t> max_us_{0};
};

}  // namespace esp::move
