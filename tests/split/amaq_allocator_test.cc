// AMAQ bit allocation: the progressive target, importance (a channel the loss uses keeps its bits
// longer than a channel that is noise), the mean following the target, and the baselines staying put.
#include <cmath>
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
ConstructedRun RunConstructedCase(double importance_power) {
  torch::manual_seed(3);
  const int C = 16, rows = 256, signal = 8;
  const int64_t steps = 120;
  SplitConfig cfg;
  cfg.bits = 4;
  cfg.schedule_fraction = 0.5;
  cfg.importance_power = importance_power;
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

TEST(BitAllocator, ImportanceWeightingIsWhatSeparatesTheChannels) {
  // Without the importance weights only the (small) task gradient tells the channels apart: the
  // weighted penalty must open a clearly larger gap between signal and noise channels.
  const ConstructedRun weighted = RunConstructedCase(0.5), plain = RunConstructedCase(0.0);
  EXPECT_GE(weighted.gap.back(), plain.gap.back() + 1.0)
      << "weighted gap " << weighted.gap.back() << " vs unweighted " << plain.gap.back();
  EXPECT_NEAR(plain.final_mean, 4.0, 0.5);  // both still meet the budget
}

TEST(BitAllocator, MeanBitsFollowTheTargetSchedule) {
  torch::manual_seed(5);
  const int C = 64, rows = 128;
  const int64_t steps = 200;
  SplitConfig cfg;
  cfg.bits = 3;
  cfg.schedule_fraction = 0.5;
  auto alloc = BitAllocator::Create(CutCodec::kAmaq, C, cfg, steps);
  ASSERT_TRUE(alloc.ok());
  // Channels of very different scales and sensitivities, like real activations.
  const torch::Tensor scale = torch::exp(torch::randn({C}));
  const torch::Tensor sens = torch::exp(torch::randn({C}));
  quant::AmaqEncoder enc;
  quant::AmaqDecoder dec;
  double worst_after_settling = 0;
  for (int64_t t = 0; t < steps; ++t) {
    const torch::Tensor x = torch::randn({rows, C}) * scale;
    const torch::Tensor xhat = WireRoundTrip(x, *alloc, enc, dec);
    const torch::Tensor g = torch::randn({rows, C}) * sens * 1e-3;
    ASSERT_TRUE(alloc->Update(t, x, xhat, g).ok());
    const auto st = alloc->stats();
    // Ten steps after a change of target the mean must be close to it.
    if (t >= 10 && AmaqTarget(cfg.bits, cfg.schedule_fraction, t - 10, steps) == st.target) {
      worst_after_settling = std::max(worst_after_settling, std::abs(st.mean_bits - st.target));
    }
  }
  EXPECT_LT(worst_after_settling, 0.5);
  EXPECT_NEAR(alloc->stats().mean_bits, 3.0, 0.15);
  EXPECT_EQ(alloc->stats().target, 3.0);
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
