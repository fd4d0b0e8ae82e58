// KeepAliveHub against fake shards: coalescing, TTL merge, shards that fail or stay silent.
#include "lease/keepalive.h"

#include <gtest/gtest.h>

#include <future>

#include "transport/event_loop.h"

namespace esp {
namespace {

using etcdserverpb::LeaseKeepAliveRequest;
using etcdserverpb::LeaseKeepAliveResponse;

class FakeStream final : public UpstreamStream {
 public:
  explicit FakeStream(std::shared_ptr<UpstreamStreamObserver> observer) : observer_(std::move(observer)) {}
  bool Write(std::string message) override {
    if (ended_) return false;
    LeaseKeepAliveRequest request;
    request.ParseFromString(message);
    writes_.push_back(request.id());
    return true;
  }
  void CloseSend() override {}
  void Cancel() override { End(Status(StatusCode::kCancelled, "cancelled")); }

  void Answer(int64_t id, int64_t ttl) {
    LeaseKeepAliveResponse response;
    response.set_id(id);
    response.set_ttl(ttl);
    observer_->OnMessage(response.SerializeAsString());
  }
  void End(Status status) {
    if (ended_) return;
    ended_ = true;
    observer_->OnClose(std::move(status));
  }
  const std::vector<int64_t>& writes() const { return writes_; }
  bool ended() const { return ended_; }

 private:
  std::shared_ptr<UpstreamStreamObserver> observer_;
  std::vector<int64_t> writes_;
  bool ended_ = false;
};

class FakeShard final : public ShardTransport {
 public:
  const std::string& description() const override { return description_; }
  void Unary(const std::string&, const CallContextPtr&, std::string, UnaryOptions, UnaryDone done) override {
    done(Status(StatusCode::kUnavailable, "fake"), {});
  }
  std::shared_ptr<UpstreamStream> OpenStream(const std::string&, const Metadata& metadata,
                                             std::shared_ptr<UpstreamStreamObserver> observer) override {
    streams.push_back(std::make_shared<FakeStream>(std::move(observer)));
    opened_with.push_back(metadata);
    return streams.back();
  }
  FakeStream& last() { return *streams.back(); }
  std::vector<std::shared_ptr<FakeStream>> streams;
  std::vector<Metadata> opened_with;  // per stream

 private:
  std::string description_ = "fake";
};

class KeepAliveHubTest : public ::testing::Test {
 protected:
  KeepAliveHubTest()
      : shards_{std::make_shared<FakeShard>(), std::make_shared<FakeShard>()},
        topology_(std::make_shared<const Topology>(
            Topology{ShardMap({{"s0", "", "m"}, {"s1", "m", ""}}), {shards_[0], shards_[1]}})),
        hub_(std::make_shared<KeepAliveHub>(topology_, std::make_shared<PendingLeases>(topology_),
                                            std::chrono::milliseconds(0))) {}

  struct Got {
    int calls = 0;
    Status status;
    int64_t ttl = -1;
  };
  KeepAliveHub::Answer Record(Got& got) {
    return [&got](Status status, LeaseKeepAliveResponse response) {
      ++got.calls;
      got.status = std::move(status);
      got.ttl = response.ttl();
    };
  }

