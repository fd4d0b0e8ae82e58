// The Watch service against three real etcd shards (split at "i" and "s"): through the real
// `etcdctl watch` and through gRPC stubs, compared with etcd's own answers where it matters.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <deque>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/watch_client.h"
#include "support/fixtures.h"

namespace esp::test {
namespace {

using etcdserverpb::WatchCreateRequest;
using etcdserverpb::WatchRequest;
using etcdserverpb::WatchResponse;
using namespace std::chrono_literals;

class WatchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { setup_ = std::make_unique<ShardedSetup>(); }
  static void TearDownTestSuite() {
    if (::testing::UnitTest::GetInstance()->failed_test_count() > 0) {
      auto& process = setup_->proxy().process();
      std::cerr << "proxy running: " << process.running() << " exit " << process.exit_status().value_or(-1)
                << " log:\n" << process.Log() << std::endl;
    }
    setup_.reset();
  }
  void SetUp() override { kv_ = etcdserverpb::KV::NewStub(Connect(proxy())); }

  static std::string proxy() { return setup_->proxy().address(); }
  static std::string member(std::size_t shard) { return setup_->shard(shard).member(0).client_address(); }

  etcdserverpb::PutResponse Put(const std::string& key, const std::string& value) {
    etcdserverpb::PutRequest req;
    req.set_key(key);
    req.set_value(value);
    etcdserverpb::PutResponse resp;
    EXPECT_TRUE(kv_->Put(Ctx().get(), req, &resp).ok());
    return resp;
  }
  etcdserverpb::DeleteRangeResponse Delete(const std::string& key) {
    etcdserverpb::DeleteRangeRequest req;
    req.set_key(key);
    etcdserverpb::DeleteRangeResponse resp;
    EXPECT_TRUE(kv_->DeleteRange(Ctx().get(), req, &resp).ok());
    return resp;
  }
  // A shard's current revision, asked of the shard itself.
  static std::int64_t ShardRevision(std::size_t shard) {
    auto kv = etcdserverpb::KV::NewStub(Connect(member(shard)));
    etcdserverpb::RangeRequest req;
    req.set_key(kAll);
    req.set_count_only(true);
    etcdserverpb::RangeResponse resp;
    EXPECT_TRUE(kv->Range(Ctx().get(), req, &resp).ok());
    return resp.header().revision();
  }
  // Creates a watch and waits for its `created`.
  static WatchResponse CreateAndAwait(WatchClient& client, const std::string& key, const std::string& end = "") {
    client.Create(key, end);
    WatchResponse created = client.Expect();
    EXPECT_TRUE(created.created());
    return created;
  }

  static std::unique_ptr<ShardedSetup> setup_;
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
};
std::unique_ptr<ShardedSetup> WatchTest::setup_;

// Runs `etcdctl watch <args>` as a child; its output is read from its log.
class EtcdctlWatch {
 public:
  EtcdctlWatch(const std::string& address, const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"env", "ETCDCTL_API=3", "etcdctl", "--endpoints", address, "watch"};
    argv.insert(argv.end(), args.begin(), args.end());
    process_ = std::make_unique<ChildProcess>(argv, dir_.path() / "etcdctl.log");
  }
  ~EtcdctlWatch() { process_->Terminate(2s); }
  std::string Output() const { return process_->Log(); }

 private:
  TempDir dir_;
  std::unique_ptr<ChildProcess> process_;
};

TEST_F(WatchTest, EtcdctlWatchesOneShardAndAcrossShards) {
  EtcdctlWatch single(proxy(), {"--prefix", "ctl-a"});
  EtcdctlWatch spanning(proxy(), {"ctl-", "zz"});
  // The watches start when etcdctl has connected: put a marker until both have seen it.
  ASSERT_TRUE(WaitFor(
      [&] {
        Put("ctl-a-marker", "m");
        return single.Output().find("ctl-a-marker") != std::string::npos &&
               spanning.Output().find("ctl-a-marker") != std::string::npos;
      },
      20s, 200ms))
      << single.Output() << spanning.Output();
  Put("ctl-a1", "v1");   // shard 0
  Put("ctl-zz", "out");  // inside the spanning watch only
  Delete("ctl-a1");
  ASSERT_TRUE(WaitFor([&] { return single.Output().find("DELETE\nctl-a1\n") != std::string::npos; }, 10s));
  EXPECT_NE(single.Output().find("PUT\nctl-a1\nv1\n"), std::string::npos) << single.Output();
  EXPECT_EQ(single.Output().find("ctl-zz"), std::string::npos) << single.Output();
  ASSERT_TRUE(WaitFor([&] { return spanning.Output().find("DELETE\nctl-a1\n") != std::string::npos; }, 10s))
      << spanning.Output();
  EXPECT_NE(spanning.Output().find("PUT\nctl-zz\nout\n"), std::string::npos) << spanning.Output();
}

