// libFuzzer target for the coordinator's request handling: a CoordinatorCore over the small test
// signature (tests/coordinator/fake_worker.h: 1072 values in 3 fragments) with a ManualClock, two
// joined members and (usually) a seeded global state; the input then drives up to 64 calls, each
// with arbitrary arguments: pushes of arbitrary bytes, of genuine contributions with arbitrary
// magnitudes (optionally corrupted, optionally with the CRC re-stamped so that the checks behind
// it are reached) and push size checks to any fragment/round/worker key; whole rounds (every known
// member pushes to a fragment's open round, so a few calls take the outer optimizer through many
// rounds); heartbeats with arbitrary values; joins with arbitrary run id, token, nonce and signature
// bits; seeds; bootstraps; get and await update of any round; cancels; leaves; clock advances of
// any size with Tick.
//
// The first input byte picks the configuration: upload codec (fp4_e3m0/64/bf16, fp32, int8 asym
// 32/fp16, bf16), stochastic download rounding, seeded or not, quorum 1..3, retained rounds 1..4.
//
// Invariants (abort on violation):
//  - a refused call (non-OK status) leaves GlobalStateCrc() unchanged; calls that cannot change the
//    global state (heartbeat, join, get/await update, check push, bootstrap, a seed of a seeded run,
//    duplicates) leave it unchanged whatever they answer; a fragment's values change only when its
//    round closes;
//  - every global and momentum value stays finite;
//  - no counter ever decreases; accepted contributions and duplicates are counted exactly once;
//    open rounds only move forward, one at a time, and their sum equals counters.rounds_closed;
//  - every update handed out has the CRC it claims, and applying it (comm::ApplyOuterUpdate, as a
//    worker does) to the state before its round closed gives exactly the state after;
//  - every wait callback runs exactly once unless CancelWait removed it, never with the core's
//    mutex held (the callback calls back into the core).
//   cmake -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
//         -DLOWBAND_FUZZ=ON -DLOWBAND_SANITIZE=address -DLOWBAND_WITH_TORCH=OFF
//   ninja -C build-fuzz fuzz_coordinator_core && ./build-fuzz/tests/coordinator/fuzz_coordinator_core \
//         -max_total_time=600
#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <fuzzer/FuzzedDataProvider.h>
#include <spdlog/spdlog.h>

#include "comm/outer_update.h"
#include "coordinator/core.h"
#include "quant/codec.h"
#include "tests/coordinator/fake_worker.h"

#include "tests/fuzz_require.h"

namespace {

using namespace lowband;
using namespace lowband::coordinator;

using lowband::testing::Require;

constexpr uint32_t kFragments = 3;
constexpr int kMaxOps = 64;
constexpr size_t kMaxKeys = 8;
const char* const kRunId = "fuzz-run";
const char* const kToken = "fuzz-token";

const comm::ModelSignature& Signature() {
  static const comm::ModelSignature s = lowband::testing::TestSignature();
  return s;
}
const std::vector<float>& Initial() {
  static const std::vector<float> v = lowband::testing::InitialParameters(Signature().total_elements());
  return v;
}

quant::CodecSpec UploadCodec(int which) {
  quant::CodecSpec s;  // fp4_e3m0, blocks of 64, bf16 scales
  if (which == 1) {
    s.format = quant::Format::kFp32;
  } else if (which == 2) {
    s.format = quant::Format::kInt8Asym;
    s.block_size = 32;
    s.scale_type = quant::ScaleType::kFp16;
  } else if (which == 3) {
    s.format = quant::Format::kBf16;
  }
  return s;
}

bool Finite(const std::vector<float>& v) { return quant::FirstNonFinite(v) == v.size(); }

void RequireMonotone(const CoordinatorCounters& a, const CoordinatorCounters& b) {
  Require(b.joins >= a.joins && b.leaves >= a.leaves && b.expirations >= a.expirations);
  Require(b.rounds_closed >= a.rounds_closed && b.rounds_closed_at_deadline >= a.rounds_closed_at_deadline);
  Require(b.rounds_overdue >= a.rounds_overdue && b.rounds_failed >= a.rounds_failed);
  Require(b.contributions >= a.contributions && b.duplicate_pushes >= a.duplicate_pushes);
  Require(b.late_pushes >= a.late_pushes && b.refusals >= a.refusals);
  Require(b.sync_bytes_in >= a.sync_bytes_in && b.sync_bytes_out >= a.sync_bytes_out);
  Require(b.bootstrap_bytes_in >= a.bootstrap_bytes_in && b.bootstrap_bytes_out >= a.bootstrap_bytes_out);
}

class Harness {
 public:
  explicit Harness(FuzzedDataProvider& in) : in_(in) {}

