// Client-certificate identity (etcd's --client-cert-auth: a request without a token runs as the
// verified client certificate's CN) through the proxy, against two real TLS etcd shards with
// --client-cert-auth and auth on. The proxy mints certificates for the client's CN with an
// identity CA the shards trust (config `client_cert_identity`), so each shard enforces that
// user's permissions on its own part of a range. Certificates are made at test time.
#include <grpcpp/client_context.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <memory>
#include <regex>

#include "auth/cert_identity.h"
#include "support/fixtures.h"
#include "support/watch_client.h"
#include "transport/peer_identity.h"
#include "upstream/h2_shard_transport.h"

namespace esp::test {
namespace {

using namespace std::chrono_literals;

constexpr const char* kDenied = "etcdserver: permission denied";

// Shards ["", "i") and ["i", ""); role "ro" may read [a, k), which spans both.
class CertIdentityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_ = std::make_unique<TestCertificates>();
    dir_ = std::make_unique<TempDir>();
    MakeCertificates();
    // Shards trust the test CA (the proxy's own certificate, the test's direct access) and the
    // identity CA (the proxy's minted certificates).
    const EtcdTls shard_tls{Path("shards-ca.crt"), certs_->cert(), certs_->key()};
    for (int i = 0; i < 2; ++i) {
      shards_[i] = std::make_unique<EtcdCluster>(1, "cid" + std::to_string(i), shard_tls,
                                                 std::vector<std::string>{"--bcrypt-cost", "4"});
      shards_[i]->Start();
    }
    proxy_ = NewProxy({});
    proxy_->StartWithoutProbe();
    ASSERT_TRUE(WaitFor([] { return As("node", "put b 1").output == "OK\n"; }, 20s)) << proxy_->process().Log();
    for (const char* command : {"put j 1", "put z 1", "user add root:rootpw", "user add reader:readerpw",
                                "role add ro", "role grant-permission ro read a k", "user grant-role reader ro",
                                "auth enable"}) {
      const auto result = As("node", command);
      ASSERT_EQ(result.exit_code, 0) << command << ": " << result.output;
    }
  }
  static void TearDownTestSuite() {
    if (::testing::UnitTest::GetInstance()->current_test_suite()->Failed() && proxy_ != nullptr) {
      std::cerr << "proxy log:\n" << proxy_->process().Log() << std::endl;
    }
    proxy_.reset();
    for (auto& shard : shards_) shard.reset();
    dir_.reset();
    certs_.reset();
  }

  static std::string Path(const std::string& name) { return (dir_->path() / name).string(); }

  // The identity CA, and client certificates from the proxy's client CA (the test CA) whose CNs
  // are etcd users ("reader", "root") or not ("node" is the test CA's 127.0.0.1 certificate).
  static void MakeCertificates() {
    const std::string ca_dir = std::filesystem::path(certs_->ca()).parent_path().string();
    std::string script = "set -e; cd " + dir_->path().string() +
                         "; "
                         "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
                         "-subj /CN=identity-ca -keyout id-ca.key -out id-ca.crt; "
                         "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
                         "-subj /CN=untrusted-ca -keyout untrusted-ca.key -out untrusted-ca.crt; "
                         "cat " + certs_->ca() + " id-ca.crt > shards-ca.crt; "
                         "printf 'extendedKeyUsage=clientAuth\\n' > client.cnf; ";
    // "nocn": a certificate without a CN (subject O=nocn).
    for (const char* user : {"reader", "root", "nocn"}) {
      const std::string u = user;
      const std::string subject = u == "nocn" ? "/O=nocn" : "/CN=" + u;
      script += "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj " + subject + " -keyout " + u +
                ".key -out " + u + ".csr; openssl x509 -req -in " + u + ".csr -CA " + certs_->ca() + " -CAkey " +
                ca_dir + "/ca.key -CAcreateserial -CAserial serial.srl -days 2 -extfile client.cnf -out " + u +
                ".crt; ";
    }
    const auto made = RunCommand("sh -c \"" + script + "\"", 60s);
    ASSERT_EQ(made.exit_code, 0) << made.output;
  }

