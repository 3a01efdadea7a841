// libFuzzer target for coordinator checkpoint files: DecodeCheckpoint on arbitrary bytes, and
// CoordinatorCore::Restore on whatever decodes. The input is used two ways: as a whole file, and
// (when the first byte is odd) as edits applied to a genuine checkpoint of a small run (byte flips
// at input-chosen offsets, then the CRC re-stamped, so that the checks behind the checksum — the
// header JSON, the blob bounds, the restore's consistency checks — are reached).
//
// Invariants (abort on violation): decoding never crashes or reads out of bounds (ASan); a file
// that decodes and restores gives a core whose every global value is finite and whose state
// encodes and decodes again to the same bytes; a refused file is refused with DATA_LOSS,
// FAILED_PRECONDITION, INVALID_ARGUMENT or RESOURCE_EXHAUSTED.
//   BUILD_DIR=build-fuzz deploy/fuzz.sh --long 60   (all targets), or
//   ./build-fuzz/tests/coordinator/fuzz_coordinator_checkpoint -max_total_time=600
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include <spdlog/spdlog.h>

#include "coordinator/checkpoint.h"
#include "coordinator/core.h"
#include "quant/codec.h"
#include "tests/coordinator/fake_worker.h"
#include "tests/fuzz_require.h"

namespace lowband::coordinator {
namespace {

using lowband::testing::Require;

CoordinatorOptions Options() {
  CoordinatorOptions o;
  o.run_id = "fuzz";
  o.token = "t";
  o.layout.num_fragments = 3;
  return o;
}

// A checkpoint of a run with two members and two closed rounds of every fragment.
std::string GenuineCheckpoint() {
  auto core = CoordinatorCore::Create(Options());
  Require(core.ok());
  std::vector<WorkerKey> keys;
  for (uint64_t n = 1; n <= 2; ++n) {
    JoinRequest r{"fuzz", "t", lowband::testing::TestSignature(), "w", "h", n};
    auto j = (*core)->Join(r);
    Require(j.ok());
    keys.push_back(j->key);
  }
  Require((*core)->SeedState(keys[0], lowband::testing::InitialParameters(1072)).ok());
  auto b = (*core)->Bootstrap(keys[0]);
  Require(b.ok());
  lowband::testing::FakeWorker w(b->fragments, 3);
  for (uint64_t round = 0; round < 2; ++round) {
    for (uint32_t p = 0; p < 3; ++p) {
      for (const WorkerKey& k : keys)
        Require((*core)->Push(k, p, round, w.Contribution(p, (*core)->options().upload_codec)).ok());
    }
  }
  return EncodeCheckpoint((*core)->Snapshot());
}

void Check(const std::string& bytes) {
  StatusOr<CoordinatorSnapshot> s = DecodeCheckpoint(bytes);
  if (!s.ok()) {
    const StatusCode c = s.status().code();
    Require(c == StatusCode::kDataLoss || c == StatusCode::kInvalidArgument ||
            c == StatusCode::kFailedPrecondition);
    return;
  }
  auto core = CoordinatorCore::Restore(Options(), *s);
  if (!core.ok()) {
    const StatusCode c = core.status().code();
    Require(c == StatusCode::kDataLoss || c == StatusCode::kFailedPrecondition ||
            c == StatusCode::kInvalidArgument || c == StatusCode::kResourceExhausted);
    return;
  }
  const CoordinatorSnapshot again = (*core)->Snapshot();
  for (const FragmentSnapshot& f : again.fragments) {
    for (float v : f.global) Require(std::isfinite(v));
  }
  auto round_trip = DecodeCheckpoint(EncodeCheckpoint(again));
  Require(round_trip.ok());
  Require(EncodeCheckpoint(*round_trip) == EncodeCheckpoint(again));
}

}  // namespace
}  // namespace lowband::coordinator

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lowband::coordinator;
  static const bool quiet = [] {
    spdlog::set_level(spdlog::level::off);
    return true;
  }();
  (void)quiet;
  static const std::string genuine = GenuineCheckpoint();
  Check(std::string(reinterpret_cast<const char*>(data), size));
  if (size >= 1 && (data[0] & 1) != 0) {
    std::string edited = genuine;
    // Pairs of (offset, xor) bytes after the first: flips anywhere in the file but the CRC.
    for (size_t i = 1; i + 2 < size; i += 3) {
      const size_t at = (static_cast<size_t>(data[i]) << 8 | data[i + 1]) % (edited.size() - 4);
      edited[at] = static_cast<char>(edited[at] ^ data[i + 2]);
    }
    const uint32_t crc = lowband::quant::Crc32c(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(edited.data()), edited.size() - 4));
    for (int b = 0; b < 4; ++b) edited[edited.size() - 4 + b] = static_cast<char>((crc >> (8 * b)) & 0xff);
    Check(edited);
  }
  return 0;
}
