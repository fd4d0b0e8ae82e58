// H2ShardTransport (our nghttp2 client towards the shards) against a real etcd, without the
// proxy around it: member failover for reads and writes, the error texts of an unreachable
// shard, deadlines, cancellation and a watch stream.
#include <gtest/gtest.h>

#include <future>
#include <memory>

#include "support/fixtures.h"
#include "upstream/h2_shard_transport.h"

namespace esp::test {
namespace {

using etcdserverpb::PutRequest;
using etcdserverpb::PutResponse;
using etcdserverpb::RangeRequest;
using etcdserverpb::RangeResponse;

struct Result {
  Status status;
  std::string bytes;
};

Result Call(ShardTransport& transport, const std::string& method, const google::protobuf::Message& request,
            UnaryOptions options, CallContextPtr ctx = std::make_shared<CallContext>()) {
  auto promise = std::make_shared<std::promise<Result>>();
  auto future = promise->get_future();
  transport.Unary(method, ctx, request.SerializeAsString(), options, [promise](Status status, std::string bytes) {
    promise->set_value({std::move(status), std::move(bytes)});
  });
  EXPECT_EQ(future.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  return future.get();
}

PutRequest Put(const std::string& key, const std::string& value) {
  PutRequest put;
  put.set_key(key);
  put.set_value(value);
  return put;
}

class H2UpstreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    etcd_ = std::make_unique<EtcdCluster>(1, "h2up");
    etcd_->Start();
  }
  static void TearDownTestSuite() {
    etcd_.reset();
  }
  static std::shared_ptr<H2ShardTransport> Transport(std::vector<std::string> endpoints) {
    ShardConfig shard;
    shard.name = "s1";
    shard.endpoints = std::move(endpoints);
    return std::make_shared<H2ShardTransport>(shard, "shard \"s1\"");
  }
  static std::string Dead() { return "127.0.0.1:" + std::to_string(FreePort()); }
  static std::unique_ptr<EtcdCluster> etcd_;
};
std::unique_ptr<EtcdCluster> H2UpstreamTest::etcd_;

// Issue #4's shared loops: a call started on one of the pool's loops (as the h2 data plane does,
// its client connections living on these loops) uses that loop's connection and completes on that
// same thread, with no hop; a call from any other thread still works (round robin onto a loop).
TEST_F(H2UpstreamTest, ACallStartedOnALoopCompletesOnThatLoop) {
  const auto loops = std::make_shared<UpstreamLoops>(2);
  ShardConfig shard;
  shard.name = "s1";
  shard.endpoints = {etcd_->member(0).client_address()};
  const auto transport = std::make_shared<H2ShardTransport>(shard, "shard \"s1\"", UpstreamTuning{}, loops);
  for (int round = 0; round < 2; ++round) {  // the second round reuses the connections
    for (std::size_t i = 0; i < loops->size(); ++i) {
      auto same_thread = std::make_shared<std::promise<std::pair<bool, Status>>>();
      auto future = same_thread->get_future();
      EventLoop& loop = loops->loop(i);
      loop.Post([&loop, transport, same_thread, i] {
        transport->Unary("/etcdserverpb.KV/Put", std::make_shared<CallContext>(),
                         Put("loop" + std::to_string(i), "v").SerializeAsString(), kWrite,
                         [&loop, same_thread](Status status, std::string) {
                           same_thread->set_value({loop.InLoopThread(), std::move(status)});
                         });
      });
      ASSERT_EQ(future.wait_for(std::chrono::seconds(20)), std::future_status::ready);
      const auto [on_loop, status] = future.get();
      EXPECT_TRUE(status.ok()) << status.message();
      EXPECT_TRUE(on_loop) << "loop " << i << " round " << round;
    }
  }
  RangeRequest get;
  get.set_key("loop1");
  const Result result = Call(*transport, "/etcdserverpb.KV/Range", get, kRead);
  ASSERT_TRUE(result.status.ok()) << result.status.message();
  RangeResponse response;
  ASSERT_TRUE(response.ParseFromString(result.bytes));
  ASSERT_EQ(response.kvs_size(), 1);
  EXPECT_EQ(response.kvs(0).value(), "v");
  // The completions' last references to the transport go on the loop threads just after `done`:
  // the transport (and with it the pool, which joins its threads) must be dropped here.
  EXPECT_TRUE(WaitFor([&] { return transport.use_count() == 1; }, std::chrono::seconds(5)));
}

// A member nobody listens on is skipped: writes (never sent there) and reads all land.
TEST_F(H2UpstreamTest, WritesAndReadsGoAroundAnUnreachableMember) {
  const auto transport = Transport({Dead(), etcd_->member(0).client_address()});
  for (int i = 0; i < 6; ++i) {
    const auto put = Call(*transport, "/etcdserverpb.KV/Put", Put("h2up/k" + std::to_string(i), "v"), kWrite);
    ASSERT_TRUE(put.status.ok()) << put.status.message();
    PutResponse response;
    ASSERT_TRUE(response.ParseFromString(put.bytes));
    EXPECT_GT(response.header().revision(), 0);
  }
  RangeRequest range;
  range.set_key("h2up/k");
  range.set_range_end("h2up/l");
  const auto got = Call(*transport, "/etcdserverpb.KV/Range", range, kRead);
  ASSERT_TRUE(got.status.ok()) << got.status.message();
  RangeResponse response;
  ASSERT_TRUE(response.ParseFromString(got.bytes));
  EXPECT_EQ(response.count(), 6);
}

// With no member reachable the call fails as with gRPC's client: UNAVAILABLE, the shard named.
TEST_F(H2UpstreamTest, UnreachableShardIsUnavailableWithItsDescription) {
  const std::string dead = Dead();
  const auto transport = Transport({dead});
  const auto put = Call(*transport, "/etcdserverpb.KV/Put", Put("h2up/x", "v"), kWrite);
  EXPECT_EQ(put.status.code(), StatusCode::kUnavailable);
  EXPECT_TRUE(put.status.message().starts_with("shard \"s1\" at " + dead + ": failed to connect to all addresses"))
      << put.status.message();
}

// etcd's own errors pass untouched.
TEST_F(H2UpstreamTest, EtcdErrorsPassThrough) {
  const auto transport = Transport({etcd_->member(0).client_address()});
  const auto put = Call(*transport, "/etcdserverpb.KV/Put", Put("", "v"), kWrite);
  EXPECT_EQ(put.status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(put.status.message(), "etcdserver: key is not provided");
}

// A hung member: the deadline ends the call, cancellation ends another, both promptly.
TEST_F(H2UpstreamTest, DeadlineAndCancellationEndCallsOnAHungMember) {
  const auto transport = Transport({etcd_->member(0).client_address()});
  ASSERT_TRUE(Call(*transport, "/etcdserverpb.KV/Put", Put("h2up/warm", "v"), kWrite).status.ok());
  etcd_->PauseMember(0);
  const auto started = std::chrono::steady_clock::now();
  auto ctx = std::make_shared<CallContext>(Clock::now() + std::chrono::milliseconds(300), Metadata{});
  const auto late = Call(*transport, "/etcdserverpb.KV/Put", Put("h2up/late", "v"), kWrite, ctx);
  EXPECT_EQ(late.status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(late.status.message().find("shard \"s1\""), std::string::npos) << late.status.message();

  auto cancelled_ctx = std::make_shared<CallContext>();
  auto promise = std::make_shared<std::promise<Status>>();
  transport->Unary("/etcdserverpb.KV/Put", cancelled_ctx, Put("h2up/c", "v").SerializeAsString(), kWrite,
                   [promise](Status status, std::string) { promise->set_value(std::move(status)); });
  cancelled_ctx->cancellation().Cancel();
  auto future = promise->get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(future.get().code(), StatusCode::kCancelled);
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5));
  etcd_->ResumeMember(0);
}

class Collector final : public UpstreamStreamObserver {
 public:
  void OnMessage(std::string message) override {
    const std::lock_guard lock(mu_);
    messages_.push_back(std::move(message));
  }
  void OnClose(Status status) override { closed_.set_value(std::move(status)); }
  std::vector<std::string> messages() {
    const std::lock_guard lock(mu_);
    return messages_;
  }
  std::promise<Status> closed_;

