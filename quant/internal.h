// Internals shared by the codec front end (codec.cc) and its kernels (kernels_*.cc). Not API.
//
// A blockwise format is a table of levels: value = offset + level[code] * scale, where the block's
// scale (and, for asymmetric formats, offset) come from the payload. Encoding maps q = (x - offset)
// / scale to a code: integer formats round q, lookup formats count thresholds, E4M3 rounds the
// float's bits. Every kernel uses the same float operations in the same order, so the scalar and
// AVX2 kernels agree to the bit.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

#include "quant/codec.h"

// The per-value and per-block arithmetic below is shared with the CUDA kernels (kernels_cuda.cu):
// LOWBAND_HD marks it callable from device code, so both paths run the same source and produce the
// same bits (the CUDA file is compiled with -fmad=false, like the CPU files with -ffp-contract=off).
#if defined(__CUDACC__)
#define LOWBAND_HD __host__ __device__ inline
#else
#define LOWBAND_HD inline
#endif

namespace lowband::quant::internal {

static_assert(std::endian::native == std::endian::little, "lowband's payloads assume a little-endian host");

enum class Kind : uint8_t {
  kPassthrough,  // fp32 / bf16 / fp16
  kIntSym,       // code = round(q) + qmax, level = code - qmax
  kIntAsym,      // code = round(q), level = code
  kSignMag8,     // 1 sign bit + 3-bit magnitude index into mag[0..7] (e2m1, e3m0)
  kLut16,        // 16 signed levels, sorted (nf4)
  kE4M3,         // OCP FP8 E4M3 bit patterns
};

struct FormatTraits {
  Format format;
  const char* name;
  int bits;
  Kind kind;
  float qmax;            // largest |level| (sym) or number of steps (asym): scale = range / qmax
  float mag[8];          // kSignMag8: magnitudes, ascending, mag[0] = 0
  float thresholds[15];  // nearest rounding: code/index = number of thresholds < q
  int num_thresholds;
  float lut[256];  // decode: level of each code (filled for every blockwise format)
};

const FormatTraits& Traits(Format f);

// One 32-bit uniform draw per value index, from a per-message key. Same on every path.
LOWBAND_HD uint32_t SeedKey(uint64_t seed) {
  return static_cast<uint32_t>(seed ^ (seed >> 32)) * 0x85EBCA77u + 0x165667B1u;
}
LOWBAND_HD uint32_t HashIndex(uint32_t key, uint32_t i) {
  uint32_t h = i * 0x9E3779B1u + key;
  h ^= h >> 15;
  h *= 0x2C1B3C6Du;
  h ^= h >> 12;
  h *= 0x297A2D39u;
  h ^= h >> 15;
  return h;
}
// Uniform in [0, 1) with 24 bits.
LOWBAND_HD float UniformFromHash(uint32_t h) { return static_cast<float>(h >> 8) * (1.0f / 16777216.0f); }

LOWBAND_HD uint32_t FloatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return std::bit_cast<uint32_t>(f);
#endif
}
LOWBAND_HD float BitsFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return std::bit_cast<float>(u);
#endif
}
// Exact float helpers that give the same result in host and device code.
LOWBAND_HD bool IsFinite(float f) { return (FloatBits(f) & 0x7F800000u) != 0x7F800000u; }
LOWBAND_HD float Abs(float f) { return BitsFloat(FloatBits(f) & 0x7FFFFFFFu); }
// std::min / std::max semantics (the first argument on ties).
LOWBAND_HD float Min(float a, float b) { return b < a ? b : a; }
LOWBAND_HD float Max(float a, float b) { return a < b ? b : a; }
LOWBAND_HD float Floor(float f) {
#if defined(__CUDA_ARCH__)
  return floorf(f);
#else
  return std::floor(f);
#endif
}
// Round to nearest, ties to even (std::nearbyint in the default rounding mode).
LOWBAND_HD float RoundEven(float f) {
#if defined(__CUDA_ARCH__)
  return rintf(f);
#else
  return std::nearbyint(f);
#endif
}
// Little-endian stores and loads of scale parameters (byte by byte: params need not be aligned).
LOWBAND_HD void StoreLe(uint8_t* p, uint32_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
LOWBAND_HD uint32_t LoadLe(const uint8_t* p, int bytes) {
  uint32_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}

// IEEE half <-> float (defined below). FloatToHalf rounds to nearest even (as F16C does); values
// >= 65520 become inf.
LOWBAND_HD uint16_t FloatToHalf(float f);
LOWBAND_HD float HalfToFloat(uint16_t h);
// bf16: round to nearest even.
LOWBAND_HD uint16_t FloatToBf16(float f) {
  uint32_t x = FloatBits(f);
  x += 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}
LOWBAND_HD float Bf16ToFloat(uint16_t h) { return BitsFloat(static_cast<uint32_t>(h) << 16); }

// Scale storage (defined below, inline: they run once per block on the encode hot path):
// ScaleBytes: bytes per stored scale parameter. RoundScaleUp: rounds a non-negative scale *up* to
// the stored type (so no value is clipped); false if the result is not finite. RoundOffsetDown:
// rounds an asymmetric block's minimum *down*. LoadScale: reads one stored parameter.

// Arguments of a whole blockwise encode (see block_loop.h).
struct BlockEncodeArgs {
  const float* x;
  uint64_t n;
  uint32_t block_size;
  ScaleType scale_type;
  bool stochastic;
  uint32_t key;
  uint8_t* params;           // all blocks' scale (and minimum) parameters
  uint8_t* codes;            // packed codes
  uint64_t first_index = 0;  // index of x[0] in the whole payload (stochastic draws)
};
struct BlockEncodeResult {
  enum Error { kNone, kNonFinite, kScaleRange, kOffsetRange };
  int64_t bad_block = -1;
  Error error = kNone;
  float value = 0;  // the out-of-range scale or minimum
};

// Block kernels. `codes` points at the block's first packed byte (blocks start on a byte boundary).
struct Kernels {
  // absmax, min and max of x[0..n); false if any value is NaN or Inf.
  bool (*stats)(const float* x, size_t n, float* absmax, float* mn, float* mx);
  // Every block of a blockwise encode: parameters and codes.
  BlockEncodeResult (*encode_blocks)(const FormatTraits& t, const BlockEncodeArgs& args);
  // Codes for x[0..n) with q = (x - offset) * inv; stochastic when `stochastic` (draws use value
  // indices base..base+n under `key`).
  void (*quantize)(const FormatTraits& t, const float* x, size_t n, float inv, float offset, bool stochastic,
                   uint32_t key, uint32_t base, uint8_t* codes);
  // out[i] = offset + level * scale, or out[i] += weight * (offset + level * scale) when `add`.
  void (*dequantize)(const FormatTraits& t, const uint8_t* codes, size_t n, float scale, float offset,
                     float weight, bool add, float* out);
  void (*to_bf16)(const float* x, size_t n, bool stochastic, uint32_t key, uint32_t base, uint16_t* out);
  void (*to_fp16)(const float* x, size_t n, uint16_t* out);
  void (*from_bf16)(const uint16_t* x, size_t n, float weight, bool add, float* out);
  void (*from_fp16)(const uint16_t* x, size_t n, float weight, bool add, float* out);
  // out[i] += weight * x[i]
  void (*add_scaled)(const float* x, size_t n, float weight, float* out);
};

LOWBAND_HD uint16_t FloatToHalf(float f) {
  uint32_t x = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u) return sign | (x > 0x7F800000u ? 0x7E00u : 0x7C00u);
  if (x >= 0x477FF000u) return sign | 0x7C00u;  // rounds to >= 65520: infinity
  if (x < 0x38800000u) {                        // below 2^-14: a half subnormal (units of 2^-24)
    if (x <= 0x33000000u) return sign;          // <= 2^-25 rounds to zero (ties to even)
    const uint32_t e = x >> 23;
    const uint32_t m = (x & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - e;  // value / 2^-24 = m * 2^(e - 126)
    const uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    const uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    return sign | static_cast<uint16_t>(r);
  }
  x += 0xFFFu + ((x >> 13) & 1u);
  return sign | static_cast<uint16_t>((x - 0x38000000u) >> 13);
}

LOWBAND_HD float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 31u, m = h & 0x3FFu;
  if (e == 0) {
    const float v = static_cast<float>(m) * (1.0f / 16777216.0f);  // m * 2^-24, exact
    return BitsFloat(FloatBits(v) | sign);
  }
  if (e == 31) return BitsFloat(sign | 0x7F800000u | (m << 13));
  return BitsFloat(sign | ((e + 112) << 23) | (m << 13));
}

