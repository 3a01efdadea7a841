// End to end: `lowband launch` runs a coordinator and 3 workers as real processes over real gRPC
// on loopback (and 3 ddp ranks over c10d Gloo), on a generated text file so no network is needed.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "process_util.h"

#include "quant/codec.h"

namespace lowband {
namespace {
namespace fs = std::filesystem;

using testing::Bin;
using testing::Shell;

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

class TrainingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / fmt::format("lowband-it-{}", ::getpid());
    fs::create_directories(dir_);
    // A text with structure to learn: words from a small vocabulary in repeating patterns.
    testing::WriteTinyCorpus((dir_ / "corpus.txt").string(), 60000);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  // `lowband launch`'s options for a tiny run into dir_/name, plus `extra`.
  static std::string RunFlags(const std::string& name, const std::string& extra) {
    return fmt::format(
        "--out {} --dataset text:{} --steps 48 --eval-every 24 --log-every 8 --seed 3 "
        "--model-d-model 32 --n-layers 2 --model-n-heads 2 --model-context 32 --data-seq-len 32 --batch-size "
        "8 --data-eval-batches 4 --lr 0.003 --inner-warmup-steps 5 --H 8 --fragments 3 --tau 1 {}",
        (dir_ / name).string(), (dir_ / "corpus.txt").string(), extra);
  }

  std::string Launch(const std::string& name, const std::string& extra, int* rc) {
    auto [code, text] = Shell(fmt::format("{} launch --workers 3 {}", Bin(), RunFlags(name, extra)));
    *rc = code;
    return code == 0 ? (dir_ / name).string() : text;
  }

