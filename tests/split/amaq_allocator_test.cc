// AMAQ bit allocation: the progressive target, importance (a channel the loss uses keeps its bits
// longer than a channel that is noise), the mean following the target, and the baselines staying put.
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quant/amaq.h"
#include "split/amaq.h"
#include "split/model.h"

namespace lowband::split {
namespace {

TEST(AmaqTarget, StepsDownInWholeBitsToTheBudgetWithinTheScheduleFraction) {
  const int64_t total = 100;
  double prev = 9;
  for (int64_t t = 0; t < total; ++t) {
    const double target = AmaqTarget(4, 0.4, t, total);
    EXPECT_EQ(target, std::round(target)) << t;
    EXPECT_LE(target, prev) << t;
    EXPECT_GE(target, 4) << t;
    if (t >= 40) {
      EXPECT_EQ(target, 4) << t;
    }
    prev = target;
  }
  EXPECT_EQ(AmaqTarget(4, 0.4, 0, total), 8);
  EXPECT_EQ(AmaqTarget(3, 0.0, 0, total), 3);  // no schedule: the budget from the start
  // Every level from 8 down to the budget appears.
  for (int level = 8; level >= 3; --level) {
    bool seen = false;
    for (int64_t t = 0; t < total; ++t) seen |= AmaqTarget(3, 0.5, t, total) == level;
    EXPECT_TRUE(seen) << level;
  }
}

// Quantizes x with the allocator's bits through the real wire codec (what the server would decode).
torch::Tensor WireRoundTrip(const torch::Tensor& x, const BitAllocator& alloc, quant::AmaqEncoder& enc,
                            quant::AmaqDecoder& dec) {
  auto e = EncodeCut(enc, x, alloc.bits(), {});
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  auto d = DecodeCut(dec, e->payload, x.size(0), x.size(1));
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return d->values;
}

double MeanOf(const std::vector<uint8_t>& bits, int begin, int end) {
  double s = 0;
  for (int c = begin; c < end; ++c) s += bits[static_cast<size_t>(c)];
  return s / (end - begin);
}

// The constructed case: 16 channels of the same scale; the loss is a regression on channels 0..7
// only, so channels 8..15 are noise to it. Returns, per step, the mean bits of the signal channels
// minus those of the noise channels, and the allocator's final mean.
struct ConstructedRun {
  std::vector<double> gap;
  double final_mean = 0;
};
ConstructedRun RunConstructedCase(double importance_power, const std::string& bit_gradient = "sample") {
  torch::manual_seed(3);
  const int C = 16, rows = 256, signal = 8;
  const int64_t steps = 120;
  SplitConfig cfg;
  cfg.bits = 4;
  cfg.schedule_fraction = 0.5;
  cfg.importance_power = importance_power;
  cfg.bit_gradient = bit_gradient;
  // The sample estimate's tests are about the gates themselves: each channel rounds alone.
  cfg.exact_budget = bit_gradient != "sample";
  auto alloc = BitAllocator::Create(CutCodec::kAmaq, C, cfg, steps);
  EXPECT_TRUE(alloc.ok()) << alloc.status().ToString();
  const torch::Tensor w = torch::randn({signal, 4});
  quant::AmaqEncoder enc;
  quant::AmaqDecoder dec;
  ConstructedRun run;
  for (int64_t t = 0; t < steps; ++t) {
    const torch::Tensor x = torch::randn({rows, C});
    const torch::Tensor y = torch::matmul(x.slice(1, 0, signal), w);
    torch::Tensor xhat = WireRoundTrip(x, *alloc, enc, dec).set_requires_grad(true);
    const torch::Tensor loss = (torch::matmul(xhat.slice(1, 0, signal), w) - y).pow(2).sum(1).mean();
    loss.backward();
    EXPECT_TRUE(alloc->Update(t, x, xhat.detach(), xhat.grad()).ok());
    run.gap.push_back(MeanOf(alloc->bits(), 0, signal) - MeanOf(alloc->bits(), signal, C));
  }
  run.final_mean = alloc->stats().mean_bits;
  return run;
}

TEST(BitAllocator, ChannelsTheLossUsesKeepTheirBitsLongerThanNoiseChannels) {
  const ConstructedRun run = RunConstructedCase(/*importance_power=*/0.5);
  int steps_signal_ahead = 0;
  for (size_t t = 0; t < run.gap.size(); ++t) {
    EXPECT_GE(run.gap[t], 0.0) << "step " << t << ": signal channels lost bits faster than noise";
    steps_signal_ahead += run.gap[t] > 0;
  }
  EXPECT_GE(run.gap.back(), 1.0);
  EXPECT_GT(steps_signal_ahead, static_cast<int>(run.gap.size()) / 2);
  EXPECT_NEAR(run.final_mean, 4.0, 0.5);
}

TEST(BitAllocator, TheExpectedTaskGradientSeparatesTheChannelsWithoutWeights) {
  // The expected task term alone (plain mean-bits penalty) must send the noise channels to the floor
  // and give their bits to the signal channels, within the budget.
  const ConstructedRun run = RunConstructedCase(/*importance_power=*/0.0, "expected");
  for (size_t t = 0; t < run.gap.size(); ++t)
    EXPECT_GE(run.gap[t], 0.0) << "step " << t << ": signal channels lost bits faster than noise";
  EXPECT_GE(run.gap.back(), 3.0);
  EXPECT_NEAR(run.final_mean, 4.0, 1.0 / 16);
}

TEST(BitAllocator, ImportanceWeightingIsWhatSeparatesTheChannelsOfTheSampleGradient) {
  // With the one-step sample of the task gradient and no importance weights only that (small, noisy)
  // term tells the channels apart: the weighted penalty must open a clearly larger gap.
  const ConstructedRun weighted = RunConstructedCase(0.5), plain = RunConstructedCase(0.0);
  EXPECT_GE(weighted.gap.back(), plain.gap.back() + 1.0)
      << "weighted gap " << weighted.gap.back() << " vs unweighted " << plain.gap.back();
  EXPECT_NEAR(plain.final_mean, 4.0, 0.5);  // both still meet the budget
}

// Channels of very different scales and sensitivities, like real activations, through the wire codec
// for `steps` steps. Calls `check(step, allocator)` after every update.
template <typename Check>
void RunSpreadChannels(const SplitConfig& cfg, int C, int64_t steps, Check check) {
  torch::manual_seed(5);
  const int rows = 128;
  auto alloc = BitAllocator::Create(CutCodec::kAmaq, C, cfg, steps);
  ASSERT_TRUE(alloc.ok());
  const torch::Tensor scale = torch::exp(torch::randn({C}));
  const torch::Tensor sens = torch::exp(torch::randn({C}));
  quant::AmaqEncoder enc;
  quant::AmaqDecoder dec;
  for (int64_t t = 0; t < steps; ++t) {
    const torch::Tensor x = torch::randn({rows, C}) * scale;
    const torch::Tensor xhat = WireRoundTrip(x, *alloc, enc, dec);
    const torch::Tensor g = torch::randn({rows, C}) * sens * 1e-3;
    ASSERT_TRUE(alloc->Update(t, x, xhat, g).ok());
    check(t, *alloc);
  }
}

TEST(BitAllocator, ExactBudgetSpendsTheTargetToTheBitEveryStep) {
  SplitConfig cfg;
  cfg.bits = 3;
  cfg.schedule_fraction = 0.5;
  const int C = 50;  // 3.5 bits * 50 channels is a whole number of bits; 4.02 * 50 is not
  int checked = 0;
  RunSpreadChannels(cfg, C, 120, [&](int64_t t, const BitAllocator& alloc) {
    const auto st = alloc.stats();
    int sum = 0;
    for (uint8_t b : alloc.bits()) sum += b;
    EXPECT_EQ(sum, static_cast<int>(std::lround(st.target * C))) << "step " << t;
    // The rounding keeps the learned order: a wider continuous width never gets fewer wire bits.
    const auto cont = alloc.continuous_bits();
    for (size_t c = 0; c < cont.size(); ++c) {
      for (size_t d = 0; d < cont.size(); ++d) {
        if (cont[c] > cont[d]) {
          EXPECT_GE(alloc.bits()[c], alloc.bits()[d]) << "step " << t;
        }
      }
    }
    ++checked;
  });
  EXPECT_EQ(checked, 120);
}

TEST(BitAllocator, TheExpectedGradientCostsLessWeightedNoiseThanUniformBits) {
  // Water-filling on I_c 4^-b: with sensitivities and scales spread over e^N(0,1) each, the mixed
  // widths must cost the loss clearly less importance-weighted noise than 3 bits everywhere.
  SplitConfig cfg;
  cfg.bits = 3;
  cfg.schedule_fraction = 0.3;
  cfg.importance_power = 0;
  double last = 1;
  RunSpreadChannels(cfg, 64, 200,
                    [&](int64_t, const BitAllocator& alloc) { last = alloc.stats().noise_vs_uniform; });
  EXPECT_LT(last, 0.5);
  cfg.bit_gradient = "sample";
  double sample = 1;
  RunSpreadChannels(cfg, 64, 200,
                    [&](int64_t, const BitAllocator& alloc) { sample = alloc.stats().noise_vs_uniform; });
  EXPECT_LT(last, 0.5 * sample) << "the expected task gradient should allocate better than one noisy sample";
}

// The gradients' own gates (grad_codec amaq): gradient channels whose ranges are spread over e^N(0,1),
// encoded with stochastic rounding through the wire codec. The learned widths must spend exactly the
// budget, give a wider channel at least the bits of a narrower one, and make the gradient's real
// round-trip error (measured, not the allocator's estimate) clearly smaller than uniform widths do.
TEST(BitAllocator, GradientGatesCutTheGradientsRoundTripErrorAtTheSameBudget) {
  torch::manual_seed(11);
  const int C = 48, rows = 256;
  const int64_t steps = 150;
  SplitConfig cfg;
  cfg.bits = 6;       // the activations' budget: not the gradients'
  cfg.grad_bits = 3;  // the gradients' budget
  cfg.schedule_fraction = 0.3;
  cfg.bit_gradient = "sample";  // ForGradients uses the expected term whatever the activations use
  auto gates = BitAllocator::ForGradients(C, cfg, steps);
  ASSERT_TRUE(gates.ok()) << gates.status().ToString();
  auto uniform = BitAllocator::Create(
      CutCodec::kFixed, C,
      [&] {
        SplitConfig f = cfg;
        f.bits = 3;
        return f;
      }(),
      steps);
  ASSERT_TRUE(uniform.ok());
  const torch::Tensor scale = torch::exp(torch::randn({C}));
  quant::AmaqOptions o;
  o.rounding = quant::Rounding::kStochastic;
  const auto round_trip_error = [&](const torch::Tensor& g, const BitAllocator& alloc, uint64_t seed) {
    quant::AmaqEncoder enc;
    quant::AmaqDecoder dec;
    o.seed = seed;
    auto e = EncodeCut(enc, g, alloc.bits(), o);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    auto d = DecodeCut(dec, e->payload, g.size(0), g.size(1));
    EXPECT_TRUE(d.ok()) << d.status().ToString();
    return (d->values - g).pow(2).sum().item<double>();
  };
  double learned_error = 0, uniform_error = 0;
  for (int64_t t = 0; t < steps; ++t) {
    const torch::Tensor g = torch::randn({rows, C}) * scale * 1e-4;
    if (t >= steps - 20) {  // after the schedule: both at 3 bits on the wire
      learned_error += round_trip_error(g, *gates, static_cast<uint64_t>(t));
      uniform_error += round_trip_error(g, *uniform, static_cast<uint64_t>(t));
    }
    ASSERT_TRUE(gates->UpdateFromGradient(t, g).ok());
  }
  int sum = 0;
  for (uint8_t b : gates->bits()) sum += b;
  EXPECT_EQ(sum, 3 * C);
  for (int c = 0; c < C; ++c) {
    for (int d = 0; d < C; ++d) {
      if (scale[c].item<float>() > 1.5f * scale[d].item<float>()) {
        EXPECT_GE(gates->bits()[static_cast<size_t>(c)], gates->bits()[static_cast<size_t>(d)])
            << c << " " << d;
      }
    }
  }
  EXPECT_LT(learned_error, 0.6 * uniform_error)
      << "learned " << learned_error << " uniform " << uniform_error;
  EXPECT_LT(gates->stats().noise_vs_uniform, 0.6);

  // Bad gradients are refused and change nothing; the activations' update is not for these gates.
  const auto before = gates->continuous_bits();
  EXPECT_FALSE(gates->UpdateFromGradient(steps, torch::randn({rows, C - 1})).ok());
  torch::Tensor inf_g = torch::randn({rows, C});
  inf_g[3][4] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(gates->UpdateFromGradient(steps, inf_g).ok());
  EXPECT_EQ(gates->continuous_bits(), before);
  cfg.grad_bits = 9;
  EXPECT_FALSE(BitAllocator::ForGradients(C, cfg, steps).ok());
  cfg.grad_bits = 0;  // 0: the activations' budget
  cfg.schedule_fraction = 0;
  auto same = BitAllocator::ForGradients(C, cfg, 1);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->stats().target, 6);
}

TEST(BitAllocator, MeanBitsFollowTheTargetSchedule) {
  // The controller holds the mean it steers: the wire's when each channel rounds alone ("sample", its
  // setting), the continuous widths' when the rounding spends the budget exactly (the default).
  for (const bool exact : {true, false}) {
    SplitConfig cfg;
    cfg.bits = 3;
    cfg.schedule_fraction = 0.5;
    cfg.exact_budget = exact;
    cfg.bit_gradient = exact ? "expected" : "sample";
    cfg.importance_power = exact ? 0.0 : 0.5;
    const int64_t steps = 200;
    double worst_after_settling = 0, mean = 0, target = 0;
    RunSpreadChannels(cfg, 64, steps, [&](int64_t t, const BitAllocator& alloc) {
      target = alloc.stats().target;
      mean = alloc.stats().mean_bits;
      if (exact) {
        const auto b = alloc.continuous_bits();
        mean = std::accumulate(b.begin(), b.end(), 0.0) / static_cast<double>(b.size());
      }
      // Ten steps after a change of target the mean must be close to it.
      if (t >= 10 && AmaqTarget(cfg.bits, cfg.schedule_fraction, t - 10, steps) == target)
        worst_after_settling = std::max(worst_after_settling, std::abs(mean - target));
    });
    EXPECT_LT(worst_after_settling, 0.5) << cfg.bit_gradient;
    EXPECT_NEAR(mean, 3.0, 0.2) << cfg.bit_gradient;
    EXPECT_EQ(target, 3.0) << cfg.bit_gradient;
  }
}

TEST(BitAllocator, OnlyTheSampleEstimateReadsTheDecodedActivations) {
  // The expected estimate learns from x and g alone: without xhat it must reach exactly the widths it
  // reaches with it (so the client need not decode its own payload); the sample estimate needs xhat.
  torch::manual_seed(7);
  SplitConfig cfg;
  cfg.bits = 3;
  auto with = BitAllocator::Create(CutCodec::kAmaq, 16, cfg, 40);
  auto without = BitAllocator::Create(CutCodec::kAmaq, 16, cfg, 40);
  ASSERT_TRUE(with.ok() && without.ok());
  EXPECT_FALSE(with->needs_decoded());
  const torch::Tensor scale = torch::exp(torch::randn({16}));
  for (int64_t t = 0; t < 40; ++t) {
    const torch::Tensor x = torch::randn({64, 16}) * scale, g = torch::randn({64, 16}) * scale;
    ASSERT_TRUE(with->Update(t, x, x + 0.01 * torch::randn({64, 16}), g).ok());
    ASSERT_TRUE(without->Update(t, x, torch::Tensor(), g).ok());
  }
  EXPECT_EQ(with->continuous_bits(), without->continuous_bits());
  EXPECT_EQ(with->bits(), without->bits());
  EXPECT_NE(with->bits(), std::vector<uint8_t>(16, 3));  // it did learn mixed widths
  cfg.bit_gradient = "sample";
  auto sample = BitAllocator::Create(CutCodec::kAmaq, 16, cfg, 40);
  ASSERT_TRUE(sample.ok());
  EXPECT_TRUE(sample->needs_decoded());
  const torch::Tensor x = torch::randn({64, 16});
  const Status s = sample->Update(0, x, torch::Tensor(), torch::randn({64, 16}));
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("xhat"), std::string::npos) << s.message();
}