LOWBAND_HD int ScaleBytes(ScaleType t) {
  switch (t) {
    case ScaleType::kFp32:
      return 4;
    case ScaleType::kFp16:
      return 2;
    case ScaleType::kBf16:
      return 2;
    case ScaleType::kPow2:
      return 1;
  }
  return 4;
}

LOWBAND_HD bool RoundScaleUp(ScaleType t, float raw, float* rounded, uint8_t* stored) {
  switch (t) {
    case ScaleType::kFp32:
      *rounded = raw;
      StoreLe(stored, FloatBits(raw), 4);
      return IsFinite(raw);
    case ScaleType::kFp16: {
      uint16_t h = FloatToHalf(raw);
      if (HalfToFloat(h) < raw) ++h;  // non-negative: the next code is the next larger value
      *rounded = HalfToFloat(h);
      StoreLe(stored, h, 2);
      return IsFinite(*rounded);
    }
    case ScaleType::kBf16: {
      const uint32_t x = FloatBits(raw);
      uint16_t h = static_cast<uint16_t>(x >> 16);
      if (x & 0xFFFFu) ++h;
      *rounded = Bf16ToFloat(h);
      StoreLe(stored, h, 2);
      return IsFinite(*rounded);
    }
    case ScaleType::kPow2: {
      uint32_t e = 0;
      if (raw > 0.0f) {
        const uint32_t x = FloatBits(raw);
        e = x >> 23;
        if (e == 0)
          e = 1;  // subnormal: round up to 2^-126
        else if (x & 0x7FFFFFu)
          e += 1;  // not a power of two: next one up
      }
      if (e >= 255) return false;
      stored[0] = static_cast<uint8_t>(e);
      *rounded = e == 0 ? 0.0f : BitsFloat(e << 23);
      return true;
    }
  }
  return false;
}

