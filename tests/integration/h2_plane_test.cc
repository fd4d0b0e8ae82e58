// The event-loop HTTP/2 data plane (--data-plane=h2) against three real etcd shards: real
// clients (etcdctl = grpc-go, python3-etcd3 = gRPC core) and HTTP/2 edge cases driven by a raw
// nghttp2 client (support/raw_h2_client.h), which can cut messages into any DATA frames, reset
// streams and stop reading.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <sstream>

#include "support/fixtures.h"
#include "support/raw_h2_client.h"
#include "transport/grpc_framing.h"

namespace esp::test {
namespace {

using etcdserverpb::PutRequest;
using etcdserverpb::RangeRequest;
using etcdserverpb::RangeResponse;
using etcdserverpb::WatchRequest;
using etcdserverpb::WatchResponse;

std::string PutBytes(const std::string& key, const std::string& value) {
  PutRequest put;
  put.set_key(key);
  put.set_value(value);
  return put.SerializeAsString();
}

std::string RangeBytes(const std::string& key) {
  RangeRequest range;
  range.set_key(key);
  return range.SerializeAsString();
}

// The one response message of a finished unary call.
template <class Message>
Message Decode(const RawStream& s) {
  MessageDeframer deframer(64 << 20);
  EXPECT_TRUE(deframer.Feed(s.data).ok());
  Message m;
  const auto bytes = deframer.Next();
  EXPECT_TRUE(bytes && m.ParseFromString(*bytes));
  return m;
}

long RssKiB(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmRSS:")) return std::stol(line.substr(6));
  }
  return -1;
}

constexpr const char* kPut = "/etcdserverpb.KV/Put";
constexpr const char* kRange = "/etcdserverpb.KV/Range";
constexpr const char* kWatch = "/etcdserverpb.Watch/Watch";

class H2PlaneTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    metrics_port_ = FreePort();
    setup_ = std::make_unique<ShardedSetup>(
        std::vector<int>{1, 1, 1},
        std::vector<std::string>{"--data-plane=h2", "--data-plane-stream-buffer", "4194304", "--listen-metrics-addr",
                                 "127.0.0.1:" + std::to_string(metrics_port_)});
  }
  static void TearDownTestSuite() {
    setup_.reset();
  }
  static int port() { return PortOf(setup_->proxy().address()); }

  // The proxy's count of open client streams of `method`, from its /metrics.
  static double OpenStreams(const std::string& method) {
    const auto page = RunCommand("curl -s http://127.0.0.1:" + std::to_string(metrics_port_) + "/metrics").output;
    std::istringstream in(page);
    std::string line;
    while (std::getline(in, line)) {
      if (line.starts_with("etcd_proxy_open_streams{") && line.find(method) != std::string::npos) {
        return std::stod(line.substr(line.rfind(' ') + 1));
      }
    }
    return 0;
  }

  static std::unique_ptr<ShardedSetup> setup_;
  static int metrics_port_;
};
std::unique_ptr<ShardedSetup> H2PlaneTest::setup_;
int H2PlaneTest::metrics_port_ = 0;

TEST_F(H2PlaneTest, EtcdctlOverCleartextHttp2) {
  const auto& address = setup_->proxy().address();
  ASSERT_EQ(Etcdctl(address, "put h2/etcdctl hello").exit_code, 0);
  ASSERT_EQ(Etcdctl(address, "put zz/etcdctl world").exit_code, 0);
  const auto got = Etcdctl(address, "get --prefix '' --keys-only");
  EXPECT_NE(got.output.find("h2/etcdctl"), std::string::npos) << got.output;
  EXPECT_NE(got.output.find("zz/etcdctl"), std::string::npos) << got.output;
  const auto value = Etcdctl(address, "get h2/etcdctl --print-value-only");
  EXPECT_EQ(value.output, "hello\n");
  const auto del = Etcdctl(address, "del h2/etcdctl");
  EXPECT_EQ(del.output, "1\n");
}