  static std::unique_ptr<ProxyProcess> NewProxy(std::vector<std::string> extra_args) {
    const EtcdTls towards_shards{certs_->ca(), certs_->cert(), certs_->key()};
    std::vector<std::string> args = {"--cert-file", certs_->cert(), "--key-file", certs_->key(),
                                     "--trusted-ca-file", certs_->ca(), "--client-cert-auth"};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    auto proxy = std::make_unique<ProxyProcess>(
        std::vector<ShardSpec>{{"", "i", shards_[0]->ClientAddresses(), towards_shards},
                               {"i", "", shards_[1]->ClientAddresses(), towards_shards}},
        args);
    std::ofstream(proxy->config_path(), std::ios::app)
        << "client_cert_identity: {ca_cert_file: " << Path("id-ca.crt") << ", ca_key_file: " << Path("id-ca.key")
        << "}\n";
    return proxy;
  }

  static EtcdTls Client(const std::string& who) {
    if (who == "node") return {certs_->ca(), certs_->cert(), certs_->key()};
    return {certs_->ca(), Path(who + ".crt"), Path(who + ".key")};
  }

  // etcdctl presenting `who`'s certificate (no --user unless `args` has one).
  static CommandResult As(const std::string& who, const std::string& args, ProxyProcess* proxy = nullptr) {
    const EtcdTls tls = Client(who);
    return Etcdctl((proxy != nullptr ? proxy : proxy_.get())->address(), "--command-timeout 5s --cacert " + tls.ca_file +
                                                                        " --cert " + tls.cert_file + " --key " +
                                                                        tls.key_file + " " + args);
  }

  // The upstream transport alone, on one event loop, towards shard 0, minting with `ca`.
  static std::shared_ptr<H2ShardTransport> Transport(const std::string& ca, std::size_t max_identities,
                                                     std::chrono::milliseconds idle) {
    ShardConfig shard;
    shard.name = "s0";
    shard.endpoints = shards_[0]->ClientAddresses();
    shard.tls = TlsClientConfig{certs_->ca(), certs_->cert(), certs_->key(), ""};
    UpstreamTuning tuning;
    tuning.identity_issuer =
        std::make_shared<auth::IdentityIssuer>(ClientCertIdentityConfig{Path(ca + ".crt"), Path(ca + ".key")});
    tuning.max_identities_per_loop = max_identities;
    tuning.identity_idle = idle;
    // One loop, alive until exit (as UpstreamLoops::Shared()): the transport may be released last
    // on the loop's own thread, which must not be the one to stop it.
    static const auto loops = std::make_shared<UpstreamLoops>(1);
    return std::make_shared<H2ShardTransport>(shard, "shard \"s0\"", tuning, loops);
  }

  // A Put of "c" (shard 0) as `cn`; with "", no identity (the proxy's own certificate).
  static Status PutAs(ShardTransport& transport, const std::string& cn) {
    Metadata metadata;
    if (!cn.empty()) metadata.emplace_back(kClientCertCnKey, cn);
    auto ctx = std::make_shared<CallContext>(Clock::now() + 10s, std::move(metadata));
    etcdserverpb::PutRequest request;
    request.set_key("c");
    request.set_value(cn);
    std::promise<Status> done;
    transport.Unary("/etcdserverpb.KV/Put", ctx, request.SerializeAsString(), kWrite,
                    [&done](Status status, std::string) { done.set_value(std::move(status)); });
    auto future = done.get_future();
    EXPECT_EQ(future.wait_for(20s), std::future_status::ready);
    return future.get();
  }

  static std::unique_ptr<TestCertificates> certs_;
  static std::unique_ptr<TempDir> dir_;
  static std::unique_ptr<EtcdCluster> shards_[2];
  static std::unique_ptr<ProxyProcess> proxy_;
};
std::unique_ptr<TestCertificates> CertIdentityTest::certs_;
std::unique_ptr<TempDir> CertIdentityTest::dir_;
std::unique_ptr<EtcdCluster> CertIdentityTest::shards_[2];
std::unique_ptr<ProxyProcess> CertIdentityTest::proxy_;

TEST_F(CertIdentityTest, ReaderCertificateReadsItsRangeButCannotWriteOrReadOutside) {
  EXPECT_EQ(As("reader", "get b").output, "b\n1\n") << proxy_->process().Log();
  EXPECT_EQ(As("reader", "get j").output, "j\n1\n");
  // [a, k) spans both shards: each shard checks the reader's permission on its piece.
  EXPECT_EQ(As("reader", "get a k --keys-only").output, "b\n\nj\n\n");
  const auto put = As("reader", "put b 2");
  EXPECT_NE(put.exit_code, 0);
  EXPECT_NE(put.output.find(kDenied), std::string::npos) << put.output;
  const auto outside = As("reader", "get z");
  EXPECT_NE(outside.output.find(kDenied), std::string::npos) << outside.output;
  // A spanning read that reaches past the permitted range is denied as a whole.
  const auto spanning = As("reader", "get a z");
  EXPECT_NE(spanning.output.find(kDenied), std::string::npos) << spanning.output;
}