  static fs::path dir_;
};
fs::path TrainingTest::dir_;

TEST_F(TrainingTest, StreamingRunLearnsKeepsIdenticalGlobalCopiesAndSendsTheCodecsBytes) {
  int rc = 0;
  const std::string out = Launch("streaming", "--codec fp4_e3m0", &rc);
  ASSERT_EQ(rc, 0) << out;
  const auto s = ReadJson(out + "/summary.json");
  // Loss goes down (held-out loss of the global parameters, first evaluation vs last).
  const auto& curve = s["eval_curve"];
  ASSERT_GE(curve.size(), 2u);
  EXPECT_LT(curve.back()["eval_loss"].get<double>(), curve.front()["eval_loss"].get<double>() - 0.3)
      << curve.dump();
  // Every worker's copy of g has the coordinator's CRC, fragment by fragment.
  ASSERT_TRUE(s.contains("global_state_identical"));
  EXPECT_TRUE(s["global_state_identical"].get<bool>()) << s.dump(2);
  const auto coord = ReadJson(out + "/metrics/coordinator-result.json");
  EXPECT_GT(coord["rounds_closed"].get<int>(), 0);
  // Bytes sent = the codec's exact encoded size for the fragments synced; received likewise.
  quant::CodecSpec up;  // fp4_e3m0, block 64, bf16 scales: the config's codec
  up.format = quant::Format::kFp4E3M0;
  for (int i = 0; i < 3; ++i) {
    const auto r = ReadJson(fmt::format("{}/metrics/worker-{}-result.json", out, i));
    uint64_t expect = 0;
    for (size_t p = 0; p < r["rounds_sent"].size(); ++p) {
      expect += r["rounds_sent"][p].get<uint64_t>() *
                quant::EncodedSize(up, r["fragment_elements"][p].get<uint64_t>());
    }
    EXPECT_EQ(r["bytes_up"].get<uint64_t>(), expect) << "worker " << i;
    EXPECT_EQ(r["bytes_down"].get<uint64_t>(), expect) << "worker " << i;
    EXPECT_GT(expect, 0u);
  }
  EXPECT_EQ(coord["late_pushes"].get<int>(), 0);
}

TEST_F(TrainingTest, DdpBaselineRunsOverGlooAndKeepsRanksIdentical) {
  int rc = 0;
  const std::string out = Launch("ddp", "--algo ddp", &rc);
  ASSERT_EQ(rc, 0) << out;
  uint32_t crc0 = 0;
  for (int i = 0; i < 3; ++i) {
    const auto r = ReadJson(fmt::format("{}/metrics/worker-{}-result.json", out, i));
    if (i == 0) crc0 = r["params_crc"].get<uint32_t>();
    EXPECT_EQ(r["params_crc"].get<uint32_t>(), crc0) << "rank " << i << " diverged from rank 0";
  }
  const auto s = ReadJson(out + "/summary.json");
  const auto& curve = s["eval_curve"];
  EXPECT_LT(curve.back()["eval_loss"].get<double>(), curve.front()["eval_loss"].get<double>() - 0.3);
}

TEST_F(TrainingTest, WorkerWithAnotherModelIsRefusedWithAClearError) {
  const std::string run = (dir_ / "refuse").string();
  fs::create_directories(run);
  const std::string common = fmt::format(
      "--dataset text:{} --steps 400 --model-d-model 32 --n-layers 2 --model-n-heads 2 --model-context 32 "
      "--data-seq-len 32 --batch-size 8 --H 8 --fragments 3",
      (dir_ / "corpus.txt").string());
  const std::string port_file = run + "/port";
  const std::string coord =
      fmt::format("{} coordinator --listen 127.0.0.1:0 --port-file {} {} > {}/coord.log 2>&1 & echo $!",
                  Bin(), port_file, common, run);
  auto [rc0, pid_text] = Shell(coord);
  ASSERT_EQ(rc0, 0);
  const int pid = std::stoi(pid_text);
  for (int i = 0; i < 100 && !fs::exists(port_file); ++i) ::usleep(100000);
  ASSERT_TRUE(fs::exists(port_file));
  int port = 0;
  std::ifstream(port_file) >> port;
  // Worker 0 defines the run's model; worker 1 brings a wider one.
  const std::string w0 = fmt::format(
      "{} worker --coordinator 127.0.0.1:{} --worker-id 0 --workers 2 {} > {}/w0.log 2>&1 & echo $!", Bin(),
      port, common, run);
  auto [rc1, w0pid] = Shell(w0);
  ASSERT_EQ(rc1, 0);
  ::sleep(2);
  auto [rc2, text] = Shell(
      fmt::format("{} worker --coordinator 127.0.0.1:{} --worker-id 1 --workers 2 {} --set model.d_model=48",
                  Bin(), port, common));
  Shell(fmt::format("kill {} {}", std::stoi(w0pid), pid));
  EXPECT_NE(rc2, 0);
  EXPECT_NE(text.find("signature"), std::string::npos) << text;
}

TEST_F(TrainingTest, WorkersResumeFromCheckpointsAndKeepLearning) {
  int rc = 0;
  const std::string first = Launch("resume", "--steps 24 --checkpoint-every 8", &rc);
  ASSERT_EQ(rc, 0) << first;
  const double loss_at_24 = ReadJson(first + "/summary.json")["final_eval_loss"].get<double>();
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(fs::exists(fmt::format("{}/checkpoints/worker-{}/LATEST", first, i)));
  // Same run directory, twice the steps: every worker continues from step 24 with its replica,
  // its AdamW state and its data position; a fresh coordinator is seeded with the saved g.
  const std::string second = Launch("resume", "--steps 48 --resume", &rc);
  ASSERT_EQ(rc, 0) << second;
  const auto s = ReadJson(second + "/summary.json");
  EXPECT_TRUE(s["global_state_identical"].get<bool>());
  EXPECT_EQ(s["eval_curve"].front()["step"].get<int>(), 48) << "the resumed run must not start over";
  EXPECT_LT(s["final_eval_loss"].get<double>(), loss_at_24);
  const auto log = Shell(fmt::format("grep -c 'resuming at step 24' {}/logs/worker-1.log", second));
  EXPECT_EQ(log.second.substr(0, 1), "1") << log.second;
}

// Every worker talks to the coordinator through its own `lowband link` shaper: the shapers carry
// at least the payload the workers counted (plus gRPC framing and the bootstrap download), and
// the run still ends with identical global copies.
TEST_F(TrainingTest, LaunchPutsAShaperInFrontOfTheCoordinatorForEachWorker) {
  int rc = 0;
  const std::string out =
      Launch("shaped", "--codec fp4_e3m0 --link-rate 50mbit --link-latency 5ms --link-jitter 1ms", &rc);
  ASSERT_EQ(rc, 0) << out;
  const auto s = ReadJson(out + "/summary.json");
  ASSERT_TRUE(s["link"].is_object()) << s.dump(2);
  EXPECT_EQ(s["link"]["kind"], "shaper");
  EXPECT_DOUBLE_EQ(s["link"]["rate_mbit"].get<double>(), 50.0);
  EXPECT_DOUBLE_EQ(s["link"]["latency_ms"].get<double>(), 5.0);
  ASSERT_EQ(s["link"]["shapers"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const auto w = ReadJson(fmt::format("{}/metrics/worker-{}-result.json", out, i));
    const auto& shaper = s["link"]["shapers"][i];
    ASSERT_TRUE(shaper.is_object()) << "no stats from the shaper of worker " << i;
    const double up = shaper["bytes_up"].get<double>(), down = shaper["bytes_down"].get<double>();
    const double payload_up = w["bytes_up"].get<double>(), payload_down = w["bytes_down"].get<double>();
    EXPECT_GE(up, payload_up) << "worker " << i;
    EXPECT_GE(down, payload_down) << "worker " << i;
    // The bootstrap (worker 0 seeds the state up, the others download it) crosses the link too;
    // gRPC's framing, heartbeats and the join are small next to it.
    const double payload = payload_up + payload_down + w["bootstrap_bytes"].get<double>();
    EXPECT_GE(up + down, payload) << "worker " << i;
    EXPECT_LT(up + down, payload * 1.25 + 64 * 1024) << "worker " << i;
  }
  EXPECT_TRUE(s["global_state_identical"].get<bool>());
  // ddp's Gloo traffic never passes the coordinator: a proxy cannot shape it, and launch says so.
  auto [rc2, text] = Shell(fmt::format("{} launch --workers 2 {}", Bin(),
                                       RunFlags("ddp-shaped", "--algo ddp --link-rate 10mbit")));
  EXPECT_NE(rc2, 0);
  EXPECT_NE(text.find("netns-lab.sh"), std::string::npos) << text;
  auto [rc3, text3] =
      Shell(fmt::format("{} launch --workers 2 {}", Bin(), RunFlags("bad-rate", "--link-rate fast")));
  EXPECT_NE(rc3, 0);
  EXPECT_NE(text3.find("fast"), std::string::npos) << text3;
}

// deploy/netns-lab.sh: ddp ranks and a streaming run in network namespaces over tc-tbf-shaped veths.
// Needs root/CAP_NET_ADMIN; skipped, saying why, where the machine cannot build namespaces.
TEST_F(TrainingTest, NetnsLabRunsDdpAndStreamingOverKernelShapedLinks) {
  const std::string script = std::string(LOWBAND_SOURCE_DIR) + "/deploy/netns-lab.sh";
  auto [check, why] = Shell(script + " --check");
  if (check == 77) GTEST_SKIP() << why;
  ASSERT_EQ(check, 0) << why;
  const std::string env = "LOWBAND=" + Bin() + " ";
  auto [rc, text] = Shell(env + script + " --workers 2 --rate 200mbit --prefix lbit -- " +
                          RunFlags("lab-ddp", "--algo ddp --steps 16"));
  ASSERT_EQ(rc, 0) << text;
  const std::string ddp = (dir_ / "lab-ddp").string();
  const auto s = ReadJson(ddp + "/summary.json");
  EXPECT_EQ(s["link"]["kind"], "netns-tbf");
  EXPECT_DOUBLE_EQ(s["link"]["rate_mbit"].get<double>(), 200.0);
  EXPECT_EQ(ReadJson(ddp + "/metrics/worker-0-result.json")["params_crc"],
            ReadJson(ddp + "/metrics/worker-1-result.json")["params_crc"]);
  auto [rc2, text2] = Shell(env + script + " --workers 2 --rate 200mbit --prefix lbit -- " +
                            RunFlags("lab-streaming", "--link-latency 2ms --steps 24 --cpu-per-worker 0.5"));
  ASSERT_EQ(rc2, 0) << text2;
  const auto s2 = ReadJson((dir_ / "lab-streaming").string() + "/summary.json");
  EXPECT_EQ(s2["link"]["kind"], "netns-tbf+shaper");
  EXPECT_DOUBLE_EQ(s2["cpu_per_worker"].get<double>(), 0.5);
  EXPECT_TRUE(s2["global_state_identical"].get<bool>());
  // The latency shapers in front of tbf hold a 200 Mbit/s bandwidth-delay product (25 MB/s x
  // (2 ms + 50 ms) + 256 KiB), not the 256 KiB that would cap them at 256 KiB per 2 ms.
  EXPECT_EQ(s2["link"]["shapers"][0]["buffer_bytes_up"].get<uint64_t>(), 1'300'000u + 262'144u);
  // Nothing is left behind.
  auto [rc3, left] = Shell("ip netns list | grep -c '^lbit-' || true");
  EXPECT_EQ(left.substr(0, 1), "0") << left;
}

TEST_F(TrainingTest, BadFlagsAndMissingFilesGetClearErrors) {
  auto [rc1, t1] = Shell(Bin() + " launch --workers 2 --algo sgd --out /tmp/x");
  EXPECT_NE(rc1, 0);
  EXPECT_NE(t1.find("algo"), std::string::npos) << t1;
  auto [rc2, t2] = Shell(Bin() + " launch --config /nonexistent.yaml --out /tmp/x");
  EXPECT_NE(rc2, 0);
  EXPECT_NE(t2.find("/nonexistent.yaml"), std::string::npos) << t2;
  auto [rc3, t3] = Shell(Bin() + " launch --set diloco.H=abc --out /tmp/x");
  EXPECT_NE(rc3, 0);
  EXPECT_NE(t3.find("diloco.H"), std::string::npos) << t3;
}

}  // namespace
}  // namespace lowband
