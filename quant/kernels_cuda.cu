// CUDA kernels of the blockwise codecs. They run the same per-block and per-value arithmetic as the
// CPU kernels (ComputeBlockParams, QuantizeOne, DequantizeOne in internal.h), compiled with
// -fmad=false, so the bytes and floats are identical to the CPU reference's.
//
// Work split: a thread owns a "chunk" of V consecutive values (V = 16: four 16-byte loads, and 4, 8
// or 16 bytes of codes written in one store). Block sizes of 32 to 512 values (powers of two) map a
// quantization block to 2 to 32 adjacent lanes of a warp, which reduce the block's statistics with
// shuffles; any other block size uses one warp per block, looping over chunks of V = 8. The kernels
// are instantiated per (bits, kind), so each format's inner loop has no branch on the format. The
// statistics track the largest |x| as integer bits (non-negative floats order like their bits),
// which also finds NaN and Inf in the same instruction.
#include <cuda_runtime.h>

#include <string>

#include "quant/cuda.h"
#include "quant/internal.h"

namespace lowband::quant::cuda {
namespace {

using internal::BlockParams;
using internal::FormatTraits;
using internal::Kind;

constexpr int kThreads = 256;

struct EncodeArgs {
  const float* __restrict__ x;
  uint64_t n;
  uint32_t block_size;
  ScaleType scale_type;
  bool stochastic;
  uint32_t key;
  uint8_t* __restrict__ params;
  uint8_t* __restrict__ codes;
  int* error;
  bool aligned;  // x is 16-byte aligned: chunks load as float4
};

// Loads chunk c (values cV .. cV+V-1, those below n) into v; returns how many are valid.
template <int V>
__device__ __forceinline__ int LoadChunk(const EncodeArgs& a, uint64_t c, float (&v)[V]) {
  const uint64_t first = c * V;
  const uint64_t left = first < a.n ? a.n - first : 0;
  if (left >= V && a.aligned) {
    const float4* p = reinterpret_cast<const float4*>(a.x + first);
#pragma unroll
    for (int q = 0; q < V / 4; ++q) {
      const float4 f = __ldg(p + q);
      v[4 * q] = f.x, v[4 * q + 1] = f.y, v[4 * q + 2] = f.z, v[4 * q + 3] = f.w;
    }
    return V;
  }
  const int valid = left >= V ? V : static_cast<int>(left);
#pragma unroll
  for (int k = 0; k < V; ++k) v[k] = k < valid ? __ldg(a.x + first + k) : 0.0f;
  return valid;
}

// Block statistics: the largest |x| as bits (>= 0x7F800000: a NaN or Inf), and for the asymmetric
// formats the minimum and maximum.
struct Stats {
  uint32_t absbits = 0;
  float mn = internal::BitsFloat(0x7F800000u);  // +inf: neutral for min
  float mx = internal::BitsFloat(0xFF800000u);  // -inf: neutral for max
};

template <Kind K, int V>
__device__ __forceinline__ void Accumulate(const float (&v)[V], int valid, Stats* s) {
#pragma unroll
  for (int k = 0; k < V; ++k) {
    if (k < valid) {
      s->absbits = max(s->absbits, internal::FloatBits(v[k]) & 0x7FFFFFFFu);
      if constexpr (K == Kind::kIntAsym) {
        s->mn = internal::Min(s->mn, v[k]);
        s->mx = internal::Max(s->mx, v[k]);
      }
    }
  }
}

// Combines the statistics of groups of `width` adjacent lanes (every lane of the warp takes part).
template <Kind K>
__device__ __forceinline__ void Reduce(int width, Stats* s) {
  for (int o = width / 2; o > 0; o /= 2) {
    s->absbits = max(s->absbits, __shfl_xor_sync(0xFFFFFFFFu, s->absbits, o));
    if constexpr (K == Kind::kIntAsym) {
      s->mn = internal::Min(s->mn, __shfl_xor_sync(0xFFFFFFFFu, s->mn, o));
      s->mx = internal::Max(s->mx, __shfl_xor_sync(0xFFFFFFFFu, s->mx, o));
    }
  }
}

// Block parameters from the reduced statistics; `store`: this lane writes them. Returns false (and
// raises the error flag) when the block cannot be encoded.
__device__ __forceinline__ bool BlockParamsFor(const FormatTraits& t, const EncodeArgs& a, uint64_t block,
                                               const Stats& s, bool store, BlockParams* bp) {
  if (s.absbits >= 0x7F800000u) {
    atomicOr(a.error, 1);
    return false;
  }
  uint8_t p[8];
  *bp = internal::ComputeBlockParams(t, a.scale_type, internal::BitsFloat(s.absbits), s.mn, s.mx, p);
  if (bp->error != internal::BlockEncodeResult::kNone) {
    atomicOr(a.error, 1);
    return false;
  }
  if (store) {
    const int bytes = (t.kind == Kind::kIntAsym ? 2 : 1) * internal::ScaleBytes(a.scale_type);
    uint8_t* dst = a.params + block * static_cast<uint64_t>(bytes);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (i < bytes) dst[i] = p[i];
    }
  }
  return true;
}

// Quantizes chunk c and writes its codes (V * Bits / 8 bytes, one store when the chunk is whole).
template <int Bits, Kind K, int V>
__device__ __forceinline__ void StoreCodes(const FormatTraits& t, const EncodeArgs& a, uint64_t c,
                                           const float (&v)[V], int valid, const BlockParams& bp) {
  constexpr int kWords = (V * Bits + 31) / 32;
  uint32_t w[kWords];
#pragma unroll
  for (int i = 0; i < kWords; ++i) w[i] = 0;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    if (k < valid) {
      const uint32_t code = internal::QuantizeAs<K>(t, v[k], bp.inv, bp.offset, a.stochastic, a.key,
                                                    static_cast<uint32_t>(c * V + k));
      w[k * Bits / 32] |= code << ((k * Bits) % 32);
    }
  }
  constexpr int kBytes = V * Bits / 8;
  uint8_t* out = a.codes + c * kBytes;
  if (valid == V) {
    if constexpr (kBytes == 16) {
      *reinterpret_cast<uint4*>(out) = make_uint4(w[0], w[1], w[2], w[3]);
    } else if constexpr (kBytes == 8) {
      *reinterpret_cast<uint2*>(out) = make_uint2(w[0], w[1]);
    } else if constexpr (kBytes == 4) {
      *reinterpret_cast<uint32_t*>(out) = w[0];
    } else {
      *reinterpret_cast<uint16_t*>(out) = static_cast<uint16_t>(w[0]);
    }
    return;
  }
  const int bytes = (valid * Bits + 7) / 8;
#pragma unroll
  for (int i = 0; i < kBytes; ++i) {
    if (i < bytes) out[i] = static_cast<uint8_t>(w[i / 4] >> (8 * (i % 4)));
  }
}