  void Run() {
    const uint8_t config = in_.ConsumeIntegral<uint8_t>();
    CoordinatorOptions o;
    o.run_id = kRunId;
    o.token = kToken;
    o.signature = Signature();
    o.layout.num_fragments = kFragments;
    o.inner_steps = 30;
    o.round_timeout = std::chrono::seconds(10);
    o.heartbeat_timeout = std::chrono::seconds(30);
    o.heartbeat_interval = std::chrono::seconds(5);
    o.upload_codec = UploadCodec(config & 3);
    if (config & 4) o.download_codec.rounding = quant::Rounding::kStochastic;
    o.quorum = 1 + (config >> 4) % 3;
    o.retained_rounds = 1 + (config >> 6);
    o.clock = &clock_;
    upload_ = o.upload_codec;
    auto core = CoordinatorCore::Create(std::move(o));
    Require(core.ok());
    core_ = std::move(core).value();

    for (uint64_t nonce : {1, 2}) {
      auto j = core_->Join(GoodJoin(nonce));
      Require(j.ok());
      AddKey(j->key);
      nonces_.push_back(nonce);
      by_nonce_[nonce] = j->key;
    }
    if ((config & 8) == 0) {
      auto s = core_->SeedState(keys_[0], Initial());
      Require(s.ok() && s->accepted);
    }
    prev_ = core_->Snapshot();
    prev_crc_ = core_->GlobalStateCrc();

    for (int ops = 0; ops < kMaxOps && in_.remaining_bytes() > 0; ++ops) {
      Step();
    }
    // Destroying the core completes every wait still pending (UNAVAILABLE); the callbacks must not
    // call back into a core that is going away.
    std::unique_ptr<CoordinatorCore> dying = std::move(core_);
    destroying_ = true;
    dying.reset();
    for (const Wait& w : waits_) {
      Require(w.calls == (w.cancelled ? 0 : 1));
    }
  }

 private:
  struct Wait {
    int calls = 0;
    bool cancelled = false;
  };
  struct Closed {
    std::vector<float> before;
    uint32_t crc_after = 0;
  };
  enum Op : uint8_t {
    kPushRaw,
    kPushGenuine,
    kRound,
    kCheckPush,
    kHeartbeat,
    kJoin,
    kGetUpdate,
    kAwaitUpdate,
    kTick,
    kLeave,
    kSeed,
    kBootstrap,
    kCheckMember,
    kAwaitSeeded,
    kCancelAll,
    kShutdown,
    kNumOps
  };

  JoinRequest GoodJoin(uint64_t nonce) const {
    JoinRequest r;
    r.run_id = kRunId;
    r.token = kToken;
    r.signature = Signature();
    r.worker_name = "w";
    r.host = "h";
    r.join_nonce = nonce;
    return r;
  }

  void AddKey(const WorkerKey& k) {
    for (const WorkerKey& have : keys_) {
      if (have.worker_id == k.worker_id) return;
    }
    if (keys_.size() < kMaxKeys) keys_.push_back(k);
  }

  WorkerKey PickKey() {
    const uint8_t b = in_.ConsumeIntegral<uint8_t>();
    const WorkerKey known = keys_[b % keys_.size()];
    switch ((b >> 4) % 8) {
      case 5:
        return {known.worker_id, known.session ^ (1 + in_.ConsumeIntegral<uint32_t>())};
      case 6:
        return {in_.ConsumeIntegral<uint64_t>(), in_.ConsumeIntegral<uint64_t>()};
      case 7:
        return {0, 0};
      default:
        return known;
    }
  }

  uint32_t PickFragment() {
    const uint8_t b = in_.ConsumeIntegral<uint8_t>();
    return b < 240 ? b % (kFragments + 1) : in_.ConsumeIntegral<uint32_t>();
  }

  uint64_t OpenRound(uint32_t p) const {
    return p < prev_.fragments.size() ? prev_.fragments[p].open_round : 0;
  }

