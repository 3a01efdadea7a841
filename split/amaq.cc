#include "split/amaq.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>

#include "worker/torch_runtime.h"

namespace lowband::split {
namespace {

constexpr double kMinBits = 2.0, kMaxBits = 8.0;
// Largest change of a channel's continuous width in one update, in bits.
constexpr double kMaxBitStep = 0.25;
// 2^4 - 1: the expected task gradient is measured against a 4-bit step.
constexpr double kFourBitLevels = 15.0;

double Sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// max - min over the rows of each channel of t (float [rows, channels], any device), in double on the
// host. The extremes are picked in t's own precision (exact) and only the C of them are converted.
torch::Tensor ChannelRange(const torch::Tensor& t) {
  return t.amax(0).to(torch::kCPU, torch::kDouble) - t.amin(0).to(torch::kCPU, torch::kDouble);
}

}  // namespace

StatusOr<CutCodec> ParseCutCodec(const std::string& name) {
  if (name == "fp32") return CutCodec::kFp32;
  if (name == "fixed") return CutCodec::kFixed;
  if (name == "amaq") return CutCodec::kAmaq;
  return InvalidArgument("split codec: expected fp32, fixed or amaq, got '" + name + "'");
}

double AmaqTarget(int budget, double schedule_fraction, int64_t step, int64_t total_steps) {
  const double span = schedule_fraction * static_cast<double>(total_steps);
  const int levels = static_cast<int>(kMaxBits) - budget;  // whole-bit steps below 8
  if (levels <= 0 || span <= 0 || static_cast<double>(step) >= span) return budget;
  // levels + 1 equal segments: 8, 7, ..., budget + 1, then the budget from `span` on.
  const int k = static_cast<int>(static_cast<double>(step) / span * (levels + 1));
  return kMaxBits - std::min(k, levels);
}

StatusOr<BitAllocator> BitAllocator::Create(CutCodec codec, int channels, const SplitConfig& config,
                                            int64_t total_steps) {
  if (channels < 1) return InvalidArgument("BitAllocator: channels must be >= 1");
  if (codec != CutCodec::kFp32 && (config.bits < 2 || config.bits > 8)) {
    return InvalidArgument("split.bits must be in [2, 8] for fixed and amaq, got " +
                           std::to_string(config.bits));
  }
  if (codec == CutCodec::kAmaq) {
    if (!(config.start_bits > kMinBits && config.start_bits < kMaxBits))
      return InvalidArgument("split.start_bits must be strictly between 2 and 8");
    if (!(config.gate_scale > 0) || !(config.gate_lr > 0))
      return InvalidArgument("split.gate_scale and split.gate_lr must be > 0");
    if (!(config.schedule_fraction >= 0 && config.schedule_fraction <= 1))
      return InvalidArgument("split.schedule_fraction must be in [0, 1]");
    if (!(config.importance_decay >= 0 && config.importance_decay < 1))
      return InvalidArgument("split.importance_decay must be in [0, 1)");
    if (config.bit_gradient != "expected" && config.bit_gradient != "sample")
      return InvalidArgument("split.bit_gradient: expected 'expected' or 'sample', got '" +
                             config.bit_gradient + "'");
  }
  return BitAllocator(codec, channels, config, std::max<int64_t>(total_steps, 1));
}

StatusOr<BitAllocator> BitAllocator::ForGradients(int channels, const SplitConfig& config,
                                                  int64_t total_steps) {
  SplitConfig g = config;
  g.bits = ResolveGradBits(config.grad_bits, config.bits);
  g.bit_gradient = "expected";
  return Create(CutCodec::kAmaq, channels, g, total_steps);
}

BitAllocator::BitAllocator(CutCodec codec, int channels, const SplitConfig& config, int64_t total_steps)
    : codec_(codec),
      channels_(channels),
      config_(config),
      total_steps_(total_steps),
      expected_gradient_(config.bit_gradient == "expected") {
  if (codec_ == CutCodec::kAmaq) {
    const double s = (config_.start_bits - kMinBits) / (kMaxBits - kMinBits);
    gates_.assign(static_cast<size_t>(channels_), std::log(s / (1 - s)) / config_.gate_scale);
    importance_.assign(static_cast<size_t>(channels_), 0.0);
    target_ = AmaqTarget(config_.bits, config_.schedule_fraction, 0, total_steps_);
  } else if (codec_ == CutCodec::kFixed) {
    target_ = config_.bits;
  }
  RefreshBits();
}

void BitAllocator::RefreshBits() {
  if (codec_ == CutCodec::kFp32) {
    bits_.clear();
    return;
  }
  bits_.assign(static_cast<size_t>(channels_), static_cast<uint8_t>(config_.bits));
  if (codec_ != CutCodec::kAmaq) return;
  const std::vector<double> b = continuous_bits();
  if (!config_.exact_budget) {
    for (size_t c = 0; c < b.size(); ++c)
      bits_[c] = static_cast<uint8_t>(std::clamp(std::lround(b[c]), 2L, 8L));
    return;
  }
  // Every channel starts at 2 bits; each further bit k (3..8) of channel c is a unit whose claim is
  // b_c - (k - 0.5), positive exactly when rounding b_c to nearest would include it. The budget takes
  // the units with the largest claims (ties by channel order). A channel's claims fall with k, so the
  // units taken are a prefix for every channel.
  const auto C = static_cast<int64_t>(b.size());
  const int64_t units = std::clamp<int64_t>(std::llround(target_ * static_cast<double>(C)) - 2 * C, 0, 6 * C);
  std::vector<std::pair<double, int64_t>> claims;
  claims.reserve(static_cast<size_t>(6 * C));
  for (int64_t c = 0; c < C; ++c)
    for (int k = 3; k <= 8; ++k) claims.emplace_back(b[static_cast<size_t>(c)] - (k - 0.5), c);
  std::nth_element(claims.begin(), claims.begin() + units, claims.end(), [](const auto& l, const auto& r) {
    return l.first != r.first ? l.first > r.first : l.second < r.second;
  });
  std::fill(bits_.begin(), bits_.end(), uint8_t{2});
  for (int64_t u = 0; u < units; ++u) ++bits_[static_cast<size_t>(claims[static_cast<size_t>(u)].second)];
}

std::vector<double> BitAllocator::continuous_bits() const {
  std::vector<double> out;
  if (codec_ == CutCodec::kAmaq) {
    for (double q : gates_) out.push_back(kMinBits + (kMaxBits - kMinBits) * Sigmoid(config_.gate_scale * q));
  } else {
    for (uint8_t b : bits_) out.push_back(b);
  }
  return out;
}

Status BitAllocator::Update(int64_t step, const torch::Tensor& x, const torch::Tensor& xhat,
                            const torch::Tensor& g) {
  if (codec_ != CutCodec::kAmaq) return Status::Ok();
  const auto shape_ok = [&](const torch::Tensor& t) {
    return t.defined() && t.dim() == 2 && t.size(1) == channels_ && t.size(0) == x.size(0) &&
           t.scalar_type() == torch::kFloat;
  };
  if (!x.defined() || !shape_ok(x) || (needs_decoded() && !shape_ok(xhat)) || !shape_ok(g)) {
    return InvalidArgument(std::string("BitAllocator::Update: x, ") + (needs_decoded() ? "xhat " : "") +
                           "and g must be float [rows, " + std::to_string(channels_) + "]");
  }
  return worker::GuardTorch("BitAllocator::Update", [&]() -> Status {
    torch::NoGradGuard no_grad;
    // On the host in double (the statistics are read through data_ptr below), whatever device x is on.
    const torch::Tensor gd = g.to(torch::kCPU, torch::kDouble);
    // Per channel: the importance sample sum_t G^2 * range^2 and, for "sample", sum_t G (x^ - x).
    const torch::Tensor range = ChannelRange(x);
    const torch::Tensor sample = ((gd * gd).sum(0) * range * range).contiguous();
    torch::Tensor task_dot;
    if (needs_decoded()) {
      task_dot = (gd * (xhat.to(torch::kCPU, torch::kDouble) - x.to(torch::kCPU, torch::kDouble))).sum(0);
      task_dot = task_dot.contiguous();
    }
    if (!std::isfinite(sample.sum().item<double>()) ||
        (task_dot.defined() && !std::isfinite(task_dot.sum().item<double>()))) {
      return InvalidArgument("BitAllocator::Update: non-finite gradient");
    }
    Learn(step, sample.data_ptr<double>(), task_dot.defined() ? task_dot.data_ptr<double>() : nullptr);
    return Status::Ok();
  });
}

Status BitAllocator::UpdateFromGradient(int64_t step, const torch::Tensor& g) {
  if (codec_ != CutCodec::kAmaq) return Status::Ok();
  if (!g.defined() || g.dim() != 2 || g.size(1) != channels_ || g.size(0) < 1 ||
      g.scalar_type() != torch::kFloat) {
    return InvalidArgument("BitAllocator::UpdateFromGradient: g must be float [rows, " +
                           std::to_string(channels_) + "]");
  }
  if (!expected_gradient_) {
    return FailedPrecondition(
        "BitAllocator::UpdateFromGradient needs bit_gradient 'expected' (ForGradients)");
  }
  return worker::GuardTorch("BitAllocator::UpdateFromGradient", [&]() -> Status {
    torch::NoGradGuard no_grad;
    const torch::Tensor range = ChannelRange(g);
    const torch::Tensor sample = (range * range * static_cast<double>(g.size(0))).contiguous();
    if (!std::isfinite(sample.sum().item<double>())) {
      return InvalidArgument("BitAllocator::UpdateFromGradient: non-finite gradient");
    }
    Learn(step, sample.data_ptr<double>(), nullptr);
    return Status::Ok();
  });
}

void BitAllocator::Learn(int64_t step, const double* importance_sample, const double* task_dot) {
  const size_t C = gates_.size();
  const double decay = have_importance_ ? config_.importance_decay : 0.0;
  for (size_t c = 0; c < C; ++c) importance_[c] = decay * importance_[c] + (1 - decay) * importance_sample[c];
  have_importance_ = true;
  const double mean_importance =
      std::accumulate(importance_.begin(), importance_.end(), 0.0) / static_cast<double>(C);
  std::vector<double> w(C, 1.0);
  if (config_.importance_power > 0 && mean_importance > 0) {
    double sum = 0;
    for (size_t c = 0; c < C; ++c) {
      w[c] = std::clamp(std::pow(importance_[c] / mean_importance + 1e-3, -config_.importance_power), 0.05,
                        20.0);
      sum += w[c];
    }
    for (double& v : w) v *= static_cast<double>(C) / sum;
  }

  // Controller on the mean bits against this step's target: the wire's mean, or the continuous mean
  // when the rounding spends the budget exactly (the wire's mean is then the target by construction).
  target_ = AmaqTarget(config_.bits, config_.schedule_fraction, step, total_steps_);
  const std::vector<double> b = continuous_bits();
  double mean = 0;
  for (size_t c = 0; c < C; ++c) mean += config_.exact_budget ? b[c] : bits_[c];
  mean /= static_cast<double>(C);
  const double err = mean - target_;
  integral_ += config_.lambda_lr * err;
  lambda_ = integral_ + config_.lambda_kp * err;

  // Over budget (lambda > 0) the penalty takes bits from the channels that matter least; under budget
  // (lambda < 0) it gives them to the channels that matter most, with the reciprocal weights.
  if (lambda_ < 0) {
    double sum = 0;
    for (double& v : w) sum += (v = 1.0 / v);
    for (double& v : w) v *= static_cast<double>(C) / sum;
  }
  // The task term dL/db_c, in units of one channel (mean magnitude about 1 for "expected").
  std::vector<double> task(C);
  if (expected_gradient_) {
    // -ln2 2^b/(2^b-1) * I_c / (12 (2^b-1)^2): the importance EMA is sum_t G^2 range^2, and
    // range^2 / (2^b-1)^2 is the step squared. Measured in units of a channel of mean importance at
    // 4 bits (I / mean I, steps relative to 2^4-1), so lambda stays O(1) whatever the gradients' scale:
    // only the channels' ratios set the allocation.
    const double norm = mean_importance > 0 ? 1.0 / mean_importance : 0.0;
    for (size_t c = 0; c < C; ++c) {
      const double p2 = std::exp2(b[c]), rel_step = kFourBitLevels / (p2 - 1);
      task[c] = -std::numbers::ln2 * p2 / (p2 - 1) * importance_[c] * norm * rel_step * rel_step;
    }
  } else {
    for (size_t c = 0; c < C; ++c) {
      const double p2 = std::exp2(static_cast<double>(bits_[c]));
      task[c] = -std::numbers::ln2 * p2 / (p2 - 1) * task_dot[c] * static_cast<double>(C);
    }
  }
  for (size_t c = 0; c < C; ++c) {
    const double sig = Sigmoid(config_.gate_scale * gates_[c]);
    const double db_dq = (kMaxBits - kMinBits) * config_.gate_scale * sig * (1 - sig);
    double dq = -config_.gate_lr * (task[c] + lambda_ * w[c]) * db_dq;
    // A trust region: no channel's width moves by more than kMaxBitStep per step, so one large
    // controller output cannot throw a channel across the whole range (and back).
    const double limit = kMaxBitStep / std::max(db_dq, 1e-9);
    gates_[c] += std::clamp(dq, -limit, limit);
    // Keep the gates where the sigmoid still has a slope, so no channel gets stuck at an end.
    gates_[c] = std::clamp(gates_[c], -8.0 / config_.gate_scale, 8.0 / config_.gate_scale);
  }
  RefreshBits();
}

AllocatorStats BitAllocator::stats() const {
  AllocatorStats s;
  if (codec_ == CutCodec::kFp32) return s;
  s.target = target_;
  s.lambda = lambda_;
  double sum = 0;
  for (uint8_t b : bits_) {
    sum += b;
    ++s.histogram[static_cast<size_t>(b - 2)];
  }
  s.mean_bits = sum / static_cast<double>(bits_.size());
  // The importance-weighted quantization noise sum_c I_c 4^-B_c against uniform widths at the same mean.
  if (have_importance_) {
    double uniform = 0, mixed = 0;
    for (size_t c = 0; c < bits_.size(); ++c) {
      uniform += importance_[c] * std::exp2(-2 * s.mean_bits);
      mixed += importance_[c] * std::exp2(-2.0 * bits_[c]);
    }
    if (mixed > 0) s.noise_vs_uniform = mixed / uniform;
  }
  return s;
}

}  // namespace lowband::split
