// `lowband report` (tools/report.h) on synthetic run directories: a ddp run, a DiLoCo run and a
// Streaming DiLoCo run whose metrics end in a partial line, as a run killed mid-write leaves them.
#include "tools/report.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace lowband::tools {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void WriteFile(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

bool GnuplotInstalled() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

class ReportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("lowband-report-test-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override {
    if (!HasFailure()) {
      fs::remove_all(root_);
    }
  }

  static json Summary(const std::string& algo, const std::string& name, std::vector<double> bytes_per_worker,
                      json link) {
    json curve = json::array();
    double per_worker = 0;
    for (int step = 50; step <= 200; step += 50) {
      per_worker += 1000.0 * step;
      curve.push_back({{"step", step},
                       {"eval_loss", 4.0 - step / 100.0},
                       {"wall_seconds", step * 0.5},
                       {"bytes", per_worker},
                       {"tokens", step * 64}});
    }
    return {{"algo", algo},
            {"name", name},
            {"workers", bytes_per_worker.size()},
            {"steps", 200},
            {"tokens", 12800},
            {"codec", algo == "ddp" ? "fp32" : "fp4_e3m0"},
            {"H", 50},
            {"fragments", 4},
            {"tau", 1},
            {"alpha", 0.5},
            {"error_feedback", false},
            {"final_eval_loss", 2.0},
            {"eval_curve", curve},
            {"bytes_up", 1000},
            {"bytes_down", 1000},
            {"bytes_per_worker", bytes_per_worker},
            {"bootstrap_bytes", 4096},
            {"wall_seconds", 100.0},
            {"compute_seconds", 80.0},
            {"stall_seconds", 5.0},
            {"compute_utilization", 0.8},
            {"link", link}};
  }

  // A run directory with summary.json and `workers` worker metrics files of 200 steps.
  fs::path MakeRun(const std::string& dir_name, const json& summary, int workers,
                   const std::string& tail = "") {
    fs::path dir = root_ / dir_name;
    WriteFile(dir / "summary.json", summary.dump(2));
    for (int w = 0; w < workers; ++w) {
      std::string lines;
      for (int step = 1; step <= 200; ++step) {
        lines += json({{"event", "step"},
                       {"step", step},
                       {"loss", 5.0 - step / 100.0 + 0.1 * ((step + w) % 3)},
                       {"tokens", step * 64},
                       {"tokens_per_s", 1000.0},
                       {"bytes_up", step * 10},
                       {"bytes_down", step * 10},
                       {"stall_seconds", 0.0},
                       {"compute_seconds", step * 0.4},
                       {"wall_seconds", step * 0.5}})
                     .dump() +
                 "\n";
        if (step % 50 == 0) {
          lines += json({{"event", "eval"},
                         {"step", step},
                         {"eval_loss", 4.0 - step / 100.0},
                         {"wall_seconds", step * 0.5},
                         {"bytes_up", step * 10},
                         {"bytes_down", step * 10}})
                       .dump() +
                   "\n";
        }
      }
      WriteFile(dir / "metrics" / ("worker-" + std::to_string(w) + ".jsonl"), lines + (w == 0 ? tail : ""));
    }
    return dir;
  }

  fs::path root_;
};

// A link may be absent or null.
const json kNoLink = nullptr;

