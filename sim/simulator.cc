#include "sim/simulator.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace lowband::sim {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// More steps than this would take seconds per simulation; no steady state needs them.
constexpr uint64_t kMaxSteps = 100'000'000;
// Automatic steps (SimConfig::steps = 0) start at 20 H and double up to this factor.
constexpr uint64_t kAutoStepsGrowth = 64;

// Steps of an automatic run (SimConfig::steps = 0) before any doubling: 20 periods of H.
uint64_t AutoSteps(uint64_t inner_steps) { return 20 * std::max<uint64_t>(inner_steps, 1); }

// Seconds to put `bytes` on a link of `rate` bits/s (0 on an infinitely fast link).
double WireSeconds(double bytes, double rate) { return bytes * 8.0 / rate; }

bool IsPositiveRate(double r) { return r > 0 && !std::isnan(r); }

Status CheckSeconds(double v, const char* field) {
  if (!(v >= 0) || !std::isfinite(v)) {
    return InvalidArgument(fmt::format("{} is {}; expected a finite number of seconds >= 0", field, v));
  }
  return Status::Ok();
}

// One group of identical workers while the run is simulated.
struct GroupState {
  WorkerGroup group;
  double step_seconds = 0;  // T times the group's factor
  double clock = 0;         // when the next step's compute can start
  // Coordinator exchanges: when the next push may start (kEngine: the previous push's reply came
  // back; kIdeal: its last byte is on the wire) and when the downlink is free (kIdeal).
  double up_ready = 0;
  double down_free = 0;
  // kEngine: the latest fetch (one at a time; Exchanges::FetchArrival says when it returns), open
  // until the next push is known: a request sent while that push is on the uplink waits behind it
  // (one FIFO link; Exchanges::QueueBehindPush). Before the first fetch it returned at -inf.
  struct Fetch {
    bool open = false;
    int64_t fragment = -1;  // whose pending result it delivers (-1: none, e.g. ddp)
    double issue = -kInf;   // when the worker sends the request
    double close = -kInf;   // when the round's update is ready at the coordinator
    double egress = -kInf;  // when the coordinator's egress has sent it (-inf: unlimited)
    double wire = 0;        // the update's wire time on the downlink
  };
  Fetch fetch;
  // Ring all-reduces: when this worker's ring is free.
  double ring_free = 0;
  double compute = 0, stall = 0, other = 0, sent = 0, received = 0;
  struct Pending {
    bool active = false;
    double arrival = 0;
    uint64_t apply_step = 0;
  };
  std::vector<Pending> pending;  // per fragment
  // Clock, stall and compute at each period boundary of the second half of the run (Marks).
  struct Mark {
    double clock = 0, stall = 0, compute = 0;
  };
  std::vector<Mark> marks;
};

// The links and the coordinator: runs one exchange (a round or a collective) at a time, in the
// order the workers start them.
class Exchanges {
 public:
  Exchanges(const SimConfig& config, std::vector<GroupState>* groups) : c_(config), groups_(*groups) {
    for (const GroupState& g : groups_) {
      ring_rate_ = std::min({ring_rate_, g.group.up_bps, g.group.down_bps});
      ring_latency_ = std::max(ring_latency_, g.group.latency_seconds);
    }
    arrivals_.resize(groups_.size());
    replies_.resize(groups_.size());
  }

  // Group i's contribution is ready at ready[i]; returns when each group has the result.
  // `fragment`: the pending result slot (GroupState::pending) this exchange fills, -1 for none.
  // With kEngine a push can delay the previous exchange's result (QueueBehindPush), which is then
  // moved in its slot.
  const std::vector<double>& Run(const std::vector<double>& ready, double up_bytes, double down_bytes,
                                 int64_t fragment = -1) {
    if (c_.topology == Topology::kRing) {
      Ring(ready, up_bytes);
    } else {
      Coordinator(ready, up_bytes, down_bytes, fragment);
    }
    return arrivals_;
  }

  // Bytes one worker sends (and receives) in a ring all-reduce of `bytes`.
  double RingBytes(double bytes) const {
    const double m = static_cast<double>(c_.workers);
    return 2.0 * (m - 1.0) / m * bytes;
  }

