// AMAQ bit allocation: learns how many bits each channel of the cut activations gets (DESIGN.md §5).
//
// Channel c has a gate q_c and a continuous bit width b_c = 2 + 6 * sigmoid(gate_scale * q_c); the
// wire uses integer widths B_c (quant/amaq.h packs channels by B_c): by default the rounding of the b_c
// whose sum is exactly round(target(t) * C), largest remainders first (exact_budget), so the budget is
// spent to the bit; otherwise round(b_c) per channel. After each training step the client knows X (what
// it computed), X^ (what the server decoded) and G = dL/dX^ (what came back), and updates the gates by
// SGD on
//     task loss + lambda(t) * (sum_c w_c b_c / C - target(t))
// where
//   * the task term reaches b_c through the quantization step s_c = range_c / (2^b_c - 1):
//     x^ = min_c + s_c * round((x - min_c) / s_c), so dx^/ds_c = (x^ - x) / s_c (straight-through for
//     the rounding) and dL/db_c = -ln2 * 2^b / (2^b - 1) * sum_t G_tc (x^_tc - x_tc). X itself gets G
//     unchanged (straight-through), which is what the client's backward does. That sample is unbiased but
//     noisy: with G = G0 + H (x^ - x), its mean over the rounding noise is the curvature term
//     sum_t H_tt s_c^2 / 12, and G_tc^2 stands in for H_tt (the empirical Fisher). bit_gradient
//     "expected" (the default) uses that mean, from the importance below; "sample" uses this step's;
//   * I_c = EMA of sum_t G_tc^2 range_c^2 is the loss's sensitivity to channel c's quantization noise
//     (range^2 / (12 (2^B - 1)^2) per value). With the expected task term and w_c = 1, the gates'
//     fixed point is the water-filling allocation I_c 4^-b_c = const (the widths that minimize
//     sum_c I_c 4^-b_c for the budget). w_c = (I_c / mean I + 1e-3)^-importance_power clipped to
//     [0.05, 20] and normalized to mean 1 pushes further in the same direction (what the noisy sample
//     estimate needs): channels the loss ignores lose bits first; when the mean is under the target,
//     lambda < 0 and the reciprocal weights give bits back to the channels that matter most first;
//   * target(t) steps from 8 down to the budget in whole bits over schedule_fraction of the run
//     (progressive), and lambda(t) is a PI controller on the mean bits (the continuous mean under
//     exact_budget, the wire's otherwise), so the mean follows the target rather than a hand-tuned
//     penalty weight.
// Gradients are in units of one channel and the update is plain SGD (Adam would normalize each gate's
// step and erase the importance weights) with a trust region of 0.25 bit per channel per step.
// stats().noise_vs_uniform reports how much importance-weighted noise the mixed widths cost against
// uniform widths of the same mean (below 1 = better than fixed bits, by the allocator's own measure).
//
// Gradients with their own gates (split.grad_codec amaq) use the same class on the server, which
// encodes dL/dX: UpdateFromGradient learns from the gradient alone. Its quantization noise reaches the
// loss only through the client's backward, which is linear in dL/dX but unknown to the server, so the
// importance is I_c = EMA of rows * range_c(G)^2 (channel c's stochastic-rounding noise energy at a
// given width, the client's Jacobian taken as equal across channels), the expected task term is used,
// and the gates' fixed point is the widths that minimize the gradient's total quantization noise
// sum_c I_c 4^-b_c for the budget.
//
// The same class serves the fixed and fp32 baselines (constant bits, no learning), so every codec
// runs the same code path. Thread safety: one thread. Lifetimes: plain values.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <torch/types.h>

#include "quant/status.h"
#include "split/config.h"

namespace lowband::split {

enum class CutCodec { kFp32, kFixed, kAmaq };
[[nodiscard]] StatusOr<CutCodec> ParseCutCodec(const std::string& name);

// The target mean bits at `step` of `total_steps` (AMAQ): 8, 7, ... down to `budget` in equal steps
// over the first schedule_fraction of the run, then the budget.
double AmaqTarget(int budget, double schedule_fraction, int64_t step, int64_t total_steps);

struct AllocatorStats {
  double mean_bits = 32;  // mean of the integer bits on the wire (32 for fp32)
  double target = 32;
  double lambda = 0;
  std::array<int, 7> histogram{};  // channels at 2..8 bits
  // AMAQ: sum_c I_c 4^-B_c over sum_c I_c 4^-mean, with I_c the importance estimate (the loss's
  // sensitivity to channel c's quantization noise): below 1 when the mixed widths cost the loss less
  // noise than uniform widths with the same bytes would. 1 for fixed, fp32 and before the first update.
  double noise_vs_uniform = 1;
};

class BitAllocator {
 public:
  // `total_steps` is the run's length (for the schedule). Rejects bits outside [2, 8] for fixed/amaq.
  [[nodiscard]] static StatusOr<BitAllocator> Create(CutCodec codec, int channels, const SplitConfig& config,
                                                     int64_t total_steps);
  // The gradients' own gates (grad_codec amaq): budget ResolveGradBits(grad_bits, bits), the expected
  // bit gradient, the other gate settings from `config`.
  [[nodiscard]] static StatusOr<BitAllocator> ForGradients(int channels, const SplitConfig& config,
                                                           int64_t total_steps);

  CutCodec codec() const { return codec_; }
  bool passthrough() const { return codec_ == CutCodec::kFp32; }
  int channels() const { return channels_; }
  // The integer bits per channel for the next message (empty for fp32).
  const std::vector<uint8_t>& bits() const { return bits_; }
  // Continuous bit widths b_c (for logs and tests).
  std::vector<double> continuous_bits() const;

  // Whether Update reads xhat: only the "sample" bit gradient does. Otherwise the caller need not decode
  // its own payload, and xhat may be undefined.
  bool needs_decoded() const { return codec_ == CutCodec::kAmaq && !expected_gradient_; }
  // Learns from training step `step`: x (sent), xhat (decoded by the server; see needs_decoded()) and
  // g (dL/dxhat), all float [rows, channels]. A no-op for fp32 and fixed.
  [[nodiscard]] Status Update(int64_t step, const torch::Tensor& x, const torch::Tensor& xhat,
                              const torch::Tensor& g);
  // Learns from step `step`'s gradient g (float [rows, channels], any device) alone: the gradients' own
  // gates (ForGradients). A no-op for fp32 and fixed.
  [[nodiscard]] Status UpdateFromGradient(int64_t step, const torch::Tensor& g);

  AllocatorStats stats() const;

 private:
  BitAllocator(CutCodec codec, int channels, const SplitConfig& config, int64_t total_steps);
  void RefreshBits();
  // One gate update from this step's per-channel importance sample (folded into the EMA I_c) and, for
  // the "sample" bit gradient, sum_t G (x^ - x) per channel (nullptr otherwise).
  void Learn(int64_t step, const double* importance_sample, const double* task_dot);

  CutCodec codec_;
  int channels_;
  SplitConfig config_;
  int64_t total_steps_;
  bool expected_gradient_;
  std::vector<double> gates_;
  std::vector<double> importance_;
  bool have_importance_ = false;
  double integral_ = 0;
  double lambda_ = 0;
  double target_ = 8;
  std::vector<uint8_t> bits_;
};

}  // namespace lowband::split
