#pragma once
// What the differential tests (differential_test: KV; differential_watch_lease_test: Watch and
// Lease) share: the same random operations go to one plain etcd and to the proxy over three
// etcd shards split at "i" and "s", and the answers must agree modulo revisions, headers and
// the lease ids each side picked. Every run prints its seed; ESP_DIFF_SEED=<seed> replays one.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "support/fixtures.h"

namespace esp::test {

// The KV messages both tests send to each side.
using etcdserverpb::DeleteRangeRequest;
using etcdserverpb::DeleteRangeResponse;
using etcdserverpb::KV;
using etcdserverpb::PutRequest;
using etcdserverpb::PutResponse;
using etcdserverpb::RangeRequest;
using etcdserverpb::RangeResponse;
using etcdserverpb::TxnRequest;
using etcdserverpb::TxnResponse;
using mvccpb::KeyValue;

// Keys on both sides of the shard boundaries "i" and "s", binary ones included.
extern const std::vector<std::string> kDiffKeys;
// Prefixes whose ranges lie in one shard, cross a boundary or reach the end of the keyspace.
extern const std::vector<std::string> kDiffPrefixes;

// The shard of `key`: 0 below "i", 1 below "s", 2 from "s" on.
int ShardOf(const std::string& key);
// The range_end that makes `prefix` a prefix range (etcd's GetPrefixRangeEnd).
std::string PrefixEnd(const std::string& prefix);
// First and last shard touched by [key, end) under etcd's conventions ("" one key, "\0" to the end).
std::pair<int, int> ShardSpan(const std::string& key, const std::string& end);

// `s` with control, non-ASCII and quote bytes as \xNN.
std::string Printable(const std::string& s);
// A key-value without its revisions (they differ between the setups); the lease id is mapped
// by `lease` so that ids the two sides picked themselves compare equal.
std::string Describe(const mvccpb::KeyValue& kv, const std::function<int64_t(int64_t)>& lease = {});
template <class Kvs>
std::vector<std::string> KvStrings(const Kvs& kvs, const std::function<int64_t(int64_t)>& lease = {}) {
  std::vector<std::string> out;
  for (const auto& kv : kvs) out.push_back(Describe(kv, lease));
  return out;
}

// The plain etcd's and the proxy's statuses: the same code and the same message.
void CompareStatus(const grpc::Status& plain, const grpc::Status& proxy, const std::string& where);

// This run's seed: ESP_DIFF_SEED when set, else the clock; printed as "<label> seed N" when a
// label is given.
std::uint32_t Seed(const char* label = nullptr);
// "seed N (rerun with ESP_DIFF_SEED=N<note>)", for SCOPED_TRACE.
std::string SeedTrace(std::uint32_t seed, const std::string& note = "");

// The random choices the tests share; each test adds its own values and requests.
class RandomGen {
 public:
  explicit RandomGen(std::uint32_t seed) : rng_(seed) {}
  int Int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  int64_t Int64(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }
  bool Chance(int percent) { return Int(0, 99) < percent; }
  const std::string& Key() { return kDiffKeys[Int(0, static_cast<int>(kDiffKeys.size()) - 1)]; }
  std::string KeyIn(int shard) {
    for (;;) {
      const auto& k = Key();
      if (ShardOf(k) == shard) return k;
    }
  }
  std::mt19937& rng() { return rng_; }

 private:
  std::mt19937 rng_;
};

// One plain etcd and the sharded setup for the whole suite; every test starts from an empty
// keyspace on both sides. On a failure the proxy's log goes to stderr.
class DifferentialFixture : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  void SetUp() override;
  static std::string plain_address() { return plain_->member(0).client_address(); }
  static std::string proxy_address() { return sharded_->proxy().address(); }

  static std::unique_ptr<EtcdCluster> plain_;
  static std::unique_ptr<ShardedSetup> sharded_;
  std::unique_ptr<etcdserverpb::KV::Stub> plain_kv_;
  std::unique_ptr<etcdserverpb::KV::Stub> proxy_kv_;
};

}  // namespace esp::test