LOWBAND_HD bool RoundOffsetDown(ScaleType t, float raw, float* rounded, uint8_t* stored) {
  // Rounding toward -inf: round the magnitude up for negatives, down for positives.
  switch (t) {
    case ScaleType::kFp32:
      *rounded = raw;
      StoreLe(stored, FloatBits(raw), 4);
      return IsFinite(raw);
    case ScaleType::kFp16: {
      uint16_t h = FloatToHalf(raw);
      const float v = HalfToFloat(h);
      if (v > raw)
        h = (h & 0x8000u) ? static_cast<uint16_t>(h + 1) : (h == 0 ? 0x8001u : static_cast<uint16_t>(h - 1));
      *rounded = HalfToFloat(h);
      StoreLe(stored, h, 2);
      return IsFinite(*rounded);
    }
    case ScaleType::kBf16: {
      const uint32_t x = FloatBits(raw);
      uint16_t h = static_cast<uint16_t>(x >> 16);  // truncation rounds the magnitude down
      if ((x & 0xFFFFu) && (x & 0x80000000u)) ++h;  // negative: magnitude up
      *rounded = Bf16ToFloat(h);
      StoreLe(stored, h, 2);
      return IsFinite(*rounded);
    }
    case ScaleType::kPow2:
      return false;
  }
  return false;
}

