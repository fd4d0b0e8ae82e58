// The original project's Quick Start, through the real etcdctl, against three real etcd shards.
#include <gtest/gtest.h>

#include <memory>

#include "support/fixtures.h"

namespace esp::test {
namespace {

class QuickStartTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { setup_ = std::make_unique<ShardedSetup>(); }
  static void TearDownTestSuite() {
    setup_.reset();
  }
  static std::unique_ptr<ShardedSetup> setup_;
};
std::unique_ptr<ShardedSetup> QuickStartTest::setup_;

TEST_F(QuickStartTest, PutsLandOnTheirShardsAndAFromKeyGetSeesAll) {
  const std::string proxy = setup_->proxy().address();
  EXPECT_EQ(Etcdctl(proxy, "put a 1").output, "OK\n");
  EXPECT_EQ(Etcdctl(proxy, "put j 2").output, "OK\n");
  EXPECT_EQ(Etcdctl(proxy, "put z 3").output, "OK\n");
  EXPECT_EQ(Etcdctl(proxy, "get \"\" --from-key").output, "a\n1\nj\n2\nz\n3\n");

  // Each key went to the shard owning it, and only there.
  EXPECT_EQ(Etcdctl(setup_->shard(0).member(0).client_address(), "get \"\" --from-key").output, "a\n1\n");
  EXPECT_EQ(Etcdctl(setup_->shard(1).member(0).client_address(), "get \"\" --from-key").output, "j\n2\n");
  EXPECT_EQ(Etcdctl(setup_->shard(2).member(0).client_address(), "get \"\" --from-key").output, "z\n3\n");

  EXPECT_EQ(Etcdctl(proxy, "get a z").output, "a\n1\nj\n2\n");
  EXPECT_EQ(Etcdctl(proxy, "get \"\" --from-key --limit 2 --order DESCEND").output, "z\n3\nj\n2\n");
  EXPECT_EQ(Etcdctl(proxy, "get \"\" --from-key --sort-by VALUE --order DESCEND --keys-only").output,
            "z\n\nj\n\na\n\n");
  EXPECT_EQ(Etcdctl(proxy, "del \"\" --from-key").output, "3\n");
  EXPECT_EQ(Etcdctl(proxy, "get \"\" --from-key").output, "");
}

TEST_F(QuickStartTest, CrossShardTxnIsRefusedWithTheShardsNamed) {
  const std::string proxy = setup_->proxy().address();
  const auto result = RunCommand("sh -c 'printf \"\\nput a 1\\nput z 2\\n\\n\\n\" | env ETCDCTL_API=3 etcdctl --endpoints " +
                                 proxy + " txn'");
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.output.find("must stay within one shard"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("shard-0"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("shard-2"), std::string::npos) << result.output;
}

}  // namespace
}  // namespace esp::test
