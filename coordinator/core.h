// The coordinator's transport-free core: membership, per-fragment rounds, streaming aggregation,
// the outer optimizer and the authoritative global state of a Streaming DiLoCo run (DESIGN.md §3,
// §4). The gRPC service (coordinator/service.h) is a thin adapter over it; tests drive it directly.
//
// Protocol in the core's words:
//  - Join checks run id, token and model signature (the first joiner's signature defines the run
//    unless Options::signature is set), and returns a worker id, a session key, the fragment
//    layout, the schedule and codecs, the open round per fragment, and must_seed for the worker
//    that should upload the initial parameters (the first joiner; again another one if the seeder
//    leaves before uploading). SeedState: the first upload becomes the global state and opens
//    round 0 of every fragment; a later different upload is answered accepted=false (Bootstrap).
//  - Round r of fragment p accepts one contribution per member. A contribution is validated in full
//    before it touches state (payload header and CRC via quant::Inspect, format/block/scale equal
//    to the upload codec, element count equal to the fragment's, every decoded value finite), then
//    added into the round's single fp32 accumulator: memory per fragment is a fixed number of
//    fragment-sized buffers (global, momentum, accumulator, scratch), whatever the number of
//    workers. A repeated (worker, fragment, round) is acknowledged as a duplicate, never re-added.
//  - Round r closes when every live member expected in it has contributed, or when round_timeout
//    has passed since its first contribution and it has at least `quorum` contributions. A round
//    past its deadline below quorum stays open (a partial mean is never applied silently): it is
//    reported once (log + counters.rounds_overdue) and closes as soon as the quorum is reached or
//    the missing members contribute or leave. Members are expected from the round that was open
//    when they joined, unless that round already had contributions (then from the next one); a
//    member that left or missed heartbeats for heartbeat_timeout is no longer expected.
//  - Closing: mean = acc / n; OuterOptimizer (Nesterov); payload = Encode(download codec, u); the
//    core applies the payload to its own copy with comm::ApplyOuterUpdate (g -= dec(payload)), the
//    same function workers use, so both hold bit-identical g; round r+1 opens. The last
//    retained_rounds payloads per fragment are kept for GetUpdate; older rounds answer NOT_FOUND
//    ("gone; Bootstrap"). Pushes to a closed round are refused (ABORTED) and counted as late.
//  - Every refusal leaves global state untouched and names what was expected, what came and what
//    to do.
//
// Thread safety: every public method may be called from any thread. One mutex (mu_) guards all
// mutable state (members_, worker_stats_, fragments_, waiters_, counters_, signature/layout,
// seeding and shutdown fields). Waiter callbacks (AwaitUpdate, AwaitSeeded) are invoked exactly
// once unless CancelWait returned true, never with mu_ held (so they may call back into the core),
// either synchronously inside Await* or on the thread whose call completed the wait (Push, Leave,
// Tick, SeedState, CancelAllWaits). They must be short and must not block.
// Lifetimes: the injected Clock must outlive the core. Update payloads are shared immutable buffers
// (shared_ptr<const>) that stay valid for as long as a holder keeps them.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "comm/running_mean.h"
#include "comm/schedule.h"
#include "comm/signature.h"
#include "coordinator/clock.h"
#include "coordinator/outer_optimizer.h"
#include "quant/codec.h"
#include "quant/status.h"