 private:
  void Ring(const std::vector<double>& ready, double bytes) {
    double start = 0;
    for (size_t i = 0; i < groups_.size(); ++i) start = std::max({start, ready[i], groups_[i].ring_free});
    const double end = start + RingAllReduceSeconds(c_.workers, bytes, ring_rate_, ring_latency_) +
                       c_.host_seconds_per_byte * RingBytes(bytes);
    for (size_t i = 0; i < groups_.size(); ++i) {
      GroupState& g = groups_[i];
      g.ring_free = end;
      g.sent += RingBytes(bytes);
      g.received += RingBytes(bytes);
      arrivals_[i] = end;
    }
  }

  void Coordinator(const std::vector<double>& ready, double up_bytes, double down_bytes, int64_t fragment) {
    const bool engine = c_.protocol == Protocol::kEngine;
    const double m = static_cast<double>(c_.workers);
    double close = 0;
    double first_at_coordinator = kInf;
    for (size_t i = 0; i < groups_.size(); ++i) {
      GroupState& g = groups_[i];
      const double lat = g.group.latency_seconds;
      const double start = std::max(ready[i], g.up_ready);
      const double wire = WireSeconds(up_bytes, g.group.up_bps);
      if (engine) QueueBehindPush(i, start, wire);
      const double arrived = start + lat + wire;
      replies_[i] = arrived + lat;
      g.up_ready = engine ? replies_[i] : start + wire;
      g.sent += up_bytes;
      close = std::max(close, arrived);
      first_at_coordinator = std::min(first_at_coordinator, start + lat);
    }
    if (std::isfinite(c_.coordinator_ingress_bps)) {
      const double begin = std::max(ingress_free_, first_at_coordinator);
      ingress_free_ = begin + WireSeconds(m * up_bytes, c_.coordinator_ingress_bps);
      close = std::max(close, ingress_free_);
    }
    close += c_.coordinator_seconds;
    double egress_done = -kInf;
    if (std::isfinite(c_.coordinator_egress_bps)) {
      const double begin = std::max(egress_free_, close);
      egress_free_ = begin + WireSeconds(m * down_bytes, c_.coordinator_egress_bps);
      egress_done = egress_free_;
    }
    for (size_t i = 0; i < groups_.size(); ++i) {
      GroupState& g = groups_[i];
      const double lat = g.group.latency_seconds;
      const double wire = WireSeconds(down_bytes, g.group.down_bps);
      double arrival = 0;
      if (engine) {
        // The fetch request leaves once the push's reply is back and the previous fetch returned;
        // the coordinator answers it when the round has closed.
        g.fetch = {true, fragment, std::max(replies_[i], FetchArrival(g)), close, egress_done, wire};
        arrival = FetchArrival(g);
      } else {
        const double start = std::max(close, g.down_free);
        arrival = std::max(start + lat + wire, egress_done + lat);
        g.down_free = arrival - lat;
      }
      g.received += down_bytes;
      arrivals_[i] = arrival;
    }
  }

  // When group g's open fetch returns: the request reaches the coordinator one latency after it
  // is sent, is answered once the round's update is ready, and the update crosses the downlink.
  static double FetchArrival(const GroupState& g) {
    const double lat = g.group.latency_seconds;
    const double answered = std::max(g.fetch.issue + lat, g.fetch.close);
    return std::max(answered + lat + g.fetch.wire, g.fetch.egress + lat);
  }

  // The engine's fetcher sends a round's request (GetUpdate) when that round's push is answered,
  // and the pusher starts the next push at the same moment if one is waiting. Both go over the
  // worker's one connection and uplink, first in first out: a request sent no earlier than the
  // next push started leaves after that push's last byte. At 1 Mbit/s a 53 kB push holds the
  // request back 0.44 s (the bandwidth lab's streaming run with late=defer measured it).
  void QueueBehindPush(size_t i, double push_start, double push_wire) {
    GroupState& g = groups_[i];
    if (!g.fetch.open) return;
    g.fetch.open = false;  // later pushes start after this one's reply, when the request is out
    if (push_start > g.fetch.issue) return;
    g.fetch.issue = std::max(g.fetch.issue, push_start + push_wire);
    // Its result cannot have been applied yet: it would have been back before this push started.
    const auto slot = static_cast<size_t>(g.fetch.fragment);
    if (g.fetch.fragment >= 0 && slot < g.pending.size() && g.pending[slot].active) {
      g.pending[slot].arrival = FetchArrival(g);
    }
  }