TEST_F(ReportTest, ComparesRunsAgainstDdp) {
  // Mean bytes per worker: ddp 1,000,000; diloco 40,000 (ratio 0.04 = 1/25); streaming 20,000 (0.02 = 1/50).
  const fs::path ddp = MakeRun("ddp", Summary("ddp", "ddp-baseline", {1e6, 1e6}, kNoLink), 2);
  json diloco_summary =
      Summary("diloco", "diloco-h50", {40000, 40000, 40000, 40000}, {{"rate_mbit", 10}, {"latency_ms", 20}});
  diloco_summary["coordinator"] = {{"rounds_closed", 12}, {"contributions", 48}, {"late_pushes", 0}};
  diloco_summary["global_state_identical"] = true;
  const fs::path diloco = MakeRun("diloco", diloco_summary, 4);
  WriteFile(diloco / "metrics" / "coordinator.jsonl", R"({"event":"status","rounds_closed":5})"
                                                      "\n");
  // Worker 0's file ends in a partial line; worker 1's has garbage in the middle too (added below).
  const fs::path streaming =
      MakeRun("streaming",
              Summary("streaming", "streaming-fp4", {10000, 30000}, {{"rate_mbit", 100}, {"latency_ms", 20}}),
              2, R"({"event":"step","step":201,"lo)");
  {
    std::ofstream(streaming / "metrics" / "worker-1.jsonl", std::ios::app) << "not json at all\n";
    std::string coord;
    for (int r = 0; r < 8; ++r) {
      coord += json({{"event", "round"},
                     {"fragment", r % 4},
                     {"round", r},
                     {"contributors", 2},
                     {"wall_seconds", r * 10.0},
                     {"bytes_in", 100},
                     {"bytes_out", 200}})
                   .dump() +
               "\n";
    }
    WriteFile(streaming / "metrics" / "coordinator.jsonl", coord + "{\"event\":\"rou");
  }

  ReportOptions options;
  options.runs = {ddp, diloco, streaming};
  options.out = root_ / "out";
  options.title = "Codec comparison";
  auto result = WriteReport(options);
  ASSERT_TRUE(result.ok()) << result.status().ToString();

  EXPECT_EQ(result->bad_metrics_lines, 3);  // partial last line, garbage line, partial coordinator line
  ASSERT_EQ(result->runs.size(), 3u);
  EXPECT_EQ(result->runs[2].bad_metrics_lines, 3);
  EXPECT_EQ(result->runs[2].train_loss.size(), 200u);
  ASSERT_TRUE(result->runs[2].coordinator.has_value());
  EXPECT_EQ(result->runs[2].coordinator->rounds, 8);  // from the round events
  // The diloco summary carries the coordinator's final counters: they win over its status lines.
  ASSERT_TRUE(result->runs[1].coordinator.has_value());
  EXPECT_EQ(result->runs[1].coordinator->rounds, 12);

  const std::string md = ReadFile(options.out / "report.md");
  EXPECT_THAT(md, HasSubstr("# Codec comparison"));
  for (const char* name : {"ddp-baseline", "diloco-h50", "streaming-fp4"}) {
    EXPECT_THAT(md, HasSubstr(name));
  }
  EXPECT_THAT(md, HasSubstr("| 0.04 (1/25) |"));
  EXPECT_THAT(md, HasSubstr("| 0.02 (1/50) |"));
  EXPECT_THAT(md, HasSubstr("19.5 KiB"));  // 20,000 bytes
  EXPECT_THAT(md, HasSubstr("3 skipped"));
  EXPECT_THAT(md, HasSubstr("| 12 (4 contributions/round) |"));
  EXPECT_THAT(md, HasSubstr("global state identical"));

  const json& rows = result->table["runs"];
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(result->table["baseline"], "ddp-baseline");
  EXPECT_DOUBLE_EQ(rows[0]["bytes_ratio_to_ddp"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(rows[1]["bytes_ratio_to_ddp"].get<double>(), 0.04);
  EXPECT_DOUBLE_EQ(rows[2]["bytes_ratio_to_ddp"].get<double>(), 0.02);
  EXPECT_DOUBLE_EQ(rows[2]["bytes_per_worker_mean"].get<double>(), 20000.0);

  // Scripts and data stay for the user to tweak, whether or not gnuplot is there.
  // Runs over links of two rates also get one training-loss-vs-wall plot per rate.
  const std::vector<std::string> plots = {"eval_loss_vs_step",          "eval_loss_vs_bytes",
                                          "eval_loss_vs_wall",          "train_loss_vs_step",
                                          "bytes_per_worker",           "train_loss_vs_wall_10mbit",
                                          "train_loss_vs_wall_100mbit", "utilization_vs_bandwidth"};
  for (const std::string& p : plots) {
    EXPECT_TRUE(fs::exists(options.out / (p + ".gp"))) << p;
  }
  EXPECT_TRUE(fs::exists(options.out / "bytes_per_worker.dat"));

  if (!GnuplotInstalled()) {
    GTEST_SKIP() << "gnuplot is not installed (deploy/install-deps.sh): PNGs not checked";
  }
  EXPECT_FALSE(result->plots_skipped) << result->plots_skipped_reason;
  EXPECT_EQ(result->plots.size(), plots.size());
  for (const std::string& p : plots) {
    const fs::path png = options.out / (p + ".png");
    const std::string bytes = ReadFile(png);
    ASSERT_GE(bytes.size(), 8u) << png;
    EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << png;
    EXPECT_THAT(md, HasSubstr("(" + p + ".png)"));
  }
}

// --simulate: the simulator runs with each run's measured step time over its link. A link so fast
// that communication costs nothing must predict full utilization; a DiLoCo run whose every sync
// moves the whole fp32 model over a slow link must predict the hand-computed value; a run without
// a link cannot be simulated and says why.
TEST_F(ReportTest, SimulateSetsMeasuredBesideSimulatedUtilization) {
  json fast =
      Summary("streaming", "fast", {1, 1, 1, 1}, {{"rate_mbit", 1e7}, {"latency_ms", 0}, {"kind", "shaper"}});
  fast["step_seconds"] = 0.1;
  fast["parameters"] = 100000;
  fast["codec_block"] = 64;
  fast["fragment_elements"] = {25000, 25000, 25000, 25000};
  json slow = Summary("diloco", "slow", {1, 1}, {{"rate_mbit", 8}, {"latency_ms", 0}, {"kind", "shaper"}});
  slow["codec"] = "fp32";
  slow["steps"] = 100;
  slow["step_seconds"] = 0.1;
  slow["parameters"] = 1000000;  // 4 MB each way per sync: 4 s up + 4 s down at 8 Mbit/s
  slow["worker_step_seconds"] = {0.1, 0.1};
  // The same run with the exchange's host time it measured: 0.25 s to encode and 0.25 s to apply on
  // the worker, 1 s from the round's close to its update at the coordinator: 1.5 s more per sync.
  json hosted = slow;
  hosted["name"] = "hosted";
  hosted["encode_seconds"] = 0.25;
  hosted["apply_seconds"] = 0.25;
  hosted["coordinator"] = {{"rounds_closed", 2}, {"round_seconds", 1.0}};
  const fs::path a = MakeRun("fast", fast, 4), b = MakeRun("slow", slow, 2);
  const fs::path none = MakeRun("none", Summary("ddp", "none", {1, 1}, kNoLink), 2);
  const fs::path c = MakeRun("hosted", hosted, 2);
  ReportOptions options;
  options.runs = {a, b, none, c};
  options.out = root_ / "sim-out";
  options.gnuplot = "";
  options.simulate = true;
  auto result = WriteReport(options);
  ASSERT_TRUE(result.ok()) << result.status().message();
  ASSERT_TRUE(result->runs[0].simulated.has_value());
  EXPECT_NEAR(result->runs[0].simulated->utilization, 1.0, 1e-3);
  ASSERT_TRUE(result->runs[1].simulated.has_value());
  EXPECT_TRUE(result->runs[1].simulated->per_worker_steps);
  // H = 50 steps of 0.1 s, then 8 s of exchange (the engine adds 4 one-way latencies, here 0): 5 / 13.
  // The last sync at step 100 is part of the run too: two syncs, 10 s of compute in 26 s.
  EXPECT_NEAR(result->runs[1].simulated->utilization, 10.0 / 26.0, 0.01);
  EXPECT_FALSE(result->runs[2].simulated.has_value());
  ASSERT_TRUE(result->runs[3].simulated.has_value());
  EXPECT_NEAR(result->runs[3].simulated->utilization, 10.0 / 29.0, 0.01);
  const std::string md = ReadFile(options.out / "report.md");
  EXPECT_THAT(md, HasSubstr("## Measured vs simulated utilization"));
  EXPECT_THAT(md, HasSubstr("| slow | diloco | fp32 |"));
  EXPECT_THAT(md, HasSubstr("| 100.0 ms (100.0..100.0) |"));  // the run's step_seconds, per worker
  // The plot's data: a curve per series and each run's own simulated point (the table's value).
  const std::string sim_dat = ReadFile(options.out / "utilization_vs_bandwidth.sim.dat");
  EXPECT_THAT(sim_dat, HasSubstr("# simulated for the run itself\n"));
  for (size_t i : {1, 3}) {
    EXPECT_THAT(sim_dat, HasSubstr(fmt::format("\n8 {:.6g}\n", result->runs[i].simulated->utilization)));
  }
  const auto no_link = SimulateRun(result->runs[2]);
  EXPECT_FALSE(no_link.ok());
  EXPECT_THAT(no_link.status().message(), HasSubstr("no link"));
  EXPECT_EQ(result->table["runs"][1]["simulated_utilization"].get<double>(),
            result->runs[1].simulated->utilization);
}

// --ddp-calibration: the host time per byte that reproduces an unshaped ddp run's utilization is
// found (here 20 ns per byte sent: 0.12 s per all-reduce of 1.5 x 4 MB after a 0.5 s step) and
// every ddp run is simulated with it; a shaped run is refused as a calibration.
TEST_F(ReportTest, DdpCalibrationMeasuresTheHostCostAndSimulatesDdpWithIt) {
  auto ddp = [&](const std::string& name, json link, double utilization) {
    json s = Summary("ddp", name, {1, 1, 1, 1}, std::move(link));
    s["steps"] = 10;
    s["step_seconds"] = 0.5;
    s["parameters"] = 1000000;
    s["compute_utilization"] = utilization;
    return MakeRun(name, s, 4);
  };
  const fs::path calibration = ddp("unshaped", kNoLink, 0.5 / 0.62);
  const fs::path shaped =
      ddp("ddp-100mbit", {{"rate_mbit", 100}, {"latency_ms", 5}, {"kind", "shaper"}}, 0.5 / 1.13);
  auto calibration_run = LoadRun(calibration);
  ASSERT_TRUE(calibration_run.ok()) << calibration_run.status().message();
  auto host = CalibrateHostCost(*calibration_run);
  ASSERT_TRUE(host.ok()) << host.status().message();
  EXPECT_NEAR(*host, 20e-9, 1e-12);

  ReportOptions options;
  options.runs = {shaped};
  options.out = root_ / "calibrated";
  options.gnuplot = "";
  options.simulate = true;
  options.ddp_calibration = calibration;
  auto result = WriteReport(options);
  ASSERT_TRUE(result.ok()) << result.status().message();
  ASSERT_TRUE(result->runs[0].simulated.has_value());
  // Wire 0.51 s (6 x 5 ms + 1.5 x 32 Mbit / 100 Mbit/s) + host 0.12 s after each 0.5 s step.
  EXPECT_NEAR(result->runs[0].simulated->utilization, 0.5 / 1.13, 1e-6);
  EXPECT_THAT(ReadFile(options.out / "report.md"), HasSubstr("20.00 ms per MB"));

  auto shaped_run = LoadRun(shaped);
  ASSERT_TRUE(shaped_run.ok());
  const auto refused = CalibrateHostCost(*shaped_run);
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("unshaped"));
}

TEST_F(ReportTest, OneRunWritesIntoTheRunDirectory) {
  json summary = Summary("streaming", "", {5000}, kNoLink);
  summary.erase("name");
  summary.erase("codec");
  summary.erase("compute_utilization");
  const fs::path run = MakeRun("lonely-run", summary, 1);
  // `lowband coordinator` logs cumulative status lines rather than one line per round.
  WriteFile(run / "metrics" / "coordinator.jsonl",
            "{\"event\":\"status\",\"rounds_closed\":3,\"late_pushes\":1}\n"
            "{\"event\":\"status\",\"rounds_closed\":7,\"late_pushes\":2}\n");
  ReportOptions options;
  options.runs = {run};
  auto result = WriteReport(options);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->report_md, run / "report.md");
  const std::string md = ReadFile(run / "report.md");
  EXPECT_THAT(md, HasSubstr("lowband report: lonely-run"));  // name falls back to the directory's
  EXPECT_THAT(md, Not(HasSubstr("bytes vs ddp")));           // no ddp run: no ratio column
  EXPECT_TRUE(result->table["runs"][0]["compute_utilization"].is_null());
  ASSERT_TRUE(result->runs[0].coordinator.has_value());
  EXPECT_EQ(result->runs[0].coordinator->rounds, 7);
  EXPECT_THAT(md, HasSubstr("| 7, 2 late pushes |"));
  EXPECT_THAT(md, Not(HasSubstr("global state identical")));      // no run says
  EXPECT_FALSE(fs::exists(run / "utilization_vs_bandwidth.gp"));  // one link rate at most
}

