// TLS and mutual TLS on the coordinator's gRPC channel, with the certificates deploy/make-certs.sh
// makes for users: a run's CA, its coordinator certificate for 127.0.0.1/localhost and its worker
// client certificate; a second ("rogue") run whose CA signed nothing the server trusts; and a
// server-only run (--no-mutual). The role directories are read as users give them, with --tls-dir.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

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
    const std::string script = std::string(LOWBAND_SOURCE_DIR) + "/deploy/make-certs.sh";
    for (const char* run : {"run", "rogue"})
      Sh(fmt::format("{} {}/{} --server-name 127.0.0.1 --server-name localhost", script, dir_.string(), run));
    Sh(fmt::format("{} {}/server-only --server-name localhost --no-mutual", script, dir_.string()));
    std::ofstream(F("not-a-cert.txt")) << "subjectAltName=IP:127.0.0.1\n";
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
  StartServer({F("run/coordinator/tls.crt"), F("run/coordinator/tls.key"), ""});
  EXPECT_TRUE(Join({F("run/ca.crt"), "", "", ""}).ok());
  // A client that trusts another CA, and one that speaks plaintext, never get through.
  Status rogue = Join({F("rogue/ca.crt"), "", "", ""});
  EXPECT_EQ(rogue.code(), StatusCode::kUnavailable) << rogue.ToString();
  Status plain = Join({});
  EXPECT_EQ(plain.code(), StatusCode::kUnavailable) << plain.ToString();
  // The error says which side to look at: a refused handshake looks like an unreachable server.
  EXPECT_NE(plain.message().find("speaks plaintext"), std::string::npos) << plain.ToString();
  EXPECT_NE(rogue.message().find("rogue/ca.crt"), std::string::npos) << rogue.ToString();
  EXPECT_EQ(core_->live_members(), 1u);
}

TEST_F(TlsTest, MutualTlsRequiresAClientCertificateFromTheConfiguredCa) {
  StartServer({F("run/coordinator/tls.crt"), F("run/coordinator/tls.key"), F("run/ca.crt")});
  EXPECT_TRUE(Join({F("run/ca.crt"), F("run/worker/tls.crt"), F("run/worker/tls.key"), ""}).ok());
  Status no_cert = Join({F("run/ca.crt"), "", "", ""});
  EXPECT_EQ(no_cert.code(), StatusCode::kUnavailable) << no_cert.ToString();
  Status wrong_cert = Join({F("run/ca.crt"), F("rogue/worker/tls.crt"), F("rogue/worker/tls.key"), ""});
  EXPECT_EQ(wrong_cert.code(), StatusCode::kUnavailable) << wrong_cert.ToString();
  EXPECT_EQ(core_->live_members(), 1u);
}

TEST_F(TlsTest, ServerNameOverrideAndBadFilesAreReportedByName) {
  StartServer({F("run/coordinator/tls.crt"), F("run/coordinator/tls.key"), ""});
  // The certificate names 127.0.0.1 and localhost, not this name.
  Status mismatch = Join({F("run/ca.crt"), "", "", "coordinator.example"});
  EXPECT_EQ(mismatch.code(), StatusCode::kUnavailable) << mismatch.ToString();
  EXPECT_TRUE(Join({F("run/ca.crt"), "", "", "localhost"}).ok());

  Status missing = Join({F("nope.pem"), "", "", ""});
  EXPECT_EQ(missing.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.message().find("nope.pem"), std::string::npos) << missing.ToString();
  Status not_pem = Join({F("not-a-cert.txt"), "", "", ""});
  EXPECT_EQ(not_pem.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(not_pem.message().find("PEM"), std::string::npos) << not_pem.ToString();
  Status half = Join({F("run/ca.crt"), F("run/worker/tls.crt"), "", ""});
  EXPECT_EQ(half.code(), StatusCode::kInvalidArgument) << half.ToString();

  auto key_only = comm::MakeServerCredentials({"", F("run/coordinator/tls.key"), ""});
  EXPECT_EQ(key_only.status().code(), StatusCode::kInvalidArgument);
}

// What --tls-dir reads: make-certs.sh's coordinator directory serves mutual TLS, its worker directory
// gets through, another run's worker directory does not; a server-only run's directories serve TLS
// without client certificates.
TEST_F(TlsTest, RoleDirectoriesFromMakeCertsServeAndJoinAsTheirLayoutSays) {
  const comm::TlsServerFiles server = comm::ServerFilesFromDir(F("run/coordinator"));
  EXPECT_EQ(comm::Describe(server), "mutual TLS");
  StartServer(server);
  EXPECT_TRUE(Join(comm::ClientFilesFromDir(F("run/worker"))).ok());
  Status rogue = Join(comm::ClientFilesFromDir(F("rogue/worker")));
  EXPECT_EQ(rogue.code(), StatusCode::kUnavailable) << rogue.ToString();
  comm::TlsClientFiles no_cert = comm::ClientFilesFromDir(F("run/worker"));
  no_cert.cert.clear();
  no_cert.key.clear();
  Status refused = Join(no_cert);
  EXPECT_EQ(refused.code(), StatusCode::kUnavailable) << refused.ToString();
  EXPECT_EQ(core_->live_members(), 1u);

  EXPECT_EQ(comm::Describe(comm::ServerFilesFromDir(F("server-only/coordinator"))), "TLS");
  const comm::TlsClientFiles server_only = comm::ClientFilesFromDir(F("server-only/worker"));
  EXPECT_TRUE(server_only.cert.empty() && server_only.key.empty());
  EXPECT_EQ(server_only.ca, F("server-only/worker/ca.crt"));
  // A directory without the server's files fails at start, naming the file.
  auto missing = comm::MakeServerCredentials(comm::ServerFilesFromDir(F("run/worker/..")));
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("tls.crt"), std::string::npos) << missing.status().ToString();
}

TEST(TlsWarning, PlaintextIsFlaggedOnlyBeyondLoopback) {
  EXPECT_TRUE(comm::PlaintextBeyondLoopback({}, "0.0.0.0:50051"));
  EXPECT_TRUE(comm::PlaintextBeyondLoopback({}, "[::]:50051"));
  EXPECT_TRUE(comm::PlaintextBeyondLoopback({}, "10.1.2.3:50051"));
  EXPECT_FALSE(comm::PlaintextBeyondLoopback({}, "127.0.0.1:0"));
  EXPECT_FALSE(comm::PlaintextBeyondLoopback({}, "localhost:50051"));
  EXPECT_FALSE(comm::PlaintextBeyondLoopback({}, "[::1]:50051"));
  EXPECT_FALSE(comm::PlaintextBeyondLoopback({"a.crt", "a.key", ""}, "0.0.0.0:50051"));
}

}  // namespace
}  // namespace lowband
