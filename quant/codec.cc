// Codec front end: payload header, validation, block loop, dispatch to the kernels.
//
// Payload layout (all little-endian; docs/payload.md has the same table):
//   offset size  field
//   0      4     magic "LBQ1" (bytes 4C 42 51 31)
//   4      1     version (1)
//   5      1     format (Format wire value)
//   6      1     bits per code (must agree with the format)
//   7      1     scale type (ScaleType wire value; 0 for passthrough formats)
//   8      4     block size in values (0 for passthrough formats)
//   12     4     reserved, 0
//   16     8     element count
//   24     4     body bytes
//   28     4     CRC32C of header (this field as 0) and body
//   32     ...   body: blockwise formats: per block its scale (asymmetric: scale then minimum), all
//                blocks' parameters first; then the packed codes, value i at bit offset i*bits of
//                the code area (low bits first). Passthrough formats: the values, 4 or 2 bytes each.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "quant/internal.h"

namespace lowband::quant {

using internal::Hex;
using internal::Load;
using internal::Store;

using internal::Kind;
using internal::Traits;

namespace {

constexpr uint8_t kMagic[4] = {'L', 'B', 'Q', '1'};
constexpr uint8_t kVersion = 1;
constexpr uint64_t kMaxElements = uint64_t{1} << 40;

uint64_t ParamsPerBlock(Format f) { return Traits(f).kind == Kind::kIntAsym ? 2 : 1; }

Status NonFiniteError(std::span<const float> in) {
  const size_t i = FirstNonFinite(in);
  return InvalidArgument(
      "input value " + std::to_string(i) + " is " + std::to_string(in[i]) +
      ": codecs take finite values only (check the model for a divergence or a bad input)");
}

StatusOr<const internal::Kernels*> KernelsFor(Isa isa) {
  if (isa == Isa::kAvx2 && !CpuHasAvx2()) {
    return FailedPrecondition(
        "AVX2 kernels requested but this CPU lacks AVX2/F16C/BMI2; use isa auto or scalar");
  }
  return &internal::SelectKernels(isa);
}

Status EncodeBlocks(const CodecSpec& spec, const internal::Kernels& k, std::span<const float> in,
                    uint8_t* body) {
  const uint64_t n = in.size();
  internal::BlockEncodeArgs args{in.data(),
                                 n,
                                 spec.block_size,
                                 spec.scale_type,
                                 spec.rounding == Rounding::kStochastic,
                                 internal::SeedKey(spec.seed),
                                 body,
                                 body + ParamBytes(spec, n)};
  const internal::BlockEncodeResult r = k.encode_blocks(Traits(spec.format), args);
  const std::string block = "block " + std::to_string(r.bad_block) + " (values " +
                            std::to_string(r.bad_block * spec.block_size) + "..)";
  const std::string type(ScaleTypeName(spec.scale_type));
  switch (r.error) {
    case internal::BlockEncodeResult::kNone:
      return Status::Ok();
    case internal::BlockEncodeResult::kNonFinite:
      return NonFiniteError(in);
    case internal::BlockEncodeResult::kScaleRange:
      return InvalidArgument(block + " needs scale " + std::to_string(r.value) + ", beyond " + type +
                             "'s range; use scale bf16 or fp32, or rescale the input");
    case internal::BlockEncodeResult::kOffsetRange:
      return InvalidArgument(block + " has minimum " + std::to_string(r.value) + ", beyond " + type +
                             "'s range; use scale bf16 or fp32");
  }
  return Internal("unknown block encode result");
}

Status EncodePassthrough(const CodecSpec& spec, const internal::Kernels& k, std::span<const float> in,
                         uint8_t* body) {
  float absmax = 0, mn, mx;
  if (!in.empty() && !k.stats(in.data(), in.size(), &absmax, &mn, &mx)) return NonFiniteError(in);
  switch (spec.format) {
    case Format::kFp32:
      if (!in.empty()) std::memcpy(body, in.data(), in.size() * 4);
      break;
    case Format::kBf16:
      // Nearest rounding overflows from 0x7F7F8000 up; stochastic rounding can round anything above
      // bf16's largest value (0x7F7F0000) up to infinity.
      if (absmax >= internal::BitsFloat(spec.rounding == Rounding::kStochastic ? 0x7F7F0001u : 0x7F7F8000u)) {
        return InvalidArgument("a value of magnitude " + std::to_string(absmax) +
                               " rounds to infinity in bf16; use fp32 or rescale");
      }
      k.to_bf16(in.data(), in.size(), spec.rounding == Rounding::kStochastic, internal::SeedKey(spec.seed), 0,
                reinterpret_cast<uint16_t*>(body));
      break;
    case Format::kFp16:
      if (absmax >= 65520.0f) {
        return InvalidArgument("a value of magnitude " + std::to_string(absmax) +
                               " exceeds fp16's range (65504); use bf16 or fp32, or rescale");
      }
      k.to_fp16(in.data(), in.size(), reinterpret_cast<uint16_t*>(body));
      break;
    default:
      return Internal("not a passthrough format");
  }
  return Status::Ok();
}

// Checks the values a crafted payload with a valid checksum could still carry: non-finite or
// negative scales, E4M3's NaN codes, non-finite passthrough values.
Status CheckBodyValues(const PayloadInfo& info, const uint8_t* body) {
  const uint64_t n = info.element_count;
  if (IsBlockwise(info.format)) {
    const uint64_t blocks = (n + info.block_size - 1) / info.block_size;
    const int sb = internal::ScaleBytes(info.scale_type);
    const uint64_t per = ParamsPerBlock(info.format);
    for (uint64_t b = 0; b < blocks; ++b) {
      const float s = internal::LoadScale(info.scale_type, body + (b * per) * sb);
      const float top = Traits(info.format).qmax * s;
      if (!std::isfinite(top) || s < 0.0f) {
        return DataLoss("block " + std::to_string(b) + " has scale " + std::to_string(s) +
                        "; scales must be non-negative and keep every level finite (payload corrupt or not "
                        "from lowband)");
      }
      if (per == 2 && !std::isfinite(top + internal::LoadScale(info.scale_type, body + (b * per + 1) * sb))) {
        return DataLoss("block " + std::to_string(b) +
                        " has a minimum that makes its levels non-finite (payload corrupt)");
      }
    }
    if (info.format == Format::kFp8E4M3) {
      const uint8_t* codes = body + blocks * per * sb;
      for (uint64_t i = 0; i < n; ++i) {
        if ((codes[i] & 0x7F) == 0x7F) {
          return DataLoss("value " + std::to_string(i) + " carries E4M3's NaN code (payload corrupt)");
        }
      }
    }
    return Status::Ok();
  }
  if (info.format == Format::kFp32) {
    float a, lo, hi;
    const auto* f = reinterpret_cast<const float*>(body);
    if (n && !internal::SelectKernels(Isa::kAuto).stats(f, n, &a, &lo, &hi)) {
      return DataLoss("value " + std::to_string(FirstNonFinite({f, n})) + " is NaN or Inf (payload corrupt)");
    }
    return Status::Ok();
  }
  const uint16_t mask = info.format == Format::kBf16 ? 0x7F80 : 0x7C00;
  bool bad = false;
  for (uint64_t i = 0; i < n; ++i) bad |= (Load<uint16_t>(body + 2 * i) & mask) == mask;
  if (bad) return DataLoss("a value is NaN or Inf (payload corrupt)");
  return Status::Ok();
}

Status DecodeImpl(std::span<const uint8_t> payload, std::span<float> out, float weight, bool add, Isa isa) {
  LOWBAND_ASSIGN_OR_RETURN(const PayloadInfo info, Inspect(payload));
  LOWBAND_RETURN_IF_ERROR(internal::CheckDecodeTarget(info, out.size(), weight));
  LOWBAND_ASSIGN_OR_RETURN(const internal::Kernels* kp, KernelsFor(isa));
  const internal::Kernels& k = *kp;
  const uint8_t* body = payload.data() + kHeaderBytes;
  const uint64_t n = info.element_count;
  switch (info.format) {
    case Format::kFp32:
      if (add) {
        k.add_scaled(reinterpret_cast<const float*>(body), n, weight, out.data());
      } else if (n) {
        std::memcpy(out.data(), body, n * 4);
      }
      return Status::Ok();
    case Format::kBf16:
      k.from_bf16(reinterpret_cast<const uint16_t*>(body), n, weight, add, out.data());
      return Status::Ok();
    case Format::kFp16:
      k.from_fp16(reinterpret_cast<const uint16_t*>(body), n, weight, add, out.data());
      return Status::Ok();
    default:
      break;
  }
  const auto& t = Traits(info.format);
  const uint64_t bs = info.block_size, blocks = (n + bs - 1) / bs;
  const int sb = internal::ScaleBytes(info.scale_type);
  const uint64_t per = ParamsPerBlock(info.format);
  const uint8_t* codes = body + ParamBytes(internal::SpecOf(info), n);
  for (uint64_t b = 0; b < blocks; ++b) {
    const uint64_t start = b * bs;
    const size_t len = static_cast<size_t>(std::min(bs, n - start));
    const float scale = internal::LoadScale(info.scale_type, body + b * per * sb);
    const float offset = per == 2 ? internal::LoadScale(info.scale_type, body + (b * per + 1) * sb) : 0.0f;
    k.dequantize(t, codes + start * t.bits / 8, len, scale, offset, weight, add, out.data() + start);
  }
  return Status::Ok();
}

}  // namespace

Status internal::CheckEncodeTarget(const CodecSpec& spec, uint64_t n, uint64_t out_bytes) {
  const uint64_t need = EncodedSize(spec, n);
  if (out_bytes >= need) return Status::Ok();
  return InvalidArgument("output buffer has " + std::to_string(out_bytes) + " bytes; encoding " +
                         std::to_string(n) + " values as " + std::string(FormatName(spec.format)) +
                         " needs " + std::to_string(need) + " (see EncodedSize)");
}

Status internal::CheckDecodeTarget(const PayloadInfo& info, uint64_t n, float weight) {
  if (!std::isfinite(weight))
    return InvalidArgument("DecodeAdd weight must be finite, got " + std::to_string(weight));
  if (n != info.element_count) {
    return InvalidArgument("output has " + std::to_string(n) + " values but the payload carries " +
                           std::to_string(info.element_count) + " (" + std::string(FormatName(info.format)) +
                           "): payload for a different tensor or fragment?");
  }
  return Status::Ok();
}

void internal::WriteHeader(const CodecSpec& spec, uint64_t n, uint8_t* h) {
  const bool blockwise = IsBlockwise(spec.format);
  const uint64_t size = EncodedSize(spec, n);
  std::memcpy(h, kMagic, 4);
  h[4] = kVersion;
  h[5] = static_cast<uint8_t>(spec.format);
  h[6] = static_cast<uint8_t>(BitsPerCode(spec.format));
  h[7] = blockwise ? static_cast<uint8_t>(spec.scale_type) : 0;
  Store<uint32_t>(h + 8, blockwise ? spec.block_size : 0);
  Store<uint32_t>(h + 12, 0);
  Store<uint64_t>(h + 16, n);
  Store<uint32_t>(h + 24, static_cast<uint32_t>(size - kHeaderBytes));
  Store<uint32_t>(h + 28, 0);
  Store<uint32_t>(h + 28, Crc32c({h, size}));
}

size_t FirstNonFinite(std::span<const float> x) {
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) return i;
  }
  return x.size();
}

