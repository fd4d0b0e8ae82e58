// etcd's HTTP face on the proxy's client port (issue #18 part A), against real etcd: the JSON
// gateway over three shards, compared answer by answer with one plain etcd (the differential
// part), HTTP/1.1 keep-alive and pipelining on raw sockets, watch streams (and a reader that stops
// reading), limits, /health /version /metrics, HTTP/2 without gRPC and TLS through curl.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/fixtures.h"

namespace esp::test {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

std::string B64(std::string_view s) {
  static const char* kChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  unsigned bits = 0;
  int count = 0;
  for (const unsigned char c : s) {
    bits = (bits << 8) | c;
    count += 8;
    while (count >= 6) {
      count -= 6;
      out.push_back(kChars[(bits >> count) & 63]);
    }
  }
  if (count > 0) out.push_back(kChars[(bits << (6 - count)) & 63]);
  while (out.size() % 4 != 0) out.push_back('=');
  return out;
}

struct Response {
  int status = 0;
  std::string headers;  // raw header block
  std::string body;
};

// A blocking HTTP/1.1 client on one socket: enough to drive keep-alive, pipelining and streams.
class RawHttp {
 public:
  explicit RawHttp(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawHttp() {
    if (fd_ >= 0) close(fd_);
  }
  bool connected() const { return connected_; }
  void SetReceiveBuffer(int bytes) { setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes); }
  bool Send(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }
  // Reads until `n` more bytes are buffered (or EOF / timeout).
  bool Fill(std::size_t n, std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (buffer_.size() < n) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
      char chunk[65536];
      const ssize_t got = recv(fd_, chunk, sizeof chunk, 0);
      if (got <= 0) {
        eof_ = true;
        return false;
      }
      buffer_.append(chunk, static_cast<std::size_t>(got));
    }
    return true;
  }
  std::optional<std::string> Line(std::chrono::milliseconds timeout = 10s) {
    for (;;) {
      const auto end = buffer_.find("\r\n");
      if (end != std::string::npos) {
        std::string line = buffer_.substr(0, end);
        buffer_.erase(0, end + 2);
        return line;
      }
      if (!Fill(buffer_.size() + 1, timeout)) return std::nullopt;
    }
  }
  // Reads one response head; the body follows (ReadBody / NextChunk).
  std::optional<Response> Head(std::chrono::milliseconds timeout = 10s) {
    const auto status = Line(timeout);
    if (!status || status->size() < 12) return std::nullopt;
    Response r;
    r.status = std::stoi(status->substr(9, 3));
    for (;;) {
      const auto line = Line(timeout);
      if (!line) return std::nullopt;
      if (line->empty()) break;
      r.headers += *line + "\n";
    }
    return r;
  }
  std::optional<Response> Read(std::chrono::milliseconds timeout = 10s) {
    auto r = Head(timeout);
    if (!r) return std::nullopt;
    const auto cl = Lower(r->headers).find("content-length: ");
    if (cl != std::string::npos) {
      const std::size_t length = std::stoul(r->headers.substr(cl + 16));
      if (!Fill(length, timeout)) return std::nullopt;
      r->body = buffer_.substr(0, length);
      buffer_.erase(0, length);
      return r;
    }
    while (auto chunk = NextChunk(timeout)) r->body += *chunk;
    return r;
  }
  // One chunk of a chunked body; nullopt at its end (or on timeout).
  std::optional<std::string> NextChunk(std::chrono::milliseconds timeout = 10s) {
    const auto size_line = Line(timeout);
    if (!size_line) return std::nullopt;
    const std::size_t size = std::stoul(*size_line, nullptr, 16);
    if (!Fill(size + 2, timeout)) return std::nullopt;
    std::string chunk = buffer_.substr(0, size);
    buffer_.erase(0, size + 2);
    if (size == 0) return std::nullopt;
    return chunk;
  }
  bool eof() const { return eof_; }
  // True once the server closed the connection (reads everything until then).
  bool ClosedWithin(std::chrono::milliseconds timeout) {
    while (Fill(buffer_.size() + 1, timeout)) {
    }
    return eof_;
  }

  static std::string Lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool eof_ = false;
  std::string buffer_;
};

std::string Post(std::string_view path, std::string_view body, std::string_view extra_headers = "") {
  return "POST " + std::string(path) + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
         std::string(extra_headers) + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
}

