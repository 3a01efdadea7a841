// AVX2 + F16C kernels. Compiled with -mavx2 -mf16c; only reached after CpuHasAvx2(). Each kernel
// does 8 values at a time with the scalar reference's operations in the scalar reference's order,
// and hands the last n % 8 values to the scalar kernel (blocks start on a byte boundary, and so do
// the tails, because block sizes are multiples of 8).
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include "quant/block_loop.h"
#include "quant/internal.h"

namespace lowband::quant::internal {
namespace {

inline __m256 AbsMask() { return _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)); }

// Low 16 bits of 8 lanes (each < 65536) as 8 uint16 values.
inline void Store8x16Bits(uint16_t* out, __m256i v) {
  const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(v, v), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(p));
}

inline float HMax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_shuffle_ps(m, m, 0x4E));
  m = _mm_max_ps(m, _mm_shuffle_ps(m, m, 0xB1));
  return _mm_cvtss_f32(m);
}
inline float HMin(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_shuffle_ps(m, m, 0x4E));
  m = _mm_min_ps(m, _mm_shuffle_ps(m, m, 0xB1));
  return _mm_cvtss_f32(m);
}
inline uint32_t HOr(__m256i v) {
  __m128i x = _mm_or_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  x = _mm_or_si128(x, _mm_shuffle_epi32(x, 0x4E));
  x = _mm_or_si128(x, _mm_shuffle_epi32(x, 0xB1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(x));
}

bool Stats(const float* x, size_t n, float* absmax, float* mn, float* mx) {
  if (n < 8) return ScalarKernels().stats(x, n, absmax, mn, mx);
  const __m256 mask = AbsMask();
  __m256 vabs = _mm256_setzero_ps(), vmin = _mm256_loadu_ps(x), vmax = vmin, vbad = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    vabs = _mm256_max_ps(vabs, _mm256_and_ps(v, mask));
    vmin = _mm256_min_ps(vmin, v);
    vmax = _mm256_max_ps(vmax, v);
    vbad = _mm256_or_ps(vbad, _mm256_sub_ps(v, v));  // 0 when finite, NaN for NaN/Inf
  }
  bool finite = _mm256_movemask_ps(_mm256_cmp_ps(vbad, vbad, _CMP_UNORD_Q)) == 0;
  float a = HMax(vabs), lo = HMin(vmin), hi = HMax(vmax);
  if (i < n) {
    float ta, tlo, thi;
    finite &= ScalarKernels().stats(x + i, n - i, &ta, &tlo, &thi);
    a = std::max(a, ta);
    lo = std::min(lo, tlo);
    hi = std::max(hi, thi);
  }
  *absmax = a;
  *mn = lo;
  *mx = hi;
  return finite;
}

// HashIndex(key, index + lane) for the 8 lanes.
inline __m256i Hash8(uint32_t key, uint32_t index) {
  __m256i h =
      _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(index)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  h = _mm256_add_epi32(_mm256_mullo_epi32(h, _mm256_set1_epi32(static_cast<int>(0x9E3779B1u))),
                       _mm256_set1_epi32(static_cast<int>(key)));
  h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 15));
  h = _mm256_mullo_epi32(h, _mm256_set1_epi32(0x2C1B3C6D));
  h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 12));
  h = _mm256_mullo_epi32(h, _mm256_set1_epi32(0x297A2D39));
  return _mm256_xor_si256(h, _mm256_srli_epi32(h, 15));
}

// UniformFromHash for the 8 lanes.
inline __m256 Uniform(uint32_t key, uint32_t index) {
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(Hash8(key, index), 8)),
                       _mm256_set1_ps(1.0f / 16777216.0f));
}

