// End to end: workers that are sites of several ranks (real processes; c10d Gloo within a site, real
// gRPC to the coordinator, all on loopback), on a generated text file so no network is needed.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "comm/ports.h"
#include "process_util.h"

namespace lowband {
namespace {
namespace fs = std::filesystem;

using testing::Background;
using testing::Bin;
using testing::Shell;

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

std::string ReadText(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

class SiteTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / fmt::format("lowband-site-it-{}", ::getpid());
    fs::create_directories(dir_);
    testing::WriteTinyCorpus((dir_ / "corpus.txt").string(), 60000);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  // The run's settings (without --batch-size and --data-eval-batches, which the tests vary).
  static std::string Flags() {
    return fmt::format(
        "--dataset text:{} --eval-every 20 --log-every 5 --seed 3 --model-d-model 32 --n-layers 2 "
        "--model-n-heads 2 --model-context 32 --data-seq-len 32 --lr 0.003 --inner-warmup-steps 5 --H 8 "
        "--fragments 3 --tau 1",
        (dir_ / "corpus.txt").string());
  }

  // `lowband launch` of a 40-step run into dir_/name; returns the run directory (or the output on failure).
  static std::string Launch(const std::string& name, const std::string& extra, int* rc,
                            const std::string& env = "") {
    auto [code, text] = Shell(fmt::format("{} {} launch --steps 40 --out {} {} {}", env, Bin(),
                                          (dir_ / name).string(), Flags(), extra));
    *rc = code;
    return code == 0 ? (dir_ / name).string() : text;
  }

  static fs::path dir_;
};
fs::path SiteTest::dir_;

TEST_F(SiteTest, RanksOfASiteStayIdenticalEveryStepAndCrossSiteBytesDoNotDependOnRanks) {
  int rc = 0;
  // Every rank's parameters and global copy are compared (CRC32C, all-gathered) after every step.
  const std::string sites = Launch("2x2", "--workers 2 --ranks 2 --site-check-every 1 --batch-size 8", &rc);
  ASSERT_EQ(rc, 0) << sites;
  const auto s = ReadJson(sites + "/summary.json");
  EXPECT_EQ(s["ranks_per_worker"].get<int>(), 2);
  EXPECT_TRUE(s["site_state_identical"].get<bool>()) << s.dump(2);
  EXPECT_TRUE(s["global_state_identical"].get<bool>()) << s.dump(2);
  const auto& curve = s["eval_curve"];
  EXPECT_LT(curve.back()["eval_loss"].get<double>(), curve.front()["eval_loss"].get<double>() - 0.3);
  for (int w = 0; w < 2; ++w) {
    const auto leader = ReadJson(fmt::format("{}/metrics/worker-{}-result.json", sites, w));
    const auto other = ReadJson(fmt::format("{}/metrics/worker-{}-rank-1-result.json", sites, w));
    // One check after joining, one per step, one at the end: all passed on both ranks.
    EXPECT_EQ(leader["site_checks"].get<int>(), 42);
    EXPECT_EQ(other["site_checks"].get<int>(), 42);
    EXPECT_EQ(other["params_crc"], leader["params_crc"]);
    EXPECT_EQ(other["global_crc"], leader["global_crc"]);
    // Only the leader talks to the coordinator.
    EXPECT_GT(leader["bytes_up"].get<uint64_t>(), 0u);
    EXPECT_EQ(other["bytes_up"].get<uint64_t>(), 0u);
    EXPECT_GT(other["site_allreduce_bytes"].get<uint64_t>(), 0u);
  }
  // The same run with one-rank sites sends exactly the same bytes per site over the slow link.
  // (Its run token comes from the environment, where `ps` does not show it.)
  const std::string single = Launch("2x1", "--workers 2 --batch-size 8", &rc, "LOWBAND_TOKEN=env-secret-42");
  ASSERT_EQ(rc, 0) << single;
  EXPECT_NE(ReadText(single + "/config.yaml").find("token: env-secret-42"), std::string::npos);
  const auto s1 = ReadJson(single + "/summary.json");
  EXPECT_EQ(s1["bytes_per_worker"], s["bytes_per_worker"]);
  EXPECT_EQ(s1["bytes_up"], s["bytes_up"]);
  EXPECT_FALSE(s1.contains("site_bytes"));
}

TEST_F(SiteTest, SitesResumeFromTheirRanksCheckpointsAndStayIdentical) {
  int rc = 0;
  const std::string flags = "--workers 2 --ranks 2 --site-check-every 1 --batch-size 8 --checkpoint-every 10";
  const std::string first = Launch("resume", flags + " --steps 20", &rc);
  ASSERT_EQ(rc, 0) << first;
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(fs::exists(fmt::format("{}/checkpoints/worker-1/rank-{}", first, r))) << "rank " << r;
  }
  // (The first run's --steps 20 came after Launch()'s --steps 40 and won.) Now train on to step 40.
  const std::string resumed =
      Launch("resume", "--workers 2 --ranks 2 --site-check-every 1 --batch-size 8 --resume", &rc);
  ASSERT_EQ(rc, 0) << resumed;
  const auto s = ReadJson(resumed + "/summary.json");
  EXPECT_EQ(s["steps"].get<int>(), 40);
  EXPECT_TRUE(s["site_state_identical"].get<bool>()) << s.dump(2);
  EXPECT_TRUE(s["global_state_identical"].get<bool>()) << s.dump(2);
  // The leader and rank 1 both went on from step 20: 20 steps, plus the checks at join and end.
  const auto other = ReadJson(resumed + "/metrics/worker-0-rank-1-result.json");
  EXPECT_EQ(other["site_checks"].get<int>(), 22);
}

TEST_F(SiteTest, ATwoRankSiteTrainsLikeOneRankWithTheDoubleBatch) {
  int rc = 0;
  // Same evaluation set (4 x 8 = 2 x 16 held-out windows), same site batch (2 ranks x 8 = 16).
  const std::string two = Launch("r2", "--workers 1 --ranks 2 --batch-size 8 --data-eval-batches 4", &rc);
  ASSERT_EQ(rc, 0) << two;
  const std::string one = Launch("r1", "--workers 1 --batch-size 16 --data-eval-batches 2", &rc);
  ASSERT_EQ(rc, 0) << one;
  const auto a = ReadJson(two + "/summary.json"), b = ReadJson(one + "/summary.json");
  EXPECT_EQ(a["tokens"], b["tokens"]);
  ASSERT_EQ(a["eval_curve"].size(), b["eval_curve"].size());
  // The only difference is the order of float additions (the mean of two half-batch gradients against one
  // full-batch gradient): the curves agree to well below the 1e-3 nats the runs' steps move by.
  for (size_t i = 0; i < a["eval_curve"].size(); ++i) {
    EXPECT_NEAR(a["eval_curve"][i]["eval_loss"].get<double>(), b["eval_curve"][i]["eval_loss"].get<double>(),
                1e-4)
        << "evaluation " << i;
  }
}

// `torchrun --no-python --nproc-per-node 2 lowband worker ...`: the ranks take their rank, the site's
// size and its store from torchrun's environment (here set by hand, as torchrun sets it when rank 0
// hosts the store), and the site trains with identical ranks. Malformed or missing variables are
// refused by name.
TEST_F(SiteTest, ASiteStartedByTorchrunTakesRankSizeAndStoreFromItsEnvironment) {
  const fs::path run = dir_ / "torchrun";
  fs::create_directories(run);
  const std::string flags = Flags() + " --steps 16 --batch-size 8 --data-eval-batches 2";
  Background coordinator(fmt::format("{} coordinator {} --listen 127.0.0.1:0 --port-file {} --out {}", Bin(),
                                     flags, (run / "port").string(), run.string()),
                         (run / "coordinator.log").string());
  const int port = testing::ReadPortFile((run / "port").string());
  ASSERT_GT(port, 0) << ReadText((run / "coordinator.log").string());
  const int store_port = comm::FreeLoopbackPort();
  const auto env = [&](int rank) {
    return fmt::format(
        "TORCHELASTIC_RUN_ID=it RANK={} LOCAL_RANK={} WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT={} "
        "TORCHELASTIC_RESTART_COUNT=0",
        rank, rank, store_port);
  };
  const auto worker = [&](int rank) {
    return fmt::format("env {} {} worker {} --coordinator 127.0.0.1:{} --worker-id 0 --workers 1 --out {}",
                       env(rank), Bin(), flags, port, run.string());
  };
  auto [rc, out] = Shell(fmt::format("{} & {} || exit 1; wait $!", worker(1), worker(0)));
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("torchrun: site rank 0 of 2, store 127.0.0.1:" + std::to_string(store_port)),
            std::string::npos)
      << out;
  const auto leader = ReadJson((run / "metrics" / "worker-0-result.json").string());
  const auto other = ReadJson((run / "metrics" / "worker-0-rank-1-result.json").string());
  EXPECT_EQ(leader["ranks"].get<int>(), 2);
  EXPECT_EQ(other["rank"].get<int>(), 1);
  EXPECT_EQ(other["params_crc"], leader["params_crc"]);
  EXPECT_EQ(other["global_crc"], leader["global_crc"]);