Response Call(int port, std::string_view method, std::string_view path, std::string_view body = "") {
  RawHttp http(port);
  EXPECT_TRUE(http.connected());
  http.Send(std::string(method) + " " + std::string(path) + " HTTP/1.1\r\nHost: x\r\nContent-Length: " +
            std::to_string(body.size()) + "\r\n\r\n" + std::string(body));
  auto r = http.Read();
  EXPECT_TRUE(r.has_value()) << method << " " << path;
  return r.value_or(Response{});
}

json CallJson(int port, std::string_view path, const json& body, int* status = nullptr) {
  const Response r = Call(port, "POST", path, body.dump());
  if (status != nullptr) *status = r.status;
  return json::parse(r.body, nullptr, false);
}

// What may differ between one etcd and the proxy over three: ids, revisions, terms.
void Normalize(json& j) {
  static const std::set<std::string> kVolatile = {"cluster_id", "member_id", "revision", "raft_term", "create_revision",
                                                  "mod_revision", "ID", "compact_revision"};
  if (j.is_object()) {
    for (auto& [key, value] : j.items()) {
      if (kVolatile.count(key) != 0 && !value.is_object()) {
        value = "*";
      } else {
        Normalize(value);
      }
    }
    // etcd 3.5's gateway writes errors as {"code","message"}, 3.4's and the proxy's add "error".
    if (j.contains("code") && j.contains("message")) j.erase("error");
  } else if (j.is_array()) {
    for (auto& v : j) Normalize(v);
  }
}

// The HTTP status etcd 3.4's grpc-gateway gives, which the proxy answers with whatever the shards
// run (docs/semantics.md): etcd 3.5's grpc-gateway maps FailedPrecondition to 400 (3.4: 412)
// and Canceled to 499 (3.4: 408). Other codes map alike.
int As34Status(int status, const json& body) {
  if (!EtcdServerAtLeast(3, 5) || !body.is_object() || !body.contains("code") || !body["code"].is_number()) {
    return status;
  }
  const int code = body["code"];
  if (code == 9 && status == 400) return 412;
  if (code == 1 && status == 499) return 408;
  return status;
}

class GatewayTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::vector<std::pair<std::string, std::string>> bounds = {{"", "gw/i"}, {"gw/i", "gw/s"}, {"gw/s", ""}};
    std::vector<ShardSpec> specs;
    for (std::size_t i = 0; i < bounds.size(); ++i) {
      shards_.push_back(std::make_unique<EtcdCluster>(1, "gw" + std::to_string(i)));
      shards_.back()->Start();
      specs.push_back({bounds[i].first, bounds[i].second, shards_.back()->ClientAddresses()});
    }
    proxy_ = std::make_unique<ProxyProcess>(specs, std::vector<std::string>{"--watch-buffer-bytes", "262144"});
    proxy_->Start();
    plain_ = std::make_unique<EtcdCluster>(1, "gwplain");
    plain_->Start();
  }
  static void TearDownTestSuite() {
    proxy_.reset();
    shards_.clear();
    plain_.reset();
  }
  static int port() { return proxy_->port(); }
  static int plain_port() { return plain_->member(0).client_port; }

  static std::vector<std::unique_ptr<EtcdCluster>> shards_;
  static std::unique_ptr<ProxyProcess> proxy_;
  static std::unique_ptr<EtcdCluster> plain_;
};
std::vector<std::unique_ptr<EtcdCluster>> GatewayTest::shards_;
std::unique_ptr<ProxyProcess> GatewayTest::proxy_;
std::unique_ptr<EtcdCluster> GatewayTest::plain_;

