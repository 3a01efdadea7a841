// `lowband bench ...`: the benchmarks (measurements, never pass/fail tests).
#include <algorithm>
#include <memory>

#include <fmt/format.h>

#include "comm/metrics.h"
#include "tools/bench_load.h"
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

  auto load = std::make_shared<LoadBenchOptions>();
  auto load_out = std::make_shared<std::string>();
  auto* l = bench->add_subcommand(
      "load",
      "One coordinator process against N synthetic workers (real gRPC on loopback, random valid payloads, no "
      "training): rounds/s, round latency p50/p99, payload throughput, coordinator memory over time "
      "(docs/load.md)");
  l->add_flag("--json", *json, "Print JSON instead of a table (no progress lines)");
  l->add_option("--out", *load_out, "Also write the JSON result to this file");
  l->add_option("--workers", load->workers,
                "Synthetic workers; a comma list sweeps them, one fresh coordinator per count (8,16,32,64)")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  auto* rounds =
      l->add_option("--rounds", load->rounds,
                    "Timed rounds per worker count (a round: every fragment once); with --seconds the "
                    "most rounds (default then: no limit)")
          ->capture_default_str()
          ->check(CLI::Range(1, 1000000));
  l->add_option(
       "--seconds", load->seconds,
       "Time-box each worker count: timed rounds end at the first round boundary after this many seconds")
      ->check(CLI::PositiveNumber);
  l->add_option("--warmup", load->warmup, "Untimed rounds first (connections, allocator and buffers warm up)")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000));
  l->add_option("--params", load->params, "fp32 values of the synthetic model (all fragments)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 31));
  l->add_option("--fragments", load->fragments, "Fragments P (one tensor each)")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  l->add_option("--codec", load->codec, "Upload codec of the contributions (any `bench quant` format)")
      ->capture_default_str();
  l->add_option("--block", load->block, "Block size of the blockwise codecs")->capture_default_str();
  l->add_option("--sample-ms", load->sample_ms, "Coordinator RSS sampling interval in milliseconds")
      ->capture_default_str()
      ->check(CLI::Range(10, 60000));
  l->add_option("--progress-every", load->progress_every,
                "A progress line every N rounds (0: about ten per worker count)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  l->add_option("--round-timeout", load->round_timeout_s,
                "Fail when a round has not closed after this many seconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  l->add_option("--checkpoint-every", load->checkpoint_every,
                "The coordinator checkpoints every N closed rounds (to a temporary directory; 0: never)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  l->add_option("--coordinator-bin", load->self,
                "Executable whose `coordinator` subcommand is started (default: this lowband)");
  l->callback([load, load_out, json, rounds] {
#if defined(LOWBAND_HAVE_GRPC)
    load->progress = !*json;
    if (load->seconds > 0 && rounds->count() == 0) load->rounds = 0;
    const auto result = RunLoadBench(*load);
    if (!load_out->empty()) {
      const Status written = comm::WriteJsonFile(*load_out, result);
      if (!written.ok()) throw CommandError("--out: " + written.message());
    }
    fmt::print("{}", *json ? result.dump(2) + "\n" : LoadBenchTable(result));
#else
    throw CommandError("this build has no gRPC: install libgrpc++-dev (deploy/install-deps.sh) and rebuild");
#endif
  });
}

}  // namespace lowband::tools
