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
  // The coordinator's read-only status page and Prometheus metrics on this host:port ("" for none).
  std::string http;

  // Shaped links (`lowband link`, docs/link-shaper.md): when any of the five link_* options below
  // is set, one shaper process per worker sits between that worker and the coordinator, so every
  // worker has a link of its own. Rates as `lowband link --rate` ("100mbit", "1gbit"), durations
  // "20ms". The up/down values override link_rate for one direction. Not for ddp (Gloo connects
  // rank to rank): shape ddp with deploy/netns-lab.sh.
  std::string link_rate;
  std::string link_latency;
  std::string link_jitter;
  std::string link_up_rate;
  std::string link_down_rate;

  // Network-namespace lab (deploy/netns-lab.sh builds it): run the coordinator in namespace
  // NETNS-coord at 10.77.0.1 and worker i in NETNS-w<i> at 10.77.0.<10+i>, each host reaching the
  // others through its own eth0 (rate-limited by the script with tc tbf). netns_rate only records
  // the rate the script set, for summary.json.
  std::string netns;
  std::string netns_rate;

  // > 0: cap every worker at this many CPU cores (Linux cgroup cpu controller, v1 or v2; root), so
  // that workers sharing a machine compute at the same speed, as sites with identical
  // accelerators would; without it the scheduler's uneven shares make some workers wait for
  // others at every round.
  double cpu_per_worker = 0;
};

StatusOr<nlohmann::json> Launch(const RunConfig& config, const LaunchOptions& options);

// Builds summary.json from a run directory's per-process result files.
StatusOr<nlohmann::json> Summarize(const std::string& run_dir, const RunConfig& config, int workers,
                                   double wall_seconds);
// The summary as a small text table.
std::string SummaryTable(const nlohmann::json& summary);

}  // namespace lowband::tools