TEST_F(GatewayTest, PutRangeDeleteAcrossShards) {
  for (const char* key : {"gw/a", "gw/m", "gw/z"}) {
    int status = 0;
    const json put = CallJson(port(), "/v3/kv/put", {{"key", B64(key)}, {"value", B64(std::string("v-") + key)}}, &status);
    ASSERT_EQ(status, 200) << put.dump();
    EXPECT_TRUE(put["header"].contains("revision"));
  }
  const json range = CallJson(port(), "/v3/kv/range", {{"key", B64("gw/")}, {"range_end", B64("gw0")}});
  ASSERT_EQ(range["kvs"].size(), 3u) << range.dump();
  EXPECT_EQ(range["kvs"][0]["key"], B64("gw/a"));
  EXPECT_EQ(range["kvs"][2]["value"], B64("v-gw/z"));
  EXPECT_EQ(range["count"], "3");  // int64 as a string, as etcd's gateway writes it
  const json limited = CallJson(port(), "/v3/kv/range", {{"key", B64("gw/")}, {"range_end", B64("gw0")}, {"limit", 2}});
  EXPECT_EQ(limited["kvs"].size(), 2u);
  EXPECT_EQ(limited["more"], true);
  const json deleted = CallJson(port(), "/v3/kv/deleterange", {{"key", B64("gw/")}, {"range_end", B64("gw0")}});
  EXPECT_EQ(deleted["deleted"], "3") << deleted.dump();
  const json empty = CallJson(port(), "/v3/kv/range", {{"key", B64("gw/a")}});
  EXPECT_FALSE(empty.contains("kvs"));  // zero values left out (EmitDefaults off)
  EXPECT_FALSE(empty.contains("count"));
}

// The same requests against one plain etcd and the proxy: the same answers, field by field,
// modulo ids and revisions.
TEST_F(GatewayTest, SameAnswersAsPlainEtcd) {
  struct Step {
    std::string path;
    std::string body;
  };
  const std::vector<Step> steps = {
      {"/v3/kv/put", json({{"key", B64("gw/d1")}, {"value", B64("x")}}).dump()},
      {"/v3/kv/put", json({{"key", B64("gw/d1")}, {"value", B64("y")}, {"prev_kv", true}}).dump()},
      {"/v3/kv/range", json({{"key", B64("gw/d1")}}).dump()},
      {"/v3/kv/range", json({{"key", B64("gw/nothing")}}).dump()},
      {"/v3/kv/range", json({{"key", B64("gw/d1")}, {"keys_only", true}, {"bogus_field", 1}}).dump()},
      {"/v3/kv/txn", json({{"compare", {{{"key", B64("gw/d1")}, {"result", "EQUAL"}, {"target", "VALUE"}, {"value", B64("y")}}}},
                            {"success", {{{"request_range", {{"key", B64("gw/d1")}}}}}},
                            {"failure", {{{"request_put", {{"key", B64("gw/d1")}, {"value", B64("z")}}}}}}}).dump()},
      {"/v3/kv/txn", json({{"compare", {{{"key", B64("gw/d1")}, {"result", "EQUAL"}, {"target", "VALUE"}, {"value", B64("no")}}}},
                            {"failure", {{{"request_delete_range", {{"key", B64("gw/d1")}, {"prev_kv", true}}}}}}}).dump()},
      {"/v3/kv/range", "{}"},                                                       // key not provided
      {"/v3/kv/range", json({{"key", B64("gw/d1")}, {"revision", 100000}}).dump()},  // future revision
      {"/v3/kv/put", json({{"key", B64("gw/d2")}, {"value", B64("v")}, {"lease", "12345"}}).dump()},
      {"/v3/lease/revoke", json({{"ID", "12345"}}).dump()},
      {"/v3/kv/lease/timetolive", json({{"ID", "12345"}}).dump()},
      {"/v3/lease/grant", json({{"TTL", 30}}).dump()},
      {"/v3/auth/role/get", json({{"role", "nope"}}).dump()},
      {"/v3/auth/user/list", "{}"},
      {"/v3/maintenance/hash", "{}"},
  };
  for (const Step& step : steps) {
    const Response a = Call(plain_port(), "POST", step.path, step.body);
    const Response b = Call(port(), "POST", step.path, step.body);
    json ja = json::parse(a.body, nullptr, false);
    json jb = json::parse(b.body, nullptr, false);
    EXPECT_EQ(As34Status(a.status, ja), b.status)
        << step.path << " " << step.body << "\netcd: " << a.body << "\nproxy: " << b.body;
    ASSERT_FALSE(jb.is_discarded()) << b.body;
    Normalize(ja);
    Normalize(jb);
    if (step.path == "/v3/maintenance/hash") {
      // One hash per store: the keys match, the values cannot.
      EXPECT_EQ(ja.contains("hash"), jb.contains("hash"));
      continue;
    }
    EXPECT_EQ(ja, jb) << step.path << " " << step.body << "\netcd: " << a.body << "\nproxy: " << b.body;
  }
  // etcd 3.4's error body, byte for byte.
  const Response missing = Call(port(), "POST", "/v3/kv/range", "{}");
  EXPECT_EQ(missing.body,
            R"({"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3})");
  EXPECT_NE(RawHttp::Lower(missing.headers).find("content-type: application/json"), std::string::npos);
}