// Stats of one block: absmax only (symmetric formats) or min/max only (asymmetric ones).
inline bool BlockStats(const float* x, size_t n, bool sym, float* absmax, float* mn, float* mx) {
  if (n < 8 || n % 8 != 0) return Stats(x, n, absmax, mn, mx);
  __m256 vbad = _mm256_setzero_ps();
  if (sym) {
    // |x| as integers: the same order as the floats for non-negative values, and NaN/Inf are the
    // largest patterns, so one integer max finds the absmax and the bad values.
    const __m256i mask = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i vabs = _mm256_setzero_si256();
    for (size_t i = 0; i < n; i += 8) {
      vabs = _mm256_max_epi32(
          vabs, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), mask));
    }
    __m128i m = _mm_max_epi32(_mm256_castsi256_si128(vabs), _mm256_extracti128_si256(vabs, 1));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4E));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0xB1));
    const uint32_t bits = static_cast<uint32_t>(_mm_cvtsi128_si32(m));
    *absmax = BitsFloat(bits);
    *mn = *mx = 0.0f;
    return bits < 0x7F800000u;
  } else {
    __m256 vmin = _mm256_loadu_ps(x), vmax = vmin;
    for (size_t i = 0; i < n; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      vmin = _mm256_min_ps(vmin, v);
      vmax = _mm256_max_ps(vmax, v);
      vbad = _mm256_or_ps(vbad, _mm256_sub_ps(v, v));
    }
    *mn = HMin(vmin);
    *mx = HMax(vmax);
    *absmax = 0.0f;
  }
  return _mm256_movemask_ps(_mm256_cmp_ps(vbad, vbad, _CMP_UNORD_Q)) == 0;
}

inline __m256 Round(__m256 q) { return _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

// Looks up table[idx] for a 16-entry table held in two registers.
inline __m256 Lookup16(__m256 lo8, __m256 hi8, __m256i idx) {
  const __m256 a = _mm256_permutevar8x32_ps(lo8, idx);
  const __m256 b = _mm256_permutevar8x32_ps(hi8, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// NF4 without 15 compares: q in [-1, 1] falls in bucket f(q) = trunc(q * 15.99 + 16) in 0..31.
// Buckets are 1/15.99 wide and NF4's thresholds are at least 0.08 apart, so a bucket holds at
// most one threshold; f is monotone, so every threshold in an earlier bucket is below q and every
// one in a later bucket above it. code = (thresholds in earlier buckets) + (q > the next threshold),
// which is exactly the scalar reference's count of thresholds below q.
// The multiplier 15.99 (not 16) keeps q = 1 (and 1 + an ulp) in bucket 31 without a clamp.
constexpr float kNf4BucketScale = 15.99f;
inline int Nf4Bucket(float q) { return static_cast<int>(q * kNf4BucketScale + 16.0f); }
const std::array<uint8_t, 32>& Nf4Buckets() {
  static const std::array<uint8_t, 32> table = [] {
    const auto& t = Traits(Format::kNf4);
    std::array<uint8_t, 32> c{};
    for (int b = 0; b < 32; ++b) {
      for (int j = 0; j < 15; ++j) c[b] += Nf4Bucket(t.thresholds[j]) < b ? 1 : 0;
    }
    return c;
  }();
  return table;
}

// Loop-invariant vectors of one Quantize call, built once so the inner loop only computes.
struct QuantConsts {
  __m256 qmax, neg_qmax, zero, one, neg_one, abs_mask, min_normal, k512;
  __m256 thr[15];
  __m256 mag, lut0, lut1, thr0, thr1;
  __m256i nf4_bucket_lo;  // NF4: per 32-bucket, count of thresholds in earlier buckets (bytes, both halves)
  __m256i nf4_bucket_hi;
  uint32_t key;
  QuantConsts(const FormatTraits& t, uint32_t k)
      : qmax(_mm256_set1_ps(t.qmax)),
        neg_qmax(_mm256_set1_ps(-t.qmax)),
        zero(_mm256_setzero_ps()),
        one(_mm256_set1_ps(1.0f)),
        neg_one(_mm256_set1_ps(-1.0f)),
        abs_mask(AbsMask()),
        min_normal(_mm256_set1_ps(0.015625f)),
        k512(_mm256_set1_ps(512.0f)),
        mag(_mm256_loadu_ps(t.mag)),
        lut0(_mm256_loadu_ps(t.lut)),
        lut1(_mm256_loadu_ps(t.lut + 8)),
        key(k) {
    for (int j = 0; j < 15; ++j) thr[j] = _mm256_set1_ps(t.thresholds[j]);
    float padded[16];
    std::copy(t.thresholds, t.thresholds + 15, padded);
    padded[15] = 2.0f;  // above every clamped q
    thr0 = _mm256_loadu_ps(padded);
    thr1 = _mm256_loadu_ps(padded + 8);
    const auto& table = Nf4Buckets();
    nf4_bucket_lo =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table.data())));
    nf4_bucket_hi =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table.data() + 16)));
  }
};