  const SimConfig& c_;
  std::vector<GroupState>& groups_;
  double ring_rate_ = kInf;
  double ring_latency_ = 0;
  double ingress_free_ = 0;
  double egress_free_ = 0;
  std::vector<double> arrivals_;
  std::vector<double> replies_;
};

// Layer sizes: N spread evenly over L layers, the first N mod L layers one larger.
std::vector<uint64_t> LayerParams(const SimConfig& c) {
  std::vector<uint64_t> layers(c.layers, c.params / c.layers);
  for (uint64_t i = 0; i < c.params % c.layers; ++i) ++layers[i];
  return layers;
}

// Resolves algo presets, the topology, the steps and the groups' defaults.
SimConfig Resolve(const SimConfig& in) {
  SimConfig c = in;
  if (c.algo == Algo::kDiloco) {
    c.fragments = 1;
    c.overlap = 0;
  }
  if (c.topology == Topology::kDefault) {
    c.topology = c.algo == Algo::kDdp ? Topology::kRing : Topology::kCoordinator;
  }
  if (c.steps == 0) c.steps = AutoSteps(c.inner_steps);
  if (c.groups.empty()) c.groups.push_back(WorkerGroup{c.workers, 0, 0, -1, 1.0});
  for (WorkerGroup& g : c.groups) {
    if (g.up_bps == 0) g.up_bps = c.bandwidth_bps;
    if (g.down_bps == 0) g.down_bps = c.bandwidth_bps;
    if (g.latency_seconds < 0) g.latency_seconds = c.latency_seconds;
  }
  return c;
}

// Payload bytes per fragment, from the overrides or the codec.
void PayloadSizes(const SimConfig& c, const std::vector<uint64_t>& fragment_params, std::vector<uint64_t>* up,
                  std::vector<uint64_t>* down) {
  const size_t P = fragment_params.size();
  up->assign(P, 0);
  down->assign(P, 0);
  const quant::CodecSpec down_spec = c.download_codec.value_or(c.codec);
  for (size_t p = 0; p < P; ++p) {
    if (!c.upload_bytes.empty()) {
      (*up)[p] = c.upload_bytes.size() == 1 ? c.upload_bytes[0] : c.upload_bytes[p];
    } else {
      (*up)[p] = quant::EncodedSize(c.codec, fragment_params[p]);
    }
    if (!c.download_bytes.empty()) {
      (*down)[p] = c.download_bytes.size() == 1 ? c.download_bytes[0] : c.download_bytes[p];
    } else if (!c.upload_bytes.empty() && !c.download_codec) {
      (*down)[p] = (*up)[p];
    } else {
      (*down)[p] = quant::EncodedSize(down_spec, fragment_params[p]);
    }
  }
}

// The period boundaries where the steady state is measured: the second half of the run, in whole
// periods of H steps counted back from the last step (a run shorter than two periods is one
// window from step 0). Skipping half the run lets transients that take a few periods die out.
class Marks {
 public:
  explicit Marks(const SimConfig& c) : steps_(c.steps) {
    const uint64_t H = c.inner_steps;
    if (c.steps < 2 * H) {
      from_ = 0;
      period_ = c.steps;
    } else {
      from_ = c.steps - H * std::max<uint64_t>(1, (c.steps / H) / 2);
      period_ = H;
    }
  }
  // Records the groups' state after step t if t is a boundary (t = 0: before the first step).
  void AtEndOfStep(uint64_t t, uint64_t syncs, std::vector<GroupState>* groups) {
    if (t < from_ || (steps_ - t) % period_ != 0) return;
    steps_at_.push_back(t);
    syncs_at_.push_back(syncs);
    for (GroupState& g : *groups) g.marks.push_back({g.clock, g.stall, g.compute});
  }
  const std::vector<uint64_t>& steps_at() const { return steps_at_; }
  const std::vector<uint64_t>& syncs_at() const { return syncs_at_; }

 private:
  uint64_t steps_ = 0, from_ = 0, period_ = 1;
  std::vector<uint64_t> steps_at_, syncs_at_;
};

bool Near(double a, double b) { return std::abs(a - b) <= 1e-9 * std::max(std::abs(a), std::abs(b)) + 1e-12; }

