// quant/amaq: the AMAQ mixed-bit wire codec for split learning's cut tensors (DESIGN.md §5).
//
// It encodes a row-major fp32 matrix X of [rows, channels] (rows = tokens, channels = hidden
// features) with a per-channel integer bit width b_c in [2, 8]: asymmetric uniform quantization per
// channel (min_c = min over rows of X[:, c], scale_c = (max_c - min_c) / (2^b_c - 1), code =
// round((x - min_c) / scale_c), decode x^ = min_c + scale_c * code), with round-to-nearest or
// reproducible stochastic rounding (for gradients), or fp32 passthrough (the uncompressed baseline
// through the same API). Codes are packed by bit width, and the per-channel bit map travels only
// when it changes: AmaqEncoder remembers the map it last sent and AmaqDecoder the map it last
// received, both tagged with an epoch number. Decode validates the whole payload (magic, version,
// flags, limits, exact size, CRC32C, bit map, non-finite parameters) before writing one output
// value, and never reads outside the payload, whatever its bytes.
//
// Thread safety: the free functions are stateless and safe to call concurrently. An AmaqEncoder or
// AmaqDecoder is single-threaded: use one per stream (e.g. one per split-learning session and
// direction), and do not call it from two threads at once. Lifetimes: nothing keeps the caller's
// spans past the call; encoder and decoder own copies of their bit maps.
//
// Wire layout (little-endian; docs/payload.md, section "AMAQ payload", has the same table):
//   offset size  field
//   0      4     magic "AMQ1" (bytes 41 4D 51 31)
//   4      1     version (1)
//   5      1     flags: bit 0 has bit map, bit 1 stochastic rounding (informational), bit 2 fp32
//                passthrough; the other bits are 0; passthrough excludes bits 0 and 1
//   6      2     reserved, 0
//   8      4     rows R (1..2^24)
//   12     4     channels C (1..2^20); R * C <= 2^31
//   16     4     bit map epoch (>= 1; 0 in passthrough payloads)
//   20     4     CRC32C of the header (with this field as 0) and everything after it
//   24     ...   body:
//     passthrough: the R * C values as fp32, row-major.
//     otherwise:
//       if has bit map: ceil(3 C / 8) bytes, channel c's (b_c - 2) at bits [3c, 3c + 3), LSB
//         first; values 0..6; the padding bits are 0.
//       per channel, in channel order: min_c then scale_c, fp32 (8 C bytes).
//       the codes: channels grouped by bit width (every 2-bit channel in ascending channel order,
//         then the 3-bit ones, ... then the 8-bit ones), each channel's R codes (rows in order)
//         one after the other; one LSB-first bitstream of sum_c R * b_c bits, padded with 0 bits
//         to a byte only at its very end.
//   A payload without a bit map uses the map of its epoch, which the decoder must already hold.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "quant/codec.h"
#include "quant/status.h"