inline __m256i CountAbove(__m256 q, const __m256* thr, int count, int cmp_gt) {
  __m256i idx = _mm256_setzero_si256();
  for (int j = 0; j < count; ++j) {
    const __m256 m = cmp_gt ? _mm256_cmp_ps(q, thr[j], _CMP_GT_OQ) : _mm256_cmp_ps(q, thr[j], _CMP_GE_OQ);
    idx = _mm256_sub_epi32(idx, _mm256_castps_si256(m));
  }
  return idx;
}

// Codes (one per 32-bit lane) for 8 values; K and S (stochastic) are fixed per call so the
// compiler drops every branch from the inner loop.
// Per-block values of the quantizer.
struct BlockConsts {
  __m256 inv, offset;
};

template <Kind K, bool S>
inline __m256i Codes8(const FormatTraits& t, const QuantConsts& c, const BlockConsts& bc, __m256 x,
                      uint32_t index) {
  const __m256 u = S ? Uniform(c.key, index) : c.zero;
  // |q| <= qmax (1 + 2^-20) because scales are rounded up, so the integer conversion cannot
  // overflow and clamping the integer equals the reference's clamping of the float.
  if constexpr (K == Kind::kIntSym) {
    const __m256 q = _mm256_mul_ps(x, bc.inv);
    __m256 r = S ? _mm256_floor_ps(_mm256_add_ps(q, u)) : Round(q);
    r = _mm256_min_ps(_mm256_max_ps(r, c.neg_qmax), c.qmax);
    return _mm256_cvttps_epi32(_mm256_add_ps(r, c.qmax));
  } else if constexpr (K == Kind::kIntAsym) {
    const __m256 q = _mm256_mul_ps(_mm256_sub_ps(x, bc.offset), bc.inv);
    const __m256i r = S ? _mm256_cvttps_epi32(_mm256_floor_ps(_mm256_add_ps(q, u))) : _mm256_cvtps_epi32(q);
    return _mm256_min_epi32(_mm256_max_epi32(r, _mm256_setzero_si256()),
                            _mm256_set1_epi32(static_cast<int>(t.qmax)));
  } else if constexpr (K == Kind::kSignMag8) {
    const __m256 q = _mm256_mul_ps(x, bc.inv);
    const __m256i sign =
        _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(q, c.zero, _CMP_LT_OQ)), _mm256_set1_epi32(8));
    const __m256 a = _mm256_and_ps(q, c.abs_mask);
    __m256i idx;
    if constexpr (!S) {
      const __m256i b = _mm256_castps_si256(a);
      if (t.format == Format::kFp4E3M0) {
        // Levels 2^-2..2^4: a rounds up to the next power of two iff its mantissa is above 1.5,
        // i.e. exponent of (bits + 0x3FFFFF); index = exponent - 124, at least 1 above 1/8, at most 7.
        const __m256i e = _mm256_sub_epi32(
            _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x3FFFFF)), 23), _mm256_set1_epi32(124));
        idx = _mm256_min_epi32(_mm256_max_epi32(e, _mm256_set1_epi32(1)), _mm256_set1_epi32(7));
        idx = _mm256_and_si256(idx, _mm256_castps_si256(_mm256_cmp_ps(a, c.thr[0], _CMP_GT_OQ)));
      } else {
        // E2M1 at or above 1: one mantissa bit, rounding half down (the reference's strict
        // thresholds); below 1: the two thresholds 1/4 and 3/4.
        const __m256i big = _mm256_min_epi32(
            _mm256_sub_epi32(_mm256_srli_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x1FFFFF)), 22),
                             _mm256_set1_epi32(252)),
            _mm256_set1_epi32(7));
        const __m256i small = CountAbove(a, c.thr, 2, 1);
        idx = _mm256_blendv_epi8(small, big, _mm256_castps_si256(_mm256_cmp_ps(a, c.one, _CMP_GE_OQ)));
      }
    } else {
      idx = _mm256_setzero_si256();
      for (int j = 1; j < 8; ++j) {
        idx = _mm256_sub_epi32(idx,
                               _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(t.mag[j]), _CMP_GE_OQ)));
      }
      const __m256 lo = _mm256_permutevar8x32_ps(c.mag, idx);
      const __m256 hi = _mm256_permutevar8x32_ps(c.mag, _mm256_add_epi32(idx, _mm256_set1_epi32(1)));
      const __m256 p = _mm256_div_ps(_mm256_sub_ps(a, lo), _mm256_sub_ps(hi, lo));
      const __m256i up = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(u, p, _CMP_LT_OQ)),
                                          _mm256_cmpgt_epi32(_mm256_set1_epi32(7), idx));
      idx = _mm256_sub_epi32(idx, up);
    }
    return _mm256_or_si256(sign, idx);
  } else if constexpr (K == Kind::kLut16) {
    if constexpr (!S) {
      // No clamp to [-1, 1] needed here: scales are rounded up, so q overshoots by at most an ulp;
      // such a q lands in bucket 0 or 31 and gets the clamped q's code (0 or 15).
      const __m256 q = _mm256_mul_ps(x, bc.inv);
      const __m256i bucket = _mm256_cvttps_epi32(
          _mm256_add_ps(_mm256_mul_ps(q, _mm256_set1_ps(kNf4BucketScale)), _mm256_set1_ps(16.0f)));
      const __m256i lo = _mm256_shuffle_epi8(c.nf4_bucket_lo, bucket);
      const __m256i hi = _mm256_shuffle_epi8(c.nf4_bucket_hi, bucket);
      const __m256i base =
          _mm256_and_si256(_mm256_blendv_epi8(lo, hi, _mm256_slli_epi32(bucket, 3)), _mm256_set1_epi32(0xFF));
      const __m256 next = Lookup16(c.thr0, c.thr1, base);
      return _mm256_sub_epi32(base, _mm256_castps_si256(_mm256_cmp_ps(q, next, _CMP_GT_OQ)));
    } else {
      const __m256 q = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(x, bc.inv), c.neg_one), c.one);
      __m256i idx = _mm256_setzero_si256();
      for (int j = 1; j < 16; ++j) {
        idx = _mm256_sub_epi32(idx,
                               _mm256_castps_si256(_mm256_cmp_ps(q, _mm256_set1_ps(t.lut[j]), _CMP_GE_OQ)));
      }
      const __m256 lo = Lookup16(c.lut0, c.lut1, idx);
      const __m256 hi = Lookup16(c.lut0, c.lut1, _mm256_add_epi32(idx, _mm256_set1_epi32(1)));
      const __m256 p = _mm256_div_ps(_mm256_sub_ps(q, lo), _mm256_sub_ps(hi, lo));
      const __m256i up = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(u, p, _CMP_LT_OQ)),
                                          _mm256_cmpgt_epi32(_mm256_set1_epi32(15), idx));
      return _mm256_sub_epi32(idx, up);
    }
  } else {  // kE4M3
    const __m256 q = _mm256_mul_ps(x, bc.inv);
    const __m256i sign =
        _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(q, c.zero, _CMP_LT_OQ)), _mm256_set1_epi32(0x80));
    const __m256 a = _mm256_and_ps(q, c.abs_mask);
    const __m256 normal = _mm256_cmp_ps(a, c.min_normal, _CMP_GE_OQ);
    const __m256i b = _mm256_castps_si256(a);
    __m256i code;
    if constexpr (!S) {
      const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7FFFF),
                                            _mm256_and_si256(_mm256_srli_epi32(b, 20), _mm256_set1_epi32(1)));
      const __m256i cn =
          _mm256_sub_epi32(_mm256_srli_epi32(_mm256_add_epi32(b, bias), 20), _mm256_set1_epi32(960));
      const __m256i cs = _mm256_cvttps_epi32(Round(_mm256_mul_ps(a, c.k512)));
      code = _mm256_blendv_epi8(cs, cn, _mm256_castps_si256(normal));
      code = _mm256_min_epu32(code, _mm256_set1_epi32(0x7E));
    } else {
      const __m256i cn = _mm256_sub_epi32(_mm256_srli_epi32(b, 20), _mm256_set1_epi32(960));
      const __m256i cs = _mm256_cvttps_epi32(_mm256_floor_ps(_mm256_mul_ps(a, c.k512)));
      code = _mm256_blendv_epi8(cs, cn, _mm256_castps_si256(normal));
      code = _mm256_min_epu32(code, _mm256_set1_epi32(0x7E));
      const __m256 lo = _mm256_i32gather_ps(t.lut, code, 4);
      const __m256 hi = _mm256_i32gather_ps(t.lut, _mm256_add_epi32(code, _mm256_set1_epi32(1)), 4);
      const __m256 p = _mm256_div_ps(_mm256_sub_ps(a, lo), _mm256_sub_ps(hi, lo));
      const __m256i up = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(u, p, _CMP_LT_OQ)),
                                          _mm256_cmpgt_epi32(_mm256_set1_epi32(0x7E), code));
      code = _mm256_sub_epi32(code, up);
    }
    return _mm256_or_si256(sign, code);
  }
}