TEST_F(ReportTest, MissingGnuplotIsNotAnError) {
  const fs::path run = MakeRun("run", Summary("diloco", "d", {100, 100}, kNoLink), 2);
  ReportOptions options;
  options.runs = {run};
  options.gnuplot = (root_ / "no-such-gnuplot").string();
  auto result = WriteReport(options);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_TRUE(result->plots_skipped);
  EXPECT_THAT(result->plots_skipped_reason, HasSubstr("not found"));
  EXPECT_TRUE(result->plots.empty());
  const std::string md = ReadFile(run / "report.md");
  EXPECT_THAT(md, HasSubstr("Plots skipped"));
  EXPECT_THAT(md, HasSubstr("deploy/install-deps.sh"));
  EXPECT_THAT(md, HasSubstr("| d | diloco |"));
  EXPECT_TRUE(fs::exists(run / "eval_loss_vs_step.gp"));
  EXPECT_FALSE(fs::exists(run / "eval_loss_vs_step.png"));
}

TEST_F(ReportTest, RunWithoutSummaryNamesTheFile) {
  fs::create_directories(root_ / "empty" / "metrics");
  auto run = LoadRun(root_ / "empty");
  ASSERT_FALSE(run.ok());
  EXPECT_EQ(run.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(run.status().message(), HasSubstr("summary.json"));
  EXPECT_THAT(run.status().message(), HasSubstr("lowband launch"));

  ReportOptions options;
  options.runs = {root_ / "empty"};
  auto result = WriteReport(options);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("summary.json"));

  auto missing_dir = LoadRun(root_ / "nope");
  ASSERT_FALSE(missing_dir.ok());
  EXPECT_THAT(missing_dir.status().message(), HasSubstr("no such run directory"));
}