// The steady-state window among the marks: the longest run of whole cycles at the end in which
// every group repeats the last cycle's wall time, and all groups agree on it (they take part in
// the same rounds, so in a steady state they advance alike). A cycle is K = 1, 2 or 3 periods of
// H steps. Returns the index of the window's first mark, and whether such a cycle was found;
// without one, the whole second half is the window.
std::pair<size_t, bool> SteadyWindow(const std::vector<GroupState>& groups) {
  const size_t n = groups.front().marks.size() - 1;  // periods between marks
  auto wall = [&](const GroupState& g, size_t a, size_t b) { return g.marks[b].clock - g.marks[a].clock; };
  for (size_t K = 1; K <= 3 && 2 * K <= n; ++K) {
    const double cycle = wall(groups.front(), n - K, n);
    bool periodic = true;
    for (const GroupState& g : groups) {
      periodic = periodic && Near(wall(g, n - K, n), cycle) && Near(wall(g, n - 2 * K, n - K), cycle);
    }
    if (!periodic) continue;
    size_t first = n - 2 * K;
    while (first >= K) {
      bool same = true;
      for (const GroupState& g : groups) same = same && Near(wall(g, first - K, first), cycle);
      if (!same) break;
      first -= K;
    }
    return {first, true};
  }
  return {0, false};
}

// Waits for (block) or polls fragment p's update, and applies it.
void Collect(const SimConfig& c, GroupState* g, uint32_t p, bool block) {
  GroupState::Pending& pend = g->pending[p];
  if (!pend.active) return;
  if (pend.arrival > g->clock) {
    if (!block) return;
    g->stall += pend.arrival - g->clock;
    g->clock = pend.arrival;
  }
  pend.active = false;
  g->clock += c.apply_seconds;
  g->other += c.apply_seconds;
}

// DiLoCo and Streaming DiLoCo: worker/engine.cc's loop (compute step t; apply what is due at t;
// send what is due at t; with tau = 0 apply it right away).
uint64_t RunDiloco(const SimConfig& c, const std::vector<uint64_t>& up, const std::vector<uint64_t>& down,
                   std::vector<GroupState>* groups, Marks* marks) {
  const uint64_t H = c.inner_steps;
  const uint32_t P = c.fragments;
  // due[t mod H] = the fragment due at such steps (offsets p*H/P are distinct because H >= P).
  std::vector<int64_t> due(H, -1);
  for (uint32_t p = 0; p < P; ++p) due[p * H / P] = p;
  Exchanges exchanges(c, groups);
  std::vector<double> ready(groups->size());
  uint64_t syncs = 0;
  const bool wait = c.late == LatePolicy::kWait;
  for (GroupState& g : *groups) g.pending.assign(P, {});
  marks->AtEndOfStep(0, 0, groups);
  for (uint64_t t = 1; t <= c.steps; ++t) {
    for (GroupState& g : *groups) {
      g.clock += g.step_seconds;
      g.compute += g.step_seconds;
      for (uint32_t p = 0; p < P; ++p) {
        if (g.pending[p].active && g.pending[p].apply_step <= t) Collect(c, &g, p, wait);
      }
    }
    const int64_t p = due[t % H];
    if (p >= 0) {
      const auto fp = static_cast<uint32_t>(p);
      for (size_t i = 0; i < groups->size(); ++i) {
        GroupState& g = (*groups)[i];
        // A deferred update still missing when its fragment is due again must come first.
        Collect(c, &g, fp, /*block=*/true);
        g.clock += c.encode_seconds;
        g.other += c.encode_seconds;
        ready[i] = g.clock;
      }
      const std::vector<double>& arrivals =
          exchanges.Run(ready, static_cast<double>(up[fp]), static_cast<double>(down[fp]), p);
      for (size_t i = 0; i < groups->size(); ++i) {
        (*groups)[i].pending[fp] = {true, arrivals[i], t + c.overlap};
      }
      ++syncs;
      if (c.overlap == 0) {
        for (GroupState& g : *groups) Collect(c, &g, fp, wait);
      }
    }
    marks->AtEndOfStep(t, syncs, groups);
  }
  if (c.drain) {
    for (GroupState& g : *groups) {
      for (uint32_t p = 0; p < P; ++p) Collect(c, &g, p, /*block=*/true);
    }
  }
  return syncs;
}

// One ddp gradient bucket: its bytes and when it is ready, as a share of the step time.
struct Bucket {
  double bytes = 0;
  double ready_share = 1.0;
  uint64_t params = 0;
};