LOWBAND_HD float LoadScale(ScaleType t, const uint8_t* p) {
  switch (t) {
    case ScaleType::kFp32:
      return BitsFloat(LoadLe(p, 4));
    case ScaleType::kFp16:
      return HalfToFloat(static_cast<uint16_t>(LoadLe(p, 2)));
    case ScaleType::kBf16:
      return Bf16ToFloat(static_cast<uint16_t>(LoadLe(p, 2)));
    case ScaleType::kPow2:
      return p[0] == 0 ? 0.0f : BitsFloat(static_cast<uint32_t>(p[0]) << 23);
  }
  return 0.0f;
}

// Scales below fp32's smallest normal (2^-126) are raised to it, so 1/scale stays finite; a block
// whose values are all that tiny is quantized on that coarsest grid (every value then rounds to
// one of the few levels below ~1e-38).
LOWBAND_HD float ClampScale(float raw) {
  const float smallest_normal = BitsFloat(0x00800000u);
  return raw > 0.0f && raw < smallest_normal ? smallest_normal : raw;
}

// One block's parameters from its statistics (absmax, or min and max for the asymmetric formats):
// writes the stored scale (and minimum) at `params` and returns inv = 1/scale and the offset the
// codes are taken from. The CPU block loop and the CUDA encoder both call this.
struct BlockParams {
  BlockEncodeResult::Error error = BlockEncodeResult::kNone;
  float value = 0;  // the out-of-range scale or minimum
  float inv = 0;
  float offset = 0;
};
LOWBAND_HD BlockParams ComputeBlockParams(const FormatTraits& t, ScaleType scale_type, float absmax, float mn,
                                          float mx, uint8_t* params) {
  BlockParams r;
  float raw, scale;
  if (t.kind == Kind::kIntAsym) {
    mn += 0.0f;  // -0 and +0 must store the same bytes on every path
    mx += 0.0f;
    if (!RoundOffsetDown(scale_type, mn, &r.offset, params + ScaleBytes(scale_type))) {
      r.error = BlockEncodeResult::kOffsetRange;
      r.value = mn;
      return r;
    }
    raw = (mx - r.offset) / t.qmax;
  } else {
    raw = absmax / t.qmax;
  }
  raw = ClampScale(raw);
  if (!IsFinite(raw) || !RoundScaleUp(scale_type, raw, &scale, params) ||
      !IsFinite(t.qmax * scale + r.offset)) {  // the top level must decode to a finite value
    r.error = BlockEncodeResult::kScaleRange;
    r.value = raw;
    return r;
  }
  r.inv = scale > 0.0f ? 1.0f / scale : 0.0f;
  return r;
}

