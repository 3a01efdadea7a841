// sim: a deterministic timeline simulator of one training run's compute and communication, for
// data-parallel (ddp), DiLoCo and Streaming DiLoCo at scales no single machine reaches (100B+
// parameters, thousands of workers). It answers "what compute utilization does this link give?"
// and, with Sweep, "what link does this utilization need?". docs/simulator.md states the model in
// full; in short:
//
//   * A worker computes T seconds per inner step (T times its group's straggler factor). Compute is
//     never slowed by communication running beside it; communication only adds waiting ("stall").
//   * A link has a per-direction rate (bits/s) and a one-way latency; a message of B bytes sent at
//     s has fully arrived at s + latency + 8B/rate. Each direction carries one message at a time,
//     first in, first out.
//   * ddp: after every step one fp32 all-reduce of the 4N-byte gradient, Gloo's ring:
//     2(M-1) latency + 2(M-1)/M * 32N / rate. ddp_overlap = kNone (lowband's engine: reduce after
//     the backward pass) or kBackward (PyTorch DDP: one bucket per layer, last layer first,
//     reduced as soon as its backward is done, buckets serialized on the link).
//   * DiLoCo / Streaming DiLoCo, exactly the schedule of comm::FragmentSchedule and the exchange
//     of worker/exchange.cc: fragment p (layers p, p+P, ...) is due at steps t > 0 with
//     t = p*H/P (mod H); after computing step t the worker pushes its encoded outer gradient
//     (quant::EncodedSize bytes) and trains on; the coordinator closes the round when the last of
//     the M pushes has arrived and sends the encoded update back; the worker needs it after
//     computing step t + tau and stalls until it is there (late = wait). DiLoCo is P = 1, tau = 0.
//   * Identical workers are simulated once: the run is simulated per group of identical workers
//     (same link, same speed), and a round closes when the slowest group's push has arrived. Cost
//     is O(steps * groups) for DiLoCo/Streaming and O(steps * layers * groups) for ddp with
//     backward overlap, independent of M and N.
//   * Results come for the whole run (summary.json's definitions, the final wait for updates in
//     flight included) and for the steady state (a repeating cycle found in the run's second
//     half), which is what Sweep searches on.
//
// Thread safety: pure functions of their arguments; safe to call concurrently.
// Lifetimes: nothing is retained after a call returns.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/codec.h"
#include "quant/status.h"

