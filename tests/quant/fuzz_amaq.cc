// libFuzzer target for the AMAQ mixed-bit payload decoder (quant/amaq.h) fed arbitrary bytes.
//
// Input: a control byte, a priming byte, then records (a 16-bit little-endian length and that many
// bytes, the last one cut short by the end of the input). Every record is one payload handed to the
// same AmaqDecoder, so a payload with a bit map can teach the decoder an epoch that a later map-less
// payload refers to. Control bits:
//   bit 0: re-stamp each record's CRC32C (offset 20, over the header with the field zeroed and the
//          body) so that the checks behind the checksum (sizes, bit map, parameters, padding) are
//          reached; without it nearly every mutated payload stops at the checksum.
//   bit 1: prime the decoder with a genuine payload (epoch 1; its shape and widths come from the
//          priming byte) before the records, so map-less records can refer to a known map.
//   bits 2-3: the output span is the header's rows * channels (0, 3), one value short (1) or one
//          value long (2).
// For every record the decoder must either refuse with a Status (leaving the output and its map
// untouched) or decode exactly rows * channels finite values, agreeing with InspectAmaq, with the
// stateless DecodeAmaq, with the sizes AmaqEncodedSize / AmaqPassthroughSize promise and, for a
// passthrough payload, with the bytes AmaqEncoder writes for the decoded values. Any violation
// aborts; ASan/UBSan catch out-of-bounds reads and undefined behaviour.
//   cmake -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
//         -DLOWBAND_FUZZ=ON -DLOWBAND_SANITIZE=address -DLOWBAND_WITH_TORCH=OFF
//   ninja -C build-fuzz fuzz_amaq && ./build-fuzz/tests/quant/fuzz_amaq -max_total_time=600
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

#include "quant/amaq.h"
#include "quant/codec.h"

#include "tests/fuzz_require.h"

namespace {

using namespace lowband::quant;

using lowband::testing::Require;

// The CRC32C the encoder writes at offset 20: header with that field zeroed, then the body.
void RestampCrc(std::vector<uint8_t>& p) {
  if (p.size() < kAmaqHeaderBytes) return;
  std::memset(p.data() + 20, 0, 4);
  uint32_t crc = Crc32c(std::span<const uint8_t>(p.data(), kAmaqHeaderBytes));
  crc = Crc32c(std::span<const uint8_t>(p).subspan(kAmaqHeaderBytes), crc);
  for (int i = 0; i < 4; ++i) p[20 + i] = static_cast<uint8_t>(crc >> (8 * i));
}

// A NaN with a payload no decoder produces: a slot still holding it was never written.
float Sentinel() { return std::numeric_limits<float>::quiet_NaN(); }

std::vector<float> Filled(size_t n) { return std::vector<float>(n, Sentinel()); }

bool Untouched(const std::vector<float>& v) {
  const std::vector<float> ref = Filled(v.size());
  return v.empty() || std::memcmp(v.data(), ref.data(), v.size() * sizeof(float)) == 0;
}

bool SameMap(const AmaqBitmap& a, const AmaqBitmap& b) { return a.epoch == b.epoch && a.bits == b.bits; }

void Prime(AmaqDecoder& dec, uint8_t b) {
  const uint32_t rows = 1 + (b >> 4), channels = 1 + (b & 15);
  std::vector<uint8_t> bits(channels);
  for (uint32_t c = 0; c < channels; ++c) bits[c] = static_cast<uint8_t>(2 + (3 * c + b) % 7);
  std::vector<float> x(size_t{rows} * channels);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i + b));
  AmaqEncoder enc;
  std::vector<uint8_t> payload;
  Require(enc.Encode(x, rows, channels, bits, AmaqOptions{}, &payload).ok());
  std::vector<float> out(x.size());
  Require(dec.Decode(payload, out).ok());
  Require(dec.bitmap().epoch == 1 && dec.bitmap().bits == bits);
}