// grpc-go's bidirectional streams on this plane: a watch replaying history, a lease kept alive.
TEST_F(H2PlaneTest, EtcdctlWatchAndLeaseKeepAlive) {
  const auto& address = setup_->proxy().address();
  const auto put = Etcdctl(address, "put h2/watched one -w json");
  ASSERT_EQ(put.exit_code, 0) << put.output;
  const auto rev_at = put.output.find("\"revision\":");
  ASSERT_NE(rev_at, std::string::npos) << put.output;
  const std::string rev = std::to_string(std::stoll(put.output.substr(rev_at + 11)));
  ASSERT_EQ(Etcdctl(address, "put h2/watched two").exit_code, 0);
  // The watch never ends by itself: `timeout` bounds it once the replayed events are printed.
  const auto watch = RunCommand("env ETCDCTL_API=3 timeout 3 etcdctl --endpoints " + address +
                                " watch --rev=" + rev + " h2/watched");
  EXPECT_NE(watch.output.find("PUT\nh2/watched\none\nPUT\nh2/watched\ntwo"), std::string::npos)
      << "revision " << rev << ": " << watch.output;
  const auto grant = Etcdctl(address, "lease grant 30");
  ASSERT_EQ(grant.exit_code, 0) << grant.output;
  const auto id_at = grant.output.find("lease ");
  ASSERT_NE(id_at, std::string::npos) << grant.output;
  const std::string id = grant.output.substr(id_at + 6, grant.output.find(' ', id_at + 6) - id_at - 6);
  const auto kept = Etcdctl(address, "lease keep-alive --once " + id);
  EXPECT_EQ(kept.exit_code, 0) << kept.output;
  EXPECT_NE(kept.output.find("keepalived with TTL"), std::string::npos) << kept.output;
}

TEST_F(H2PlaneTest, PythonEtcd3PutGetWatch) {
  if (RunCommand("/usr/bin/python3 -c 'import etcd3'").exit_code != 0) {
    GTEST_SKIP() << "python3-etcd3 is not installed (scripts/install-deps.sh installs it)";
  }
  TempDir dir;
  const auto script = dir.path() / "client.py";
  std::ofstream(script) << R"(import sys, threading, etcd3
c = etcd3.client(host='127.0.0.1', port=int(sys.argv[1]))
c.put('py/a', 'one')
c.put('zpy/b', 'two')
assert c.get('py/a')[0] == b'one', c.get('py/a')
assert c.get('zpy/b')[0] == b'two'
events, cancel = c.watch_prefix('py/w')
def writer():
    for i in range(3): c.put('py/w%d' % i, str(i))
threading.Thread(target=writer).start()
seen = []
for e in events:
    seen.append(e.key.decode())
    if len(seen) == 3: break
cancel()
assert seen == ['py/w0', 'py/w1', 'py/w2'], seen
print('python-etcd3 ok')
)";
  const auto result = RunCommand("/usr/bin/python3 " + script.string() + " " + std::to_string(port()));
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("python-etcd3 ok"), std::string::npos) << result.output;
}

TEST_F(H2PlaneTest, MessageCutIntoManyDataFramesArrivesWhole) {
  RawH2Client client(port());
  const std::string value(200 * 1024, 'q');
  const std::string wire = Framed(PutBytes("h2/split", value));
  // The prefix itself over three frames, then frames of every size from 1 byte to 16 KiB.
  std::vector<std::string> chunks = {wire.substr(0, 1), wire.substr(1, 2), wire.substr(3, 3)};
  for (std::size_t at = 6, size = 1; at < wire.size(); at += size, size = size * 2 % 16381 + 1) {
    chunks.push_back(wire.substr(at, size));
  }
  ASSERT_GT(chunks.size(), 30u);
  const auto put = client.Submit(kPut, chunks);
  ASSERT_TRUE(client.RunUntil([&] { return client.stream(put).closed; }));
  ASSERT_EQ(client.stream(put).grpc_status(), "0");
  const auto get = client.Submit(kRange, {Framed(RangeBytes("h2/split"))});
  ASSERT_TRUE(client.RunUntil([&] { return client.stream(get).closed; }));
  const auto resp = Decode<RangeResponse>(client.stream(get));
  ASSERT_EQ(resp.kvs_size(), 1);
  EXPECT_TRUE(resp.kvs(0).value() == value);
}

