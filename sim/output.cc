// JSON and text forms of simulator inputs and results.
#include <cmath>
#include <string>

#include <fmt/format.h>

#include "sim/simulator.h"
#include "sim/units.h"

namespace lowband::sim {

namespace {

// Infinite rates (unlimited links) are JSON null.
nlohmann::json Rate(double bps) { return std::isfinite(bps) ? nlohmann::json(bps) : nlohmann::json(nullptr); }

nlohmann::json CodecJson(const quant::CodecSpec& s) {
  nlohmann::json j = {{"format", quant::FormatName(s.format)}};
  if (quant::IsBlockwise(s.format)) {
    j["block"] = s.block_size;
    j["scale"] = quant::ScaleTypeName(s.scale_type);
  }
  return j;
}

std::string CodecText(const quant::CodecSpec& s) {
  if (!quant::IsBlockwise(s.format)) return std::string(quant::FormatName(s.format));
  return fmt::format("{}/{}", quant::FormatName(s.format), s.block_size);
}

// "1.2B", "350M".
std::string ParamsText(uint64_t n) {
  const double v = static_cast<double>(n);
  if (v >= 1e12) return fmt::format("{:.3g}T", v / 1e12);
  if (v >= 1e9) return fmt::format("{:.3g}B", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.3g}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.3g}k", v / 1e3);
  return fmt::format("{}", n);
}

std::string Percent(double u) { return fmt::format("{:.1f} %", 100.0 * u); }

}  // namespace

nlohmann::json ToJson(const SimConfig& c) {
  nlohmann::json j = {
      {"algo", AlgoName(c.algo)},
      {"workers", c.workers},
      {"params", c.params},
      {"layers", c.layers},
      {"step_seconds", c.step_seconds},
      {"backward_fraction", c.backward_fraction},
      {"H", c.inner_steps},
      {"fragments", c.fragments},
      {"tau", c.overlap},
      {"late", LatePolicyName(c.late)},
      {"codec", CodecJson(c.codec)},
      {"download_codec", c.download_codec ? CodecJson(*c.download_codec) : nlohmann::json(nullptr)},
      {"ddp_overlap", DdpOverlapName(c.ddp_overlap)},
      {"ddp_bucket_bytes", c.ddp_bucket_bytes},
      {"bandwidth_bps", Rate(c.bandwidth_bps)},
      {"latency_seconds", c.latency_seconds},
      {"topology", TopologyName(c.topology)},
      {"protocol", ProtocolName(c.protocol)},
      {"coordinator_ingress_bps", Rate(c.coordinator_ingress_bps)},
      {"coordinator_egress_bps", Rate(c.coordinator_egress_bps)},
      {"coordinator_seconds", c.coordinator_seconds},
      {"encode_seconds", c.encode_seconds},
      {"apply_seconds", c.apply_seconds},
      {"steps", c.steps},
      {"drain", c.drain},
  };
  if (!c.fragment_params.empty()) j["fragment_params"] = c.fragment_params;
  if (!c.upload_bytes.empty()) j["upload_bytes"] = c.upload_bytes;
  if (!c.download_bytes.empty()) j["download_bytes"] = c.download_bytes;
  nlohmann::json groups = nlohmann::json::array();
  for (const WorkerGroup& g : c.groups) {
    groups.push_back({{"count", g.count},
                      {"up_bps", g.up_bps == 0 ? nlohmann::json("default") : Rate(g.up_bps)},
                      {"down_bps", g.down_bps == 0 ? nlohmann::json("default") : Rate(g.down_bps)},
                      {"latency_seconds",
                       g.latency_seconds < 0 ? nlohmann::json("default") : nlohmann::json(g.latency_seconds)},
                      {"step_time_factor", g.step_time_factor}});
  }
  j["groups"] = groups;
  return j;
}

nlohmann::json ToJson(const SimResult& r) {
  nlohmann::json groups = nlohmann::json::array();
  for (const GroupResult& g : r.groups) {
    groups.push_back({{"count", g.group.count},
                      {"up_bps", Rate(g.group.up_bps)},
                      {"down_bps", Rate(g.group.down_bps)},
                      {"latency_seconds", g.group.latency_seconds},
                      {"step_time_factor", g.group.step_time_factor},
                      {"wall_seconds", g.wall_seconds},
                      {"compute_seconds", g.compute_seconds},
                      {"stall_seconds", g.stall_seconds},
                      {"other_seconds", g.other_seconds},
                      {"compute_utilization", g.utilization},
                      {"steady_utilization", g.steady_utilization},
                      {"bytes_sent", g.bytes_sent},
                      {"bytes_received", g.bytes_received}});
  }
  return {
      {"config", ToJson(r.config)},
      {"algo", AlgoName(r.config.algo)},
      {"workers", r.config.workers},
      {"steps", r.config.steps},
      {"wall_seconds", r.wall_seconds},
      {"compute_seconds", r.compute_seconds},
      {"stall_seconds", r.stall_seconds},
      {"other_seconds", r.other_seconds},
      {"compute_utilization", r.compute_utilization},
      {"steady",
       {{"from_step", r.steady.from_step},
        {"to_step", r.steady.to_step},
        {"periodic", r.steady.periodic},
        {"wall_seconds", r.steady.wall_seconds},
        {"compute_seconds", r.steady.compute_seconds},
        {"stall_seconds", r.steady.stall_seconds},
        {"compute_utilization", r.steady.utilization},
        {"syncs", r.steady.syncs}}},
      {"bytes_sent_per_worker", r.bytes_sent_per_worker},
      {"bytes_received_per_worker", r.bytes_received_per_worker},
      {"bytes_per_worker", r.bytes_sent_per_worker + r.bytes_received_per_worker},
      {"syncs", r.syncs},
      {"fragment_params", r.fragment_params},
      {"upload_bytes", r.upload_bytes},
      {"download_bytes", r.download_bytes},
      {"largest_exchange_bytes", r.largest_exchange_bytes},
      {"peak_bandwidth_bps", r.peak_bandwidth_bps},
      {"mean_bandwidth_bps", r.mean_bandwidth_bps},
      {"groups", groups},
  };
}

