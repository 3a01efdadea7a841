// The launcher behind `lowband launch`: starts a coordinator and M workers (or M data-parallel
// ranks) as child processes of this machine, connected over real gRPC / Gloo on loopback, follows
// their metrics files to show live progress, stops everything on the first failure (naming the
// process and showing its log's tail), and writes RUN/summary.json (docs/run-outputs.md).
// Thread safety: one launch per process.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "quant/status.h"
#include "tools/config.h"

namespace lowband::tools {

struct LaunchOptions {
  int workers = 4;
  std::string out = "runs/run";
  // This executable (re-run with the coordinator / worker subcommands).
  std::string self;
  // Progress line every N seconds (and on every change when stdout is a terminal).
  double progress_seconds = 5;
  // Worker checkpoints every N steps (0: only at the end), and resuming from them.
  int64_t checkpoint_every = 0;
  bool resume = false;
  // Give up when no worker makes progress for this long.
  double stuck_seconds = 900;
};

StatusOr<nlohmann::json> Launch(const RunConfig& config, const LaunchOptions& options);

// Builds summary.json from a run directory's per-process result files.
StatusOr<nlohmann::json> Summarize(const std::string& run_dir, const RunConfig& config, int workers,
                                   double wall_seconds);
// The summary as a small text table.
std::string SummaryTable(const nlohmann::json& summary);

}  // namespace lowband::tools