void OneRecord(AmaqDecoder& dec, std::span<const uint8_t> payload, int size_mode) {
  const lowband::StatusOr<AmaqInfo> inspected = InspectAmaq(payload);
  if (inspected.ok()) {
    const AmaqInfo& i = *inspected;
    Require(i.rows >= 1 && i.rows <= kAmaqMaxRows && i.channels >= 1 && i.channels <= kAmaqMaxChannels);
    Require(uint64_t{i.rows} * i.channels <= kAmaqMaxValues);
    Require(i.passthrough == (i.epoch == 0));
    Require(i.payload_bytes == payload.size());
    if (i.passthrough) Require(payload.size() == AmaqPassthroughSize(i.rows, i.channels));
  }
  const uint64_t n = inspected.ok() ? uint64_t{inspected->rows} * inspected->channels : 16;
  const AmaqBitmap before = dec.bitmap();
  if (n > 4 * uint64_t{payload.size()}) {
    // Every value takes at least 2 bits: no payload this short can carry n values, so the decoder
    // must refuse whatever the span (and a span of n values would only cost memory here).
    std::vector<float> out = Filled(16);
    Require(!dec.Decode(payload, out).ok());
    Require(Untouched(out) && SameMap(before, dec.bitmap()));
    return;
  }
  const size_t size = static_cast<size_t>(n) + (size_mode == 2 ? 1 : 0) - (size_mode == 1 ? 1 : 0);
  std::vector<float> out = Filled(size), stateless = Filled(size);
  AmaqInfo got;
  const lowband::Status s = dec.Decode(payload, out, &got);
  const lowband::Status s2 = DecodeAmaq(payload, before, stateless);
  Require(s.ok() == s2.ok());
  if (!s.ok()) {
    Require(Untouched(out) && Untouched(stateless) && SameMap(before, dec.bitmap()));
    return;
  }
  // Decoded: the header was valid (Inspect agreed), the span had the promised count and every
  // value is finite (so every slot was written: the sentinel is a NaN).
  Require(inspected.ok());
  Require(got.rows == inspected->rows && got.channels == inspected->channels &&
          got.epoch == inspected->epoch);
  Require(got.has_bitmap == inspected->has_bitmap && got.passthrough == inspected->passthrough);
  Require(got.payload_bytes == payload.size());
  Require(out.size() == uint64_t{got.rows} * got.channels);
  for (float v : out) Require(std::isfinite(v));
  Require(std::memcmp(out.data(), stateless.data(), out.size() * sizeof(float)) == 0);
  if (got.passthrough) {
    Require(SameMap(before, dec.bitmap()));
    // Canonical: re-encoding the decoded values gives the same bytes.
    AmaqEncoder enc;
    AmaqOptions opt;
    opt.passthrough = true;
    std::vector<uint8_t> again;
    Require(enc.Encode(out, got.rows, got.channels, {}, opt, &again).ok());
    Require(again.size() == payload.size() && std::memcmp(again.data(), payload.data(), again.size()) == 0);
  } else if (got.has_bitmap) {
    const AmaqBitmap& map = dec.bitmap();
    Require(map.epoch == got.epoch && map.bits.size() == got.channels);
    for (uint8_t b : map.bits) Require(b >= kAmaqMinBits && b <= kAmaqMaxBits);
    Require(payload.size() == AmaqEncodedSize(got.rows, map.bits, /*with_bitmap=*/true));
  } else {
    Require(SameMap(before, dec.bitmap()));
    Require(before.epoch == got.epoch && before.bits.size() == got.channels);
    Require(payload.size() == AmaqEncodedSize(got.rows, before.bits, /*with_bitmap=*/false));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t control = data[0], prime = data[1];
  data += 2;
  size -= 2;
  AmaqDecoder dec;
  if (control & 2) Prime(dec, prime);
  const int size_mode = (control >> 2) & 3;
  int records = 0;
  while (size > 0 && records++ < 8) {
    size_t len = data[0];
    if (size >= 2) len |= size_t{data[1]} << 8;
    const size_t skip = size >= 2 ? 2 : 1;
    data += skip;
    size -= skip;
    len = len < size ? len : size;
    std::vector<uint8_t> payload(data, data + len);
    data += len;
    size -= len;
    if (control & 1) RestampCrc(payload);
    OneRecord(dec, payload, size_mode);
  }
  return 0;
}
