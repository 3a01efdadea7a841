// TLS and mutual TLS on the coordinator's gRPC channel, with certificates made by the openssl
// command for this test: a CA, a server certificate for 127.0.0.1/localhost, a client certificate,
// and a second ("rogue") CA that signed nothing the server trusts.
#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "comm/coordinator_client.h"
#include "comm/tls.h"
#include "coordinator/core.h"
#include "coordinator/service.h"
#include "tests/coordinator/fake_worker.h"

namespace lowband {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

const bool kQuietLogs = [] {
  spdlog::set_level(spdlog::level::warn);
  return true;
}();

void Sh(const std::string& command) {
  ASSERT_EQ(std::system((command + " >/dev/null 2>&1").c_str()), 0) << command;
}

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("lowband-tls-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    const std::string d = dir_.string();
    std::ofstream(d + "/server.ext") << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
    for (const char* ca : {"ca", "rogue"}) {
      Sh(fmt::format(
          "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=lowband-test-{0} -keyout {1}/{0}.key "
          "-out {1}/{0}.pem",
          ca, d));
    }
    // name, signing CA, extensions
    const std::vector<std::array<std::string, 3>> certs = {{"server", "ca", "-extfile " + d + "/server.ext"},
                                                           {"client", "ca", ""},
                                                           {"rogue-client", "rogue", ""}};
    for (const auto& [name, ca, ext] : certs) {
      Sh(fmt::format("openssl req -newkey rsa:2048 -nodes -subj /CN={0} -keyout {1}/{0}.key -out {1}/{0}.csr",
                     name, d));
      Sh(fmt::format(
          "openssl x509 -req -in {1}/{0}.csr -CA {1}/{2}.pem -CAkey {1}/{2}.key -CAcreateserial -days 2 "
          "-out {1}/{0}.pem {3}",
          name, d, ca, ext));
    }
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static std::string F(const std::string& name) { return (dir_ / name).string(); }

  void StartServer(comm::TlsServerFiles tls) {
    coordinator::CoordinatorOptions o;
    o.run_id = "tls";
    o.token = "t0k";
    o.layout.num_fragments = 3;
    auto core = coordinator::CoordinatorCore::Create(o);
    ASSERT_TRUE(core.ok());
    core_ = std::move(core).value();
    coordinator::ServerOptions so;
    so.address = "127.0.0.1:0";
    so.shutdown_grace = 200ms;
    so.tls = std::move(tls);
    auto server = coordinator::CoordinatorServer::Start(*core_, so);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
  }

  // Connects with `tls` and joins: the status of whichever failed first.
  Status Join(comm::TlsClientFiles tls) {
    comm::ClientOptions c;
    c.connect_timeout = 0ms;  // the handshake's failure shows in the call
    c.join_deadline = 3s;
    c.retry.max_backoff = 200ms;
    c.tls = std::move(tls);
    auto client = comm::CoordinatorClient::Connect(server_->target(), c);
    if (!client.ok()) return client.status();
    comm::JoinParams p{"tls", "t0k", testing::TestSignature(), "w", "127.0.0.1"};
    return (*client)->Join(p).status();
  }

  static fs::path dir_;
  std::unique_ptr<coordinator::CoordinatorCore> core_;
  std::unique_ptr<coordinator::CoordinatorServer> server_;
};
fs::path TlsTest::dir_;

TEST_F(TlsTest, ServerCertificateIsVerifiedAndPlaintextIsRefused) {
  StartServer({F("server.pem"), F("server.key"), ""});
  EXPECT_TRUE(Join({F("ca.pem"), "", "", ""}).ok());
  // A client that trusts another CA, and one that speaks plaintext, never get through.
  Status rogue = Join({F("rogue.pem"), "", "", ""});
  EXPECT_EQ(rogue.code(), StatusCode::kUnavailable) << rogue.ToString();
  Status plain = Join({});
  EXPECT_EQ(plain.code(), StatusCode::kUnavailable) << plain.ToString();
  EXPECT_EQ(core_->live_members(), 1u);
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateFromTheConfiguredCa) {
  StartServer({F("server.pem"), F("server.key"), F("ca.pem")});
  EXPECT_TRUE(Join({F("ca.pem"), F("client.pem"), F("client.key"), ""}).ok());
  Status no_cert = Join({F("ca.pem"), "", "", ""});
  EXPECT_EQ(no_cert.code(), StatusCode::kUnavailable) << no_cert.ToString();
  Status wrong_cert = Join({F("ca.pem"), F("rogue-client.pem"), F("rogue-client.key"), ""});
  EXPECT_EQ(wrong_cert.code(), StatusCode::kUnavailable) << wrong_cert.ToString();
  EXPECT_EQ(core_->live_members(), 1u);
}

TEST_F(TlsTest, ServerNameOverrideAndBadFilesAreReportedByName) {
  StartServer({F("server.pem"), F("server.key"), ""});
  // The certificate names 127.0.0.1 and localhost, not this name.
  Status mismatch = Join({F("ca.pem"), "", "", "coordinator.example"});
  EXPECT_EQ(mismatch.code(), StatusCode::kUnavailable) << mismatch.ToString();
  EXPECT_TRUE(Join({F("ca.pem"), "", "", "localhost"}).ok());

  Status missing = Join({F("nope.pem"), "", "", ""});
  EXPECT_EQ(missing.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.message().find("nope.pem"), std::string::npos) << missing.ToString();
  Status not_pem = Join({F("server.ext"), "", "", ""});
  EXPECT_EQ(not_pem.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(not_pem.message().find("PEM"), std::string::npos) << not_pem.ToString();
  Status half = Join({F("ca.pem"), F("client.pem"), "", ""});
  EXPECT_EQ(half.code(), StatusCode::kInvalidArgument) << half.ToString();

  auto key_only = comm::MakeServerCredentials({"", F("server.key"), ""});
  EXPECT_EQ(key_only.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lowband