TEST_F(GatewayTest, ErrorsAndUnknownPathsAsEtcd) {
  const Response bad = Call(port(), "POST", "/v3/kv/range", R"({"key":)");
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(json::parse(bad.body)["code"], 3);
  const Response unknown = Call(port(), "GET", "/nope");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(unknown.body, "404 page not found\n");
  const Response etcd_unknown = Call(plain_port(), "GET", "/nope");
  EXPECT_EQ(etcd_unknown.status, unknown.status);
  EXPECT_EQ(etcd_unknown.body, unknown.body);
  const Response v3_unknown = Call(port(), "POST", "/v3/kv/nothing", "{}");
  EXPECT_EQ(v3_unknown.status, 404);
  EXPECT_EQ(v3_unknown.body, "Not Found\n");
  const Response get = Call(port(), "GET", "/v3/kv/range");
  EXPECT_EQ(get.status, 405);
  // A content type other than JSON is read as JSON, as etcd's gateway does.
  RawHttp http(port());
  const std::string body = json({{"key", B64("gw/ct")}, {"value", B64("1")}}).dump();
  http.Send("POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: " +
            std::to_string(body.size()) + "\r\n\r\n" + body);
  const auto put = http.Read();
  ASSERT_TRUE(put);
  EXPECT_EQ(put->status, 200) << put->body;
  // The snapshot stream is refused as over gRPC, with an HTTP status from its code.
  const Response snapshot = Call(port(), "POST", "/v3/maintenance/snapshot", "{}");
  EXPECT_GE(snapshot.status, 400) << snapshot.body;
  EXPECT_TRUE(json::parse(snapshot.body, nullptr, false).contains("code")) << snapshot.body;
}

TEST_F(GatewayTest, OversizedBodies) {
  // Past the HTTP bound: refused from the Content-Length alone, before the body is read.
  RawHttp http(port());
  http.Send("POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n");
  const auto refused = http.Read();
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 413);
  EXPECT_TRUE(http.ClosedWithin(5s));
  // A message over the gRPC receive limit (2 MiB): etcd's gateway answer, 429 and code 8.
  const std::string big = json({{"key", B64("gw/big")}, {"value", B64(std::string(2200 * 1024, 'x'))}}).dump();
  const Response over = Call(port(), "POST", "/v3/kv/put", big);
  EXPECT_EQ(over.status, 429);
  EXPECT_NE(over.body.find("grpc: received message larger than max"), std::string::npos) << over.body;
  const Response etcd_over = Call(plain_port(), "POST", "/v3/kv/put", big);
  EXPECT_EQ(etcd_over.status, 429);
  // Over --max-request-bytes but under the message limit: the shard's own refusal, as etcd's.
  const std::string large = json({{"key", B64("gw/big")}, {"value", B64(std::string(1600 * 1024, 'x'))}}).dump();
  const Response too_large = Call(port(), "POST", "/v3/kv/put", large);
  EXPECT_EQ(too_large.status, 400);
  EXPECT_NE(too_large.body.find("etcdserver: request is too large"), std::string::npos) << too_large.body;
  // Headers past the h2 path's bound (64 KiB): 431, then the connection closes.
  RawHttp headers(port());
  headers.Send("GET /health HTTP/1.1\r\nX-Big: " + std::string(70 * 1024, 'a') + "\r\n\r\n");
  const auto h = headers.Read();
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 431);
}

