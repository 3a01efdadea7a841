// CoordinatorClient: what a worker uses to talk to the coordinator (lowband.v1.Coordinator over
// gRPC), with plain C++ types only.
//
// Every call is synchronous and carries a deadline (ClientOptions) and the run's token (metadata).
// Calls that fail with UNAVAILABLE (coordinator not reachable, restarting, shutting down) are
// retried with exponential backoff inside the call's deadline; a call refused because the
// coordinator no longer knows this worker (it expired, or the coordinator restarted) joins again
// and is retried once; every call is safe to retry: Join carries a per-client nonce
// (a retried Join returns the same membership), SeedState of identical values is accepted again,
// and a repeated push of the same (fragment, round) is acknowledged as a duplicate and applied
// once. Other errors come back at once as a Status with the coordinator's message (see the code
// table at the top of proto/lowband.proto).
//
// Large transfers are chunked (chunks of at most JoinReply::max_chunk_bytes, 1 MiB) and checked
// end to end with CRC32C. Traffic is accounted separately for sync (PushFragment, GetUpdate),
// bootstrap (SeedState, Bootstrap) and control (Join, Heartbeat, Leave): payload bytes (the quant
// payloads or fp32 values themselves) and message bytes (serialized protobuf messages plus gRPC's
// 5-byte message prefix; HTTP/2 framing, headers and TLS are not included).
//
// Thread safety: all methods may be called concurrently from any threads (e.g. a training thread
// sending heartbeats while a communication thread pushes and waits for updates). Join must have
// succeeded before the other calls (they answer FAILED_PRECONDITION otherwise).
// Lifetimes: the client owns its channel; spans passed in need only live for the call.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "comm/schedule.h"
#include "comm/signature.h"
#include "comm/tls.h"
#include "quant/codec.h"
#include "quant/status.h"