// kNone: the whole gradient at the end of the step. kBackward: layers from the last to the first,
// merged until a bucket holds ddp_bucket_bytes (0: one bucket per layer); a bucket is ready when
// the backward of its first layer (the lowest index in it) is done.
std::vector<Bucket> DdpBuckets(const SimConfig& c) {
  const std::vector<uint64_t> layers = LayerParams(c);
  const double total =
      c.upload_bytes.empty() ? 4.0 * static_cast<double>(c.params) : static_cast<double>(c.upload_bytes[0]);
  const double per_param = total / static_cast<double>(c.params);
  if (c.ddp_overlap == DdpOverlap::kNone) return {Bucket{total, 1.0, c.params}};
  std::vector<Bucket> buckets;
  const double L = static_cast<double>(layers.size());
  Bucket open;
  for (size_t k = 0; k < layers.size(); ++k) {
    const size_t layer = layers.size() - 1 - k;
    open.params += layers[layer];
    open.bytes += per_param * static_cast<double>(layers[layer]);
    const bool last = layer == 0;
    if (last || open.bytes >= static_cast<double>(c.ddp_bucket_bytes)) {
      open.ready_share =
          last ? 1.0 : (1.0 - c.backward_fraction) + c.backward_fraction * static_cast<double>(k + 1) / L;
      buckets.push_back(open);
      open = Bucket{};
    }
  }
  return buckets;
}

// FragmentParams of a valid, resolved config.
std::vector<uint64_t> ResolvedFragmentParams(const SimConfig& c) {
  if (c.algo == Algo::kDdp) {
    std::vector<uint64_t> out;
    for (const Bucket& b : DdpBuckets(c)) out.push_back(b.params);
    return out;
  }
  if (!c.fragment_params.empty()) return c.fragment_params;
  const std::vector<uint64_t> layers = LayerParams(c);
  std::vector<uint64_t> out(c.fragments, 0);
  for (size_t l = 0; l < layers.size(); ++l) out[l % c.fragments] += layers[l];
  return out;
}

// ddp: forward+backward, the gradient all-reduce (one bucket, or buckets during the backward),
// then the next step. A step ends when its compute and its last bucket are done.
uint64_t RunDdp(const SimConfig& c, const std::vector<Bucket>& buckets, std::vector<GroupState>* groups,
                Marks* marks) {
  Exchanges exchanges(c, groups);
  std::vector<double> ready(groups->size()), step_start(groups->size()), last(groups->size());
  uint64_t syncs = 0;
  marks->AtEndOfStep(0, 0, groups);
  for (uint64_t t = 1; t <= c.steps; ++t) {
    for (size_t i = 0; i < groups->size(); ++i) {
      step_start[i] = (*groups)[i].clock;
      last[i] = 0;
    }
    for (const Bucket& b : buckets) {
      for (size_t i = 0; i < groups->size(); ++i) {
        ready[i] = step_start[i] + b.ready_share * (*groups)[i].step_seconds;
      }
      const std::vector<double>& arrivals = exchanges.Run(ready, b.bytes, b.bytes);
      for (size_t i = 0; i < groups->size(); ++i) last[i] = std::max(last[i], arrivals[i]);
      ++syncs;
    }
    for (size_t i = 0; i < groups->size(); ++i) {
      GroupState& g = (*groups)[i];
      const double computed = step_start[i] + g.step_seconds;
      g.compute += g.step_seconds;
      g.clock = std::max(computed, last[i]);
      g.stall += g.clock - computed;
    }
    marks->AtEndOfStep(t, syncs, groups);
  }
  return syncs;
}

}  // namespace

std::string_view AlgoName(Algo a) {
  switch (a) {
    case Algo::kDdp:
      return "ddp";
    case Algo::kDiloco:
      return "diloco";
    case Algo::kStreaming:
      return "streaming";
  }
  return "?";
}

StatusOr<Algo> ParseAlgo(std::string_view name) {
  if (name == "ddp") return Algo::kDdp;
  if (name == "diloco") return Algo::kDiloco;
  if (name == "streaming") return Algo::kStreaming;
  return InvalidArgument("algo '" + std::string(name) + "' is not one of ddp, diloco, streaming");
}

std::string_view TopologyName(Topology t) {
  switch (t) {
    case Topology::kDefault:
      return "default";
    case Topology::kRing:
      return "ring";
    case Topology::kCoordinator:
      return "coordinator";
  }
  return "?";
}

