// Properties of the AMAQ codec (quant/amaq.h): per-channel error bounds at each channel's own width,
// unbiased stochastic rounding, exact sizes and packing by width, the bit-map epoch protocol, exact
// passthrough, and rejection of bad input and of every truncated or corrupted payload.
#include "quant/amaq.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace lowband::quant {
namespace {

constexpr float kEps = std::numeric_limits<float>::epsilon();

// [rows, channels] with a different mean and spread per channel; `outliers` channels get a few
// values hundreds of times larger than the rest.
std::vector<float> MakeX(uint32_t rows, uint32_t channels, uint32_t seed, int outliers = 0) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(-3.0f, 3.0f);
  std::vector<float> mean(channels), sigma(channels);
  for (uint32_t c = 0; c < channels; ++c) {
    mean[c] = ud(rng);
    sigma[c] = std::exp(ud(rng));
  }
  std::vector<float> x(size_t{rows} * channels);
  for (uint32_t r = 0; r < rows; ++r) {
    for (uint32_t c = 0; c < channels; ++c) x[size_t{r} * channels + c] = mean[c] + sigma[c] * nd(rng);
  }
  for (int k = 0; k < outliers; ++k) {
    const uint32_t c = rng() % channels;
    for (int j = 0; j < 3; ++j)
      x[size_t{rng() % rows} * channels + c] = (rng() & 1 ? 1 : -1) * 300.0f * sigma[c];
  }
  return x;
}

// Random widths in [2, 8], every width present when there are at least 7 channels.
std::vector<uint8_t> MixedBits(uint32_t channels, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> bits(channels);
  for (uint32_t c = 0; c < channels; ++c) bits[c] = static_cast<uint8_t>(c < 7 ? 2 + c : 2 + rng() % 7);
  std::shuffle(bits.begin(), bits.end(), rng);
  return bits;
}

struct Range {
  float lo, hi;
};
Range ChannelRange(const std::vector<float>& x, uint32_t rows, uint32_t channels, uint32_t c) {
  Range r{x[c], x[c]};
  for (uint32_t i = 0; i < rows; ++i) {
    r.lo = std::min(r.lo, x[size_t{i} * channels + c]);
    r.hi = std::max(r.hi, x[size_t{i} * channels + c]);
  }
  return r;
}
// fp32 arithmetic slack of quantize + decode for a channel with this range.
float Slack(Range r) { return 4 * kEps * (std::max(std::fabs(r.lo), std::fabs(r.hi)) + (r.hi - r.lo)); }

std::vector<uint8_t> MustEncode(AmaqEncoder& enc, const std::vector<float>& x, uint32_t rows,
                                uint32_t channels, const std::vector<uint8_t>& bits,
                                const AmaqOptions& opt = {}, AmaqStats* stats = nullptr) {
  std::vector<uint8_t> payload;
  const Status s = enc.Encode(x, rows, channels, bits, opt, &payload, stats);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return payload;
}

TEST(AmaqRoundTrip, NearestStaysWithinEachChannelsOwnBound) {
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    const uint32_t rows = 100 + 57 * seed, channels = 7 + 13 * seed;
    const auto x = MakeX(rows, channels, seed, /*outliers=*/3);
    const auto bits = MixedBits(channels, seed);
    AmaqEncoder enc;
    const auto payload = MustEncode(enc, x, rows, channels, bits);
    AmaqDecoder dec;
    std::vector<float> out(x.size());
    ASSERT_TRUE(dec.Decode(payload, out).ok());
    auto bounds = AmaqNearestErrorBounds(x, rows, channels, bits);
    ASSERT_TRUE(bounds.ok()) << bounds.status().ToString();
    for (uint32_t c = 0; c < channels; ++c) {
      const Range r = ChannelRange(x, rows, channels, c);
      // The bound is that of this channel's width: half a step of (max - min) / (2^b - 1).
      const double step = (static_cast<double>(r.hi) - r.lo) / ((1 << bits[c]) - 1);
      ASSERT_NEAR(2.0 * (*bounds)[c], step, step * 1e-5) << "channel " << c << " bits " << int(bits[c]);
      float worst = 0;
      for (uint32_t i = 0; i < rows; ++i) {
        const size_t k = size_t{i} * channels + c;
        worst = std::max(worst, std::fabs(x[k] - out[k]));
        ASSERT_LE(std::fabs(x[k] - out[k]), (*bounds)[c] + Slack(r))
            << "row " << i << " channel " << c << " bits " << int(bits[c]) << " x " << x[k] << " got "
            << out[k];
      }
      // And the bound is not vacuous: with >= 100 Gaussian rows the worst error comes near it.
      if (bits[c] <= 4) {
        EXPECT_GT(worst, 0.25f * (*bounds)[c]) << "channel " << c;
      }
    }
  }
}