namespace lowband::comm {

struct RetryPolicy {
  // Attempts per call, the first included (1 = no retries). The call's deadline bounds them too:
  // with the defaults a call keeps trying (backoff up to 2 s) for as long as its deadline allows,
  // which is what rides out a coordinator restart.
  int max_attempts = 1000;
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{2'000};
  double multiplier = 2.0;
};

struct ClientOptions {
  // Connect waits this long for the channel to come up (0: do not wait; calls retry instead).
  std::chrono::milliseconds connect_timeout{30'000};
  std::chrono::milliseconds join_deadline{30'000};
  // Heartbeat and Leave.
  std::chrono::milliseconds control_deadline{10'000};
  // SeedState upload of the whole model.
  std::chrono::milliseconds seed_deadline{600'000};
  // Bootstrap, including the wait for the first worker's seed.
  std::chrono::milliseconds bootstrap_deadline{600'000};
  // One contribution upload.
  std::chrono::milliseconds push_deadline{120'000};
  // The transfer of one update once its round has closed (GetUpdate's wait for the round is
  // separate: its `timeout`).
  std::chrono::milliseconds update_deadline{120'000};
  RetryPolicy retry;
  // Chunk size for uploads; the coordinator's JoinReply::max_chunk_bytes caps it.
  uint32_t max_chunk_bytes = 1u << 20;
  // TLS to the coordinator (empty: plaintext).
  TlsClientFiles tls;
};

struct JoinParams {
  std::string run_id;
  std::string token;
  ModelSignature signature;
  std::string worker_name;
  std::string host;
};

struct JoinReply {
  uint64_t worker_id = 0;
  // Tensor indices (into the signature) of each fragment, and the fragments' element counts:
  // check them with FragmentLayout::FromAssignment / CheckSameAs against your own layout.
  std::vector<std::vector<uint32_t>> fragment_tensors;
  std::vector<uint64_t> fragment_elements;
  // Streaming DiLoCo settings of the run.
  uint64_t inner_steps = 0;    // H
  uint32_t num_fragments = 0;  // P
  uint64_t overlap_steps = 0;  // tau
  float mixing_alpha = 0.0f;
  NonBlockPolicy nonblock = NonBlockPolicy::kOwn;
  float outer_lr = 0.0f;
  float outer_momentum = 0.0f;
  bool nesterov = true;
  quant::CodecSpec upload_codec;    // encode contributions with this
  quant::CodecSpec download_codec;  // updates arrive in this
  // Per fragment: the round now open (the next contribution goes there after bootstrapping).
  std::vector<uint64_t> open_rounds;
  // This worker uploads the initial parameters with SeedState; the others Bootstrap.
  bool must_seed = false;
  bool seeded = false;
  uint32_t max_chunk_bytes = 0;
  std::chrono::milliseconds heartbeat_interval{0};
  uint64_t incarnation = 0;  // the coordinator process's (see epoch())
};

struct GlobalState {
  std::vector<std::vector<float>> fragments;  // per fragment, flat fp32 (FragmentLayout order)
  std::vector<uint64_t> open_rounds;          // the state includes every round before these
};

struct HeartbeatInfo {
  uint64_t step = 0;
  float last_loss = 0.0f;
  uint64_t tokens = 0;
  bool ready = false;  // holds the global state, waiting at the start barrier
};

struct HeartbeatReply {
  bool shutdown = false;  // the coordinator asks the worker to finish, Leave and exit
  std::string reason;
  std::vector<uint64_t> open_rounds;
  uint32_t live_members = 0;
  bool seeded = false;
  uint32_t ready_members = 0;
};

struct PushReply {
  bool duplicate = false;  // the coordinator had this contribution already
  uint32_t contributions = 0;
  uint64_t open_round = 0;
};

struct TrafficCounters {
  uint64_t sync_payload_bytes_sent = 0;           // contribution payloads
  uint64_t sync_payload_bytes_received = 0;       // update payloads
  uint64_t bootstrap_payload_bytes_sent = 0;      // seed values
  uint64_t bootstrap_payload_bytes_received = 0;  // bootstrap values
  uint64_t sync_message_bytes_sent = 0;
  uint64_t sync_message_bytes_received = 0;
  uint64_t bootstrap_message_bytes_sent = 0;
  uint64_t bootstrap_message_bytes_received = 0;
  uint64_t control_message_bytes_sent = 0;
  uint64_t control_message_bytes_received = 0;
  uint64_t retries = 0;  // attempts beyond the first, all calls
  uint64_t rejoins = 0;  // Joins again after the coordinator had dropped this worker
};

class CoordinatorClient {
 public:
  // Opens a channel to `target` ("host:port"). With connect_timeout > 0, waits for it to connect
  // and answers UNAVAILABLE naming the target if it does not.
  static StatusOr<std::unique_ptr<CoordinatorClient>> Connect(const std::string& target,
                                                              const ClientOptions& options = {});
  ~CoordinatorClient();
  CoordinatorClient(const CoordinatorClient&) = delete;
  CoordinatorClient& operator=(const CoordinatorClient&) = delete;

  StatusOr<JoinReply> Join(const JoinParams& params);
  // Uploads every parameter, flat in signature order. Returns true when this upload became the
  // global state (keep your parameters as g), false when another worker seeded first (Bootstrap).
  StatusOr<bool> SeedState(std::span<const float> all_parameters);
  // Downloads the full-precision global state; waits (server side) until it is seeded.
  StatusOr<GlobalState> Bootstrap();
  StatusOr<HeartbeatReply> Heartbeat(const HeartbeatInfo& info);
  // Uploads one encoded contribution (a quant payload) to round `round` of `fragment`.
  StatusOr<PushReply> PushFragment(uint32_t fragment, uint64_t round, std::span<const uint8_t> payload);
  // The encoded outer update of round `round` of `fragment`, waiting up to `timeout` for the round
  // to close (DEADLINE_EXCEEDED after that: ask again); the transfer itself may then take up to
  // ClientOptions::update_deadline, so a slow link never cuts a transfer short.
  StatusOr<std::vector<uint8_t>> GetUpdate(uint32_t fragment, uint64_t round,
                                           std::chrono::milliseconds timeout);
  Status Leave(const std::string& reason = "");

  // 0 before Join.
  uint64_t worker_id() const;
  // Counts the events after which the coordinator may have lost what this worker pushed to rounds
  // still open: a call that got through only after UNAVAILABLE, a reply from a new coordinator
  // process (a restart from its checkpoint), a Join again. Whoever holds contributions without
  // their update pushes them again when it changes (duplicates are recognised and applied once).
  uint64_t epoch() const;
  TrafficCounters traffic() const;

 private:
  struct Impl;
  explicit CoordinatorClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowband::comm