// `lanes` (a power of two, 2..32) lanes of 16 values per quantization block.
template <int Bits, Kind K>
__global__ void __launch_bounds__(kThreads)
    EncodeGrouped(const FormatTraits t, const EncodeArgs a, int lanes) {
  constexpr int V = 16;
  const uint64_t c = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x;
  const uint64_t block = c / static_cast<uint64_t>(lanes);
  const bool in_range = block < (a.n + a.block_size - 1) / a.block_size;
  float v[V];
  const int valid = in_range ? LoadChunk<V>(a, c, v) : 0;
  Stats s;
  Accumulate<K, V>(v, valid, &s);
  Reduce<K>(lanes, &s);  // the whole warp, out-of-range lanes included, shuffles
  if (!in_range) return;
  BlockParams bp;
  if (!BlockParamsFor(t, a, block, s, c % static_cast<uint64_t>(lanes) == 0, &bp)) return;
  if (valid > 0) StoreCodes<Bits, K, V>(t, a, c, v, valid, bp);
}

// One warp per quantization block (chunks of 8), for block sizes the grouped kernel does not take.
template <int Bits, Kind K>
__global__ void __launch_bounds__(kThreads) EncodeWarp(const FormatTraits t, const EncodeArgs a) {
  constexpr int V = 8;
  const uint64_t block = (blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x) / 32;
  if (block >= (a.n + a.block_size - 1) / a.block_size) return;  // whole warps leave together
  const int lane = static_cast<int>(threadIdx.x & 31);
  const uint64_t first = block * a.block_size / V;
  const uint64_t end = (block + 1) * a.block_size < a.n ? (block + 1) * a.block_size : a.n;
  const uint64_t chunks = (end - block * a.block_size + V - 1) / V;
  Stats s;
  float v[V];
  for (uint64_t j = lane; j < chunks; j += 32) Accumulate<K, V>(v, LoadChunk<V>(a, first + j, v), &s);
  Reduce<K>(32, &s);
  BlockParams bp;
  if (!BlockParamsFor(t, a, block, s, lane == 0, &bp)) return;
  for (uint64_t j = lane; j < chunks; j += 32) {
    const int valid = LoadChunk<V>(a, first + j, v);
    StoreCodes<Bits, K, V>(t, a, first + j, v, valid, bp);
  }
}