TEST(AmaqRoundTrip, StochasticIsWithinOneStepAndUnbiased) {
  const uint32_t rows = 48, channels = 21;
  const auto x = MakeX(rows, channels, 11, /*outliers=*/1);
  const auto bits = MixedBits(channels, 11);
  auto bounds = AmaqNearestErrorBounds(x, rows, channels, bits);
  ASSERT_TRUE(bounds.ok());
  const int kSeeds = 3000;
  std::vector<double> sum(x.size(), 0.0);
  std::vector<float> out(x.size());
  AmaqEncoder enc;
  AmaqDecoder dec;
  AmaqOptions opt;
  opt.rounding = Rounding::kStochastic;
  std::vector<uint8_t> first;
  for (int s = 0; s < kSeeds; ++s) {
    opt.seed = 0x1234567ull * (s + 1);
    const auto payload = MustEncode(enc, x, rows, channels, bits, opt);
    if (s == 0) first = payload;
    if (s == 1) {
      EXPECT_NE(payload, first) << "another seed must draw other roundings";
    }
    ASSERT_TRUE(dec.Decode(payload, out).ok());
    for (size_t k = 0; k < x.size(); ++k) {
      const uint32_t c = static_cast<uint32_t>(k % channels);
      const float step = 2 * (*bounds)[c];
      ASSERT_LT(std::fabs(x[k] - out[k]), step + Slack(ChannelRange(x, rows, channels, c))) << "k " << k;
      sum[k] += out[k];
    }
  }
  // Same seed, same bytes (from an encoder in the same state: a fresh one).
  opt.seed = 0x1234567ull;
  AmaqEncoder again;
  EXPECT_EQ(MustEncode(again, x, rows, channels, bits, opt), first);
  // Unbiased: the mean over seeds converges to x (per-draw sd <= step / 2; 6 sigma).
  for (size_t k = 0; k < x.size(); ++k) {
    const uint32_t c = static_cast<uint32_t>(k % channels);
    const double step = 2.0 * (*bounds)[c];
    const double mean = sum[k] / kSeeds;
    ASSERT_LE(std::fabs(mean - x[k]), 6.0 * step / (2.0 * std::sqrt(double{kSeeds})) + 1e-6 * std::fabs(x[k]))
        << "k " << k << " bits " << int(bits[c]);
  }
}

TEST(AmaqRoundTrip, ConstantChannelsAndSingleRowAreExact) {
  const uint32_t rows = 33, channels = 6;
  auto x = MakeX(rows, channels, 5);
  const float constants[] = {3.14159f, -0.0f, 1e-30f, -7e20f};
  for (uint32_t r = 0; r < rows; ++r) {
    for (int k = 0; k < 4; ++k) x[size_t{r} * channels + 1 + k] = constants[k];
  }
  const std::vector<uint8_t> bits = {2, 2, 3, 8, 5, 4};
  AmaqEncoder enc;
  AmaqDecoder dec;
  std::vector<float> out(x.size());
  ASSERT_TRUE(dec.Decode(MustEncode(enc, x, rows, channels, bits), out).ok());
  for (uint32_t r = 0; r < rows; ++r) {
    for (int k = 0; k < 4; ++k) ASSERT_EQ(out[size_t{r} * channels + 1 + k], constants[k]);
  }
  // One row: every channel is constant.
  const std::vector<float> one = {1.5f, -2.25f, 1e9f, 0.0f, -1e-3f, 42.0f};
  std::vector<float> out1(one.size());
  ASSERT_TRUE(dec.Decode(MustEncode(enc, one, 1, channels, bits), out1).ok());
  EXPECT_EQ(out1, one);
}