TEST_F(ReportTest, MalformedSummaryNamesTheField) {
  struct Case {
    std::string field;
    json value;  // null: erase the field
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"workers", "four", "\"workers\" must be an integer, got string"},
      {"wall_seconds", "slow", "\"wall_seconds\" must be a number"},
      {"wall_seconds", nullptr, "required field \"wall_seconds\""},
      {"algo", 3, "\"algo\" must be a string"},
      {"bytes_per_worker", {1, "x"}, "\"bytes_per_worker[1]\" must be a number"},
      {"eval_curve", json::array({{{"step", 1}, {"eval_loss", "low"}}}), "\"eval_curve[0].eval_loss\""},
      {"link", {{"rate_mbit", "fast"}}, "\"link.rate_mbit\""},
      {"error_feedback", "no", "\"error_feedback\" must be true or false"},
      {"worker_step_seconds", {0.1, "x"}, "\"worker_step_seconds[1]\" must be a number, got string"},
      {"fragment_elements", {10, -1}, "\"fragment_elements[1]\" must be an element count, got number -1"},
      {"fragment_elements", {10, "x"}, "\"fragment_elements[1]\" must be a number"},
  };
  for (const Case& c : cases) {
    json summary = Summary("streaming", "s", {1, 2}, kNoLink);
    if (c.value.is_null()) {
      summary.erase(c.field);
    } else {
      summary[c.field] = c.value;
    }
    const fs::path dir = root_ / ("bad-" + c.field);
    WriteFile(dir / "summary.json", summary.dump());
    auto run = LoadRun(dir);
    ASSERT_FALSE(run.ok()) << c.field;
    EXPECT_THAT(run.status().message(), HasSubstr(c.expected)) << c.field;
    EXPECT_THAT(run.status().message(), HasSubstr("summary.json")) << c.field;
  }

  WriteFile(root_ / "truncated" / "summary.json", R"({"algo": "ddp", "eval_cu)");
  auto run = LoadRun(root_ / "truncated");
  ASSERT_FALSE(run.ok());
  EXPECT_THAT(run.status().message(), HasSubstr("summary.json: not valid JSON"));
}

