// NewLeaseId: positive, never 0 (0 asks the server to choose), and distinct across many draws,
// batch refills and threads.
#include "lease/lease_ids.h"

#include <gtest/gtest.h>

#include <thread>
#include <unordered_set>
#include <vector>

namespace esp {
namespace {

TEST(NewLeaseId, PositiveAndDistinctAcrossBatchesAndThreads) {
  constexpr int kPerThread = 5000;  // many batches each
  std::vector<std::vector<int64_t>> drawn(4);
  std::vector<std::thread> threads;
  for (auto& ids : drawn) {
    threads.emplace_back([&ids] {
      for (int i = 0; i < kPerThread; ++i) ids.push_back(NewLeaseId());
    });
  }
  for (auto& t : threads) t.join();
  std::unordered_set<int64_t> seen;
  int64_t high_bit_used = 0;
  for (const auto& ids : drawn) {
    for (const int64_t id : ids) {
      ASSERT_GT(id, 0);
      EXPECT_TRUE(seen.insert(id).second) << id << " drawn twice";
      high_bit_used |= id & (int64_t{1} << 62);
    }
  }
  EXPECT_EQ(seen.size(), 4u * kPerThread);
  EXPECT_NE(high_bit_used, 0);  // all 63 bits are random, not a narrower range
}

}  // namespace
}  // namespace esp
