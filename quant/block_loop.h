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
    float offset = 0.0f, raw, scale;
    if (asym) {
      mn += 0.0f;  // -0 and +0 must store the same bytes on every path
      mx += 0.0f;
      if (!RoundOffsetDown(a.scale_type, mn, &offset, params + sb)) {
        return {static_cast<int64_t>(b), BlockEncodeResult::kOffsetRange, mn};
      }
      raw = (mx - offset) / t.qmax;
    } else {
      raw = absmax / t.qmax;
    }
    raw = ClampScale(raw);
    if (!std::isfinite(raw) || !RoundScaleUp(a.scale_type, raw, &scale, params) ||
        !std::isfinite(t.qmax * scale + offset)) {  // the top level must decode to a finite value
      return {static_cast<int64_t>(b), BlockEncodeResult::kScaleRange, raw};
    }
    params += per * sb;
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    quantize(x, len, inv, offset, static_cast<uint32_t>(a.first_index + start), a.codes + start * t.bits / 8);
  }
  return {};
}

}  // namespace lowband::quant::internal
