// `lowband bench load` (tools/bench_load.h) end to end on a small scale: a real coordinator process
// (the lowband executable CTest names in LOWBAND_BIN) and a few synthetic workers over loopback gRPC.
#include "tools/bench_load.h"

#include <cstdlib>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tools/command.h"

namespace lowband::tools {
namespace {

using ::testing::HasSubstr;

std::string LowbandBin() {
  const char* b = std::getenv("LOWBAND_BIN");
  return b != nullptr ? b : "lowband";
}

LoadBenchOptions Small() {
  LoadBenchOptions o;
  o.workers = {2, 4};
  o.rounds = 3;
  o.warmup = 1;
  o.params = 50'000;
  o.fragments = 2;
  o.sample_ms = 20;
  o.round_timeout_s = 60;
  o.self = LowbandBin();
  o.progress = false;
  return o;
}

TEST(BenchLoad, SweepMeasuresEveryRoundOfEveryPoint) {
  const auto o = Small();
  const nlohmann::json r = RunLoadBench(o);
  ASSERT_EQ(r["points"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const auto& p = r["points"][i];
    SCOPED_TRACE(p.dump().substr(0, 2000));
    EXPECT_EQ(p["workers"].get<int>(), o.workers[i]);
    EXPECT_EQ(p["rounds"].get<int>(), o.rounds);
    EXPECT_EQ(p["fragment_rounds"].get<int>(), o.rounds * o.fragments);
    // Every timed fragment round has a positive latency, and so does every call.
    EXPECT_EQ(p["round_latency_seconds"]["count"].get<int>(), o.rounds * o.fragments);
    EXPECT_GT(p["round_latency_seconds"]["min"].get<double>(), 0.0);
    EXPECT_LE(p["round_latency_seconds"]["p50"].get<double>(),
              p["round_latency_seconds"]["p99"].get<double>());
    EXPECT_EQ(p["push_seconds"]["count"].get<int>(), o.rounds * o.fragments * o.workers[i]);
    EXPECT_GT(p["push_seconds"]["min"].get<double>(), 0.0);
    EXPECT_GT(p["rounds_per_second"].get<double>(), 0.0);
    // Each worker sent one payload per fragment round and got one back, all counted.
    const double per_round = r["payload_bytes_per_worker_round"].get<double>();
    EXPECT_DOUBLE_EQ(p["payload_bytes_up"].get<double>(), per_round * o.rounds * o.workers[i]);
    EXPECT_DOUBLE_EQ(p["payload_bytes_down"].get<double>(), per_round * o.rounds * o.workers[i]);
    // The coordinator's memory was sampled over the run, and its own counters agree.
    const auto& m = p["coordinator_rss"];
    EXPECT_FALSE(m["samples"].empty());
    EXPECT_GT(m["first_mib"].get<double>(), 0.0);
    EXPECT_GE(m["max_mib"].get<double>(), m["timed_end_mib"].get<double>());
    EXPECT_GT(m["timed_samples"].get<int>(), 0);
    const auto& c = p["coordinator_counters"];
    ASSERT_TRUE(c.is_object()) << "the coordinator wrote no result file";
    EXPECT_EQ(c["rounds_closed"].get<int>(), (o.warmup + o.rounds) * o.fragments);
    EXPECT_EQ(c["contributions"].get<int>(), (o.warmup + o.rounds) * o.fragments * o.workers[i]);
    EXPECT_EQ(c["late_pushes"].get<int>(), 0);
    EXPECT_EQ(c["refusals"].get<int>(), 0);
  }
  EXPECT_THAT(LoadBenchTable(r), HasSubstr("rounds/s"));
}

// With --checkpoint-every 1 the coordinator writes a checkpoint at every closed round (and once
// more when it stops), and every round still closes with every contribution.
TEST(BenchLoad, CheckpointingCoordinatorWritesOneCheckpointPerClosedRound) {
  LoadBenchOptions o = Small();
  o.workers = {2};
  o.checkpoint_every = 1;
  const nlohmann::json r = RunLoadBench(o);
  EXPECT_EQ(r["checkpoint_every"].get<int>(), 1);
  const auto& c = r["points"][0]["coordinator_counters"];
  ASSERT_TRUE(c.is_object());
  const int closed = (o.warmup + o.rounds) * o.fragments;
  EXPECT_EQ(c["rounds_closed"].get<int>(), closed);
  EXPECT_EQ(c["checkpoints_written"].get<int>(), closed + 1);
  EXPECT_GT(c["checkpoint_last_write_seconds"].get<double>(), 0.0);
}

int ExitCodeOf(const LoadBenchOptions& o) {
  try {
    (void)RunLoadBench(o);
  } catch (const CommandError& e) {
    return e.code;
  }
  return 0;
}

TEST(BenchLoad, BadOptionsAreUsageErrors) {
  auto o = Small();
  o.codec = "fp5";
  EXPECT_EQ(ExitCodeOf(o), 2);
  o = Small();
  o.params = 1;
  EXPECT_EQ(ExitCodeOf(o), 2);
  o = Small();
  o.workers = {};
  EXPECT_EQ(ExitCodeOf(o), 2);
  o = Small();
  o.block = 3;
  EXPECT_EQ(ExitCodeOf(o), 2);
}

TEST(BenchLoad, MissingCoordinatorExecutableIsNamed) {
  auto o = Small();
  o.self = "/nonexistent/lowband";
  try {
    (void)RunLoadBench(o);
    FAIL() << "expected an error";
  } catch (const CommandError& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/lowband"));
  }
}

}  // namespace
}  // namespace lowband::tools
