// `lowband bench ...`: the benchmarks (measurements, never pass/fail tests).
#include <memory>

#include <fmt/format.h>

#include "tools/bench_quant.h"
#include "tools/command.h"

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
}

}  // namespace lowband::tools