Status EncodeInto(const CodecSpec& spec, std::span<const float> in, std::span<uint8_t> out) {
  LOWBAND_RETURN_IF_ERROR(Validate(spec));
  if (in.size() > kMaxElements) {
    return InvalidArgument("cannot encode " + std::to_string(in.size()) +
                           " values in one payload (limit 2^40); split it");
  }
  LOWBAND_RETURN_IF_ERROR(internal::CheckEncodeTarget(spec, in.size(), out.size()));
  LOWBAND_ASSIGN_OR_RETURN(const internal::Kernels* k, KernelsFor(spec.isa));
  uint8_t* h = out.data();
  uint8_t* body = h + kHeaderBytes;
  if (IsBlockwise(spec.format)) {
    LOWBAND_RETURN_IF_ERROR(EncodeBlocks(spec, *k, in, body));
  } else {
    LOWBAND_RETURN_IF_ERROR(EncodePassthrough(spec, *k, in, body));
  }
  internal::WriteHeader(spec, in.size(), h);
  return Status::Ok();
}

StatusOr<std::vector<uint8_t>> Encode(const CodecSpec& spec, std::span<const float> in) {
  LOWBAND_RETURN_IF_ERROR(Validate(spec));
  std::vector<uint8_t> out(EncodedSize(spec, in.size()));
  LOWBAND_RETURN_IF_ERROR(EncodeInto(spec, in, out));
  return out;
}

