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

// Code for one value. Shared with the AVX2 kernels' tails through ScalarKernels().
inline uint32_t QuantizeOne(const FormatTraits& t, float x, float inv, float offset, bool stochastic,
                            uint32_t key, uint32_t index) {
  const float u = stochastic ? UniformFromHash(HashIndex(key, index)) : 0.0f;
  switch (t.kind) {
    case Kind::kIntSym: {
      const float q = x * inv;
      float r = stochastic ? std::floor(q + u) : std::nearbyint(q);
      r = std::min(std::max(r, -t.qmax), t.qmax);
      return static_cast<uint32_t>(static_cast<int32_t>(r + t.qmax));
    }
    case Kind::kIntAsym: {
      const float q = (x - offset) * inv;
      float r = stochastic ? std::floor(q + u) : std::nearbyint(q);
      r = std::min(std::max(r, 0.0f), t.qmax);
      return static_cast<uint32_t>(static_cast<int32_t>(r));
    }
    case Kind::kSignMag8: {
      const float q = x * inv;
      const uint32_t sign = q < 0.0f ? 8u : 0u;
      const float a = std::fabs(q);
      uint32_t idx = 0;
      if (!stochastic) {
        for (int j = 0; j < 7; ++j) idx += a > t.thresholds[j] ? 1u : 0u;
      } else {
        for (int j = 1; j < 8; ++j) idx += a >= t.mag[j] ? 1u : 0u;
        if (idx < 7) {
          const float lo = t.mag[idx], hi = t.mag[idx + 1];
          idx += u < (a - lo) / (hi - lo) ? 1u : 0u;
        }
      }
      return sign | idx;
    }
    case Kind::kLut16: {
      const float q = std::min(std::max(x * inv, -1.0f), 1.0f);
      uint32_t idx = 0;
      if (!stochastic) {
        for (int j = 0; j < 15; ++j) idx += q > t.thresholds[j] ? 1u : 0u;
      } else {
        for (int j = 1; j < 16; ++j) idx += q >= t.lut[j] ? 1u : 0u;
        if (idx < 15) {
          const float lo = t.lut[idx], hi = t.lut[idx + 1];
          idx += u < (q - lo) / (hi - lo) ? 1u : 0u;
        }
      }
      return idx;
    }
    case Kind::kE4M3: {
      const float q = x * inv;
      const uint32_t sign = q < 0.0f ? 0x80u : 0u;
      const float a = std::fabs(q);
      uint32_t code;
      if (!stochastic) {
        if (a >= 0.015625f) {  // 2^-6: normal range; round the fp32 mantissa to 3 bits (nearest even)
          uint32_t b = FloatBits(a);
          b += 0x7FFFFu + ((b >> 20) & 1u);
          code = (b >> 20) - 960u;  // rebias exponent 127 -> 7
        } else {
          code = static_cast<uint32_t>(static_cast<int32_t>(std::nearbyint(a * 512.0f)));
        }
      } else {
        if (a >= 0.015625f) {
          code = (FloatBits(a) >> 20) - 960u;  // truncate: the level at or below a
        } else {
          code = static_cast<uint32_t>(static_cast<int32_t>(std::floor(a * 512.0f)));
        }
        if (code < 0x7Eu) {
          const float lo = t.lut[code], hi = t.lut[code + 1];
          code += u < (a - lo) / (hi - lo) ? 1u : 0u;
        }
      }
      return sign | std::min(code, 0x7Eu);
    }
    case Kind::kPassthrough:
      break;
  }
  return 0;
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
    float v = t.lut[c] * scale;
    if (asym) v = v + offset;
    Put(v, weight, add, out + i);
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
