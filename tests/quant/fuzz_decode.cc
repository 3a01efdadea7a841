// libFuzzer target for quant's decoders. Two modes, chosen by the first input byte:
//  - raw: the rest is a payload. Inspect / Decode / DecodeAdd must return a Status, never crash or
//    read out of bounds, and DecodeAdd must leave the accumulator untouched when it refuses.
//  - structured: the rest picks a codec spec and values; encode on both paths (bytes must match),
//    decode (must succeed, scalar == SIMD, finite), then corrupt one byte (must be refused).
//   cmake -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
//         -DLOWBAND_FUZZ=ON -DLOWBAND_SANITIZE=address -DLOWBAND_WITH_TORCH=OFF
//   ninja -C build-fuzz fuzz_quant_decode && ./build-fuzz/tests/quant/fuzz_quant_decode -max_total_time=600
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "quant/codec.h"

namespace {

using namespace lowband::quant;

void Require(bool ok) {
  if (!ok) std::abort();
}

void Raw(std::span<const uint8_t> payload) {
  auto info = Inspect(payload);
  if (!info.ok()) {
    std::vector<float> acc(16, 1.0f);
    Require(!DecodeAdd(payload, 0.5f, acc).ok());
    for (float v : acc) Require(v == 1.0f);
    return;
  }
  if (info->element_count > (1u << 20)) return;
  std::vector<float> a(info->element_count), b(info->element_count);
  Require(DecodeInto(payload, a, Isa::kScalar).ok());
  Require(DecodeInto(payload, b).ok());
  Require(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
  for (float v : a) Require(std::isfinite(v));
}

void Structured(const uint8_t* data, size_t size) {
  if (size < 6) return;
  CodecSpec spec;
  spec.format = static_cast<Format>(data[0] % kNumFormats);
  spec.scale_type = static_cast<ScaleType>(data[1] % 4);
  spec.block_size = 32 + 8 * (data[2] % 60);
  spec.rounding = (data[3] & 1) ? Rounding::kStochastic : Rounding::kNearest;
  spec.seed = data[3];
  const size_t corrupt_at = data[4] | (data[5] << 8);
  data += 6;
  size -= 6;
  if (!Validate(spec).ok()) return;
  std::vector<float> x(size / 4);
  std::memcpy(x.data(), data, x.size() * 4);
  spec.isa = Isa::kScalar;
  auto p = Encode(spec, x);
  spec.isa = Isa::kAuto;
  auto q = Encode(spec, x);
  Require(p.ok() == q.ok());
  if (!p.ok()) return;  // NaN/Inf input, or a scale out of the scale type's range
  Require(*p == *q);
  std::vector<float> out(x.size());
  Require(DecodeInto(*p, out).ok());
  for (float v : out) Require(std::isfinite(v));
  auto bad = *p;
  bad[corrupt_at % bad.size()] ^= 0x5A;
  Require(!Inspect(bad).ok());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] & 1) {
    Structured(data + 1, size - 1);
  } else {
    Raw({data + 1, size - 1});
  }
  return 0;
}
