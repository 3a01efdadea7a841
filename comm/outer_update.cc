#include "comm/outer_update.h"

#include <bit>
#include <cmath>

#include <fmt/format.h>

#include "quant/codec.h"

namespace lowband::comm {

static_assert(std::endian::native == std::endian::little,
              "the protocol sends fp32 values as little-endian bytes; a big-endian host needs byte swaps");

std::span<const uint8_t> AsBytes(std::span<const float> values) {
  return {reinterpret_cast<const uint8_t*>(values.data()), values.size() * sizeof(float)};
}

uint32_t CrcOfFloats(std::span<const float> values) { return quant::Crc32c(AsBytes(values)); }

Status ApplyOuterUpdate(std::span<const uint8_t> payload, std::span<float> global,
                        std::vector<float>& scratch) {
  LOWBAND_ASSIGN_OR_RETURN(const quant::PayloadInfo info, quant::Inspect(payload));
  if (info.element_count != global.size()) {
    return InvalidArgument(
        fmt::format("outer update carries {} values but the fragment has {}; the payload "
                    "belongs to another fragment or model",
                    info.element_count, global.size()));
  }
  scratch.resize(global.size());
  LOWBAND_RETURN_IF_ERROR(quant::DecodeInto(payload, scratch));
  const size_t bad = quant::FirstNonFinite(scratch);
  if (bad != scratch.size()) {
    return InvalidArgument(
        fmt::format("outer update decodes to a non-finite value ({}) at index {}; refusing to "
                    "apply it",
                    scratch[bad], bad));
  }
  for (size_t i = 0; i < global.size(); ++i) {
    if (!std::isfinite(global[i] - scratch[i])) {
      return InvalidArgument(
          fmt::format("outer update would make value {} non-finite ({} - {} overflows); refusing to "
                      "apply it",
                      i, global[i], scratch[i]));
    }
  }
  for (size_t i = 0; i < global.size(); ++i) {
    global[i] -= scratch[i];
  }
  return Status::Ok();
}

}  // namespace lowband::comm