StatusOr<PayloadInfo> Inspect(std::span<const uint8_t> payload) {
  if (payload.size() < kHeaderBytes) {
    return DataLoss("payload has " + std::to_string(payload.size()) + " bytes, fewer than the " +
                    std::to_string(kHeaderBytes) + "-byte header: truncated in transit?");
  }
  const uint8_t* h = payload.data();
  if (std::memcmp(h, kMagic, 4) != 0) {
    return DataLoss("payload does not start with the magic 'LBQ1' (found " + Hex(Load<uint32_t>(h)) +
                    "): not a lowband codec payload, or a misaligned read");
  }
  if (h[4] != kVersion) {
    return FailedPrecondition("payload version " + std::to_string(h[4]) + "; this build reads version " +
                              std::to_string(kVersion) + ": upgrade the older side");
  }
  if (h[5] >= kNumFormats) return DataLoss("payload names unknown format code " + std::to_string(h[5]));
  PayloadInfo info;
  info.format = static_cast<Format>(h[5]);
  info.bits = h[6];
  if (info.bits != BitsPerCode(info.format)) {
    return DataLoss("payload says " + std::to_string(info.bits) + " bits per code, but " +
                    std::string(FormatName(info.format)) + " has " +
                    std::to_string(BitsPerCode(info.format)));
  }
  const bool blockwise = IsBlockwise(info.format);
  if (h[7] > static_cast<uint8_t>(ScaleType::kPow2) || (!blockwise && h[7] != 0)) {
    return DataLoss("payload has invalid scale type code " + std::to_string(h[7]));
  }
  info.scale_type = static_cast<ScaleType>(h[7]);
  info.block_size = Load<uint32_t>(h + 8);
  CodecSpec spec;
  spec.format = info.format;
  spec.scale_type = info.scale_type;
  spec.block_size = info.block_size;
  if (blockwise) {
    if (Status s = Validate(spec); !s.ok()) return DataLoss("payload header: " + s.message());
  } else if (info.block_size != 0) {
    return DataLoss("passthrough payload has block size " + std::to_string(info.block_size) + ", expected 0");
  }
  if (Load<uint32_t>(h + 12) != 0) return DataLoss("payload header's reserved field is not zero");
  info.element_count = Load<uint64_t>(h + 16);
  if (info.element_count > kMaxElements) {
    return DataLoss("payload claims " + std::to_string(info.element_count) + " values, over the 2^40 limit");
  }
  const uint64_t expect = EncodedSize(spec, info.element_count);
  const uint64_t body = Load<uint32_t>(h + 24);
  if (body + kHeaderBytes != expect) {
    return DataLoss("payload header says " + std::to_string(body) + " body bytes, but " +
                    std::to_string(info.element_count) + " values of " +
                    std::string(FormatName(info.format)) + " need " + std::to_string(expect - kHeaderBytes));
  }
  if (payload.size() != expect) {
    return DataLoss("payload has " + std::to_string(payload.size()) + " bytes but its header describes " +
                    std::to_string(expect) +
                    (payload.size() < expect ? ": truncated in transit?" : ": trailing bytes"));
  }
  const uint32_t stored = Load<uint32_t>(h + 28);
  uint8_t head[kHeaderBytes];
  std::memcpy(head, h, kHeaderBytes);
  Store<uint32_t>(head + 28, 0);
  const uint32_t crc = Crc32c(payload.subspan(kHeaderBytes), Crc32c({head, kHeaderBytes}));
  if (crc != stored) {
    return DataLoss("payload checksum mismatch (stored " + Hex(stored) + ", computed " + Hex(crc) +
                    "): corrupted in transit; resend it");
  }
  info.payload_bytes = expect;
  LOWBAND_RETURN_IF_ERROR(CheckBodyValues(info, h + kHeaderBytes));
  return info;
}