TEST(AmaqRoundTrip, PassthroughIsBitExact) {
  const uint32_t rows = 17, channels = 9;
  auto x = MakeX(rows, channels, 3, 2);
  x[0] = -0.0f;
  x[1] = std::numeric_limits<float>::denorm_min();
  x[2] = std::numeric_limits<float>::max();
  x[3] = -std::numeric_limits<float>::max();
  AmaqEncoder enc;
  AmaqOptions opt;
  opt.passthrough = true;
  AmaqStats stats;
  const auto payload = MustEncode(enc, x, rows, channels, {}, opt, &stats);
  EXPECT_EQ(payload.size(), AmaqPassthroughSize(rows, channels));
  EXPECT_EQ(payload.size(), kAmaqHeaderBytes + 4 * x.size());
  EXPECT_EQ(stats.total_bytes, payload.size());
  EXPECT_EQ(stats.code_bits_per_value, 32.0);
  EXPECT_EQ(stats.bitmap_bytes, 0u);
  EXPECT_EQ(enc.last_sent().epoch, 0u) << "passthrough must not touch the bit-map state";
  auto info = InspectAmaq(payload);
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->passthrough);
  EXPECT_FALSE(info->has_bitmap);
  AmaqDecoder dec;
  std::vector<float> out(x.size());
  ASSERT_TRUE(dec.Decode(payload, out).ok());
  EXPECT_EQ(std::memcmp(out.data(), x.data(), x.size() * 4), 0);
  EXPECT_EQ(dec.bitmap().epoch, 0u);
}

// Reads an LSB-first bitstream.
struct TestBits {
  const std::vector<uint8_t>& p;
  uint64_t pos;
  uint32_t Get(int n) {
    uint32_t v = 0;
    for (int i = 0; i < n; ++i, ++pos) v |= ((p[pos / 8] >> (pos % 8)) & 1u) << i;
    return v;
  }
};

TEST(AmaqWire, SizeIsExactAndCodesArePackedByWidth) {
  for (uint32_t seed = 1; seed <= 3; ++seed) {
    const uint32_t rows = 5 + seed, channels = 10 + 7 * seed;
    const auto bits = MixedBits(channels, 100 + seed);
    // Values on the integer grid with min 0 and max qmax: scale is exactly 1 and each code is the value.
    std::mt19937 rng(seed);
    std::vector<uint32_t> code(size_t{rows} * channels);
    for (uint32_t c = 0; c < channels; ++c) {
      const uint32_t qmax = (1u << bits[c]) - 1;
      for (uint32_t r = 0; r < rows; ++r)
        code[size_t{r} * channels + c] = r == 0 ? 0 : r == 1 ? qmax : rng() % (qmax + 1);
    }
    std::vector<float> x(code.begin(), code.end());
    AmaqEncoder enc;
    AmaqStats stats;
    const auto payload = MustEncode(enc, x, rows, channels, bits, {}, &stats);
    uint64_t code_bits = 0;
    for (uint8_t b : bits) code_bits += uint64_t{rows} * b;
    const uint64_t bitmap_bytes = (3 * channels + 7) / 8;
    const uint64_t expect = kAmaqHeaderBytes + bitmap_bytes + 8 * channels + (code_bits + 7) / 8;
    ASSERT_EQ(payload.size(), expect);
    EXPECT_EQ(AmaqEncodedSize(rows, bits, true), expect);
    EXPECT_EQ(AmaqEncodedSize(rows, bits, false), expect - bitmap_bytes);
    EXPECT_EQ(stats.header_bytes, kAmaqHeaderBytes);
    EXPECT_EQ(stats.bitmap_bytes, bitmap_bytes);
    EXPECT_EQ(stats.param_bytes, 8u * channels);
    EXPECT_EQ(stats.code_bytes, (code_bits + 7) / 8);
    EXPECT_EQ(stats.total_bytes, payload.size());
    EXPECT_DOUBLE_EQ(stats.code_bits_per_value, static_cast<double>(code_bits) / (rows * channels));
    EXPECT_DOUBLE_EQ(stats.total_bits_per_value, 8.0 * payload.size() / (rows * channels));
    EXPECT_TRUE(stats.bitmap_sent);

    // Walk the payload: bit map, (min, scale) per channel, then the codes by width then channel.
    TestBits rd{payload, 8 * kAmaqHeaderBytes};
    for (uint32_t c = 0; c < channels; ++c) ASSERT_EQ(rd.Get(3) + 2, bits[c]) << "bit map channel " << c;
    rd.pos = 8 * (kAmaqHeaderBytes + bitmap_bytes);
    for (uint32_t c = 0; c < channels; ++c) {
      float mn, scale;
      std::memcpy(&mn, &payload[rd.pos / 8 + 8 * c], 4);
      std::memcpy(&scale, &payload[rd.pos / 8 + 8 * c + 4], 4);
      ASSERT_EQ(mn, 0.0f);
      ASSERT_EQ(scale, 1.0f);
    }
    rd.pos += 64 * channels;
    for (int b = 2; b <= 8; ++b) {
      for (uint32_t c = 0; c < channels; ++c) {
        if (bits[c] != b) continue;
        for (uint32_t r = 0; r < rows; ++r) {
          ASSERT_EQ(rd.Get(b), code[size_t{r} * channels + c])
              << "width " << b << " channel " << c << " row " << r;
        }
      }
    }
    while (rd.pos < 8 * payload.size()) ASSERT_EQ(rd.Get(1), 0u) << "padding bit " << rd.pos;

    std::vector<float> out(x.size());
    AmaqDecoder dec;
    ASSERT_TRUE(dec.Decode(payload, out).ok());
    EXPECT_EQ(out, x) << "grid values round-trip exactly";
  }
}

