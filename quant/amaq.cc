// AMAQ mixed-bit codec: per-channel asymmetric quantization, codes packed by bit width, bit map
// sent only when it changes. The wire layout is in amaq.h and docs/payload.md.
//
// Encode: one row-major pass finds every channel's min and max (and any NaN/Inf), then each
// channel, in wire order (by width, then channel), is quantized down its column straight into the
// bitstream. Decode validates everything first, then reads the bitstream in the same order and
// writes each channel's column. Both sides compute x^ = min + scale * code in fp32 (no FMA: the
// library is built with -ffp-contract=off), so they agree to the bit.
#include "quant/amaq.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

#include "quant/internal.h"

namespace lowband::quant {

using internal::Hex;
using internal::Load;
using internal::Store;
namespace {

constexpr uint8_t kMagic[4] = {'A', 'M', 'Q', '1'};
constexpr uint8_t kVersion = 1;
constexpr uint8_t kFlagBitmap = 1;
constexpr uint8_t kFlagStochastic = 2;
constexpr uint8_t kFlagPassthrough = 4;
constexpr uint8_t kKnownFlags = kFlagBitmap | kFlagStochastic | kFlagPassthrough;
constexpr size_t kCrcOffset = 20;

uint64_t BitmapBytes(uint64_t channels) { return (3 * channels + 7) / 8; }
float Qmax(int bits) { return static_cast<float>((1u << bits) - 1); }
int ClampBits(uint8_t b) { return std::clamp<int>(b, kAmaqMinBits, kAmaqMaxBits); }

// LSB-first bitstream writer: whole 32-bit words while streaming, the tail bytes in Finish.
class BitWriter {
 public:
  explicit BitWriter(uint8_t* p) : p_(p) {}
  void Put(uint32_t v, int bits) {
    acc_ |= static_cast<uint64_t>(v) << n_;
    n_ += bits;
    if (n_ >= 32) {
      Store<uint32_t>(p_, static_cast<uint32_t>(acc_));
      p_ += 4;
      acc_ >>= 32;
      n_ -= 32;
    }
  }
  // Writes the last ceil(n / 8) bytes (the padding bits are 0).
  void Finish() {
    for (; n_ > 0; n_ -= 8) {
      *p_++ = static_cast<uint8_t>(acc_);
      acc_ >>= 8;
    }
  }

 private:
  uint8_t* p_;
  uint64_t acc_ = 0;
  int n_ = 0;
};

// LSB-first reader that loads a byte only when it needs its bits: reading exactly the bits the
// writer wrote never touches a byte past the stream's last.
class BitReader {
 public:
  explicit BitReader(const uint8_t* p) : p_(p) {}
  uint32_t Get(int bits) {
    while (n_ < bits) {
      acc_ |= static_cast<uint64_t>(*p_++) << n_;
      n_ += 8;
    }
    const uint32_t v = static_cast<uint32_t>(acc_) & ((1u << bits) - 1);
    acc_ >>= bits;
    n_ -= bits;
    return v;
  }

