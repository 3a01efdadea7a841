// Sweep: the smallest link rate that reaches each target utilization, per algorithm variant.
//
// Utilization is non-decreasing in bandwidth (every event time is a max/plus of transfer times that
// shrink as the rate grows), so one coarse log grid finds the first grid point at or above each
// target and a log-scale bisection between it and the point before narrows it to `tolerance`. The
// grid also checks the monotonicity it relies on and reports a row that violates it.
#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "sim/simulator.h"

namespace lowband::sim {

namespace {

// The grid's step: a factor of 2 (about 34 points from 1 kbit/s to 10 Tbit/s).
constexpr double kGridFactor = 2.0;

class UtilizationCurve {
 public:
  explicit UtilizationCurve(const SimConfig& config) : config_(config) {}

  StatusOr<double> At(double bps) {
    auto it = cache_.find(bps);
    if (it != cache_.end()) return it->second;
    auto r = Simulate(WithBandwidth(config_, bps));
    ++calls_;
    if (!r.ok()) return r.status();
    cache_[bps] = r->steady.utilization;
    return r->steady.utilization;
  }
  uint64_t calls() const { return calls_; }

 private:
  const SimConfig& config_;
  std::map<double, double> cache_;
  uint64_t calls_ = 0;
};

SimConfig VariantBase(const SimConfig& base) {
  SimConfig c = base;
  // Each variant's codec sizes its payloads: measured sizes belong to one configuration.
  c.upload_bytes.clear();
  c.download_bytes.clear();
  c.download_codec.reset();
  return c;
}

}  // namespace

SimConfig WithBandwidth(const SimConfig& config, double bandwidth_bps) {
  SimConfig c = config;
  const double factor = std::isfinite(config.bandwidth_bps) ? bandwidth_bps / config.bandwidth_bps : 1.0;
  for (WorkerGroup& g : c.groups) {
    if (g.up_bps > 0) g.up_bps *= factor;
    if (g.down_bps > 0) g.down_bps *= factor;
  }
  c.bandwidth_bps = bandwidth_bps;
  return c;
}

std::vector<SweepVariant> DefaultSweepVariants(const SimConfig& base) {
  const SimConfig b = VariantBase(base);
  quant::CodecSpec fp32 = b.codec;
  fp32.format = quant::Format::kFp32;
  quant::CodecSpec fp4 = b.codec;
  fp4.format = quant::Format::kFp4E3M0;
  fp4.block_size = 64;
  const uint64_t tau = std::max<uint64_t>(b.overlap, 1);
  const uint32_t P = b.fragments;
  std::vector<SweepVariant> v;

  SimConfig ddp = b;
  ddp.algo = Algo::kDdp;
  ddp.ddp_overlap = DdpOverlap::kBackward;
  v.push_back({"ddp", "data-parallel, fp32 all-reduce overlapped with the backward pass (PyTorch DDP)", ddp});
  ddp.ddp_overlap = DdpOverlap::kNone;
  v.push_back(
      {"ddp-engine", "data-parallel, fp32 all-reduce after the backward pass (lowband's engine)", ddp});

  SimConfig diloco = b;
  diloco.algo = Algo::kDiloco;
  diloco.codec = fp32;
  v.push_back({"diloco", "DiLoCo, fp32, blocking sync every H steps", diloco});

  SimConfig streaming = b;
  streaming.algo = Algo::kStreaming;
  streaming.codec = fp32;
  streaming.overlap = 0;
  v.push_back({"streaming", fmt::format("Streaming DiLoCo, fp32, P={}, tau=0", P), streaming});
  streaming.overlap = tau;
  v.push_back({"streaming-overlap", fmt::format("Streaming DiLoCo, fp32, P={}, tau={}", P, tau), streaming});
  streaming.codec = fp4;
  v.push_back(
      {"streaming-fp4", fmt::format("Streaming DiLoCo, fp4_e3m0/64, P={}, tau={}", P, tau), streaming});
  return v;
}

StatusOr<SweepResult> Sweep(const SimConfig& base, const SweepOptions& options) {
  return SweepVariants(DefaultSweepVariants(base), base, options);
}

StatusOr<SweepResult> SweepVariants(const std::vector<SweepVariant>& variants, const SimConfig& base,
                                    const SweepOptions& options) {
  if (!(options.min_bps > 0) || !(options.max_bps > options.min_bps) || !std::isfinite(options.max_bps)) {
    return InvalidArgument(fmt::format("sweep range {}..{} bit/s; expected 0 < min < max < infinity",
                                       options.min_bps, options.max_bps));
  }
  if (!(options.tolerance > 1.0)) {
    return InvalidArgument(
        fmt::format("sweep tolerance {}; expected a ratio > 1 (e.g. 1.001)", options.tolerance));
  }
  if (options.targets.empty()) return InvalidArgument("sweep needs at least one target utilization");
  for (double t : options.targets) {
    if (!(t > 0 && t <= 1)) {
      return InvalidArgument(fmt::format("target utilization {}; expected a fraction in (0, 1]", t));
    }
  }
  SweepResult result;
  result.options = options;
  result.base = base;

  std::vector<double> grid;
  for (double bw = options.min_bps; bw < options.max_bps; bw *= kGridFactor) grid.push_back(bw);
  grid.push_back(options.max_bps);

  for (const SweepVariant& variant : variants) {
    SweepRow row;
    row.name = variant.name;
    row.description = variant.description;
    UtilizationCurve curve(variant.config);
    std::vector<double> u(grid.size());
    for (size_t i = 0; i < grid.size(); ++i) {
      auto v = curve.At(grid[i]);
      if (!v.ok()) return v.status().WithContext("sweep variant " + variant.name);
      u[i] = *v;
      if (i > 0 && u[i] < u[i - 1] * (1.0 - 1e-12)) row.monotone = false;
    }
    row.utilization_at_min = u.front();
    row.utilization_at_max = u.back();
    for (double target : options.targets) {
      size_t first = 0;
      while (first < grid.size() && u[first] < target) ++first;
      if (first == grid.size()) {
        row.bandwidth_bps.push_back(std::nullopt);
        continue;
      }
      if (first == 0) {
        row.bandwidth_bps.push_back(grid[0]);
        continue;
      }
      double lo = grid[first - 1], hi = grid[first];
      while (hi / lo > options.tolerance) {
        const double mid = std::sqrt(lo * hi);
        auto v = curve.At(mid);
        if (!v.ok()) return v.status().WithContext("sweep variant " + variant.name);
        (*v >= target ? hi : lo) = mid;
      }
      row.bandwidth_bps.push_back(hi);
    }
    result.simulations += curve.calls();
    result.rows.push_back(std::move(row));
  }
  return result;
}

}  // namespace lowband::sim
