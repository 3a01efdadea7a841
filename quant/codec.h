// quant: lossy codecs for float vectors, on plain spans (no LibTorch, no I/O, no global state).
//
// A codec turns n fp32 values into a self-describing payload and back. Formats are fp32/bf16/fp16
// passthrough and blockwise formats: each block of `block_size` values is scaled by one block scale
// (two parameters, scale and minimum, for the asymmetric integer formats) and every value becomes a
// 2-, 4- or 8-bit code. The payload layout is documented in docs/payload.md and in payload.h.
//
// Encode validates its input (NaN/Inf is an error naming the first bad index). Decode validates the
// whole payload (magic, version, format, sizes, CRC32C) before writing a single output value and
// returns a Status that says what is wrong. DecodeAdd dequantizes and accumulates (acc += w * x) in
// one pass, for streaming aggregation without a temporary buffer.
//
// Every function picks an AVX2 kernel at run time when the CPU has AVX2+F16C (Isa::kAuto); the
// scalar reference and the AVX2 kernels produce identical payload bytes and identical decoded
// floats (the library is compiled without FMA contraction and the kernels use the same operations
// in the same order).
//
// Thread safety: all functions are stateless and safe to call from any thread concurrently.
// Lifetimes: nothing is retained; spans only need to live for the call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "quant/status.h"

namespace lowband::quant {

// Wire values: never renumber.
enum class Format : uint8_t {
  kFp32 = 0,      // passthrough, 32 bits
  kBf16 = 1,      // passthrough, round to nearest even (or stochastic)
  kFp16 = 2,      // passthrough, round to nearest even; |x| > 65504 is an error
  kInt8Sym = 3,   // blockwise absmax, codes -127..127
  kInt8Asym = 4,  // blockwise min/max, codes 0..255
  kInt4Sym = 5,   // codes -7..7
  kInt4Asym = 6,  // codes 0..15
  kInt2Sym = 7,   // codes -1..1
  kInt2Asym = 8,  // codes 0..3
  kFp8E4M3 = 9,   // OCP E4M3 (max 448, no infinities), block-scaled
  kFp4E2M1 = 10,  // OCP E2M1 grid {0, .5, 1, 1.5, 2, 3, 4, 6}, block-scaled
  kFp4E3M0 = 11,  // sign + 3 exponent bits, grid {0, 1/4, 1/2, 1, 2, 4, 8, 16}: Streaming DiLoCo's FP4
  kNf4 = 12,      // QLoRA's NormalFloat4 levels on [-1, 1], absmax-scaled
};
inline constexpr int kNumFormats = 13;

// How block scales are stored. Wire values: never renumber.
enum class ScaleType : uint8_t {
  kFp32 = 0,
  kFp16 = 1,  // 16 bits; a scale beyond fp16's range is an encode error naming the block
  kBf16 = 2,  // 16 bits with fp32's range: the default, never fails on finite input
  kPow2 = 3,  // 8-bit biased power-of-two exponent (like the MX formats' E8M0)
};

enum class Rounding : uint8_t { kNearest = 0, kStochastic = 1 };

// Which kernels run. kAuto picks AVX2 when the CPU supports it.
enum class Isa : uint8_t { kAuto = 0, kScalar = 1, kAvx2 = 2 };

struct CodecSpec {
  Format format = Format::kFp4E3M0;
  // Values per block, 32..4096 (ignored by passthrough formats).
  uint32_t block_size = 64;
  // Block scales are rounded *up* to the stored type, so no value is clipped.
  ScaleType scale_type = ScaleType::kBf16;
  Rounding rounding = Rounding::kNearest;
  // Stochastic rounding draws u(i) = hash(seed, i) for value i: the same seed gives the same bytes
  // on every path and thread; use a fresh seed per message (e.g. mix worker, fragment, round).
  uint64_t seed = 0;
  Isa isa = Isa::kAuto;
};

// What a payload header says (see Inspect).
struct PayloadInfo {
  Format format = Format::kFp32;
  int bits = 32;
  ScaleType scale_type = ScaleType::kBf16;
  uint32_t block_size = 0;
  uint64_t element_count = 0;
  uint64_t payload_bytes = 0;  // header + body
};

inline constexpr size_t kHeaderBytes = 32;

// --- Formats ---------------------------------------------------------------------------------
std::string_view FormatName(Format f);                // "fp4_e3m0"
StatusOr<Format> ParseFormat(std::string_view name);  // accepts FormatName's spelling and "fp4" = e3m0
std::string_view ScaleTypeName(ScaleType s);
StatusOr<ScaleType> ParseScaleType(std::string_view name);
int BitsPerCode(Format f);  // 32, 16, 8, 4 or 2
bool IsBlockwise(Format f);
// Checks the spec's block size and combination; names the bad field.
Status Validate(const CodecSpec& spec);
// True when this CPU can run the AVX2 kernels.
bool CpuHasAvx2();

// --- Sizes -----------------------------------------------------------------------------------
// Exact payload size (header included) for n values: kHeaderBytes + ParamBytes + CodeBytes.
uint64_t EncodedSize(const CodecSpec& spec, uint64_t n);
// The body's two areas: every block's scale (and minimum) parameters, 0 for passthrough formats;
// then the packed codes (or passthrough values).
uint64_t ParamBytes(const CodecSpec& spec, uint64_t n);
uint64_t CodeBytes(const CodecSpec& spec, uint64_t n);
// Bits sent per value, header and scales included.
double BitsPerValue(const CodecSpec& spec, uint64_t n);

// --- Encode ----------------------------------------------------------------------------------
// Writes exactly EncodedSize(spec, in.size()) bytes into `out` (which must be at least that big).
Status EncodeInto(const CodecSpec& spec, std::span<const float> in, std::span<uint8_t> out);
StatusOr<std::vector<uint8_t>> Encode(const CodecSpec& spec, std::span<const float> in);

// --- Decode ----------------------------------------------------------------------------------
// Validates header, sizes and checksum without decoding.
StatusOr<PayloadInfo> Inspect(std::span<const uint8_t> payload);
// out.size() must equal the payload's element count.
Status DecodeInto(std::span<const uint8_t> payload, std::span<float> out, Isa isa = Isa::kAuto);
StatusOr<std::vector<float>> Decode(std::span<const uint8_t> payload, Isa isa = Isa::kAuto);
// acc[i] += weight * decoded[i]; acc.size() must equal the element count. Nothing is written if
// the payload is invalid.
Status DecodeAdd(std::span<const uint8_t> payload, float weight, std::span<float> acc, Isa isa = Isa::kAuto);

// --- Error feedback --------------------------------------------------------------------------
// Encodes x + residual and leaves in `residual` what the encoding lost:
//   y = x + residual;  payload = enc(y);  residual = y - dec(payload).
// The caller owns the residual (one per stream, zero-initialised, same length as x). Over many
// rounds the sum of decoded values stays within one quantization step of the sum of inputs.
Status EncodeWithFeedback(const CodecSpec& spec, std::span<const float> x, std::span<float> residual,
                          std::vector<uint8_t>* payload);

// CRC32C (Castagnoli) of `data`, continuing from `crc` (0 to start). Hardware-accelerated when the
// CPU has SSE4.2; the same value either way.
uint32_t Crc32c(std::span<const uint8_t> data, uint32_t crc = 0);

// Index of the first NaN or infinity in `x`, or x.size() when every value is finite.
size_t FirstNonFinite(std::span<const float> x);

}  // namespace lowband::quant
