#include "coordinator/core.h"

#include <algorithm>
#include <cmath>
#include <string_view>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "comm/outer_update.h"

namespace lowband::coordinator {

namespace {

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

bool Contains(const std::vector<uint64_t>& ids, uint64_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

// SplitMix64 finalizer: a per-(run, fragment, round) seed for stochastic rounding of updates.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

std::string CodecName(const quant::CodecSpec& spec) {
  if (!quant::IsBlockwise(spec.format)) {
    return std::string(quant::FormatName(spec.format));
  }
  return fmt::format("{} (block {}, {} scales)", quant::FormatName(spec.format), spec.block_size,
                     quant::ScaleTypeName(spec.scale_type));
}

double Seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

// Runs queued callbacks when it goes out of scope. Declared before the lock in every method that
// completes waits, so the callbacks run after mu_ is released.
class CoordinatorCore::Notifications {
 public:
  Notifications() = default;
  Notifications(const Notifications&) = delete;
  Notifications& operator=(const Notifications&) = delete;
  ~Notifications() {
    for (auto& f : fns_) {
      f();
    }
  }
  void Add(std::function<void()> f) { fns_.push_back(std::move(f)); }

 private:
  std::vector<std::function<void()>> fns_;
};

struct CoordinatorCore::Member {
  uint64_t id = 0;
  uint64_t session = 0;
  uint64_t nonce = 0;
  bool live = true;
  bool ready = false;  // said ready in a heartbeat (start barrier)
  SteadyTime last_seen;
  // Per fragment: the first round that waits for this member.
  std::vector<uint64_t> expected_from;
};

struct CoordinatorCore::ClosedRound {
  uint64_t round = 0;
  uint64_t sequence = 0;  // counters_.rounds_closed once it closed (checkpoints are ordered by it)
  Status failure;         // non-OK when the round's update could not be computed
  UpdatePayload update;
  std::vector<uint64_t> contributors;
  SteadyTime closing_started{};  // when the close began (for round_timing())
};

struct CoordinatorCore::FragmentState {
  uint64_t elements = 0;
  // Allocated at seeding, then reused: the only fragment-sized buffers the core holds.
  std::vector<float> global;
  std::vector<float> momentum;
  std::vector<float> accumulator;  // sum of the open round's decoded contributions
  std::vector<float> scratch;      // decoded contribution under validation; next momentum at close
  uint64_t open_round = 0;
  std::vector<uint64_t> contributors;  // worker ids in the open round
  std::optional<SteadyTime> deadline;  // first contribution + round_timeout
  bool overdue_reported = false;
  std::deque<ClosedRound> closed;  // the last retained_rounds, oldest first
};

struct CoordinatorCore::Waiter {
  bool for_seed = false;
  uint64_t worker_id = 0;
  uint32_t fragment = 0;
  uint64_t round = 0;
  UpdateCallback on_update;
  SeededCallback on_seeded;
};

Status Validate(const CoordinatorOptions& o) {
  if (o.run_id.empty()) {
    return InvalidArgument("run_id must not be empty");
  }
  LOWBAND_RETURN_IF_ERROR(
      comm::FragmentSchedule::Create(o.inner_steps, o.layout.num_fragments, o.overlap_steps).status());
  if (!(o.mixing_alpha >= 0.0f && o.mixing_alpha <= 1.0f)) {
    return InvalidArgument(fmt::format("mixing_alpha must be in [0, 1], got {}", o.mixing_alpha));
  }
  if (o.quorum == 0) {
    return InvalidArgument("quorum must be at least 1 contribution, got 0");
  }
  if (o.round_timeout.count() <= 0) {
    return InvalidArgument(fmt::format("round_timeout must be positive, got {} ms", o.round_timeout.count()));
  }
  if (o.heartbeat_timeout.count() <= 0) {
    return InvalidArgument(
        fmt::format("heartbeat_timeout must be positive, got {} ms", o.heartbeat_timeout.count()));
  }
  if (o.heartbeat_interval.count() <= 0 || o.heartbeat_interval >= o.heartbeat_timeout) {
    return InvalidArgument(
        fmt::format("heartbeat_interval ({} ms) must be positive and shorter than "
                    "heartbeat_timeout ({} ms)",
                    o.heartbeat_interval.count(), o.heartbeat_timeout.count()));
  }
  if (o.retained_rounds == 0) {
    return InvalidArgument("retained_rounds must be at least 1, got 0");
  }
  if (o.max_members == 0) {
    return InvalidArgument("max_members must be at least 1, got 0");
  }
  if (o.max_parameters == 0) {
    return InvalidArgument("max_parameters must be at least 1, got 0");
  }
  if (o.checkpoint_every > 0 && !o.on_checkpoint) {
    return InvalidArgument("checkpoint_every is set but there is no on_checkpoint to hand snapshots to");
  }
  LOWBAND_RETURN_IF_ERROR(Validate(o.outer));
  Status s = quant::Validate(o.upload_codec);
  if (!s.ok()) {
    return s.WithContext("upload_codec");
  }
  s = quant::Validate(o.download_codec);
  if (!s.ok()) {
    return s.WithContext("download_codec");
  }
  return Status::Ok();
}

StatusOr<std::unique_ptr<CoordinatorCore>> CoordinatorCore::Create(CoordinatorOptions options) {
  LOWBAND_RETURN_IF_ERROR(Validate(options));
  std::unique_ptr<CoordinatorCore> core(new CoordinatorCore(std::move(options)));
  if (core->options_.signature) {
    std::lock_guard<std::mutex> lock(core->mu_);
    Status s = core->SetSignatureLocked(*core->options_.signature);
    if (!s.ok()) {
      return s.WithContext("CoordinatorOptions.signature");
    }
  }
  return core;
}

StatusOr<std::unique_ptr<CoordinatorCore>> CoordinatorCore::Restore(CoordinatorOptions options,
                                                                    const CoordinatorSnapshot& snapshot) {
  LOWBAND_ASSIGN_OR_RETURN(std::unique_ptr<CoordinatorCore> core, Create(std::move(options)));
  std::lock_guard<std::mutex> lock(core->mu_);
  LOWBAND_RETURN_IF_ERROR(
      core->RestoreLocked(snapshot).WithContext("restoring the coordinator's checkpoint"));
  return core;
}

CoordinatorCore::CoordinatorCore(CoordinatorOptions options)
    : options_(std::move(options)),
      clock_(options_.clock != nullptr ? options_.clock : &SteadyClock::Instance()),
      optimizer_(options_.outer),
      session_rng_(std::random_device{}()),
      incarnation_(Mix(session_rng_()) | 1) {}

CoordinatorCore::~CoordinatorCore() {
  CancelAllWaits(Unavailable("the coordinator core is being destroyed"));
}

// --- helpers (mu_ held) ---------------------------------------------------------------------

Status CoordinatorCore::RefuseLocked(Member* member, Status status) {
  ++counters_.refusals;
  if (member != nullptr) {
    ++worker_stats_[member->id].refusals;
  }
  return status;
}

StatusOr<CoordinatorCore::Member*> CoordinatorCore::AuthenticateLocked(const WorkerKey& key,
                                                                       const char* call) {
  auto it = members_.find(key.worker_id);
  if (it == members_.end()) {
    return RefuseLocked(nullptr, FailedPrecondition(fmt::format("{}: worker {} is not a member of run '{}'; "
                                                                "Join first",
                                                                call, key.worker_id, options_.run_id)));
  }
  Member& m = *it->second;
  if (m.session != key.session) {
    return RefuseLocked(nullptr,
                        PermissionDenied(fmt::format("{}: the session key does not match member {}'s; "
                                                     "use the worker id and session from your own "
                                                     "JoinReply",
                                                     call, key.worker_id)));
  }
  if (!m.live) {
    return RefuseLocked(&m, FailedPrecondition(fmt::format(
                                "{}: worker {} is no longer a member of run '{}' (it "
                                "left, or sent nothing for more than {} ms); Join "
                                "again and Bootstrap",
                                call, key.worker_id, options_.run_id, options_.heartbeat_timeout.count())));
  }
  m.last_seen = Now();
  worker_stats_[m.id].last_seen = m.last_seen;
  return &m;
}

Status CoordinatorCore::SetSignatureLocked(const comm::ModelSignature& signature) {
  LOWBAND_RETURN_IF_ERROR(comm::ValidateSignature(signature));
  if (signature.total_elements() > options_.max_parameters) {
    return Status(StatusCode::kResourceExhausted,
                  fmt::format("the model has {} parameters, more than this coordinator's limit of {} "
                              "(max_parameters: it holds four fp32 copies); raise the limit if the "
                              "model is meant to be this large",
                              signature.total_elements(), options_.max_parameters));
  }
  LOWBAND_ASSIGN_OR_RETURN(comm::FragmentLayout layout,
                           comm::FragmentLayout::Create(signature, options_.layout));
  fragments_.clear();
  for (const comm::FragmentInfo& f : layout.fragments()) {
    auto fs = std::make_unique<FragmentState>();
    fs->elements = f.element_count;
    fragments_.push_back(std::move(fs));
  }
  signature_ = signature;
  layout_ = std::move(layout);
  return Status::Ok();
}

Status CoordinatorCore::CheckFragmentLocked(uint32_t fragment) const {
  if (!layout_) {
    return FailedPrecondition("no model signature yet: the first worker's Join defines it");
  }
  if (fragment >= layout_->num_fragments()) {
    return InvalidArgument(fmt::format("fragment {} does not exist: the run has {} fragments (0..{})",
                                       fragment, layout_->num_fragments(), layout_->num_fragments() - 1));
  }
  return Status::Ok();
}

std::vector<uint64_t> CoordinatorCore::OpenRoundsLocked() const {
  std::vector<uint64_t> rounds;
  for (const auto& fs : fragments_) {
    rounds.push_back(fs->open_round);
  }
  return rounds;
}

uint32_t CoordinatorCore::LiveMembersLocked() const {
  uint32_t n = 0;
  for (const auto& [id, m] : members_) {
    n += m->live ? 1 : 0;
  }
  return n;
}

uint32_t CoordinatorCore::ExpectedLocked(uint32_t fragment) const {
  const uint64_t round = fragments_[fragment]->open_round;
  uint32_t n = 0;
  for (const auto& [id, m] : members_) {
    n += (m->live && m->expected_from[fragment] <= round) ? 1 : 0;
  }
  return n;
}

// --- membership -----------------------------------------------------------------------------

StatusOr<JoinResult> CoordinatorCore::Join(const JoinRequest& request) {
  std::lock_guard<std::mutex> lock(mu_);
  if (request.run_id != options_.run_id) {
    return RefuseLocked(nullptr,
                        FailedPrecondition(fmt::format("this coordinator serves run '{}', the worker "
                                                       "asked for run '{}'; point the worker at the "
                                                       "right coordinator or fix its run id",
                                                       options_.run_id, request.run_id)));
  }
  if (!ConstantTimeEquals(request.token, options_.token)) {
    return RefuseLocked(nullptr,
                        Status(StatusCode::kUnauthenticated,
                               fmt::format("the token presented by worker '{}' does not match run '{}''s "
                                           "token; start the worker with the run's token",
                                           request.worker_name, options_.run_id)));
  }
  if (Status s = comm::ValidateSignature(request.signature); !s.ok()) {
    return RefuseLocked(nullptr, s.WithContext("Join: the worker's model signature is malformed"));
  }
  if (signature_) {
    if (Status s = comm::CompareSignatures(*signature_, request.signature); !s.ok()) {
      return RefuseLocked(nullptr, s);
    }
  } else if (Status s = SetSignatureLocked(request.signature); !s.ok()) {
    return RefuseLocked(nullptr, s.WithContext("Join: cannot split the worker's model into fragments"));
  }

  const SteadyTime now = Now();
  Member* member = nullptr;
  if (request.join_nonce != 0) {
    for (auto& [id, m] : members_) {
      if (m->nonce == request.join_nonce) {
        member = m.get();
      }
    }
  }
  if (member == nullptr || !member->live) {
    if (LiveMembersLocked() >= options_.max_members) {
      return RefuseLocked(nullptr, Status(StatusCode::kResourceExhausted,
                                          fmt::format("run '{}' has {} live members, this coordinator's "
                                                      "limit (max_members); wait for one to leave or "
                                                      "raise the limit",
                                                      options_.run_id, options_.max_members)));
    }
  }
  const bool rejoin = member != nullptr && !member->live;
  if (member == nullptr || rejoin) {
    std::unique_ptr<Member> fresh;
    Member* m = member;
    if (m == nullptr) {
      fresh = std::make_unique<Member>();
      m = fresh.get();
      m->id = next_worker_id_++;
      m->nonce = request.join_nonce;
    }
    // A member that left or expired comes back under its id (so a contribution it made before is
    // still recognised as its own) with a new session key.
    do {
      m->session = session_rng_();
    } while (m->session == 0);
    m->live = true;  // a member that comes back keeps `ready`: it has passed the start barrier
    m->expected_from.assign(fragments_.size(), 0);
    for (size_t p = 0; p < fragments_.size(); ++p) {
      // A round that already has contributions is well under way: do not make it wait for a
      // newcomer that still has to bootstrap (it may still contribute while the round is open).
      const FragmentState& fs = *fragments_[p];
      m->expected_from[p] = fs.open_round + (seeded_ && !fs.contributors.empty() ? 1 : 0);
    }
    WorkerStats& stats = worker_stats_[m->id];
    stats.worker_id = m->id;
    stats.name = request.worker_name;
    stats.host = request.host;
    stats.joined_at = now;
    stats.live = true;
    member = m;
    if (fresh) {
      members_[m->id] = std::move(fresh);
      ++counters_.joins;
    } else {
      ++counters_.rejoins;
    }
    spdlog::info("coordinator: worker {} ('{}' on {}) {} run '{}' ({} live)", member->id, request.worker_name,
                 request.host, rejoin ? "joined again" : "joined", options_.run_id, LiveMembersLocked());
  }
  member->last_seen = now;
  worker_stats_[member->id].last_seen = now;

  if (!seeded_ && (seeder_ == 0 || !members_.at(seeder_)->live)) {
    seeder_ = member->id;
  }

  JoinResult r;
  r.key = {member->id, member->session};
  r.layout = *layout_;
  r.inner_steps = options_.inner_steps;
  r.overlap_steps = options_.overlap_steps;
  r.mixing_alpha = options_.mixing_alpha;
  r.nonblock = options_.layout.nonblock;
  r.outer = options_.outer;
  r.upload_codec = options_.upload_codec;
  r.download_codec = options_.download_codec;
  r.open_rounds = OpenRoundsLocked();
  r.must_seed = !seeded_ && seeder_ == member->id;
  r.seeded = seeded_;
  r.heartbeat_interval = options_.heartbeat_interval;
  r.incarnation = incarnation_;
  return r;
}

void CoordinatorCore::RemoveMemberLocked(Member& member, const char* why, Notifications& notes) {
  member.live = false;
  worker_stats_[member.id].live = false;
  if (!seeded_ && seeder_ == member.id) {
    seeder_ = 0;
    const Status lost =
        FailedPrecondition(fmt::format("the worker chosen to seed the initial state (worker {}) {} "
                                       "before uploading it; upload your own initial parameters "
                                       "with SeedState (the first upload wins), then Bootstrap",
                                       member.id, why));
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->second->for_seed) {
        notes.Add([cb = std::move(it->second->on_seeded), lost] { cb(lost); });
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
}

Status CoordinatorCore::Leave(const WorkerKey& key) {
  Notifications notes;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = members_.find(key.worker_id);
  if (it == members_.end()) {
    return RefuseLocked(nullptr,
                        FailedPrecondition(fmt::format("Leave: worker {} was never a member of run '{}'",
                                                       key.worker_id, options_.run_id)));
  }
  Member& m = *it->second;
  if (m.session != key.session) {
    return RefuseLocked(nullptr, PermissionDenied(fmt::format(
                                     "Leave: the session key does not match worker {}'s", key.worker_id)));
  }
  if (!m.live) {
    return Status::Ok();
  }
  RemoveMemberLocked(m, "left", notes);
  ++counters_.leaves;
  spdlog::info("coordinator: worker {} left run '{}' ({} live)", m.id, options_.run_id, LiveMembersLocked());
  CheckAllRoundsLocked(Now(), notes);
  return Status::Ok();
}

StatusOr<HeartbeatResult> CoordinatorCore::Heartbeat(const HeartbeatInfo& info) {
  std::lock_guard<std::mutex> lock(mu_);
  LOWBAND_ASSIGN_OR_RETURN(Member * m, AuthenticateLocked(info.key, "Heartbeat"));
  WorkerStats& stats = worker_stats_[m->id];
  stats.step = info.step;
  stats.last_loss = info.last_loss;
  stats.tokens = info.tokens;
  stats.reported_bytes_sent = info.bytes_sent;
  stats.reported_bytes_received = info.bytes_received;
  HeartbeatResult r;
  r.shutdown = shutdown_;
  r.reason = shutdown_reason_;
  r.open_rounds = OpenRoundsLocked();
  r.live_members = LiveMembersLocked();
  r.seeded = seeded_;
  r.incarnation = incarnation_;
  m->ready = m->ready || info.ready;
  for (const auto& [id, member] : members_) {
    r.ready_members += (member->live && member->ready) ? 1 : 0;
  }
  return r;
}

Status CoordinatorCore::CheckToken(std::string_view token, const char* call) {
  if (ConstantTimeEquals(token, options_.token)) {
    return Status::Ok();
  }
  std::lock_guard<std::mutex> lock(mu_);
  return RefuseLocked(nullptr,
                      Status(StatusCode::kUnauthenticated,
                             fmt::format("{}: the call does not carry run '{}''s token (metadata {}); "
                                         "start the worker with the run's token",
                                         call, options_.run_id, "x-lowband-token")));
}

Status CoordinatorCore::CheckMember(const WorkerKey& key, const char* call) {
  std::lock_guard<std::mutex> lock(mu_);
  return AuthenticateLocked(key, call).status();
}

// --- global state ---------------------------------------------------------------------------

StatusOr<SeedResult> CoordinatorCore::SeedState(const WorkerKey& key, std::span<const float> all) {
  Notifications notes;
  std::lock_guard<std::mutex> lock(mu_);
  LOWBAND_ASSIGN_OR_RETURN(Member * m, AuthenticateLocked(key, "SeedState"));
  const uint64_t expected = signature_->total_elements();
  if (all.size() != expected) {
    return RefuseLocked(m,
                        InvalidArgument(fmt::format("SeedState: expected {} values (every parameter of the "
                                                    "model, flat in signature order), got {}",
                                                    expected, all.size())));
  }
  if (const size_t bad = quant::FirstNonFinite(all); bad != all.size()) {
    uint32_t t = 0;
    while (t + 1 < signature_->tensors.size() && layout_->tensor_offset(t + 1) <= bad) {
      ++t;
    }
    return RefuseLocked(m, InvalidArgument(fmt::format("SeedState: value {} (tensor '{}') is {}; the initial "
                                                       "parameters must be finite",
                                                       bad, signature_->tensors[t].name, all[bad])));
  }
  const uint64_t bytes = all.size() * sizeof(float);
  counters_.bootstrap_bytes_in += bytes;
  worker_stats_[m->id].bootstrap_bytes_in += bytes;
  const uint32_t crc = comm::CrcOfFloats(all);
  if (seeded_) {
    return SeedResult{crc == seed_crc_};
  }

  for (uint32_t p = 0; p < fragments_.size(); ++p) {
    FragmentState& fs = *fragments_[p];
    fs.global.assign(fs.elements, 0.0f);
    LOWBAND_RETURN_IF_ERROR(layout_->Gather(p, all, fs.global));
    fs.momentum.assign(fs.elements, 0.0f);
    fs.accumulator.assign(fs.elements, 0.0f);
    fs.scratch.assign(fs.elements, 0.0f);
    fs.open_round = 0;
  }
  seeded_ = true;
  seed_crc_ = crc;
  seeder_ = 0;
  spdlog::info("coordinator: worker {} seeded run '{}' ({} values in {} fragments)", m->id, options_.run_id,
               all.size(), fragments_.size());
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (it->second->for_seed) {
      notes.Add([cb = std::move(it->second->on_seeded)] { cb(Status::Ok()); });
      it = waiters_.erase(it);
    } else {
      ++it;
    }
  }
  return SeedResult{true};
}

StatusOr<BootstrapState> CoordinatorCore::Bootstrap(const WorkerKey& key) {
  std::lock_guard<std::mutex> lock(mu_);
  LOWBAND_ASSIGN_OR_RETURN(Member * m, AuthenticateLocked(key, "Bootstrap"));
  if (!seeded_) {
    return RefuseLocked(m, FailedPrecondition("Bootstrap: the global state is not seeded yet; wait for the "
                                              "seeding worker (AwaitSeeded / a Bootstrap with a deadline)"));
  }
  BootstrapState state;
  uint64_t bytes = 0;
  for (const auto& fs : fragments_) {
    state.fragments.push_back(fs->global);
    state.open_rounds.push_back(fs->open_round);
    state.crc32c.push_back(comm::CrcOfFloats(fs->global));
    bytes += fs->global.size() * sizeof(float);
  }
  counters_.bootstrap_bytes_out += bytes;
  worker_stats_[m->id].bootstrap_bytes_out += bytes;
  return state;
}

CoordinatorCore::WaitId CoordinatorCore::AwaitSeeded(const WorkerKey& key, SeededCallback done) {
  Notifications notes;
  std::lock_guard<std::mutex> lock(mu_);
  const WaitId id = next_wait_id_++;
  StatusOr<Member*> m = AuthenticateLocked(key, "Bootstrap");
  if (!m.ok()) {
    notes.Add([done = std::move(done), s = m.status()] { done(s); });
  } else if (seeded_) {
    notes.Add([done = std::move(done)] { done(Status::Ok()); });
  } else {
    auto w = std::make_unique<Waiter>();
    w->for_seed = true;
    w->worker_id = key.worker_id;
    w->on_seeded = std::move(done);
    waiters_[id] = std::move(w);
  }
  return id;
}

// --- rounds ---------------------------------------------------------------------------------

StatusOr<std::optional<PushResult>> CoordinatorCore::CheckRoundLocked(Member& member, uint32_t fragment,
                                                                      uint64_t round) {
  FragmentState& fs = *fragments_[fragment];
  if (round == fs.open_round) {
    if (!Contains(fs.contributors, member.id)) {
      return std::optional<PushResult>();
    }
    ++counters_.duplicate_pushes;
    ++worker_stats_[member.id].duplicate_pushes;
    return std::optional<PushResult>(
        PushResult{true, static_cast<uint32_t>(fs.contributors.size()), fs.open_round});
  }
  if (round < fs.open_round) {
    for (const ClosedRound& c : fs.closed) {
      if (c.round == round && Contains(c.contributors, member.id)) {
        ++counters_.duplicate_pushes;
        ++worker_stats_[member.id].duplicate_pushes;
        return std::optional<PushResult>(
            PushResult{true, static_cast<uint32_t>(c.contributors.size()), fs.open_round});
      }
    }
    ++counters_.late_pushes;
    ++worker_stats_[member.id].late_pushes;
    return RefuseLocked(&member,
                        Aborted(fmt::format("round {} of fragment {} is already closed (the open round is "
                                            "{}); late contributions are never mixed into another "
                                            "round: drop this one, apply GetUpdate({}, {}) and push "
                                            "round {} next",
                                            round, fragment, fs.open_round, fragment, round, fs.open_round)));
  }
  return RefuseLocked(
      &member,
      Aborted(fmt::format("round {} of fragment {} is not open yet (the open round is "
                          "{}, {} of {} expected contributions so far); apply each "
                          "round's update before computing the next contribution",
                          round, fragment, fs.open_round, fs.contributors.size(), ExpectedLocked(fragment))));
}

// The checks every push passes before its round or payload is looked at: a known member, an
// existing fragment, a seeded global state. Refusals are counted against the member.
StatusOr<CoordinatorCore::Member*> CoordinatorCore::AdmitPushLocked(const WorkerKey& key, uint32_t fragment) {
  LOWBAND_ASSIGN_OR_RETURN(Member * m, AuthenticateLocked(key, "PushFragment"));
  if (Status s = CheckFragmentLocked(fragment); !s.ok()) {
    return RefuseLocked(m, s);
  }
  if (!seeded_) {
    return RefuseLocked(m, FailedPrecondition("PushFragment: the global state is not seeded yet; Bootstrap "
                                              "before training"));
  }
  return m;
}

StatusOr<PushResult> CoordinatorCore::CheckPush(const WorkerKey& key, uint32_t fragment, uint64_t round,
                                                uint64_t payload_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  LOWBAND_ASSIGN_OR_RETURN(Member * m, AdmitPushLocked(key, fragment));
  const uint64_t expected = quant::EncodedSize(options_.upload_codec, fragments_[fragment]->elements);
  if (payload_bytes != expected) {
    return RefuseLocked(
        m, InvalidArgument(fmt::format("PushFragment: a contribution to fragment {} ({} values "
                                       "in {}) is exactly {} bytes, the header declares {}",
                                       fragment, fragments_[fragment]->elements,
                                       CodecName(options_.upload_codec), expected, payload_bytes)));
  }
  LOWBAND_ASSIGN_OR_RETURN(std::optional<PushResult> dup, CheckRoundLocked(*m, fragment, round));
  if (dup) {
    return *dup;
  }
  return PushResult{false, static_cast<uint32_t>(fragments_[fragment]->contributors.size()),
                    fragments_[fragment]->open_round};
}

Status CoordinatorCore::ValidatePayloadLocked(uint32_t fragment, std::span<const uint8_t> payload) {
  FragmentState& fs = *fragments_[fragment];
  StatusOr<quant::PayloadInfo> info = quant::Inspect(payload);
  if (!info.ok()) {
    return info.status().WithContext("PushFragment: contribution payload rejected");
  }
  const quant::CodecSpec& want = options_.upload_codec;
  if (info->payload_bytes != payload.size()) {
    return InvalidArgument(fmt::format("PushFragment: the payload header says {} bytes, {} arrived",
                                       info->payload_bytes, payload.size()));
  }
  const bool blockwise = quant::IsBlockwise(want.format);
  if (info->format != want.format ||
      (blockwise && (info->block_size != want.block_size || info->scale_type != want.scale_type))) {
    quant::CodecSpec got = want;
    got.format = info->format;
    got.block_size = info->block_size;
    got.scale_type = info->scale_type;
    return InvalidArgument(
        fmt::format("PushFragment: the contribution is encoded as {}, but this run's upload "
                    "codec is {}; use the codec from JoinReply.upload_codec",
                    CodecName(got), CodecName(want)));
  }
  if (info->element_count != fs.elements) {
    return InvalidArgument(
        fmt::format("PushFragment: the contribution has {} values, fragment {} has {}; check "
                    "the fragment index and the layout from JoinReply",
                    info->element_count, fragment, fs.elements));
  }
  LOWBAND_RETURN_IF_ERROR(quant::DecodeInto(payload, fs.scratch));
  if (const size_t bad = quant::FirstNonFinite(fs.scratch); bad != fs.scratch.size()) {
    const comm::FragmentInfo& f = layout_->fragment(fragment);
    uint32_t t = f.tensors.front();
    for (uint32_t cand : f.tensors) {
      if (layout_->offset_in_fragment(cand) <= bad) {
        t = cand;
      }
    }
    return InvalidArgument(
        fmt::format("PushFragment: the contribution to fragment {} decodes to {} at index {} "
                    "(tensor '{}'); NaN/Inf is refused: the worker's training diverged",
                    fragment, fs.scratch[bad], bad, signature_->tensors[t].name));
  }
  return Status::Ok();
}

StatusOr<PushResult> CoordinatorCore::Push(const WorkerKey& key, uint32_t fragment, uint64_t round,
                                           std::span<const uint8_t> payload) {
  Notifications notes;
  std::lock_guard<std::mutex> lock(mu_);
  LOWBAND_ASSIGN_OR_RETURN(Member * m, AdmitPushLocked(key, fragment));
  counters_.sync_bytes_in += payload.size();
  worker_stats_[m->id].sync_bytes_in += payload.size();
  LOWBAND_ASSIGN_OR_RETURN(std::optional<PushResult> dup, CheckRoundLocked(*m, fragment, round));
  if (dup) {
    return *dup;
  }
  if (Status s = ValidatePayloadLocked(fragment, payload); !s.ok()) {
    return RefuseLocked(m, s);
  }

  FragmentState& fs = *fragments_[fragment];
  for (size_t i = 0; i < fs.elements; ++i) {
    fs.accumulator[i] += fs.scratch[i];
  }
  fs.contributors.push_back(m->id);
  const SteadyTime now = Now();
  if (!fs.deadline) {
    fs.deadline = now + options_.round_timeout;
  }
  ++counters_.contributions;
  ++worker_stats_[m->id].contributions;

  PushResult result;
  result.contributions = static_cast<uint32_t>(fs.contributors.size());
  MaybeCloseRoundLocked(fragment, now, notes);
  result.open_round = fs.open_round;
  return result;
}

void CoordinatorCore::MaybeCloseRoundLocked(uint32_t fragment, SteadyTime now, Notifications& notes) {
  FragmentState& fs = *fragments_[fragment];
  if (!seeded_ || fs.contributors.empty()) {
    return;
  }
  bool all_in = true;
  for (const auto& [id, m] : members_) {
    if (m->live && m->expected_from[fragment] <= fs.open_round && !Contains(fs.contributors, id)) {
      all_in = false;
      break;
    }
  }
  if (all_in) {
    CloseRoundLocked(fragment, /*at_deadline=*/false, notes);
    return;
  }
  if (!fs.deadline || now < *fs.deadline) {
    return;
  }
  if (fs.contributors.size() >= options_.quorum) {
    CloseRoundLocked(fragment, /*at_deadline=*/true, notes);
  } else if (!fs.overdue_reported) {
    fs.overdue_reported = true;
    ++counters_.rounds_overdue;
    spdlog::warn(
        "coordinator: round {} of fragment {} passed its deadline ({:.1f} s) with {} of the {} "
        "contributions the quorum needs ({} live members expected); it stays open until the quorum is "
        "reached or the missing members contribute or leave",
        fs.open_round, fragment, Seconds(options_.round_timeout), fs.contributors.size(), options_.quorum,
        ExpectedLocked(fragment));
  }
}

void CoordinatorCore::CloseRoundLocked(uint32_t fragment, bool at_deadline, Notifications& notes) {
  const SteadyTime closing_started = Now();
  FragmentState& fs = *fragments_[fragment];
  const uint64_t round = fs.open_round;
  const auto n = static_cast<uint32_t>(fs.contributors.size());

  // mean, then the outer step; the new momentum goes to scratch and is committed only once the
  // update has been encoded and applied.
  const float count = static_cast<float>(n);
  for (float& a : fs.accumulator) {
    a = a / count;
  }
  optimizer_.Step(fs.accumulator, fs.momentum, fs.scratch, fs.accumulator);

  ClosedRound closed;
  closed.closing_started = closing_started;
  closed.round = round;
  closed.contributors = std::move(fs.contributors);
  if (const size_t bad = quant::FirstNonFinite(fs.accumulator); bad != fs.accumulator.size()) {
    closed.failure =
        Internal(fmt::format("the outer update of round {} of fragment {} is not finite at index {} "
                             "(the mean of {} contributions overflowed); the round was dropped and "
                             "the global state is unchanged; Bootstrap to resync",
                             round, fragment, bad, n));
  } else if (quant::FirstNonFinite(fs.scratch) != fs.scratch.size()) {
    closed.failure =
        Internal(fmt::format("the outer momentum of fragment {} overflowed in round {}; the round "
                             "was dropped and the global state is unchanged; lower the outer lr",
                             fragment, round));
  } else {
    quant::CodecSpec spec = options_.download_codec;
    if (spec.rounding == quant::Rounding::kStochastic) {
      spec.seed = Mix(Mix(std::hash<std::string>{}(options_.run_id)) ^ Mix(fragment) ^ Mix(round + 0x5eed));
    }
    StatusOr<std::vector<uint8_t>> encoded = quant::Encode(spec, fs.accumulator);
    if (!encoded.ok()) {
      closed.failure = encoded.status().WithContext(
          fmt::format("encoding the outer update of round {} of fragment {}", round, fragment));
    } else {
      // Decodes into the accumulator (no longer needed) and subtracts: exactly what workers run.
      Status applied = comm::ApplyOuterUpdate(*encoded, fs.global, fs.accumulator);
      if (!applied.ok()) {
        closed.failure = applied.WithContext(
            fmt::format("applying the outer update of round {} of fragment {}", round, fragment));
      } else {
        fs.momentum.swap(fs.scratch);
        closed.update.fragment = fragment;
        closed.update.round = round;
        closed.update.crc32c = quant::Crc32c(*encoded);
        closed.update.contributions = n;
        closed.update.payload = std::make_shared<const std::vector<uint8_t>>(std::move(encoded).value());
      }
    }
  }
  if (!closed.failure.ok()) {
    ++counters_.rounds_failed;
    spdlog::error("coordinator: {}", closed.failure.message());
  } else {
    spdlog::debug("coordinator: closed round {} of fragment {} with {} contributions{}", round, fragment, n,
                  at_deadline ? " at its deadline" : "");
  }

  // Open the next round.
  fs.open_round = round + 1;
  std::fill(fs.accumulator.begin(), fs.accumulator.end(), 0.0f);
  fs.contributors.clear();
  fs.deadline.reset();
  fs.overdue_reported = false;
  ++counters_.rounds_closed;
  if (at_deadline) {
    ++counters_.rounds_closed_at_deadline;
  }
  closed.sequence = counters_.rounds_closed;
  fs.closed.push_back(std::move(closed));
  while (fs.closed.size() > options_.retained_rounds) {
    fs.closed.pop_front();
  }
  const ClosedRound& done = fs.closed.back();
  // The checkpoint goes before the waiters' notifications: they run in order once mu_ is released.
  if (options_.checkpoint_every > 0 && ++closes_since_checkpoint_ >= options_.checkpoint_every) {
    closes_since_checkpoint_ = 0;
    const uint64_t sequence = counters_.rounds_closed;
    notes.Add([write = options_.on_checkpoint,
               snapshot = std::make_shared<CoordinatorSnapshot>(SnapshotLocked())] { write(*snapshot); });
    if (DurableUpdates()) {
      notes.Add([this, sequence] { MarkDurable(sequence); });
    }
  }
  if (!DurableUpdates()) timing_.Add(std::chrono::duration<double>(Now() - closing_started).count());
  if (options_.on_round_closed) {
    RoundRecord record{fragment,
                       round,
                       n,
                       at_deadline,
                       done.failure.ok() ? "" : done.failure.message(),
                       comm::CrcOfFloats(fs.global)};
    notes.Add([tell = options_.on_round_closed, record = std::move(record)] { tell(record); });
  }
  ReleaseWaitersLocked(fragment, notes);
}

void CoordinatorCore::ReleaseWaitersLocked(uint32_t fragment, Notifications& notes) {
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    Waiter& w = *it->second;
    if (w.for_seed || w.fragment != fragment) {
      ++it;
      continue;
    }
    StatusOr<std::optional<UpdatePayload>> found = LookupUpdateLocked(fragment, w.round);
    if (found.ok() && !found->has_value()) {
      ++it;  // still open, or not yet in a checkpoint
      continue;
    }
    if (found.ok()) {
      const uint64_t bytes = (*found)->payload->size();
      counters_.sync_bytes_out += bytes;
      worker_stats_[w.worker_id].sync_bytes_out += bytes;
      notes.Add([cb = std::move(w.on_update), u = **found] { cb(u); });
    } else {
      notes.Add([cb = std::move(w.on_update), st = found.status()] { cb(st); });
    }
    it = waiters_.erase(it);
  }
}

void CoordinatorCore::MarkDurable(uint64_t sequence) {
  Notifications notes;
  std::lock_guard<std::mutex> lock(mu_);
  if (sequence <= durable_sequence_) {
    return;
  }
  const SteadyTime now = Now();
  for (const auto& fs : fragments_) {
    for (const ClosedRound& c : fs->closed) {
      if (c.sequence > durable_sequence_ && c.sequence <= sequence) {
        timing_.Add(std::chrono::duration<double>(now - c.closing_started).count());
      }
    }
  }
  durable_sequence_ = sequence;
  for (uint32_t p = 0; p < fragments_.size(); ++p) {
    ReleaseWaitersLocked(p, notes);
  }
}

void CoordinatorCore::CheckAllRoundsLocked(SteadyTime now, Notifications& notes) {
  for (uint32_t p = 0; p < fragments_.size(); ++p) {
    MaybeCloseRoundLocked(p, now, notes);
  }
}

StatusOr<std::optional<UpdatePayload>> CoordinatorCore::LookupUpdateLocked(uint32_t fragment,
                                                                           uint64_t round) const {
  LOWBAND_RETURN_IF_ERROR(CheckFragmentLocked(fragment));
  if (!seeded_) {
    return FailedPrecondition("GetUpdate: the global state is not seeded yet; Bootstrap before training");
  }
  const FragmentState& fs = *fragments_[fragment];
  if (round > fs.open_round) {
    return OutOfRange(
        fmt::format("GetUpdate: round {} of fragment {} has not opened yet (the open round is {}); "
                    "ask for the round you pushed to",
                    round, fragment, fs.open_round));
  }
  if (round == fs.open_round) {
    return std::optional<UpdatePayload>();
  }
  for (const ClosedRound& c : fs.closed) {
    if (c.round != round) {
      continue;
    }
    if (DurableUpdates() && c.sequence > durable_sequence_) {
      return std::optional<UpdatePayload>();  // closed, but its checkpoint is still being written
    }
    if (!c.failure.ok()) {
      return c.failure;
    }
    return std::optional<UpdatePayload>(c.update);
  }
  const uint64_t oldest = fs.closed.empty() ? fs.open_round : fs.closed.front().round;
  return NotFound(
      fmt::format("GetUpdate: round {} of fragment {} is gone: the coordinator keeps the last {} "
                  "closed rounds ({}..{}); Bootstrap to resync with the global state",
                  round, fragment, options_.retained_rounds, oldest, fs.open_round - 1));
}

StatusOr<UpdatePayload> CoordinatorCore::GetUpdate(const WorkerKey& key, uint32_t fragment, uint64_t round) {
  std::lock_guard<std::mutex> lock(mu_);
  LOWBAND_ASSIGN_OR_RETURN(Member * m, AuthenticateLocked(key, "GetUpdate"));
  StatusOr<std::optional<UpdatePayload>> found = LookupUpdateLocked(fragment, round);
  if (!found.ok()) {
    return RefuseLocked(m, found.status());
  }
  if (!found->has_value()) {
    const FragmentState& fs = *fragments_[fragment];
    return Unavailable(
        fmt::format("GetUpdate: round {} of fragment {} has no update yet (the open round has {} of {} "
                    "expected contributions; a closed round's update waits for its checkpoint); wait for "
                    "it (AwaitUpdate / a GetUpdate stream with a deadline)",
                    round, fragment, fs.contributors.size(), ExpectedLocked(fragment)));
  }
  const uint64_t bytes = (*found)->payload->size();
  counters_.sync_bytes_out += bytes;
  worker_stats_[m->id].sync_bytes_out += bytes;
  return **found;
}

CoordinatorCore::WaitId CoordinatorCore::AwaitUpdate(const WorkerKey& key, uint32_t fragment, uint64_t round,
                                                     UpdateCallback done) {
  Notifications notes;
  std::lock_guard<std::mutex> lock(mu_);
  const WaitId id = next_wait_id_++;
  StatusOr<Member*> m = AuthenticateLocked(key, "GetUpdate");
  if (!m.ok()) {
    notes.Add([done = std::move(done), s = m.status()] { done(s); });
    return id;
  }
  StatusOr<std::optional<UpdatePayload>> found = LookupUpdateLocked(fragment, round);
  if (!found.ok()) {
    notes.Add([done = std::move(done), s = RefuseLocked(*m, found.status())] { done(s); });
  } else if (found->has_value()) {
    const uint64_t bytes = (*found)->payload->size();
    counters_.sync_bytes_out += bytes;
    worker_stats_[key.worker_id].sync_bytes_out += bytes;
    notes.Add([done = std::move(done), u = **found] { done(u); });
  } else {
    auto w = std::make_unique<Waiter>();
    w->worker_id = key.worker_id;
    w->fragment = fragment;
    w->round = round;
    w->on_update = std::move(done);
    waiters_[id] = std::move(w);
  }
  return id;
}

bool CoordinatorCore::CancelWait(WaitId id) {
  std::lock_guard<std::mutex> lock(mu_);
  return waiters_.erase(id) > 0;
}

void CoordinatorCore::CancelAllWaits(const Status& status) {
  Notifications notes;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, w] : waiters_) {
    if (w->for_seed) {
      notes.Add([cb = std::move(w->on_seeded), status] { cb(status); });
    } else {
      notes.Add([cb = std::move(w->on_update), status] { cb(status); });
    }
  }
  waiters_.clear();
}