  uint64_t PickRound(uint32_t p) {
    const uint8_t b = in_.ConsumeIntegral<uint8_t>();
    if (b < 224) return OpenRound(p) + (b % 7) - 3;  // near the open round (wraps below 0)
    return in_.ConsumeIntegral<uint64_t>();
  }

  float PickFloat() {
    static const float kTable[] = {0.0f, 1e-30f, 1e-3f, 0.01f, 1.0f, 1e3f, 1e20f, 1e36f, 1e37f, 1e38f, 3e38f};
    const uint8_t b = in_.ConsumeIntegral<uint8_t>();
    if (b < 200) return kTable[b % std::size(kTable)];
    return std::bit_cast<float>(in_.ConsumeIntegral<uint32_t>());
  }

  uint64_t Elements(uint32_t p) const {
    return p < kFragments ? core_->layout()->element_count(p) : 1 + in_.remaining_bytes() % 64;
  }

  // A contribution the way a worker makes one: normal values of magnitude `scale`, encoded with the
  // upload codec (empty when the values are not encodable, e.g. beyond fp32).
  std::vector<uint8_t> Genuine(uint32_t p, float scale, uint32_t seed) const {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> delta(Elements(p));
    for (float& d : delta) d = scale * dist(rng);
    quant::CodecSpec spec = upload_;
    spec.seed = seed;
    auto payload = quant::Encode(spec, delta);
    if (!payload.ok()) return {};
    return std::move(payload).value();
  }

  // Genuine, then optionally one byte corrupted, with or without a fresh CRC (so that the checks
  // behind the checksum are reached).
  std::vector<uint8_t> Corrupted(uint32_t p) {
    const float scale = PickFloat();
    std::vector<uint8_t> bytes = Genuine(p, scale, in_.ConsumeIntegral<uint32_t>());
    const uint8_t how = in_.ConsumeIntegral<uint8_t>();
    if (how >= 128 && !bytes.empty()) {
      bytes[in_.ConsumeIntegral<uint16_t>() % bytes.size()] ^= static_cast<uint8_t>(1 + (how & 127));
      if (how & 1) lowband::testing::RestampCrc(bytes);
    }
    return bytes;
  }

  // One push. A refusal or a duplicate must leave the global state as it was.
  void PushOne(const WorkerKey& key, uint32_t p, uint64_t round, std::span<const uint8_t> payload) {
    const std::vector<uint32_t> crc = core_->GlobalStateCrc();
    auto r = core_->Push(key, p, round, payload);
    if (!r.ok() || r->duplicate) Require(core_->GlobalStateCrc() == crc);
    if (!r.ok()) return;
    if (r->duplicate) {
      ++duplicates_;
    } else {
      ++accepted_;
      may_change_ = true;
      Require(r->contributions >= 1);
    }
  }

  JoinRequest PickJoin() {
    JoinRequest r = GoodJoin(0);
    const uint8_t b = in_.ConsumeIntegral<uint8_t>();
    if (b & 1) r.run_id = in_.ConsumeRandomLengthString(16);
    if (b & 2) r.token = in_.ConsumeRandomLengthString(16);
    comm::ModelSignature& s = r.signature;
    switch ((b >> 2) % 10) {
      case 1:
        s.hash ^= uint64_t{1} << (in_.ConsumeIntegral<uint8_t>() % 64);
        break;
      case 2:
        s.tensors[in_.ConsumeIntegral<uint8_t>() % s.tensors.size()].shape.push_back(
            in_.ConsumeIntegral<int64_t>());
        s.Seal();
        break;
      case 3:
        s.tensors[in_.ConsumeIntegral<uint8_t>() % s.tensors.size()].name = in_.ConsumeRandomLengthString(24);
        s.Seal();
        break;
      case 4:
        s.tensors.pop_back();
        s.Seal();
        break;
      case 5:
        s.tensors[in_.ConsumeIntegral<uint8_t>() % s.tensors.size()].dtype = in_.ConsumeRandomLengthString(8);
        s.Seal();
        break;
      case 6:
        s.tensors.clear();
        s.Seal();
        break;
      case 7:
        s.tensors[0].shape[0] = in_.ConsumeIntegral<int64_t>();  // not resealed
        break;
      default:
        break;
    }
    r.worker_name = in_.ConsumeRandomLengthString(12);
    r.host = in_.ConsumeRandomLengthString(12);
    const uint8_t n = in_.ConsumeIntegral<uint8_t>();
    if (n < 128) {
      r.join_nonce = nonces_[n % nonces_.size()];
    } else if (n < 192) {
      r.join_nonce = in_.ConsumeIntegral<uint64_t>();
    }
    return r;
  }

