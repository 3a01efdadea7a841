// The split-learning server: the top of the model for any number of client sessions (DESIGN.md §5).
//
// It holds one frozen base GPT and, per session, that client's LoRA adapters on blocks [cut, n), its
// task head, its AdamW state, and the AMAQ decoder (activations) and encoder (gradients) whose bit
// maps persist across messages. A session is created by SplitHello and outlives its stream: a client
// that lost its connection resumes it by id; it is dropped after SplitFinish or session_timeout_s
// without a stream.
//
// Transport: gRPC's synchronous API, one bidi stream per session. Each message is a forward and
// backward pass of the server's half: compute-bound work that would stall gRPC's callback threads, so
// every stream gets its own thread (bounded by max_sessions) and the base model is shared read-only.
// A bad message (wrong shape, corrupt payload, step out of order, unknown session) ends only its own
// stream, with a status that says what was wrong; nothing of the rejected step is applied and the
// other sessions keep training.
//
// Thread safety: all public methods may be called from any thread. Lifetimes: Shutdown (or the
// destructor) stops accepting, waits for streams to end and frees the sessions.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "comm/tls.h"
#include "quant/status.h"
#include "split/config.h"
#include "worker/config.h"

namespace lowband::split {

inline constexpr uint32_t kSplitProtocolVersion = 1;

struct SplitServerOptions {
  std::string listen = "0.0.0.0:0";
  // Shared secret every SplitHello must carry ("" accepts any; fine on loopback only).
  std::string token;
  worker::ModelConfig model;
  SplitConfig split;
  // Seed of the model init when split.base is "" (tests).
  uint64_t seed = 1;
  // LibTorch intra-op threads (shared by all sessions).
  int threads = 1;
  // Largest message accepted, bytes.
  int max_message_bytes = 256 << 20;
  // TLS (server certificate; with client_ca, mutual TLS). Empty: plaintext.
  comm::TlsServerFiles tls;
};

struct SplitServerCounters {
  int64_t sessions_started = 0;
  int64_t sessions_active = 0;
  int64_t train_steps = 0;
  int64_t eval_batches = 0;
  int64_t rejected = 0;        // streams ended with an error
  int64_t bytes_received = 0;  // activation payloads
  int64_t bytes_sent = 0;      // gradient payloads
};

class SplitServer {
 public:
  // Loads the base model, binds, starts serving. The bound port is port().
  [[nodiscard]] static StatusOr<std::unique_ptr<SplitServer>> Start(const SplitServerOptions& options);
  ~SplitServer();
  SplitServer(const SplitServer&) = delete;
  SplitServer& operator=(const SplitServer&) = delete;

  int port() const;
  // Blocks until Shutdown is called from another thread (or a signal handler's thread).
  void Wait();
  void Shutdown();

  SplitServerCounters counters() const;
  // A session's trainable tensors (adapters, head) by name: detached copies, for tests and tools.
  [[nodiscard]] StatusOr<std::vector<std::pair<std::string, torch::Tensor>>> SessionParameters(
      const std::string& id, bool gradients) const;

  class Impl;

 private:
  explicit SplitServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowband::split
