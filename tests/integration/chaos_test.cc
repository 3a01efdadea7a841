// Chaos: a real 3-worker Streaming DiLoCo run (coordinator and workers as processes, gRPC on
// loopback) in which workers are SIGKILLed and restarted from their checkpoints three times and the
// coordinator is SIGKILLed once and restarted from its own. The run must finish in bounded time;
// every worker's copy of the global state must equal the coordinator's after the last round that
// worker applied (the coordinator logs the CRC of every fragment after every round); and the final
// held-out loss must be within 5% of the same run without faults.
#include <gtest/gtest.h>

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "comm/ports.h"
#include "process_util.h"

namespace lowband {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::Background;
using testing::Bin;

constexpr int kWorkers = 3;
constexpr int kSteps = 96;

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

// The highest step any worker has logged so far.
int MaxStep(const fs::path& run) {
  int best = 0;
  for (int i = 0; i < kWorkers; ++i) {
    std::ifstream f(run / "metrics" / fmt::format("worker-{}.jsonl", i));
    std::string line;
    while (std::getline(f, line)) {
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_object() && j.contains("step") && j["step"].is_number_integer())
        best = std::max(best, j["step"].get<int>());
    }
  }
  return best;
}

std::string Tail(const fs::path& file) {
  std::ifstream f(file);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return text.size() > 3000 ? text.substr(text.size() - 3000) : text;
}

class ChaosTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / fmt::format("lowband-chaos-{}", ::getpid());
    fs::create_directories(dir_);
    testing::WriteTinyCorpus((dir_ / "corpus.txt").string(), 60000);
  }
  // Logs stay for a failed run.
  static void TearDownTestSuite() {
    if (::testing::UnitTest::GetInstance()->Passed()) fs::remove_all(dir_);
  }

  static std::string Common() {
    return fmt::format(
        "--dataset text:{} --steps {} --eval-every 48 --log-every 4 --seed 3 --model-d-model 32 --n-layers 2 "
        "--model-n-heads 2 --model-context 32 --data-seq-len 32 --batch-size 8 --data-eval-batches 4 --lr "
        "0.003 "
        "--inner-warmup-steps 5 --H 8 --fragments 3 --tau 1 --set coordinator.heartbeat_timeout_s=5 "
        "--set coordinator.round_timeout_s=5 --threads 1",
        (dir_ / "corpus.txt").string(), kSteps);
  }

  struct Cluster {
    fs::path run;
    int port = 0;
    std::unique_ptr<Background> coordinator;
    std::array<std::unique_ptr<Background>, kWorkers> workers;
    int coordinator_starts = 0;
    std::array<int, kWorkers> worker_starts{};
  };

  void StartCoordinator(Cluster& c) {
    const std::string cmd = fmt::format(
        "{} coordinator --listen 127.0.0.1:{} --checkpoint-dir {} --out {} --workers {} --exit-when-done {}",
        Bin(), c.port, (c.run / "coordinator-checkpoint").string(), c.run.string(), kWorkers, Common());
    c.coordinator = std::make_unique<Background>(
        cmd, (c.run / fmt::format("coordinator-{}.log", c.coordinator_starts++)).string());
  }

  void StartWorker(Cluster& c, int i, bool resume) {
    const std::string cmd = fmt::format(
        "{} worker --coordinator 127.0.0.1:{} --worker-id {} --workers {} --out {} --checkpoint-every 8 {} "
        "{}",
        Bin(), c.port, i, kWorkers, c.run.string(), resume ? "--resume" : "", Common());
    c.workers[i] = std::make_unique<Background>(
        cmd, (c.run / fmt::format("worker-{}-{}.log", i, c.worker_starts[i]++)).string());
  }

  // Runs the cluster to the end, injecting `faults` (at a step any worker reached: -1 kills the
  // coordinator, i kills worker i); each killed process is restarted at once.
  void Run(Cluster& c, const std::vector<std::pair<int, int>>& faults) {
    fs::create_directories(c.run);
    c.port = comm::FreeLoopbackPort();
    ASSERT_GT(c.port, 0);
    StartCoordinator(c);
    for (int i = 0; i < kWorkers; ++i) StartWorker(c, i, false);
    const auto deadline = std::chrono::steady_clock::now() + 420s;
    size_t next = 0;
    for (;;) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline)
          << "the run did not finish in time; logs in " << c.run;
      if (next < faults.size() && MaxStep(c.run) >= faults[next].first) {
        const int who = faults[next++].second;
        if (who < 0) {
          c.coordinator->Signal(SIGKILL);
          ASSERT_TRUE(c.coordinator->Wait(10s).has_value());
          StartCoordinator(c);
        } else if (!c.workers[who]->Wait(0ms)) {
          c.workers[who]->Signal(SIGKILL);
          ASSERT_TRUE(c.workers[who]->Wait(10s).has_value());
          // Its latest checkpoint is at most 8 steps back (at least the one at step 8 exists).
          StartWorker(c, who, fs::exists(c.run / "checkpoints" / fmt::format("worker-{}", who) / "LATEST"));
        }
      }
      bool all_done = true;
      for (int i = 0; i < kWorkers; ++i) {
        std::optional<int> st = c.workers[i]->Wait(0ms);
        if (st) {
          ASSERT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0)
              << "worker " << i << " failed; logs in " << c.run << ":\n"
              << Tail(c.run / fmt::format("worker-{}-{}.log", i, c.worker_starts[i] - 1));
        }
        all_done = all_done && st.has_value();
      }
      if (all_done) break;
      std::this_thread::sleep_for(100ms);
    }
    std::optional<int> st = c.coordinator->Wait(30s);
    ASSERT_TRUE(st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0)
        << "coordinator did not exit cleanly; " << c.run;
  }

  // The coordinator's CRC of every fragment after every round, across its restarts.
  static std::map<std::pair<uint32_t, uint64_t>, uint32_t> RoundCrcs(const fs::path& run) {
    std::map<std::pair<uint32_t, uint64_t>, uint32_t> crcs;
    std::ifstream f(run / "metrics" / "coordinator.jsonl");
    std::string line;
    while (std::getline(f, line)) {
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_object() || j.value("event", "") != "round") continue;
      const auto key = std::make_pair(j["fragment"].get<uint32_t>(), j["round"].get<uint64_t>());
      const uint32_t crc = j["global_crc"].get<uint32_t>();
      // A round closed again after a restart (its first closing was not checkpointed) must have
      // produced the same state only if it was made of the same contributions; the later one counts.
      crcs[key] = crc;
    }
    return crcs;
  }

  static void ExpectWorkersHoldTheCoordinatorsState(const fs::path& run) {
    const auto crcs = RoundCrcs(run);
    ASSERT_FALSE(crcs.empty());
    for (int i = 0; i < kWorkers; ++i) {
      const auto r = ReadJson((run / "metrics" / fmt::format("worker-{}-result.json", i)).string());
      const auto rounds = r["rounds_sent"].get<std::vector<uint64_t>>();
      const auto global = r["global_crc"].get<std::vector<uint32_t>>();
      ASSERT_EQ(rounds.size(), global.size());
      for (uint32_t p = 0; p < rounds.size(); ++p) {
        ASSERT_GT(rounds[p], 0u) << "worker " << i;
        auto it = crcs.find({p, rounds[p] - 1});
        ASSERT_NE(it, crcs.end()) << "worker " << i << " applied round " << rounds[p] - 1 << " of fragment "
                                  << p << " that the coordinator never logged";
        EXPECT_EQ(global[p], it->second)
            << "worker " << i << " fragment " << p << " after round " << rounds[p] - 1;
      }
    }
  }

  static fs::path dir_;
};
fs::path ChaosTest::dir_;

