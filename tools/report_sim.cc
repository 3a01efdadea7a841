// `lowband report --simulate`: the simulator (sim/) run with what each run measured, so a report can
// set measured utilization beside predicted utilization (docs/bandwidth-lab.md).
#include <algorithm>
#include <limits>
#include <string>

#include <fmt/format.h>

#include "quant/codec.h"
#include "sim/simulator.h"
#include "tools/report.h"

namespace lowband::tools {

namespace {

// tc tbf on a veth counts whole Ethernet frames: 1448 payload bytes (TCP with timestamps) ride in
// 1514 bytes (20 IP + 32 TCP + 14 Ethernet header bytes more).
constexpr double kTbfPayloadShare = 1448.0 / 1514.0;

// The simulator's settings for `run` over links of `bandwidth_bps` and `latency_seconds`.
StatusOr<sim::SimConfig> ConfigOf(const RunData& run, double bandwidth_bps, double latency_seconds,
                                  bool* per_worker) {
  if (!run.step_seconds || *run.step_seconds <= 0 || !run.parameters || *run.parameters <= 0) {
    return FailedPrecondition(fmt::format(
        "{}: summary.json lacks step_seconds or parameters (written by lowband launch since the bandwidth "
        "lab); rerun it with this lowband",
        run.name));
  }
  sim::SimConfig c;
  LOWBAND_ASSIGN_OR_RETURN(c.algo, sim::ParseAlgo(run.algo));
  c.workers = static_cast<uint64_t>(std::max<int64_t>(1, run.workers.value_or(1)));
  c.params = static_cast<uint64_t>(*run.parameters);
  c.step_seconds = *run.step_seconds;
  c.ddp_overlap = sim::DdpOverlap::kNone;  // lowband's DdpWorker reduces after the backward pass
  c.host_seconds_per_byte = c.algo == sim::Algo::kDdp ? run.host_seconds_per_byte : 0.0;
  c.steps = static_cast<uint64_t>(std::max<int64_t>(1, run.steps.value_or(0)));
  if (c.algo != sim::Algo::kDdp) {
    c.inner_steps = static_cast<uint64_t>(run.H.value_or(1));
    c.fragments = c.algo == sim::Algo::kDiloco ? 1 : static_cast<uint32_t>(run.fragments.value_or(1));
    c.overlap = c.algo == sim::Algo::kDiloco ? 0 : static_cast<uint64_t>(run.tau.value_or(0));
    if (!run.late.empty()) {
      LOWBAND_ASSIGN_OR_RETURN(c.late, sim::ParseLatePolicy(run.late));
    }
    LOWBAND_ASSIGN_OR_RETURN(c.codec.format, quant::ParseFormat(run.codec.empty() ? "fp32" : run.codec));
    c.codec.block_size = static_cast<uint32_t>(run.codec_block.value_or(64));
    if (run.fragment_elements.size() == c.fragments) c.fragment_params = run.fragment_elements;
    // The exchange's host time, as the run measured it (older runs: none).
    c.encode_seconds = run.encode_seconds.value_or(0.0);
    c.apply_seconds = run.apply_seconds.value_or(0.0);
    c.coordinator_seconds = run.coordinator_round_seconds.value_or(0.0);
  }
  c.layers = std::max<uint32_t>(c.fragments, 1);
  // Workers sharing cores run at different speeds and every round waits for the slowest: simulate
  // each worker with its own measured step time when the run recorded them.
  *per_worker = run.worker_step_seconds.size() == c.workers && c.workers > 1 &&
                std::all_of(run.worker_step_seconds.begin(), run.worker_step_seconds.end(),
                            [](double t) { return t > 0; });
  if (*per_worker) {
    for (const double t : run.worker_step_seconds) {
      sim::WorkerGroup g;
      g.count = 1;
      g.step_time_factor = t / c.step_seconds;
      c.groups.push_back(g);
    }
  }
  c.bandwidth_bps = bandwidth_bps;
  c.latency_seconds = latency_seconds;
  return c;
}

}  // namespace

StatusOr<SimulatedRun> SimulateRun(const RunData& run, std::optional<double> rate_mbit) {
  if (!run.link) {
    return FailedPrecondition(fmt::format(
        "{}: no link in summary.json: only runs over shaped links (lowband launch --link-rate, or "
        "deploy/netns-lab.sh --rate) can be simulated",
        run.name));
  }
  const std::optional<double> rate = rate_mbit ? rate_mbit : run.link->rate_mbit;
  if (!rate || *rate <= 0) {
    return FailedPrecondition(fmt::format("{}: the link has no rate to simulate", run.name));
  }
  const bool tbf = run.link->kind.rfind("netns", 0) == 0;
  SimulatedRun out;
  LOWBAND_ASSIGN_OR_RETURN(const sim::SimConfig c,
                           ConfigOf(run, *rate * 1e6 * (tbf ? kTbfPayloadShare : 1.0),
                                    run.link->latency_ms.value_or(0.0) / 1e3, &out.per_worker_steps));
  auto result = sim::Simulate(c);
  if (!result.ok()) return result.status().WithContext("simulating " + run.name);
  out.utilization = result->compute_utilization;
  return out;
}

StatusOr<double> CalibrateHostCost(const RunData& run) {
  if (run.algo != "ddp" || !run.compute_utilization || *run.compute_utilization <= 0) {
    return InvalidArgument(fmt::format(
        "{}: a ddp calibration run must be a ddp run with a measured compute_utilization (got algo '{}')",
        run.name, run.algo));
  }
  if (run.link && run.link->rate_mbit) {
    return InvalidArgument(fmt::format(
        "{}: the ddp calibration run must run over unshaped links (deploy/netns-lab.sh --rate none), "
        "but its link has a rate of {} Mbit/s",
        run.name, *run.link->rate_mbit));
  }
  const double measured = *run.compute_utilization;
  bool per_worker = false;
  LOWBAND_ASSIGN_OR_RETURN(sim::SimConfig c,
                           ConfigOf(run, std::numeric_limits<double>::infinity(), 0.0, &per_worker));
  auto utilization = [&](double host) -> StatusOr<double> {
    c.host_seconds_per_byte = host;
    LOWBAND_ASSIGN_OR_RETURN(const sim::SimResult r, sim::Simulate(c));
    return r.compute_utilization;
  };
  LOWBAND_ASSIGN_OR_RETURN(const double free_links, utilization(0.0));
  if (free_links <= measured) return 0.0;
  // Utilization falls as the host cost grows: bisect between 0 and a cost no machine has (1 s/MB).
  double lo = 0, hi = 1e-6;
  for (int i = 0; i < 60; ++i) {
    const double mid = 0.5 * (lo + hi);
    LOWBAND_ASSIGN_OR_RETURN(const double u, utilization(mid));
    (u > measured ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

}  // namespace lowband::tools