namespace lowband::sim {

enum class Algo : uint8_t { kDdp = 0, kDiloco = 1, kStreaming = 2 };
std::string_view AlgoName(Algo a);  // "ddp", "diloco", "streaming"
StatusOr<Algo> ParseAlgo(std::string_view name);

// Who exchanges with whom. kDefault: kRing for ddp, kCoordinator for DiLoCo and Streaming DiLoCo
// (the two topologies lowband's engines use).
//   kRing: a ring all-reduce among the workers (Gloo): 2(M-1) one-way latencies and 2(M-1)/M times
//     the vector's bytes in each direction per worker, paced by the slowest link. For DiLoCo and
//     Streaming DiLoCo this all-reduces the encoded payload as if it were the vector (a quantized
//     ring would re-encode per hop; not what lowband runs).
//   kCoordinator: every worker pushes its payload up its own link to a coordinator, which closes
//     the round when all M pushes arrived and sends the result down every link. For ddp this is a
//     parameter server carrying fp32 gradients both ways.
enum class Topology : uint8_t { kDefault = 0, kRing = 1, kCoordinator = 2 };
std::string_view TopologyName(Topology t);  // "default", "ring", "coordinator"
StatusOr<Topology> ParseTopology(std::string_view name);

// When ddp reduces gradients.
//   kNone: after the whole forward+backward (lowband's DdpWorker: one AllReduceMean per step).
//   kBackward: PyTorch DDP: layer l's gradient (one bucket per layer, 4 bytes per parameter, or
//     layers merged up to SimConfig::ddp_bucket_bytes) is reduced once its backward is done; the
//     backward runs from the last layer to the first, each layer taking backward_fraction * T / L;
//     buckets are reduced one after another on the link, each paying the ring's 2(M-1) latencies.
enum class DdpOverlap : uint8_t { kNone = 0, kBackward = 1 };
std::string_view DdpOverlapName(DdpOverlap o);  // "none", "backward"
StatusOr<DdpOverlap> ParseDdpOverlap(std::string_view name);

// How the coordinator exchange costs latency (coordinator topology only).
//   kEngine: what worker/exchange.cc does over gRPC: the push is an RPC whose reply (one more
//     one-way latency after the push arrived) must come back before the next push starts and
//     before the worker asks for the round's update; the update is fetched by a long-poll request
//     (one more one-way latency up) answered when the round has closed, one fetch at a time.
//     Per DiLoCo sync: 4 latencies + up + down.
//   kIdeal: one one-way latency per message: pushes leave back to back (the next starts when the
//     previous one's last byte is on the wire) and the coordinator sends each update as soon as
//     its round closes. Per DiLoCo sync: 2 latencies + up + down.
enum class Protocol : uint8_t { kEngine = 0, kIdeal = 1 };
std::string_view ProtocolName(Protocol p);  // "engine", "ideal"
StatusOr<Protocol> ParseProtocol(std::string_view name);

// A late outer update (DESIGN.md §3): kWait stalls at step t + tau until it is there; kDefer trains
// on and applies it when it arrives (a worker still stalls when the same fragment is due again and
// its previous update has not come).
enum class LatePolicy : uint8_t { kWait = 0, kDefer = 1 };
std::string_view LatePolicyName(LatePolicy p);  // "wait", "defer"
StatusOr<LatePolicy> ParseLatePolicy(std::string_view name);

// A set of identical workers.
struct WorkerGroup {
  // How many workers are like this (>= 1).
  uint64_t count = 1;
  // Per-direction link rates in bits/s; 0 means SimConfig::bandwidth_bps. +infinity is allowed.
  double up_bps = 0;
  double down_bps = 0;
  // One-way latency in seconds; negative means SimConfig::latency_seconds.
  double latency_seconds = -1;
  // Step-time multiplier: 1.5 computes every step 1.5x slower (a straggler).
  double step_time_factor = 1.0;
};

struct SimConfig {
  Algo algo = Algo::kStreaming;
  // M: number of workers (each with its own link).
  uint64_t workers = 4;
  // N: model parameters, and L: layers (N is spread evenly over the layers; the first N mod L
  // layers get one more). Layers are the unit of fragments (Streaming DiLoCo) and of buckets
  // (ddp with backward overlap).
  uint64_t params = 1'000'000'000;
  uint32_t layers = 24;
  // T: compute seconds of one inner step (forward, backward and optimizer) of a worker with
  // step_time_factor 1.
  double step_seconds = 1.0;
  // Share of T spent in the backward pass (the part ddp can overlap with reduction), in (0, 1].
  double backward_fraction = 2.0 / 3.0;

  // --- DiLoCo / Streaming DiLoCo. DiLoCo always runs with P = 1, tau = 0 (fragments and overlap
  // are ignored for it).
  // H: inner steps between two syncs of the same fragment (>= P).
  uint64_t inner_steps = 100;
  // P: fragments; fragment p holds layers p, p+P, p+2P, ... (<= L).
  uint32_t fragments = 4;
  // tau: steps between sending a fragment and needing its update (< H).
  uint64_t overlap = 1;
  LatePolicy late = LatePolicy::kWait;
  // Codec of the pushed outer gradients; each fragment is one payload of EncodedSize(codec, n_p)
  // bytes. download_codec (unset: the same) sizes the coordinator's updates.
  quant::CodecSpec codec{};
  std::optional<quant::CodecSpec> download_codec;
  // Measured sizes instead of derived ones. fragment_params: element count per fragment (P
  // values, summing to anything; then layers only matter for ddp). upload_bytes/download_bytes:
  // payload bytes per sync, one value for every fragment or P values (for ddp: one value, the
  // bytes of the whole gradient all-reduced per step instead of 4N). Empty: derived.
  std::vector<uint64_t> fragment_params;
  std::vector<uint64_t> upload_bytes;
  std::vector<uint64_t> download_bytes;

  // --- ddp.
  DdpOverlap ddp_overlap = DdpOverlap::kNone;
  // With kBackward: layers (last first) are merged into one bucket until it holds at least this
  // many gradient bytes; 0: one bucket per layer. Default: PyTorch's bucket_cap_mb, 25 MiB (one
  // bucket per layer would pay the ring's 2(M-1) latencies per layer, which no real DDP does).
  uint64_t ddp_bucket_bytes = 25ull << 20;