// 32 codes (four vectors of 8 lanes, each < 256) as 32 bytes in value order.
inline __m256i Bytes32(__m256i c0, __m256i c1, __m256i c2, __m256i c3) {
  const __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(c0, c1), _mm256_packus_epi32(c2, c3));
  return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

template <Kind K, bool S, int Bits>
inline void QuantizeBlock(const FormatTraits& t, const QuantConsts& c, const float* x, size_t n, float inv,
                          float offset, uint32_t base, uint8_t* codes) {
  const BlockConsts bc{_mm256_set1_ps(inv), _mm256_set1_ps(offset)};
  const uint32_t key = c.key;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const uint32_t idx = base + static_cast<uint32_t>(i);
    const __m256i b = Bytes32(Codes8<K, S>(t, c, bc, _mm256_loadu_ps(x + i), idx),
                              Codes8<K, S>(t, c, bc, _mm256_loadu_ps(x + i + 8), idx + 8),
                              Codes8<K, S>(t, c, bc, _mm256_loadu_ps(x + i + 16), idx + 16),
                              Codes8<K, S>(t, c, bc, _mm256_loadu_ps(x + i + 24), idx + 24));
    if constexpr (Bits == 8) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i), b);
    } else if constexpr (Bits == 4) {
      const __m256i m = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x1001));  // even + 16 * odd
      const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi16(m, m), 0x08);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i / 2), _mm256_castsi256_si128(p));
    } else {
      const __m256i m1 = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x0401));    // c0 + 4 c1
      const __m256i m2 = _mm256_madd_epi16(m1, _mm256_set1_epi32(0x00100001));  // + 16 (c2 + 4 c3)
      const __m256i p = _mm256_packus_epi16(_mm256_packus_epi32(m2, m2), _mm256_setzero_si256());
      const uint32_t lo = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_castsi256_si128(p)));
      const uint32_t hi = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_extracti128_si256(p, 1)));
      std::memcpy(codes + i / 4, &lo, 4);
      std::memcpy(codes + i / 4 + 4, &hi, 4);
    }
  }
  for (; i + 8 <= n; i += 8) {
    const __m256i v = Codes8<K, S>(t, c, bc, _mm256_loadu_ps(x + i), base + static_cast<uint32_t>(i));
    if constexpr (Bits == 8) {
      const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
      const __m256i s8 = _mm256_shuffle_epi8(v, pick);
      const uint32_t lo = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_castsi256_si128(s8)));
      const uint32_t hi = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_extracti128_si256(s8, 1)));
      std::memcpy(codes + i, &lo, 4);
      std::memcpy(codes + i + 4, &hi, 4);
    } else if constexpr (Bits == 4) {
      const uint32_t w = HOr(_mm256_sllv_epi32(v, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)));
      std::memcpy(codes + i / 2, &w, 4);
    } else {
      const uint16_t w =
          static_cast<uint16_t>(HOr(_mm256_sllv_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14))));
      std::memcpy(codes + i / 4, &w, 2);
    }
  }
  if (i < n) {
    ScalarKernels().quantize(t, x + i, n - i, inv, offset, S, key, base + static_cast<uint32_t>(i),
                             codes + i * static_cast<size_t>(Bits) / 8);
  }
}

