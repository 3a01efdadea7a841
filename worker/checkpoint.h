// Worker checkpoints: the replica's parameters, the inner optimizer's state (AdamW moments and the
// schedule position), named fp32 vectors the caller owns (the engine's global fragment copies, error-
// feedback residuals, ...) and a small caller JSON (round counters, data position), saved atomically.
//
// Layout of a checkpoint directory:
//   <dir>/LATEST                      name of the newest complete checkpoint, replaced atomically
//   <dir>/ckpt-<step>[.<k>]/          one checkpoint (k > 0 when several are saved at the same step)
//       meta.json                     format, step, parameter names/shapes, extra names/sizes, caller JSON
//       model.pt  optimizer.pt  extra.pt     LibTorch archives (torch::serialize)
// A checkpoint is written into a hidden temporary directory, every file fsynced, then renamed into
// place; LATEST is switched only after that, so a crash at any moment leaves LATEST naming a complete
// checkpoint (or no LATEST at all). Older checkpoints beyond `keep_last` are then removed.
//
// Thread safety: one writer per checkpoint directory (the worker's training thread); loading while
// another process saves into the same directory is safe (it reads whatever LATEST names).
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/status.h"
#include "worker/inner_optimizer.h"
#include "worker/model.h"

namespace lowband::worker {

// What the caller stores beside the model and optimizer.
struct CheckpointExtras {
  // Named fp32 vectors, restored exactly (e.g. "global.0" .. "global.P-1": the global fragment copies).
  std::map<std::string, std::vector<float>> vectors;
  // Caller metadata (must be a JSON object), restored as written.
  nlohmann::json metadata = nlohmann::json::object();
};

struct CheckpointOptions {
  // Complete checkpoints kept in the directory after a save (>= 1); older ones are deleted.
  int keep_last = 2;
};

// Saves model parameters, optimizer state and `extras` as a new checkpoint in `dir` (created if
// missing) and makes it the latest. Returns the checkpoint's path.
[[nodiscard]] StatusOr<std::string> SaveCheckpoint(const std::string& dir, Model& model,
                                                   const InnerOptimizer& optimizer,
                                                   const CheckpointExtras& extras,
                                                   const CheckpointOptions& options = {});

// Path of the checkpoint LATEST names; NotFound if `dir` holds no checkpoint yet.
[[nodiscard]] StatusOr<std::string> LatestCheckpoint(const std::string& dir);

// Loads the latest checkpoint of `dir` into `model` (in place) and `optimizer`, and returns the
// extras. The model must have the same parameter names and shapes as the saved one; on any mismatch
// or damage nothing in the model is changed and the status says what differs.
[[nodiscard]] StatusOr<CheckpointExtras> LoadCheckpoint(const std::string& dir, Model& model,
                                                        InnerOptimizer& optimizer);

// Loads only the parameters (no optimizer state, no extras) of the latest checkpoint in `dir`, or of
// `dir` itself when it is one ckpt-* directory, into `model`: the start of a fine-tuning run. Same
// checks as LoadCheckpoint; nothing is changed on a mismatch. Returns the checkpoint's path.
[[nodiscard]] StatusOr<std::string> LoadCheckpointParameters(const std::string& dir, Model& model);

}  // namespace lowband::worker
