// `lowband bench ...`: the benchmarks (measurements, never pass/fail tests).
#include <algorithm>
#include <memory>

#include <fmt/format.h>

#include "tools/bench_quant.h"
#include "tools/bench_site.h"
#include "tools/command.h"
#include "tools/config.h"

namespace lowband::tools {

void RegisterBench(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Run a benchmark and print its measurements (JSON with --json)");
  bench->require_subcommand(1);

  auto opt = std::make_shared<QuantBenchOptions>();
  auto json = std::make_shared<bool>(false);
  auto* q = bench->add_subcommand(
      "quant", "Codec throughput as a ratio to memcpy in the same run, bits per value, relative RMS error");
  q->add_flag("--json", *json, "Print JSON instead of a table");
  q->add_option("--mib", opt->mib, "fp32 buffer size in MiB")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 4096.0));
  q->add_option("--block", opt->block, "Block size of the blockwise formats")->capture_default_str();
  q->add_option("--scale", opt->scale, "Block scale storage: bf16, fp16, fp32, pow2")->capture_default_str();
  q->add_option("--formats", opt->formats, "Formats to run (default: all)")->delimiter(',');
  q->add_option("--repeat", opt->repeat, "Best of N runs per timing")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  q->callback([opt, json] {
    opt->progress = !*json;
    const auto result = RunQuantBench(*opt);
    if (*json) {
      fmt::print("{}\n", result.dump(2));
    } else {
      fmt::print("{}", QuantBenchTable(result));
    }
  });

  auto site = std::make_shared<SiteBenchOptions>();
  auto* s = bench->add_subcommand(
      "site",
      "Step time of a site of R ranks (c10d Gloo all-reduce every step) against one rank and against the "
      "all-reduce alone, in one run, per model width");
  auto flags = AddConfigFlags(s);
  s->add_flag("--json", *json, "Print JSON instead of a table");
  s->add_option("--timed-steps", site->steps, "Timed steps per measurement")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  s->add_option("--warmup", site->warmup, "Untimed steps first")->capture_default_str();
  s->add_option("--rounds", site->rounds, "Rounds of the measurements (medians are reported)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  s->add_option("--widths", site->widths, "GPT widths to sweep (default: the config's model.d_model)")
      ->delimiter(',');
  s->callback([site, flags, json] {
#if defined(LOWBAND_HAVE_ENGINE)
    auto config = ResolveConfig(*flags);
    if (!config.ok()) throw CommandError(config.status().message(), 2);
    site->progress = !*json;
    site->ranks = std::max(2, config->site.ranks);  // --ranks R; a site has at least 2
    const auto result = RunSiteBench(*config, *site);
    fmt::print("{}", *json ? result.dump(2) + "\n" : SiteBenchTable(result));
#else
    throw CommandError("this build has no LibTorch or no gRPC: run deploy/install-deps.sh and rebuild");
#endif
  });
}

}  // namespace lowband::tools