template <Kind K, bool S, int Bits>
void QuantizeT(const FormatTraits& t, const float* x, size_t n, float inv, float offset, uint32_t key,
               uint32_t base, uint8_t* codes) {
  const QuantConsts c(t, key);
  QuantizeBlock<K, S, Bits>(t, c, x, n, inv, offset, base, codes);
}

// Lane j = max over the 8 lanes of v[j] (signed 32-bit): a transposed reduction of 8 vectors.
inline __m256i HMax8(const __m256i* v) {
  auto pair = [](__m256i a, __m256i b) {
    return _mm256_max_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
  };
  auto quad = [](__m256i a, __m256i b) {
    return _mm256_max_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
  };
  const __m256i u0 = quad(pair(v[0], v[1]), pair(v[2], v[3]));
  const __m256i u1 = quad(pair(v[4], v[5]), pair(v[6], v[7]));
  return _mm256_max_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

// RoundScaleUp for 8 non-negative scales at once: stores the 8 parameters and returns the scales,
// or false if one is not finite. Same results as the scalar RoundScaleUp (for fp16, rounding
// toward +inf is the scalar's round-to-nearest-then-step-up).
inline bool RoundScalesUp8(ScaleType type, __m256 raw, __m256* scale, uint8_t* params) {
  const __m256i bits = _mm256_castps_si256(raw);
  switch (type) {
    case ScaleType::kFp32:
      _mm256_storeu_ps(reinterpret_cast<float*>(params), raw);
      *scale = raw;
      return _mm256_movemask_ps(
                 _mm256_castsi256_ps(_mm256_cmpgt_epi32(bits, _mm256_set1_epi32(0x7F7FFFFF)))) == 0;
    case ScaleType::kBf16: {
      const __m256i inexact = _mm256_andnot_si256(
          _mm256_cmpeq_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0xFFFF)), _mm256_setzero_si256()),
          _mm256_set1_epi32(1));
      const __m256i hi = _mm256_add_epi32(_mm256_srli_epi32(bits, 16), inexact);
      Store8x16Bits(reinterpret_cast<uint16_t*>(params), hi);
      *scale = _mm256_castsi256_ps(_mm256_slli_epi32(hi, 16));
      return _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(hi, _mm256_set1_epi32(0x7F7F)))) == 0;
    }
    case ScaleType::kFp16: {
      const __m128i h = _mm256_cvtps_ph(raw, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(params), h);
      *scale = _mm256_cvtph_ps(h);
      return _mm256_movemask_ps(_mm256_cmp_ps(*scale, _mm256_set1_ps(65504.0f), _CMP_GT_OQ)) == 0;
    }
    case ScaleType::kPow2: {
      const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi32(1);
      const __m256i e0 = _mm256_srli_epi32(bits, 23);
      const __m256i has_mant = _mm256_andnot_si256(
          _mm256_cmpeq_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFF)), zero), one);
      const __m256i normal = _mm256_add_epi32(e0, has_mant);
      const __m256i sub = _mm256_andnot_si256(_mm256_cmpeq_epi32(bits, zero), one);  // 0 -> 0, subnormal -> 1
      const __m256i e = _mm256_blendv_epi8(normal, sub, _mm256_cmpeq_epi32(e0, zero));
      const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(e), _mm256_extracti128_si256(e, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(params), _mm_packus_epi16(w16, w16));
      *scale = _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));  // e = 0 gives +0
      return _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(e, _mm256_set1_epi32(254)))) == 0;
    }
  }
  return false;
}