TEST_F(GatewayTest, KeepAliveAndPipelining) {
  RawHttp http(port());
  std::string burst;
  burst += Post("/v3/kv/put", json({{"key", B64("gw/p")}, {"value", B64("1")}}).dump());
  burst += Post("/v3/kv/put", json({{"key", B64("gw/p")}, {"value", B64("2")}}).dump());
  burst += Post("/v3/kv/range", json({{"key", B64("gw/p")}}).dump());
  burst += "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_TRUE(http.Send(burst));  // one write, four requests
  const auto first = http.Read();
  const auto second = http.Read();
  const auto range = http.Read();
  const auto missing = http.Read();
  ASSERT_TRUE(first && second && range && missing);
  EXPECT_EQ(first->status, 200);
  EXPECT_EQ(second->status, 200);
  // In order: the range sees the second put.
  EXPECT_EQ(json::parse(range->body)["kvs"][0]["value"], B64("2")) << range->body;
  EXPECT_EQ(json::parse(range->body)["kvs"][0]["version"], "2");
  EXPECT_EQ(missing->status, 404);
  // An answer to HEAD is its head only (as Go's net/http): the next answer follows at once.
  ASSERT_TRUE(http.Send("HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\n\r\n"));
  const auto head = http.Head();
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 404);
  const auto livez = http.Read();
  ASSERT_TRUE(livez);
  EXPECT_EQ(livez->status, 200);
  EXPECT_EQ(livez->body, "ok\n");
  // The same connection goes on; `Connection: close` ends it after the answer.
  ASSERT_TRUE(http.Send("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  const auto health = http.Read();
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_TRUE(http.ClosedWithin(5s));
}

TEST_F(GatewayTest, HealthVersionMetricsOnTheClientPort) {
  // The health probe runs every second: the first answers may predate it.
  EXPECT_TRUE(WaitFor([] { return Call(port(), "GET", "/health").status == 200; }, 10s));
  const Response health = Call(port(), "GET", "/health");
  EXPECT_EQ(health.body, R"({"health":"true","reason":""})");
  const Response version = Call(port(), "GET", "/version");
  EXPECT_EQ(version.status, 200);
  const json v = json::parse(version.body);
  EXPECT_EQ(v["etcdserver"], EtcdServerVersion());
  const json etcd_version = json::parse(Call(plain_port(), "GET", "/version").body);
  EXPECT_EQ(v["etcdcluster"], etcd_version["etcdcluster"]);
  const Response metrics = Call(port(), "GET", "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("etcd_proxy_client_watches"), std::string::npos);
  EXPECT_EQ(Call(port(), "GET", "/livez").status, 200);
  EXPECT_EQ(Call(port(), "GET", "/readyz").status, 200);
}

// A shard endpoint that takes connections (the kernel's backlog) and never answers: the health
// probe waits for it until its deadline, so the proxy's first probe takes a second.
class SilentListener {
 public:
  SilentListener() : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    socklen_t length = sizeof addr;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd_, 64) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
      throw std::runtime_error("silent listener");
    }
    port_ = ntohs(addr.sin_port);
  }
  ~SilentListener() { close(fd_); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_;
  int port_ = 0;
};

// The first /version after start, asked while the first probe is still waiting on a shard that
// does not answer: it waits for that probe (bounded by its deadline) and answers the versions
// of the shards that are up, as etcd would, not "not_decided".
TEST_F(GatewayTest, FirstVersionWaitsForTheShardsVersions) {
  SilentListener silent;
  ProxyProcess fresh({{"", "gw/i", shards_[0]->ClientAddresses()}, {"gw/i", "", {silent.address()}}});
  fresh.StartWithoutProbe();
  const auto asked = std::chrono::steady_clock::now();
  const Response version = Call(fresh.port(), "GET", "/version");
  const auto waited = std::chrono::steady_clock::now() - asked;
  EXPECT_EQ(version.status, 200);
  const json v = json::parse(version.body, nullptr, false);
  ASSERT_FALSE(v.is_discarded()) << version.body;
  EXPECT_EQ(v["etcdserver"], EtcdServerVersion()) << version.body;
  const json etcd_version = json::parse(Call(plain_port(), "GET", "/version").body);
  EXPECT_EQ(v["etcdcluster"], etcd_version["etcdcluster"]) << version.body;
  EXPECT_LT(waited, 5s);
  // Later answers come at once, from the probe's snapshot.
  EXPECT_EQ(json::parse(Call(fresh.port(), "GET", "/version").body)["etcdserver"], EtcdServerVersion());
}

