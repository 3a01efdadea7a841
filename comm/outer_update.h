// Applying an encoded outer update to a copy of a global fragment, identically everywhere.
//
// The coordinator encodes the outer update u of a round and applies the *dequantized* encoding to
// its own global copy, g -= dec(enc(u)); every worker applies the same payload to its copy of g.
// Both sides must run exactly the same floating-point operations to hold bit-identical g, so both
// call ApplyOuterUpdate (decode with quant::DecodeInto, then one fp32 subtraction per element; the
// library is compiled without FMA contraction). The worker's mixing step theta = alpha*theta +
// (1-alpha)*g is separate and local.
//
// Thread safety: stateless; concurrent calls on different outputs are safe.
// Lifetimes: nothing is retained.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "quant/status.h"

namespace lowband::comm {

// global[i] -= decoded(payload)[i]. The payload is validated in full (quant::Inspect and a check
// that every decoded value, and every result, is finite) before `global` is modified: on error
// nothing is written.
// `scratch` is resized to global.size() and reused between calls (no allocation once warm).
Status ApplyOuterUpdate(std::span<const uint8_t> payload, std::span<float> global,
                        std::vector<float>& scratch);

// View of fp32 values as their bytes (little-endian on every supported host: the wire format).
std::span<const uint8_t> AsBytes(std::span<const float> values);
// CRC32C of fp32 values' bytes: equal CRCs of two copies of g mean bit-identical values.
uint32_t CrcOfFloats(std::span<const float> values);

}  // namespace lowband::comm
