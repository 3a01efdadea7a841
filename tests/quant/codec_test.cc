// Properties of quant/: error bounds, exact grids, edge cases, unbiased stochastic rounding,
// error feedback, scalar == AVX2 to the bit, and rejection of bad payloads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "quant/codec.h"
#include "quant/internal.h"

namespace lowband::quant {
uint32_t Crc32cSoftwareForTest(std::span<const uint8_t> data, uint32_t crc);
namespace {

std::vector<Format> BlockFormats() {
  return {Format::kInt8Sym,  Format::kInt8Asym, Format::kInt4Sym, Format::kInt4Asym, Format::kInt2Sym,
          Format::kInt2Asym, Format::kFp8E4M3,  Format::kFp4E2M1, Format::kFp4E3M0,  Format::kNf4};
}
std::vector<Format> AllFormats() {
  auto f = BlockFormats();
  f.insert(f.begin(), {Format::kFp32, Format::kBf16, Format::kFp16});
  return f;
}
bool IsAsym(Format f) { return internal::Traits(f).kind == internal::Kind::kIntAsym; }

std::vector<float> Gaussian(size_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
std::vector<float> StudentT3(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::student_t_distribution<float> d(3.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Largest gap between adjacent levels of the format's grid (in units of the block scale).
float MaxGap(Format f) {
  const auto& t = internal::Traits(f);
  const int codes = 1 << t.bits;
  std::vector<float> levels;
  for (int c = 0; c < codes; ++c) {
    if (std::isfinite(t.lut[c])) levels.push_back(t.lut[c]);
  }
  std::sort(levels.begin(), levels.end());
  float gap = 0;
  for (size_t i = 1; i < levels.size(); ++i) gap = std::max(gap, levels[i] - levels[i - 1]);
  return gap;
}

float ScaleSlack(ScaleType s) {
  switch (s) {
    case ScaleType::kFp32:
      return 1e-6f;
    case ScaleType::kFp16:
      return 1.0f / 1024;
    case ScaleType::kBf16:
      return 1.0f / 128;
    case ScaleType::kPow2:
      return 1.0f;
  }
  return 1.0f;
}

// Per-block bound on |x - decode(encode(x))| for round-to-nearest.
float BlockBound(Format f, ScaleType st, const float* x, size_t n) {
  const auto& t = internal::Traits(f);
  float absmax = 0, mn = x[0], mx = x[0];
  for (size_t i = 0; i < n; ++i) {
    absmax = std::max(absmax, std::fabs(x[i]));
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  const float slack = ScaleSlack(st);
  const float range = IsAsym(f) ? (mx - mn + std::fabs(mn) * slack) : absmax;
  const float scale = std::max(range / t.qmax, std::numeric_limits<float>::min()) * (1 + slack);
  return scale * MaxGap(f) * 0.5f * 1.0001f + 1e-30f;
}

class BlockFormatTest : public ::testing::TestWithParam<std::tuple<Format, uint32_t, ScaleType>> {};

TEST_P(BlockFormatTest, RoundTripWithinTheFormatsBound) {
  const auto [format, block, scale_type] = GetParam();
  CodecSpec spec{format, block, scale_type};
  for (size_t n : {size_t{1}, size_t{7}, size_t{block - 1}, size_t{block + 1}, size_t{3 * block + 5}}) {
    for (int dist = 0; dist < 2; ++dist) {
      auto x = dist == 0 ? Gaussian(n, static_cast<uint32_t>(n)) : StudentT3(n, static_cast<uint32_t>(n) + 1);
      auto enc = Encode(spec, x);
      ASSERT_TRUE(enc.ok()) << enc.status().ToString();
      ASSERT_EQ(enc->size(), EncodedSize(spec, n));
      auto dec = Decode(*enc);
      ASSERT_TRUE(dec.ok()) << dec.status().ToString();
      ASSERT_EQ(dec->size(), n);
      for (size_t b = 0; b < n; b += block) {
        const size_t len = std::min<size_t>(block, n - b);
        const float bound = BlockBound(format, scale_type, x.data() + b, len);
        for (size_t i = b; i < b + len; ++i) {
          ASSERT_LE(std::fabs(x[i] - (*dec)[i]), bound)
              << FormatName(format) << " n=" << n << " i=" << i << " x=" << x[i] << " dec=" << (*dec)[i];
        }
      }
    }
  }
}

TEST_P(BlockFormatTest, GridValuesRoundTripExactly) {
  const auto [format, block, scale_type] = GetParam();
  const auto& t = internal::Traits(format);
  // A power-of-two scale is exact in every scale type; include the top level so the encoder finds it.
  const float s = 0.25f;
  std::mt19937 rng(7);
  std::vector<int> codes;
  for (int c = 0; c < (1 << t.bits); ++c) {
    if (std::isfinite(t.lut[c]) && (t.kind != internal::Kind::kIntSym || c <= 2 * t.qmax)) codes.push_back(c);
  }
  const float offset = IsAsym(format) ? -1.0f : 0.0f;
  std::vector<float> x(block);
  for (size_t i = 0; i < block; ++i) x[i] = offset + t.lut[codes[rng() % codes.size()]] * s;
  // Pin the block's range to the grid's ends.
  const float top = IsAsym(format) ? t.qmax : t.qmax;
  x[0] = offset + top * s;
  if (IsAsym(format)) x[1] = offset;
  CodecSpec spec{format, block, scale_type};
  auto enc = Encode(spec, x);
  ASSERT_TRUE(enc.ok()) << enc.status().ToString();
  auto dec = Decode(*enc);
  ASSERT_TRUE(dec.ok());
  for (size_t i = 0; i < block; ++i) ASSERT_EQ((*dec)[i], x[i]) << FormatName(format) << " i=" << i;
}

// Every block format x block size x scale type (asymmetric formats cannot use pow2 scales).
std::vector<std::tuple<Format, uint32_t, ScaleType>> BlockCases() {
  std::vector<std::tuple<Format, uint32_t, ScaleType>> cases;
  for (Format f : BlockFormats()) {
    for (uint32_t b : {32u, 64u, 256u, 4096u}) {
      for (ScaleType st : {ScaleType::kBf16, ScaleType::kFp16, ScaleType::kFp32, ScaleType::kPow2}) {
        if (!(IsAsym(f) && st == ScaleType::kPow2)) cases.emplace_back(f, b, st);
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllBlockFormats, BlockFormatTest, ::testing::ValuesIn(BlockCases()),
                         [](const auto& p) {
                           return std::string(FormatName(std::get<0>(p.param))) + "_b" +
                                  std::to_string(std::get<1>(p.param)) + "_" +
                                  std::string(ScaleTypeName(std::get<2>(p.param)));
                         });

TEST(Passthrough, RoundTripBounds) {
  auto x = Gaussian(1001, 3);
  for (Format f : {Format::kFp32, Format::kBf16, Format::kFp16}) {
    CodecSpec spec{f};
    auto enc = Encode(spec, x);
    ASSERT_TRUE(enc.ok());
    auto dec = Decode(*enc);
    ASSERT_TRUE(dec.ok());
    const float rel = f == Format::kFp32 ? 0.0f : f == Format::kBf16 ? 1.0f / 256 : 1.0f / 2048;
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_LE(std::fabs(x[i] - (*dec)[i]), std::fabs(x[i]) * rel + 6e-8f) << FormatName(f) << " i=" << i;
    }
  }
}

TEST(EdgeCases, EmptyAndSingleValue) {
  for (Format f : AllFormats()) {
    CodecSpec spec{f};
    auto enc0 = Encode(spec, std::vector<float>{});
    ASSERT_TRUE(enc0.ok()) << FormatName(f);
    EXPECT_EQ(enc0->size(), kHeaderBytes);
    auto dec0 = Decode(*enc0);
    ASSERT_TRUE(dec0.ok());
    EXPECT_TRUE(dec0->empty());
    auto enc1 = Encode(spec, std::vector<float>{-0.75f});
    ASSERT_TRUE(enc1.ok());
    auto dec1 = Decode(*enc1);
    ASSERT_TRUE(dec1.ok());
    // A single value is its own block's absmax (or min and max): every format hits it exactly.
    EXPECT_NEAR((*dec1)[0], -0.75f, 0.75f / 128) << FormatName(f);
  }
}

TEST(EdgeCases, AllZeroBlocksDecodeToZero) {
  std::vector<float> x(300, 0.0f);
  for (size_t i = 128; i < 192; ++i) x[i] = 1.0f;  // one non-zero block between zero blocks
  for (Format f : BlockFormats()) {
    auto enc = Encode(CodecSpec{f, 64}, x);
    ASSERT_TRUE(enc.ok());
    auto dec = Decode(*enc);
    ASSERT_TRUE(dec.ok());
    for (size_t i = 0; i < x.size(); ++i) {
      if (x[i] == 0.0f) {
        ASSERT_EQ((*dec)[i], 0.0f) << FormatName(f) << " i=" << i;
      }
    }
  }
}

TEST(EdgeCases, HugeAndTinyValuesKeepRelativeAccuracy) {
  for (float magnitude : {1e30f, 1e-30f, 3e-38f}) {
    auto x = Gaussian(256, 11, magnitude);
    for (Format f : {Format::kInt8Sym, Format::kFp4E3M0, Format::kNf4, Format::kFp8E4M3}) {
      for (ScaleType st : {ScaleType::kBf16, ScaleType::kFp32}) {
        CodecSpec spec{f, 64, st};
        auto enc = Encode(spec, x);
        ASSERT_TRUE(enc.ok()) << FormatName(f) << " " << magnitude << ": " << enc.status().ToString();
        auto dec = Decode(*enc);
        ASSERT_TRUE(dec.ok());
        for (size_t b = 0; b < x.size(); b += 64) {
          const float bound = BlockBound(f, st, x.data() + b, 64) * 1.01f;
          for (size_t i = b; i < b + 64; ++i) ASSERT_LE(std::fabs(x[i] - (*dec)[i]), bound) << magnitude;
        }
      }
    }
  }
}

TEST(EdgeCases, Fp16ScalesOutOfRangeGiveAClearError) {
  auto x = Gaussian(128, 5, 1e9f);
  auto enc = Encode(CodecSpec{Format::kInt4Sym, 64, ScaleType::kFp16}, x);
  ASSERT_FALSE(enc.ok());
  EXPECT_EQ(enc.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(enc.status().message().find("fp16"), std::string::npos) << enc.status().message();
  EXPECT_NE(enc.status().message().find("block 0"), std::string::npos) << enc.status().message();
  auto big = Encode(CodecSpec{Format::kFp16}, std::vector<float>{1.0f, 70000.0f});
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.status().message().find("65504"), std::string::npos);
}

// Found by the fuzzer: values near FLT_MAX whose rounded-up scale would decode the top level to
// infinity, and bf16's stochastic rounding stepping past its largest value. Both are refused.
TEST(EdgeCases, ValuesNearFltMaxNeverDecodeToInfinity) {
  std::vector<float> x(64, 3.0e38f);
  x[3] = -3.3e38f;
  int encoded = 0, refused = 0;
  for (Format f : BlockFormats()) {
    for (ScaleType st : {ScaleType::kPow2, ScaleType::kBf16, ScaleType::kFp32}) {
      CodecSpec spec{f, 64, st};
      if (!Validate(spec).ok()) continue;
      auto enc = Encode(spec, x);
      if (!enc.ok()) {
        EXPECT_EQ(enc.status().code(), StatusCode::kInvalidArgument);
        ++refused;
        continue;
      }
      auto dec = Decode(*enc);
      ASSERT_TRUE(dec.ok());
      for (float v : *dec) ASSERT_TRUE(std::isfinite(v)) << FormatName(f) << " " << ScaleTypeName(st);
      ++encoded;
    }
  }
  // Both outcomes occur: fp32 scales carry these blocks (int8, fp8, ...), a rounded-up scale with a
  // large top level (e.g. e3m0 with pow2 scales) cannot, and is refused rather than decoding to inf.
  EXPECT_GT(encoded, 0);
  EXPECT_GT(refused, 0);
  CodecSpec bf{Format::kBf16, 64, ScaleType::kBf16, Rounding::kStochastic, 7};
  EXPECT_FALSE(Encode(bf, std::vector<float>{internal::BitsFloat(0x7F7F7F7Fu)}).ok());
  EXPECT_TRUE(Encode(bf, std::vector<float>{internal::BitsFloat(0x7F7F0000u)}).ok());
}

TEST(EdgeCases, NanAndInfInputNameTheIndex) {
  for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    for (Format f : AllFormats()) {
      std::vector<float> x(100, 0.5f);
      x[77] = bad;
      auto enc = Encode(CodecSpec{f}, x);
      ASSERT_FALSE(enc.ok()) << FormatName(f);
      EXPECT_EQ(enc.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(enc.status().message().find("77"), std::string::npos) << enc.status().message();
    }
  }
}

TEST(Validate, RejectsBadSpecsWithTheFieldNamed) {
  for (uint32_t b : {0u, 16u, 100u, 8192u}) {
    Status s = Validate(CodecSpec{Format::kInt4Sym, b});
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message().find("block size"), std::string::npos);
  }
  EXPECT_FALSE(Validate(CodecSpec{Format::kInt4Asym, 64, ScaleType::kPow2}).ok());
  EXPECT_FALSE(Validate(CodecSpec{Format::kFp16, 64, ScaleType::kBf16, Rounding::kStochastic}).ok());
  EXPECT_TRUE(Validate(CodecSpec{Format::kBf16, 64, ScaleType::kBf16, Rounding::kStochastic}).ok());
  EXPECT_FALSE(ParseFormat("fp5").ok());
  EXPECT_EQ(*ParseFormat("fp4"), Format::kFp4E3M0);
}

TEST(Sizes, FourBitFormatsSendAtMost4Point3BitsAtBlock64) {
  const uint64_t n = 16u << 20;
  for (Format f : {Format::kInt4Sym, Format::kFp4E2M1, Format::kFp4E3M0, Format::kNf4}) {
    EXPECT_LE(BitsPerValue(CodecSpec{f, 64}, n), 4.3) << FormatName(f);
    EXPECT_GE(BitsPerValue(CodecSpec{f, 64}, n), 4.25) << FormatName(f);
  }
  EXPECT_DOUBLE_EQ(BitsPerValue(CodecSpec{Format::kFp4E3M0, 64, ScaleType::kPow2}, n),
                   4.125 + 8.0 * kHeaderBytes / n);
}

class StochasticTest : public ::testing::TestWithParam<Format> {};

TEST_P(StochasticTest, IsUnbiased) {
  const Format f = GetParam();
  const size_t n = 512, trials = 2000;
  auto x = Gaussian(n, 21);
  std::vector<double> mean(n, 0.0);
  std::vector<float> dec(n);
  CodecSpec spec{f, 64, ScaleType::kFp32, Rounding::kStochastic};
  for (size_t s = 0; s < trials; ++s) {
    spec.seed = s * 7919 + 1;
    auto enc = Encode(spec, x);
    ASSERT_TRUE(enc.ok());
    ASSERT_TRUE(DecodeInto(*enc, dec).ok());
    for (size_t i = 0; i < n; ++i) mean[i] += dec[i];
  }
  double total_bias = 0;
  for (size_t b = 0; b < n; b += 64) {
    const float half_gap = BlockBound(f, ScaleType::kFp32, x.data() + b, 64);  // >= the per-draw deviation
    for (size_t i = b; i < b + 64; ++i) {
      const double bias = mean[i] / trials - x[i];
      total_bias += bias;
      // Each draw deviates by at most one gap (2*half_gap); 6 sigma of the mean of `trials` draws.
      ASSERT_LE(std::fabs(bias), 6.0 * 2.0 * half_gap / std::sqrt(double(trials)))
          << FormatName(f) << " i=" << i;
    }
  }
  EXPECT_LT(std::fabs(total_bias / n), 0.01) << FormatName(f);
}

TEST_P(StochasticTest, NearestRoundingIsBiasedWhereStochasticIsNot) {
  // A value a third of the way between two levels: nearest always rounds down, stochastic averages out.
  const Format f = GetParam();
  const auto& t = internal::Traits(f);
  std::vector<float> x(64, 0.0f);
  x[0] = t.qmax;  // pins scale = 1 (fp32 scales)
  float lo = 0, hi = 0;
  for (int c = 0; c < (1 << t.bits); ++c) {
    const float v = t.lut[c];
    if (v > 0 && v < t.qmax && (hi == 0 || v < hi)) hi = v;
  }
  if (IsAsym(f)) {  // x[1] = 0 pins the minimum, so the grid is the integers 0..qmax
    lo = 1.0f;
    hi = 2.0f;
  }
  const float target = lo + (hi - lo) / 3;
  for (size_t i = 2; i < 64; ++i) x[i] = target;
  CodecSpec nearest{f, 64, ScaleType::kFp32};
  auto dn = Decode(*Encode(nearest, x));
  ASSERT_TRUE(dn.ok());
  EXPECT_EQ((*dn)[5], lo) << FormatName(f);
  double sum = 0;
  CodecSpec st = nearest;
  st.rounding = Rounding::kStochastic;
  for (int s = 0; s < 400; ++s) {
    st.seed = s;
    auto d = Decode(*Encode(st, x));
    for (size_t i = 2; i < 64; ++i) sum += (*d)[i];
  }
  EXPECT_NEAR(sum / (400 * 62), target, (hi - lo) * 0.02) << FormatName(f);
}

INSTANTIATE_TEST_SUITE_P(Formats, StochasticTest,
                         ::testing::Values(Format::kInt8Sym, Format::kInt4Sym, Format::kInt4Asym,
                                           Format::kInt2Sym, Format::kFp8E4M3, Format::kFp4E2M1,
                                           Format::kFp4E3M0, Format::kNf4),
                         [](const auto& p) { return std::string(FormatName(p.param)); });

TEST(ErrorFeedback, RunningSumsStayWithinOneStep) {
  const size_t n = 1000, rounds = 300;
  CodecSpec spec{Format::kFp4E3M0, 64};
  std::vector<float> residual(n, 0.0f), dec(n);
  std::vector<double> sum_in(n, 0.0), sum_dec(n, 0.0), sum_plain(n, 0.0);
  std::vector<uint8_t> payload;
  for (size_t r = 0; r < rounds; ++r) {
    auto x = Gaussian(n, static_cast<uint32_t>(r + 100), 0.01f);
    for (size_t i = 0; i < n; i += 97) x[i] = 1.0f;  // outliers: their blocks crush small values to 0
    ASSERT_TRUE(EncodeWithFeedback(spec, x, residual, &payload).ok());
    ASSERT_TRUE(DecodeInto(payload, dec).ok());
    auto plain = Decode(*Encode(spec, x));
    for (size_t i = 0; i < n; ++i) {
      sum_in[i] += x[i];
      sum_dec[i] += dec[i];
      sum_plain[i] += (*plain)[i];
    }
  }
  // One step of this block format is at most absmax/16 * 8 (e3m0's largest gap is 8 at scale 1/16).
  double worst_ef = 0, worst_plain = 0;
  for (size_t i = 0; i < n; ++i) {
    worst_ef = std::max(worst_ef, std::fabs(sum_dec[i] - sum_in[i]));
    worst_plain = std::max(worst_plain, std::fabs(sum_plain[i] - sum_in[i]));
  }
  EXPECT_LE(worst_ef, 1.0 / 16 * 8 * 1.01);
  EXPECT_GT(worst_plain, 5 * worst_ef) << "without feedback the error should accumulate";
}

TEST(ErrorFeedback, WrongResidualSizeIsRejected) {
  std::vector<float> x(10, 1.0f), residual(9, 0.0f);
  std::vector<uint8_t> p;
  Status s = EncodeWithFeedback(CodecSpec{}, x, residual, &p);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
}

// --- AVX2 == scalar ---------------------------------------------------------------------------

std::vector<float> MixedData(size_t n, uint32_t seed) {
  auto g = Gaussian(n, seed);
  auto t = StudentT3(n, seed + 1);
  std::mt19937 rng(seed);
  for (size_t i = 0; i < n; ++i) {
    switch (rng() % 6) {
      case 0:
        g[i] = t[i] * 100;
        break;
      case 1:
        g[i] = 0.0f;
        break;
      case 2:
        g[i] = -0.0f;
        break;
      case 3:
        g[i] *= 1e-3f;
        break;
      default:
        break;
    }
  }
  return g;
}

TEST(Avx2, BytesAndDecodedFloatsMatchScalar) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "this CPU has no AVX2: only the scalar path runs here";
  for (Format f : AllFormats()) {
    for (ScaleType st : {ScaleType::kBf16, ScaleType::kFp16, ScaleType::kFp32, ScaleType::kPow2}) {
      if (IsAsym(f) && st == ScaleType::kPow2) continue;
      for (Rounding r : {Rounding::kNearest, Rounding::kStochastic}) {
        CodecSpec spec{f, 64, st, r, 12345};
        if (!Validate(spec).ok()) continue;
        for (size_t n : {size_t{5}, size_t{64}, size_t{1003}, size_t{4099}}) {
          auto x = MixedData(n, static_cast<uint32_t>(n * 31 + static_cast<int>(f)));
          spec.isa = Isa::kScalar;
          auto a = Encode(spec, x);
          spec.isa = Isa::kAvx2;
          auto b = Encode(spec, x);
          ASSERT_TRUE(a.ok() && b.ok())
              << FormatName(f) << " " << a.status().ToString() << b.status().ToString();
          ASSERT_EQ(*a, *b) << FormatName(f) << " scale " << ScaleTypeName(st) << " n=" << n << " rounding "
                            << static_cast<int>(r);
          std::vector<float> da(n), db(n), aa(n, 0.5f), ab(n, 0.5f);
          ASSERT_TRUE(DecodeInto(*a, da, Isa::kScalar).ok());
          ASSERT_TRUE(DecodeInto(*a, db, Isa::kAvx2).ok());
          ASSERT_EQ(0, std::memcmp(da.data(), db.data(), n * 4)) << FormatName(f);
          ASSERT_TRUE(DecodeAdd(*a, -0.3f, aa, Isa::kScalar).ok());
          ASSERT_TRUE(DecodeAdd(*a, -0.3f, ab, Isa::kAvx2).ok());
          ASSERT_EQ(0, std::memcmp(aa.data(), ab.data(), n * 4)) << FormatName(f);
        }
      }
    }
  }
}

TEST(Avx2, Fp16ConversionMatchesF16cOverTheWholeRange) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "this CPU has no AVX2/F16C";
  std::vector<float> x;
  for (uint32_t bits = 0; bits < 0x477FF000u; bits += 4099) {
    x.push_back(internal::BitsFloat(bits));
    x.push_back(-internal::BitsFloat(bits));
  }
  x.push_back(65504.0f);
  x.push_back(65519.99f);
  CodecSpec spec{Format::kFp16};
  spec.isa = Isa::kScalar;
  auto a = Encode(spec, x);
  spec.isa = Isa::kAvx2;
  auto b = Encode(spec, x);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(*a, *b);
}

TEST(Avx2, ThresholdTiesAndNeighboursMatchScalar) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "this CPU has no AVX2";
  // Values exactly on every rounding threshold and one ulp either side, at scale 1 (block absmax =
  // qmax), where the AVX2 kernels use arithmetic shortcuts instead of the reference's comparisons.
  for (Format f : BlockFormats()) {
    const auto& t = internal::Traits(f);
    std::vector<float> x{t.qmax};
    std::vector<float> points;
    for (int j = 0; j < t.num_thresholds; ++j) points.push_back(t.thresholds[j]);
    for (int c = 0; c < (1 << t.bits); ++c) {
      if (std::isfinite(t.lut[c])) points.push_back(t.lut[c]);
    }
    for (int k = -4; k <= 9; ++k) points.push_back(std::ldexp(1.5f, k));  // E3M0's and E4M3's midpoints
    for (float p : points) {
      for (float v : {p, std::nextafter(p, -1e30f), std::nextafter(p, 1e30f)}) {
        if (std::fabs(v) <= t.qmax) {
          x.push_back(v);
          x.push_back(-v);
        }
      }
    }
    x.resize((x.size() + 63) / 64 * 64, 0.0f);
    for (size_t b = 0; b < x.size(); b += 64) x[b] = t.qmax;  // every block has scale 1
    for (ScaleType st : {ScaleType::kFp32, ScaleType::kBf16}) {
      CodecSpec spec{f, 64, st};
      spec.isa = Isa::kScalar;
      auto a = Encode(spec, x);
      spec.isa = Isa::kAvx2;
      auto b = Encode(spec, x);
      ASSERT_TRUE(a.ok() && b.ok());
      ASSERT_EQ(*a, *b) << FormatName(f);
    }
  }
}

TEST(Avx2, BlocksOfEveryMagnitudeMatchScalar) {
  if (!CpuHasAvx2()) GTEST_SKIP() << "this CPU has no AVX2";
  // 8-block groups take the vector scale path: give each block its own magnitude, from subnormal
  // to near the top of each scale type's range, including all-zero blocks.
  const size_t block = 32, blocks = 8 * 40 + 3;
  std::vector<float> x = Gaussian(block * blocks + 17, 77);
  for (size_t b = 0; b < blocks; ++b) {
    const int e = static_cast<int>(b % 40) * 6 - 140;  // 2^-140 .. 2^94
    for (size_t i = 0; i < block; ++i)
      x[b * block + i] = (b % 13 == 0) ? 0.0f : std::ldexp(x[b * block + i], e);
  }
  for (Format f : BlockFormats()) {
    for (ScaleType st : {ScaleType::kBf16, ScaleType::kFp32, ScaleType::kPow2}) {
      if (IsAsym(f) && st == ScaleType::kPow2) continue;
      for (Rounding r : {Rounding::kNearest, Rounding::kStochastic}) {
        CodecSpec spec{f, block, st, r, 99};
        spec.isa = Isa::kScalar;
        auto a = Encode(spec, x);
        spec.isa = Isa::kAvx2;
        auto b = Encode(spec, x);
        ASSERT_EQ(a.ok(), b.ok()) << FormatName(f) << " " << ScaleTypeName(st);
        if (a.ok()) {
          ASSERT_EQ(*a, *b) << FormatName(f) << " " << ScaleTypeName(st);
        } else {
          EXPECT_EQ(a.status().message(), b.status().message());
        }
      }
    }
  }
  // fp16 scales: magnitudes around fp16's range limits; errors must name the same block.
  for (float m : {1e-9f, 6e-8f, 1e-5f, 3e4f, 6e4f, 7e4f, 1e6f}) {
    std::vector<float> y = Gaussian(block * 24, 5);
    for (size_t i = block * 9; i < block * 10; ++i) y[i] *= m;
    CodecSpec spec{Format::kInt4Sym, block, ScaleType::kFp16};
    spec.isa = Isa::kScalar;
    auto a = Encode(spec, y);
    spec.isa = Isa::kAvx2;
    auto b = Encode(spec, y);
    ASSERT_EQ(a.ok(), b.ok()) << m;
    if (a.ok()) {
      ASSERT_EQ(*a, *b) << m;
    } else {
      EXPECT_EQ(a.status().message(), b.status().message());
      EXPECT_NE(a.status().message().find("block 9"), std::string::npos) << a.status().message();
    }
  }
}

TEST(EdgeCases, NonFiniteInsideAGroupOfBlocksIsFoundOnEveryPath) {
  for (Isa isa : {Isa::kScalar, Isa::kAuto}) {
    std::vector<float> x = Gaussian(64 * 40, 3);
    x[64 * 19 + 5] = INFINITY;
    CodecSpec spec{Format::kFp4E3M0, 64};
    spec.isa = isa;
    auto enc = Encode(spec, x);
    ASSERT_FALSE(enc.ok());
    EXPECT_NE(enc.status().message().find(std::to_string(64 * 19 + 5)), std::string::npos)
        << enc.status().message();
  }
}

// --- Bad payloads ------------------------------------------------------------------------------

std::vector<uint8_t> SamplePayload(Format f = Format::kFp4E3M0, size_t n = 200) {
  auto p = Encode(CodecSpec{f, 64}, Gaussian(n, 9));
  EXPECT_TRUE(p.ok());
  return *p;
}

void Reseal(std::vector<uint8_t>& p) {
  std::memset(p.data() + 28, 0, 4);
  const uint32_t crc = Crc32c(p);
  std::memcpy(p.data() + 28, &crc, 4);
}

TEST(BadPayload, EveryTruncationIsRejected) {
  for (Format f : AllFormats()) {
    const auto p = SamplePayload(f, 77);
    std::vector<float> out(77);
    for (size_t len = 0; len < p.size(); ++len) {
      Status s = DecodeInto(std::span<const uint8_t>(p.data(), len), out);
      ASSERT_FALSE(s.ok()) << FormatName(f) << " len=" << len;
      ASSERT_EQ(s.code(), StatusCode::kDataLoss);
    }
  }
}

TEST(BadPayload, EverySingleBitFlipIsRejectedAndTheAccumulatorIsUntouched) {
  const auto p = SamplePayload();
  std::vector<float> acc(200, 1.5f);
  for (size_t bit = 0; bit < p.size() * 8; ++bit) {
    auto q = p;
    q[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    Status s = DecodeAdd(q, 1.0f, acc);
    ASSERT_FALSE(s.ok()) << "bit " << bit;
  }
  for (float v : acc) ASSERT_EQ(v, 1.5f);
}

TEST(BadPayload, HeaderFieldsAreCheckedWithClearMessages) {
  auto p = SamplePayload();
  auto check = [](std::vector<uint8_t> q, const std::string& needle, bool reseal = true) {
    if (reseal) Reseal(q);
    auto info = Inspect(q);
    ASSERT_FALSE(info.ok()) << needle;
    EXPECT_NE(info.status().message().find(needle), std::string::npos) << info.status().message();
  };
  {
    auto q = p;
    q[0] = 'X';
    check(q, "magic");
  }
  {
    auto q = p;
    q[4] = 2;
    check(q, "version");
  }
  {
    auto q = p;
    q[5] = 99;
    check(q, "unknown format");
  }
  {
    auto q = p;
    q[6] = 8;
    check(q, "bits per code");
  }
  {
    auto q = p;
    q[8] = 16;
    q[9] = 0;
    check(q, "block size");
  }
  {
    auto q = p;
    q[16] += 1;
    check(q, "need");
  }
  {
    auto q = p;
    q.push_back(0);
    check(q, "trailing");
  }
  {
    auto q = p;
    q[40] ^= 1;
    check(q, "checksum", false);
  }
  // A well-formed payload whose scale is NaN (valid CRC): a crafted message, refused.
  {
    auto q = p;
    q[32] = 0xC0;
    q[33] = 0x7F;
    check(q, "scale");
  }
  std::vector<float> wrong(199);
  Status s = DecodeInto(p, wrong);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("199"), std::string::npos);
}

TEST(BadPayload, E4M3NanCodeIsRefused) {
  auto p = SamplePayload(Format::kFp8E4M3, 64);
  p[kHeaderBytes + 2 + 5] = 0x7F;  // one scale (bf16) then codes
  Reseal(p);
  EXPECT_EQ(Inspect(p).status().code(), StatusCode::kDataLoss);
}

TEST(Crc32c, KnownValueAndHardwareMatchesSoftware) {
  const std::string s = "123456789";
  std::span<const uint8_t> d(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  EXPECT_EQ(Crc32c(d), 0xE3069283u);
  std::vector<uint8_t> buf(100003);
  std::mt19937 rng(1);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  for (size_t len : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{100003}}) {
    std::span<const uint8_t> part(buf.data(), len);
    EXPECT_EQ(Crc32c(part), Crc32cSoftwareForTest(part, 0)) << len;
  }
  EXPECT_EQ(Crc32c(std::span(buf).subspan(500), Crc32c(std::span(buf).first(500))), Crc32c(buf));
}

}  // namespace
}  // namespace lowband::quant