namespace lowband::quant {

inline constexpr size_t kAmaqHeaderBytes = 24;
inline constexpr int kAmaqMinBits = 2;
inline constexpr int kAmaqMaxBits = 8;
inline constexpr uint32_t kAmaqMaxRows = uint32_t{1} << 24;
inline constexpr uint32_t kAmaqMaxChannels = uint32_t{1} << 20;
inline constexpr uint64_t kAmaqMaxValues = uint64_t{1} << 31;  // rows * channels

struct AmaqOptions {
  // fp32 on the wire, no quantization (the baseline). `bits` is then ignored (it may be empty) and
  // the encoder's bit-map state is left as it is.
  bool passthrough = false;
  Rounding rounding = Rounding::kNearest;
  // Stochastic rounding draws u = hash(seed, r * C + c) for X[r, c] (quant's hash, as in
  // CodecSpec::seed): the same seed gives the same bytes; use a fresh seed per message.
  uint64_t seed = 0;
};

// A bit map and its epoch. Epoch 0 means "no map yet".
struct AmaqBitmap {
  uint32_t epoch = 0;
  std::vector<uint8_t> bits;  // b_c per channel, 2..8
};

// Where a payload's bytes go (Encode fills one; AmaqBreakdown predicts one).
struct AmaqStats {
  uint64_t header_bytes = 0;
  uint64_t bitmap_bytes = 0;  // 0 when the map was not sent: the overhead the map costs
  uint64_t param_bytes = 0;   // min and scale, 8 per channel
  uint64_t code_bytes = 0;    // the packed codes (fp32 values in passthrough)
  uint64_t total_bytes = 0;
  double code_bits_per_value = 0;   // code bits / (rows * channels): the mean b_c (32 in passthrough)
  double total_bits_per_value = 0;  // 8 * total_bytes / (rows * channels)
  bool bitmap_sent = false;
  uint32_t epoch = 0;  // the payload's bit-map epoch (0 in passthrough)
};

// What a payload's header says (see InspectAmaq).
struct AmaqInfo {
  uint32_t rows = 0;
  uint32_t channels = 0;
  bool has_bitmap = false;
  bool passthrough = false;
  Rounding rounding = Rounding::kNearest;
  uint32_t epoch = 0;
  uint64_t payload_bytes = 0;  // the validated size; for a payload without a map, just its length
};

// --- Sizes -----------------------------------------------------------------------------------
// Byte breakdown of a quantized payload for these bits (channels = bits.size()); widths outside
// [2, 8] are clamped into it. Passthrough: AmaqPassthroughBreakdown.
AmaqStats AmaqBreakdown(uint32_t rows, std::span<const uint8_t> bits, bool with_bitmap);
AmaqStats AmaqPassthroughBreakdown(uint32_t rows, uint32_t channels);
// Exact payload size, header included: AmaqBreakdown(...).total_bytes.
uint64_t AmaqEncodedSize(uint32_t rows, std::span<const uint8_t> bits, bool with_bitmap);
uint64_t AmaqPassthroughSize(uint32_t rows, uint32_t channels);

// Per channel, the largest round-to-nearest error the encoder allows for X with these bits:
// scale_c / 2, with scale_c computed exactly as Encode does (0 for a constant channel). Decoded
// values can differ from X by this plus fp32 rounding of the decode arithmetic (a few ulps of
// max(|min_c|, |max_c|)). Stochastic rounding's error is below scale_c (twice this).
StatusOr<std::vector<float>> AmaqNearestErrorBounds(std::span<const float> x, uint32_t rows,
                                                    uint32_t channels, std::span<const uint8_t> bits);

// --- Encode ----------------------------------------------------------------------------------
class AmaqEncoder {
 public:
  // Encodes x ([rows, channels], row-major) into *payload (resized to the exact size). The bit map
  // is included, under a new epoch (1 for the first map), on the first call, when `bits` differ
  // from the last map sent, when the channel count changed, and after ForceBitmap(); otherwise the
  // payload refers to the last map's epoch. Errors (nothing changes, *payload included): x.size()
  // != rows * channels, rows or channels out of range, bits.size() != channels, a width outside
  // [2, 8] (names the channel), a NaN/Inf (names the first bad row and channel in row-major
  // order), a channel whose range overflows fp32.
  Status Encode(std::span<const float> x, uint32_t rows, uint32_t channels, std::span<const uint8_t> bits,
                const AmaqOptions& options, std::vector<uint8_t>* payload, AmaqStats* stats = nullptr);
  // The next quantized payload carries the map (under a new epoch) even if it is unchanged: call
  // it after a reconnect, or when the decoder reported an unknown epoch.
  void ForceBitmap() { force_bitmap_ = true; }
  // The last map sent (epoch 0 before the first).
  const AmaqBitmap& last_sent() const { return sent_; }

 private:
  AmaqBitmap sent_;
  bool force_bitmap_ = false;
};

// --- Decode ----------------------------------------------------------------------------------
// Checks the header (magic, version, flags, reserved, limits, epoch) and the CRC32C. A payload
// that carries its map (or is passthrough) is validated completely, exact size and body values
// included; one without a map is sized by the decoder's map, so only Decode can finish checking it.
StatusOr<AmaqInfo> InspectAmaq(std::span<const uint8_t> payload);

// Stateless decode into out (rows * channels values, row-major). A payload without a map is
// decoded with `known` (its epoch must equal the payload's); one with a map ignores `known`.
// Nothing is written unless the whole payload is valid.
// `info`, when given, receives what the header said (as InspectAmaq would, without a second pass).
Status DecodeAmaq(std::span<const uint8_t> payload, const AmaqBitmap& known, std::span<float> out,
                  AmaqInfo* info = nullptr);

class AmaqDecoder {
 public:
  // Decodes into out (rows * channels values, row-major) and, when the payload carries a map,
  // adopts it. A payload without a map whose epoch is not this decoder's gets FAILED_PRECONDITION
  // ("bit map epoch N unknown to this decoder (it has M): the sender must resend the map"). On any
  // error neither `out` nor the decoder's map changes.
  // `info`, when given, receives what the header said.
  Status Decode(std::span<const uint8_t> payload, std::span<float> out, AmaqInfo* info = nullptr);
  // The last map received (epoch 0 before the first).
  const AmaqBitmap& bitmap() const { return map_; }
  // Forgets the map (e.g. on a new session): the next payload must carry one.
  void Reset() { map_ = {}; }

 private:
  AmaqBitmap map_;
};

}  // namespace lowband::quant
