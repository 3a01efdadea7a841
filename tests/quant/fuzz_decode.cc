// libFuzzer target for quant's decoders. Four modes, chosen by the low two bits of the first byte:
//  - raw (0): the rest is a payload. Inspect / Decode / DecodeAdd must return a Status, never crash
//    or read out of bounds, and DecodeAdd must leave the accumulator untouched when it refuses.
//  - structured (1): the rest picks a codec spec and values; encode on both paths (bytes must
//    match), decode (must succeed, scalar == SIMD, finite), then corrupt one byte (must be refused).
//  - AMAQ raw (2): the rest is an AMAQ payload; InspectAmaq / AmaqDecoder / DecodeAmaq must return a
//    Status, decode what Inspect fully accepted, and leave the output untouched when they refuse.
//  - AMAQ structured (3): the rest picks a shape, bit widths, rounding and values; encode (with and
//    without the bit map), decode within each channel's bound, then corrupt one byte (refused).
//   cmake -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
//         -DLOWBAND_FUZZ=ON -DLOWBAND_SANITIZE=address -DLOWBAND_WITH_TORCH=OFF
//   ninja -C build-fuzz fuzz_quant_decode && ./build-fuzz/tests/quant/fuzz_quant_decode -max_total_time=600
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "quant/amaq.h"
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
  if (!x.empty()) std::memcpy(x.data(), data, x.size() * 4);  // memcpy(nullptr, ..., 0) is UB
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

void AmaqRaw(std::span<const uint8_t> payload) {
  auto info = InspectAmaq(payload);
  const bool sized = info.ok() && uint64_t{info->rows} * info->channels <= (1u << 20);
  std::vector<float> out(sized ? size_t{info->rows} * info->channels : 16, 7.0f);
  AmaqDecoder dec;
  const lowband::Status s = dec.Decode(payload, out);
  if (!info.ok() || (!info->has_bitmap && !info->passthrough)) {
    Require(!s.ok());  // refused, or a map-less payload that a fresh decoder cannot know
    for (float v : out) Require(v == 7.0f);
    if (!info.ok() || !sized) return;
    // Try the stateless decode with a map of the payload's epoch built from its first bytes.
    AmaqBitmap known{info->epoch, std::vector<uint8_t>(info->channels)};
    for (size_t c = 0; c < known.bits.size(); ++c) known.bits[c] = 2 + payload[c % payload.size()] % 7;
    if (DecodeAmaq(payload, known, out).ok()) {
      for (float v : out) Require(std::isfinite(v));
    } else {
      for (float v : out) Require(v == 7.0f);
    }
    return;
  }
  if (!sized) return;
  Require(s.ok());
  for (float v : out) Require(std::isfinite(v));
}

void AmaqStructured(const uint8_t* data, size_t size) {
  if (size < 6) return;
  const uint32_t rows = 1 + data[0] % 64, channels = 1 + data[1] % 32;
  AmaqOptions opt;
  opt.rounding = (data[2] & 1) ? Rounding::kStochastic : Rounding::kNearest;
  opt.passthrough = (data[2] & 6) == 6;
  opt.seed = data[3];
  const size_t corrupt_at = data[4] | (data[5] << 8);
  data += 6;
  size -= 6;
  if (size < channels) return;
  std::vector<uint8_t> bits(channels);
  for (uint32_t c = 0; c < channels; ++c) bits[c] = 2 + data[c] % 7;
  data += channels;
  size -= channels;
  std::vector<float> x(size_t{rows} * channels, 0.0f);
  std::memcpy(x.data(), data, std::min(size, x.size() * 4));
  AmaqEncoder enc;
  std::vector<uint8_t> with_map, without_map;
  if (!enc.Encode(x, rows, channels, bits, opt, &with_map).ok()) return;  // NaN/Inf, or a range beyond fp32
  Require(enc.Encode(x, rows, channels, bits, opt, &without_map).ok());
  // Error bound per channel: one step (stochastic rounding; nearest is within half of it) plus fp32
  // slack of a few ulps of the channel's magnitude; 0 for passthrough.
  std::vector<float> bound(channels, 0.0f);
  if (!opt.passthrough) {
    auto half_steps = AmaqNearestErrorBounds(x, rows, channels, bits);
    Require(half_steps.ok());
    for (size_t i = 0; i < x.size(); ++i)
      bound[i % channels] = std::max(bound[i % channels], std::fabs(x[i]));
    for (uint32_t c = 0; c < channels; ++c) bound[c] = 2 * (*half_steps)[c] + 2e-6f * bound[c];
  }
  AmaqDecoder dec;
  std::vector<float> out(x.size());
  for (const auto* p : {&with_map, &without_map}) {
    Require(dec.Decode(*p, out).ok());
    for (size_t i = 0; i < x.size(); ++i) {
      Require(std::isfinite(out[i]));
      Require(std::fabs(x[i] - out[i]) <= bound[i % channels]);
    }
  }
  auto bad = without_map;
  bad[corrupt_at % bad.size()] ^= 0x5A;
  std::vector<float> untouched(x.size(), 7.0f);
  AmaqDecoder copy = dec;
  Require(!copy.Decode(bad, untouched).ok());
  for (float v : untouched) Require(v == 7.0f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  switch (data[0] & 3) {
    case 0:
      Raw({data + 1, size - 1});
      break;
    case 1:
      Structured(data + 1, size - 1);
      break;
    case 2:
      AmaqRaw({data + 1, size - 1});
      break;
    default:
      AmaqStructured(data + 1, size - 1);
      break;
  }
  return 0;
}