TEST_F(ReportTest, BadMetricsLinesAreCountedNotFatal) {
  const fs::path run = MakeRun("run", Summary("diloco", "d", {100}, kNoLink), 1, "{\"event\":\"st");
  std::ofstream(run / "metrics" / "worker-0.jsonl", std::ios::app) << "\n[1,2,3]\n\n";
  auto loaded = LoadRun(run);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  // The partial line, glued to nothing, and a JSON array (not an object); blank lines are not counted.
  EXPECT_EQ(loaded->bad_metrics_lines, 2);
  EXPECT_EQ(loaded->worker_metrics_files, 1);
  EXPECT_EQ(loaded->train_loss.size(), 200u);
  EXPECT_DOUBLE_EQ(loaded->train_loss.front().loss, 5.0 - 0.01 + 0.1 * (1 % 3));
}

TEST_F(ReportTest, EmptyEvalCurveFallsBackToWorkerEvalEvents) {
  json summary = Summary("diloco", "d", {100, 100}, kNoLink);
  summary["eval_curve"] = json::array();
  const fs::path run = MakeRun("run", summary, 2);
  auto loaded = LoadRun(run);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ASSERT_EQ(loaded->eval_curve.size(), 4u);
  EXPECT_EQ(loaded->eval_curve[1].step, 100);
  EXPECT_DOUBLE_EQ(loaded->eval_curve[1].eval_loss, 3.0);
  EXPECT_DOUBLE_EQ(loaded->eval_curve[1].bytes.value(), 2000.0);
}

// ---------------------------------------------------------------------------------------------------
// Split-learning client runs (`lowband split-client --out DIR`, tools/report_split.cc).

// summary.json of a classify split-client run as tools/cmd_split.cc writes it.
json SplitSummary(const std::string& codec, int bits, double accuracy, double bytes_per_example,
                  double compression) {
  json curve = json::array();
  for (int step = 10; step <= 30; step += 10) {
    curve.push_back({{"event", "eval"},
                     {"step", step},
                     {"loss", 0.6 - step / 100.0},
                     {"accuracy", accuracy - (30 - step) / 200.0},
                     {"examples", 256},
                     {"wall_seconds", step * 0.4}});
  }
  const bool amaq = codec == "amaq";
  const double mean_bits = codec == "fp32" ? 32.0 : (amaq ? 4.1 : bits);
  return {{"task", "classify"},
          {"codec", codec},
          {"bits", bits},
          {"grad_codec", "follow"},
          {"cut", 2},
          {"lora_rank", 8},
          {"steps", 30},
          {"examples", 480},
          {"final_eval_loss", 0.3},
          {"final_accuracy", accuracy},
          {"eval_examples", 256},
          {"eval_curve", curve},
          {"bits_curve", json::array({{{"step", 10}, {"mean_bits", 6.0}, {"target", 6.0}},
                                      {{"step", 30}, {"mean_bits", 4.0}, {"target", 4.0}}})},
          {"mean_bits_up", mean_bits},
          {"mean_bits_down", mean_bits},
          {"final_bits_histogram", amaq ? json({10, 20, 30, 40, 20, 8, 0}) : json({0, 0, 0, 0, 0, 0, 0})},
          {"bytes_up", bytes_per_example * 240},
          {"bytes_down", bytes_per_example * 240},
          {"bitmap_bytes_up", amaq ? 1200 : 0},
          {"bitmap_bytes_down", amaq ? 1200 : 0},
          {"bytes_per_example", bytes_per_example},
          {"fp32_bytes_per_example", 131072.0},
          {"compression_vs_fp32", compression},
          {"reconnects", 0},
          {"wall_seconds", 12.5},
          {"server_adapters", ""},
          {"client_adapters", ""}};
}

// A split run directory: summary.json and metrics/split-client.jsonl (train lines every 5 steps with
// the AMAQ target schedule 8 -> 4, eval lines), the last line cut short as a killed run leaves it.
fs::path MakeSplitRun(const fs::path& dir, const json& summary) {
  WriteFile(dir / "summary.json", summary.dump(2));
  std::string lines;
  for (int step = 5; step <= 30; step += 5) {
    const double target = std::max(4.0, 8.0 - step / 5.0);
    lines += json({{"event", "train"},
                   {"step", step},
                   {"loss", 0.7 - step / 100.0},
                   {"accuracy", 0.5 + step / 100.0},
                   {"bits_up", target + 0.1},
                   {"bits_down", target + 0.1},
                   {"target_bits", target},
                   {"lambda", 0.01},
                   {"bits_histogram", {0, 0, 0, 10, 20, 98, 0}},
                   {"bytes_up", step * 1000},
                   {"bytes_down", step * 1000},
                   {"bytes_per_example", 2000.0},
                   {"examples_per_second", 40.0},
                   {"wall_seconds", step * 0.4}})
                 .dump() +
             "\n";
    if (step % 10 == 0) {
      lines += json({{"event", "eval"}, {"step", step}, {"loss", 0.5}, {"accuracy", 0.9}}).dump() + "\n";
    }
  }
  WriteFile(dir / "metrics" / "split-client.jsonl", lines + R"({"event":"train","st)");
  return dir;
}

