// `lowband bench site`: what it costs a worker to be a site of R ranks. In one run, for each model
// width: the step time of one rank alone (forward, backward, AdamW), the step time of an R-rank site
// (the same per-rank batch, gradients all-reduced through c10d Gloo every step), and the Gloo
// all-reduce of the same gradient size alone. The site's overhead over one rank, as a ratio to the
// all-reduce alone, says whether anything beyond the all-reduce costs time. Ranks run as threads of
// this process over loopback (each with its own store client and Gloo pairs), one LibTorch thread
// each.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tools/config.h"

namespace lowband::tools {

struct SiteBenchOptions {
  int ranks = 2;            // from --ranks (site.ranks), at least 2
  int steps = 20;           // timed steps (or all-reduces) per measurement
  int warmup = 3;           // untimed steps first
  int rounds = 3;           // rounds of the three measurements, interleaved; medians are reported
  std::vector<int> widths;  // GPT widths (model.d_model) to sweep; empty: the config's
  bool progress = true;     // a line per width on stderr
};

nlohmann::json RunSiteBench(const RunConfig& config, const SiteBenchOptions& options);
std::string SiteBenchTable(const nlohmann::json& result);

}  // namespace lowband::tools