// Watch events broadcast to several streams of one connection in bursts (the sink batches
// whatever piles up before the loop writes): each stream still gets every event exactly once, in
// revision order, each a WatchResponse of its own carrying that stream's watch id.
TEST_F(H2PlaneTest, BurstsOfBroadcastEventsArriveWholeAndInOrderOnEveryStream) {
  RawH2Client watcher(port());
  WatchRequest create;
  create.mutable_create_request()->set_key("h2/burst/");
  create.mutable_create_request()->set_range_end("h2/burst0");
  constexpr int kStreams = 5;
  constexpr int kPuts = 120;
  std::vector<std::int32_t> watches;
  for (int i = 0; i < kStreams; ++i) {
    create.mutable_create_request()->set_watch_id(i + 7);  // a different id on every stream
    watches.push_back(watcher.Submit(kWatch, {Framed(create.SerializeAsString())}, false));
  }
  ASSERT_TRUE(watcher.RunUntil([&] {
    return std::all_of(watches.begin(), watches.end(), [&](auto id) { return !watcher.stream(id).data.empty(); });
  }));
  RawH2Client writer(port());
  std::vector<std::int32_t> puts;
  for (int i = 0; i < kPuts; ++i) puts.push_back(writer.Submit(kPut, {Framed(PutBytes("h2/burst/" + std::to_string(i), "v"))}));
  ASSERT_TRUE(writer.RunUntil([&] {
    return std::all_of(puts.begin(), puts.end(), [&](auto id) { return writer.stream(id).closed; });
  }));
  // Every stream: its `created`, then kPuts events in responses of their own.
  const auto decode = [&](std::int32_t id) {
    std::vector<WatchResponse> out;
    MessageDeframer deframer(64 << 20);
    EXPECT_TRUE(deframer.Feed(watcher.stream(id).data).ok());
    while (auto bytes = deframer.Next()) {
      WatchResponse r;
      EXPECT_TRUE(r.ParseFromString(*bytes));
      out.push_back(std::move(r));
    }
    return out;
  };
  const auto events = [&](const std::vector<WatchResponse>& responses) {
    int n = 0;
    for (const auto& r : responses) n += r.events_size();
    return n;
  };
  ASSERT_TRUE(watcher.RunUntil([&] {
    return std::all_of(watches.begin(), watches.end(), [&](auto id) { return events(decode(id)) >= kPuts; });
  })) << "events on the first stream: " << events(decode(watches[0]));
  for (int i = 0; i < kStreams; ++i) {
    const auto responses = decode(watches[static_cast<std::size_t>(i)]);
    ASSERT_FALSE(responses.empty());
    EXPECT_TRUE(responses[0].created());
    std::set<std::string> keys;
    std::int64_t last = 0;
    for (std::size_t r = 0; r < responses.size(); ++r) {
      EXPECT_EQ(responses[r].watch_id(), i + 7) << "stream " << i << " response " << r;
      EXPECT_TRUE(r == 0 || !responses[r].created());
      for (const auto& ev : responses[r].events()) {
        EXPECT_GT(ev.kv().mod_revision(), last) << "stream " << i;
        last = ev.kv().mod_revision();
        keys.insert(ev.kv().key());
      }
    }
    EXPECT_EQ(keys.size(), static_cast<std::size_t>(kPuts)) << "stream " << i;
    EXPECT_EQ(events(responses), kPuts) << "stream " << i << ": an event twice";
  }
}

TEST_F(H2PlaneTest, ProtocolRefusalsAreCleanGrpcStatuses) {
  RawH2Client client(port());
  const auto unknown = client.Submit("/etcdserverpb.KV/Nope", {Framed("")});
  const auto gzip = client.Submit(kRange, {Framed(RangeBytes("k"))}, true, {{"grpc-encoding", "gzip"}});
  const auto compressed = client.Submit(kRange, {std::string("\1\0\0\0\0", 5)});
  const auto huge = client.Submit(kPut, {std::string("\0\x7f\0\0\0", 5)});  // announces 2 GiB
  const auto empty = client.Submit(kRange, {});
  ASSERT_TRUE(client.RunUntil([&] {
    for (auto id : {unknown, gzip, compressed, huge, empty}) {
      if (!client.stream(id).closed) return false;
    }
    return true;
  }));
  EXPECT_EQ(client.stream(unknown).grpc_status(), "12");
  EXPECT_EQ(client.stream(gzip).grpc_status(), "12");
  EXPECT_EQ(client.stream(gzip).headers["grpc-message"],
            "grpc: Decompressor is not installed for grpc-encoding \"gzip\"");
  EXPECT_EQ(client.stream(compressed).grpc_status(), "12");
  EXPECT_EQ(client.stream(huge).grpc_status(), "8");
  EXPECT_EQ(client.stream(empty).grpc_status(), "13");
  // The connection survived all of it.
  const auto ok = client.Submit(kRange, {Framed(RangeBytes("k"))});
  ASSERT_TRUE(client.RunUntil([&] { return client.stream(ok).closed; }));
  EXPECT_EQ(client.stream(ok).grpc_status(), "0");
}