TEST_F(ReportTest, SplitRunsAgainstFp32) {
  // fp32 at 95.00%, fixed 4-bit at 93.00% (-2.00 pt), AMAQ 4-bit budget at 94.50% (-0.50 pt).
  const fs::path fp32 = MakeSplitRun(root_ / "spam-fp32", SplitSummary("fp32", 4, 0.95, 131500, 0.9968));
  const fs::path fixed = MakeSplitRun(root_ / "spam-fixed4", SplitSummary("fixed", 4, 0.93, 16800, 7.8));
  const fs::path amaq = MakeSplitRun(root_ / "spam-amaq4", SplitSummary("amaq", 4, 0.945, 17500, 7.49));

  ReportOptions options;
  options.runs = {fp32, fixed, amaq};
  options.out = root_ / "split-report";
  auto result = WriteReport(options);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_TRUE(result->runs.empty());  // no training run
  EXPECT_EQ(result->bad_metrics_lines, 3);

  const std::string md = ReadFile(options.out / "report.md");
  EXPECT_THAT(md, HasSubstr("lowband report: 3 split-learning runs"));
  EXPECT_THAT(md, HasSubstr("held-out accuracy"));
  EXPECT_THAT(md, HasSubstr("| spam-fp32 | classify | fp32 | 30 | 95.00% | baseline | 32.00 / 32.00 |"));
  EXPECT_THAT(md,
              HasSubstr("| spam-fixed4 | classify | fixed 4-bit | 30 | 93.00% | -2.00 pt | 4.00 / 4.00 |"));
  EXPECT_THAT(
      md, HasSubstr("| spam-amaq4 | classify | amaq 4-bit budget | 30 | 94.50% | -0.50 pt | 4.10 / 4.10 |"));
  EXPECT_THAT(md, HasSubstr("| 16.4 KiB | 0 B (0%) | 7.80x | 12.5 |"));    // fixed: 16,800 bytes/example
  EXPECT_THAT(md, HasSubstr("| 17.1 KiB | 2.34 KiB (0.029%) | 7.49x |"));  // 2,400 of 8.4 MB are bit maps
  EXPECT_THAT(md, HasSubstr("| 1.00x |"));                                 // fp32 pays its headers

  const json& table = result->table;
  EXPECT_EQ(table["kind"], "split");
  EXPECT_EQ(table["baselines"]["classify"], "spam-fp32");
  EXPECT_EQ(table["report"], (options.out / "report.md").string());
  const json& rows = table["runs"];
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0]["name"], "spam-fp32");
  EXPECT_DOUBLE_EQ(rows[0]["delta_vs_fp32"].get<double>(), 0.0);
  EXPECT_NEAR(rows[1]["delta_vs_fp32"].get<double>(), -2.0, 1e-9);
  EXPECT_NEAR(rows[2]["delta_vs_fp32"].get<double>(), -0.5, 1e-9);
  EXPECT_EQ(rows[2]["delta_unit"], "points");
  EXPECT_EQ(rows[2]["codec_label"], "amaq 4-bit budget");
  EXPECT_EQ(rows[2]["fp32_baseline"], "spam-fp32");
  EXPECT_DOUBLE_EQ(rows[2]["final_accuracy"].get<double>(), 0.945);
  EXPECT_DOUBLE_EQ(rows[2]["compression_vs_fp32"].get<double>(), 7.49);
  EXPECT_DOUBLE_EQ(rows[2]["bytes_per_example"].get<double>(), 17500);
  EXPECT_DOUBLE_EQ(rows[2]["bitmap_bytes"].get<double>(), 2400);
  EXPECT_DOUBLE_EQ(rows[1]["mean_bits_up"].get<double>(), 4.0);
  EXPECT_EQ(rows[2]["final_bits_histogram"].size(), 7u);
  EXPECT_EQ(rows[0]["bad_metrics_lines"], 1);

  // Scripts and data whether or not gnuplot is there: bits plot for the AMAQ run only.
  const std::vector<std::string> plots = {"split_classify_vs_step", "split_bits_run2-spam-amaq4",
                                          "split_bits_histogram", "split_classify_vs_bytes"};
  for (const std::string& p : plots) {
    EXPECT_TRUE(fs::exists(options.out / (p + ".gp"))) << p;
  }
  EXPECT_FALSE(fs::exists(options.out / "split_bits_run1-spam-fixed4.gp"));
  const std::string train = ReadFile(options.out / "run2-spam-amaq4.train.dat");
  EXPECT_THAT(train, HasSubstr("\n5 0.65 55 7.1 7.1 7 2000 2\n"));  // from the jsonl, not bits_curve
  EXPECT_THAT(ReadFile(options.out / "split_bits_histogram.dat"), HasSubstr("\n5 40\n"));
  EXPECT_THAT(ReadFile(options.out / "split_classify_vs_bytes.dat"), HasSubstr("94.5 \"spam-amaq4\""));

  if (!GnuplotInstalled()) {
    GTEST_SKIP() << "gnuplot is not installed (deploy/install-deps.sh): PNGs not checked";
  }
  EXPECT_FALSE(result->plots_skipped) << result->plots_skipped_reason;
  EXPECT_EQ(result->plots.size(), plots.size()) << ::testing::PrintToString(result->plot_notes);
  for (const std::string& p : plots) {
    const std::string bytes = ReadFile(options.out / (p + ".png"));
    ASSERT_GE(bytes.size(), 8u) << p;
    EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << p;
    EXPECT_THAT(md, HasSubstr("(" + p + ".png)"));
  }
}