TEST(AmaqBitmap, SentFirstOmittedWhenUnchangedResentOnChangeAndForce) {
  const uint32_t rows = 40, channels = 12;
  const auto x = MakeX(rows, channels, 9);
  auto bits = MixedBits(channels, 9);
  AmaqEncoder enc;
  AmaqDecoder dec;
  std::vector<float> out(x.size());
  struct Step {
    const char* what;
    bool has_map;
    uint32_t epoch;
  };
  auto check = [&](const std::vector<uint8_t>& payload, const AmaqStats& s, Step want) {
    auto info = InspectAmaq(payload);
    ASSERT_TRUE(info.ok()) << want.what << ": " << info.status().ToString();
    EXPECT_EQ(info->has_bitmap, want.has_map) << want.what;
    EXPECT_EQ(info->epoch, want.epoch) << want.what;
    EXPECT_EQ(info->rows, rows);
    EXPECT_EQ(s.bitmap_sent, want.has_map) << want.what;
    EXPECT_EQ(s.epoch, want.epoch) << want.what;
    EXPECT_EQ(s.bitmap_bytes, want.has_map ? (3 * info->channels + 7) / 8 : 0) << want.what;
    EXPECT_EQ(payload.size(), s.total_bytes);
    ASSERT_TRUE(dec.Decode(payload, std::span<float>(out.data(), size_t{rows} * info->channels)).ok())
        << want.what;
    EXPECT_EQ(dec.bitmap().epoch, want.epoch) << want.what;
    EXPECT_EQ(enc.last_sent().epoch, want.epoch) << want.what;
  };
  AmaqStats s;
  auto p = MustEncode(enc, x, rows, channels, bits, {}, &s);
  check(p, s, {"first call", true, 1});
  const size_t with_map = p.size();
  p = MustEncode(enc, x, rows, channels, bits, {}, &s);
  check(p, s, {"unchanged", false, 1});
  EXPECT_EQ(p.size(), with_map - (3 * channels + 7) / 8);
  AmaqOptions pass;
  pass.passthrough = true;
  MustEncode(enc, x, rows, channels, bits, pass, &s);  // does not disturb the map state
  p = MustEncode(enc, x, rows, channels, bits, {}, &s);
  check(p, s, {"unchanged after passthrough", false, 1});
  bits[5] = bits[5] == 8 ? 2 : bits[5] + 1;
  p = MustEncode(enc, x, rows, channels, bits, {}, &s);
  check(p, s, {"changed", true, 2});
  EXPECT_EQ(dec.bitmap().bits, bits);
  p = MustEncode(enc, x, rows, channels, bits, {}, &s);
  check(p, s, {"unchanged again", false, 2});
  enc.ForceBitmap();
  p = MustEncode(enc, x, rows, channels, bits, {}, &s);
  check(p, s, {"forced", true, 3});
  p = MustEncode(enc, x, rows, channels, bits, {}, &s);
  check(p, s, {"after forced", false, 3});
  // Fewer channels: a new map.
  const uint32_t fewer = 8;
  std::vector<float> x8(size_t{rows} * fewer);
  for (uint32_t r = 0; r < rows; ++r) {
    for (uint32_t c = 0; c < fewer; ++c) x8[size_t{r} * fewer + c] = x[size_t{r} * channels + c];
  }
  const std::vector<uint8_t> bits8(bits.begin(), bits.begin() + fewer);
  p = MustEncode(enc, x8, rows, fewer, bits8, {}, &s);
  check(p, s, {"channels changed", true, 4});
}