// The operator port's /version (libmicrohttpd's thread) waits for the first probe the same way.
TEST_F(GatewayTest, FirstVersionOnTheOperatorPortWaitsToo) {
  SilentListener silent;
  const int operator_port = FreePort();
  ProxyProcess fresh({{"", "gw/i", shards_[0]->ClientAddresses()}, {"gw/i", "", {silent.address()}}},
                     {"--listen-metrics-addr", "127.0.0.1:" + std::to_string(operator_port)});
  fresh.StartWithoutProbe();
  // The operator listener starts after the client port: ask as soon as it takes connections.
  std::optional<Response> version;
  ASSERT_TRUE(WaitFor(
      [&] {
        RawHttp http(operator_port);
        if (!http.connected() || !http.Send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n")) return false;
        version = http.Read();
        return version.has_value();
      },
      10s));
  EXPECT_EQ(version->status, 200);
  const json v = json::parse(version->body, nullptr, false);
  EXPECT_EQ(v["etcdserver"], EtcdServerVersion()) << version->body;
}

double Gauge(int port, const std::string& name) {
  const Response metrics = Call(port, "GET", "/metrics");
  const auto at = metrics.body.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(metrics.body.substr(at + name.size() + 2));
}

TEST_F(GatewayTest, WatchStreamsAcrossShardsAndEndsWithTheClient) {
  auto watch = std::make_unique<RawHttp>(port());
  ASSERT_TRUE(watch->Send(Post("/v3/watch", json({{"create_request", {{"key", B64("gw/w")}, {"range_end", B64("gw/x")}}}}).dump())));
  const auto head = watch->Head();
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_NE(RawHttp::Lower(head->headers).find("transfer-encoding: chunked"), std::string::npos);
  const auto created = watch->NextChunk();
  ASSERT_TRUE(created);
  EXPECT_EQ(json::parse(*created)["result"]["created"], true) << *created;
  // "gw/wa" is on shard 1, "gw/wz" on ... both below gw/x: the range spans shards 1 only at
  // "gw/i".."gw/s"; "gw/w*" lives on shard 2. Put one key on each side of no boundary, then one
  // more through a second watch spanning all three shards below.
  Call(port(), "POST", "/v3/kv/put", json({{"key", B64("gw/wa")}, {"value", B64("1")}}).dump());
  const auto event = watch->NextChunk();
  ASSERT_TRUE(event);
  const json e = json::parse(*event);
  EXPECT_EQ(e["result"]["events"][0]["kv"]["key"], B64("gw/wa")) << *event;
  EXPECT_EQ(event->back(), '\n');  // one JSON object per line, as etcd writes them

  // The client goes away: its watches are released.
  const double open = Gauge(port(), "etcd_proxy_client_watches");
  EXPECT_GE(open, 1);
  watch.reset();
  EXPECT_TRUE(WaitFor([&] { return Gauge(port(), "etcd_proxy_client_watches") < open; }, 10s))
      << Gauge(port(), "etcd_proxy_client_watches") << " of " << open;
}

// A gateway watch spanning the three shards sees each shard's event, one JSON line each.
TEST_F(GatewayTest, WatchSpanningThreeShards) {
  RawHttp spanning(port());
  ASSERT_TRUE(spanning.Send(Post("/v3/watch", json({{"create_request", {{"key", B64("gw/")}, {"range_end", B64("gw0")}}}}).dump())));
  ASSERT_TRUE(spanning.Head());
  const auto spanning_created = spanning.NextChunk();
  ASSERT_TRUE(spanning_created);
  EXPECT_EQ(json::parse(*spanning_created)["result"]["created"], true) << *spanning_created;
  std::set<std::string> seen;
  for (const char* key : {"gw/b", "gw/n", "gw/y"}) {
    const Response put = Call(port(), "POST", "/v3/kv/put", json({{"key", B64(key)}, {"value", B64("v")}}).dump());
    ASSERT_EQ(put.status, 200) << put.body;
  }
  while (seen.size() < 3) {
    const auto chunk = spanning.NextChunk();
    ASSERT_TRUE(chunk) << "saw " << seen.size() << " eof " << spanning.eof();
    // The parsed line must outlive the loop over its events: a range-for over
    // `json::parse(...)["result"]["events"]` iterates a reference into a temporary that is
    // already destroyed (C++20 extends no temporary through operator[]), which read every event
    // and counted none.
    const json line = json::parse(*chunk, nullptr, false);
    ASSERT_FALSE(line.is_discarded()) << *chunk;
    for (const auto& ev : line["result"]["events"]) seen.insert(ev["kv"]["key"].get<std::string>());
  }
  EXPECT_EQ(seen, (std::set<std::string>{B64("gw/b"), B64("gw/n"), B64("gw/y")}));
}

TEST_F(GatewayTest, SlowWatchReaderIsCutOffNotBuffered) {
  RawHttp watch(port());
  watch.SetReceiveBuffer(4096);
  ASSERT_TRUE(watch.Send(Post("/v3/watch", json({{"create_request", {{"key", B64("gw/slow")}}}}).dump())));
  ASSERT_TRUE(watch.Head());
  ASSERT_TRUE(watch.NextChunk());  // created; from now on the client reads nothing
  const double before = Gauge(port(), "etcd_proxy_client_watches");
  const std::string value = B64(std::string(200 * 1024, 'v'));
  // 8 MiB of events against a 256 KiB --watch-buffer-bytes: the proxy ends this watch rather
  // than holding them.
  for (int i = 0; i < 40; ++i) {
    ASSERT_EQ(Call(port(), "POST", "/v3/kv/put", json({{"key", B64("gw/slow")}, {"value", value}}).dump()).status, 200);
  }
  EXPECT_TRUE(WaitFor([&] { return Gauge(port(), "etcd_proxy_client_watches") < before; }, 20s));
}

TEST_F(GatewayTest, Http2WithoutGrpcAndLeaseKeepAlive) {
  const auto h2 = RunCommand("curl -s --http2-prior-knowledge -w '\\n%{http_code} %{http_version}' -X POST http://" +
                             proxy_->address() + "/v3/lease/grant -d '{\"TTL\":20}'");
  ASSERT_EQ(h2.exit_code, 0) << h2.output;
  EXPECT_NE(h2.output.find("\n200 2"), std::string::npos) << h2.output;
  const json grant = json::parse(h2.output.substr(0, h2.output.find('\n')));
  const std::string id = grant["ID"];
  const Response keepalive = Call(port(), "POST", "/v3/lease/keepalive", json({{"ID", id}}).dump());
  EXPECT_EQ(keepalive.status, 200);
  const json k = json::parse(keepalive.body.substr(0, keepalive.body.find('\n')));
  EXPECT_EQ(k["result"]["ID"], id) << keepalive.body;
  EXPECT_EQ(k["result"]["TTL"], "20");
  const json leases = CallJson(port(), "/v3/lease/leases", json::object());
  bool listed = false;
  for (const auto& l : leases["leases"]) listed = listed || l["ID"] == id;
  EXPECT_TRUE(listed) << leases.dump();
  EXPECT_EQ(Call(port(), "POST", "/v3/lease/revoke", json({{"ID", id}}).dump()).status, 200);
  // gRPC still works on the same port.
  EXPECT_EQ(Etcdctl(proxy_->address(), "put gw/grpc ok").exit_code, 0);
}

TEST(GatewayTlsTest, BothProtocolsOverTls) {
  TestCertificates certs;
  EtcdCluster shard(1, "gwtls");
  shard.Start();
  ProxyProcess proxy({{"", "", shard.ClientAddresses()}},
                     {"--cert-file", certs.cert(), "--key-file", certs.key()});
  proxy.StartWithoutProbe();
  const std::string url = "https://127.0.0.1:" + std::to_string(proxy.port()) + "/v3/kv/range";
  for (const char* version : {"--http1.1", "--http2"}) {
    const auto run = RunCommand("curl -s --cacert " + certs.ca() + " " + version +
                                " -w '\\n%{http_code} %{http_version}' -X POST " + url + " -d '{\"key\":\"Zm9v\"}'");
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("\n200 "), std::string::npos) << version << ": " << run.output;
    EXPECT_NE(run.output.find(std::string("\n200 ") + (std::string(version) == "--http2" ? "2" : "1.1")),
              std::string::npos)
        << run.output;
  }
  const std::string health = "curl -s --cacert " + certs.ca() + " https://127.0.0.1:" + std::to_string(proxy.port()) + "/health";
  EXPECT_TRUE(WaitFor([&] { return RunCommand(health).output == R"({"health":"true","reason":""})"; }, 10s));
}

}  // namespace
}  // namespace esp::test
