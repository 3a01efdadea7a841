// `lowband report`: turns run directories written by `lowband launch` into report.md and PNG plots,
// for one run or as a comparison of several.
//
// Input is the run directory contract of DESIGN.md §7: RUN/summary.json (required; algo, eval_curve,
// bytes_per_worker and wall_seconds must be there, every other field may be absent or null),
// RUN/metrics/worker-<i>.jsonl and RUN/metrics/coordinator.jsonl (optional). A metrics line that is
// not a JSON object is skipped and counted, because a run killed mid-write leaves a partial last line;
// a summary that is missing or has a wrong-typed field is an error naming the file and the field.
//
// Runs of `lowband split-client --out DIR` (summary.json with "task" or "final_bits_histogram" and no
// "algo") get a report of their own (tools/report_split.cc): held-out accuracy or perplexity against
// the fp32 run of the same task, bits and bytes per example on the wire, and their plots. One call
// reports training runs or split runs, not both (InvalidArgument naming one of each).
//
// Output, all in OUT (docs/run-outputs.md): report.md (tables + embedded plots), and for each plot a
// gnuplot script NAME.gp, the .dat files it reads and the NAME.png it draws. The scripts and data are
// kept so users can tweak a plot and re-render it with `cd OUT && gnuplot NAME.gp`. gnuplot runs as a
// subprocess; when it is missing the report still has its tables and says how to install it (not an error).
//
// Thread safety: free functions on values; the only shared state touched is spdlog's default logger.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/status.h"

namespace lowband::tools {

// One point of summary.json's eval_curve.
struct EvalPoint {
  int64_t step = 0;
  double eval_loss = 0;
  std::optional<double> wall_seconds;
  std::optional<double> bytes;  // cumulative bytes sent + received per worker at this point
  std::optional<double> tokens;
};

// Training loss at one step, averaged over the workers that logged that step.
struct TrainPoint {
  int64_t step = 0;
  double loss = 0;
  std::optional<double> wall_seconds;  // mean over the workers that logged it
};

struct LinkInfo {
  std::optional<double> rate_mbit;
  std::optional<double> latency_ms;
  // "shaper" (`lowband link` per worker: the rate counts payload bytes), "netns-tbf" or
  // "netns-tbf+shaper" (deploy/netns-lab.sh: tc tbf counts Ethernet frames); empty when absent.
  std::string kind;
};

// What the simulator (sim/) predicts for a run's settings over its link (its step time is the run's
// step_seconds).
struct SimulatedRun {
  double utilization = 0;         // simulator's compute_utilization over the run's steps
  bool per_worker_steps = false;  // each worker simulated with its own measured step time
};

// The coordinator's counters: summary.json "coordinator" (rounds_closed, contributions, late_pushes,
// sync_bytes_in/out) when present, else metrics/coordinator.jsonl ("round" events, or the last
// "status" line's cumulative counters).
struct CoordinatorStats {
  int64_t rounds = 0;
  std::optional<double> contributions;  // over all rounds
  std::optional<double> late_pushes;
  std::optional<double> bytes_in, bytes_out;
};

// Everything the report uses from one run directory.
struct RunData {
  std::filesystem::path dir;
  std::string name;   // summary "name", else the directory's name
  std::string algo;   // "streaming", "diloco", "ddp"
  std::string codec;  // empty when absent
  std::optional<int64_t> workers, steps, tokens, H, fragments, tau;
  std::optional<double> alpha;
  std::optional<bool> error_feedback;
  std::optional<double> final_eval_loss;
  std::vector<EvalPoint> eval_curve;  // from summary.json; from worker eval events if that is empty
  std::optional<double> bytes_up, bytes_down, bootstrap_bytes;
  std::vector<double> bytes_per_worker;
  double wall_seconds = 0;
  std::optional<double> compute_seconds, stall_seconds, compute_utilization;
  std::optional<LinkInfo> link;  // absent or null: no shaped link
  std::optional<double> final_eval_accuracy;
  std::optional<bool> global_state_identical;  // every worker's global copy has the coordinator's CRC
  // Simulator inputs measured by the run (summary.json; absent in runs older than the lab).
  std::optional<double> step_seconds;       // mean compute seconds of one inner step
  std::vector<double> worker_step_seconds;  // the same per worker
  std::string late;                         // "wait" or "defer" (empty: not recorded, i.e. wait)
  std::optional<int64_t> parameters, codec_block;
  std::vector<uint64_t> fragment_elements;  // elements per fragment (coordinator's layout)
  std::optional<SimulatedRun> simulated;    // filled by WriteReport with ReportOptions::simulate
  // diloco/streaming, per sync: the training thread's encode and apply seconds, and the
  // coordinator's seconds from a round's close to its update (absent in older runs: 0).
  std::optional<double> encode_seconds, apply_seconds, coordinator_round_seconds;
  double host_seconds_per_byte = 0;  // ddp: the calibrated host cost SimulateRun uses
  std::string host_cost_from;        // ... and the run it was calibrated on