TEST(AmaqBitmap, DecoderThatMissedAnUpdateRejectsAndWritesNothing) {
  const uint32_t rows = 20, channels = 10;
  const auto x = MakeX(rows, channels, 4);
  auto bits = MixedBits(channels, 4);
  AmaqEncoder enc;
  AmaqDecoder dec;
  std::vector<float> out(x.size());
  ASSERT_TRUE(dec.Decode(MustEncode(enc, x, rows, channels, bits), out).ok());
  bits[0] = bits[0] == 2 ? 3 : 2;
  const auto lost = MustEncode(enc, x, rows, channels, bits);  // carries map epoch 2: never arrives
  const auto next = MustEncode(enc, x, rows, channels, bits);  // refers to epoch 2
  ASSERT_TRUE(InspectAmaq(lost)->has_bitmap);
  ASSERT_FALSE(InspectAmaq(next)->has_bitmap);
  std::vector<float> sentinel(x.size(), -123.0f);
  out = sentinel;
  Status s = dec.Decode(next, out);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("bit map epoch 2 unknown to this decoder (it has 1)"), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("resend the map"), std::string::npos) << s.message();
  EXPECT_EQ(out, sentinel);
  EXPECT_EQ(dec.bitmap().epoch, 1u);
  // A fresh decoder has no map at all.
  AmaqDecoder fresh;
  s = fresh.Decode(next, out);
  EXPECT_NE(s.message().find("unknown to this decoder (it has 0)"), std::string::npos) << s.message();
  EXPECT_EQ(out, sentinel);
  // The stateless decode with the old map refuses too; with the right map it agrees with a decoder
  // that saw the update.
  EXPECT_FALSE(DecodeAmaq(next, dec.bitmap(), out).ok());
  EXPECT_EQ(out, sentinel);
  AmaqDecoder uptodate = dec;
  ASSERT_TRUE(uptodate.Decode(lost, out).ok());
  std::vector<float> a(x.size()), b(x.size());
  ASSERT_TRUE(uptodate.Decode(next, a).ok());
  ASSERT_TRUE(DecodeAmaq(next, AmaqBitmap{2, bits}, b).ok());
  EXPECT_EQ(a, b);
  // The sender recovers by forcing the map.
  enc.ForceBitmap();
  const auto resent = MustEncode(enc, x, rows, channels, bits);
  ASSERT_TRUE(dec.Decode(resent, out).ok());
  EXPECT_EQ(dec.bitmap().epoch, 3u);
  EXPECT_EQ(dec.bitmap().bits, bits);
  ASSERT_TRUE(dec.Decode(MustEncode(enc, x, rows, channels, bits), out).ok());
}

