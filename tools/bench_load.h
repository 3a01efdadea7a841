// `lowband bench load`: what one coordinator costs as the number of workers grows. For each worker
// count N, a real coordinator process (this executable's `coordinator` subcommand on loopback) and N
// synthetic workers in this process, each a comm::CoordinatorClient with its own gRPC channel on its
// own thread: no model, no training. The workers join with a synthetic model signature (the first
// seeds the global state, the others bootstrap), wait at the start barrier until all N are ready,
// then run rounds: for every fragment in turn, push a valid random contribution (encoded once per
// worker and fragment with the run's upload codec, so the coordinator validates and aggregates real
// payloads) and wait for that round's update. Every round therefore closes with all N contributions.
//
// Measured: full rounds (every fragment once) and fragment rounds per second, the latency of each
// fragment round (first push to the last worker holding the update), push and GetUpdate call times,
// payload throughput, the coordinator's resident memory (VmRSS, sampled over the whole run) and CPU
// time. docs/load.md says what each number means.
//
// Thread safety: one RunLoadBench at a time per process (it owns its child process and threads).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lowband::tools {

struct LoadBenchOptions {
  // Worker counts to sweep, one fresh coordinator per count.
  std::vector<int> workers = {64};
  // Timed full rounds per worker count (each fragment once per round); with seconds > 0 the most
  // rounds (0: no limit).
  int rounds = 20;
  // > 0: time-boxed points: timed rounds end at the first round boundary this long after they began.
  double seconds = 0;
  // Untimed full rounds first. The coordinator's memory settles over the first rounds (allocator
  // arenas, gRPC buffers: about ten rounds at 64 workers), so flatness is judged after them.
  int warmup = 10;
  // Total fp32 values of the synthetic model, split into one tensor per fragment.
  int64_t params = 4'000'000;
  // P: fragments of the run.
  int fragments = 4;
  // Upload codec of the contributions (the updates come back in the same format).
  std::string codec = "fp4_e3m0";
  int block = 64;
  // Coordinator RSS sampling interval.
  int sample_ms = 200;
  // A progress line every this many rounds (0: about ten lines per worker count).
  int progress_every = 0;
  // A round that has not closed after this long fails the benchmark.
  double round_timeout_s = 300;
  // The coordinator writes its checkpoint (into its temporary directory) every N closed rounds, as
  // `lowband coordinator --checkpoint-dir` does; 0: no checkpoints. Compare the two to see what
  // durability costs.
  int checkpoint_every = 0;
  // The executable whose `coordinator` subcommand is started ("" = this process's own executable).
  std::string self;
  bool progress = true;  // progress lines on stderr
};

// Runs the sweep; throws CommandError (exit code 2 for bad options) when a point cannot be measured.
nlohmann::json RunLoadBench(const LoadBenchOptions& options);
std::string LoadBenchTable(const nlohmann::json& result);

}  // namespace lowband::tools