TEST_F(ChaosTest, KilledWorkersAndCoordinatorRecoverAndTheRunMatchesAFaultFreeOne) {
  Cluster clean;
  clean.run = dir_ / "clean";
  Run(clean, {});
  if (HasFatalFailure()) return;
  ExpectWorkersHoldTheCoordinatorsState(clean.run);

  // Faults at random steps (seeded): three worker kills, one coordinator kill.
  std::mt19937 rng(11);
  std::vector<std::pair<int, int>> faults;
  std::vector<int> at = {16 + static_cast<int>(rng() % 8), 36 + static_cast<int>(rng() % 8),
                         52 + static_cast<int>(rng() % 8), 68 + static_cast<int>(rng() % 8)};
  faults.push_back({at[0], static_cast<int>(rng() % kWorkers)});
  faults.push_back({at[1], -1});
  faults.push_back({at[2], static_cast<int>(rng() % kWorkers)});
  faults.push_back({at[3], static_cast<int>(rng() % kWorkers)});
  Cluster chaos;
  chaos.run = dir_ / "chaos";
  Run(chaos, faults);
  if (HasFatalFailure()) return;
  EXPECT_EQ(chaos.coordinator_starts, 2);
  int restarts = 0;
  for (int n : chaos.worker_starts) restarts += n - 1;
  EXPECT_GE(restarts, 2) << "a worker chosen to die may already have finished";

  ExpectWorkersHoldTheCoordinatorsState(chaos.run);
  const auto coordinator = ReadJson((chaos.run / "metrics" / "coordinator-result.json").string());
  EXPECT_TRUE(coordinator["restored"].get<bool>());
  // The restarted coordinator's checkpoint loads (it did), and the final one is on disk.
  EXPECT_TRUE(fs::exists(chaos.run / "coordinator-checkpoint" / "coordinator.ckpt"));

  const double clean_loss =
      ReadJson((clean.run / "metrics" / "worker-0-result.json").string())["final_eval_loss"].get<double>();
  const double chaos_loss =
      ReadJson((chaos.run / "metrics" / "worker-0-result.json").string())["final_eval_loss"].get<double>();
  EXPECT_LT(std::abs(chaos_loss - clean_loss) / clean_loss, 0.05)
      << "clean " << clean_loss << ", with faults " << chaos_loss;
  // The figures (ctest -R integration_chaos -V shows them).
  std::printf("chaos: final held-out loss %.4f without faults, %.4f with faults at steps %d %d %d %d\n",
              clean_loss, chaos_loss, at[0], at[1], at[2], at[3]);
}

}  // namespace
}  // namespace lowband