// Eight full blocks of a symmetric format: statistics, scales and codes, with the per-block
// scalar chain (reduce, divide, round, divide) done once for all eight. False when a value is not
// finite or a scale is out of range: the caller re-runs those blocks one by one for the error.
template <Kind K, bool S, int Bits>
inline bool EncodeGroup8(const FormatTraits& t, const QuantConsts& c, const BlockEncodeArgs& a,
                         uint64_t first_block) {
  const uint64_t bs = a.block_size;
  const float* x = a.x + first_block * bs;
  const __m256i mask = _mm256_set1_epi32(0x7FFFFFFF);
  __m256i vabs[8];
  for (int j = 0; j < 8; ++j) {
    __m256i m = _mm256_setzero_si256();
    const float* xb = x + j * bs;
    for (uint64_t i = 0; i < bs; i += 8) {
      m = _mm256_max_epi32(
          m, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + i)), mask));
    }
    vabs[j] = m;
  }
  const __m256i absmax = HMax8(vabs);
  if (_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(absmax, _mm256_set1_epi32(0x7F7FFFFF)))) !=
      0) {
    return false;
  }
  __m256 raw = _mm256_div_ps(_mm256_castsi256_ps(absmax), c.qmax);
  raw = _mm256_and_ps(_mm256_max_ps(raw, _mm256_set1_ps(std::numeric_limits<float>::min())),
                      _mm256_cmp_ps(raw, c.zero, _CMP_GT_OQ));  // ClampScale
  __m256 scale;
  const int sb = ScaleBytes(a.scale_type);
  if (!RoundScalesUp8(a.scale_type, raw, &scale, a.params + first_block * sb)) return false;
  const __m256 top = _mm256_and_ps(_mm256_mul_ps(c.qmax, scale), c.abs_mask);
  if (_mm256_movemask_ps(_mm256_cmp_ps(top, _mm256_set1_ps(std::numeric_limits<float>::max()), _CMP_GT_OQ)))
    return false;
  const __m256 inv =
      _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), scale), _mm256_cmp_ps(scale, c.zero, _CMP_GT_OQ));
  alignas(32) float invs[8];
  _mm256_store_ps(invs, inv);
  for (int j = 0; j < 8; ++j) {
    const uint64_t start = (first_block + j) * bs;
    QuantizeBlock<K, S, Bits>(t, c, a.x + start, bs, invs[j], 0.0f,
                              static_cast<uint32_t>(a.first_index + start), a.codes + start * Bits / 8);
  }
  return true;
}