  // From metrics/.
  std::vector<TrainPoint> train_loss;  // sorted by step
  int worker_metrics_files = 0;
  bool has_coordinator_metrics = false;  // metrics/coordinator.jsonl was there
  int64_t metrics_lines = 0;             // non-empty lines read from all metrics files
  int64_t bad_metrics_lines = 0;         // lines skipped because they are not a JSON object
  std::optional<CoordinatorStats> coordinator;

  // Mean of bytes_per_worker (0 when it is empty).
  double MeanBytesPerWorker() const;
};

// Reads DIR/summary.json and DIR/metrics/. Errors: NotFound (no directory or no summary.json),
// DataLoss (summary.json is not JSON), InvalidArgument (a field is missing or has the wrong type, or
// the directory is a split-learning run); each message names the file and the field and says how to
// produce a run directory.
StatusOr<RunData> LoadRun(const std::filesystem::path& dir);

struct ReportOptions {
  // Run directories, at least one.
  std::vector<std::filesystem::path> runs;
  // Output directory; empty: the run directory itself for one run, ./report for several.
  std::filesystem::path out;
  // Heading of report.md; empty: "lowband report: NAME" or "lowband report: N runs".
  std::string title;
  // gnuplot executable (looked up on PATH unless it contains '/'); empty: write scripts, draw nothing.
  std::string gnuplot = "gnuplot";
  // Seconds one gnuplot invocation may run before it is killed.
  int gnuplot_timeout_seconds = 60;
  // Training-loss smoothing: centered moving average over this many logged steps; 0: about 1/20 of
  // the points (at most 201); 1: no smoothing.
  int smooth = 0;
  // Run the simulator (sim/) for every run over a shaped link, with the run's measured step time and
  // payload sizes: a measured-vs-simulated table, and simulated curves in the utilization plot.
  bool simulate = false;
  // With simulate: a ddp run over unshaped links (deploy/netns-lab.sh --rate none) from which the
  // host time per byte of an all-reduce is measured (the value that makes the simulator reproduce its
  // utilization); every ddp run is then simulated with it. Empty: 0 (wire time only).
  std::filesystem::path ddp_calibration;
};

struct ReportResult {
  std::filesystem::path out_dir;
  std::filesystem::path report_md;
  std::vector<std::filesystem::path> plots;  // PNGs drawn
  std::vector<std::string> plot_notes;       // plots not drawn, and why
  bool plots_skipped = false;                // true when gnuplot could not be used at all
  std::string plots_skipped_reason;
  int64_t bad_metrics_lines = 0;  // over all runs
  // ComparisonTable() plus "report": report.md's path (`--json` prints it). For split runs:
  // {"kind": "split", "baselines": {task: fp32 run}, "runs": [{name, task, codec, codec_label,
  // final_accuracy, final_perplexity, delta_vs_fp32, delta_unit, mean_bits_up, mean_bits_down,
  // bytes_per_example, bitmap_bytes, compression_vs_fp32, wall_seconds, ...}], "report"}.
  nlohmann::json table;
  std::vector<RunData> runs;  // training runs (empty for a split-run report)
};

// Loads every run, writes OUT/report.md, the scripts and data, and runs gnuplot on each script.
StatusOr<ReportResult> WriteReport(const ReportOptions& options);

// {"baseline": ddp run's name or null, "runs": [{name, dir, algo, codec, workers, steps, tokens,
// final_eval_loss, bytes_per_worker_mean, bytes_ratio_to_ddp, wall_seconds, compute_utilization,
// stall_seconds, link_rate_mbit, bad_metrics_lines}, ...]}; absent values are null.
nlohmann::json ComparisonTable(const std::vector<RunData>& runs);

// The simulation of `run` (algo, workers, H, fragments, tau, codec, measured step time and fragment
// sizes) over a link of `rate_mbit` (the link's rate when nullopt) and its latency. The payload rate
// given to the simulator is the link's rate for a shaper, and rate x 1448/1514 for tc tbf (which
// counts each full 1514-byte Ethernet frame carrying 1448 payload bytes). FailedPrecondition when the
// run lacks what the simulator needs (a link rate, step_seconds, parameters).
StatusOr<SimulatedRun> SimulateRun(const RunData& run, std::optional<double> rate_mbit = std::nullopt);
// The host seconds per byte of a ddp all-reduce (sim::SimConfig::host_seconds_per_byte) that makes
// the simulator, with unlimited links, reproduce the measured utilization of `run`: a ddp run over
// unshaped links. 0 when the simulator is already at or below the measurement.
StatusOr<double> CalibrateHostCost(const RunData& run);

// "0 B", "512 B", "1.5 KiB", "12.3 MiB", "4.00 GiB".
std::string HumanBytes(double bytes);

}  // namespace lowband::tools