StatusOr<Topology> ParseTopology(std::string_view name) {
  if (name == "default") return Topology::kDefault;
  if (name == "ring") return Topology::kRing;
  if (name == "coordinator") return Topology::kCoordinator;
  return InvalidArgument("topology '" + std::string(name) + "' is not one of ring, coordinator, default");
}

std::string_view DdpOverlapName(DdpOverlap o) { return o == DdpOverlap::kNone ? "none" : "backward"; }

StatusOr<DdpOverlap> ParseDdpOverlap(std::string_view name) {
  if (name == "none") return DdpOverlap::kNone;
  if (name == "backward") return DdpOverlap::kBackward;
  return InvalidArgument("ddp overlap '" + std::string(name) + "' is not one of none, backward");
}

std::string_view ProtocolName(Protocol p) { return p == Protocol::kEngine ? "engine" : "ideal"; }

StatusOr<Protocol> ParseProtocol(std::string_view name) {
  if (name == "engine") return Protocol::kEngine;
  if (name == "ideal") return Protocol::kIdeal;
  return InvalidArgument("protocol '" + std::string(name) + "' is not one of engine, ideal");
}

std::string_view LatePolicyName(LatePolicy p) { return p == LatePolicy::kWait ? "wait" : "defer"; }

StatusOr<LatePolicy> ParseLatePolicy(std::string_view name) {
  if (name == "wait") return LatePolicy::kWait;
  if (name == "defer") return LatePolicy::kDefer;
  return InvalidArgument("late policy '" + std::string(name) + "' is not one of wait, defer");
}

double RingAllReduceSeconds(uint64_t workers, double bytes, double rate_bps, double latency_seconds) {
  if (workers <= 1) return 0.0;
  const double m = static_cast<double>(workers);
  return 2.0 * (m - 1.0) * latency_seconds + 2.0 * (m - 1.0) / m * WireSeconds(bytes, rate_bps);
}