void CoordinatorCore::Tick() {
  Notifications notes;
  std::lock_guard<std::mutex> lock(mu_);
  const SteadyTime now = Now();
  for (auto& [id, m] : members_) {
    if (m->live && now - m->last_seen > options_.heartbeat_timeout) {
      RemoveMemberLocked(*m, "stopped sending heartbeats", notes);
      ++counters_.expirations;
      spdlog::warn(
          "coordinator: worker {} sent nothing for {:.1f} s (limit {:.1f} s); dropped from run '{}' ({} "
          "live)",
          id, Seconds(now - m->last_seen), Seconds(options_.heartbeat_timeout), options_.run_id,
          LiveMembersLocked());
    }
  }
  CheckAllRoundsLocked(now, notes);
}

void CoordinatorCore::RequestShutdown(std::string reason) {
  std::lock_guard<std::mutex> lock(mu_);
  shutdown_ = true;
  shutdown_reason_ = std::move(reason);
}

// --- observability ------------------------------------------------------------------------------

CoordinatorCounters CoordinatorCore::counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counters_;
}

comm::RunningMean CoordinatorCore::round_timing() const {
  std::lock_guard<std::mutex> lock(mu_);
  return timing_;
}

std::vector<WorkerStats> CoordinatorCore::workers() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<WorkerStats> out;
  for (const auto& [id, s] : worker_stats_) {
    out.push_back(s);
  }
  return out;
}