// An lm run: perplexity, its change against the fp32 run in %, and without metrics/ the bits plot
// comes from summary.json bits_curve.
TEST_F(ReportTest, SplitLmRunsComparePerplexity) {
  json base = SplitSummary("fp32", 4, 0, 131072, 1.0);
  json amaq = SplitSummary("amaq", 4, 0, 20000, 6.4);
  for (json* s : {&base, &amaq}) {
    s->erase("final_accuracy");
    (*s)["task"] = "lm";
    for (json& e : (*s)["eval_curve"]) {
      e.erase("accuracy");
      e["perplexity"] = std::exp(e["loss"].get<double>());
    }
  }
  base["final_perplexity"] = 10.0;
  amaq["final_perplexity"] = 11.0;
  const fs::path a = MakeSplitRun(root_ / "lm-fp32", base);
  const fs::path b = root_ / "lm-amaq4";
  WriteFile(b / "summary.json", amaq.dump());
  ReportOptions options;
  options.runs = {a, b};
  options.out = root_ / "lm-report";
  options.gnuplot = "";
  auto result = WriteReport(options);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  const std::string md = ReadFile(options.out / "report.md");
  EXPECT_THAT(md, HasSubstr("held-out perplexity"));
  EXPECT_THAT(md, HasSubstr("| lm-amaq4 | lm | amaq 4-bit budget | 30 | 11.000 | +10.0% |"));
  EXPECT_THAT(md, HasSubstr("no metrics/split-client.jsonl (bits plot from summary.json bits_curve)"));
  EXPECT_NEAR(result->table["runs"][1]["delta_vs_fp32"].get<double>(), 10.0, 1e-9);
  EXPECT_EQ(result->table["runs"][1]["delta_unit"], "percent");
  EXPECT_THAT(ReadFile(options.out / "run1-lm-amaq4.train.dat"), HasSubstr("\n30 ? ? 4 ? 4 ? ?\n"));
  EXPECT_TRUE(fs::exists(options.out / "split_lm_vs_step.gp"));
  EXPECT_TRUE(fs::exists(options.out / "split_bits_run1-lm-amaq4.gp"));
}

// Three seeds of fp32, fixed 4-bit and AMAQ: the per-seed rows pair with the fp32 run of their own
// seed, and the "Across seeds" section gives mean ± sd and the paired AMAQ − fixed differences.
TEST_F(ReportTest, SplitRunsOfSeveralSeedsArePairedBySeed) {
  // accuracy by seed: fp32 90/92/94, fixed 88/91/92, AMAQ 89/90/94 -> AMAQ - fixed: +1, -1, +2.
  const std::vector<std::tuple<std::string, double, double, double>> codecs = {
      {"fp32", 0.90, 0.92, 0.94}, {"fixed", 0.88, 0.91, 0.92}, {"amaq", 0.89, 0.90, 0.94}};
  ReportOptions options;
  for (const auto& [codec, a1, a2, a3] : codecs) {
    const double acc[] = {a1, a2, a3};
    for (int seed = 1; seed <= 3; ++seed) {
      json summary = SplitSummary(codec, 4, acc[seed - 1], codec == "fp32" ? 131072 : 17000, 7.7);
      summary["seed"] = seed;
      options.runs.push_back(MakeSplitRun(root_ / fmt::format("spam-{}-s{}", codec, seed), summary));
    }
  }
  // AMAQ with the gradients' own gates at the budget (90/92/93: +2, +1, +1 against fixed) is paired
  // with fixed 4-bit too; own gates at another budget (3 bits) are not comparable and are not paired.
  for (const auto& [grad_bits, accs] :
       {std::pair<int, std::array<double, 3>>{4, {0.90, 0.92, 0.93}}, {3, {0.80, 0.80, 0.80}}}) {
    for (int seed = 1; seed <= 3; ++seed) {
      json summary = SplitSummary("amaq", 4, accs[static_cast<size_t>(seed - 1)], 17000, 7.7);
      summary["seed"] = seed;
      summary["grad_codec"] = "amaq";
      summary["grad_bits"] = grad_bits;
      options.runs.push_back(
          MakeSplitRun(root_ / fmt::format("spam-amaq-gamaq{}-s{}", grad_bits, seed), summary));
    }
  }
  options.out = root_ / "seeds-report";
  options.gnuplot = "";
  auto result = WriteReport(options);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  const std::string md = ReadFile(options.out / "report.md");
  // Seed 2's fixed run is set against seed 2's fp32 run (92%), not the first fp32 run (90%).
  EXPECT_THAT(md, HasSubstr("| spam-fixed-s2 | classify | fixed 4-bit | 30 | 91.00% | -1.00 pt |"));
  EXPECT_THAT(md, HasSubstr("## Across seeds"));
  EXPECT_THAT(md, HasSubstr("| classify | fp32 | 1,2,3 | 92.00 ± 2.00% | 90.00 .. 94.00 | — |"));
  EXPECT_THAT(
      md, HasSubstr("| classify | fixed 4-bit | 1,2,3 | 90.33 ± 2.08% | 88.00 .. 92.00 | -1.67 ± 0.58 pt |"));
  EXPECT_THAT(
      md, HasSubstr(
              "| classify | amaq 4-bit budget | fixed 4-bit | 3 | +0.67 ± 1.53 pt | 0.88 pt | 2 / 0 / 1 |"));
  EXPECT_THAT(md,
              HasSubstr("| classify | amaq 4-bit budget, grads amaq | fixed 4-bit | 3 | +1.33 ± 0.58 pt |"));
  EXPECT_THAT(md, HasSubstr("amaq 4-bit budget, grads amaq 3-bit"));
  const json& seeds = result->table["seeds"];
  ASSERT_EQ(seeds["groups"].size(), 5u);
  EXPECT_NEAR(seeds["groups"][2]["metric_mean"].get<double>(), 91.0, 1e-9);
  EXPECT_NEAR(seeds["groups"][2]["delta_vs_fp32_mean"].get<double>(), -1.0, 1e-9);
  ASSERT_EQ(seeds["amaq_vs_fixed"].size(), 2u);
  EXPECT_NEAR(seeds["amaq_vs_fixed"][1]["delta_mean"].get<double>(), 4.0 / 3, 1e-9);
  EXPECT_NEAR(seeds["amaq_vs_fixed"][0]["delta_mean"].get<double>(), 2.0 / 3, 1e-9);
  EXPECT_EQ(seeds["amaq_vs_fixed"][0]["amaq_better"], 2);
  EXPECT_EQ(seeds["amaq_vs_fixed"][0]["amaq_worse"], 1);
  EXPECT_EQ(result->table["runs"][4]["seed"], 2);

  // Runs of one seed each: no "Across seeds" section.
  ReportOptions single;
  single.runs = {options.runs[0], options.runs[3], options.runs[6]};
  single.out = root_ / "one-seed-report";
  single.gnuplot = "";
  auto one = WriteReport(single);
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  EXPECT_THAT(ReadFile(single.out / "report.md"), Not(HasSubstr("Across seeds")));
  EXPECT_FALSE(one->table.contains("seeds"));
}