// The plane skips nghttp2's per-header HTTP checks and validates what it forwards to a shard
// itself: a malformed forwarded header resets that stream (nothing reaches etcd), while headers
// the proxy reads or drops never cost a check, and the connection goes on.
TEST_F(H2PlaneTest, MalformedForwardedHeadersResetTheStream) {
  RawH2Client client(port());
  const auto bad_value = client.Submit(kRange, {Framed(RangeBytes("k"))}, true, {{"token", "a\nb"}});
  const auto bad_name = client.Submit(kRange, {Framed(RangeBytes("k"))}, true, {{"To ken", "x"}});
  const auto dropped = client.Submit(kRange, {Framed(RangeBytes("k"))}, true, {{"user-agent", "raw\x01client"}});
  ASSERT_TRUE(client.RunUntil([&] {
    return client.stream(bad_value).closed && client.stream(bad_name).closed && client.stream(dropped).closed;
  }));
  for (const auto id : {bad_value, bad_name}) {
    EXPECT_NE(client.stream(id).close_error, 0u) << id;
    EXPECT_EQ(client.stream(id).grpc_status(), "") << id;
  }
  EXPECT_EQ(client.stream(dropped).grpc_status(), "0");
  const auto ok = client.Submit(kRange, {Framed(RangeBytes("k"))}, true, {{"hasleader", "true"}});
  ASSERT_TRUE(client.RunUntil([&] { return client.stream(ok).closed; }));
  EXPECT_EQ(client.stream(ok).grpc_status(), "0");
}

TEST_F(H2PlaneTest, AThousandConcurrentStreamsOnOneConnection) {
  RawH2Client client(port());
  std::vector<std::int32_t> ids;
  for (int i = 0; i < 1000; ++i) {
    const std::string key = std::string(1, "aks"[i % 3]) + "/many/" + std::to_string(i);
    ids.push_back(client.Submit(kPut, {Framed(PutBytes(key, std::to_string(i)))}));
  }
  ASSERT_TRUE(client.RunUntil(
      [&] { return std::all_of(ids.begin(), ids.end(), [&](auto id) { return client.stream(id).closed; }); },
      std::chrono::seconds(30)));
  for (const auto id : ids) ASSERT_EQ(client.stream(id).grpc_status(), "0") << id;
  auto kv = etcdserverpb::KV::NewStub(Connect(setup_->proxy().address()));
  RangeRequest count;
  count.set_key("s/many/");
  count.set_range_end("s/many0");
  count.set_count_only(true);
  RangeResponse resp;
  ASSERT_TRUE(kv->Range(Ctx().get(), count, &resp).ok());
  EXPECT_EQ(resp.count(), 333);
}

TEST_F(H2PlaneTest, ResetStreamsReachTheServiceAsCancellation) {
  RawH2Client client(port());
  const double before = OpenStreams(kWatch);
  WatchRequest create;
  create.mutable_create_request()->set_key("h2/reset");
  std::vector<std::int32_t> ids;
  for (int i = 0; i < 50; ++i) ids.push_back(client.Submit(kWatch, {Framed(create.SerializeAsString())}, false));
  // Each watch answers "created": the service holds 50 open streams.
  ASSERT_TRUE(client.RunUntil([&] {
    return std::all_of(ids.begin(), ids.end(), [&](auto id) { return !client.stream(id).data.empty(); });
  }));
  EXPECT_TRUE(WaitFor([&] { return OpenStreams(kWatch) == before + 50; }, std::chrono::seconds(5)));
  for (const auto id : ids) client.Reset(id);
  client.Send();
  EXPECT_TRUE(WaitFor([&] { return OpenStreams(kWatch) == before; }, std::chrono::seconds(5)))
      << "open watch streams: " << OpenStreams(kWatch);
  const auto ok = client.Submit(kRange, {Framed(RangeBytes("k"))});
  ASSERT_TRUE(client.RunUntil([&] { return client.stream(ok).closed; }));
  EXPECT_EQ(client.stream(ok).grpc_status(), "0");
}