  // --- Links.
  // Per-direction rate of every worker's link, bits/s (> 0; +infinity allowed).
  double bandwidth_bps = 1e9;
  // One-way latency of every link, seconds.
  double latency_seconds = 0.0;
  // Heterogeneous workers: groups whose counts sum to `workers`. Empty: all alike.
  std::vector<WorkerGroup> groups;
  Topology topology = Topology::kDefault;
  Protocol protocol = Protocol::kEngine;
  // Coordinator ingress/egress shared by all workers, bits/s (+infinity: unlimited). A round's
  // pushes cannot close it before M * up bytes passed the ingress (fluid bound, FIFO over rounds);
  // no update arrives before the egress sent M * down bytes.
  double coordinator_ingress_bps = std::numeric_limits<double>::infinity();
  double coordinator_egress_bps = std::numeric_limits<double>::infinity();
  // Coordinator seconds between the last push of a round and the update being ready.
  double coordinator_seconds = 0.0;
  // Worker seconds per sync on the training thread, neither compute nor stall: encoding the outer
  // gradient (at the due step) and applying the update (decode + merge).
  double encode_seconds = 0.0;
  double apply_seconds = 0.0;
  // Ring topology (ddp): host seconds per byte a worker sends in an all-reduce, beyond the wire: the
  // reduction, the copies and the kernel's TCP path, which hold the ring (and, in lowband's ddp, the
  // training thread) whatever the link's rate. `lowband report --ddp-calibration` measures it from a
  // ddp run over unshaped links (docs/bandwidth-lab.md).
  double host_seconds_per_byte = 0.0;