TEST(BitAllocator, BaselinesKeepTheirBitsAndRejectBadSettings) {
  SplitConfig cfg;
  cfg.bits = 4;
  auto fixed = BitAllocator::Create(CutCodec::kFixed, 8, cfg, 10);
  ASSERT_TRUE(fixed.ok());
  const torch::Tensor x = torch::randn({4, 8});
  ASSERT_TRUE(fixed->Update(0, x, x, torch::randn({4, 8})).ok());
  EXPECT_EQ(fixed->bits(), std::vector<uint8_t>(8, 4));
  auto fp32 = BitAllocator::Create(CutCodec::kFp32, 8, cfg, 10);
  ASSERT_TRUE(fp32.ok());
  EXPECT_TRUE(fp32->passthrough());
  EXPECT_TRUE(fp32->bits().empty());
  cfg.bits = 9;
  EXPECT_FALSE(BitAllocator::Create(CutCodec::kAmaq, 8, cfg, 10).ok());
  EXPECT_FALSE(ParseCutCodec("int4").ok());
  cfg.bit_gradient = "exact";
  EXPECT_FALSE(BitAllocator::Create(CutCodec::kAmaq, 8, cfg, 10).ok());
  cfg.bit_gradient = "expected";
  cfg.bits = 4;
  auto amaq = BitAllocator::Create(CutCodec::kAmaq, 8, cfg, 10);
  ASSERT_TRUE(amaq.ok());
  const auto before = amaq->continuous_bits();
  const double lambda_before = amaq->stats().lambda;
  // Wrong shapes and non-finite gradients are refused and change nothing.
  EXPECT_FALSE(amaq->Update(0, x, x, torch::randn({4, 7})).ok());
  torch::Tensor nan_g = torch::randn({4, 8});
  nan_g[0][0] = std::nanf("");
  EXPECT_FALSE(amaq->Update(0, x, x, nan_g).ok());
  EXPECT_EQ(amaq->continuous_bits(), before);
  EXPECT_EQ(amaq->stats().lambda, lambda_before);
}

}  // namespace
}  // namespace lowband::split