nlohmann::json ToJson(const SweepResult& s) {
  nlohmann::json rows = nlohmann::json::array();
  for (const SweepRow& row : s.rows) {
    nlohmann::json cells = nlohmann::json::object();
    for (size_t i = 0; i < s.options.targets.size(); ++i) {
      const auto& v = row.bandwidth_bps[i];
      cells[fmt::format("{:g}", s.options.targets[i])] = v ? nlohmann::json(*v) : nlohmann::json(nullptr);
    }
    rows.push_back({{"name", row.name},
                    {"description", row.description},
                    {"bandwidth_bps", cells},
                    {"utilization_at_min", row.utilization_at_min},
                    {"utilization_at_max", row.utilization_at_max},
                    {"monotone", row.monotone}});
  }
  return {{"targets", s.options.targets},
          {"utilization", "steady-state compute utilization (SimResult::steady)"},
          {"min_bps", s.options.min_bps},
          {"max_bps", s.options.max_bps},
          {"tolerance", s.options.tolerance},
          {"simulations", s.simulations},
          {"base", ToJson(s.base)},
          {"rows", rows}};
}

std::string FormatSweepTable(const SweepResult& s) {
  size_t name_width = 4;
  for (const SweepRow& row : s.rows) name_width = std::max(name_width, row.name.size());
  constexpr size_t kCell = 15;
  std::string out = fmt::format("{:<{}}", "algo", name_width);
  for (double t : s.options.targets) out += fmt::format("{:>{}}", fmt::format("{:g} %", 100 * t), kCell);
  out += "\n";
  for (const SweepRow& row : s.rows) {
    out += fmt::format("{:<{}}", row.name, name_width);
    for (const auto& v : row.bandwidth_bps) {
      std::string cell;
      if (!v) {
        cell = "> " + FormatBandwidth(s.options.max_bps);
      } else if (*v <= s.options.min_bps) {
        cell = "<= " + FormatBandwidth(*v);
      } else {
        cell = FormatBandwidth(*v);
      }
      out += fmt::format("{:>{}}", cell, kCell);
    }
    if (!row.monotone) out += "  (not monotone: first crossings)";
    out += "\n";
  }
  out += "\n";
  for (const SweepRow& row : s.rows) {
    out += fmt::format("{:<{}}  {}\n", row.name, name_width, row.description);
  }
  return out;
}

std::string FormatResult(const SimResult& r) {
  const SimConfig& c = r.config;
  std::string what;
  const std::string codec = c.upload_bytes.empty() ? CodecText(c.codec) : "measured payload sizes";
  switch (c.algo) {
    case Algo::kDdp:
      what = fmt::format("ddp (fp32 all-reduce, overlap {})", DdpOverlapName(c.ddp_overlap));
      break;
    case Algo::kDiloco:
      what = fmt::format("diloco (H={}, {})", c.inner_steps, codec);
      break;
    case Algo::kStreaming:
      what = fmt::format("streaming (H={}, P={}, tau={}, {})", c.inner_steps, c.fragments, c.overlap, codec);
      break;
  }
  std::string out = fmt::format(
      "{}: {} workers, {} params, {} per step, {} links, {} latency, {} topology{}\n", what, c.workers,
      ParamsText(c.params), FormatSeconds(c.step_seconds), FormatBandwidth(c.bandwidth_bps),
      FormatSeconds(c.latency_seconds), TopologyName(c.topology),
      c.topology == Topology::kCoordinator ? fmt::format(", {} protocol", ProtocolName(c.protocol)) : "");
  if (c.groups.size() > 1) {
    for (const GroupResult& g : r.groups) {
      out += fmt::format("  {} worker(s): up {}, down {}, step x{:g}: utilization {}\n", g.group.count,
                         FormatBandwidth(g.group.up_bps), FormatBandwidth(g.group.down_bps),
                         g.group.step_time_factor, Percent(g.steady_utilization));
    }
  }
  out += fmt::format("compute utilization  {} steady state (steps {}..{}{}), {} over the whole run\n",
                     Percent(r.steady.utilization), r.steady.from_step + 1, r.steady.to_step,
                     r.steady.periodic ? "" : "; not yet repeating: try more --steps",
                     Percent(r.compute_utilization));
  out += fmt::format("time per worker      wall {}, compute {}, stall {} ({} steps, {} syncs)\n",
                     FormatSeconds(r.wall_seconds), FormatSeconds(r.compute_seconds),
                     FormatSeconds(r.stall_seconds), c.steps, r.syncs);
  out += fmt::format("bytes per worker     sent {}, received {}\n", FormatBytes(r.bytes_sent_per_worker),
                     FormatBytes(r.bytes_received_per_worker));
  out += fmt::format("bandwidth            peak {} (largest exchange {} in {} of compute), mean {}\n",
                     FormatBandwidth(r.peak_bandwidth_bps), FormatBytes(r.largest_exchange_bytes),
                     c.algo == Algo::kDdp ? std::string("one step")
                                          : fmt::format("{} step(s)", std::max<uint64_t>(c.overlap, 1)),
                     FormatBandwidth(r.mean_bandwidth_bps));
  return out;
}

}  // namespace lowband::sim
