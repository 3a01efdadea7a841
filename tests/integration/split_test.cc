// End to end: `lowband split-server` and two `lowband split-client` processes at once over real gRPC on
// loopback with mutual TLS (certificates from deploy/make-certs.sh, given with --tls-dir), on a
// generated text file (no network): both learn, both sides save adapters, and a client with another
// cut or a missing base model gets a clear error.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "process_util.h"

namespace lowband {
namespace {
namespace fs = std::filesystem;

using testing::Bin;
using testing::Shell;

class SplitProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("lowband-split-it-{}", ::getpid());
    fs::create_directories(dir_);
    testing::WriteTinyCorpus((dir_ / "corpus.txt").string(), 40000);
    auto [rc, out] = Shell(fmt::format("{}/deploy/make-certs.sh {} --server-name 127.0.0.1",
                                       LOWBAND_SOURCE_DIR, (dir_ / "tls").string()));
    ASSERT_EQ(rc, 0) << out;
  }
  void TearDown() override {
    server_.reset();
    fs::remove_all(dir_);
  }

  std::string Model() const {
    return fmt::format(
        "--model-d-model 32 --n-layers 3 --model-n-heads 2 --model-context 32 --data-seq-len 32 --task lm "
        "--dataset text:{} --batch-size 8 --data-eval-batches 4 --seed 3",
        (dir_ / "corpus.txt").string());
  }

  // Starts the server; returns its port.
  int StartServer() {
    const std::string port_file = (dir_ / "port").string();
    server_ = std::make_unique<testing::Background>(
        fmt::format("{} split-server {} --cut 1 --listen 127.0.0.1:0 --port-file {} --set split.out={} "
                    "--tls-dir {}",
                    Bin(), Model(), port_file, (dir_ / "server").string(),
                    (dir_ / "tls" / "coordinator").string()),
        (dir_ / "server.log").string());
    return testing::ReadPortFile(port_file);
  }

  std::string Client(int port, const std::string& name, const std::string& extra) const {
    return fmt::format(
        "{} split-client {} --cut 1 --server 127.0.0.1:{} --steps 24 --eval-every 12 --log-every 6 "
        "--lr 0.01 --inner-warmup-steps 2 --name {} --out {} --tls-dir {} {}",
        Bin(), Model(), port, name, (dir_ / name).string(), (dir_ / "tls" / "worker").string(), extra);
  }

  fs::path dir_;
  std::unique_ptr<testing::Background> server_;
};

TEST_F(SplitProcessTest, TwoClientsFineTuneOverMutualTlsAndBothSidesSaveAdapters) {
  const int port = StartServer();
  ASSERT_GT(port, 0) << Shell("cat " + (dir_ / "server.log").string()).second;
  auto [rc, out] =
      Shell(fmt::format("{} --client-id 0 --clients 2 & {} --client-id 1 --clients 2 "
                        "--split-codec fixed --bits 8 || exit 1; wait $!",
                        Client(port, "c0", "--split-codec amaq --bits 4"), Client(port, "c1", "")));
  ASSERT_EQ(rc, 0) << out;
  for (const std::string name : {"c0", "c1"}) {
    std::ifstream f(dir_ / name / "summary.json");
    ASSERT_TRUE(f.good()) << name << "\n" << out;
    const nlohmann::json s = nlohmann::json::parse(f);
    const auto& curve = s.at("eval_curve");
    ASSERT_GE(curve.size(), 2u) << name;
    EXPECT_LT(curve.back().at("loss").get<double>(), curve.front().at("loss").get<double>())
        << name << " did not learn";
    EXPECT_TRUE(std::isfinite(s.at("final_perplexity").get<double>()));
    EXPECT_EQ(s.at("steps").get<int>(), 24);
    // Bytes per example count both directions; compressed payloads are several times smaller than fp32.
    EXPECT_GT(s.at("compression_vs_fp32").get<double>(), 3.0) << name;
    EXPECT_TRUE(fs::exists(dir_ / name / "adapters" / "adapter_model.safetensors")) << name;
    EXPECT_TRUE(fs::exists(dir_ / "server" / "sessions" / name / "adapter_model.safetensors")) << name;
    EXPECT_TRUE(fs::exists(dir_ / name / "metrics" / "split-client.jsonl")) << name;
  }
  // The AMAQ client ended near its budget; the fixed one at exactly 8 bits.
  std::ifstream f0(dir_ / "c0" / "summary.json"), f1(dir_ / "c1" / "summary.json");
  const auto s0 = nlohmann::json::parse(f0), s1 = nlohmann::json::parse(f1);
  EXPECT_NEAR(s0.at("bits_curve").back().at("mean_bits").get<double>(), 4.0, 0.75);
  EXPECT_EQ(s1.at("mean_bits_up").get<double>(), 8.0);
  // Both sides record the gradient codec as used: the AMAQ client's gradients have their own 4-bit
  // gates (auto); the fixed client's follow its 8-bit map, so no gradient width of their own is written.
  EXPECT_EQ(s0.at("grad_codec"), "amaq");
  EXPECT_EQ(s0.at("grad_bits"), 4);
  EXPECT_EQ(s1.at("grad_codec"), "follow");
  EXPECT_FALSE(s1.contains("grad_bits"));
  for (const auto& [name, codec] : {std::pair<std::string, std::string>{"c0", "amaq"}, {"c1", "follow"}}) {
    std::ifstream meta(dir_ / "server" / "sessions" / name / "adapter_config.json");
    ASSERT_TRUE(meta.good()) << name;
    const auto m = nlohmann::json::parse(meta);
    EXPECT_EQ(m.at("grad_codec"), codec) << name;
    EXPECT_EQ(m.contains("grad_bits"), codec == "amaq") << name;
  }

  // Another cut than the server's, and a missing base model: clear errors, non-zero exit.
  auto [rc2, out2] = Shell(Client(port, "bad", "--set split.cut=2 --no-save"));
  EXPECT_NE(rc2, 0);
  EXPECT_NE(out2.find("does not match the server"), std::string::npos) << out2;
  auto [rc3, out3] = Shell(Client(port, "bad2", "--base /nonexistent/ckpt --no-save"));
  EXPECT_NE(rc3, 0);
  EXPECT_NE(out3.find("does not exist"), std::string::npos) << out3;
  // The server is still serving and stops cleanly on SIGTERM.
  server_->Signal(SIGTERM);
  const auto status = server_->Wait(std::chrono::seconds(60));
  ASSERT_TRUE(status.has_value()) << "the server did not stop within 60 s of SIGTERM";
  const std::string server_log = Shell("cat " + (dir_ / "server.log").string()).second;
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << server_log;
  EXPECT_NE(server_log.find("(mutual TLS)"), std::string::npos) << server_log;
}

}  // namespace
}  // namespace lowband
