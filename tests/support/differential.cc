#include "support/differential.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>

namespace esp::test {
namespace {
const std::string kEnd(1, '\0');  // as range_end: every key from `key` on
}  // namespace

const std::vector<std::string> kDiffKeys = {
    std::string(1, '\0'), "\x01", "a", "ab", "b", "h", "h\xff", "i", std::string("i\0", 2), "ia",
    "j", "r", "r\xff", "s", std::string("s\0", 2), "sa", "t", "z", "\xff", "\xff\xff"};
const std::vector<std::string> kDiffPrefixes = {"a", "h", "i", "r", "s", "\xff", "h\xff", "\x01"};

int ShardOf(const std::string& key) { return key < "i" ? 0 : key < "s" ? 1 : 2; }

std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    if (static_cast<unsigned char>(end.back()) < 0xff) {
      end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return kEnd;
}

std::pair<int, int> ShardSpan(const std::string& key, const std::string& end) {
  const int first = ShardOf(key);
  if (end.empty()) return {first, first};
  if (end == kEnd) return {first, 2};
  if (end <= key) return {first, first};
  // The last shard holds keys >= "s", so an end of "s" still ends in shard 1.
  const int last = end > "s" ? 2 : end > "i" ? 1 : 0;
  return {first, last};
}

std::string Printable(const std::string& s) {
  std::ostringstream os;
  for (const unsigned char c : s) {
    if (c < 0x20 || c >= 0x7f || c == '"') {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      os << buf;
    } else {
      os << c;
    }
  }
  return os.str();
}

std::string Describe(const mvccpb::KeyValue& kv, const std::function<int64_t(int64_t)>& lease) {
  const int64_t l = lease && kv.lease() ? lease(kv.lease()) : kv.lease();
  return "{" + Printable(kv.key()) + "=" + Printable(kv.value()) + " v" + std::to_string(kv.version()) + " l" +
         std::to_string(l) + "}";
}

void CompareStatus(const grpc::Status& plain, const grpc::Status& proxy, const std::string& where) {
  EXPECT_EQ(plain.error_code(), proxy.error_code())
      << where << ": plain '" << plain.error_message() << "' proxy '" << proxy.error_message() << "'";
  EXPECT_EQ(plain.error_message(), proxy.error_message()) << where;
}

std::uint32_t Seed(const char* label) {
  auto seed = static_cast<std::uint32_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  if (const char* env = std::getenv("ESP_DIFF_SEED")) seed = static_cast<std::uint32_t>(std::stoul(env));
  if (label != nullptr) std::printf("%s seed %u\n", label, seed);
  return seed;
}

std::string SeedTrace(std::uint32_t seed, const std::string& note) {
  return "seed " + std::to_string(seed) + " (rerun with ESP_DIFF_SEED=" + std::to_string(seed) + note + ")";
}

std::unique_ptr<EtcdCluster> DifferentialFixture::plain_;
std::unique_ptr<ShardedSetup> DifferentialFixture::sharded_;

void DifferentialFixture::SetUpTestSuite() {
  plain_ = std::make_unique<EtcdCluster>(1, "plain");
  plain_->Start();
  sharded_ = std::make_unique<ShardedSetup>();
}

void DifferentialFixture::TearDownTestSuite() {
  if (sharded_ && ::testing::UnitTest::GetInstance()->failed_test_count() > 0) {
    std::cerr << "proxy log:\n" << sharded_->proxy().process().Log() << std::endl;
  }
  sharded_.reset();
  plain_.reset();
}

void DifferentialFixture::SetUp() {
  plain_kv_ = etcdserverpb::KV::NewStub(Connect(plain_address()));
  proxy_kv_ = etcdserverpb::KV::NewStub(Connect(proxy_address()));
  for (auto* kv : {plain_kv_.get(), proxy_kv_.get()}) {
    etcdserverpb::DeleteRangeRequest req;
    req.set_key(kEnd);
    req.set_range_end(kEnd);
    etcdserverpb::DeleteRangeResponse resp;
    ASSERT_TRUE(kv->DeleteRange(Ctx().get(), req, &resp).ok());
  }
}

}  // namespace esp::test