TEST_F(CertIdentityTest, RootCertificateCanWriteEverywhere) {
  EXPECT_EQ(As("root", "put b 3").output, "OK\n") << proxy_->process().Log();
  EXPECT_EQ(As("root", "put z 3").output, "OK\n");
  EXPECT_EQ(As("reader", "get b --print-value-only").output, "3\n");
  // A certificate whose CN is no etcd user gets no rights.
  const auto nobody = As("node", "get b");
  EXPECT_NE(nobody.exit_code, 0) << nobody.output;
}

TEST_F(CertIdentityTest, ATokenWinsOverTheCertificate) {
  const auto as_reader = As("root", "--user reader:readerpw put b 4");
  EXPECT_NE(as_reader.output.find(kDenied), std::string::npos) << as_reader.output;
  EXPECT_EQ(As("reader", "--user root:rootpw put b 4").output, "OK\n");
}

TEST_F(CertIdentityTest, AClientCannotClaimAnIdentityByHeader) {
  // With a CN of its own, and without one (nothing the proxy would set in its place).
  for (const char* who : {"reader", "nocn"}) {
    auto stub = etcdserverpb::KV::NewStub(Connect(proxy_->address(), Client(who)));
    etcdserverpb::PutRequest request;
    request.set_key("b");
    request.set_value("forged");
    etcdserverpb::PutResponse response;
    auto ctx = Ctx();
    ctx->AddMetadata("esp-client-cert-cn", "root");
    const auto status = stub->Put(ctx.get(), request, &response);
    EXPECT_FALSE(status.ok()) << who;
    EXPECT_NE(status.error_message().find("etcdserver: "), std::string::npos) << who << ": " << status.error_message();
  }
  EXPECT_EQ(As("root", "get b --print-value-only").output.find("forged"), std::string::npos);
}

TEST_F(CertIdentityTest, WatchRunsAsTheCertificateUser) {
  WatchClient watch(Connect(proxy_->address(), Client("reader")));
  watch.Create("a", "k");  // permitted, spans both shards
  WatchResponse response = watch.Expect();
  EXPECT_TRUE(response.created());
  ASSERT_FALSE(response.canceled()) << response.cancel_reason();
  const auto allowed = response.watch_id();
  watch.Create("x", "");  // not permitted
  response = watch.Expect();
  EXPECT_TRUE(response.canceled());
  EXPECT_NE(response.cancel_reason().find(kDenied), std::string::npos) << response.cancel_reason();
  ASSERT_EQ(As("root", "put j 5").output, "OK\n");
  response = watch.Expect();
  EXPECT_EQ(response.watch_id(), allowed);
  ASSERT_EQ(response.events_size(), 1);
  EXPECT_EQ(response.events(0).kv().key(), "j");
  EXPECT_EQ(response.events(0).kv().value(), "5");
}