TEST_F(H2PlaneTest, PeerThatNeverReadsIsCutOffAndOthersAreUnaffected) {
  const pid_t proxy_pid = setup_->proxy().process().pid();
  RawH2Client stalled(port(), /*receive_buffer=*/4096);
  WatchRequest create;
  create.mutable_create_request()->set_key("h2/stall/");
  create.mutable_create_request()->set_range_end("h2/stall0");
  const auto watch = stalled.Submit(kWatch, {Framed(create.SerializeAsString())}, false);
  ASSERT_TRUE(stalled.RunUntil([&] { return !stalled.stream(watch).data.empty(); }));
  // From here on the stalled client reads nothing: its windows and socket buffer fill up.
  const long rss_before = RssKiB(proxy_pid);
  auto kv = etcdserverpb::KV::NewStub(Connect(setup_->proxy().address()));
  const std::string value(1024 * 1024, 'm');
  for (int i = 0; i < 40; ++i) {
    PutRequest put;
    put.set_key("h2/stall/" + std::to_string(i));
    put.set_value(value);
    etcdserverpb::PutResponse resp;
    ASSERT_TRUE(kv->Put(Ctx(std::chrono::seconds(5)).get(), put, &resp).ok()) << "put " << i;
  }
  const long rss_after = RssKiB(proxy_pid);
  // 40 MiB of events were due to the stalled watcher; the proxy kept at most its 4 MiB cap of
  // them (plus allocator slack), not all.
  EXPECT_LT(rss_after - rss_before, 24 * 1024) << "RSS grew from " << rss_before << " to " << rss_after << " KiB";
  // When it finally reads, the stalled client finds its watch reset, the connection alive.
  ASSERT_TRUE(stalled.RunUntil([&] { return stalled.stream(watch).closed; }, std::chrono::seconds(20)));
  EXPECT_EQ(stalled.stream(watch).close_error, NGHTTP2_CANCEL);
  EXPECT_LT(stalled.stream(watch).data.size(), 8u << 20);
  const auto ok = stalled.Submit(kRange, {Framed(RangeBytes("k"))});
  ASSERT_TRUE(stalled.RunUntil([&] { return stalled.stream(ok).closed; }));
  EXPECT_EQ(stalled.stream(ok).grpc_status(), "0");
}

// Whatever a peer sends, the proxy closes that connection (after a GOAWAY where it can) and
// goes on serving everyone else.
TEST_F(H2PlaneTest, GarbageClosesOnlyThatConnection) {
  std::mt19937 rng(11);
  std::string junk(4096, '\0');
  for (auto& c : junk) c = static_cast<char>(rng());
  const std::vector<std::string> inputs = {
      // HTTP/1.1 is served since issue #18 (etcd's 404 here); asked to close, it closes.
      "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
      std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + junk,  // a valid preface, then noise
      junk};
  for (const auto& input : inputs) {
    const int fd = ConnectLoopback(port());
    ASSERT_EQ(send(fd, input.data(), input.size(), MSG_NOSIGNAL), static_cast<ssize_t>(input.size()));
    // The proxy ends the connection: recv reaches end of file (or a reset) within the bound.
    bool ended = false;
    for (int i = 0; i < 100 && !ended; ++i) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[4096];
      ended = recv(fd, buf, sizeof buf, 0) <= 0;
    }
    close(fd);
    EXPECT_TRUE(ended) << "connection still open after " << input.substr(0, 20);
  }
  RawH2Client client(port());
  const auto ok = client.Submit(kRange, {Framed(RangeBytes("k"))});
  ASSERT_TRUE(client.RunUntil([&] { return client.stream(ok).closed; }));
  EXPECT_EQ(client.stream(ok).grpc_status(), "0");
}

// The per-call queue cap (4 MiB in this suite) stops a reader that lags, not a large answer.
TEST_F(H2PlaneTest, OneAnswerLargerThanTheQueueCapGoesThrough) {
  auto kv = etcdserverpb::KV::NewStub(Connect(setup_->proxy().address()));
  const std::string value(1024 * 1024, 'c');
  for (int i = 0; i < 6; ++i) {
    PutRequest put;
    put.set_key("j/cap/" + std::to_string(i));
    put.set_value(value);
    etcdserverpb::PutResponse resp;
    ASSERT_TRUE(kv->Put(Ctx().get(), put, &resp).ok()) << i;
  }
  RangeRequest range;
  range.set_key("j/cap/");
  range.set_range_end("j/cap0");
  RangeResponse resp;
  const grpc::Status status = kv->Range(Ctx().get(), range, &resp);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(resp.kvs_size(), 6);
  EXPECT_GT(resp.ByteSizeLong(), 6u << 20);
}