  std::vector<std::shared_ptr<FakeShard>> shards_;
  TopologyHolder topology_;
  std::shared_ptr<KeepAliveHub> hub_;
};

TEST_F(KeepAliveHubTest, AnswersWithTheSmallestTtlOnceEveryShardAnswered) {
  Got got;
  hub_->KeepAlive(7, Record(got));
  ASSERT_EQ(shards_[0]->last().writes(), std::vector<int64_t>{7});
  ASSERT_EQ(shards_[1]->last().writes(), std::vector<int64_t>{7});
  shards_[0]->last().Answer(7, 10);
  EXPECT_EQ(got.calls, 0);
  shards_[1]->last().Answer(7, 8);
  EXPECT_EQ(got.calls, 1);
  EXPECT_TRUE(got.status.ok());
  EXPECT_EQ(got.ttl, 8);
}

TEST_F(KeepAliveHubTest, ManyRequestsForOneLeaseShareUpstreamRounds) {
  Got first;
  hub_->KeepAlive(7, Record(first));
  std::vector<Got> later(100);
  for (auto& g : later) hub_->KeepAlive(7, Record(g));
  // While a round is in flight, nothing more goes upstream.
  EXPECT_EQ(shards_[0]->last().writes().size(), 1u);
  shards_[0]->last().Answer(7, 5);
  shards_[1]->last().Answer(7, 5);
  EXPECT_EQ(first.calls, 1);
  for (const auto& g : later) EXPECT_EQ(g.calls, 0);  // their round started after they arrived
  EXPECT_EQ(shards_[0]->last().writes().size(), 2u);
  shards_[0]->last().Answer(7, 5);
  shards_[1]->last().Answer(7, 5);
  for (const auto& g : later) EXPECT_EQ(g.ttl, 5);
  // 101 client requests, 2 rounds: 4 upstream messages over 2 shards.
  EXPECT_EQ(hub_->upstream_writes(), 4u);
}

TEST_F(KeepAliveHubTest, DifferentLeasesGoUpstreamIndependently) {
  Got a, b;
  hub_->KeepAlive(1, Record(a));
  hub_->KeepAlive(2, Record(b));
  EXPECT_EQ(shards_[0]->streams.size(), 1u);  // one shared stream per shard
  EXPECT_EQ(shards_[0]->last().writes(), (std::vector<int64_t>{1, 2}));
  for (auto& s : shards_) s->last().Answer(2, 3);
  EXPECT_EQ(b.calls, 1);
  EXPECT_EQ(a.calls, 0);
}

TEST_F(KeepAliveHubTest, LeaseGoneEverywhereAnswersZero) {
  Got got;
  hub_->KeepAlive(7, Record(got));
  for (auto& s : shards_) s->last().Answer(7, 0);
  EXPECT_TRUE(got.status.ok());
  EXPECT_EQ(got.ttl, 0);
}

TEST_F(KeepAliveHubTest, ShardWithoutTheLeaseIsLeftOutOfTheTtl) {
  Got got;
  hub_->KeepAlive(7, Record(got));
  shards_[0]->last().Answer(7, 0);
  shards_[1]->last().Answer(7, 9);
  EXPECT_EQ(got.ttl, 9);
}

TEST_F(KeepAliveHubTest, BrokenStreamAnswersWithoutThatShardAndIsReopened) {
  Got got;
  hub_->KeepAlive(7, Record(got));
  shards_[1]->last().End(Status(StatusCode::kUnavailable, "gone"));
  shards_[0]->last().Answer(7, 6);
  EXPECT_EQ(got.calls, 1);
  EXPECT_EQ(got.ttl, 6);
  Got again;
  hub_->KeepAlive(7, Record(again));
  EXPECT_EQ(shards_[1]->streams.size(), 2u);
  EXPECT_EQ(shards_[1]->last().writes(), std::vector<int64_t>{7});
}

TEST_F(KeepAliveHubTest, SilentShardIsGivenUpOnTick) {
  Got got;
  hub_->KeepAlive(7, Record(got));
  shards_[0]->last().Answer(7, 6);
  hub_->Tick();  // timeout 0: shard 1 is late
  EXPECT_EQ(got.calls, 1);
  EXPECT_EQ(got.ttl, 6);
  // An answer arriving afterwards is ignored.
  shards_[1]->streams.front()->Answer(7, 6);
  EXPECT_EQ(got.calls, 1);
}

TEST_F(KeepAliveHubTest, NoShardAnsweringIsAnError) {
  Got got;
  hub_->KeepAlive(7, Record(got));
  hub_->Tick();
  EXPECT_EQ(got.calls, 1);
  EXPECT_EQ(got.status.code(), StatusCode::kUnavailable);
}

TEST_F(KeepAliveHubTest, SplitRoundsAreReportedForRepair) {
  std::vector<LeaseSplit> splits;
  hub_->SetSplitHandler([&](const LeaseSplit& split) { splits.push_back(split); });
  Got got;
  hub_->KeepAlive(7, Record(got));
  shards_[0]->last().Answer(7, 0);
  shards_[1]->last().Answer(7, 9);
  ASSERT_EQ(splits.size(), 1u);
  EXPECT_EQ(splits[0].id, 7);
  EXPECT_EQ(splits[0].holders, std::vector<std::size_t>{1});
  EXPECT_EQ(splits[0].lacking, std::vector<std::size_t>{0});
  EXPECT_EQ(splits[0].unknown, 0u);
  EXPECT_EQ(splits[0].ttl, 9);
  EXPECT_EQ(got.ttl, 9);  // half the shards hold it: alive (granted while shard 0 was down)
  // Agreeing shards are no split.
  hub_->KeepAlive(7, Record(got));
  for (auto& s : shards_) s->last().Answer(7, 9);
  EXPECT_EQ(splits.size(), 1u);
}

TEST(KeepAliveHubSplitTest, LeaseHeldByAMinorityAnswersZero) {
  std::vector<std::shared_ptr<FakeShard>> shards = {std::make_shared<FakeShard>(), std::make_shared<FakeShard>(),
                                                    std::make_shared<FakeShard>()};
  TopologyHolder topology(std::make_shared<const Topology>(
      Topology{ShardMap({{"s0", "", "g"}, {"s1", "g", "p"}, {"s2", "p", ""}}), {shards[0], shards[1], shards[2]}}));
  auto hub = std::make_shared<KeepAliveHub>(topology, std::make_shared<PendingLeases>(topology),
                                            std::chrono::milliseconds(0));
  int64_t ttl = -1;
  hub->KeepAlive(7, [&](Status, LeaseKeepAliveResponse response) { ttl = response.ttl(); });
  // Revoked on shards 0 and 1 while shard 2 was down: the lease is gone, as etcd answers.
  shards[0]->last().Answer(7, 0);
  shards[1]->last().Answer(7, 0);
  shards[2]->last().Answer(7, 9);
  EXPECT_EQ(ttl, 0);
}

// Collects what the hub writes to one client stream.
class FakeSink final : public StreamSink {
 public:
  bool Write(std::string message) override {
    LeaseKeepAliveResponse response;
    response.ParseFromString(message);
    ttls.push_back(response.ttl());
    return true;
  }
  void Finish(Status) override { finished = true; }
  std::vector<int64_t> ttls;
  bool finished = false;
};

TEST_F(KeepAliveHubTest, CountsTheLeasesOpenStreamsKeepAlive) {
  auto request = [](int64_t id) {
    LeaseKeepAliveRequest r;
    r.set_id(id);
    return r.SerializeAsString();
  };
  auto sink_a = std::make_shared<FakeSink>();
  auto sink_b = std::make_shared<FakeSink>();
  auto a = hub_->NewClientStream(nullptr, sink_a);
  auto b = hub_->NewClientStream(nullptr, sink_b);
  EXPECT_EQ(hub_->KeptAliveLeaseCount(), 0u);
  a->OnMessage(request(1));
  a->OnMessage(request(2));
  b->OnMessage(request(2));  // the same lease from two clients counts once
  EXPECT_EQ(hub_->KeptAliveLeaseCount(), 2u);
  for (auto& s : shards_) s->last().Answer(1, 0);  // lease 1 is gone: no longer kept alive
  EXPECT_EQ(sink_a->ttls, std::vector<int64_t>{0});
  EXPECT_EQ(hub_->KeptAliveLeaseCount(), 1u);
  a->OnClose();
  EXPECT_EQ(hub_->KeptAliveLeaseCount(), 1u);  // b still keeps lease 2 alive
  b->OnClose();
  EXPECT_EQ(hub_->KeptAliveLeaseCount(), 0u);
}

KeepAliveHub::Identity WithToken(const std::string& token) {
  return KeepAliveHub::IdentityOf({{"token", token}});
}

TEST(KeepAliveIdentityTest, OnlyTokenAndCertificateIdentityMakeTheLane) {
  EXPECT_TRUE(KeepAliveHub::IdentityOf({{"hasleader", "true"}}).key.empty());
  EXPECT_TRUE(KeepAliveHub::IdentityOf({{"hasleader", "true"}}).metadata.empty());
  const auto both = KeepAliveHub::IdentityOf({{"hasleader", "true"}, {"token", "t"}, {"esp-client-cert-cn", "c"}});
  EXPECT_EQ(both.metadata, (Metadata{{"token", "t"}, {"esp-client-cert-cn", "c"}}));
  EXPECT_NE(both.key, KeepAliveHub::IdentityOf({{"token", "t"}}).key);
  EXPECT_NE(KeepAliveHub::IdentityOf({{"token", "a"}}).key, KeepAliveHub::IdentityOf({{"token", "b"}}).key);
}

TEST_F(KeepAliveHubTest, EachIdentityRenewsOverStreamsOfItsOwn) {
  Got a, b, none;
  hub_->KeepAlive(WithToken("ta"), 7, Record(a));
  hub_->KeepAlive(WithToken("tb"), 7, Record(b));
  hub_->KeepAlive(7, Record(none));
  EXPECT_EQ(hub_->LaneCount(), 3u);
  for (auto& shard : shards_) {
    ASSERT_EQ(shard->streams.size(), 3u);
    EXPECT_EQ(shard->opened_with[0], (Metadata{{"token", "ta"}}));
    EXPECT_EQ(shard->opened_with[1], (Metadata{{"token", "tb"}}));
    EXPECT_EQ(shard->opened_with[2], Metadata{});
    for (auto& stream : shard->streams) EXPECT_EQ(stream->writes(), std::vector<int64_t>{7});  // a round per lane
  }
  for (auto& shard : shards_) shard->streams[1]->Answer(7, 5);
  EXPECT_EQ(b.calls, 1);
  EXPECT_EQ(b.ttl, 5);
  EXPECT_EQ(a.calls, 0);  // its round is its own
  // Clients of one identity share the lane's streams and rounds.
  auto sink = std::make_shared<FakeSink>();
  auto client = hub_->NewClientStream(
      std::make_shared<CallContext>(std::nullopt, Metadata{{"token", "tb"}, {"hasleader", "true"}}), sink);
  LeaseKeepAliveRequest request;
  request.set_id(7);
  client->OnMessage(request.SerializeAsString());
  EXPECT_EQ(hub_->LaneCount(), 3u);
  for (auto& shard : shards_) EXPECT_EQ(shard->streams[1]->writes(), (std::vector<int64_t>{7, 7}));
}

// On the h2 data plane each event loop has lanes of its own: a renewal from a client served by
// one loop goes over upstream streams opened from (and so living on) that loop, never crossing
// to another loop's thread. Clients of one loop still share their lane.
TEST_F(KeepAliveHubTest, EachEventLoopRenewsOverStreamsOfItsOwn) {
  EventLoop first, second;
  first.Start();
  second.Start();
  std::vector<std::shared_ptr<FakeSink>> sinks;
  std::vector<std::shared_ptr<StreamHandler>> clients;
  // A client stream created and fed on `loop`, as the h2 plane does; returns once it ran there.
  const auto renew_on = [&](EventLoop& loop, int64_t id) {
    auto sink = std::make_shared<FakeSink>();
    std::promise<std::shared_ptr<StreamHandler>> made;
    loop.Post([&] {
      auto client = hub_->NewClientStream(std::make_shared<CallContext>(std::nullopt, Metadata{}), sink);
      LeaseKeepAliveRequest request;
      request.set_id(id);
      client->OnMessage(request.SerializeAsString());
      made.set_value(client);
    });
    clients.push_back(made.get_future().get());
    sinks.push_back(sink);
  };
  renew_on(first, 7);
  renew_on(second, 7);
  EXPECT_EQ(hub_->LaneCount(), 2u);
  for (auto& shard : shards_) {
    ASSERT_EQ(shard->streams.size(), 2u);
    for (auto& stream : shard->streams) EXPECT_EQ(stream->writes(), std::vector<int64_t>{7});  // a round per loop
  }
  renew_on(first, 8);  // the first loop's lane again
  EXPECT_EQ(hub_->LaneCount(), 2u);
  for (auto& shard : shards_) EXPECT_EQ(shard->streams[0]->writes(), (std::vector<int64_t>{7, 8}));
  // Off the loops (the gRPC C++ plane, these tests) there is the one lane of before.
  Got off_loop;
  hub_->KeepAlive(7, Record(off_loop));
  EXPECT_EQ(hub_->LaneCount(), 3u);
  first.Stop();
  second.Stop();
}

TEST_F(KeepAliveHubTest, RefusalEndsEveryRoundWaitingOnTheStreamWithEtcdsError) {
  Got seven, eight, other;
  hub_->KeepAlive(WithToken("alice"), 7, Record(seven));
  hub_->KeepAlive(WithToken("alice"), 8, Record(eight));
  hub_->KeepAlive(WithToken("root"), 7, Record(other));
  shards_[0]->streams[0]->Answer(7, 10);
  shards_[0]->streams[0]->Answer(8, 10);
  shards_[1]->streams[0]->End(Status(StatusCode::kPermissionDenied, "etcdserver: permission denied"));
  for (Got* got : {&seven, &eight}) {
    EXPECT_EQ(got->calls, 1);
    EXPECT_EQ(got->status.code(), StatusCode::kPermissionDenied);
    EXPECT_EQ(got->status.message(), "etcdserver: permission denied");
  }
  EXPECT_EQ(other.calls, 0);  // another identity's stream is untouched
  EXPECT_FALSE(shards_[1]->streams[1]->ended());
  // The refusal wins over answers that come later, too.
  Got later;
  hub_->KeepAlive(WithToken("alice"), 7, Record(later));
  shards_[1]->last().End(Status(StatusCode::kInvalidArgument, "etcdserver: user name is empty"));
  shards_[0]->streams[0]->Answer(7, 10);
  EXPECT_EQ(later.calls, 1);
  EXPECT_EQ(later.status.message(), "etcdserver: user name is empty");
}

TEST(KeepAliveLaneTest, IdleLanesRetireWithTheirStreams) {
  auto shard = std::make_shared<FakeShard>();
  TopologyHolder topology(std::make_shared<const Topology>(Topology{ShardMap({{"s0", "", ""}}), {shard}}));
  auto hub = std::make_shared<KeepAliveHub>(topology, std::make_shared<PendingLeases>(topology), std::chrono::hours(1),
                                            std::chrono::milliseconds(0));
  int answers = 0;
  const auto count = [&](Status, LeaseKeepAliveResponse) { ++answers; };
  hub->KeepAlive(WithToken("old"), 7, count);
  shard->last().Answer(7, 5);
  hub->KeepAlive(WithToken("busy"), 7, count);  // stays in flight
  hub->Tick();  // both were used since the last tick
  hub->Tick();
  EXPECT_EQ(hub->LaneCount(), 1u);
  EXPECT_TRUE(shard->streams[0]->ended());
  EXPECT_FALSE(shard->streams[1]->ended());
  shard->streams[1]->Answer(7, 5);
  EXPECT_EQ(answers, 2);
  hub->Tick();
  EXPECT_EQ(hub->LaneCount(), 0u);
  EXPECT_TRUE(shard->streams[1]->ended());
  // A retired identity comes back on demand with a new stream.
  hub->KeepAlive(WithToken("old"), 7, count);
  EXPECT_EQ(shard->streams.size(), 3u);
  EXPECT_EQ(shard->last().writes(), std::vector<int64_t>{7});
  EXPECT_EQ(hub->LaneCount(), 1u);
}

}  // namespace
}  // namespace esp