struct DecodeArgs {
  const uint8_t* __restrict__ params;
  const uint8_t* __restrict__ codes;
  uint64_t n;
  uint32_t block_size;
  ScaleType scale_type;
  bool asym;
  float* out;
  float weight;
  bool add;
  bool aligned;  // out is 16-byte aligned
};

// A warp decodes 32 x 4 x R consecutive values: in round r, lane l takes the 4 values at
// 4 (32 r + l), so that every load and store of the warp is one contiguous, coalesced range.
constexpr int kDecodeRounds = 4;

template <int Bits>
__global__ void __launch_bounds__(kThreads)
    DecodeQuads(const FormatTraits t, const DecodeArgs a, int block_shift) {
  __shared__ float lut[1 << Bits];
  for (int i = static_cast<int>(threadIdx.x); i < (1 << Bits); i += blockDim.x) lut[i] = t.lut[i];
  __syncthreads();
  const uint64_t thread = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x;
  const uint64_t warp_first = (thread / 32) * (32 * 4 * kDecodeRounds);
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int sb = internal::ScaleBytes(a.scale_type);
  const int param_bytes = (a.asym ? 2 : 1) * sb;
#pragma unroll
  for (int r = 0; r < kDecodeRounds; ++r) {
    const uint64_t first = warp_first + 4 * (32 * static_cast<uint64_t>(r) + lane);
    if (first >= a.n) break;
    const uint64_t block = block_shift >= 0 ? first >> block_shift : first / a.block_size;
    const uint8_t* p = a.params + block * static_cast<uint64_t>(param_bytes);
    const float scale = internal::LoadScale(a.scale_type, p);
    const float offset = a.asym ? internal::LoadScale(a.scale_type, p + sb) : 0.0f;
    const int valid = a.n - first >= 4 ? 4 : static_cast<int>(a.n - first);
    // The 4 codes: Bits * 4 bits from bit offset first * Bits (a whole number of bytes for 4 and 8
    // bits; for 2 bits one byte).
    const uint8_t* in = a.codes + first * Bits / 8;
    uint32_t w;
    if (valid == 4) {
      if constexpr (Bits == 8) {
        w = *reinterpret_cast<const uint32_t*>(in);
      } else if constexpr (Bits == 4) {
        w = *reinterpret_cast<const uint16_t*>(in);
      } else {
        w = *in;
      }
    } else {
      w = 0;
      const int bytes = (valid * Bits + 7) / 8;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (i < bytes) w |= static_cast<uint32_t>(in[i]) << (8 * i);
      }
    }
    float v[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      v[k] = internal::DequantizeOne(lut, a.asym, (w >> (Bits * k)) & ((1u << Bits) - 1u), scale, offset);
    }
    float* out = a.out + first;
    if (valid == 4 && a.aligned) {
      float4 f = make_float4(v[0], v[1], v[2], v[3]);
      if (a.add) {
        const float4 prev = *reinterpret_cast<const float4*>(out);
        f = make_float4(prev.x + a.weight * f.x, prev.y + a.weight * f.y, prev.z + a.weight * f.z,
                        prev.w + a.weight * f.w);
      }
      *reinterpret_cast<float4*>(out) = f;
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (k < valid) out[k] = a.add ? out[k] + a.weight * v[k] : v[k];
      }
    }
  }
}