Status Validate(const SimConfig& c) {
  if (c.workers < 1) return InvalidArgument("workers is 0; expected at least 1");
  if (c.params < 1) return InvalidArgument("params is 0; expected at least 1 parameter");
  if (c.layers < 1) return InvalidArgument("layers is 0; expected at least 1");
  if (c.layers > c.params) {
    return InvalidArgument(
        fmt::format("layers is {} but params is only {}; expected layers <= params", c.layers, c.params));
  }
  if (!(c.step_seconds > 0) || !std::isfinite(c.step_seconds)) {
    return InvalidArgument(fmt::format("step time is {} s; expected a finite time > 0", c.step_seconds));
  }
  if (!(c.backward_fraction > 0 && c.backward_fraction <= 1)) {
    return InvalidArgument(
        fmt::format("backward fraction is {}; expected a share of the step in (0, 1]", c.backward_fraction));
  }
  if (c.inner_steps < 1) return InvalidArgument("H (inner steps) is 0; expected at least 1");
  if (c.algo == Algo::kStreaming) {
    if (c.fragments < 1) return InvalidArgument("fragments is 0; expected at least 1");
    if (c.fragments > c.inner_steps) {
      return InvalidArgument(
          fmt::format("fragments is {} but H is {}; expected P <= H (one fragment due per step)", c.fragments,
                      c.inner_steps));
    }
    if (c.overlap >= c.inner_steps) {
      return InvalidArgument(
          fmt::format("tau (overlap) is {} but H is {}; expected tau < H", c.overlap, c.inner_steps));
    }
    if (c.fragment_params.empty() && c.fragments > c.layers) {
      return InvalidArgument(fmt::format(
          "fragments is {} but there are only {} layers; expected P <= layers (or give fragment_params)",
          c.fragments, c.layers));
    }
  }
  const uint64_t P = c.algo == Algo::kStreaming ? c.fragments : 1;
  if (c.algo != Algo::kDdp) {
    if (!c.fragment_params.empty() && c.fragment_params.size() != P) {
      return InvalidArgument(
          fmt::format("fragment_params has {} values; expected P = {}", c.fragment_params.size(), P));
    }
    for (uint64_t n : c.fragment_params) {
      if (n == 0) return InvalidArgument("fragment_params has a 0; every fragment needs parameters");
    }
  }
  const uint64_t allowed = c.algo == Algo::kDdp ? 1 : P;
  for (const auto* v : {&c.upload_bytes, &c.download_bytes}) {
    const char* name =
        v == &c.upload_bytes ? "upload bytes (--payload-bytes)" : "download bytes (--download-bytes)";
    if (!v->empty() && v->size() != 1 && v->size() != allowed) {
      return InvalidArgument(fmt::format("{} has {} values; expected 1{}", name, v->size(),
                                         allowed > 1 ? fmt::format(" or P = {}", allowed) : std::string()));
    }
    for (uint64_t b : *v) {
      if (b == 0) return InvalidArgument(fmt::format("{} has a 0; expected payload sizes > 0", name));
    }
  }
  if (Status s = quant::Validate(c.codec); !s.ok()) return s.WithContext("codec");
  if (c.download_codec) {
    if (Status s = quant::Validate(*c.download_codec); !s.ok()) return s.WithContext("download codec");
  }
  if (!IsPositiveRate(c.bandwidth_bps)) {
    return InvalidArgument(fmt::format("bandwidth is {} bit/s; expected a rate > 0", c.bandwidth_bps));
  }
  LOWBAND_RETURN_IF_ERROR(CheckSeconds(c.latency_seconds, "latency"));
  if (!IsPositiveRate(c.coordinator_ingress_bps) || !IsPositiveRate(c.coordinator_egress_bps)) {
    return InvalidArgument("coordinator bandwidth must be > 0 (infinity: unlimited)");
  }
  LOWBAND_RETURN_IF_ERROR(CheckSeconds(c.coordinator_seconds, "coordinator time"));
  LOWBAND_RETURN_IF_ERROR(CheckSeconds(c.encode_seconds, "encode time"));
  LOWBAND_RETURN_IF_ERROR(CheckSeconds(c.apply_seconds, "apply time"));
  LOWBAND_RETURN_IF_ERROR(CheckSeconds(c.host_seconds_per_byte, "host time per byte"));
  if (!c.groups.empty()) {
    uint64_t total = 0;
    for (size_t i = 0; i < c.groups.size(); ++i) {
      const WorkerGroup& g = c.groups[i];
      if (g.count < 1) return InvalidArgument(fmt::format("worker group {} has count 0; expected >= 1", i));
      if (!(g.up_bps >= 0) || !(g.down_bps >= 0)) {
        return InvalidArgument(
            fmt::format("worker group {} has a negative rate; expected > 0 (0: the default)", i));
      }
      if (!(g.latency_seconds < 0) && !std::isfinite(g.latency_seconds)) {
        return InvalidArgument(
            fmt::format("worker group {} has latency {}; expected finite seconds", i, g.latency_seconds));
      }
      if (!(g.step_time_factor > 0) || !std::isfinite(g.step_time_factor)) {
        return InvalidArgument(fmt::format(
            "worker group {} has step-time factor {}; expected a finite factor > 0", i, g.step_time_factor));
      }
      total += g.count;
    }
    if (total != c.workers) {
      return InvalidArgument(
          fmt::format("worker groups hold {} workers but workers is {}; they must agree", total, c.workers));
    }
  }
  const uint64_t steps = c.steps == 0 ? AutoSteps(c.inner_steps) : c.steps;
  if (steps > kMaxSteps) {
    return InvalidArgument(
        fmt::format("steps is {}; at most {} are simulated (the steady state needs a few sync "
                    "periods)",
                    steps, kMaxSteps));
  }
  return Status::Ok();
}

StatusOr<std::vector<uint64_t>> FragmentParams(const SimConfig& config) {
  LOWBAND_RETURN_IF_ERROR(Validate(config));
  return ResolvedFragmentParams(Resolve(config));
}

