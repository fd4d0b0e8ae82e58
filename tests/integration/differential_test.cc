// Differential test: the same random operations go to one plain etcd and to the proxy over three
// etcd shards (split at "i" and "s"); every answer must agree, modulo revisions and headers.
// The setup, keys and helpers shared with differential_watch_lease_test: support/differential.h.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "support/differential.h"

namespace esp::test {
namespace {

using etcdserverpb::Compare;
using etcdserverpb::RequestOp;
using etcdserverpb::ResponseOp;

const std::vector<std::string> kValues = {"", "v0", "v1", "v2", "v3", "zz", std::string("\0\xff", 2)};

template <class Kvs>
std::string DescribeKvs(const Kvs& kvs) {
  std::string out;
  for (const auto& kv : kvs) out += Describe(kv);
  return out;
}

std::string TargetValue(RangeRequest::SortTarget target, const KeyValue& kv) {
  switch (target) {
    case RangeRequest::VERSION:
      return std::to_string(kv.version());
    case RangeRequest::VALUE:
      return kv.value();
    case RangeRequest::CREATE:
      return std::to_string(kv.create_revision());
    case RangeRequest::MOD:
      return std::to_string(kv.mod_revision());
    default:
      return kv.key();
  }
}

int64_t TargetNumber(RangeRequest::SortTarget target, const KeyValue& kv) {
  return target == RangeRequest::CREATE ? kv.create_revision()
         : target == RangeRequest::MOD  ? kv.mod_revision()
                                        : kv.version();
}

// Compares two Range answers for `req`, as far as etcd defines them.
void CompareRange(const RangeRequest& req, const RangeResponse& plain, const RangeResponse& proxy,
                  const std::string& where) {
  SCOPED_TRACE(where);
  EXPECT_EQ(plain.count(), proxy.count());
  EXPECT_EQ(plain.more(), proxy.more());
  ASSERT_EQ(plain.kvs_size(), proxy.kvs_size()) << "plain " << DescribeKvs(plain.kvs()) << "\nproxy "
                                                << DescribeKvs(proxy.kvs());
  const auto target = req.sort_target();
  if (target == RangeRequest::KEY) {
    EXPECT_EQ(KvStrings(plain.kvs()), KvStrings(proxy.kvs()));
    return;
  }
  auto sorted_set = [](const auto& kvs) {
    auto v = KvStrings(kvs);
    std::sort(v.begin(), v.end());
    return v;
  };
  const bool complete = req.limit() == 0 || !plain.more();
  if (target == RangeRequest::VALUE || target == RangeRequest::VERSION) {
    std::vector<std::string> a;
    std::vector<std::string> b;
    for (const auto& kv : plain.kvs()) a.push_back(TargetValue(target, kv));
    for (const auto& kv : proxy.kvs()) b.push_back(TargetValue(target, kv));
    EXPECT_EQ(a, b) << "sort-target sequence";
  } else {
    // MOD/CREATE: revisions differ between the setups; the proxy must be sorted by its own.
    const bool descending = req.sort_order() == RangeRequest::DESCEND;
    for (int i = 1; i < proxy.kvs_size(); ++i) {
      const auto prev = TargetNumber(target, proxy.kvs(i - 1));
      const auto cur = TargetNumber(target, proxy.kvs(i));
      EXPECT_TRUE(descending ? prev >= cur : prev <= cur) << "not sorted: " << DescribeKvs(proxy.kvs());
    }
  }
  if (complete) EXPECT_EQ(sorted_set(plain.kvs()), sorted_set(proxy.kvs()));
}

void CompareOptionalKv(bool has_a, const KeyValue& a, bool has_b, const KeyValue& b) {
  EXPECT_EQ(has_a, has_b);
  if (has_a && has_b) EXPECT_EQ(Describe(a), Describe(b));
}

void CompareTxn(const TxnRequest& req, const TxnResponse& a, const TxnResponse& b, const std::string& where);

void CompareResponseOp(const RequestOp& req, const ResponseOp& a, const ResponseOp& b, const std::string& where) {
  ASSERT_EQ(a.response_case(), b.response_case()) << where;
  switch (a.response_case()) {
    case ResponseOp::kResponseRange:
      CompareRange(req.request_range(), a.response_range(), b.response_range(), where);
      break;
    case ResponseOp::kResponsePut:
      CompareOptionalKv(a.response_put().has_prev_kv(), a.response_put().prev_kv(), b.response_put().has_prev_kv(),
                        b.response_put().prev_kv());
      break;
    case ResponseOp::kResponseDeleteRange:
      EXPECT_EQ(a.response_delete_range().deleted(), b.response_delete_range().deleted()) << where;
      EXPECT_EQ(KvStrings(a.response_delete_range().prev_kvs()), KvStrings(b.response_delete_range().prev_kvs()))
          << where;
      break;
    case ResponseOp::kResponseTxn:
      CompareTxn(req.request_txn(), a.response_txn(), b.response_txn(), where + " nested");
      break;
    default:
      break;
  }
}

void CompareTxn(const TxnRequest& req, const TxnResponse& a, const TxnResponse& b, const std::string& where) {
  SCOPED_TRACE(where);
  ASSERT_EQ(a.succeeded(), b.succeeded());
  ASSERT_EQ(a.responses_size(), b.responses_size());
  const auto& ops = a.succeeded() ? req.success() : req.failure();
  for (int i = 0; i < a.responses_size(); ++i) CompareResponseOp(ops[i], a.responses(i), b.responses(i), where);
}

class DifferentialTest : public DifferentialFixture {};

// Generates random requests.
class Gen : public RandomGen {
 public:
  using RandomGen::RandomGen;
  std::string Value() {
    if (Chance(10)) return "bin" + std::string(1, static_cast<char>(Int(0, 255)));
    return kValues[Int(0, static_cast<int>(kValues.size()) - 1)];
  }