// Every truncation, one extra byte, and every single-byte corruption must be refused, leave the
// output untouched and not change the decoder's map.
void ExpectAllDamageRejected(const std::vector<uint8_t>& payload, const AmaqDecoder& primed, size_t values,
                             const char* what) {
  const std::vector<float> sentinel(values, 77.0f);
  std::vector<float> out = sentinel;
  {
    AmaqDecoder d = primed;
    ASSERT_TRUE(d.Decode(payload, out).ok()) << what;
  }
  out = sentinel;
  for (size_t len = 0; len < payload.size(); ++len) {
    AmaqDecoder d = primed;
    const std::vector<uint8_t> cut(payload.begin(), payload.begin() + len);
    ASSERT_FALSE(d.Decode(cut, out).ok()) << what << " truncated to " << len;
    ASSERT_EQ(out, sentinel) << what << " truncated to " << len;
    ASSERT_EQ(d.bitmap().epoch, primed.bitmap().epoch);
  }
  auto longer = payload;
  longer.push_back(0);
  AmaqDecoder d0 = primed;
  Status s = d0.Decode(longer, out);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("trailing bytes"), std::string::npos) << s.message();
  for (size_t i = 0; i < payload.size(); ++i) {
    for (uint8_t flip : {uint8_t{0x01}, uint8_t{0x80}, uint8_t{0xFF}, uint8_t{0x5A}}) {
      auto bad = payload;
      bad[i] ^= flip;
      AmaqDecoder d = primed;
      ASSERT_FALSE(d.Decode(bad, out).ok()) << what << " byte " << i << " ^ " << int(flip);
      ASSERT_EQ(out, sentinel) << what << " byte " << i;
      ASSERT_EQ(d.bitmap().epoch, primed.bitmap().epoch);
      ASSERT_FALSE(InspectAmaq(bad).ok()) << what << " byte " << i << " ^ " << int(flip);
    }
  }
}

TEST(AmaqBadPayload, EveryTruncationAndByteCorruptionIsRejected) {
  const uint32_t rows = 13, channels = 11;
  const auto x = MakeX(rows, channels, 21, 1);
  const auto bits = MixedBits(channels, 21);
  AmaqEncoder enc;
  AmaqDecoder fresh;
  const auto with_map = MustEncode(enc, x, rows, channels, bits);
  ExpectAllDamageRejected(with_map, fresh, x.size(), "with map");
  AmaqDecoder primed;
  std::vector<float> out(x.size());
  ASSERT_TRUE(primed.Decode(with_map, out).ok());
  AmaqOptions st;
  st.rounding = Rounding::kStochastic;
  st.seed = 99;
  ExpectAllDamageRejected(MustEncode(enc, x, rows, channels, bits, st), primed, x.size(),
                          "stochastic, no map");
  ExpectAllDamageRejected(MustEncode(enc, x, rows, channels, bits), primed, x.size(), "no map");
  AmaqOptions pass;
  pass.passthrough = true;
  ExpectAllDamageRejected(MustEncode(enc, x, rows, channels, bits, pass), fresh, x.size(), "passthrough");
}

TEST(AmaqBadPayload, HugeClaimsAndWrongOutputSizeAreRefused) {
  const uint32_t rows = 8, channels = 4;
  const auto x = MakeX(rows, channels, 2);
  AmaqEncoder enc;
  auto p = MustEncode(enc, x, rows, channels, {2, 4, 6, 8});
  std::vector<float> out(x.size() - 1);
  AmaqDecoder dec;
  Status s = dec.Decode(p, out);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(std::to_string(x.size())), std::string::npos) << s.message();
  EXPECT_EQ(dec.bitmap().epoch, 0u) << "a refused payload's map must not be adopted";
  // A header claiming the maximum shape with a short payload: refused, nothing allocated from it.
  for (uint32_t r : {kAmaqMaxRows, kAmaqMaxRows + 1}) {
    auto bad = p;
    std::memcpy(&bad[8], &r, 4);
    EXPECT_FALSE(InspectAmaq(bad).ok());
    EXPECT_FALSE(dec.Decode(bad, out).ok());
  }
}

