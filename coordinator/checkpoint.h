// Coordinator checkpoints: a CoordinatorSnapshot in one file, written atomically and durably, read
// back with every byte checked.
//
// File `<dir>/coordinator.ckpt`:
//   "LBCOORD1" | u64 header length | header (JSON: run, layout, signature, counters, members,
//   per fragment its open round and retained rounds) | blobs (per fragment: global fp32, momentum
//   fp32, then each retained update payload) | u32 CRC32C of everything before it
// all little-endian. A write goes to a temporary file that is fsynced and renamed over the old one
// (comm::WriteFileAtomically): after a crash at any point the file holds the previous checkpoint or
// the new one. The file holds the members' session keys: it is created readable by its owner only.
//
// Thread safety: CheckpointStore::Write may be called from several threads at once; it never
// replaces a newer snapshot (CoordinatorSnapshot::sequence) with an older one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "coordinator/core.h"
#include "quant/status.h"

namespace lowband::coordinator {

// Every counter: its name (checkpoint headers, /status.json, coordinator-result.json, Prometheus
// lowband_<name>_total) and what it counts (Prometheus HELP).
struct CounterField {
  const char* name;
  uint64_t CoordinatorCounters::*field;
  const char* help;
};
std::span<const CounterField> CounterFields();

// Every counter by name.
nlohmann::json CountersToJson(const CoordinatorCounters& counters);

// The bytes of a checkpoint file, and back. Decode refuses a wrong magic, a bad checksum, a
// truncated file or an inconsistent header with DATA_LOSS naming what is wrong.
std::string EncodeCheckpoint(const CoordinatorSnapshot& snapshot);
StatusOr<CoordinatorSnapshot> DecodeCheckpoint(std::string_view bytes);

class CheckpointStore {
 public:
  explicit CheckpointStore(std::filesystem::path dir);

  const std::filesystem::path& path() const { return path_; }
  // Writes `snapshot` unless a newer one was written already (then OK, nothing written).
  Status Write(const CoordinatorSnapshot& snapshot);
  // The checkpoint in the directory; nullopt when there is none; an error when it is unreadable.
  StatusOr<std::optional<CoordinatorSnapshot>> Load() const;
  // Checkpoints written and the time the last one took.
  uint64_t writes() const;
  double last_write_seconds() const;

 private:
  const std::filesystem::path dir_;
  const std::filesystem::path path_;
  mutable std::mutex mu_;
  bool have_written_ = false;      // guarded by mu_
  uint64_t written_sequence_ = 0;  // guarded by mu_
  uint64_t writes_ = 0;            // guarded by mu_
  double last_write_seconds_ = 0;  // guarded by mu_
};

}  // namespace lowband::coordinator
