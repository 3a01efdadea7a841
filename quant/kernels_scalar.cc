// Scalar reference kernels: the definition of every format's bytes. The AVX2 kernels must match
// these to the bit (tests/quant/codec_test.cc checks it on random data).
#include <algorithm>
#include <cmath>

#include "quant/block_loop.h"
#include "quant/internal.h"

namespace lowband::quant::internal {
namespace {

bool Stats(const float* x, size_t n, float* absmax, float* mn, float* mx) {
  float a = 0.0f, lo = n ? x[0] : 0.0f, hi = n ? x[0] : 0.0f;
  bool finite = true;
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    finite &= std::isfinite(v);
    a = std::max(a, std::fabs(v));
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  *absmax = a;
  *mn = lo;
  *mx = hi;
  return finite;
}

void Quantize(const FormatTraits& t, const float* x, size_t n, float inv, float offset, bool stochastic,
              uint32_t key, uint32_t base, uint8_t* codes) {
  switch (t.bits) {
    case 8:
      for (size_t i = 0; i < n; ++i) {
        codes[i] = static_cast<uint8_t>(
            QuantizeOne(t, x[i], inv, offset, stochastic, key, base + static_cast<uint32_t>(i)));
      }
      break;
    case 4:
      for (size_t i = 0; i < n; i += 2) {
        uint32_t c = QuantizeOne(t, x[i], inv, offset, stochastic, key, base + static_cast<uint32_t>(i));
        if (i + 1 < n)
          c |= QuantizeOne(t, x[i + 1], inv, offset, stochastic, key, base + static_cast<uint32_t>(i + 1))
               << 4;
        codes[i / 2] = static_cast<uint8_t>(c);
      }
      break;
    case 2:
      for (size_t i = 0; i < n; i += 4) {
        uint32_t c = 0;
        for (size_t k = 0; k < 4 && i + k < n; ++k) {
          c |= QuantizeOne(t, x[i + k], inv, offset, stochastic, key, base + static_cast<uint32_t>(i + k))
               << (2 * k);
        }
        codes[i / 4] = static_cast<uint8_t>(c);
      }
      break;
    default:
      break;
  }
}

inline void Put(float v, float weight, bool add, float* out) {
  if (add) {
    *out += weight * v;
  } else {
    *out = v;
  }
}

void Dequantize(const FormatTraits& t, const uint8_t* codes, size_t n, float scale, float offset,
                float weight, bool add, float* out) {
  const bool asym = t.kind == Kind::kIntAsym;
  for (size_t i = 0; i < n; ++i) {
    uint32_t c;
    switch (t.bits) {
      case 8:
        c = codes[i];
        break;
      case 4:
        c = (codes[i / 2] >> (4 * (i & 1))) & 15u;
        break;
      default:
        c = (codes[i / 4] >> (2 * (i & 3))) & 3u;
        break;
    }
    Put(DequantizeOne(t.lut, asym, c, scale, offset), weight, add, out + i);
  }
}

void ToBf16(const float* x, size_t n, bool stochastic, uint32_t key, uint32_t base, uint16_t* out) {
  for (size_t i = 0; i < n; ++i) {
    if (stochastic) {
      const uint32_t r = HashIndex(key, base + static_cast<uint32_t>(i)) >> 16;
      out[i] = static_cast<uint16_t>((FloatBits(x[i]) + r) >> 16);
    } else {
      out[i] = FloatToBf16(x[i]);
    }
  }
}

void ToFp16(const float* x, size_t n, uint16_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = FloatToHalf(x[i]);
}

void FromBf16(const uint16_t* x, size_t n, float weight, bool add, float* out) {
  for (size_t i = 0; i < n; ++i) Put(Bf16ToFloat(x[i]), weight, add, out + i);
}

void FromFp16(const uint16_t* x, size_t n, float weight, bool add, float* out) {
  for (size_t i = 0; i < n; ++i) Put(HalfToFloat(x[i]), weight, add, out + i);
}

void AddScaled(const float* x, size_t n, float weight, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] += weight * x[i];
}

BlockEncodeResult EncodeBlocks(const FormatTraits& t, const BlockEncodeArgs& args) {
  return EncodeBlocksLoop(
      t, args,
      [](const float* x, size_t n, bool /*sym*/, float* a, float* lo, float* hi) {
        return Stats(x, n, a, lo, hi);
      },
      [&](const float* x, size_t n, float inv, float offset, uint32_t base, uint8_t* codes) {
        Quantize(t, x, n, inv, offset, args.stochastic, args.key, base, codes);
      });
}

}  // namespace

const Kernels& ScalarKernels() {
  static const Kernels k{Stats,  EncodeBlocks, Quantize, Dequantize, ToBf16,
                         ToFp16, FromBf16,     FromFp16, AddScaled};
  return k;
}

}  // namespace lowband::quant::internal