StatusOr<RoundStatus> CoordinatorCore::round_status(uint32_t fragment) const {
  std::lock_guard<std::mutex> lock(mu_);
  LOWBAND_RETURN_IF_ERROR(CheckFragmentLocked(fragment));
  const FragmentState& fs = *fragments_[fragment];
  RoundStatus r;
  r.fragment = fragment;
  r.open_round = fs.open_round;
  r.contributions = static_cast<uint32_t>(fs.contributors.size());
  r.expected = ExpectedLocked(fragment);
  r.deadline = fs.deadline;
  r.overdue = fs.overdue_reported;
  r.accumulator_bytes = fs.accumulator.capacity() * sizeof(float) + fs.scratch.capacity() * sizeof(float);
  return r;
}

uint32_t CoordinatorCore::live_members() const {
  std::lock_guard<std::mutex> lock(mu_);
  return LiveMembersLocked();
}

bool CoordinatorCore::seeded() const {
  std::lock_guard<std::mutex> lock(mu_);
  return seeded_;
}

std::optional<comm::FragmentLayout> CoordinatorCore::layout() const {
  std::lock_guard<std::mutex> lock(mu_);
  return layout_;
}

StatusOr<uint64_t> CoordinatorCore::ContributionBytes(uint32_t fragment) const {
  std::lock_guard<std::mutex> lock(mu_);
  LOWBAND_RETURN_IF_ERROR(CheckFragmentLocked(fragment));
  return quant::EncodedSize(options_.upload_codec, fragments_[fragment]->elements);
}

