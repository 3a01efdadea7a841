// The blockwise encode loop, shared by the scalar and AVX2 kernels so that both compute block
// parameters identically; each kernel instantiates it with its own inlined Stats and Quantize, so
// the per-block work (statistics, scale, codes) runs without indirect calls.
#pragma once

#include <algorithm>
#include <cmath>

#include "quant/internal.h"

namespace lowband::quant::internal {

// Stats(x, n, sym, &absmax, &mn, &mx) -> finite; Quantize(x, n, inv, offset, base, codes). Both are
// template parameters so that each kernel's instantiation inlines them into one loop.
template <typename StatsFn, typename QuantizeFn>
BlockEncodeResult EncodeBlocksLoop(const FormatTraits& t, const BlockEncodeArgs& a, StatsFn&& stats,
                                   QuantizeFn&& quantize) {
  const uint64_t bs = a.block_size;
  const uint64_t blocks = (a.n + bs - 1) / bs;
  const int sb = ScaleBytes(a.scale_type);
  const bool asym = t.kind == Kind::kIntAsym;
  const uint64_t per = asym ? 2 : 1;
  uint8_t* params = a.params;
  for (uint64_t b = 0; b < blocks; ++b) {
    const uint64_t start = b * bs;
    const size_t len = static_cast<size_t>(std::min(bs, a.n - start));
    const float* x = a.x + start;
    float absmax, mn, mx;
    if (!stats(x, len, !asym, &absmax, &mn, &mx))
      return {static_cast<int64_t>(b), BlockEncodeResult::kNonFinite, 0};
    const BlockParams bp = ComputeBlockParams(t, a.scale_type, absmax, mn, mx, params);
    if (bp.error != BlockEncodeResult::kNone) return {static_cast<int64_t>(b), bp.error, bp.value};
    params += per * sb;
    quantize(x, len, bp.inv, bp.offset, static_cast<uint32_t>(a.first_index + start),
             a.codes + start * t.bits / 8);
  }
  return {};
}

}  // namespace lowband::quant::internal