  // A key range of one of etcd's shapes; within `shard` when given.
  std::pair<std::string, std::string> Range(std::optional<int> shard = std::nullopt) {
    auto key = [&] { return shard ? KeyIn(*shard) : Key(); };
    for (;;) {
      std::pair<std::string, std::string> r;
      switch (Int(0, 9)) {
        case 0:
        case 1:
          r = {key(), ""};
          break;
        case 2:
        case 3: {
          const auto& p = kDiffPrefixes[Int(0, static_cast<int>(kDiffPrefixes.size()) - 1)];
          r = {p, PrefixEnd(p)};
          break;
        }
        case 4:
        case 5:
        case 6: {
          std::string a = key();
          std::string b = key();
          if (!Chance(15) && b < a) std::swap(a, b);  // sometimes inverted or empty
          r = {a, b};
          break;
        }
        case 7:
        case 8:
          r = {key(), std::string(1, '\0')};
          break;
        default:
          r = {std::string(1, '\0'), std::string(1, '\0')};
          break;
      }
      if (!shard) return r;
      const auto span = ShardSpan(r.first, r.second);
      if (span.first == *shard && span.second == *shard) return r;
    }
  }

  RangeRequest RangeReq(std::optional<int> shard = std::nullopt) {
    RangeRequest req;
    const auto [k, e] = Range(shard);
    req.set_key(k);
    req.set_range_end(e);
    if (Chance(40)) req.set_limit(Int(1, 5));
    if (Chance(50)) {
      req.set_sort_order(static_cast<RangeRequest::SortOrder>(Int(0, 2)));
      req.set_sort_target(static_cast<RangeRequest::SortTarget>(Int(0, 4)));
    }
    req.set_keys_only(Chance(20));
    req.set_count_only(Chance(10));
    req.set_serializable(Chance(30));
    return req;
  }
};

TEST_F(DifferentialTest, RandomOperationsAgreeWithOneEtcd) {
  const uint32_t seed = Seed();
  SCOPED_TRACE(SeedTrace(seed));
  Gen gen(seed);
  const int kOps = 3000;
  int cross_shard_txns = 0;
  int spanning_revision_reads = 0;
  int txns_compared = 0;

  auto read_key = [](KV::Stub& kv, const std::string& key) {
    RangeRequest req;
    req.set_key(key);
    RangeResponse resp;
    const auto s = kv.Range(Ctx().get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.kvs_size() ? std::optional<KeyValue>(resp.kvs(0)) : std::nullopt;
  };

  for (int op = 0; op < kOps && !HasFatalFailure() && !HasFailure(); ++op) {
    const std::string where = "op " + std::to_string(op);
    const int kind = gen.Int(0, 99);
    if (kind < 30) {  // Put
      PutRequest req;
      req.set_key(gen.Key());
      req.set_value(gen.Value());
      req.set_prev_kv(gen.Chance(50));
      if (gen.Chance(5)) {
        req.clear_value();
        req.set_ignore_value(true);
      }
      PutResponse a;
      PutResponse b;
      const auto sa = plain_kv_->Put(Ctx().get(), req, &a);
      const auto sb = proxy_kv_->Put(Ctx().get(), req, &b);
      CompareStatus(sa, sb, where + " put " + Printable(req.key()));
      if (sa.ok() && sb.ok()) CompareOptionalKv(a.has_prev_kv(), a.prev_kv(), b.has_prev_kv(), b.prev_kv());
    } else if (kind < 68) {  // Range
      RangeRequest req = gen.RangeReq();
      const auto span = ShardSpan(req.key(), req.range_end());
      const std::string what = where + " range [" + Printable(req.key()) + ", " + Printable(req.range_end()) +
                               ") " + req.ShortDebugString();
      if (gen.Chance(5)) {
        req.set_revision(1);
        RangeResponse b;
        const auto sb = proxy_kv_->Range(Ctx().get(), req, &b);
        if (span.first != span.second) {
          ++spanning_revision_reads;
          EXPECT_EQ(sb.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << what;
          EXPECT_NE(sb.error_message().find("cannot span shards"), std::string::npos) << sb.error_message();
        } else {
          EXPECT_TRUE(sb.ok()) << what << ": " << sb.error_message();
        }
        continue;
      }
      RangeResponse a;
      RangeResponse b;
      const auto sa = plain_kv_->Range(Ctx().get(), req, &a);
      const auto sb = proxy_kv_->Range(Ctx().get(), req, &b);
      CompareStatus(sa, sb, what);
      if (sa.ok() && sb.ok()) CompareRange(req, a, b, what);
    } else if (kind < 78) {  // DeleteRange
      DeleteRangeRequest req;
      auto [k, e] = gen.Range();
      if (k == std::string(1, '\0') && e == k && !gen.Chance(20)) e.clear();  // clear everything rarely
      req.set_key(k);
      req.set_range_end(e);
      req.set_prev_kv(gen.Chance(50));
      DeleteRangeResponse a;
      DeleteRangeResponse b;
      const std::string what = where + " delete [" + Printable(k) + ", " + Printable(e) + ")";
      const auto sa = plain_kv_->DeleteRange(Ctx().get(), req, &a);
      const auto sb = proxy_kv_->DeleteRange(Ctx().get(), req, &b);
      CompareStatus(sa, sb, what);
      EXPECT_EQ(a.deleted(), b.deleted()) << what;
      EXPECT_EQ(KvStrings(a.prev_kvs()), KvStrings(b.prev_kvs())) << what;
    } else if (kind < 95) {  // Txn
      const int shard = gen.Int(0, 2);
      // Compares, with create/mod revisions read from each setup itself.
      struct Cmp {
        std::string key;
        Compare::CompareTarget target;
        Compare::CompareResult result;
        std::string range_end;
        std::string value;
        int64_t version = 0;
        int delta = 0;
      };
      std::vector<Cmp> cmps;
      const int ncmp = gen.Int(0, 3);
      for (int i = 0; i < ncmp; ++i) {
        Cmp c;
        c.key = gen.KeyIn(shard);
        c.target = static_cast<Compare::CompareTarget>(gen.Int(0, 3));
        if ((c.target == Compare::VERSION || c.target == Compare::VALUE) && gen.Chance(25)) {
          // A compare over a key range (every key in it must satisfy it), inside the shard.
          std::tie(c.key, c.range_end) = gen.Range(shard);
        }
        c.result = static_cast<Compare::CompareResult>(gen.Int(0, 3));
        c.value = gen.Value();
        c.version = gen.Int(0, 3);
        c.delta = gen.Int(-1, 1);
        cmps.push_back(c);
      }
      // Branches: distinct write keys per branch, so that etcd accepts them (mostly).
      auto branch = [&](google::protobuf::RepeatedPtrField<RequestOp>* ops, int depth) {
        std::vector<std::string> written;
        const int n = gen.Int(0, 3);
        for (int i = 0; i < n; ++i) {
          const int t = gen.Int(0, 9);
          auto fresh_key = [&] {
            for (int tries = 0; tries < 20; ++tries) {
              std::string k = gen.KeyIn(shard);
              if (gen.Chance(3) || std::find(written.begin(), written.end(), k) == written.end()) {
                written.push_back(k);
                return k;
              }
            }
            return std::string();
          };
          if (t < 4) {
            const std::string k = fresh_key();
            if (k.empty()) continue;
            auto* put = ops->Add()->mutable_request_put();
            put->set_key(k);
            put->set_value(gen.Value());
            put->set_prev_kv(gen.Chance(50));
          } else if (t < 6) {
            const std::string k = fresh_key();
            if (k.empty()) continue;
            auto* del = ops->Add()->mutable_request_delete_range();
            del->set_key(k);
            del->set_prev_kv(gen.Chance(50));
          } else if (t < 9 || depth > 0) {
            *ops->Add()->mutable_request_range() = gen.RangeReq(shard);
          } else {
            auto* nested = ops->Add()->mutable_request_txn();
            auto* c = nested->add_compare();
            c->set_key(gen.KeyIn(shard));
            c->set_target(Compare::VERSION);
            c->set_result(static_cast<Compare::CompareResult>(gen.Int(0, 3)));
            c->set_version(gen.Int(0, 2));
            auto* r1 = nested->add_success()->mutable_request_range();
            *r1 = gen.RangeReq(shard);
            const std::string k = fresh_key();
            if (!k.empty()) {
              auto* put = nested->add_failure()->mutable_request_put();
              put->set_key(k);
              put->set_value(gen.Value());
            }
          }
        }
      };
      TxnRequest base;
      branch(base.mutable_success(), 0);
      branch(base.mutable_failure(), 0);
      const bool cross = gen.Chance(5);
      if (cross) {
        const int other = (shard + gen.Int(1, 2)) % 3;
        auto* put = base.add_success()->mutable_request_put();
        put->set_key(gen.KeyIn(other));
        put->set_value("cross");
        if (ncmp == 0 && base.success_size() + base.failure_size() == 1) {
          // Make sure the txn touches the first shard too.
          base.add_failure()->mutable_request_range()->set_key(gen.KeyIn(shard));
        }
      }
      auto build = [&](KV::Stub& kv) {
        TxnRequest req = base;
        for (const auto& c : cmps) {
          auto* cmp = req.add_compare();
          cmp->set_key(c.key);
          cmp->set_range_end(c.range_end);
          cmp->set_target(c.target);
          cmp->set_result(c.result);
          switch (c.target) {
            case Compare::VALUE:
              cmp->set_value(c.value);
              break;
            case Compare::VERSION:
              cmp->set_version(c.version);
              break;
            case Compare::CREATE:
            case Compare::MOD: {
              const auto current = read_key(kv, c.key);
              const int64_t rev = !current ? 0
                                  : c.target == Compare::CREATE ? current->create_revision()
                                                                : current->mod_revision();
              if (c.target == Compare::CREATE) {
                cmp->set_create_revision(std::max<int64_t>(0, rev + c.delta));
              } else {
                cmp->set_mod_revision(std::max<int64_t>(0, rev + c.delta));
              }
              break;
            }
            default:
              break;
          }
        }
        return req;
      };
      const std::string what = where + " txn in shard " + std::to_string(shard);
      if (cross) {
        const TxnRequest req = build(*proxy_kv_);
        TxnResponse b;
        const auto sb = proxy_kv_->Txn(Ctx().get(), req, &b);
        if (sb.error_code() == grpc::StatusCode::INVALID_ARGUMENT) continue;  // validation came first
        ++cross_shard_txns;
        EXPECT_EQ(sb.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << what << ": " << req.ShortDebugString();
        EXPECT_NE(sb.error_message().find("must stay within one shard"), std::string::npos) << sb.error_message();
        continue;
      }
      const TxnRequest ra = build(*plain_kv_);
      const TxnRequest rb = build(*proxy_kv_);
      TxnResponse a;
      TxnResponse b;
      const auto sa = plain_kv_->Txn(Ctx().get(), ra, &a);
      const auto sb = proxy_kv_->Txn(Ctx().get(), rb, &b);
      CompareStatus(sa, sb, what + " " + ra.ShortDebugString());
      if (sa.ok() && sb.ok()) {
        ++txns_compared;
        CompareTxn(ra, a, b, what + " " + ra.ShortDebugString());
      }
    } else {  // invalid requests: etcd's error, word for word
      grpc::Status sa;
      grpc::Status sb;
      switch (gen.Int(0, 6)) {
        case 0: {
          RangeRequest req;
          req.set_range_end("z");
          RangeResponse a, b;
          sa = plain_kv_->Range(Ctx().get(), req, &a);
          sb = proxy_kv_->Range(Ctx().get(), req, &b);
          break;
        }
        case 1: {
          PutRequest req;
          req.set_key(gen.Key());
          req.set_value("x");
          req.set_ignore_value(true);
          PutResponse a, b;
          sa = plain_kv_->Put(Ctx().get(), req, &a);
          sb = proxy_kv_->Put(Ctx().get(), req, &b);
          break;
        }
        case 2: {
          PutRequest req;
          req.set_key(gen.Key());
          req.set_lease(7);
          req.set_ignore_lease(true);
          PutResponse a, b;
          sa = plain_kv_->Put(Ctx().get(), req, &a);
          sb = proxy_kv_->Put(Ctx().get(), req, &b);
          break;
        }
        case 3: {
          DeleteRangeRequest req;
          req.set_range_end(gen.Key());
          DeleteRangeResponse a, b;
          sa = plain_kv_->DeleteRange(Ctx().get(), req, &a);
          sb = proxy_kv_->DeleteRange(Ctx().get(), req, &b);
          break;
        }
        default: {
          TxnRequest req;
          const int t = gen.Int(0, 2);
          const std::string k = gen.Key();
          if (t == 0) {  // too many operations, spanning all shards
            for (int i = 0; i < 129; ++i) req.add_success()->mutable_request_range()->set_key(gen.Key());
          } else if (t == 1) {  // duplicate key
            req.add_failure()->mutable_request_put()->set_key(k);
            if (gen.Chance(50)) {
              req.add_failure()->mutable_request_put()->set_key(k);
            } else {
              auto* del = req.add_failure()->mutable_request_delete_range();
              del->set_key(std::string(1, '\0'));
              del->set_range_end("\xff\xff\xff");
            }
          } else {  // empty RequestOp
            req.add_success()->mutable_request_range()->set_key(k);
            req.add_success();
          }
          TxnResponse a, b;
          sa = plain_kv_->Txn(Ctx().get(), req, &a);
          sb = proxy_kv_->Txn(Ctx().get(), req, &b);
          break;
        }
      }
      EXPECT_FALSE(sa.ok()) << where;
      CompareStatus(sa, sb, where + " invalid request");
    }
  }
  std::printf("seed %u: %d txns compared, %d cross-shard txns refused, %d spanning reads at a revision refused\n",
              seed, txns_compared, cross_shard_txns, spanning_revision_reads);
  // The run must have exercised what it claims to.
  EXPECT_GT(txns_compared, 100);
  EXPECT_GT(cross_shard_txns, 5);
  EXPECT_GT(spanning_revision_reads, 5);

  // The final states agree too.
  RangeRequest all;
  all.set_key(std::string(1, '\0'));
  all.set_range_end(std::string(1, '\0'));
  RangeResponse a;
  RangeResponse b;
  ASSERT_TRUE(plain_kv_->Range(Ctx().get(), all, &a).ok());
  ASSERT_TRUE(proxy_kv_->Range(Ctx().get(), all, &b).ok());
  EXPECT_EQ(KvStrings(a.kvs()), KvStrings(b.kvs()));
}

// etcd 3.4 does not validate the sort option (3.5 added the check), and an unknown sort target
// crashes etcd 3.4.23 (nil sorter in applierV3backend.Range: "panic: runtime error: invalid
// memory address"), so it cannot be part of the differential run. The proxy refuses it with
// etcd 3.5's message before any shard is touched, single-shard and spanning alike, which also
// keeps 3.4 shards alive.
TEST_F(DifferentialTest, InvalidSortOptionIsRefusedByTheProxy) {
  for (const std::string range_end : {"", "z"}) {
    for (const bool bad_target : {true, false}) {
      RangeRequest req;
      req.set_key("a");
      req.set_range_end(range_end);
      if (bad_target) {
        req.set_sort_target(static_cast<RangeRequest::SortTarget>(17));
      } else {
        req.set_sort_order(static_cast<RangeRequest::SortOrder>(9));
      }
      RangeResponse resp;
      const auto s = proxy_kv_->Range(Ctx().get(), req, &resp);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
      EXPECT_EQ(s.error_message(), "etcdserver: invalid sort option");
    }
  }
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(sharded_->shard(i).member(0).process->running()) << "shard " << i << " died";
  }
  RangeRequest all;
  all.set_key(std::string(1, '\0'));
  all.set_range_end(std::string(1, '\0'));
  RangeResponse resp;
  EXPECT_TRUE(proxy_kv_->Range(Ctx().get(), all, &resp).ok());
}

// The proxy's filtered, sorted, limited spanning answer equals that filter, sort and limit
// applied to the proxy's own unfiltered spanning read.
TEST_F(DifferentialTest, RevisionFiltersMatchAModelOfTheProxysOwnRead) {
  const uint32_t seed = Seed();
  SCOPED_TRACE(SeedTrace(seed));
  Gen gen(seed);
  // History: creations and rewrites spread over all shards.
  for (int i = 0; i < 120; ++i) {
    PutRequest req;
    req.set_key(gen.Key());
    req.set_value(gen.Value());
    PutResponse resp;
    ASSERT_TRUE(proxy_kv_->Put(Ctx().get(), req, &resp).ok());
  }
  RangeRequest full;
  full.set_key(std::string(1, '\0'));
  full.set_range_end(std::string(1, '\0'));
  RangeResponse all;
  ASSERT_TRUE(proxy_kv_->Range(Ctx().get(), full, &all).ok());
  ASSERT_GT(all.kvs_size(), 10);
  int64_t max_rev = 0;
  for (const auto& kv : all.kvs()) max_rev = std::max({max_rev, kv.mod_revision(), kv.create_revision()});

  for (int round = 0; round < 300 && !HasFailure(); ++round) {
    RangeRequest req;
    const auto [k, e] = gen.Range();
    req.set_key(k);
    req.set_range_end(e);
    auto rev = [&] { return static_cast<int64_t>(gen.Int(1, static_cast<int>(max_rev) + 1)); };
    if (gen.Chance(50)) req.set_min_mod_revision(rev());
    if (gen.Chance(50)) req.set_max_mod_revision(rev());
    if (gen.Chance(50)) req.set_min_create_revision(rev());
    if (gen.Chance(50)) req.set_max_create_revision(rev());
    if (gen.Chance(50)) req.set_limit(gen.Int(1, 6));
    if (gen.Chance(70)) {
      req.set_sort_order(static_cast<RangeRequest::SortOrder>(gen.Int(0, 2)));
      req.set_sort_target(static_cast<RangeRequest::SortTarget>(gen.Int(0, 4)));
    }
    RangeResponse got;
    const auto s = proxy_kv_->Range(Ctx().get(), req, &got);
    const std::string what = "round " + std::to_string(round) + " [" + Printable(k) + ", " + Printable(e) + ") " +
                             req.ShortDebugString();
    ASSERT_TRUE(s.ok()) << what << ": " << s.error_message();

    // The model.
    auto in_range = [&](const std::string& key) {
      if (e.empty()) return key == k;
      if (e == std::string(1, '\0')) return key >= k;
      return key >= k && key < e;
    };
    std::vector<KeyValue> model;
    int64_t count = 0;
    for (const auto& kv : all.kvs()) {
      if (!in_range(kv.key())) continue;
      ++count;
      if (req.min_mod_revision() && kv.mod_revision() < req.min_mod_revision()) continue;
      if (req.max_mod_revision() && kv.mod_revision() > req.max_mod_revision()) continue;
      if (req.min_create_revision() && kv.create_revision() < req.min_create_revision()) continue;
      if (req.max_create_revision() && kv.create_revision() > req.max_create_revision()) continue;
      model.push_back(kv);
    }
    const auto target = req.sort_target();
    auto order = req.sort_order();
    const bool filtered = req.min_mod_revision() || req.max_mod_revision() || req.min_create_revision() ||
                          req.max_create_revision();
    if (req.limit() > 0 && order == RangeRequest::NONE && !filtered &&
        static_cast<int64_t>(model.size()) > req.limit() + 1) {
      // etcd reads only the first limit+1 keys (in key order) when no order and no filter is set,
      // and sorts those by a non-KEY target.
      model.resize(static_cast<std::size_t>(req.limit() + 1));
    }
    if (target != RangeRequest::KEY && order == RangeRequest::NONE) order = RangeRequest::ASCEND;
    std::vector<std::string> model_targets;
    {
      std::vector<KeyValue> sorted = model;
      std::stable_sort(sorted.begin(), sorted.end(), [&](const KeyValue& a, const KeyValue& b) {
        const bool less = target == RangeRequest::VALUE ? a.value() < b.value()
                          : target == RangeRequest::KEY ? a.key() < b.key()
                                                        : TargetNumber(target, a) < TargetNumber(target, b);
        const bool greater = target == RangeRequest::VALUE ? b.value() < a.value()
                             : target == RangeRequest::KEY ? b.key() < a.key()
                                                           : TargetNumber(target, b) < TargetNumber(target, a);
        return order == RangeRequest::DESCEND ? greater : less;
      });
      model = sorted;
    }
    const bool more = req.limit() > 0 && static_cast<int64_t>(model.size()) > req.limit();
    if (more) model.resize(static_cast<std::size_t>(req.limit()));
    for (const auto& kv : model) model_targets.push_back(TargetValue(target, kv));
    std::vector<std::string> got_targets;
    for (const auto& kv : got.kvs()) got_targets.push_back(TargetValue(target, kv));
    EXPECT_EQ(got.count(), count) << what;
    EXPECT_EQ(got.more(), more) << what;
    EXPECT_EQ(got_targets, model_targets) << what << "\ngot " << DescribeKvs(got.kvs()) << "\nmodel "
                                          << DescribeKvs(model);
    if (!more) {
      auto a = KvStrings(got.kvs());
      auto b = KvStrings(model);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      EXPECT_EQ(a, b) << what;
    }
  }
}

}  // namespace
}  // namespace esp::test