TEST_F(WatchTest, EtcdctlSpanningWatchSeesEveryShard) {
  EtcdctlWatch spanning(proxy(), {"span-", "~"});  // inside shard 2
  EtcdctlWatch all(proxy(), {"--prefix", ""});
  ASSERT_TRUE(WaitFor(
      [&] {
        Put("span-marker", "m");
        return spanning.Output().find("span-marker") != std::string::npos &&
               all.Output().find("span-marker") != std::string::npos;
      },
      20s, 200ms));
  Put("b-all", "0");
  Put("k-all", "1");
  Put("t-all", "2");
  // Wait for the whole event: etcdctl's output arrives through a pipe, and its key line can be
  // read before its value line.
  ASSERT_TRUE(WaitFor([&] { return all.Output().find("PUT\nt-all\n2\n") != std::string::npos; }, 10s))
      << all.Output();
  const std::string out = all.Output();
  EXPECT_NE(out.find("PUT\nb-all\n0\n"), std::string::npos) << out;
  EXPECT_NE(out.find("PUT\nk-all\n1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("PUT\nt-all\n2\n"), std::string::npos) << out;
}

TEST_F(WatchTest, CreatesAreAnsweredInOrderWithEtcdsIds) {
  WatchClient client(proxy());
  client.Create("s-order");              // shard 2
  client.Create("a-order", "z-order");   // spanning all three
  client.Create("b-order", "", 100);     // client-chosen id
  client.Create("c-order", "", 100);     // duplicate
  client.Create("j-order");              // shard 1: auto id skips nothing below 100
  const std::vector<std::int64_t> expected = {0, 1, 100, -1, 2};
  for (std::int64_t id : expected) {
    const WatchResponse r = client.Expect();
    EXPECT_TRUE(r.created());
    EXPECT_EQ(r.watch_id(), id);
    if (id == -1) {
      EXPECT_TRUE(r.canceled());
      EXPECT_EQ(r.cancel_reason(), "mvcc: duplicate watch ID provided on the WatchStream");
    } else {
      EXPECT_FALSE(r.canceled()) << r.cancel_reason();
    }
  }
  // Cancel answers with the id; an unknown id gets no answer (as etcd).
  client.Cancel(999);
  client.Cancel(1);
  WatchResponse canceled = client.Expect();
  EXPECT_TRUE(canceled.canceled());
  EXPECT_EQ(canceled.watch_id(), 1);
  // Events keep flowing for the others, with their ids.
  Put("j-order", "x");
  const WatchResponse event = client.Expect();
  EXPECT_EQ(event.watch_id(), 2);
  ASSERT_EQ(event.events_size(), 1);
  EXPECT_EQ(event.events(0).kv().key(), "j-order");
  EXPECT_FALSE(client.Next(300ms).has_value());
}

TEST_F(WatchTest, EmptyRangeIsRefusedExactlyAsEtcdDoes) {
  WatchClient direct(member(0));
  WatchClient proxied(proxy());
  direct.Create("b", "a");
  proxied.Create("b", "a");
  const WatchResponse want = direct.Expect();
  const WatchResponse got = proxied.Expect();
  EXPECT_TRUE(got.created());
  EXPECT_TRUE(got.canceled());
  EXPECT_EQ(got.watch_id(), want.watch_id());
  EXPECT_EQ(got.cancel_reason(), want.cancel_reason());
  EXPECT_EQ(got.cancel_reason(), "mvcc: watcher range is empty");
  // A refused create uses no id: the next watch gets 0 on both.
  direct.Create("b");
  proxied.Create("b");
  EXPECT_EQ(proxied.Expect().watch_id(), direct.Expect().watch_id());
}

TEST_F(WatchTest, PrevKvAndFiltersAreForwarded) {
  WatchClient client(proxy());
  Put("j-prev", "old");
  WatchCreateRequest create;
  create.set_key("j-prev");
  create.set_prev_kv(true);
  create.add_filters(WatchCreateRequest::NODELETE);
  client.Create(create);
  WatchCreateRequest noput;
  noput.set_key("j-prev");
  noput.add_filters(WatchCreateRequest::NOPUT);
  client.Create(noput);
  EXPECT_EQ(client.Expect().watch_id(), 0);
  EXPECT_EQ(client.Expect().watch_id(), 1);
  Put("j-prev", "new");
  Delete("j-prev");
  const WatchResponse put = client.Expect();
  EXPECT_EQ(put.watch_id(), 0);
  ASSERT_EQ(put.events_size(), 1);
  EXPECT_EQ(put.events(0).type(), mvccpb::Event::PUT);
  EXPECT_EQ(put.events(0).prev_kv().value(), "old");
  const WatchResponse del = client.Expect();
  EXPECT_EQ(del.watch_id(), 1);
  ASSERT_EQ(del.events_size(), 1);
  EXPECT_EQ(del.events(0).type(), mvccpb::Event::DELETE);
  EXPECT_FALSE(client.Next(300ms).has_value());
}

TEST_F(WatchTest, FragmentIsForwarded) {
  const std::string big(1000 * 1000, 'v');
  const auto first = Put("f-frag", big);
  Put("f-frag", big);
  Put("f-frag", big);
  WatchClient client(proxy());
  WatchCreateRequest create;
  create.set_key("f-frag");
  create.set_start_revision(first.header().revision());
  create.set_fragment(true);
  client.Create(create);
  EXPECT_TRUE(client.Expect().created());
  int events = 0;
  int responses = 0;
  while (events < 3) {
    const auto r = client.Next();
    ASSERT_TRUE(r.has_value());
    ++responses;
    events += r->events_size();
    EXPECT_EQ(r->fragment(), events < 3) << "response " << responses;
  }
  EXPECT_GT(responses, 1);  // the shard's 3 MB answer came in fragments
}

TEST_F(WatchTest, SpanningWatchCarriesEachShardsEventsAndHeader) {
  WatchClient client(proxy());
  const WatchResponse created = CreateAndAwait(client, "a-span", "z-span");
  // The lowest shard's revision, as every spanning answer (docs/semantics.md, "Revisions across
  // shards"; the highest until issue #17).
  std::int64_t lowest = INT64_MAX;
  for (std::size_t s = 0; s < 3; ++s) lowest = std::min(lowest, ShardRevision(s));
  EXPECT_EQ(created.header().revision(), lowest);
  const auto a = Put("a-span1", "0");
  const auto j = Put("j-span1", "1");
  const auto t = Put("t-span1", "2");
  for (const auto* put : {&a, &j, &t}) {
    const WatchResponse r = client.Expect();
    ASSERT_EQ(r.events_size(), 1);
    EXPECT_EQ(r.header().revision(), put->header().revision());
    EXPECT_EQ(r.header().cluster_id(), put->header().cluster_id());
    EXPECT_EQ(r.events(0).kv().mod_revision(), put->header().revision());
  }
}

TEST_F(WatchTest, SpanningStartRevisionIsRefusedAsCompacted) {
  WatchClient client(proxy());
  client.Create("a", "z", 0, 5);
  const WatchResponse created = client.Expect();
  EXPECT_TRUE(created.created());
  EXPECT_EQ(created.watch_id(), 0);
  const WatchResponse canceled = client.Expect();
  EXPECT_TRUE(canceled.canceled());
  EXPECT_EQ(canceled.watch_id(), 0);
  EXPECT_EQ(canceled.compact_revision(), 5);
  EXPECT_NE(canceled.cancel_reason().find("revisions are per shard"), std::string::npos) << canceled.cancel_reason();
  // A single-shard watch with a start revision replays history.
  const auto put = Put("b-history", "h");
  client.Create("b-history", "", 0, put.header().revision());
  EXPECT_TRUE(client.Expect().created());
  const WatchResponse replay = client.Expect();
  ASSERT_EQ(replay.events_size(), 1);
  EXPECT_EQ(replay.events(0).kv().value(), "h");
}

TEST_F(WatchTest, CompactedStartRevisionCancelsWithCompactRevision) {
  const auto first = Put("c-compact", "1");
  const auto second = Put("c-compact", "2");
  auto kv = etcdserverpb::KV::NewStub(Connect(member(0)));
  etcdserverpb::CompactionRequest compact;
  compact.set_revision(second.header().revision());
  etcdserverpb::CompactionResponse compacted;
  ASSERT_TRUE(kv->Compact(Ctx().get(), compact, &compacted).ok());
  WatchClient client(proxy());
  client.Create("c-compact", "", 0, first.header().revision());
  EXPECT_TRUE(client.Expect().created());
  const WatchResponse canceled = client.Expect();
  EXPECT_TRUE(canceled.canceled());
  EXPECT_EQ(canceled.watch_id(), 0);
  EXPECT_EQ(canceled.compact_revision(), second.header().revision());
}

TEST_F(WatchTest, ProgressRequestsAnswerPerShard) {
  WatchClient client(proxy());
  CreateAndAwait(client, "a-progress");
  client.Progress();
  WatchResponse single = client.Expect();
  EXPECT_EQ(single.watch_id(), -1);
  EXPECT_EQ(single.header().revision(), ShardRevision(0));
  CreateAndAwait(client, "t-progress");  // id 1, shard 2
  client.Progress();
  std::map<std::int64_t, std::int64_t> revisions;
  for (int i = 0; i < 2; ++i) {
    const WatchResponse r = client.Expect();
    EXPECT_FALSE(r.created());
    EXPECT_EQ(r.events_size(), 0);
    revisions[r.watch_id()] = r.header().revision();
  }
  EXPECT_EQ(revisions[0], ShardRevision(0));
  EXPECT_EQ(revisions[1], ShardRevision(2));
}

// Every watcher sees exactly each shard's history for its range, compared with a watch opened on
// each shard directly.
TEST_F(WatchTest, EventsEqualEachShardsHistory) {
  WatchClient everything(proxy());
  WatchClient middle(proxy());
  CreateAndAwait(everything, kAll, kAll);
  CreateAndAwait(middle, "e", "p");  // shards 0 and 1, clipped
  std::vector<std::unique_ptr<WatchClient>> direct;
  for (std::size_t s = 0; s < 3; ++s) {
    direct.push_back(std::make_unique<WatchClient>(member(s)));
    CreateAndAwait(*direct.back(), kAll, kAll);
  }
  std::mt19937 rng(42);
  const std::string letters = "abcdefghijklmnopqrstuvwxyz";
  std::int64_t last_revision[3] = {0, 0, 0};
  auto shard_of = [](const std::string& key) { return key < "i" ? 0 : key < "s" ? 1 : 2; };
  for (int i = 0; i < 300; ++i) {
    const std::string key = std::string(1, letters[rng() % letters.size()]) + "-x" + std::to_string(rng() % 4);
    std::int64_t revision = 0;
    if (rng() % 3 == 0) {
      const auto deleted = Delete(key);
      if (deleted.deleted() == 0) continue;  // nothing happened, no event
      revision = deleted.header().revision();
    } else {
      revision = Put(key, std::to_string(i)).header().revision();
    }
    last_revision[shard_of(key)] = revision;
  }
  using Seen = std::vector<std::tuple<int, std::string, std::string, std::int64_t>>;
  // Drains a client until each shard in `targets` has reached its revision (or the deadline).
  auto drain = [&](WatchClient& client, const std::string& from, const std::string& to,
                   std::map<std::size_t, std::int64_t> targets) {
    std::map<std::size_t, Seen> seen;
    std::map<std::size_t, std::int64_t> reached;
    auto done = [&] {
      for (const auto& [s, target] : targets) {
        if (reached[s] < target) return false;
      }
      return true;
    };
    while (!done()) {
      auto r = client.Next(10s);
      if (!r) break;
      for (const auto& e : r->events()) {
        const std::size_t s = shard_of(e.kv().key());
        if (e.kv().key() < from || (!to.empty() && e.kv().key() >= to)) ADD_FAILURE() << "outside " << e.kv().key();
        seen[s].emplace_back(e.type(), e.kv().key(), e.kv().value(), e.kv().mod_revision());
        reached[s] = std::max(reached[s], e.kv().mod_revision());
      }
    }
    return seen;
  };
  std::map<std::size_t, Seen> reference;
  for (std::size_t s = 0; s < 3; ++s) reference[s] = drain(*direct[s], "", "", {{s, last_revision[s]}})[s];
  const auto all = drain(everything, "", "", {{0, last_revision[0]}, {1, last_revision[1]}, {2, last_revision[2]}});
  for (std::size_t s = 0; s < 3; ++s) EXPECT_EQ(all.count(s) ? all.at(s) : Seen{}, reference[s]) << "shard " << s;
  // Clipped: only e..p of shards 0 and 1.
  std::map<std::size_t, Seen> want;
  std::map<std::size_t, std::int64_t> targets;
  for (std::size_t s = 0; s < 2; ++s) {
    for (const auto& ev : reference[s]) {
      if (std::get<1>(ev) >= "e" && std::get<1>(ev) < "p") {
        want[s].push_back(ev);
        targets[s] = std::get<3>(ev);
      }
    }
  }
  const auto mid = drain(middle, "e", "p", targets);
  for (std::size_t s = 0; s < 2; ++s) {
    EXPECT_EQ(mid.count(s) ? mid.at(s) : Seen{}, want[s]) << "shard " << s;
  }
  EXPECT_GT(reference[0].size() + reference[1].size() + reference[2].size(), 150u);
}

TEST_F(WatchTest, UpstreamWatchersAreSharedAndReleased) {
  std::vector<int> before;
  for (std::size_t s = 0; s < 3; ++s) before.push_back(WatcherGauge(member(s)));
  ASSERT_GE(before[0], 0);
  const int streams_before = WatchStreamGauge(member(0));
  ASSERT_GE(streams_before, 0);
  {
    WatchClient one(proxy());
    WatchClient two(proxy());
    CreateAndAwait(one, "a-leak");
    CreateAndAwait(one, "b-leak", "z-leak");  // one watcher on every shard
    CreateAndAwait(two, "c-leak");
    CreateAndAwait(two, "d-leak");
    EXPECT_TRUE(WaitFor([&] { return WatcherGauge(member(0)) == before[0] + 4; }, 10s)) << WatcherGauge(member(0));
    EXPECT_EQ(WatcherGauge(member(1)), before[1] + 1);
    EXPECT_EQ(WatcherGauge(member(2)), before[2] + 1);
    // Both client streams' watchers share one upstream stream.
    EXPECT_EQ(WatchStreamGauge(member(0)), streams_before + 1);
    // Cancel frees the upstream watcher while the shared stream stays in use.
    two.Cancel(0);
    EXPECT_TRUE(two.Expect().canceled());
    EXPECT_TRUE(WaitFor([&] { return WatcherGauge(member(0)) == before[0] + 3; }, 10s));
    one.Close();
    EXPECT_TRUE(WaitFor([&] { return WatcherGauge(member(0)) == before[0] + 1; }, 10s)) << WatcherGauge(member(0));
    EXPECT_TRUE(WaitFor([&] { return WatcherGauge(member(1)) == before[1]; }, 10s));
  }
  for (std::size_t s = 0; s < 3; ++s) {
    EXPECT_TRUE(WaitFor([&] { return WatcherGauge(member(s)) == before[s]; }, 10s))
        << "shard " << s << ": " << WatcherGauge(member(s)) << " vs " << before[s];
  }
  EXPECT_TRUE(WaitFor([&] { return WatchStreamGauge(member(0)) == streams_before; }, 10s));
}

// Runs last in this suite (it restarts a shard): when a shard's member goes away and comes back,
// the watches on it resume from the last delivered revision + 1: the client stream stays open,
// nothing is lost and nothing is delivered twice; watches on other shards go on meanwhile.
TEST_F(WatchTest, ZzWatchesResumeAfterAShardRestart) {
  WatchClient client(proxy());
  CreateAndAwait(client, "a-break");            // id 0, shard 0
  CreateAndAwait(client, "t-break");            // id 1, shard 2
  CreateAndAwait(client, "a-break", "u-break");  // id 2, spanning
  Put("a-break", "before");
  for (int i = 0; i < 2; ++i) {
    const WatchResponse r = client.Expect();
    ASSERT_EQ(r.events_size(), 1);
    EXPECT_EQ(r.events(0).kv().value(), "before");
  }
  setup_->shard(0).KillMember(0);
  Put("t-break", "during");  // shard 2 is unaffected
  std::set<std::int64_t> during;  // etcd orders events per watcher, not across watchers
  for (int i = 0; i < 2; ++i) {
    const WatchResponse r = client.Expect();
    during.insert(r.watch_id());
    EXPECT_FALSE(r.canceled()) << r.cancel_reason();
    ASSERT_EQ(r.events_size(), 1);
    EXPECT_EQ(r.events(0).kv().value(), "during");
  }
  EXPECT_EQ(during, (std::set<std::int64_t>{1, 2}));
  setup_->shard(0).StartMember(0);
  setup_->shard(0).WaitReady();
  etcdserverpb::PutRequest put;
  put.set_key("a-break");
  put.set_value("after");
  ASSERT_TRUE(WaitFor(
      [&] {
        etcdserverpb::PutResponse resp;
        return kv_->Put(Ctx().get(), put, &resp).ok();
      },
      20s, 200ms));
  std::map<std::int64_t, int> seen;
  for (int i = 0; i < 2; ++i) {
    const WatchResponse r = client.Expect(20s);
    EXPECT_FALSE(r.canceled()) << r.cancel_reason();
    EXPECT_FALSE(r.created());
    ASSERT_EQ(r.events_size(), 1);
    EXPECT_EQ(r.events(0).kv().value(), "after");  // "before" is not delivered again
    ++seen[r.watch_id()];
  }
  EXPECT_EQ(seen[0], 1);
  EXPECT_EQ(seen[2], 1);
  EXPECT_FALSE(client.Next(300ms).has_value());
}

}  // namespace
}  // namespace esp::test
