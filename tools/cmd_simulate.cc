// `lowband simulate`: compute utilization of ddp, DiLoCo and Streaming DiLoCo over given links, from
// the timeline simulator (sim/simulator.h, docs/simulator.md); --sweep finds the bandwidth each
// algorithm needs for 50/80/90/95/99 % utilization.
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "sim/simulator.h"
#include "sim/units.h"
#include "tools/command.h"

namespace lowband::tools {

namespace {

constexpr const char* kFooter =
    R"(Model (docs/simulator.md): a worker computes --step-time per inner step; a message of B bytes
on a link of rate R and one-way latency D arrives after D + 8B/R, one message at a time per
direction. ddp all-reduces the 4N-byte fp32 gradient every step (Gloo ring: 2(M-1) D +
2(M-1)/M 32N/R), after the backward pass (--ddp-overlap none, lowband's engine) or layer by layer
during it (backward, PyTorch DDP). DiLoCo pushes its encoded outer gradient every H steps and
blocks until the coordinator's update is back; Streaming DiLoCo pushes fragment p at steps
p*H/P (mod H) in the background and needs its update --tau steps later. Payload sizes are
quant::EncodedSize(codec, fragment) unless --payload-bytes gives measured ones.

Rates: 100mbit, 1gbit, 10tbit (bits/s); 10mbps (bytes/s, as in tc); inf. Durations: 20ms, 0.8s.
Counts: 1.2e9, 350M, 7B.

Output: utilization in the steady state (whole sync periods after the first) and over the whole
run (with the final wait for updates in flight, like summary.json's compute_utilization), wall,
compute and stall seconds per worker, bytes per worker, and the peak bandwidth: the rate at which
the largest exchange takes max(tau, 1) steps of compute (one step for ddp). --json prints one
JSON object. --sweep prints, per algorithm variant (ddp with and without backward overlap, DiLoCo
fp32, Streaming DiLoCo fp32 tau=0, fp32 tau>=1, fp4_e3m0/64 tau>=1), the smallest bandwidth
reaching each --targets utilization (steady state), searched from 1 kbit/s to 10 Tbit/s.

Examples:
  lowband simulate --algo streaming --params 1.2e9 --layers 24 --step-time 0.8s --H 100 --fragments 4 \
      --tau 1 --codec fp4_e3m0 --workers 4 --bandwidth 1gbit --latency 20ms
  lowband simulate --algo ddp --params 1e9 --layers 24 --step-time 1s --workers 8 --bandwidth 10gbit \
      --ddp-overlap backward --json
  lowband simulate --algo diloco --params 7B --workers 64 --bandwidth 100mbit --stragglers 1 \
      --straggler-factor 1.5
  lowband simulate --params 1B --layers 24 --step-time 1s --workers 16 --latency 20ms --sweep
  lowband simulate --algo streaming --steps 600 --step-time 0.21s --payload-bytes 40000,40000,40000,9000 \
      --bandwidth 10mbit --latency 5ms --workers 2 --json    # a real run's measured sizes)";

struct SimulateArgs {
  std::string algo = "streaming";
  std::string params = "1e9";
  uint32_t layers = 24;
  std::string step_time = "1s";
  double backward_fraction = 2.0 / 3.0;
  uint64_t H = 100;
  uint32_t fragments = 4;
  uint64_t tau = 1;
  std::string late = "wait";
  std::string codec = "fp4_e3m0";
  uint32_t block = 64;
  std::string scale = "bf16";
  std::string download_codec;
  uint64_t workers = 4;
  std::string bandwidth = "1gbit";
  std::string latency = "20ms";
  std::string topology = "default";
  std::string protocol = "engine";
  uint64_t steps = 0;
  bool no_drain = false;
  std::string ddp_overlap = "none";
  std::string ddp_bucket_bytes = "26214400";
  uint64_t slow_workers = 0;
  std::string slow_bandwidth;
  uint64_t stragglers = 0;
  double straggler_factor = 1.5;
  std::string worker_bandwidths;
  std::string step_time_factors;
  std::string coordinator_bandwidth = "inf";
  std::string coordinator_time = "0s";
  std::string encode_time = "0s";
  std::string apply_time = "0s";
  std::string host_time_per_mb = "0s";
  std::string fragment_params;
  std::string payload_bytes;
  std::string download_bytes;
  bool sweep = false;
  std::string targets = "50,80,90,95,99";
  bool json = false;
};

// Unwraps a parse result or throws CommandError naming the flag.
template <typename T>
T Flag(StatusOr<T> v, const char* flag) {
  if (!v.ok()) throw CommandError(fmt::format("simulate: {}: {}", flag, v.status().message()));
  return std::move(v).value();
}

std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    out.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

quant::CodecSpec CodecFrom(const std::string& format, const SimulateArgs& a, const char* flag) {
  quant::CodecSpec spec;
  spec.format = Flag(quant::ParseFormat(format), flag);
  spec.block_size = a.block;
  spec.scale_type = Flag(quant::ParseScaleType(a.scale), "--scale");
  if (Status s = quant::Validate(spec); !s.ok()) {
    throw CommandError(
        fmt::format("simulate: {} {} with --block {}: {}", flag, format, a.block, s.message()));
  }
  return spec;
}

// Per-worker rates and speeds, grouped into identical workers.
std::vector<sim::WorkerGroup> BuildGroups(const SimulateArgs& a, double bandwidth) {
  const uint64_t M = a.workers;
  const bool any =
      a.slow_workers > 0 || a.stragglers > 0 || !a.worker_bandwidths.empty() || !a.step_time_factors.empty();
  if (!any) return {};
  if (M > 10'000'000) {
    throw CommandError("simulate: per-worker options support at most 10,000,000 workers");
  }
  std::vector<double> rate(M, bandwidth), factor(M, 1.0);
  if (!a.worker_bandwidths.empty()) {
    const auto items = SplitList(a.worker_bandwidths);
    if (items.size() != M) {
      throw CommandError(fmt::format(
          "simulate: --worker-bandwidths has {} values; expected one per worker ({})", items.size(), M));
    }
    for (uint64_t i = 0; i < M; ++i) rate[i] = Flag(sim::ParseBandwidth(items[i]), "--worker-bandwidths");
  }
  if (!a.step_time_factors.empty()) {
    const auto items = SplitList(a.step_time_factors);
    if (items.size() != M) {
      throw CommandError(fmt::format(
          "simulate: --step-time-factors has {} values; expected one per worker ({})", items.size(), M));
    }
    for (uint64_t i = 0; i < M; ++i) {
      char* end = nullptr;
      factor[i] = std::strtod(items[i].c_str(), &end);
      if (end == items[i].c_str() || *end != '\0' || !(factor[i] > 0) || !std::isfinite(factor[i])) {
        throw CommandError(
            fmt::format("simulate: --step-time-factors: '{}' is not a factor > 0 (e.g. 1.5)", items[i]));
      }
    }
  }
  if (a.slow_workers > 0) {
    if (a.slow_workers > M) {
      throw CommandError(
          fmt::format("simulate: --slow-workers {} is more than --workers {}", a.slow_workers, M));
    }
    if (a.slow_bandwidth.empty())
      throw CommandError("simulate: --slow-workers needs --slow-bandwidth (e.g. 100mbit)");
    const double slow = Flag(sim::ParseBandwidth(a.slow_bandwidth), "--slow-bandwidth");
    for (uint64_t i = 0; i < a.slow_workers; ++i) rate[i] = slow;
  }
  if (a.stragglers > 0) {
    if (a.stragglers > M) {
      throw CommandError(fmt::format("simulate: --stragglers {} is more than --workers {}", a.stragglers, M));
    }
    if (!(a.straggler_factor > 0) || !std::isfinite(a.straggler_factor)) {
      throw CommandError("simulate: --straggler-factor must be a factor > 0 (1.5: 50 % slower)");
    }
    // The last workers, so that stragglers and slow links are different workers when they fit.
    for (uint64_t i = M - a.stragglers; i < M; ++i) factor[i] = a.straggler_factor;
  }
  std::vector<sim::WorkerGroup> groups;
  std::map<std::pair<double, double>, size_t> index;
  for (uint64_t i = 0; i < M; ++i) {
    auto [it, fresh] = index.try_emplace({rate[i], factor[i]}, groups.size());
    if (fresh) groups.push_back(sim::WorkerGroup{0, rate[i], rate[i], -1, factor[i]});
    ++groups[it->second].count;
  }
  return groups;
}

sim::SimConfig BuildConfig(const SimulateArgs& a) {
  sim::SimConfig c;
  c.algo = Flag(sim::ParseAlgo(a.algo), "--algo");
  c.params = Flag(sim::ParseCount(a.params), "--params");
  c.layers = a.layers;
  c.step_seconds = Flag(sim::ParseSeconds(a.step_time), "--step-time");
  c.backward_fraction = a.backward_fraction;
  c.inner_steps = a.H;
  c.fragments = a.fragments;
  c.overlap = a.tau;
  c.late = Flag(sim::ParseLatePolicy(a.late), "--late");
  c.codec = CodecFrom(a.codec, a, "--codec");
  if (!a.download_codec.empty()) c.download_codec = CodecFrom(a.download_codec, a, "--download-codec");
  c.workers = a.workers;
  c.bandwidth_bps = Flag(sim::ParseBandwidth(a.bandwidth), "--bandwidth");
  c.latency_seconds = Flag(sim::ParseSeconds(a.latency), "--latency");
  c.topology = Flag(sim::ParseTopology(a.topology), "--topology");
  c.protocol = Flag(sim::ParseProtocol(a.protocol), "--protocol");
  c.steps = a.steps;
  c.drain = !a.no_drain;
  c.ddp_overlap = Flag(sim::ParseDdpOverlap(a.ddp_overlap), "--ddp-overlap");
  c.ddp_bucket_bytes = Flag(sim::ParseCount(a.ddp_bucket_bytes), "--ddp-bucket-bytes");
  c.groups = BuildGroups(a, c.bandwidth_bps);
  const double coordinator = Flag(sim::ParseBandwidth(a.coordinator_bandwidth), "--coordinator-bandwidth");
  c.coordinator_ingress_bps = coordinator;
  c.coordinator_egress_bps = coordinator;
  c.coordinator_seconds = Flag(sim::ParseSeconds(a.coordinator_time), "--coordinator-time");
  c.encode_seconds = Flag(sim::ParseSeconds(a.encode_time), "--encode-time");
  c.apply_seconds = Flag(sim::ParseSeconds(a.apply_time), "--apply-time");
  c.host_seconds_per_byte = Flag(sim::ParseSeconds(a.host_time_per_mb), "--host-time-per-mb") / 1e6;
  if (!a.fragment_params.empty())
    c.fragment_params = Flag(sim::ParseCountList(a.fragment_params), "--fragment-params");
  if (!a.payload_bytes.empty())
    c.upload_bytes = Flag(sim::ParseCountList(a.payload_bytes), "--payload-bytes");
  if (!a.download_bytes.empty())
    c.download_bytes = Flag(sim::ParseCountList(a.download_bytes), "--download-bytes");
  if (Status s = sim::Validate(c); !s.ok()) throw CommandError("simulate: " + s.message());
  return c;
}

std::vector<double> ParseTargets(const std::string& text) {
  std::vector<double> out;
  for (const std::string& item : SplitList(text)) {
    char* end = nullptr;
    double v = std::strtod(item.c_str(), &end);
    if (end == item.c_str() || *end != '\0' || !(v > 0) || v > 100) {
      throw CommandError(fmt::format(
          "simulate: --targets: '{}' is not a utilization; give percents in (0, 100] or fractions in (0, 1], "
          "e.g. 50,80,90,95,99",
          item));
    }
    out.push_back(v > 1 ? v / 100.0 : v);
  }
  return out;
}

}  // namespace

void RegisterSimulate(CLI::App& app) {
  auto a = std::make_shared<SimulateArgs>();
  auto* cmd = app.add_subcommand(
      "simulate",
      "Simulate compute utilization of ddp, DiLoCo and Streaming DiLoCo over given links (--sweep: the "
      "bandwidth each needs)");
  cmd->footer(kFooter);
  cmd->add_option("--algo", a->algo, "ddp, diloco or streaming")->capture_default_str();
  cmd->add_option("--params", a->params, "Model parameters N (1.2e9, 350M, 7B)")->capture_default_str();
  cmd->add_option("--layers", a->layers, "Layers L (fragments and ddp buckets are made of layers)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1'000'000u));
  cmd->add_option("--step-time", a->step_time, "Compute time T of one inner step (0.8s, 250ms)")
      ->capture_default_str();
  cmd->add_option("--backward-fraction", a->backward_fraction, "Share of T in the backward pass")
      ->capture_default_str()
      ->check(CLI::Range(1e-9, 1.0));
  cmd->add_option("--H", a->H, "Inner steps between two syncs of a fragment")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{100'000'000}));
  cmd->add_option("--fragments", a->fragments, "Fragments P (streaming; diloco is P=1)")
      ->capture_default_str();
  cmd->add_option("--tau", a->tau, "Overlap steps tau (streaming; diloco is tau=0)")->capture_default_str();
  cmd->add_option("--late", a->late, "A late update: wait (stall) or defer (apply on arrival)")
      ->capture_default_str();
  cmd->add_option("--codec", a->codec, "Payload codec (fp32, bf16, int8_sym, fp4_e3m0, ...; fp4 = fp4_e3m0)")
      ->capture_default_str();
  cmd->add_option("--block", a->block, "Codec block size (32..4096)")->capture_default_str();
  cmd->add_option("--scale", a->scale, "Codec block-scale type: bf16, fp16, fp32, pow2")
      ->capture_default_str();
  cmd->add_option("--download-codec", a->download_codec,
                  "Codec of the coordinator's updates (default: --codec)");
  cmd->add_option("--workers", a->workers, "Workers M")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{1'000'000'000}));
  cmd->add_option("--bandwidth", a->bandwidth,
                  "Per-direction rate of every worker's link (100mbit, 1gbit, inf)")
      ->capture_default_str();
  cmd->add_option("--latency", a->latency, "One-way latency of every link (20ms)")->capture_default_str();
  cmd->add_option(
         "--topology", a->topology,
         "ring (all-reduce among workers) or coordinator; default: ring for ddp, coordinator otherwise")
      ->capture_default_str();
  cmd->add_option(
         "--protocol", a->protocol,
         "Coordinator exchange: engine (lowband's push RPC + long-poll fetch: 4 latencies per sync) or "
         "ideal (one latency per message)")
      ->capture_default_str();
  cmd->add_option("--steps", a->steps,
                  "Inner steps to simulate (0: automatic, 20*H and more until the steady state repeats)")
      ->capture_default_str();
  cmd->add_flag("--no-drain", a->no_drain, "Do not wait for updates still in flight after the last step");
  cmd->add_option("--ddp-overlap", a->ddp_overlap,
                  "ddp reduction: none (after the backward pass, lowband's engine) or backward (per layer "
                  "during it, PyTorch DDP); the sweep shows both")
      ->capture_default_str();
  cmd->add_option("--ddp-bucket-bytes", a->ddp_bucket_bytes,
                  "With --ddp-overlap backward: merge layers (last first) into buckets of at least this many "
                  "bytes (default: PyTorch's 25 MiB); 0: one bucket per layer")
      ->capture_default_str();
  cmd->add_option("--slow-workers", a->slow_workers,
                  "Number K of workers on slower links (--slow-bandwidth)");
  cmd->add_option("--slow-bandwidth", a->slow_bandwidth, "Rate of the slow workers' links");
  cmd->add_option("--stragglers", a->stragglers,
                  "Number K of workers that compute slower (--straggler-factor)");
  cmd->add_option("--straggler-factor", a->straggler_factor, "Step-time multiplier of the stragglers")
      ->capture_default_str();
  cmd->add_option("--worker-bandwidths", a->worker_bandwidths,
                  "Per-worker link rates, M values (1gbit,1gbit,100mbit)");
  cmd->add_option("--step-time-factors", a->step_time_factors, "Per-worker step-time multipliers, M values");
  cmd->add_option("--coordinator-bandwidth", a->coordinator_bandwidth,
                  "Coordinator ingress and egress rate shared by all workers")
      ->capture_default_str();
  cmd->add_option("--coordinator-time", a->coordinator_time, "Coordinator time to close a round")
      ->capture_default_str();
  cmd->add_option("--encode-time", a->encode_time,
                  "Worker time to encode a fragment (on the training thread)")
      ->capture_default_str();
  cmd->add_option("--apply-time", a->apply_time, "Worker time to apply an update (on the training thread)")
      ->capture_default_str();
  cmd->add_option("--host-time-per-mb", a->host_time_per_mb,
                  "ddp (ring): host time per MB a worker sends in an all-reduce, beyond the wire (reduction, "
                  "copies, TCP stack); `lowband report --ddp-calibration` measures it")
      ->capture_default_str();
  cmd->add_option("--fragment-params", a->fragment_params,
                  "Parameters per fragment, P values (a real layout)");
  cmd->add_option(
      "--payload-bytes", a->payload_bytes,
      "Measured payload bytes per sync: one value or P values (ddp: the gradient's bytes per step); "
      "also the download size unless --download-bytes or --download-codec");
  cmd->add_option("--download-bytes", a->download_bytes,
                  "Measured update bytes per sync: one value or P values");
  cmd->add_flag("--sweep", a->sweep, "Find the bandwidth each algorithm variant needs for each --targets");
  cmd->add_option("--targets", a->targets, "Sweep targets in percent (or fractions)")->capture_default_str();
  cmd->add_flag("--json", a->json, "Print one JSON object instead of text");

  cmd->callback([a] {
    const sim::SimConfig config = BuildConfig(*a);
    sim::SweepOptions options;
    options.targets = ParseTargets(a->targets);
    if (a->sweep) {
      auto result = sim::Sweep(config, options);
      if (!result.ok()) throw CommandError("simulate: " + result.status().message());
      if (a->json) {
        fmt::print("{}\n", sim::ToJson(*result).dump(2));
      } else {
        fmt::print("{}", sim::FormatSweepTable(*result));
      }
      return;
    }
    auto result = sim::Simulate(config);
    if (!result.ok()) throw CommandError("simulate: " + result.status().message());
    if (a->json) {
      fmt::print("{}\n", sim::ToJson(*result).dump(2));
    } else {
      fmt::print("{}", sim::FormatResult(*result));
    }
  });
}

}  // namespace lowband::tools