TEST_F(CertIdentityTest, LeaseCallsRunAsTheCertificateUser) {
  const auto grant = As("root", "lease grant 30");
  std::smatch match;
  ASSERT_TRUE(std::regex_search(grant.output, match, std::regex("lease ([0-9a-f]+) granted"))) << grant.output;
  const std::string id = match[1];
  ASSERT_EQ(As("root", "put z 6 --lease=" + id).output, "OK\n");
  // etcd lets only a user who may delete the lease's keys revoke it: the reader may not.
  auto stub = etcdserverpb::Lease::NewStub(Connect(proxy_->address(), Client("reader")));
  etcdserverpb::LeaseRevokeRequest request;
  request.set_id(std::stoll(id, nullptr, 16));
  etcdserverpb::LeaseRevokeResponse response;
  auto ctx = Ctx();
  const auto status = stub->LeaseRevoke(ctx.get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  EXPECT_EQ(status.error_message(), kDenied);
  EXPECT_EQ(As("root", "lease revoke " + id).output, "lease " + id + " revoked\n");
  EXPECT_EQ(As("root", "get z").output, "");
}

// Defragment goes to each member on a connection of its own, and etcd lets only root do it.
TEST_F(CertIdentityTest, DefragmentRunsAsTheCertificateUserOrTheToken) {
  EXPECT_EQ(As("root", "defrag").exit_code, 0) << As("root", "defrag").output;
  // etcd 3.4's maintenance service answers its auth store's own error (code Unknown).
  const auto reader = As("reader", "defrag");
  EXPECT_NE(reader.exit_code, 0);
  EXPECT_NE(reader.output.find("auth: permission denied"), std::string::npos) << reader.output;
  const auto token = As("reader", "--user root:rootpw defrag");
  EXPECT_EQ(token.exit_code, 0) << token.output;
}

TEST_F(CertIdentityTest, GrpcDataPlaneCarriesTheIdentityToo) {
  const std::unique_ptr<ProxyProcess> proxy = NewProxy({"--data-plane", "grpc"});
  proxy->StartWithoutProbe();
  ASSERT_TRUE(WaitFor([&] { return As("reader", "get b --print-value-only", proxy.get()).exit_code == 0; }, 20s))
      << proxy->process().Log();
  const auto put = As("reader", "put b 7", proxy.get());
  EXPECT_NE(put.output.find(kDenied), std::string::npos) << put.output;
  EXPECT_EQ(As("root", "put b 7", proxy.get()).output, "OK\n");
}

// Each identity gets its own connection, and at most `max_identities_per_loop` of them are kept:
// the least recently used idle one is closed for a new one.
TEST_F(CertIdentityTest, IdentityConnectionsAreBounded) {
  const auto transport = Transport("id-ca", 2, std::chrono::hours(1));
  EXPECT_TRUE(PutAs(*transport, "root").ok());
  EXPECT_EQ(PutAs(*transport, "reader").message(), kDenied);
  EXPECT_EQ(transport->identity_connection_count(), 2u);
  EXPECT_FALSE(PutAs(*transport, "stranger").ok());  // no such etcd user; replaces the oldest
  EXPECT_EQ(transport->identity_connection_count(), 2u);
  EXPECT_TRUE(PutAs(*transport, "root").ok());  // made again after its eviction
  EXPECT_EQ(transport->identity_connection_count(), 2u);
  EXPECT_EQ(PutAs(*transport, "reader").message(), kDenied);
}

TEST_F(CertIdentityTest, IdleIdentityConnectionsAreClosed) {
  const auto transport = Transport("id-ca", 64, 300ms);
  EXPECT_TRUE(PutAs(*transport, "root").ok());
  EXPECT_TRUE(WaitFor([&] { return transport->identity_connection_count() == 0; }, 10s));
  EXPECT_TRUE(PutAs(*transport, "root").ok());
}

// An identity CA the shard does not trust: the call fails with the shard's refusal, and the
// member stays healthy for everyone else (the usual connection still serves at once).
TEST_F(CertIdentityTest, AnUntrustedIdentityCaFailsTheCallNotTheMember) {
  const auto transport = Transport("untrusted-ca", 64, std::chrono::hours(1));
  const Status refused = PutAs(*transport, "root");
  EXPECT_EQ(refused.code(), StatusCode::kUnavailable) << refused.message();
  EXPECT_NE(refused.message().find("shard \"s0\""), std::string::npos) << refused.message();
  // No token and no identity: the proxy's own certificate (CN 127.0.0.1, no etcd user), so etcd's
  // own refusal, not a connection failure.
  const Status usual = PutAs(*transport, "");
  EXPECT_NE(usual.code(), StatusCode::kUnavailable) << usual.message();
  EXPECT_NE(usual.message().find("etcdserver: "), std::string::npos) << usual.message();
}

TEST_F(CertIdentityTest, TheGrpcUpstreamTransportIsRefusedWithIdentities) {
  // The config only: the proxy must refuse it before listening.
  const std::unique_ptr<ProxyProcess> proxy = NewProxy({});
  const auto result = RunCommand(std::string(ESP_PROXY_BINARY_FOR_TESTS) + " --config " +
                                     proxy->config_path().string() + " --listen-addr 127.0.0.1:" +
                                     std::to_string(FreePort()) + " --upstream-transport grpc",
                                 20s);
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("'client_cert_identity' needs --upstream-transport=h2"), std::string::npos)
      << result.output;
}

}  // namespace
}  // namespace esp::test