  std::vector<float> PickSeed() {
    std::vector<float> v = Initial();
    switch (in_.ConsumeIntegral<uint8_t>() % 5) {
      case 1:
        v[in_.ConsumeIntegral<uint16_t>() % v.size()] += 1.0f;
        break;
      case 2:
        v.resize(in_.ConsumeIntegral<uint16_t>() % (2 * v.size()));
        break;
      case 3:
        v[in_.ConsumeIntegral<uint16_t>() % v.size()] = PickFloat();
        break;
      case 4:
        v[in_.ConsumeIntegral<uint16_t>() % v.size()] = std::bit_cast<float>(0x7fc00000u);
        break;
      default:
        break;
    }
    return v;
  }

  CoordinatorCore::UpdateCallback UpdateCallback() {
    waits_.emplace_back();
    Wait* w = &waits_.back();
    return [this, w](StatusOr<UpdatePayload> u) {
      ++w->calls;
      if (!destroying_) (void)core_->counters();  // never called with the core's mutex held
      if (u.ok()) pending_.push_back(*u);
    };
  }

  CoordinatorCore::SeededCallback SeededCallback() {
    waits_.emplace_back();
    Wait* w = &waits_.back();
    return [this, w](const Status&) {
      ++w->calls;
      if (!destroying_) (void)core_->seeded();
    };
  }