Status DecodeInto(std::span<const uint8_t> payload, std::span<float> out, Isa isa) {
  return DecodeImpl(payload, out, 1.0f, false, isa);
}

StatusOr<std::vector<float>> Decode(std::span<const uint8_t> payload, Isa isa) {
  LOWBAND_ASSIGN_OR_RETURN(const PayloadInfo info, Inspect(payload));
  std::vector<float> out(info.element_count);
  LOWBAND_RETURN_IF_ERROR(DecodeImpl(payload, out, 1.0f, false, isa));
  return out;
}

Status DecodeAdd(std::span<const uint8_t> payload, float weight, std::span<float> acc, Isa isa) {
  return DecodeImpl(payload, acc, weight, true, isa);
}

Status EncodeWithFeedback(const CodecSpec& spec, std::span<const float> x, std::span<float> residual,
                          std::vector<uint8_t>* payload) {
  if (residual.size() != x.size()) {
    return InvalidArgument("error-feedback residual has " + std::to_string(residual.size()) +
                           " values, input has " + std::to_string(x.size()) +
                           ": keep one residual per stream, sized like its input");
  }
  LOWBAND_RETURN_IF_ERROR(Validate(spec));
  LOWBAND_ASSIGN_OR_RETURN(const internal::Kernels* k, KernelsFor(spec.isa));
  if (FirstNonFinite(x) != x.size()) return NonFiniteError(x);
  k->add_scaled(x.data(), x.size(), 1.0f, residual.data());  // residual now holds y = x + residual
  payload->resize(EncodedSize(spec, x.size()));
  if (Status s = EncodeInto(spec, residual, *payload); !s.ok()) {
    k->add_scaled(x.data(), x.size(), -1.0f, residual.data());  // leave the residual as it was
    return s;
  }
  return DecodeImpl(*payload, residual, -1.0f, true, spec.isa);  // residual = y - dec(y)
}

}  // namespace lowband::quant