template <Kind K, bool S, int Bits>
BlockEncodeResult EncodeBlocksT(const FormatTraits& t, const BlockEncodeArgs& args) {
  const QuantConsts c(t, args.key);
  auto one_by_one = [&](uint64_t first_block) {
    const uint64_t start = first_block * args.block_size;
    BlockEncodeArgs rest = args;
    rest.x += start;
    rest.n -= start;
    rest.params += first_block * ScaleBytes(args.scale_type) * (K == Kind::kIntAsym ? 2 : 1);
    rest.codes += start * Bits / 8;
    rest.first_index += start;
    BlockEncodeResult r = EncodeBlocksLoop(
        t, rest, BlockStats,
        [&](const float* x, size_t n, float inv, float offset, uint32_t base, uint8_t* codes) {
          QuantizeBlock<K, S, Bits>(t, c, x, n, inv, offset, base, codes);
        });
    if (r.bad_block >= 0) r.bad_block += static_cast<int64_t>(first_block);
    return r;
  };
  uint64_t block = 0;
  if constexpr (K != Kind::kIntAsym) {
    const uint64_t groups = args.n / args.block_size / 8;
    for (; block < groups * 8; block += 8) {
      if (!EncodeGroup8<K, S, Bits>(t, c, args, block)) break;
    }
  }
  return one_by_one(block);
}

// One instantiation per (kind, rounding, bits), chosen once per call.
template <template <Kind, bool, int> class F>
auto Dispatch(const FormatTraits& t, bool stochastic) {
#define LB_PICK(K, B) return stochastic ? &F<K, true, B>::Run : &F<K, false, B>::Run
  switch (t.kind) {
    case Kind::kIntSym:
      if (t.bits == 8) LB_PICK(Kind::kIntSym, 8);
      if (t.bits == 4) LB_PICK(Kind::kIntSym, 4);
      LB_PICK(Kind::kIntSym, 2);
    case Kind::kIntAsym:
      if (t.bits == 8) LB_PICK(Kind::kIntAsym, 8);
      if (t.bits == 4) LB_PICK(Kind::kIntAsym, 4);
      LB_PICK(Kind::kIntAsym, 2);
    case Kind::kSignMag8:
      LB_PICK(Kind::kSignMag8, 4);
    case Kind::kLut16:
      LB_PICK(Kind::kLut16, 4);
    case Kind::kE4M3:
      LB_PICK(Kind::kE4M3, 8);
    case Kind::kPassthrough:
      break;
  }
  return decltype(&F<Kind::kIntSym, false, 8>::Run){nullptr};
#undef LB_PICK
}

template <Kind K, bool S, int Bits>
struct QuantizeOp {
  static void Run(const FormatTraits& t, const float* x, size_t n, float inv, float offset, uint32_t key,
                  uint32_t base, uint8_t* codes) {
    QuantizeT<K, S, Bits>(t, x, n, inv, offset, key, base, codes);
  }
};
template <Kind K, bool S, int Bits>
struct EncodeOp {
  static BlockEncodeResult Run(const FormatTraits& t, const BlockEncodeArgs& args) {
    return EncodeBlocksT<K, S, Bits>(t, args);
  }
};

void Quantize(const FormatTraits& t, const float* x, size_t n, float inv, float offset, bool stochastic,
              uint32_t key, uint32_t base, uint8_t* codes) {
  Dispatch<QuantizeOp>(t, stochastic)(t, x, n, inv, offset, key, base, codes);
}

inline void Put8(float* out, __m256 v, __m256 w, bool add) {
  if (add) {
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), _mm256_mul_ps(w, v)));
  } else {
    _mm256_storeu_ps(out, v);
  }
}

