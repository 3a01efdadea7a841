// Test helpers: a small transformer-shaped model signature and an in-process fake worker that holds
// its own copy of the global fragments, makes encoded contributions and applies encoded updates
// exactly as a real worker does (comm::ApplyOuterUpdate). Header-only; shared by tests/coordinator
// and tests/comm.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include <gtest/gtest.h>

#include "comm/outer_update.h"
#include "comm/schedule.h"
#include "comm/signature.h"
#include "quant/codec.h"

namespace lowband::testing {

// embed (128) | blocks.0 (272) | blocks.1 (272) | blocks.2 (272) | head (128) = 1072 values.
// With 3 fragments and nonblock=own: fragment 0 = blocks 0 and 2, fragment 1 = block 1,
// fragment 2 = embed + head.
inline comm::ModelSignature TestSignature() {
  std::vector<comm::TensorInfo> t = {
      {"embed.weight", {8, 16}, "float32"}, {"blocks.0.w", {16, 16}, "float32"},
      {"blocks.0.b", {16}, "float32"},      {"blocks.1.w", {16, 16}, "float32"},
      {"blocks.1.b", {16}, "float32"},      {"blocks.2.w", {16, 16}, "float32"},
      {"blocks.2.b", {16}, "float32"},      {"head.weight", {16, 8}, "float32"},
  };
  auto s = comm::MakeSignature(std::move(t));
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return *s;
}

// Deterministic initial parameters: every parameter, flat in signature order.
inline std::vector<float> InitialParameters(uint64_t n, uint32_t seed = 7) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.5f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Re-stamps a payload's CRC after a test tampered with its body, so that it passes the checksum
// and exercises the checks behind it. Layout (quant/codec.cc): 32-byte header, CRC32C at offset 28
// over the header with a zero CRC field followed by the body.
inline void RestampCrc(std::vector<uint8_t>& payload) {
  std::memset(payload.data() + 28, 0, 4);
  uint32_t crc = quant::Crc32c(std::span<const uint8_t>(payload.data(), quant::kHeaderBytes));
  crc = quant::Crc32c(
      std::span<const uint8_t>(payload.data() + quant::kHeaderBytes, payload.size() - quant::kHeaderBytes),
      crc);
  std::memcpy(payload.data() + 28, &crc, 4);
}

class FakeWorker {
 public:
  FakeWorker(std::vector<std::vector<float>> global, uint32_t seed) : g_(std::move(global)), rng_(seed) {}

  // An outer gradient delta = g - theta, with theta = g minus a random step, encoded with `spec`.
  std::vector<uint8_t> Contribution(uint32_t fragment, const quant::CodecSpec& spec, float step = 0.01f) {
    std::normal_distribution<float> dist(0.0f, step);
    std::vector<float> delta(g_[fragment].size());
    for (float& d : delta) d = dist(rng_);
    auto payload = quant::Encode(spec, delta);
    EXPECT_TRUE(payload.ok()) << payload.status().ToString();
    return *payload;
  }

  // g_p -= dec(payload), as the worker engine does.
  void Apply(uint32_t fragment, std::span<const uint8_t> payload) {
    Status s = comm::ApplyOuterUpdate(payload, g_[fragment], scratch_);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  std::vector<uint32_t> Crc() const {
    std::vector<uint32_t> crcs;
    for (const auto& f : g_) crcs.push_back(comm::CrcOfFloats(f));
    return crcs;
  }

  std::vector<std::vector<float>>& global() { return g_; }

 private:
  std::vector<std::vector<float>> g_;
  std::vector<float> scratch_;
  std::mt19937 rng_;
};

}  // namespace lowband::testing