// On a proxy of its own over the suite's first shard: the signal stops it, and the suite's proxy
// must go on serving whatever test runs next (--gtest_shuffle, --gtest_repeat).
TEST_F(H2PlaneTest, SigtermSendsGoawayAndLetsTheCallInFlightFinish) {
  ProxyProcess stopped({{"", "", setup_->shard(0).ClientAddresses()}}, {"--data-plane=h2"});
  stopped.Start();
  RawH2Client client(PortOf(stopped.address()));
  const auto first = client.Submit(kRange, {Framed(RangeBytes("k"))});
  ASSERT_TRUE(client.RunUntil([&] { return client.stream(first).closed; }));
  // A call the proxy has begun (headers and half its message) when the signal arrives.
  const std::string wire = Framed(PutBytes("h2/goaway", "v"));
  auto& proxy = stopped.process();
  const auto in_flight = client.Submit(kPut, {wire.substr(0, 4)}, false);
  // Frames of one connection are handled in order: once this later call is answered, the proxy
  // has seen the put's headers too.
  const auto marker = client.Submit(kRange, {Framed(RangeBytes("k"))});
  ASSERT_TRUE(client.RunUntil([&] { return client.stream(marker).closed; }));
  proxy.Signal(SIGTERM);
  ASSERT_TRUE(client.RunUntil([&] { return client.goaway(); }, std::chrono::seconds(5)));
  // The rest of the message still goes through and the call completes.
  client.Continue(in_flight, wire.substr(4), true);
  ASSERT_TRUE(client.RunUntil([&] { return client.stream(in_flight).closed; }, std::chrono::seconds(5)));
  EXPECT_EQ(client.stream(in_flight).grpc_status(), "0");
  EXPECT_TRUE(WaitFor([&] { return !proxy.running(); }, std::chrono::seconds(5)));
}

// TLS on the h2 plane with answers spanning many TLS records (and many DATA frames), from a
// gRPC C++ client and from etcdctl (grpc-go); server-side TLS only (mutual TLS: tls_test).
TEST(H2PlaneTlsTest, LargeMessagesOverTls) {
  TestCertificates certs;
  EtcdCluster shard(1, "h2tls");
  shard.Start();
  ProxyProcess proxy({{"", "", shard.ClientAddresses()}},
                     {"--data-plane=h2", "--cert-file", certs.cert(), "--key-file", certs.key()});
  proxy.StartWithoutProbe();
  auto kv = etcdserverpb::KV::NewStub(Connect(proxy.address(), EtcdTls{certs.ca(), certs.cert(), certs.key()}));
  std::string value(1024 * 1024 + 7, 't');
  for (std::size_t i = 0; i < value.size(); i += 4096) value[i] = static_cast<char>('a' + i / 4096 % 26);
  PutRequest put;
  put.set_key("tls/big");
  put.set_value(value);
  etcdserverpb::PutResponse put_resp;
  const grpc::Status put_status = kv->Put(Ctx().get(), put, &put_resp);
  ASSERT_TRUE(put_status.ok()) << put_status.error_message();
  RangeRequest range;
  range.set_key("tls/big");
  RangeResponse resp;
  const grpc::Status get_status = kv->Range(Ctx().get(), range, &resp);
  ASSERT_TRUE(get_status.ok()) << get_status.error_message();
  ASSERT_EQ(resp.kvs_size(), 1);
  EXPECT_TRUE(resp.kvs(0).value() == value);
  const auto etcdctl = Etcdctl(proxy.address(), "--cacert " + certs.ca() + " get tls/big --print-value-only");
  EXPECT_EQ(etcdctl.exit_code, 0) << etcdctl.output;
  EXPECT_EQ(etcdctl.output, value + "\n");
  const auto plaintext = Etcdctl(proxy.address(), "--command-timeout 2s get tls/big");
  EXPECT_NE(plaintext.exit_code, 0) << "a cleartext client must not get through a TLS port";
}

}  // namespace
}  // namespace esp::test