  // A missing variable, a malformed one, and --ranks that disagrees with WORLD_SIZE.
  const std::string plain =
      fmt::format("{} worker {} --coordinator 127.0.0.1:{} --worker-id 0 --workers 1", Bin(), flags, port);
  auto [rc1, out1] =
      Shell("env TORCHELASTIC_RUN_ID=it WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 " + plain);
  EXPECT_EQ(rc1, 2) << out1;
  EXPECT_NE(out1.find("RANK is not set"), std::string::npos) << out1;
  auto [rc2, out2] =
      Shell("env TORCHELASTIC_RUN_ID=it RANK=x WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 " + plain);
  EXPECT_EQ(rc2, 2) << out2;
  EXPECT_NE(out2.find("RANK='x'"), std::string::npos) << out2;
  auto [rc3, out3] = Shell("env " + env(0) + " " + plain + " --ranks 3");
  EXPECT_EQ(rc3, 2) << out3;
  EXPECT_NE(out3.find("--ranks 3 but torchrun started 2 processes"), std::string::npos) << out3;
  coordinator.Signal(SIGTERM);
  coordinator.Wait(std::chrono::seconds(30));
}

TEST_F(SiteTest, ARankThatDiesOrHangsMakesItsSiteFailWithAClearError) {
  const std::string flags =
      Flags() + " --steps 100000 --batch-size 8 --data-eval-batches 2 --ranks 2 --set site.timeout_s=5";
  // A coordinator and the two ranks of worker 0 in dir_/name, once both ranks have trained 10 steps.
  struct Site {
    std::unique_ptr<Background> coordinator;
    std::unique_ptr<Background> ranks[2];
  };
  auto start = [&](const std::string& name) {
    const fs::path run = dir_ / name;
    fs::create_directories(run);
    Site site;
    site.coordinator = std::make_unique<Background>(
        fmt::format("{} coordinator {} --listen 127.0.0.1:0 --port-file {} --out {}", Bin(), flags,
                    (run / "port").string(), run.string()),
        (run / "coordinator.log").string());
    const int port = testing::ReadPortFile((run / "port").string());
    EXPECT_GT(port, 0) << ReadText((run / "coordinator.log").string());
    const int store_port = comm::FreeLoopbackPort();
    for (int r = 0; r < 2; ++r) {
      site.ranks[r] = std::make_unique<Background>(
          fmt::format(
              "{} worker {} --coordinator 127.0.0.1:{} --worker-id 0 --workers 1 --rank {} --site-store "
              "127.0.0.1:{} --out {}",
              Bin(), flags, port, r, store_port, run.string()),
          (run / fmt::format("rank-{}.log", r)).string());
    }
    const std::string metrics = (run / "metrics" / "worker-0-rank-1.jsonl").string();
    for (int i = 0; i < 600 && ReadText(metrics).find("\"step\":10,") == std::string::npos; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return site;
  };
  // The surviving rank exits within 30 s, non-zero, with a one-line error that names its site.
  auto expect_failure = [&](Background& survivor, const std::string& log, const std::string& what) {
    const auto status = survivor.Wait(std::chrono::seconds(30));
    ASSERT_TRUE(status.has_value()) << what << ": the surviving rank hangs\n" << ReadText(log);
    EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) != 0) << what;
    const std::string text = ReadText(log);
    EXPECT_NE(text.find("lowband: error: UNAVAILABLE: site 0"), std::string::npos) << what << "\n" << text;
    EXPECT_EQ(text.find("frame #"), std::string::npos) << what << ": a stack trace instead of a message";
  };

  // A rank killed outright: the leader's next collective fails at once (the connection closes).
  {
    Site site = start("killed");
    site.ranks[1]->Signal(SIGKILL);
    expect_failure(*site.ranks[0], (dir_ / "killed" / "rank-0.log").string(), "rank 1 killed");
  }
  // A leader that stops answering (SIGSTOP: alive, its sockets open): rank 1 gives up at the timeout.
  {
    Site site = start("stopped");
    site.ranks[0]->Signal(SIGSTOP);
    expect_failure(*site.ranks[1], (dir_ / "stopped" / "rank-1.log").string(), "rank 0 stopped");
  }
}

}  // namespace
}  // namespace lowband
