// The split-learning client: the bottom of the model on the client's own data (DESIGN.md §5).
//
// Per training step: forward through Embed + Blocks[0, cut) with the client's LoRA adapters, encode
// the cut activations X with AMAQ (the BitAllocator's bits), send them with the targets, receive the
// loss and dL/dX^ (AMAQ), backpropagate it into the adapters (straight-through: X gets dL/dX^), step
// AdamW, and let the allocator learn from X and dL/dX^ (and X^, which only its "sample" estimate reads).
// Evaluation sends activations only.
//
// The connection: one gRPC bidi stream (SplitLearning.Train) with keepalive, so a dead server is
// noticed. When the stream breaks (UNAVAILABLE, a reset), the client reconnects with resume_session
// and resends the step the server has not applied (the bit maps are resent too); if the server had
// applied it and only the reply was lost, the client skips its own update for that step and says so.
// Any other error (the server rejected a message) is returned as it is.
//
// Thread safety: one thread. Lifetimes: owns its base model copy, its adapters and the channel.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/tls.h"
#include "quant/amaq.h"
#include "quant/status.h"
#include "split/amaq.h"
#include "split/config.h"
#include "split/model.h"
#include "worker/config.h"
#include "worker/model.h"

namespace lowband::split {

struct SplitClientOptions {
  std::string server;  // host:port
  std::string token;
  std::string name;  // shown by the server; names its saved adapters
  worker::ModelConfig model;
  SplitConfig split;
  worker::InnerOptimizerConfig inner;  // lr schedule, weight decay, clipping (both sides)
  uint64_t seed = 1;
  int64_t total_steps = 1000;  // planned length, for AMAQ's target schedule (inner.total_steps drives the lr)
  int num_classes = 2;         // classify
  int threads = 1;
  double connect_timeout_s = 30;
  int max_reconnects = 5;
  int max_message_bytes = 256 << 20;
  // TLS to the server (empty: plaintext).
  comm::TlsClientFiles tls;
};

struct StepReport {
  int64_t step = 0;
  double loss = 0;
  int64_t correct = 0, count = 0;
  quant::AmaqStats up, down;  // activation and gradient payloads
  // grad_codec amaq: the server's gradient gates' noise against uniform widths (1 otherwise).
  double grad_noise_vs_uniform = 1;
  // The reply was lost after the server applied the step: no loss, no gradient, nothing to count.
  bool skipped_client_update = false;
};

struct EvalReport {
  double loss = 0;                 // mean per target
  std::optional<double> accuracy;  // classify
  int64_t count = 0, examples = 0;
};

class SplitClient {
 public:
  // Loads the base model (split.base), builds the client half and the allocator, connects and opens a
  // session (Hello/Welcome).
  [[nodiscard]] static StatusOr<std::unique_ptr<SplitClient>> Connect(const SplitClientOptions& options);
  ~SplitClient();
  SplitClient(const SplitClient&) = delete;
  SplitClient& operator=(const SplitClient&) = delete;

  // One training step on `batch` (inputs [B, T] tokens, targets, lengths for classify).
  [[nodiscard]] StatusOr<StepReport> Train(const worker::Batch& batch);
  // Loss (and accuracy) of the current adapters on `batches`, through the same cut codec.
  [[nodiscard]] StatusOr<EvalReport> Evaluate(const std::vector<worker::Batch>& batches);
  // Ends the session; the server saves its adapters when `save_server`; this side saves its own
  // into `client_dir` unless it is "". Returns where the server saved ("" if not).
  [[nodiscard]] StatusOr<std::string> Finish(bool save_server, const std::string& client_dir);

  const std::string& session_id() const;
  int64_t next_step() const;
  ClientHalf& half();
  BitAllocator& allocator();
  // Connections opened after the first (reconnects).
  int reconnects() const;

  class Impl;

 private:
  explicit SplitClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowband::split