 private:
  std::mutex mu_;
  std::vector<std::string> messages_;
};

// A watch over the bidirectional stream: created, then an event, then a clean end on CloseSend.
TEST_F(H2UpstreamTest, WatchStreamDeliversEventsAndEnds) {
  const auto transport = Transport({etcd_->member(0).client_address()});
  const auto collector = std::make_shared<Collector>();
  auto closed = collector->closed_.get_future();
  const auto stream = transport->OpenStream("/etcdserverpb.Watch/Watch", Metadata{}, collector);
  etcdserverpb::WatchRequest create;
  create.mutable_create_request()->set_key("h2up/w");
  ASSERT_TRUE(stream->Write(create.SerializeAsString()));
  ASSERT_TRUE(WaitFor([&] { return collector->messages().size() == 1; }, std::chrono::seconds(10)));
  ASSERT_TRUE(Call(*transport, "/etcdserverpb.KV/Put", Put("h2up/w", "event"), kWrite).status.ok());
  ASSERT_TRUE(WaitFor([&] { return collector->messages().size() == 2; }, std::chrono::seconds(10)));
  etcdserverpb::WatchResponse event;
  ASSERT_TRUE(event.ParseFromString(collector->messages()[1]));
  ASSERT_EQ(event.events_size(), 1);
  EXPECT_EQ(event.events(0).kv().value(), "event");
  stream->Cancel();
  ASSERT_EQ(closed.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(closed.get().code(), StatusCode::kCancelled);
  EXPECT_FALSE(stream->Write(create.SerializeAsString()));
}

}  // namespace
}  // namespace esp::test
