// Format tables, names, validation, payload sizes and scale storage.
#include <algorithm>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <array>
#include <limits>
#include <string>

#include "quant/internal.h"

namespace lowband::quant {
namespace internal {
namespace {

// QLoRA's NormalFloat4 levels (quantiles of N(0,1), normalised to [-1, 1]).
constexpr float kNf4Levels[16] = {-1.0f,
                                  -0.6961928009986877f,
                                  -0.5250730514526367f,
                                  -0.39491748809814453f,
                                  -0.28444138169288635f,
                                  -0.18477343022823334f,
                                  -0.09105003625154495f,
                                  0.0f,
                                  0.07958029955625534f,
                                  0.16093020141124725f,
                                  0.24611230194568634f,
                                  0.33791524171829224f,
                                  0.44070982933044434f,
                                  0.5626170039176941f,
                                  0.7229568362236023f,
                                  1.0f};
constexpr float kE2M1Mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
constexpr float kE3M0Mag[8] = {0.0f, 0.25f, 0.5f, 1.0f, 2.0f, 4.0f, 8.0f, 16.0f};

float E4M3Value(int code) {
  const int sign = code >> 7, e = (code >> 3) & 15, m = code & 7;
  float v = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(1.0f + m / 8.0f, e - 7);
  if (e == 15 && m == 7) v = std::numeric_limits<float>::quiet_NaN();
  return sign ? -v : v;
}

FormatTraits Make(Format f, const char* name, int bits, Kind kind) {
  FormatTraits t{};
  t.format = f;
  t.name = name;
  t.bits = bits;
  t.kind = kind;
  const int codes = bits <= 8 ? 1 << bits : 0;
  switch (kind) {
    case Kind::kPassthrough:
      break;
    case Kind::kIntSym:
      t.qmax = static_cast<float>((1 << (bits - 1)) - 1);
      for (int c = 0; c < codes; ++c)
        t.lut[c] = static_cast<float>(std::min(c, 2 * (1 << (bits - 1)) - 2)) - t.qmax;
      break;
    case Kind::kIntAsym:
      t.qmax = static_cast<float>(codes - 1);
      for (int c = 0; c < codes; ++c) t.lut[c] = static_cast<float>(c);
      break;
    case Kind::kSignMag8: {
      const float* mag = f == Format::kFp4E2M1 ? kE2M1Mag : kE3M0Mag;
      std::copy(mag, mag + 8, t.mag);
      t.qmax = mag[7];
      t.num_thresholds = 7;
      for (int i = 0; i < 7; ++i) t.thresholds[i] = (mag[i] + mag[i + 1]) * 0.5f;
      for (int c = 0; c < 16; ++c) t.lut[c] = (c & 8) ? -mag[c & 7] : mag[c & 7];
      break;
    }
    case Kind::kLut16:
      t.qmax = 1.0f;
      t.num_thresholds = 15;
      for (int i = 0; i < 15; ++i) t.thresholds[i] = (kNf4Levels[i] + kNf4Levels[i + 1]) * 0.5f;
      std::copy(kNf4Levels, kNf4Levels + 16, t.lut);
      break;
    case Kind::kE4M3:
      t.qmax = 448.0f;
      for (int c = 0; c < 256; ++c) t.lut[c] = E4M3Value(c);
      break;
  }
  return t;
}

const std::array<FormatTraits, kNumFormats>& AllTraits() {
  static const std::array<FormatTraits, kNumFormats> traits = {
      Make(Format::kFp32, "fp32", 32, Kind::kPassthrough),
      Make(Format::kBf16, "bf16", 16, Kind::kPassthrough),
      Make(Format::kFp16, "fp16", 16, Kind::kPassthrough),
      Make(Format::kInt8Sym, "int8_sym", 8, Kind::kIntSym),
      Make(Format::kInt8Asym, "int8_asym", 8, Kind::kIntAsym),
      Make(Format::kInt4Sym, "int4_sym", 4, Kind::kIntSym),
      Make(Format::kInt4Asym, "int4_asym", 4, Kind::kIntAsym),
      Make(Format::kInt2Sym, "int2_sym", 2, Kind::kIntSym),
      Make(Format::kInt2Asym, "int2_asym", 2, Kind::kIntAsym),
      Make(Format::kFp8E4M3, "fp8_e4m3", 8, Kind::kE4M3),
      Make(Format::kFp4E2M1, "fp4_e2m1", 4, Kind::kSignMag8),
      Make(Format::kFp4E3M0, "fp4_e3m0", 4, Kind::kSignMag8),
      Make(Format::kNf4, "nf4", 4, Kind::kLut16),
  };
  return traits;
}

}  // namespace

const FormatTraits& Traits(Format f) { return AllTraits()[static_cast<size_t>(f)]; }

const Kernels& SelectKernels(Isa isa) {
  static const bool has_avx2 = CpuHasAvx2();
  if (isa == Isa::kScalar || !has_avx2) return ScalarKernels();
  return Avx2Kernels();
}

}  // namespace internal

using internal::Traits;

std::string_view FormatName(Format f) {
  if (static_cast<int>(f) >= kNumFormats) return "unknown";
  return Traits(f).name;
}

StatusOr<Format> ParseFormat(std::string_view name) {
  if (name == "fp4") return Format::kFp4E3M0;
  if (name == "int8") return Format::kInt8Sym;
  if (name == "int4") return Format::kInt4Sym;
  if (name == "fp8") return Format::kFp8E4M3;
  std::string all;
  for (int i = 0; i < kNumFormats; ++i) {
    const auto f = static_cast<Format>(i);
    if (name == Traits(f).name) return f;
    all += (i ? ", " : "");
    all += Traits(f).name;
  }
  return InvalidArgument("unknown codec format '" + std::string(name) + "'; expected one of: " + all +
                         " (or the aliases fp4 = fp4_e3m0, fp8, int8, int4)");
}

std::string_view ScaleTypeName(ScaleType s) {
  switch (s) {
    case ScaleType::kFp32:
      return "fp32";
    case ScaleType::kFp16:
      return "fp16";
    case ScaleType::kBf16:
      return "bf16";
    case ScaleType::kPow2:
      return "pow2";
  }
  return "unknown";
}

StatusOr<ScaleType> ParseScaleType(std::string_view name) {
  for (ScaleType s : {ScaleType::kFp32, ScaleType::kFp16, ScaleType::kBf16, ScaleType::kPow2}) {
    if (name == ScaleTypeName(s)) return s;
  }
  return InvalidArgument("unknown scale type '" + std::string(name) + "'; expected fp32, fp16, bf16 or pow2");
}

int BitsPerCode(Format f) { return Traits(f).bits; }
bool IsBlockwise(Format f) { return Traits(f).kind != internal::Kind::kPassthrough; }

Status Validate(const CodecSpec& spec) {
  if (static_cast<int>(spec.format) >= kNumFormats) {
    return InvalidArgument("unknown codec format code " + std::to_string(static_cast<int>(spec.format)));
  }
  if (static_cast<int>(spec.scale_type) > static_cast<int>(ScaleType::kPow2)) {
    return InvalidArgument("unknown scale type code " + std::to_string(static_cast<int>(spec.scale_type)));
  }
  const auto& t = Traits(spec.format);
  if (IsBlockwise(spec.format)) {
    if (spec.block_size < 32 || spec.block_size > 4096 || spec.block_size % 8 != 0) {
      return InvalidArgument("block size " + std::to_string(spec.block_size) +
                             " is not allowed: use a multiple of 8 from 32 to 4096 (default 64)");
    }
    if (t.kind == internal::Kind::kIntAsym && spec.scale_type == ScaleType::kPow2) {
      return InvalidArgument(std::string(t.name) +
                             " stores a block minimum, which a power-of-two scale cannot hold; "
                             "use scale fp16, bf16 or fp32");
    }
  } else if (spec.rounding == Rounding::kStochastic && spec.format != Format::kBf16) {
    return InvalidArgument(
        std::string("stochastic rounding is available for bf16 and the blockwise formats, not ") + t.name +
        "; use rounding nearest");
  }
  return Status::Ok();
}

uint64_t ParamBytes(const CodecSpec& spec, uint64_t n) {
  if (!IsBlockwise(spec.format)) return 0;
  const uint64_t blocks = (n + spec.block_size - 1) / spec.block_size;
  const uint64_t params = Traits(spec.format).kind == internal::Kind::kIntAsym ? 2 : 1;
  return blocks * params * static_cast<uint64_t>(internal::ScaleBytes(spec.scale_type));
}

uint64_t CodeBytes(const CodecSpec& spec, uint64_t n) {
  return (n * static_cast<uint64_t>(Traits(spec.format).bits) + 7) / 8;
}

uint64_t EncodedSize(const CodecSpec& spec, uint64_t n) {
  return kHeaderBytes + ParamBytes(spec, n) + CodeBytes(spec, n);
}

double BitsPerValue(const CodecSpec& spec, uint64_t n) {
  if (n == 0) return 0.0;
  return 8.0 * static_cast<double>(EncodedSize(spec, n)) / static_cast<double>(n);
}

bool CpuHasAvx2() {
#if defined(__x86_64__)
  static const bool has = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    const bool f16c = c & (1u << 29), osxsave = c & (1u << 27), avx = c & (1u << 28);
    if (!(f16c && osxsave && avx)) return false;
    unsigned xcr0_lo, xcr0_hi;
    __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & 6u) != 6u) return false;  // the OS saves XMM and YMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    return (b & (1u << 5)) && (b & (1u << 8));  // AVX2, BMI2
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace lowband::quant