// The code of one value: the definition of every blockwise format's bytes. QuantizeAs<kind> is
// the per-kind code (the CUDA kernels instantiate it per format); QuantizeOne dispatches on
// t.kind (the scalar kernels call it for every value, the AVX2 kernels for their tails).
template <Kind K>
LOWBAND_HD uint32_t QuantizeAs(const FormatTraits& t, float x, float inv, float offset, bool stochastic,
                               uint32_t key, uint32_t index) {
  const float u = stochastic ? UniformFromHash(HashIndex(key, index)) : 0.0f;
  if constexpr (K == Kind::kIntSym) {
    const float q = x * inv;
    float r = stochastic ? Floor(q + u) : RoundEven(q);
    r = Min(Max(r, -t.qmax), t.qmax);
    return static_cast<uint32_t>(static_cast<int32_t>(r + t.qmax));
  } else if constexpr (K == Kind::kIntAsym) {
    const float q = (x - offset) * inv;
    float r = stochastic ? Floor(q + u) : RoundEven(q);
    r = Min(Max(r, 0.0f), t.qmax);
    return static_cast<uint32_t>(static_cast<int32_t>(r));
  } else if constexpr (K == Kind::kSignMag8) {
    const float q = x * inv;
    const uint32_t sign = q < 0.0f ? 8u : 0u;
    const float a = Abs(q);
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
  } else if constexpr (K == Kind::kLut16) {
    const float q = Min(Max(x * inv, -1.0f), 1.0f);
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
  } else if constexpr (K == Kind::kE4M3) {
    const float q = x * inv;
    const uint32_t sign = q < 0.0f ? 0x80u : 0u;
    const float a = Abs(q);
    uint32_t code;
    if (!stochastic) {
      if (a >= 0.015625f) {  // 2^-6: normal range; round the fp32 mantissa to 3 bits (nearest even)
        uint32_t b = FloatBits(a);
        b += 0x7FFFFu + ((b >> 20) & 1u);
        code = (b >> 20) - 960u;  // rebias exponent 127 -> 7
      } else {
        code = static_cast<uint32_t>(static_cast<int32_t>(RoundEven(a * 512.0f)));
      }
    } else {
      if (a >= 0.015625f) {
        code = (FloatBits(a) >> 20) - 960u;  // truncate: the level at or below a
      } else {
        code = static_cast<uint32_t>(static_cast<int32_t>(Floor(a * 512.0f)));
      }
      if (code < 0x7Eu) {
        const float lo = t.lut[code], hi = t.lut[code + 1];
        code += u < (a - lo) / (hi - lo) ? 1u : 0u;
      }
    }
    return sign | (code < 0x7Eu ? code : 0x7Eu);
  } else {
    return 0;  // passthrough formats have no codes
  }
}

LOWBAND_HD uint32_t QuantizeOne(const FormatTraits& t, float x, float inv, float offset, bool stochastic,
                                uint32_t key, uint32_t index) {
  switch (t.kind) {
    case Kind::kIntSym:
      return QuantizeAs<Kind::kIntSym>(t, x, inv, offset, stochastic, key, index);
    case Kind::kIntAsym:
      return QuantizeAs<Kind::kIntAsym>(t, x, inv, offset, stochastic, key, index);
    case Kind::kSignMag8:
      return QuantizeAs<Kind::kSignMag8>(t, x, inv, offset, stochastic, key, index);
    case Kind::kLut16:
      return QuantizeAs<Kind::kLut16>(t, x, inv, offset, stochastic, key, index);
    case Kind::kE4M3:
      return QuantizeAs<Kind::kE4M3>(t, x, inv, offset, stochastic, key, index);
    case Kind::kPassthrough:
      break;
  }
  return 0;
}

// The value of one code: level * scale (+ minimum for the asymmetric formats).
LOWBAND_HD float DequantizeOne(const float* lut, bool asym, uint32_t code, float scale, float offset) {
  float v = lut[code] * scale;
  if (asym) v = v + offset;
  return v;
}

// Writes the 32-byte header of a payload of n values whose body is already in place after it, the
// CRC32C included (EncodeInto and the CUDA encoder both finish with this).
void WriteHeader(const CodecSpec& spec, uint64_t n, uint8_t* payload);
// The layout fields of a payload's spec (format, block size, scale type), from its header.
inline CodecSpec SpecOf(const PayloadInfo& info) {
  CodecSpec spec;
  spec.format = info.format;
  spec.block_size = info.block_size;
  spec.scale_type = info.scale_type;
  return spec;
}
// Checks that an encode of n values fits in out_bytes (the message names EncodedSize).
Status CheckEncodeTarget(const CodecSpec& spec, uint64_t n, uint64_t out_bytes);
// Checks that a decode of `info` into n values with `weight` (1 for a plain decode) can go ahead.
Status CheckDecodeTarget(const PayloadInfo& info, uint64_t n, float weight);

const Kernels& ScalarKernels();
const Kernels& Avx2Kernels();  // only call when CpuHasAvx2()
const Kernels& SelectKernels(Isa isa);

// Unaligned little-endian field access for payload headers (the library targets little-endian hosts).
template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
void Store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

// "0x%08x", for checksums and magic numbers in error messages.
inline std::string Hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

}  // namespace lowband::quant::internal