uint64_t CoordinatorCore::SeedElements() const {
  std::lock_guard<std::mutex> lock(mu_);
  return signature_ ? signature_->total_elements() : 0;
}

std::vector<uint32_t> CoordinatorCore::GlobalStateCrc() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint32_t> crcs;
  if (!seeded_) {
    return crcs;
  }
  for (const auto& fs : fragments_) {
    crcs.push_back(comm::CrcOfFloats(fs->global));
  }
  return crcs;
}

CoordinatorSnapshot CoordinatorCore::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return SnapshotLocked();
}

CoordinatorSnapshot CoordinatorCore::SnapshotLocked() const {
  CoordinatorSnapshot s;
  s.run_id = options_.run_id;
  s.sequence = counters_.rounds_closed;
  s.signature = signature_;
  s.layout = options_.layout;
  s.seeded = seeded_;
  s.seed_crc = seed_crc_;
  if (seeded_) {
    for (const auto& fs : fragments_) {
      FragmentSnapshot f{fs->global, fs->momentum, fs->open_round, {}};
      for (const ClosedRound& c : fs->closed) {
        ClosedRoundSnapshot r;
        r.round = c.round;
        r.contributors = c.contributors;
        r.contributions = static_cast<uint32_t>(c.contributors.size());
        if (c.failure.ok()) {
          r.payload = *c.update.payload;
        } else {
          r.failure = c.failure.message();
        }
        f.closed.push_back(std::move(r));
      }
      s.fragments.push_back(std::move(f));
    }
  }
  for (const auto& [id, m] : members_) {
    const WorkerStats& stats = worker_stats_.at(id);
    s.members.push_back(
        {m->id, m->session, m->nonce, stats.name, stats.host, m->live, m->ready, m->expected_from});
  }
  s.next_worker_id = next_worker_id_;
  s.counters = counters_;
  return s;
}