  // One call with arbitrary arguments, then the invariants.
  void Step() {
    const CoordinatorCounters before = prev_.counters;
    bool refused = false;
    bool may_change = false;  // Tick, Leave, a first seed
    may_change_ = false;
    accepted_ = duplicates_ = 0;
    const auto op = static_cast<Op>(in_.ConsumeIntegral<uint8_t>() % kNumOps);
    switch (op) {
      case kPushRaw:
      case kPushGenuine: {
        const WorkerKey key = PickKey();
        const uint32_t p = PickFragment();
        const uint64_t round = PickRound(p);
        std::vector<uint8_t> payload;
        if (op == kPushRaw) {
          payload = in_.ConsumeBytes<uint8_t>(in_.ConsumeIntegralInRange<size_t>(0, 4096));
        } else {
          payload = Corrupted(p);
        }
        PushOne(key, p, round, payload);
        break;
      }
      case kRound: {
        // Every known key contributes to the open round of one fragment, as in a training sync;
        // repeated, it drives the outer optimizer through many rounds of one magnitude.
        const uint32_t p = PickFragment();
        const uint64_t round = OpenRound(p);
        const float scale = PickFloat();
        const uint32_t seed = in_.ConsumeIntegral<uint32_t>();
        const std::vector<WorkerKey> keys = keys_;
        for (size_t i = 0; i < keys.size(); ++i) {
          PushOne(keys[i], p, round, Genuine(p, scale, seed + static_cast<uint32_t>(i)));
        }
        break;
      }
      case kCheckPush: {
        const WorkerKey key = PickKey();
        const uint32_t p = PickFragment();
        const uint64_t round = PickRound(p);
        uint64_t bytes = in_.ConsumeIntegral<uint64_t>();
        if (auto exact = core_->ContributionBytes(p); exact.ok() && (bytes & 3) != 3) {
          bytes = *exact + (bytes & 3) - 1;  // exact, one short, one over
        }
        auto r = core_->CheckPush(key, p, round, bytes);
        refused = !r.ok();
        if (r.ok() && !r->duplicate) Require(r->open_round == round && round == OpenRound(p));
        if (r.ok() && r->duplicate) ++duplicates_;  // answered here, as the service does
        break;
      }
      case kHeartbeat: {
        HeartbeatInfo h;
        h.key = PickKey();
        h.step = in_.ConsumeIntegral<uint64_t>();
        h.last_loss = std::bit_cast<float>(in_.ConsumeIntegral<uint32_t>());
        h.tokens = in_.ConsumeIntegral<uint64_t>();
        h.bytes_sent = in_.ConsumeIntegral<uint64_t>();
        h.bytes_received = in_.ConsumeIntegral<uint64_t>();
        h.ready = in_.ConsumeBool();
        auto r = core_->Heartbeat(h);
        refused = !r.ok();
        if (r.ok()) {
          Require(r->live_members == core_->live_members() && r->ready_members <= r->live_members);
          Require(r->shutdown == shutdown_ && r->seeded == core_->seeded());
          Require(r->open_rounds.size() == kFragments);
        }
        break;
      }
      case kJoin: {
        const JoinRequest req = PickJoin();
        // A retried Join (same nonce while that member is live) must return the same membership.
        std::optional<WorkerKey> same;
        if (auto it = by_nonce_.find(req.join_nonce); req.join_nonce != 0 && it != by_nonce_.end()) {
          for (const WorkerStats& w : core_->workers()) {
            if (w.worker_id == it->second.worker_id && w.live) same = it->second;
          }
        }
        const uint32_t live_before = core_->live_members();
        auto r = core_->Join(req);
        refused = !r.ok();
        if (r.ok()) {
          Require(r->key.worker_id != 0 && r->key.session != 0);
          Require(r->layout.num_fragments() == kFragments && r->open_rounds.size() == kFragments);
          Require(r->seeded == core_->seeded() && !(r->seeded && r->must_seed));
          Require(core_->live_members() == live_before + (same ? 0 : 1));
          if (same) Require(r->key.worker_id == same->worker_id && r->key.session == same->session);
          AddKey(r->key);
          if (req.join_nonce != 0) {
            by_nonce_[req.join_nonce] = r->key;
            nonces_.push_back(req.join_nonce);
          }
        }
        break;
      }
      case kGetUpdate: {
        const WorkerKey key = PickKey();
        const uint32_t p = PickFragment();
        const uint64_t round = PickRound(p);
        auto r = core_->GetUpdate(key, p, round);
        refused = !r.ok();
        if (r.ok()) {
          Require(r->fragment == p && r->round == round && round < OpenRound(p));
          pending_.push_back(*r);
        }
        break;
      }
      case kAwaitUpdate: {
        const WorkerKey key = PickKey();
        const uint32_t p = PickFragment();
        const uint64_t round = PickRound(p);
        const CoordinatorCore::WaitId id = core_->AwaitUpdate(key, p, round, UpdateCallback());
        Wait& w = waits_.back();
        if (in_.ConsumeBool() && core_->CancelWait(id)) {
          Require(w.calls == 0);
          w.cancelled = true;
        }
        break;
      }
      case kTick: {
        const uint8_t b = in_.ConsumeIntegral<uint8_t>();
        int64_t ms = in_.ConsumeIntegralInRange<int64_t>(0, 2'000);
        if (b >= 128) ms = in_.ConsumeIntegralInRange<int64_t>(0, 120'000);
        if (b >= 240) ms = in_.ConsumeIntegralInRange<int64_t>(0, 86'400'000);
        clock_.Advance(std::chrono::milliseconds(ms));
        if (b & 1) {
          core_->Tick();
          may_change = true;
        }
        break;
      }
      case kLeave: {
        const Status s = core_->Leave(PickKey());
        refused = !s.ok();
        may_change = s.ok();
        break;
      }
      case kSeed: {
        const WorkerKey key = PickKey();
        const bool was_seeded = core_->seeded();
        const std::vector<float> values = PickSeed();
        auto r = core_->SeedState(key, values);
        refused = !r.ok();
        may_change = r.ok() && !was_seeded;
        if (r.ok()) {
          Require(core_->seeded() && (r->accepted || was_seeded));
          if (!was_seeded) seed_ = values;
          Require(r->accepted == (values.size() == seed_.size() &&
                                  std::memcmp(values.data(), seed_.data(), 4 * values.size()) == 0));
        }
        break;
      }
      case kBootstrap: {
        auto r = core_->Bootstrap(PickKey());
        refused = !r.ok();
        if (r.ok()) {
          Require(r->fragments.size() == kFragments && r->crc32c == core_->GlobalStateCrc());
          for (uint32_t p = 0; p < kFragments; ++p) {
            Require(r->fragments[p].size() == core_->layout()->element_count(p));
            Require(comm::CrcOfFloats(r->fragments[p]) == r->crc32c[p] && Finite(r->fragments[p]));
            Require(r->open_rounds[p] == OpenRound(p));
          }
        }
        break;
      }
      case kCheckMember:
        refused = !core_->CheckMember(PickKey(), "fuzz").ok();
        break;
      case kAwaitSeeded: {
        const CoordinatorCore::WaitId id = core_->AwaitSeeded(PickKey(), SeededCallback());
        Wait& w = waits_.back();
        if (in_.ConsumeBool() && core_->CancelWait(id)) {
          Require(w.calls == 0);
          w.cancelled = true;
        }
        break;
      }
      case kCancelAll:
        core_->CancelAllWaits(Unavailable("fuzz: cancel all"));
        for (const Wait& w : waits_) Require(w.calls == (w.cancelled ? 0 : 1));
        break;
      case kShutdown:
        core_->RequestShutdown("fuzz: shutdown");
        shutdown_ = true;
        break;
      case kNumOps:
        break;
    }
    Check(before, refused, may_change_ || may_change);
  }

  void Check(const CoordinatorCounters& before, bool refused, bool may_change) {
    const CoordinatorSnapshot snap = core_->Snapshot();
    const std::vector<uint32_t> crc = core_->GlobalStateCrc();
    if (refused || !may_change) Require(crc == prev_crc_);
    RequireMonotone(before, snap.counters);
    Require(snap.seeded || !prev_.seeded);
    Require(snap.counters.contributions == before.contributions + accepted_);
    Require(snap.counters.duplicate_pushes == before.duplicate_pushes + duplicates_);
    if (snap.seeded) {
      Require(snap.fragments.size() == kFragments && crc.size() == kFragments);
      uint64_t rounds = 0;
      for (uint32_t p = 0; p < kFragments; ++p) {
        const FragmentSnapshot& f = snap.fragments[p];
        Require(Finite(f.global) && Finite(f.momentum));
        Require(crc[p] == comm::CrcOfFloats(f.global));
        rounds += f.open_round;
        if (!prev_.seeded) continue;
        const FragmentSnapshot& was = prev_.fragments[p];
        Require(f.open_round == was.open_round || f.open_round == was.open_round + 1);
        if (f.open_round == was.open_round) {
          Require(crc[p] == prev_crc_[p]);
        } else {
          closed_[{p, was.open_round}] = Closed{was.global, crc[p]};
        }
      }
      Require(rounds == snap.counters.rounds_closed);
    } else {
      Require(crc.empty() && snap.counters.rounds_closed == 0);
    }
    // Updates handed out since the last check: the payload is what its header claims, and applying
    // it to the state before its round closed gives exactly the state after.
    for (const UpdatePayload& u : pending_) {
      Require(u.payload != nullptr && quant::Crc32c(*u.payload) == u.crc32c);
      Require(u.fragment < kFragments && u.contributions >= 1);
      auto it = closed_.find({u.fragment, u.round});
      Require(it != closed_.end());  // every close since seeding was observed
      std::vector<float> g = it->second.before;
      Require(comm::ApplyOuterUpdate(*u.payload, g, scratch_).ok());
      Require(comm::CrcOfFloats(g) == it->second.crc_after);
    }
    pending_.clear();
    prev_ = snap;
    prev_crc_ = crc;
  }

  FuzzedDataProvider& in_;
  coordinator::ManualClock clock_;
  quant::CodecSpec upload_;
  std::unique_ptr<CoordinatorCore> core_;
  std::vector<WorkerKey> keys_;
  std::vector<uint64_t> nonces_;
  std::map<uint64_t, WorkerKey> by_nonce_;
  std::vector<float> seed_ = Initial();
  bool shutdown_ = false;
  bool destroying_ = false;
  bool may_change_ = false;  // per call: an accepted push may close a round
  uint64_t accepted_ = 0;    // per call: accepted and duplicate pushes
  uint64_t duplicates_ = 0;
  CoordinatorSnapshot prev_;
  std::vector<uint32_t> prev_crc_;
  std::deque<Wait> waits_;
  std::vector<UpdatePayload> pending_;
  std::map<std::pair<uint32_t, uint64_t>, Closed> closed_;
  std::vector<float> scratch_;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  spdlog::set_level(spdlog::level::off);
  (void)Signature();
  (void)Initial();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Harness h(in);
  h.Run();
  return 0;
}