namespace lowband::coordinator {

struct CoordinatorSnapshot;

// One closed round, for logs: what it was made of and the CRC32C of the fragment's global state
// after it (a worker that applied every update up to this round holds exactly that state).
struct RoundRecord {
  uint32_t fragment = 0;
  uint64_t round = 0;
  uint32_t contributions = 0;
  bool at_deadline = false;
  std::string failure;  // "" unless the round failed (the global state did not move)
  uint32_t global_crc = 0;
};

struct CoordinatorOptions {
  // Workers must present this run id; it keeps workers of different runs apart.
  std::string run_id = "lowband";
  // Shared secret workers present at Join (compared in constant time). Empty: workers must send "".
  std::string token;
  // The run's model signature. Unset: the first worker to join defines it.
  std::optional<comm::ModelSignature> signature;
  // P (all fragments) and where the non-block parameters go.
  comm::LayoutOptions layout;
  // H: inner steps between two syncs of the same fragment (told to workers at Join).
  uint64_t inner_steps = 100;
  // tau: inner steps between sending a fragment and applying its update (told to workers).
  uint64_t overlap_steps = 1;
  // alpha: theta = alpha*theta + (1-alpha)*g when a worker applies an update (told to workers).
  float mixing_alpha = 0.5f;
  // Minimum contributions for a round to close at its deadline (not needed when every live
  // member contributed).
  uint32_t quorum = 1;
  // How long a round waits for stragglers after its first contribution.
  std::chrono::milliseconds round_timeout{60'000};
  // A member without any call for this long is dropped from the run (it must Join again).
  std::chrono::milliseconds heartbeat_timeout{30'000};
  // Told to workers: send a heartbeat at least this often (keep well under heartbeat_timeout).
  std::chrono::milliseconds heartbeat_interval{5'000};
  // Outer Nesterov SGD: lr 0.7, momentum 0.9.
  OuterOptimizerOptions outer;
  // Codec workers must use for their contributions (default: FP4 E3M0, blocks of 64).
  quant::CodecSpec upload_codec;
  // Codec of the outer update the coordinator sends back (default: the same FP4 E3M0).
  quant::CodecSpec download_codec;
  // Closed rounds kept per fragment for GetUpdate.
  uint32_t retained_rounds = 4;
  // Time source; nullptr means the steady clock. Not owned.
  const Clock* clock = nullptr;

  // --- Limits (a Join or signature beyond them is refused with RESOURCE_EXHAUSTED).
  // Live members at most.
  uint32_t max_members = 1024;
  // Largest model (fp32 values, every parameter) accepted as the run's signature: the core holds
  // four fragment-sized buffers of it.
  uint64_t max_parameters = uint64_t{1} << 32;

  // --- Durability. Every `checkpoint_every` closed rounds (over all fragments; 0: never) the core
  // hands a snapshot to on_checkpoint, on the thread that closed the round, after mu_ is released.
  // With checkpoint_every = 1 no one gets a closed round's update (GetUpdate answers UNAVAILABLE,
  // waits go on) until on_checkpoint has returned for a snapshot that holds it: an update a worker
  // applied is never lost with the coordinator. (A failed write is the callback's to report; the
  // update is released all the same.) With a larger K updates go out at once, and a coordinator
  // restored from an older checkpoint makes workers resync. on_checkpoint must be thread safe (two
  // rounds may close at once on two threads: compare CoordinatorSnapshot::sequence).
  uint32_t checkpoint_every = 0;
  std::function<void(const CoordinatorSnapshot&)> on_checkpoint;
  // Told of every closed round (after its checkpoint, before its waiters), with mu_ released, on
  // the thread that closed it; must be thread safe. Optional.
  std::function<void(const RoundRecord&)> on_round_closed;
};

// Checks every field; the message names the bad one.
Status Validate(const CoordinatorOptions& options);

// Who is calling (from JoinResult).
struct WorkerKey {
  uint64_t worker_id = 0;
  uint64_t session = 0;
};

struct JoinRequest {
  std::string run_id;
  std::string token;
  comm::ModelSignature signature;
  std::string worker_name;
  std::string host;
  // Random per worker process (0 = none). A repeated Join with the same nonce while the member is
  // live returns the same worker id and session: Join can be retried safely.
  uint64_t join_nonce = 0;
};

struct JoinResult {
  WorkerKey key;
  comm::FragmentLayout layout;
  uint64_t inner_steps = 0;
  uint64_t overlap_steps = 0;
  float mixing_alpha = 0.0f;
  comm::NonBlockPolicy nonblock = comm::NonBlockPolicy::kOwn;
  OuterOptimizerOptions outer;
  quant::CodecSpec upload_codec;
  quant::CodecSpec download_codec;
  std::vector<uint64_t> open_rounds;  // per fragment (all 0 before seeding)
  bool must_seed = false;
  bool seeded = false;
  std::chrono::milliseconds heartbeat_interval{0};
  // Random per coordinator process (a restored one has a new one): a worker that sees it change
  // pushes again what it has not got an update for (the open rounds' contributions are not kept).
  uint64_t incarnation = 0;
};

struct SeedResult {
  // True when this upload is the global state (first upload, or a retry of identical values).
  bool accepted = false;
};

struct BootstrapState {
  std::vector<std::vector<float>> fragments;  // global values per fragment (layout order)
  std::vector<uint64_t> open_rounds;          // the state includes every round before these
  std::vector<uint32_t> crc32c;               // per fragment, over its fp32 bytes
};

struct HeartbeatInfo {
  WorkerKey key;
  uint64_t step = 0;
  float last_loss = 0.0f;
  uint64_t tokens = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  // The worker holds the global state and waits for the others to start (the start barrier).
  bool ready = false;
};

struct HeartbeatResult {
  bool shutdown = false;
  std::string reason;
  std::vector<uint64_t> open_rounds;
  uint32_t live_members = 0;
  bool seeded = false;
  // Live members that have said ready (HeartbeatInfo::ready) since they joined.
  uint32_t ready_members = 0;
  uint64_t incarnation = 0;  // as JoinResult::incarnation
};

struct PushResult {
  bool duplicate = false;      // already applied before; not added again
  uint32_t contributions = 0;  // in the round pushed to
  uint64_t open_round = 0;     // the fragment's open round after the push
};

struct UpdatePayload {
  uint32_t fragment = 0;
  uint64_t round = 0;
  std::shared_ptr<const std::vector<uint8_t>> payload;  // quant payload of the outer update
  uint32_t crc32c = 0;                                  // of the payload bytes
  uint32_t contributions = 0;
};

struct CoordinatorCounters {
  uint64_t joins = 0;
  uint64_t rejoins = 0;  // a Join with the nonce of a member that had left or expired: same id
  uint64_t leaves = 0;
  uint64_t expirations = 0;    // members dropped for missing heartbeats
  uint64_t rounds_closed = 0;  // all fragments
  uint64_t rounds_closed_at_deadline = 0;
  uint64_t rounds_overdue = 0;  // deadlines passed below quorum (each round counted once)
  uint64_t rounds_failed = 0;   // the outer update could not be computed (non-finite, encode)
  uint64_t contributions = 0;   // accepted contributions
  uint64_t duplicate_pushes = 0;
  uint64_t late_pushes = 0;          // pushes to a closed round
  uint64_t refusals = 0;             // every refused call, late pushes included
  uint64_t sync_bytes_in = 0;        // contribution payload bytes received
  uint64_t sync_bytes_out = 0;       // update payload bytes handed out
  uint64_t bootstrap_bytes_in = 0;   // seed bytes received
  uint64_t bootstrap_bytes_out = 0;  // bootstrap bytes handed out
};

struct WorkerStats {
  uint64_t worker_id = 0;
  std::string name;
  std::string host;
  bool live = false;
  SteadyTime joined_at;
  SteadyTime last_seen;
  uint64_t step = 0;
  float last_loss = 0.0f;
  uint64_t tokens = 0;
  uint64_t reported_bytes_sent = 0;  // the worker's own accounting, from heartbeats
  uint64_t reported_bytes_received = 0;
  uint64_t contributions = 0;
  uint64_t duplicate_pushes = 0;
  uint64_t late_pushes = 0;
  uint64_t refusals = 0;
  uint64_t sync_bytes_in = 0;
  uint64_t sync_bytes_out = 0;
  uint64_t bootstrap_bytes_in = 0;
  uint64_t bootstrap_bytes_out = 0;
};

struct RoundStatus {
  uint32_t fragment = 0;
  uint64_t open_round = 0;
  uint32_t contributions = 0;
  uint32_t expected = 0;               // live members expected in the open round
  std::optional<SteadyTime> deadline;  // set by the first contribution
  bool overdue = false;                // deadline passed below quorum
  uint64_t accumulator_bytes = 0;      // bytes of aggregation state held for the open round
};

// Plain copy of everything a checkpoint needs to resume a run (coordinator/checkpoint.h writes
// and reads it). The open rounds' contributions are not part of it: after a restore every open
// round starts empty and the members push again (duplicates are recognised per worker id).
struct ClosedRoundSnapshot {
  uint64_t round = 0;
  uint32_t contributions = 0;
  std::vector<uint64_t> contributors;
  std::vector<uint8_t> payload;  // the encoded update; empty when the round failed
  std::string failure;           // why the round failed ("" when it did not)
};
struct FragmentSnapshot {
  std::vector<float> global;
  std::vector<float> momentum;
  uint64_t open_round = 0;
  std::vector<ClosedRoundSnapshot> closed;  // retained rounds, oldest first
};
struct MemberSnapshot {
  uint64_t id = 0;
  uint64_t session = 0;
  uint64_t nonce = 0;
  std::string name;
  std::string host;
  bool live = false;
  bool ready = false;
  std::vector<uint64_t> expected_from;  // per fragment
};
struct CoordinatorSnapshot {
  std::string run_id;
  // Orders snapshots of one run (counters.rounds_closed when it was taken).
  uint64_t sequence = 0;
  std::optional<comm::ModelSignature> signature;
  comm::LayoutOptions layout;
  bool seeded = false;
  uint32_t seed_crc = 0;
  std::vector<FragmentSnapshot> fragments;  // empty before seeding
  std::vector<MemberSnapshot> members;      // every member ever joined
  uint64_t next_worker_id = 1;
  CoordinatorCounters counters;
};

class CoordinatorCore {
 public:
  using WaitId = uint64_t;
  using UpdateCallback = std::function<void(StatusOr<UpdatePayload>)>;
  using SeededCallback = std::function<void(Status)>;

  static StatusOr<std::unique_ptr<CoordinatorCore>> Create(CoordinatorOptions options);
  // A core that continues the run `snapshot` was taken of: the same global state, momentum, open
  // rounds (empty), retained updates, counters and members (ids, sessions and join nonces), so
  // workers go on with the keys they hold. Members that were live get twice heartbeat_timeout
  // from now to call again. Refuses a snapshot of another run id or fragment layout, or one that is not
  // self-consistent (sizes, rounds), naming what differs.
  static StatusOr<std::unique_ptr<CoordinatorCore>> Restore(CoordinatorOptions options,
                                                            const CoordinatorSnapshot& snapshot);

  CoordinatorCore(const CoordinatorCore&) = delete;
  CoordinatorCore& operator=(const CoordinatorCore&) = delete;
  ~CoordinatorCore();

  const CoordinatorOptions& options() const { return options_; }

  // --- Membership ------------------------------------------------------------------------------
  StatusOr<JoinResult> Join(const JoinRequest& request);
  // Idempotent: leaving twice is OK. Rounds stop waiting for the member.
  Status Leave(const WorkerKey& key);
  StatusOr<HeartbeatResult> Heartbeat(const HeartbeatInfo& info);
  // OK when `token` is the run's (constant-time compare); UNAUTHENTICATED (counted) otherwise.
  // The transport checks it on every call.
  Status CheckToken(std::string_view token, const char* call);
  // OK when `key` is a live member (refreshes its liveness); the refusal otherwise. Lets a
  // transport refuse a stream before its bytes arrive.
  Status CheckMember(const WorkerKey& key, const char* call);

  // --- Global state ----------------------------------------------------------------------------
  // `all` holds every parameter, flat in signature order.
  StatusOr<SeedResult> SeedState(const WorkerKey& key, std::span<const float> all);
  // A copy of the global state (counted as bootstrap traffic). FAILED_PRECONDITION before seeding.
  StatusOr<BootstrapState> Bootstrap(const WorkerKey& key);
  // `done(OK)` once the state is seeded (at once if it is); an error if the key is refused, the
  // seeder left before uploading (then the caller should SeedState itself) or CancelAllWaits.
  WaitId AwaitSeeded(const WorkerKey& key, SeededCallback done);

  // --- Rounds ----------------------------------------------------------------------------------
  // Size checks a push can pass before its bytes arrive: membership, fragment, exact payload size,
  // round (late pushes are refused here, duplicates answered). OK with duplicate=false: go on.
  StatusOr<PushResult> CheckPush(const WorkerKey& key, uint32_t fragment, uint64_t round,
                                 uint64_t payload_bytes);
  // One contribution; see the header comment for validation, duplicates and closing.
  StatusOr<PushResult> Push(const WorkerKey& key, uint32_t fragment, uint64_t round,
                            std::span<const uint8_t> payload);
  // The update of a closed round. UNAVAILABLE while the round is open, OUT_OF_RANGE for a round
  // that has not opened, NOT_FOUND for a round no longer kept.
  StatusOr<UpdatePayload> GetUpdate(const WorkerKey& key, uint32_t fragment, uint64_t round);
  // Like GetUpdate, but waits while the round is open: `done` gets the update when the round
  // closes, or an error (at once for the errors GetUpdate would return).
  WaitId AwaitUpdate(const WorkerKey& key, uint32_t fragment, uint64_t round, UpdateCallback done);
  // True when the wait was removed before its callback ran (the callback will never run); false
  // when the callback has run or is running.
  bool CancelWait(WaitId id);
  // Completes every pending wait with `status` (e.g. UNAVAILABLE at server shutdown).
  void CancelAllWaits(const Status& status);

  // Expires silent members and closes rounds whose deadline passed. Call periodically (the server
  // does every 100 ms) or, in tests, after advancing a ManualClock.
  void Tick();
  // From now on heartbeats answer SHUTDOWN with `reason`.
  void RequestShutdown(std::string reason);

  // --- Observability ---------------------------------------------------------------------------
  CoordinatorCounters counters() const;
  // Seconds from the start of each round's close (the last expected contribution is in) to its
  // update being available to GetUpdate: the mean, the outer step, encoding, applying and, with
  // checkpoint_every = 1, the durable checkpoint the update waits for. Not checkpointed.
  comm::RunningMean round_timing() const;
  std::vector<WorkerStats> workers() const;
  // NOT_FOUND / FAILED_PRECONDITION before the signature is known.
  StatusOr<RoundStatus> round_status(uint32_t fragment) const;
  uint32_t live_members() const;
  bool seeded() const;
  // The layout, once the signature is known.
  std::optional<comm::FragmentLayout> layout() const;
  // Exact size of a valid contribution to `fragment` (for stream size limits).
  StatusOr<uint64_t> ContributionBytes(uint32_t fragment) const;
  // Number of fp32 values SeedState expects (0 before the signature is known).
  uint64_t SeedElements() const;
  // CRC32C of each fragment's global fp32 bytes (empty before seeding): equal CRCs on two copies
  // mean bit-identical values.
  std::vector<uint32_t> GlobalStateCrc() const;
  CoordinatorSnapshot Snapshot() const;
  uint64_t incarnation() const { return incarnation_; }

 private:
  struct Member;
  struct ClosedRound;
  struct FragmentState;
  struct Waiter;
  class Notifications;

  explicit CoordinatorCore(CoordinatorOptions options);

  SteadyTime Now() const { return clock_->Now(); }
  // Returns the live member for `key`, or the refusal (counted).
  StatusOr<Member*> AuthenticateLocked(const WorkerKey& key, const char* call);
  StatusOr<Member*> AdmitPushLocked(const WorkerKey& key, uint32_t fragment);
  Status RefuseLocked(Member* member, Status status);
  Status SetSignatureLocked(const comm::ModelSignature& signature);
  Status RestoreLocked(const CoordinatorSnapshot& snapshot);
  CoordinatorSnapshot SnapshotLocked() const;
  Status CheckFragmentLocked(uint32_t fragment) const;
  // OK(nullopt): the round is open; OK(update): closed and kept; error otherwise.
  StatusOr<std::optional<UpdatePayload>> LookupUpdateLocked(uint32_t fragment, uint64_t round) const;
  // Round checks shared by CheckPush and Push; returns a duplicate result, nullopt to go on, or
  // the refusal.
  StatusOr<std::optional<PushResult>> CheckRoundLocked(Member& member, uint32_t fragment, uint64_t round);
  Status ValidatePayloadLocked(uint32_t fragment, std::span<const uint8_t> payload);
  uint32_t ExpectedLocked(uint32_t fragment) const;
  void MaybeCloseRoundLocked(uint32_t fragment, SteadyTime now, Notifications& notes);
  void CloseRoundLocked(uint32_t fragment, bool at_deadline, Notifications& notes);
  // Completes the waits on `fragment` whose round's update can be handed out (or is refused).
  void ReleaseWaitersLocked(uint32_t fragment, Notifications& notes);
  // With DurableUpdates: the checkpoint of `sequence` closed rounds is written; release its updates.
  void MarkDurable(uint64_t sequence);
  // checkpoint_every == 1: a closed round's update is handed out only once a checkpoint holds it.
  bool DurableUpdates() const { return options_.checkpoint_every == 1; }
  void RemoveMemberLocked(Member& member, const char* why, Notifications& notes);
  void CheckAllRoundsLocked(SteadyTime now, Notifications& notes);
  std::vector<uint64_t> OpenRoundsLocked() const;
  uint32_t LiveMembersLocked() const;

  const CoordinatorOptions options_;
  const Clock* const clock_;
  const OuterOptimizer optimizer_;

  mutable std::mutex mu_;
  // --- guarded by mu_ ---
  std::optional<comm::ModelSignature> signature_;
  std::optional<comm::FragmentLayout> layout_;
  std::map<uint64_t, std::unique_ptr<Member>> members_;  // every member ever joined, live or not
  std::map<uint64_t, WorkerStats> worker_stats_;
  std::vector<std::unique_ptr<FragmentState>> fragments_;
  std::map<WaitId, std::unique_ptr<Waiter>> waiters_;
  CoordinatorCounters counters_;
  comm::RunningMean timing_;  // round_timing()
  bool seeded_ = false;
  uint32_t seed_crc_ = 0;
  uint64_t seeder_ = 0;  // worker told must_seed while unseeded (0: none)
  bool shutdown_ = false;
  std::string shutdown_reason_;
  uint64_t next_worker_id_ = 1;
  WaitId next_wait_id_ = 1;
  uint32_t closes_since_checkpoint_ = 0;
  uint64_t durable_sequence_ = 0;  // rounds closed as of the last checkpoint written (DurableUpdates)
  std::mt19937_64 session_rng_;
  const uint64_t incarnation_;
};

}  // namespace lowband::coordinator