Status CoordinatorCore::RestoreLocked(const CoordinatorSnapshot& s) {
  if (s.run_id != options_.run_id) {
    return FailedPrecondition(
        fmt::format("the checkpoint is of run '{}', this coordinator serves run '{}'; "
                    "use that run's id or another checkpoint directory",
                    s.run_id, options_.run_id));
  }
  if (s.layout.num_fragments != options_.layout.num_fragments ||
      s.layout.nonblock != options_.layout.nonblock) {
    return FailedPrecondition(fmt::format(
        "the checkpoint's run has {} fragments (non-block parameters: {}), this coordinator is set to {} "
        "({}); keep the run's --fragments and diloco.nonblock",
        s.layout.num_fragments, comm::NonBlockPolicyName(s.layout.nonblock), options_.layout.num_fragments,
        comm::NonBlockPolicyName(options_.layout.nonblock)));
  }
  if (s.signature) {
    if (signature_) {
      LOWBAND_RETURN_IF_ERROR(comm::CompareSignatures(*signature_, *s.signature));
    } else {
      LOWBAND_RETURN_IF_ERROR(SetSignatureLocked(*s.signature));
    }
  } else if (s.seeded) {
    return DataLoss("the checkpoint says the state was seeded but carries no model signature");
  }
  if (s.seeded != !s.fragments.empty() || (s.seeded && s.fragments.size() != fragments_.size())) {
    return DataLoss(fmt::format("the checkpoint holds {} fragments of global state for a run of {} fragments",
                                s.fragments.size(), fragments_.size()));
  }
  for (uint32_t p = 0; p < s.fragments.size(); ++p) {
    const FragmentSnapshot& f = s.fragments[p];
    FragmentState& fs = *fragments_[p];
    if (f.global.size() != fs.elements || f.momentum.size() != fs.elements) {
      return DataLoss(
          fmt::format("fragment {} has {} values, the checkpoint {} global and {} momentum values", p,
                      fs.elements, f.global.size(), f.momentum.size()));
    }
    if (quant::FirstNonFinite(f.global) != f.global.size() ||
        quant::FirstNonFinite(f.momentum) != f.momentum.size()) {
      return DataLoss(fmt::format("fragment {} of the checkpoint holds NaN/Inf", p));
    }
    fs.global = f.global;
    fs.momentum = f.momentum;
    fs.accumulator.assign(fs.elements, 0.0f);
    fs.scratch.assign(fs.elements, 0.0f);
    fs.open_round = f.open_round;
    fs.contributors.clear();
    fs.deadline.reset();
    fs.overdue_reported = false;
    fs.closed.clear();
    uint64_t previous = 0;
    for (const ClosedRoundSnapshot& c : f.closed) {
      if (c.round >= f.open_round || (!fs.closed.empty() && c.round <= previous)) {
        return DataLoss(
            fmt::format("fragment {}: retained round {} is not below the open round {} or out of order", p,
                        c.round, f.open_round));
      }
      previous = c.round;
      ClosedRound r;
      r.round = c.round;
      r.contributors = c.contributors;
      if (!c.failure.empty()) {
        r.failure = Internal(c.failure);
      } else {
        StatusOr<quant::PayloadInfo> info = quant::Inspect(c.payload);
        if (!info.ok() || info->element_count != fs.elements) {
          return DataLoss(
              fmt::format("fragment {}: the retained update of round {} is not a valid payload of {} "
                          "values",
                          p, c.round, fs.elements));
        }
        r.update.fragment = p;
        r.update.round = c.round;
        r.update.contributions = c.contributions;
        r.update.crc32c = quant::Crc32c(c.payload);
        r.update.payload = std::make_shared<const std::vector<uint8_t>>(c.payload);
      }
      fs.closed.push_back(std::move(r));
    }
  }
  seeded_ = s.seeded;
  seed_crc_ = s.seed_crc;
  const SteadyTime now = Now();
  uint64_t next_id = s.next_worker_id;
  for (const MemberSnapshot& ms : s.members) {
    if (ms.id == 0 || members_.count(ms.id) > 0 ||
        (s.seeded && ms.expected_from.size() != fragments_.size())) {
      return DataLoss(fmt::format("member {} of the checkpoint is malformed or repeated", ms.id));
    }
    auto m = std::make_unique<Member>();
    m->id = ms.id;
    m->session = ms.session;
    m->nonce = ms.nonce;
    m->live = ms.live;
    m->ready = ms.ready;
    // One heartbeat_timeout more than usual to come back: a worker reconnecting to a restarted
    // coordinator waits out gRPC's reconnect backoff first.
    m->last_seen = now + options_.heartbeat_timeout;
    m->expected_from = ms.expected_from;
    m->expected_from.resize(fragments_.size(), 0);
    WorkerStats& stats = worker_stats_[ms.id];
    stats.worker_id = ms.id;
    stats.name = ms.name;
    stats.host = ms.host;
    stats.live = ms.live;
    stats.joined_at = now;
    stats.last_seen = now;
    next_id = std::max(next_id, ms.id + 1);
    members_[ms.id] = std::move(m);
  }
  next_worker_id_ = next_id;
  counters_ = s.counters;
  durable_sequence_ = counters_.rounds_closed;  // every round it holds is in the file it came from
  spdlog::info(
      "coordinator: restored run '{}' at {} closed rounds ({} members, {} of them live; they have {:.0f} s "
      "to call again)",
      options_.run_id, counters_.rounds_closed, members_.size(), LiveMembersLocked(),
      2 * Seconds(options_.heartbeat_timeout));
  return Status::Ok();
}

}  // namespace lowband::coordinator