  // --- Run.
  // Inner steps to simulate; 0: automatic: 20 * H, doubled (up to 64x) until the second half of the
  // run has settled into a repeating cycle (SteadyState::periodic).
  uint64_t steps = 0;
  // Wait at the end for every update still in flight (as the engine does before it exits).
  bool drain = true;
};

// Per-worker results of one group.
struct GroupResult {
  WorkerGroup group;  // with rates and latency resolved
  double wall_seconds = 0;
  double compute_seconds = 0;
  double stall_seconds = 0;
  double other_seconds = 0;  // encode + apply
  double utilization = 0;    // compute / wall
  double steady_utilization = 0;
  double bytes_sent = 0;
  double bytes_received = 0;
};

// The steady state the sweep uses, measured between the ends of steps from_step and to_step (the
// last step; the final drain is not part of it). The window is found among the period boundaries
// (every H steps counted back from the last step) of the run's second half: the longest stretch
// at the end made of whole cycles of 1, 2 or 3 periods in which every worker group repeats the
// same wall time per cycle and all groups agree on it. Without such a cycle (periodic = false:
// too few steps, or workers still drifting apart) it is the whole second half.
struct SteadyState {
  uint64_t from_step = 0;
  uint64_t to_step = 0;
  bool periodic = false;
  double wall_seconds = 0;     // mean per worker
  double compute_seconds = 0;  // mean per worker
  double stall_seconds = 0;    // mean per worker
  double utilization = 0;      // mean per worker of compute / wall
  uint64_t syncs = 0;          // exchanges per worker in the window
};

struct SimResult {
  // Resolved inputs: algo-specific values applied (DiLoCo P = 1, tau = 0), topology and steps set.
  SimConfig config;
  // The run: wall is the last worker's finish; compute, stall, other and bytes are means per
  // worker; utilization is the mean over workers of compute / own wall (summary.json's
  // compute_utilization).
  double wall_seconds = 0;
  double compute_seconds = 0;
  double stall_seconds = 0;
  double other_seconds = 0;
  double compute_utilization = 0;
  SteadyState steady;
  double bytes_sent_per_worker = 0;
  double bytes_received_per_worker = 0;
  // Exchanges (rounds, or collectives) one worker took part in: ddp steps * buckets, DiLoCo and
  // Streaming DiLoCo rounds.
  uint64_t syncs = 0;
  // Element counts and payload bytes per fragment (ddp: per bucket, last layer first).
  std::vector<uint64_t> fragment_params;
  std::vector<uint64_t> upload_bytes;
  std::vector<uint64_t> download_bytes;
  // Bytes one worker moves in its largest single exchange (sent + received), and the per-direction
  // rate at which that exchange takes no longer than the compute it can hide behind:
  // max(tau, 1) steps of T for DiLoCo and Streaming DiLoCo, one step T for ddp (all buckets of a
  // step). It falls by P with fragments and by the codec's ratio; it does not depend on the link.
  double largest_exchange_bytes = 0;
  double peak_bandwidth_bps = 0;
  // Mean link load per direction (the busier one): bytes * 8 / wall.
  double mean_bandwidth_bps = 0;
  std::vector<GroupResult> groups;
};

// Checks the config; the error names the field, what came and what is accepted.
Status Validate(const SimConfig& config);
// Element counts per fragment (layers strided over P fragments, or config.fragment_params; for
// ddp, per gradient bucket, last layer first).
StatusOr<std::vector<uint64_t>> FragmentParams(const SimConfig& config);
// The ring all-reduce time of `bytes` over M ranks: 2(M-1) latency + 2(M-1)/M * 8 bytes / rate.
double RingAllReduceSeconds(uint64_t workers, double bytes, double rate_bps, double latency_seconds);

// Runs one simulation.
StatusOr<SimResult> Simulate(const SimConfig& config);

// --- Sweep -------------------------------------------------------------------------------------
// For each variant, the smallest link rate reaching each target utilization (steady state).

struct SweepVariant {
  std::string name;         // "streaming-fp4"
  std::string description;  // "Streaming DiLoCo, fp4_e3m0/64, P=4, tau=1"
  SimConfig config;
};

// The standard table: ddp with backward overlap (PyTorch), ddp without (lowband's engine), DiLoCo
// (fp32), and Streaming DiLoCo plain (fp32, tau = 0), overlapped (fp32, tau = max(base tau, 1)) and
// overlapped FP4 (fp4_e3m0, block 64). Model, workers, links, H and P come from `base`.
std::vector<SweepVariant> DefaultSweepVariants(const SimConfig& base);

struct SweepOptions {
  std::vector<double> targets{0.5, 0.8, 0.9, 0.95, 0.99};
  // Bandwidth range searched (bits/s). Every worker link is scaled by the same factor (groups
  // keep their ratio to bandwidth_bps); coordinator caps stay as configured.
  double min_bps = 1e3;
  double max_bps = 1e13;
  // Bisection stops when hi / lo <= this.
  double tolerance = 1.001;
};

struct SweepRow {
  std::string name;
  std::string description;
  // Per target: the smallest bandwidth_bps with steady utilization >= target, or nullopt when
  // max_bps does not reach it (latency-bound, a straggler, a coordinator cap). A value equal to
  // min_bps means "min_bps or less".
  std::vector<std::optional<double>> bandwidth_bps;
  double utilization_at_min = 0;
  double utilization_at_max = 0;
  // False when the coarse grid saw utilization fall as bandwidth rose (the thresholds are then the
  // first crossings); never expected.
  bool monotone = true;
};

struct SweepResult {
  std::vector<SweepRow> rows;  // each with one bandwidth per options.targets
  SweepOptions options;
  SimConfig base;
  uint64_t simulations = 0;  // Simulate calls made
};

StatusOr<SweepResult> Sweep(const SimConfig& base, const SweepOptions& options = {});
StatusOr<SweepResult> SweepVariants(const std::vector<SweepVariant>& variants, const SimConfig& base,
                                    const SweepOptions& options = {});
// A copy of `config` whose worker links run at `bandwidth_bps`, groups scaled alike.
SimConfig WithBandwidth(const SimConfig& config, double bandwidth_bps);

// --- Output ------------------------------------------------------------------------------------
nlohmann::json ToJson(const SimConfig& config);
nlohmann::json ToJson(const SimResult& result);
nlohmann::json ToJson(const SweepResult& result);
// Rows = variants, columns = targets, cells like "12.3 Mbit/s" ("> 10.0 Tbit/s" when unreached).
std::string FormatSweepTable(const SweepResult& result);
// A few human-readable lines.
std::string FormatResult(const SimResult& result);

}  // namespace lowband::sim