 private:
  const uint8_t* p_;
  uint64_t acc_ = 0;
  int n_ = 0;
};

// Channels in wire order: by width (2..8), then by channel index.
std::vector<uint32_t> WireOrder(std::span<const uint8_t> bits) {
  uint32_t start[kAmaqMaxBits + 2] = {};
  for (uint8_t b : bits) ++start[b + 1];
  for (int b = 1; b <= kAmaqMaxBits + 1; ++b) start[b] += start[b - 1];
  std::vector<uint32_t> order(bits.size());
  for (uint32_t c = 0; c < bits.size(); ++c) order[start[bits[c]]++] = c;
  return order;
}

Status CheckShape(size_t n, uint32_t rows, uint32_t channels) {
  if (rows == 0 || rows > kAmaqMaxRows) {
    return InvalidArgument("AMAQ rows must be in 1.." + std::to_string(kAmaqMaxRows) + ", got " +
                           std::to_string(rows));
  }
  if (channels == 0 || channels > kAmaqMaxChannels) {
    return InvalidArgument("AMAQ channels must be in 1.." + std::to_string(kAmaqMaxChannels) + ", got " +
                           std::to_string(channels));
  }
  const uint64_t values = uint64_t{rows} * channels;
  if (values > kAmaqMaxValues) {
    return InvalidArgument("AMAQ message of " + std::to_string(rows) + " x " + std::to_string(channels) +
                           " values exceeds the 2^31-value limit: split it");
  }
  if (n != values) {
    return InvalidArgument("AMAQ input has " + std::to_string(n) +
                           " values, expected rows x channels = " + std::to_string(rows) + " x " +
                           std::to_string(channels) + " = " + std::to_string(values));
  }
  return Status::Ok();
}

Status CheckBits(std::span<const uint8_t> bits, uint32_t channels) {
  if (bits.size() != channels) {
    return InvalidArgument("AMAQ bit map has " + std::to_string(bits.size()) +
                           " entries, expected one per channel (" + std::to_string(channels) + ")");
  }
  for (size_t c = 0; c < bits.size(); ++c) {
    if (bits[c] < kAmaqMinBits || bits[c] > kAmaqMaxBits) {
      return InvalidArgument("AMAQ channel " + std::to_string(c) + " has bit width " +
                             std::to_string(bits[c]) +
                             ", outside [2, 8]: round and clamp the learned widths before encoding");
    }
  }
  return Status::Ok();
}

Status NonFiniteError(std::span<const float> x, uint32_t channels, const char* what) {
  const size_t i = FirstNonFinite(x);
  return InvalidArgument(
      std::string(what) + "[row " + std::to_string(i / channels) + ", channel " +
      std::to_string(i % channels) + "] is " + std::to_string(x[i]) +
      ": AMAQ encodes finite values only (check the model for a divergence or a bad input)");
}

// Per channel min and scale, exactly as the encoder stores them. scale is 0 for a constant channel;
// otherwise it is at least 2^-126 (so the quotient stays finite) and large enough that
// min + scale * qmax >= max (the top level covers the channel's maximum: nothing is clipped).
Status ChannelParams(std::span<const float> x, uint32_t rows, uint32_t channels,
                     std::span<const uint8_t> bits, std::vector<float>* mins, std::vector<float>* scales) {
  std::vector<float> lo(x.begin(), x.begin() + channels), hi = lo;
  bool finite = true;
  for (uint32_t r = 0; r < rows; ++r) {
    const float* row = x.data() + size_t{r} * channels;
    for (uint32_t c = 0; c < channels; ++c) {
      const float v = row[c];
      finite &= std::isfinite(v);
      lo[c] = std::min(lo[c], v);
      hi[c] = std::max(hi[c], v);
    }
  }
  if (!finite) return NonFiniteError(x, channels, "X");
  mins->resize(channels);
  scales->resize(channels);
  for (uint32_t c = 0; c < channels; ++c) {
    const float mn = lo[c] + 0.0f, mx = hi[c] + 0.0f;  // -0 and +0 store the same bytes
    const float qmax = Qmax(bits[c]);
    float s = (mx - mn) / qmax;
    if (mx > mn) {
      s = std::max(s, std::numeric_limits<float>::min());
      for (int k = 0; k < 8 && std::isfinite(s) && mn + s * qmax < mx; ++k) {
        s = std::nextafter(s, std::numeric_limits<float>::infinity());
      }
      if (!std::isfinite(s) || !std::isfinite(mn + s * qmax)) {
        return InvalidArgument("AMAQ channel " + std::to_string(c) + " spans [" + std::to_string(mn) + ", " +
                               std::to_string(mx) + "], a range beyond fp32: rescale the input");
      }
    }
    (*mins)[c] = mn;
    (*scales)[c] = s;
  }
  return Status::Ok();
}

uint32_t PayloadCrc(std::span<const uint8_t> payload) {
  uint8_t head[kAmaqHeaderBytes];
  std::memcpy(head, payload.data(), kAmaqHeaderBytes);
  Store<uint32_t>(head + kCrcOffset, 0);
  return Crc32c(payload.subspan(kAmaqHeaderBytes), Crc32c({head, kAmaqHeaderBytes}));
}

Status CheckCrc(std::span<const uint8_t> payload) {
  const uint32_t stored = Load<uint32_t>(payload.data() + kCrcOffset);
  const uint32_t crc = PayloadCrc(payload);
  if (crc != stored) {
    return DataLoss("AMAQ payload checksum mismatch (stored " + Hex(stored) + ", computed " + Hex(crc) +
                    "): corrupted or truncated in transit; resend it");
  }
  return Status::Ok();
}

Status CheckSize(std::span<const uint8_t> payload, uint64_t expect, const AmaqInfo& info) {
  if (payload.size() == expect) return Status::Ok();
  return DataLoss("AMAQ payload has " + std::to_string(payload.size()) + " bytes but its header (" +
                  std::to_string(info.rows) + " x " + std::to_string(info.channels) +
                  (info.passthrough  ? ", fp32"
                   : info.has_bitmap ? ", with bit map"
                                     : ", without bit map") +
                  ") describes " + std::to_string(expect) +
                  (payload.size() < expect ? ": truncated in transit?" : ": trailing bytes"));
}

// Magic, version, flags, reserved field, limits and epoch rules; no size or checksum.
Status ParseHeader(std::span<const uint8_t> payload, AmaqInfo* info) {
  if (payload.size() < kAmaqHeaderBytes) {
    return DataLoss("AMAQ payload has " + std::to_string(payload.size()) + " bytes, fewer than the " +
                    std::to_string(kAmaqHeaderBytes) + "-byte header: truncated in transit?");
  }
  const uint8_t* h = payload.data();
  if (std::memcmp(h, kMagic, 4) != 0) {
    return DataLoss("payload does not start with the magic 'AMQ1' (found " + Hex(Load<uint32_t>(h)) +
                    "): not an AMAQ payload, or a misaligned read");
  }
  if (h[4] != kVersion) {
    return FailedPrecondition("AMAQ payload version " + std::to_string(h[4]) + "; this build reads version " +
                              std::to_string(kVersion) + ": upgrade the older side");
  }
  const uint8_t flags = h[5];
  if ((flags & ~kKnownFlags) != 0 || ((flags & kFlagPassthrough) && (flags & ~kFlagPassthrough))) {
    return DataLoss("AMAQ payload has invalid flags " + std::to_string(flags));
  }
  if (Load<uint16_t>(h + 6) != 0) return DataLoss("AMAQ payload header's reserved field is not zero");
  info->rows = Load<uint32_t>(h + 8);
  info->channels = Load<uint32_t>(h + 12);
  info->epoch = Load<uint32_t>(h + 16);
  info->has_bitmap = flags & kFlagBitmap;
  info->passthrough = flags & kFlagPassthrough;
  info->rounding = (flags & kFlagStochastic) ? Rounding::kStochastic : Rounding::kNearest;
  if (info->rows == 0 || info->rows > kAmaqMaxRows || info->channels == 0 ||
      info->channels > kAmaqMaxChannels || uint64_t{info->rows} * info->channels > kAmaqMaxValues) {
    return DataLoss("AMAQ payload claims " + std::to_string(info->rows) + " x " +
                    std::to_string(info->channels) +
                    " values, outside the limits (rows 1..2^24, channels 1..2^20, at most 2^31 values)");
  }
  if (info->passthrough != (info->epoch == 0)) {
    return DataLoss("AMAQ payload has bit map epoch " + std::to_string(info->epoch) +
                    (info->passthrough ? " in a passthrough payload (must be 0)" : " (must be >= 1)"));
  }
  return Status::Ok();
}

// Reads the bit map; false if a field is 7 or a padding bit is set.
bool ParseBitmap(const uint8_t* p, uint32_t channels, std::vector<uint8_t>* bits) {
  bits->resize(channels);
  BitReader r(p);
  for (uint32_t c = 0; c < channels; ++c) {
    const uint32_t v = r.Get(3);
    if (v > kAmaqMaxBits - kAmaqMinBits) return false;
    (*bits)[c] = static_cast<uint8_t>(v + kAmaqMinBits);
  }
  const int pad = static_cast<int>(BitmapBytes(channels) * 8 - 3 * uint64_t{channels});
  return pad == 0 || r.Get(pad) == 0;
}

// Validates the whole payload; on success fills *info and *bits (the map the codes use, empty for
// passthrough). `known` serves payloads without a map (may be null).
Status Validate(std::span<const uint8_t> payload, const AmaqBitmap* known, AmaqInfo* info,
                std::vector<uint8_t>* bits) {
  LOWBAND_RETURN_IF_ERROR(ParseHeader(payload, info));
  const uint8_t* body = payload.data() + kAmaqHeaderBytes;
  if (info->passthrough) {
    const uint64_t expect = AmaqPassthroughSize(info->rows, info->channels);
    LOWBAND_RETURN_IF_ERROR(CheckSize(payload, expect, *info));
    LOWBAND_RETURN_IF_ERROR(CheckCrc(payload));
    const uint64_t n = uint64_t{info->rows} * info->channels;
    for (uint64_t i = 0; i < n; ++i) {
      if (!std::isfinite(Load<float>(body + 4 * i))) {
        return DataLoss("AMAQ passthrough value [row " + std::to_string(i / info->channels) + ", channel " +
                        std::to_string(i % info->channels) + "] is NaN or Inf (payload corrupt)");
      }
    }
    bits->clear();
    info->payload_bytes = expect;
    return Status::Ok();
  }
  if (info->has_bitmap) {
    if (payload.size() < kAmaqHeaderBytes + BitmapBytes(info->channels)) {
      return DataLoss("AMAQ payload has " + std::to_string(payload.size()) +
                      " bytes, too few for the header and the " + std::to_string(info->channels) +
                      "-channel bit map its header announces: truncated in transit?");
    }
    if (!ParseBitmap(body, info->channels, bits)) {
      LOWBAND_RETURN_IF_ERROR(CheckCrc(payload));
      return DataLoss(
          "AMAQ payload's bit map has a width outside [2, 8] or non-zero padding (payload corrupt)");
    }
  } else {
    const uint32_t have = known ? known->epoch : 0;
    if (have != info->epoch) {
      LOWBAND_RETURN_IF_ERROR(CheckCrc(payload));  // a corrupted epoch is a checksum error, not a lost map
      return FailedPrecondition("bit map epoch " + std::to_string(info->epoch) +
                                " unknown to this decoder (it has " + std::to_string(have) +
                                "): the sender must resend the map (AmaqEncoder::ForceBitmap)");
    }
    if (known->bits.size() != info->channels) {
      LOWBAND_RETURN_IF_ERROR(CheckCrc(payload));
      return FailedPrecondition("AMAQ payload has " + std::to_string(info->channels) +
                                " channels but the bit map of epoch " + std::to_string(have) + " has " +
                                std::to_string(known->bits.size()) + ": the sender must resend the map");
    }
    for (size_t c = 0; c < known->bits.size(); ++c) {
      if (known->bits[c] < kAmaqMinBits || known->bits[c] > kAmaqMaxBits) {
        return InvalidArgument("known AMAQ bit map gives channel " + std::to_string(c) + " width " +
                               std::to_string(known->bits[c]) + ", outside [2, 8]");
      }
    }
    bits->assign(known->bits.begin(), known->bits.end());
  }
  const AmaqStats sizes = AmaqBreakdown(info->rows, *bits, info->has_bitmap);
  LOWBAND_RETURN_IF_ERROR(CheckSize(payload, sizes.total_bytes, *info));
  LOWBAND_RETURN_IF_ERROR(CheckCrc(payload));
  const uint8_t* params = body + sizes.bitmap_bytes;
  for (uint32_t c = 0; c < info->channels; ++c) {
    const float mn = Load<float>(params + 8 * c), s = Load<float>(params + 8 * c + 4);
    if (!std::isfinite(mn) || !std::isfinite(s) || s < 0.0f || !std::isfinite(mn + s * Qmax((*bits)[c]))) {
      return DataLoss("AMAQ channel " + std::to_string(c) + " has min " + std::to_string(mn) + " and scale " +
                      std::to_string(s) +
                      ": scales must be non-negative and keep every level finite (payload corrupt)");
    }
  }
  uint64_t code_bits = 0;
  for (uint8_t b : *bits) code_bits += uint64_t{info->rows} * b;
  if (code_bits % 8 != 0 && (payload.back() >> (code_bits % 8)) != 0) {
    return DataLoss("AMAQ payload's final padding bits are not zero (payload corrupt)");
  }
  info->payload_bytes = sizes.total_bytes;
  return Status::Ok();
}

Status CheckOut(const AmaqInfo& info, std::span<float> out) {
  const uint64_t n = uint64_t{info.rows} * info.channels;
  if (out.size() == n) return Status::Ok();
  return InvalidArgument("AMAQ output has " + std::to_string(out.size()) +
                         " values but the payload carries " + std::to_string(info.rows) + " x " +
                         std::to_string(info.channels) + " = " + std::to_string(n) +
                         ": payload for a different tensor?");
}

// Writes a validated payload into out.
void DecodeValidated(std::span<const uint8_t> payload, const AmaqInfo& info, std::span<const uint8_t> bits,
                     std::span<float> out) {
  const uint8_t* body = payload.data() + kAmaqHeaderBytes;
  if (info.passthrough) {
    std::memcpy(out.data(), body, out.size() * sizeof(float));
    return;
  }
  const uint32_t rows = info.rows, channels = info.channels;
  const uint8_t* params = body + (info.has_bitmap ? BitmapBytes(channels) : 0);
  BitReader reader(params + 8 * uint64_t{channels});
  for (uint32_t c : WireOrder(bits)) {
    const int b = bits[c];
    const float mn = Load<float>(params + 8 * uint64_t{c}), s = Load<float>(params + 8 * uint64_t{c} + 4);
    float* col = out.data() + c;
    for (uint32_t r = 0; r < rows; ++r)
      col[size_t{r} * channels] = mn + s * static_cast<float>(reader.Get(b));
  }
}

void WriteHeader(uint8_t* h, uint8_t flags, uint32_t rows, uint32_t channels, uint32_t epoch) {
  std::memcpy(h, kMagic, 4);
  h[4] = kVersion;
  h[5] = flags;
  Store<uint16_t>(h + 6, 0);
  Store<uint32_t>(h + 8, rows);
  Store<uint32_t>(h + 12, channels);
  Store<uint32_t>(h + 16, epoch);
  Store<uint32_t>(h + kCrcOffset, 0);
}

}  // namespace

AmaqStats AmaqBreakdown(uint32_t rows, std::span<const uint8_t> bits, bool with_bitmap) {
  AmaqStats s;
  uint64_t code_bits = 0;
  for (uint8_t b : bits) code_bits += uint64_t{rows} * ClampBits(b);
  s.header_bytes = kAmaqHeaderBytes;
  s.bitmap_bytes = with_bitmap ? BitmapBytes(bits.size()) : 0;
  s.param_bytes = 8 * uint64_t{bits.size()};
  s.code_bytes = (code_bits + 7) / 8;
  s.total_bytes = s.header_bytes + s.bitmap_bytes + s.param_bytes + s.code_bytes;
  const uint64_t values = uint64_t{rows} * bits.size();
  if (values) {
    s.code_bits_per_value = static_cast<double>(code_bits) / static_cast<double>(values);
    s.total_bits_per_value = 8.0 * static_cast<double>(s.total_bytes) / static_cast<double>(values);
  }
  s.bitmap_sent = with_bitmap;
  return s;
}

AmaqStats AmaqPassthroughBreakdown(uint32_t rows, uint32_t channels) {
  AmaqStats s;
  const uint64_t values = uint64_t{rows} * channels;
  s.header_bytes = kAmaqHeaderBytes;
  s.code_bytes = 4 * values;
  s.total_bytes = s.header_bytes + s.code_bytes;
  if (values) {
    s.code_bits_per_value = 32.0;
    s.total_bits_per_value = 8.0 * static_cast<double>(s.total_bytes) / static_cast<double>(values);
  }
  return s;
}

uint64_t AmaqEncodedSize(uint32_t rows, std::span<const uint8_t> bits, bool with_bitmap) {
  return AmaqBreakdown(rows, bits, with_bitmap).total_bytes;
}

uint64_t AmaqPassthroughSize(uint32_t rows, uint32_t channels) {
  return AmaqPassthroughBreakdown(rows, channels).total_bytes;
}

StatusOr<std::vector<float>> AmaqNearestErrorBounds(std::span<const float> x, uint32_t rows,
                                                    uint32_t channels, std::span<const uint8_t> bits) {
  LOWBAND_RETURN_IF_ERROR(CheckShape(x.size(), rows, channels));
  LOWBAND_RETURN_IF_ERROR(CheckBits(bits, channels));
  std::vector<float> mins, scales;
  LOWBAND_RETURN_IF_ERROR(ChannelParams(x, rows, channels, bits, &mins, &scales));
  for (float& s : scales) s *= 0.5f;
  return scales;
}

Status AmaqEncoder::Encode(std::span<const float> x, uint32_t rows, uint32_t channels,
                           std::span<const uint8_t> bits, const AmaqOptions& options,
                           std::vector<uint8_t>* payload, AmaqStats* stats) {
  LOWBAND_RETURN_IF_ERROR(CheckShape(x.size(), rows, channels));
  if (options.passthrough) {
    if (FirstNonFinite(x) != x.size()) return NonFiniteError(x, channels, "X");
    const AmaqStats s = AmaqPassthroughBreakdown(rows, channels);
    payload->resize(s.total_bytes);
    uint8_t* h = payload->data();
    WriteHeader(h, kFlagPassthrough, rows, channels, 0);
    std::memcpy(h + kAmaqHeaderBytes, x.data(), x.size() * sizeof(float));
    Store<uint32_t>(h + kCrcOffset, PayloadCrc(*payload));
    if (stats) *stats = s;
    return Status::Ok();
  }
  LOWBAND_RETURN_IF_ERROR(CheckBits(bits, channels));
  std::vector<float> mins, scales;
  LOWBAND_RETURN_IF_ERROR(ChannelParams(x, rows, channels, bits, &mins, &scales));

  const bool send_map = force_bitmap_ || sent_.epoch == 0 ||
                        !std::equal(bits.begin(), bits.end(), sent_.bits.begin(), sent_.bits.end());
  uint32_t epoch = sent_.epoch;
  if (send_map) epoch = epoch + 1 == 0 ? 1 : epoch + 1;  // 0 means "no map": skip it on wrap-around
  AmaqStats s = AmaqBreakdown(rows, bits, send_map);
  s.epoch = epoch;

  payload->resize(s.total_bytes);
  uint8_t* h = payload->data();
  const bool stochastic = options.rounding == Rounding::kStochastic;
  WriteHeader(h, static_cast<uint8_t>((send_map ? kFlagBitmap : 0) | (stochastic ? kFlagStochastic : 0)),
              rows, channels, epoch);
  uint8_t* p = h + kAmaqHeaderBytes;
  if (send_map) {
    BitWriter w(p);
    for (uint8_t b : bits) w.Put(static_cast<uint32_t>(b - kAmaqMinBits), 3);
    w.Finish();
    p += s.bitmap_bytes;
  }
  for (uint32_t c = 0; c < channels; ++c) {
    Store<float>(p + 8 * uint64_t{c}, mins[c]);
    Store<float>(p + 8 * uint64_t{c} + 4, scales[c]);
  }
  p += s.param_bytes;

  const uint32_t key = internal::SeedKey(options.seed);
  BitWriter w(p);
  for (uint32_t c : WireOrder(bits)) {
    const int b = bits[c];
    const float mn = mins[c], scale = scales[c], qmax = Qmax(b);
    const float* col = x.data() + c;
    if (scale == 0.0f) {  // constant channel: every code is 0
      for (uint32_t r = 0; r < rows; ++r) w.Put(0, b);
      continue;
    }
    for (uint32_t r = 0; r < rows; ++r) {
      const size_t i = size_t{r} * channels;
      const float q = (col[i] - mn) / scale;
      float code;
      if (stochastic) {
        const float u = internal::UniformFromHash(
            internal::HashIndex(key, static_cast<uint32_t>(i + c)));  // i + c < 2^31
        code = std::floor(q + u);
      } else {
        code = std::nearbyint(q);
      }
      code = std::min(std::max(code, 0.0f), qmax);
      w.Put(static_cast<uint32_t>(code), b);
    }
  }
  w.Finish();
  Store<uint32_t>(h + kCrcOffset, PayloadCrc(*payload));

  if (send_map) {
    sent_.epoch = epoch;
    sent_.bits.assign(bits.begin(), bits.end());
    force_bitmap_ = false;
  }
  if (stats) *stats = s;
  return Status::Ok();
}

StatusOr<AmaqInfo> InspectAmaq(std::span<const uint8_t> payload) {
  AmaqInfo info;
  LOWBAND_RETURN_IF_ERROR(ParseHeader(payload, &info));
  if (info.passthrough || info.has_bitmap) {
    std::vector<uint8_t> bits;
    LOWBAND_RETURN_IF_ERROR(Validate(payload, nullptr, &info, &bits));
    return info;
  }
  LOWBAND_RETURN_IF_ERROR(CheckCrc(payload));
  info.payload_bytes = payload.size();
  return info;
}

Status DecodeAmaq(std::span<const uint8_t> payload, const AmaqBitmap& known, std::span<float> out,
                  AmaqInfo* info_out) {
  AmaqInfo info;
  std::vector<uint8_t> bits;
  LOWBAND_RETURN_IF_ERROR(Validate(payload, &known, &info, &bits));
  LOWBAND_RETURN_IF_ERROR(CheckOut(info, out));
  DecodeValidated(payload, info, bits, out);
  if (info_out) *info_out = info;
  return Status::Ok();
}

Status AmaqDecoder::Decode(std::span<const uint8_t> payload, std::span<float> out, AmaqInfo* info_out) {
  AmaqInfo info;
  std::vector<uint8_t> bits;
  LOWBAND_RETURN_IF_ERROR(Validate(payload, &map_, &info, &bits));
  LOWBAND_RETURN_IF_ERROR(CheckOut(info, out));
  DecodeValidated(payload, info, bits, out);
  if (info.has_bitmap) {
    map_.epoch = info.epoch;
    map_.bits = std::move(bits);
  }
  if (info_out) *info_out = info;
  return Status::Ok();
}

}  // namespace lowband::quant