TEST(AmaqEncodeErrors, NonFiniteInputNamesRowAndChannel) {
  const uint32_t rows = 10, channels = 7;
  auto x = MakeX(rows, channels, 8);
  const std::vector<uint8_t> bits(channels, 4);
  x[size_t{5} * channels + 3] = std::nanf("");
  x[size_t{8} * channels + 1] = std::numeric_limits<float>::infinity();
  AmaqEncoder enc;
  std::vector<uint8_t> payload = {1, 2, 3};
  for (bool pass : {false, true}) {
    AmaqOptions opt;
    opt.passthrough = pass;
    Status s = enc.Encode(x, rows, channels, bits, opt, &payload);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("row 5, channel 3"), std::string::npos) << s.message();
    EXPECT_EQ(payload, (std::vector<uint8_t>{1, 2, 3})) << "a failed encode leaves the output alone";
  }
  x[size_t{5} * channels + 3] = 0.0f;
  Status s = enc.Encode(x, rows, channels, bits, {}, &payload);
  EXPECT_NE(s.message().find("row 8, channel 1"), std::string::npos) << s.message();
  EXPECT_EQ(enc.last_sent().epoch, 0u) << "a failed encode must not count as a sent map";
  EXPECT_FALSE(AmaqNearestErrorBounds(x, rows, channels, bits).ok());
}

TEST(AmaqEncodeErrors, BitsOutOfRangeAndShapeMismatchesAreNamed) {
  const uint32_t rows = 6, channels = 5;
  const auto x = MakeX(rows, channels, 1);
  AmaqEncoder enc;
  std::vector<uint8_t> payload;
  for (uint8_t bad : {uint8_t{0}, uint8_t{1}, uint8_t{9}, uint8_t{255}}) {
    std::vector<uint8_t> bits(channels, 4);
    bits[3] = bad;
    Status s = enc.Encode(x, rows, channels, bits, {}, &payload);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("channel 3"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("[2, 8]"), std::string::npos) << s.message();
  }
  Status s = enc.Encode(x, rows, channels, std::vector<uint8_t>(channels + 1, 4), {}, &payload);
  EXPECT_NE(s.message().find("6 entries"), std::string::npos) << s.message();
  s = enc.Encode(x, rows + 1, channels, std::vector<uint8_t>(channels, 4), {}, &payload);
  EXPECT_NE(s.message().find("has 30 values"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("= 35"), std::string::npos) << s.message();
  s = enc.Encode({}, 0, channels, std::vector<uint8_t>(channels, 4), {}, &payload);
  EXPECT_FALSE(s.ok());
  // A channel spanning more than fp32 can hold.
  auto wide = x;
  wide[2] = -3e38f;
  wide[channels + 2] = 3e38f;
  s = enc.Encode(wide, rows, channels, std::vector<uint8_t>(channels, 4), {}, &payload);
  EXPECT_NE(s.message().find("channel 2"), std::string::npos) << s.message();
  EXPECT_TRUE(payload.empty());
  EXPECT_EQ(enc.last_sent().epoch, 0u);
}

TEST(AmaqWire, TinyAndHugeRangesDecodeFinitely) {
  const uint32_t rows = 9, channels = 3;
  std::vector<float> x(size_t{rows} * channels);
  for (uint32_t r = 0; r < rows; ++r) {
    x[size_t{r} * channels + 0] = std::numeric_limits<float>::denorm_min() * static_cast<float>(r);
    x[size_t{r} * channels + 1] = 1e38f * (static_cast<float>(r) / 4.5f - 1.0f);
    x[size_t{r} * channels + 2] = 1.0f + kEps * static_cast<float>(r % 2);
  }
  const std::vector<uint8_t> bits = {3, 8, 2};
  AmaqEncoder enc;
  AmaqDecoder dec;
  std::vector<float> out(x.size());
  ASSERT_TRUE(dec.Decode(MustEncode(enc, x, rows, channels, bits), out).ok());
  auto bounds = AmaqNearestErrorBounds(x, rows, channels, bits);
  ASSERT_TRUE(bounds.ok());
  for (size_t k = 0; k < x.size(); ++k) {
    const uint32_t c = static_cast<uint32_t>(k % channels);
    ASSERT_TRUE(std::isfinite(out[k]));
    ASSERT_LE(std::fabs(x[k] - out[k]), (*bounds)[c] + Slack(ChannelRange(x, rows, channels, c)))
        << "k " << k;
  }
}

}  // namespace
}  // namespace lowband::quant
