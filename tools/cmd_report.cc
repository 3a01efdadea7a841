// `lowband report RUN [RUN...]`: report.md and PNG plots from run directories (tools/report.h), of
// training runs (`lowband launch`) or of split-learning client runs (`lowband split-client`).
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "tools/command.h"
#include "tools/report.h"

namespace lowband::tools {

namespace {

constexpr const char* kFooter = R"(Input (written by `lowband launch --out RUN`):
  RUN/summary.json               required; algo, eval_curve, bytes_per_worker and wall_seconds must be
                                 there, other fields may be missing (shown as —)
  RUN/metrics/worker-<i>.jsonl   optional; step events give the training-loss curve. Lines that are
                                 not JSON (a run killed mid-write) are skipped and counted
  RUN/metrics/coordinator.jsonl  optional; round or status events give the round count (summary.json
                                 "coordinator" counters win when present)

Output (in --out):
  report.md    one row per run: name, algo, codec, workers, steps, tokens, final eval loss,
               mean bytes per worker, bytes relative to the ddp run (when one is given),
               wall seconds, compute utilization, stall seconds; a settings table; the plots
  *.png        eval loss vs step, eval loss vs bytes per worker (log x), eval loss vs wall
               time, training loss vs step (raw + smoothed), bytes per worker (bars), and
               compute utilization vs bandwidth when runs carry links of different rates
  *.gp, *.dat  the gnuplot script of each plot and the data it reads: edit one and
               re-render it with `cd OUT && gnuplot NAME.gp`

Split-learning runs (written by `lowband split-client --out DIR`; summary.json has "task"):
  DIR/summary.json                 required; task, codec, steps, final_eval_loss, eval_curve,
                                   bytes_per_example, wall_seconds (and final_accuracy for classify)
  DIR/metrics/split-client.jsonl   optional; train lines give the bits-vs-target plot
  report.md    one row per run: task, codec, steps, held-out accuracy or perplexity and its change
               against the fp32 run of the same task, mean bits up / down, bytes per example (all
               overhead), bit-map bytes, x fewer bytes than fp32, wall seconds
  *.png        held-out metric vs step (per task), mean bits vs target schedule (per AMAQ run),
               final bit-width histogram (AMAQ runs), held-out metric vs bytes per example (per task)
  Training and split runs cannot be mixed in one call: report them separately.

Without gnuplot the report still gets its tables, and report.md and stderr say the plots were
skipped; install gnuplot with deploy/install-deps.sh (Debian: apt-get install gnuplot-nox).
Log lines go to stderr; stdout carries only the report path, or the JSON table with --json.

Examples:
  lowband report runs/streaming-fp4
  lowband report runs/ddp runs/diloco runs/streaming-fp4 --out reports/codecs --title "Codecs at 100 Mbit/s"
  lowband report runs/lab/* --simulate --out runs/lab/report     (measured vs simulated utilization)
  lowband report runs/split-amaq/spam-* --out runs/split-amaq/report-spam     (split-learning runs))";

struct ReportArgs {
  std::vector<std::string> runs;
  ReportOptions options;
  bool json = false;
  bool no_plots = false;
};

}  // namespace

void RegisterReport(CLI::App& app) {
  auto args = std::make_shared<ReportArgs>();
  auto* cmd =
      app.add_subcommand("report",
                         "Write report.md and PNG plots (gnuplot) for one run directory or a comparison of "
                         "several");
  cmd->footer(kFooter);
  cmd->add_option(
         "runs", args->runs,
         "Run directories (RUN as in `lowband launch --out RUN` or `lowband split-client --out RUN`)")
      ->required();
  cmd->add_option("--out", args->options.out,
                  "Output directory (default: the run directory for one run, ./report for several)");
  cmd->add_option("--title", args->options.title,
                  "Heading of report.md (default: \"lowband report: NAME\" or \"lowband report: N runs\")");
  cmd->add_flag("--json", args->json,
                "Print the comparison table as JSON on stdout (instead of the path of report.md)");
  cmd->add_option("--gnuplot", args->options.gnuplot, "gnuplot executable (looked up on PATH)")
      ->capture_default_str();
  cmd->add_flag("--no-plots", args->no_plots, "Write the gnuplot scripts and data but do not run gnuplot");
  cmd->add_flag("--simulate", args->options.simulate,
                "Run the simulator for every run over a shaped link with its measured step time and payload "
                "sizes: a measured-vs-simulated table and simulated curves in the utilization plot");
  cmd->add_option("--ddp-calibration", args->options.ddp_calibration,
                  "With --simulate: a ddp run over unshaped links (deploy/netns-lab.sh --rate none); the "
                  "all-reduce host time per byte that reproduces its utilization is used for every ddp run")
      ->needs("--simulate");
  cmd->add_option(
         "--smooth", args->options.smooth,
         "Training-loss moving-average window in logged steps (0: about 1/20 of the points; 1: none)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000000));
  cmd->add_option("--gnuplot-timeout", args->options.gnuplot_timeout_seconds,
                  "Seconds one gnuplot run may take before it is killed")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));

  cmd->callback([args] {
    // Progress and warnings belong on stderr so that stdout stays machine-readable (--json).
    auto logger = spdlog::get("report");
    if (!logger) {
      logger = spdlog::stderr_color_mt("report");
    }
    logger->set_level(spdlog::default_logger()->level());
    spdlog::set_default_logger(logger);

    ReportOptions options = args->options;
    options.runs.assign(args->runs.begin(), args->runs.end());
    if (args->no_plots) {
      options.gnuplot.clear();
    }
    auto result = WriteReport(options);
    if (!result.ok()) {
      throw CommandError("report: " + result.status().message());
    }
    if (args->json) {
      fmt::print("{}\n", result->table.dump(2));
    } else {
      fmt::print("{}\n", result->report_md.string());
    }
  });
}

}  // namespace lowband::tools