Status LaunchError(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status::Ok();
  return Internal(std::string(what) + " kernel failed to launch: " + cudaGetErrorString(e));
}

uint64_t Grid(uint64_t threads) { return (threads + kThreads - 1) / kThreads; }

template <int Bits, Kind K>
void LaunchEncodeAs(const FormatTraits& t, const EncodeArgs& a, cudaStream_t s) {
  const uint64_t blocks = (a.n + a.block_size - 1) / a.block_size;
  const uint32_t bs = a.block_size;
  if (bs >= 32 && bs <= 512 && (bs & (bs - 1)) == 0) {
    const int lanes = static_cast<int>(bs / 16);
    EncodeGrouped<Bits, K><<<Grid(blocks * lanes), kThreads, 0, s>>>(t, a, lanes);
  } else {
    EncodeWarp<Bits, K><<<Grid(blocks * 32), kThreads, 0, s>>>(t, a);
  }
}

}  // namespace

Status LaunchEncodeKernel(const CodecSpec& spec, const float* x, uint64_t n, uint8_t* params, uint8_t* codes,
                          int* error, void* stream) {
  const FormatTraits& t = internal::Traits(spec.format);
  const EncodeArgs a{x,
                     n,
                     spec.block_size,
                     spec.scale_type,
                     spec.rounding == Rounding::kStochastic,
                     internal::SeedKey(spec.seed),
                     params,
                     codes,
                     error,
                     reinterpret_cast<uintptr_t>(x) % 16 == 0};
  const auto s = static_cast<cudaStream_t>(stream);
  switch (spec.format) {
    case Format::kInt8Sym:
      LaunchEncodeAs<8, Kind::kIntSym>(t, a, s);
      break;
    case Format::kInt8Asym:
      LaunchEncodeAs<8, Kind::kIntAsym>(t, a, s);
      break;
    case Format::kInt4Sym:
      LaunchEncodeAs<4, Kind::kIntSym>(t, a, s);
      break;
    case Format::kInt4Asym:
      LaunchEncodeAs<4, Kind::kIntAsym>(t, a, s);
      break;
    case Format::kInt2Sym:
      LaunchEncodeAs<2, Kind::kIntSym>(t, a, s);
      break;
    case Format::kInt2Asym:
      LaunchEncodeAs<2, Kind::kIntAsym>(t, a, s);
      break;
    case Format::kFp8E4M3:
      LaunchEncodeAs<8, Kind::kE4M3>(t, a, s);
      break;
    case Format::kFp4E2M1:
    case Format::kFp4E3M0:
      LaunchEncodeAs<4, Kind::kSignMag8>(t, a, s);
      break;
    case Format::kNf4:
      LaunchEncodeAs<4, Kind::kLut16>(t, a, s);
      break;
    default:
      return InvalidArgument(std::string(FormatName(spec.format)) + " has no CUDA encoder");
  }
  return LaunchError("encode");
}

Status LaunchDecodeKernel(Format format, ScaleType scale_type, uint32_t block_size, const uint8_t* params,
                          const uint8_t* codes, uint64_t n, float* out, float weight, bool add,
                          void* stream) {
  const FormatTraits& t = internal::Traits(format);
  const DecodeArgs a{params,     codes,
                     n,          block_size,
                     scale_type, t.kind == Kind::kIntAsym,
                     out,        weight,
                     add,        reinterpret_cast<uintptr_t>(out) % 16 == 0};
  const auto s = static_cast<cudaStream_t>(stream);
  const int block_shift = (block_size & (block_size - 1)) == 0 ? __builtin_ctz(block_size) : -1;
  const uint64_t grid = Grid((n + 4 * kDecodeRounds - 1) / (4 * kDecodeRounds));
  switch (t.bits) {
    case 8:
      DecodeQuads<8><<<grid, kThreads, 0, s>>>(t, a, block_shift);
      break;
    case 4:
      DecodeQuads<4><<<grid, kThreads, 0, s>>>(t, a, block_shift);
      break;
    default:
      DecodeQuads<2><<<grid, kThreads, 0, s>>>(t, a, block_shift);
      break;
  }
  return LaunchError("decode");
}

}  // namespace lowband::quant::cuda