void Dequantize(const FormatTraits& t, const uint8_t* codes, size_t n, float scale, float offset,
                float weight, bool add, float* out) {
  const bool asym = t.kind == Kind::kIntAsym;
  const __m256 vs = _mm256_set1_ps(scale), voff = _mm256_set1_ps(offset), vw = _mm256_set1_ps(weight);
  const __m256 t0 = _mm256_loadu_ps(t.lut), t1 = _mm256_loadu_ps(t.lut + 8);
  const __m256i shifts4 = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i shifts2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 level;
    if (t.bits == 8) {
      const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i)));
      if (t.kind == Kind::kE4M3) {
        // Normal codes: exponent and mantissa move into fp32's fields (bias 7 -> 127); subnormal
        // codes are m * 2^-9. The same values as the table, without a gather.
        const __m256i mag = _mm256_and_si256(c, _mm256_set1_epi32(0x7F));
        const __m256 normal =
            _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(mag, 20), _mm256_set1_epi32(120 << 23)));
        const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(mag), _mm256_set1_ps(1.0f / 512.0f));
        const __m256 is_normal = _mm256_castsi256_ps(_mm256_cmpgt_epi32(mag, _mm256_set1_epi32(7)));
        const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x80)), 24);
        level = _mm256_or_ps(_mm256_blendv_ps(sub, normal, is_normal), _mm256_castsi256_ps(sign));
      } else if (t.kind == Kind::kIntSym) {
        level = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_min_epi32(c, _mm256_set1_epi32(254))),
                              _mm256_set1_ps(t.qmax));
      } else {
        level = _mm256_cvtepi32_ps(c);
      }
    } else if (t.bits == 4) {
      uint32_t w;
      std::memcpy(&w, codes + i / 2, 4);
      const __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w)), shifts4),
                                         _mm256_set1_epi32(15));
      level = Lookup16(t0, t1, c);
    } else {
      uint16_t w;
      std::memcpy(&w, codes + i / 4, 2);
      const __m256i c =
          _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(w), shifts2), _mm256_set1_epi32(3));
      level = _mm256_permutevar8x32_ps(t0, c);
    }
    __m256 v = _mm256_mul_ps(level, vs);
    if (asym) v = _mm256_add_ps(v, voff);
    Put8(out + i, v, vw, add);
  }
  if (i < n) {
    ScalarKernels().dequantize(t, codes + i * static_cast<size_t>(t.bits) / 8, n - i, scale, offset, weight,
                               add, out + i);
  }
}

void ToBf16(const float* x, size_t n, bool stochastic, uint32_t key, uint32_t base, uint16_t* out) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i b = _mm256_castps_si256(_mm256_loadu_ps(x + i));
    __m256i r;
    if (stochastic) {
      const __m256i h = Hash8(key, base + static_cast<uint32_t>(i));
      r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_srli_epi32(h, 16)), 16);
    } else {
      const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7FFF),
                                            _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1)));
      r = _mm256_srli_epi32(_mm256_add_epi32(b, bias), 16);
    }
    Store8x16Bits(out + i, r);
  }
  if (i < n) ScalarKernels().to_bf16(x + i, n - i, stochastic, key, base + static_cast<uint32_t>(i), out + i);
}

void ToFp16(const float* x, size_t n, uint16_t* out) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
  }
  if (i < n) ScalarKernels().to_fp16(x + i, n - i, out + i);
}

void FromBf16(const uint16_t* x, size_t n, float weight, bool add, float* out) {
  const __m256 w = _mm256_set1_ps(weight);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    Put8(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)), w, add);
  }
  if (i < n) ScalarKernels().from_bf16(x + i, n - i, weight, add, out + i);
}

void FromFp16(const uint16_t* x, size_t n, float weight, bool add, float* out) {
  const __m256 w = _mm256_set1_ps(weight);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    Put8(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))), w, add);
  }
  if (i < n) ScalarKernels().from_fp16(x + i, n - i, weight, add, out + i);
}

void AddScaled(const float* x, size_t n, float weight, float* out) {
  const __m256 w = _mm256_set1_ps(weight);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) Put8(out + i, _mm256_loadu_ps(x + i), w, true);
  if (i < n) ScalarKernels().add_scaled(x + i, n - i, weight, out + i);
}

BlockEncodeResult EncodeBlocks(const FormatTraits& t, const BlockEncodeArgs& args) {
  return Dispatch<EncodeOp>(t, args.stochastic)(t, args);
}

}  // namespace

const Kernels& Avx2Kernels() {
  static const Kernels k{Stats,  EncodeBlocks, Quantize, Dequantize, ToBf16,
                         ToFp16, FromBf16,     FromFp16, AddScaled};
  return k;
}

}  // namespace lowband::quant::internal
