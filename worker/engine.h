// The worker's training engine: Streaming DiLoCo (DESIGN.md §3), with DiLoCo as its P=1, tau=0
// case, and the data-parallel baseline (ddp.h) behind the same options and outputs.
//
// A Streaming DiLoCo worker joins the coordinator, seeds or bootstraps the global state, then runs
// `steps` inner AdamW steps on its shard. When fragment p is due at step t it encodes the outer
// gradient g_p - theta_p (with optional error feedback) and hands it to a FragmentExchanger, which
// uploads it and fetches the round's outer update on background threads while training goes on;
// at step t + tau the worker applies g_p -= dec(update) and merges theta_p = alpha * theta_p +
// (1 - alpha) * g_p. A late update stalls (late = wait, counted) or is applied when it arrives
// (late = defer). Worker 0 evaluates the global parameters every eval_every steps. A worker may be a
// site of several ranks (EngineOptions::ranks).
//
// Outputs: a JSONL metrics file (step and eval records) and a JSON result file at the end (see
// docs/run-outputs.md). Thread safety: RunWorker is one training run; call it once per process.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "comm/tls.h"
#include "quant/status.h"
#include "worker/config.h"

namespace lowband::worker {

struct EngineOptions {
  // "streaming", "diloco" or "ddp".
  std::string algo = "streaming";
  int64_t steps = 600;
  int64_t eval_every = 50;
  int64_t log_every = 10;
  uint64_t seed = 1;
  ModelConfig model;
  DataConfig data;
  InnerOptimizerConfig inner;
  // This worker's index (= its data shard) and the number of workers.
  int worker_index = 0;
  int num_workers = 1;
  // Evaluate the global parameters (worker 0 does; evaluation is identical on every worker).
  bool evaluate = true;

  // --- Streaming DiLoCo / DiLoCo: the schedule itself comes from the coordinator's Join reply.
  std::string coordinator;  // host:port
  std::string run_id = "lowband";
  std::string token;
  std::string worker_name;
  bool error_feedback = false;
  // "wait" or "defer".
  std::string late = "wait";
  // Training starts once num_workers workers have joined; give up after this long.
  std::chrono::milliseconds start_timeout{300'000};
  // How long to wait for a round to close before giving up.
  std::chrono::milliseconds update_timeout{600'000};
  // TLS to the coordinator (empty: plaintext).
  comm::TlsClientFiles tls;

  // --- ddp: c10d TCPStore address (rank 0 hosts it) and the timeout of every collective.
  std::string store_address;
  std::chrono::milliseconds collective_timeout{300'000};

  // --- A site (streaming, diloco): this worker is `ranks` processes that train one replica
  // data-parallel, all-reducing gradients every inner step through c10d Gloo, or NCCL for a model on a
  // GPU in a CUDA build (collectives.h), with rendezvous at the TCPStore `site_store`, hosted by rank
  // 0; collectives time out after collective_timeout. Rank 0 (the site's leader) alone talks to the
  // coordinator: it encodes and sends the due fragments and passes each round's encoded update to the
  // other ranks, which apply it as it does. Every rank draws the site's batch (ranks x
  // data.batch_size examples) and trains on its own slice of it, so a site of R ranks trains like one
  // rank with an R times larger batch. Token counts are the site's.
  int rank = 0;
  int ranks = 1;
  std::string site_store;
  // Compare every rank's parameters and global copy (CRC32C digests) every N steps; 0: at the end only.
  int64_t site_check_every = 0;
  // The store of the site (or of ddp) is hosted outside lowband, e.g. by torchrun's agent: every rank
  // connects as a client, with keys under store_prefix (collectives.h GroupOptions).
  bool external_store = false;
  std::string store_prefix = "";

  // --- Outputs.
  std::string metrics_path;  // JSONL, "" for none
  std::string result_path;   // JSON, "" for none
  // Worker checkpoints: every N steps into checkpoint_dir (0: only at the end; "" for none).
  std::string checkpoint_dir;
  int64_t checkpoint_every = 0;
  // Resume from the latest checkpoint in checkpoint_dir.
  bool resume = false;
};

// Runs the whole training of this worker; returns when done (or on the first error).
Status RunWorker(const EngineOptions& options);

}  // namespace lowband::worker