namespace {

// One simulation of a valid, resolved config.
SimResult SimulateResolved(const SimConfig& config) {
  SimResult r;
  r.config = config;
  const SimConfig& c = r.config;

  std::vector<GroupState> groups;
  for (const WorkerGroup& g : c.groups) {
    GroupState s;
    s.group = g;
    s.step_seconds = c.step_seconds * g.step_time_factor;
    groups.push_back(s);
  }
  const double M = static_cast<double>(c.workers);
  const double ring_share = 2.0 * (M - 1.0) / M;
  const bool ring = c.topology == Topology::kRing;
  Marks marks(c);
  if (c.algo == Algo::kDdp) {
    const std::vector<Bucket> buckets = DdpBuckets(c);
    double total = 0;
    for (const Bucket& b : buckets) {
      total += b.bytes;
      r.fragment_params.push_back(b.params);
      r.upload_bytes.push_back(static_cast<uint64_t>(std::llround(b.bytes)));
    }
    r.download_bytes = r.upload_bytes;
    r.syncs = RunDdp(c, buckets, &groups, &marks);
    r.largest_exchange_bytes = ring ? 2.0 * ring_share * total : 2.0 * total;
    r.peak_bandwidth_bps = (ring ? ring_share * total : 2.0 * total) * 8.0 / c.step_seconds;
  } else {
    r.fragment_params = ResolvedFragmentParams(c);
    PayloadSizes(c, r.fragment_params, &r.upload_bytes, &r.download_bytes);
    r.syncs = RunDiloco(c, r.upload_bytes, r.download_bytes, &groups, &marks);
    double largest = 0, per_direction = 0;
    for (size_t p = 0; p < r.upload_bytes.size(); ++p) {
      const double up = static_cast<double>(r.upload_bytes[p]);
      const double down = static_cast<double>(r.download_bytes[p]);
      largest = std::max(largest, ring ? 2.0 * ring_share * up : up + down);
      per_direction = std::max(per_direction, ring ? ring_share * up : up + down);
    }
    r.largest_exchange_bytes = largest;
    const double window = static_cast<double>(std::max<uint64_t>(c.overlap, 1)) * c.step_seconds;
    r.peak_bandwidth_bps = per_direction * 8.0 / window;
  }

  const auto [first, periodic] = SteadyWindow(groups);
  const size_t last = marks.steps_at().size() - 1;
  r.steady.from_step = marks.steps_at()[first];
  r.steady.to_step = marks.steps_at()[last];
  r.steady.syncs = marks.syncs_at()[last] - marks.syncs_at()[first];
  r.steady.periodic = periodic;
  double busiest = 0;
  for (const GroupState& s : groups) {
    GroupResult g;
    g.group = s.group;
    g.wall_seconds = s.clock;
    g.compute_seconds = s.compute;
    g.stall_seconds = s.stall;
    g.other_seconds = s.other;
    g.utilization = s.clock > 0 ? s.compute / s.clock : 1.0;
    const GroupState::Mark& a = s.marks[first];
    const GroupState::Mark& b = s.marks[last];
    const double window_wall = b.clock - a.clock;
    const double window_compute = b.compute - a.compute;
    g.steady_utilization = window_wall > 0 ? window_compute / window_wall : 1.0;
    g.bytes_sent = s.sent;
    g.bytes_received = s.received;
    const double w = static_cast<double>(s.group.count) / M;
    r.wall_seconds = std::max(r.wall_seconds, g.wall_seconds);
    r.compute_seconds += w * g.compute_seconds;
    r.stall_seconds += w * g.stall_seconds;
    r.other_seconds += w * g.other_seconds;
    r.compute_utilization += w * g.utilization;
    r.steady.wall_seconds += w * window_wall;
    r.steady.compute_seconds += w * window_compute;
    r.steady.stall_seconds += w * (b.stall - a.stall);
    r.steady.utilization += w * g.steady_utilization;
    r.bytes_sent_per_worker += w * g.bytes_sent;
    r.bytes_received_per_worker += w * g.bytes_received;
    if (g.wall_seconds > 0) busiest += w * std::max(g.bytes_sent, g.bytes_received) * 8.0 / g.wall_seconds;
    r.groups.push_back(g);
  }
  r.mean_bandwidth_bps = busiest;
  return r;
}

}  // namespace

StatusOr<SimResult> Simulate(const SimConfig& config) {
  LOWBAND_RETURN_IF_ERROR(Validate(config));
  SimConfig c = Resolve(config);
  // With automatic steps, a run whose second half has not settled into a repeating cycle (workers
  // of different speeds can drift apart for many periods before their lag stops growing) is
  // simulated again, twice as long, up to kAutoStepsGrowth times the first length.
  const uint64_t limit = std::min(kMaxSteps, c.steps * kAutoStepsGrowth);
  for (;;) {
    SimResult r = SimulateResolved(c);
    if (r.steady.periodic || config.steps != 0 || c.steps * 2 > limit) return r;
    c.steps *= 2;
  }
}

}  // namespace lowband::sim