TEST_F(ReportTest, SplitSummaryMissingFieldNamesFileAndField) {
  struct Case {
    std::string field;
    json value;  // null: erase the field
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"bytes_per_example", nullptr, "required field \"bytes_per_example\""},
      {"final_accuracy", nullptr, "required field \"final_accuracy\""},  // classify needs it
      {"task", nullptr, "required field \"task\""},  // still a split run: final_bits_histogram is there
      {"steps", "many", "\"steps\" must be an integer"},
      {"final_bits_histogram", {1, "x"}, "\"final_bits_histogram[1]\" must be a number"},
      {"eval_curve", json::array({{{"step", 3}}}), "required field \"eval_curve[0].loss\""},
  };
  for (const Case& c : cases) {
    json summary = SplitSummary("amaq", 4, 0.9, 17000, 7.5);
    if (c.value.is_null()) {
      summary.erase(c.field);
    } else {
      summary[c.field] = c.value;
    }
    const fs::path dir = MakeSplitRun(root_ / ("bad-" + c.field), summary);
    ReportOptions options;
    options.runs = {dir};
    options.gnuplot = "";
    auto result = WriteReport(options);
    ASSERT_FALSE(result.ok()) << c.field;
    EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(result.status().message(), HasSubstr((dir / "summary.json").string())) << c.field;
    EXPECT_THAT(result.status().message(), HasSubstr(c.expected)) << c.field;
    if (c.value.is_null()) {
      EXPECT_THAT(result.status().message(), HasSubstr("lowband split-client")) << c.field;
    }
    EXPECT_THAT(result.status().message(), Not(HasSubstr("\"algo\""))) << c.field;
  }
}

// A split run is not a training run: LoadRun says so instead of asking for "algo", and one report
// does not mix the two kinds.
TEST_F(ReportTest, SplitAndTrainingRunsAreReportedApart) {
  const fs::path split = MakeSplitRun(root_ / "split", SplitSummary("amaq", 4, 0.9, 17000, 7.5));
  const fs::path training = MakeRun("ddp", Summary("ddp", "ddp", {1, 1}, kNoLink), 2);
  auto loaded = LoadRun(split);
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(loaded.status().message(), HasSubstr("split-learning client run"));

  ReportOptions options;
  options.runs = {training, split};
  options.out = root_ / "mixed";
  options.gnuplot = "";
  auto result = WriteReport(options);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(), HasSubstr("separate calls"));
  EXPECT_THAT(result.status().message(), HasSubstr(split.string()));
  EXPECT_FALSE(fs::exists(options.out / "report.md"));

  // One split run alone writes into its own directory.
  options.runs = {split};
  options.out.clear();
  auto alone = WriteReport(options);
  ASSERT_TRUE(alone.ok()) << alone.status().ToString();
  EXPECT_EQ(alone->report_md, split / "report.md");
  EXPECT_THAT(ReadFile(split / "report.md"), HasSubstr("lowband report: split"));
  EXPECT_THAT(ReadFile(split / "report.md"),
              HasSubstr("| split | classify | amaq 4-bit budget | 30 | 90.00% | — |"));
}

TEST(HumanBytesTest, Units) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1536), "1.50 KiB");
  EXPECT_EQ(HumanBytes(20000), "19.5 KiB");
  EXPECT_EQ(HumanBytes(1e6), "977 KiB");
  EXPECT_EQ(HumanBytes(12.5 * 1024 * 1024), "12.5 MiB");
}

}  // namespace
}  // namespace lowband::tools
