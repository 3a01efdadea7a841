// `lowband report --simulate`: the simulator (sim/) run with what each run measured, so a report can
// set measured utilization beside predicted utilization (docs/bandwidth-lab.md).
#include <algorithm>
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
  }
  c.layers = std::max<uint32_t>(c.fragments, 1);
  // Workers sharing cores run at different speeds and every round waits for the slowest: simulate
  // each worker with its own measured step time when the run recorded them.
  const bool per_worker = run.worker_step_seconds.size() == c.workers && c.workers > 1 &&
                          std::all_of(run.worker_step_seconds.begin(), run.worker_step_seconds.end(),
                                      [](double t) { return t > 0; });
  if (per_worker) {
    for (const double t : run.worker_step_seconds) {
      sim::WorkerGroup g;
      g.count = 1;
      g.step_time_factor = t / c.step_seconds;
      c.groups.push_back(g);
    }
  }
  const bool tbf = run.link->kind.rfind("netns", 0) == 0;
  c.bandwidth_bps = *rate * 1e6 * (tbf ? kTbfPayloadShare : 1.0);
  c.latency_seconds = run.link->latency_ms.value_or(0.0) / 1e3;
  auto result = sim::Simulate(c);
  if (!result.ok()) return result.status().WithContext("simulating " + run.name);
  SimulatedRun out;
  out.utilization = result->compute_utilization;
  out.per_worker_steps = per_worker;
  return out;
}

}  // namespace lowband::tools
