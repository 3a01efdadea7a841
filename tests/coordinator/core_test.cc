// CoordinatorCore driven in-process by fake workers, with a manual clock.
#include "coordinator/core.h"

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "tests/coordinator/core_fixture.h"
#include "tests/coordinator/fake_worker.h"

namespace lowband::coordinator {
namespace {

const bool kQuietLogs = [] {
  spdlog::set_level(spdlog::level::warn);
  return true;
}();

using lowband::testing::FakeWorker;
using lowband::testing::InitialParameters;
using lowband::testing::TestSignature;
using std::chrono::milliseconds;
using std::chrono::seconds;

quant::CodecSpec Fp32() {
  quant::CodecSpec s;
  s.format = quant::Format::kFp32;
  return s;
}

class CoreTest : public ::testing::Test {
 protected:
  CoordinatorOptions BaseOptions() { return lowband::testing::TestCoordinatorOptions(&clock_); }

  void Start(CoordinatorOptions o) {
    auto core = CoordinatorCore::Create(std::move(o));
    ASSERT_TRUE(core.ok()) << core.status().ToString();
    core_ = std::move(core).value();
  }

  JoinRequest Request(const std::string& name = "w") { return lowband::testing::TestJoinRequest(name); }

  // Joins m workers; the first seeds, all bootstrap. Fills keys_ and workers_.
  void JoinAndSeed(int m) {
    for (int i = 0; i < m; ++i) {
      auto j = core_->Join(Request("w" + std::to_string(i)));
      ASSERT_TRUE(j.ok()) << j.status().ToString();
      EXPECT_EQ(j->must_seed, i == 0);
      keys_.push_back(j->key);
      if (i == 0) {
        auto s = core_->SeedState(j->key, InitialParameters(TestSignature().total_elements()));
        ASSERT_TRUE(s.ok()) << s.status().ToString();
        EXPECT_TRUE(s->accepted);
      }
    }
    for (int i = 0; i < m; ++i) {
      auto b = core_->Bootstrap(keys_[i]);
      ASSERT_TRUE(b.ok()) << b.status().ToString();
      workers_.push_back(std::make_unique<FakeWorker>(b->fragments, 100 + i));
    }
  }

  StatusOr<PushResult> PushFrom(int w, uint32_t p, uint64_t r) {
    return core_->Push(keys_[w], p, r, workers_[w]->Contribution(p, core_->options().upload_codec));
  }

  ManualClock clock_;
  std::unique_ptr<CoordinatorCore> core_;
  std::vector<WorkerKey> keys_;
  std::vector<std::unique_ptr<FakeWorker>> workers_;
};

TEST_F(CoreTest, RoundClosesWhenEveryLiveMemberContributed) {
  Start(BaseOptions());
  JoinAndSeed(3);
  ASSERT_TRUE(PushFrom(0, 1, 0).ok());
  auto second = PushFrom(1, 1, 0);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->contributions, 2u);
  EXPECT_EQ(second->open_round, 0u);
  auto pending = core_->GetUpdate(keys_[0], 1, 0);
  EXPECT_EQ(pending.status().code(), StatusCode::kUnavailable) << pending.status().ToString();

  auto last = PushFrom(2, 1, 0);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->contributions, 3u);
  EXPECT_EQ(last->open_round, 1u);
  auto update = core_->GetUpdate(keys_[0], 1, 0);
  ASSERT_TRUE(update.ok()) << update.status().ToString();
  EXPECT_EQ(update->contributions, 3u);
  EXPECT_EQ(update->payload->size(), quant::EncodedSize(core_->options().download_codec, 272));
  // The other fragments did not move.
  auto status0 = core_->round_status(0);
  ASSERT_TRUE(status0.ok());
  EXPECT_EQ(status0->open_round, 0u);
  EXPECT_EQ(core_->counters().rounds_closed, 1u);
  EXPECT_EQ(core_->counters().rounds_closed_at_deadline, 0u);
}

TEST_F(CoreTest, DeadlineClosesWithQuorumAndWaitsBelowIt) {
  auto o = BaseOptions();
  o.quorum = 2;
  Start(o);
  JoinAndSeed(3);
  ASSERT_TRUE(PushFrom(0, 0, 0).ok());
  clock_.Advance(seconds(11));
  core_->Tick();
  // Past the deadline with 1 of the 2 the quorum needs: still open, reported once.
  auto st = core_->round_status(0);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->open_round, 0u);
  EXPECT_TRUE(st->overdue);
  EXPECT_EQ(core_->counters().rounds_overdue, 1u);
  core_->Tick();
  EXPECT_EQ(core_->counters().rounds_overdue, 1u);

  // The quorum arrives after the deadline: the round closes at once, without worker 2.
  auto r = PushFrom(1, 0, 0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->open_round, 1u);
  EXPECT_EQ(core_->counters().rounds_closed_at_deadline, 1u);

  // The straggler's contribution is late: refused, counted, and not mixed into round 1.
  auto late = PushFrom(2, 0, 0);
  EXPECT_EQ(late.status().code(), StatusCode::kAborted);
  EXPECT_NE(late.status().message().find("already closed"), std::string::npos) << late.status().message();
  EXPECT_EQ(core_->counters().late_pushes, 1u);
  auto st1 = core_->round_status(0);
  EXPECT_EQ(st1->contributions, 0u);
  auto ws = core_->workers();
  EXPECT_EQ(ws[2].late_pushes, 1u);
}

TEST_F(CoreTest, TickClosesRoundAtDeadlineWithQuorum) {
  auto o = BaseOptions();
  o.quorum = 2;
  Start(o);
  JoinAndSeed(3);
  ASSERT_TRUE(PushFrom(0, 2, 0).ok());
  ASSERT_TRUE(PushFrom(1, 2, 0).ok());
  clock_.Advance(seconds(9));
  core_->Tick();
  EXPECT_EQ(core_->round_status(2)->open_round, 0u);
  clock_.Advance(seconds(2));
  core_->Tick();
  EXPECT_EQ(core_->round_status(2)->open_round, 1u);
  auto u = core_->GetUpdate(keys_[2], 2, 0);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->contributions, 2u);
}

TEST_F(CoreTest, DuplicatePushIsAcknowledgedButAppliedOnce) {
  auto o = BaseOptions();
  o.layout.num_fragments = 1;
  o.upload_codec = Fp32();
  o.download_codec = Fp32();
  o.outer = {1.0f, 0.0f, false};  // u = mean: the update shows exactly what was averaged
  Start(o);
  JoinAndSeed(2);
  const uint64_t n = TestSignature().total_elements();
  std::vector<float> a(n, 1.0f), b(n, 3.0f);
  auto pa = *quant::Encode(Fp32(), a);
  auto pb = *quant::Encode(Fp32(), b);
  auto first = core_->Push(keys_[0], 0, 0, pa);
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->duplicate);
  auto again = core_->Push(keys_[0], 0, 0, pa);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(again->contributions, 1u);
  auto check = core_->CheckPush(keys_[0], 0, 0, pa.size());
  ASSERT_TRUE(check.ok());
  EXPECT_TRUE(check->duplicate);
  ASSERT_TRUE(core_->Push(keys_[1], 0, 0, pb).ok());
  // A retry that arrives after the round closed is still a duplicate, not a late push.
  auto retry = core_->Push(keys_[1], 0, 0, pb);
  ASSERT_TRUE(retry.ok());
  EXPECT_TRUE(retry->duplicate);
  EXPECT_EQ(core_->counters().duplicate_pushes, 3u);
  EXPECT_EQ(core_->counters().late_pushes, 0u);

  auto u = core_->GetUpdate(keys_[0], 0, 0);
  ASSERT_TRUE(u.ok());
  auto decoded = quant::Decode(*u->payload);
  ASSERT_TRUE(decoded.ok());
  for (float x : *decoded) ASSERT_EQ(x, 2.0f);  // (1 + 3) / 2, not (1 + 1 + 3) / 3
}

// Outer Nesterov over three rounds, fp32 both ways, against values computed by hand.
TEST_F(CoreTest, OuterNesterovMatchesHandComputedValues) {
  auto o = BaseOptions();
  o.layout.num_fragments = 1;
  o.upload_codec = Fp32();
  o.download_codec = Fp32();
  o.outer = {0.5f, 0.5f, true};  // exact in binary, so every step below is exact
  Start(o);
  JoinAndSeed(2);
  const uint64_t n = TestSignature().total_elements();
  const float g0 = workers_[0]->global()[0][5];
  // Per round, the two workers' deltas and the expected update:
  //   r0: mean 2   buf = 0.5*0 + 2 = 2      u = 0.5*(2 + 0.5*2)   = 1.5
  //   r1: mean 1   buf = 0.5*2 + 1 = 2      u = 0.5*(1 + 0.5*2)   = 1.0
  //   r2: mean 4   buf = 0.5*2 + 4 = 5      u = 0.5*(4 + 0.5*5)   = 3.25
  const float deltas[3][2] = {{1.0f, 3.0f}, {0.5f, 1.5f}, {2.0f, 6.0f}};
  const float expected_u[3] = {1.5f, 1.0f, 3.25f};
  const float expected_buf[3] = {2.0f, 2.0f, 5.0f};
  float g = g0;
  for (int r = 0; r < 3; ++r) {
    for (int w = 0; w < 2; ++w) {
      std::vector<float> d(n, deltas[r][w]);
      ASSERT_TRUE(core_->Push(keys_[w], 0, r, *quant::Encode(Fp32(), d)).ok());
    }
    auto u = core_->GetUpdate(keys_[0], 0, r);
    ASSERT_TRUE(u.ok()) << u.status().ToString();
    auto dec = quant::Decode(*u->payload);
    ASSERT_TRUE(dec.ok());
    EXPECT_EQ((*dec)[5], expected_u[r]) << "round " << r;
    g -= expected_u[r];
    auto snap = core_->Snapshot();
    EXPECT_EQ(snap.fragments[0].momentum[5], expected_buf[r]) << "round " << r;
    EXPECT_EQ(snap.fragments[0].global[5], g) << "round " << r;
    EXPECT_EQ(snap.fragments[0].open_round, static_cast<uint64_t>(r + 1));
  }
}

// The paper's settings (lr 0.7, mu 0.9): decimal values, compared with a tolerance.
TEST_F(CoreTest, OuterNesterovDefaultHyperparameters) {
  auto o = BaseOptions();
  o.layout.num_fragments = 1;
  o.upload_codec = Fp32();
  o.download_codec = Fp32();
  Start(o);  // lr 0.7, momentum 0.9, Nesterov
  JoinAndSeed(1);
  const uint64_t n = TestSignature().total_elements();
  const float means[3] = {2.0f, 1.0f, 4.0f};
  // buf: 2, 2.8, 6.52; u = 0.7*(m + 0.9*buf): 2.66, 2.464, 6.9076.
  const float expected_u[3] = {2.66f, 2.464f, 6.9076f};
  for (int r = 0; r < 3; ++r) {
    std::vector<float> d(n, means[r]);
    ASSERT_TRUE(core_->Push(keys_[0], 0, r, *quant::Encode(Fp32(), d)).ok());
    auto u = core_->GetUpdate(keys_[0], 0, r);
    ASSERT_TRUE(u.ok());
    EXPECT_NEAR((*quant::Decode(*u->payload))[0], expected_u[r], 1e-5) << "round " << r;
  }
}

// Workers that apply the returned FP4 payloads to their own copies hold the coordinator's g, bit
// for bit, over many rounds of every fragment.
TEST_F(CoreTest, WorkersApplyingPayloadsHoldBitIdenticalGlobalState) {
  Start(BaseOptions());  // FP4 E3M0 both ways
  JoinAndSeed(4);
  const auto initial = core_->GlobalStateCrc();
  for (const auto& w : workers_) EXPECT_EQ(w->Crc(), initial);
  for (uint64_t r = 0; r < 5; ++r) {
    for (uint32_t p = 0; p < 3; ++p) {
      for (int w = 0; w < 4; ++w) ASSERT_TRUE(PushFrom(w, p, r).ok());
      for (int w = 0; w < 4; ++w) {
        auto u = core_->GetUpdate(keys_[w], p, r);
        ASSERT_TRUE(u.ok()) << u.status().ToString();
        EXPECT_EQ(u->crc32c, quant::Crc32c(*u->payload));
        workers_[w]->Apply(p, *u->payload);
      }
    }
    const auto crc = core_->GlobalStateCrc();
    for (const auto& w : workers_) ASSERT_EQ(w->Crc(), crc) << "after round " << r;
  }
  const auto final_crc = core_->GlobalStateCrc();
  for (uint32_t p = 0; p < 3; ++p) EXPECT_NE(final_crc[p], initial[p]) << "fragment " << p << " never moved";
  EXPECT_EQ(core_->counters().rounds_closed, 15u);
}

// Found by fuzz_coordinator_core: finite contributions of magnitude 1e37, round after round, grew the
// global state until g - update overflowed to -inf in a round that "closed" normally. Such a round
// must fail instead (counted, its update refused to every worker) and leave g and momentum as they
// were.
TEST_F(CoreTest, OuterUpdateThatWouldOverflowTheGlobalStateFailsTheRound) {
  Start(BaseOptions());
  JoinAndSeed(2);
  std::vector<float> huge(core_->layout()->element_count(1), 1e37f);
  const auto payload = *quant::Encode(core_->options().upload_codec, huge);
  uint64_t round = 0;
  for (; round < 40 && core_->counters().rounds_failed == 0; ++round) {
    const auto before = core_->Snapshot();
    ASSERT_TRUE(core_->Push(keys_[0], 1, round, payload).ok());
    ASSERT_TRUE(core_->Push(keys_[1], 1, round, payload).ok());
    const auto after = core_->Snapshot();
    for (float v : after.fragments[1].global) ASSERT_TRUE(std::isfinite(v)) << "round " << round;
    if (core_->counters().rounds_failed > 0) {
      EXPECT_EQ(after.fragments[1].global, before.fragments[1].global);
      EXPECT_EQ(after.fragments[1].momentum, before.fragments[1].momentum);
      auto u = core_->GetUpdate(keys_[0], 1, round);
      EXPECT_FALSE(u.ok());
      EXPECT_NE(u.status().message().find("non-finite"), std::string::npos) << u.status().ToString();
    }
  }
  EXPECT_EQ(core_->counters().rounds_failed, 1u) << "the global state never came near overflowing";
}

// Workers on their own threads (plus a ticker) push, wait for updates through AwaitUpdate and
// apply them; the core's one mutex and its out-of-lock callbacks keep every copy bit-identical.
TEST_F(CoreTest, ConcurrentWorkersEndBitIdentical) {
  Start(BaseOptions());
  constexpr int kWorkers = 6;
  constexpr uint64_t kRounds = 4;
  JoinAndSeed(kWorkers);
  std::atomic<bool> stop{false};
  std::thread ticker([&] {
    while (!stop) {
      core_->Tick();
      std::this_thread::yield();
    }
  });
  auto run = [&](int w) {
    for (uint64_t r = 0; r < kRounds; ++r) {
      for (uint32_t p = 0; p < 3; ++p) {
        auto pushed = PushFrom(w, p, r);
        ASSERT_TRUE(pushed.ok()) << pushed.status().ToString();
        std::mutex mu;
        std::condition_variable cv;
        std::optional<StatusOr<UpdatePayload>> got;
        core_->AwaitUpdate(keys_[w], p, r, [&](StatusOr<UpdatePayload> u) {
          std::lock_guard<std::mutex> lock(mu);
          got.emplace(std::move(u));
          cv.notify_one();
        });
        std::unique_lock<std::mutex> lock(mu);
        ASSERT_TRUE(cv.wait_for(lock, seconds(10), [&] { return got.has_value(); }));
        ASSERT_TRUE(got->ok()) << got->status().ToString();
        workers_[w]->Apply(p, *(*got)->payload);
      }
      ASSERT_TRUE(core_->Heartbeat({keys_[w], r}).ok());
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) threads.emplace_back(run, w);
  for (auto& t : threads) t.join();
  stop = true;
  ticker.join();
  const auto crc = core_->GlobalStateCrc();
  for (const auto& w : workers_) EXPECT_EQ(w->Crc(), crc);
  EXPECT_EQ(core_->counters().rounds_closed, 3 * kRounds);
  EXPECT_EQ(core_->counters().contributions, 3 * kRounds * kWorkers);
}

TEST_F(CoreTest, RefusalsNameTheProblemAndLeaveStateUntouched) {
  Start(BaseOptions());
  JoinAndSeed(2);
  const auto before = core_->GlobalStateCrc();
  const quant::CodecSpec fp4 = core_->options().upload_codec;
  uint64_t refusals = core_->counters().refusals;
  auto expect_refused = [&](const Status& s, StatusCode code, const std::string& needle) {
    EXPECT_EQ(s.code(), code) << s.ToString();
    EXPECT_NE(s.message().find(needle), std::string::npos)
        << "message '" << s.message() << "' lacks '" << needle << "'";
    EXPECT_EQ(core_->GlobalStateCrc(), before);
    EXPECT_EQ(core_->counters().refusals, ++refusals);
  };

  auto bad_token = Request();
  bad_token.token = "guess";
  expect_refused(core_->Join(bad_token).status(), StatusCode::kUnauthenticated, "token");
  auto bad_run = Request();
  bad_run.run_id = "run-b";
  expect_refused(core_->Join(bad_run).status(), StatusCode::kFailedPrecondition, "run-b");
  auto bad_sig = Request();
  bad_sig.signature.tensors[3].shape = {16, 17};
  bad_sig.signature.Seal();
  expect_refused(core_->Join(bad_sig).status(), StatusCode::kFailedPrecondition, "blocks.1.w");
  auto unsealed = Request();
  unsealed.signature.hash ^= 1;
  expect_refused(core_->Join(unsealed).status(), StatusCode::kInvalidArgument, "hash");

  const auto good = workers_[0]->Contribution(0, fp4);
  expect_refused(core_->Push(keys_[0], 7, 0, good).status(), StatusCode::kInvalidArgument, "fragment 7");
  expect_refused(core_->Push(keys_[0], 0, 3, good).status(), StatusCode::kAborted, "not open yet");
  expect_refused(core_->Push({keys_[0].worker_id, keys_[0].session + 1}, 0, 0, good).status(),
                 StatusCode::kPermissionDenied, "session");
  expect_refused(core_->Push({99, 1}, 0, 0, good).status(), StatusCode::kFailedPrecondition, "not a member");
  // A valid payload for another fragment (wrong size).
  expect_refused(core_->Push(keys_[0], 0, 0, workers_[0]->Contribution(1, fp4)).status(),
                 StatusCode::kInvalidArgument, "272 values, fragment 0 has 544");
  // The right size in the wrong codec.
  quant::CodecSpec int8 = fp4;
  int8.format = quant::Format::kInt8Sym;
  expect_refused(core_->Push(keys_[0], 0, 0, workers_[0]->Contribution(0, int8)).status(),
                 StatusCode::kInvalidArgument, "upload codec");
  // Corrupted in transit.
  auto corrupt = good;
  corrupt[corrupt.size() / 2] ^= 0x10;
  expect_refused(core_->Push(keys_[0], 0, 0, corrupt).status(), StatusCode::kDataLoss, "checksum");
  auto truncated = good;
  truncated.resize(truncated.size() - 8);
  expect_refused(core_->Push(keys_[0], 0, 0, truncated).status(), StatusCode::kDataLoss, "");
  // A checksummed FP4 payload whose block scale makes a value overflow to infinity: refused (by the
  // codec's own checks or by the core's finite check behind them), nothing applied.
  quant::CodecSpec fp32_scales = fp4;
  fp32_scales.scale_type = quant::ScaleType::kFp32;
  CoordinatorOptions o2 = BaseOptions();
  o2.upload_codec = fp32_scales;
  auto core2 = std::move(CoordinatorCore::Create(o2)).value();
  auto j = *core2->Join(Request());
  ASSERT_TRUE(core2->SeedState(j.key, InitialParameters(TestSignature().total_elements())).ok());
  const auto before2 = core2->GlobalStateCrc();
  std::vector<float> big(544, 0.0f);
  big[0] = 16.0f;  // scale 1, code of magnitude 16
  auto inf_payload = *quant::Encode(fp32_scales, big);
  const float huge = 3.0e38f;
  std::memcpy(inf_payload.data() + quant::kHeaderBytes, &huge, 4);  // block 0's scale
  lowband::testing::RestampCrc(inf_payload);
  auto inf_push = core2->Push(j.key, 0, 0, inf_payload);
  EXPECT_FALSE(inf_push.ok());
  EXPECT_TRUE(inf_push.status().code() == StatusCode::kDataLoss ||
              inf_push.status().code() == StatusCode::kInvalidArgument)
      << inf_push.status().ToString();
  EXPECT_EQ(core2->GlobalStateCrc(), before2);
  EXPECT_EQ(core2->round_status(0)->contributions, 0u);

  // NaN in an fp32 contribution.
  CoordinatorOptions o3 = BaseOptions();
  o3.upload_codec = Fp32();
  auto core3 = std::move(CoordinatorCore::Create(o3)).value();
  auto j3 = *core3->Join(Request());
  ASSERT_TRUE(core3->SeedState(j3.key, InitialParameters(TestSignature().total_elements())).ok());
  const auto before3 = core3->GlobalStateCrc();
  auto nan_payload = *quant::Encode(Fp32(), std::vector<float>(544, 0.5f));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(nan_payload.data() + quant::kHeaderBytes + 4 * 10, &nan, 4);
  lowband::testing::RestampCrc(nan_payload);
  auto nan_push = core3->Push(j3.key, 0, 0, nan_payload);
  EXPECT_FALSE(nan_push.ok());
  EXPECT_NE(nan_push.status().message().find("NaN"), std::string::npos) << nan_push.status().ToString();
  EXPECT_EQ(core3->GlobalStateCrc(), before3);
  EXPECT_EQ(core3->round_status(0)->contributions, 0u);

  // After all that, the round is still empty and a good push works.
  EXPECT_EQ(core_->round_status(0)->contributions, 0u);
  ASSERT_TRUE(core_->Push(keys_[0], 0, 0, good).ok());
}

TEST_F(CoreTest, CheckPushRefusesWrongDeclaredSizeBeforeBytesArrive) {
  Start(BaseOptions());
  JoinAndSeed(1);
  auto size = core_->ContributionBytes(0);
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, quant::EncodedSize(core_->options().upload_codec, 544));
  EXPECT_TRUE(core_->CheckPush(keys_[0], 0, 0, *size).ok());
  auto too_big = core_->CheckPush(keys_[0], 0, 0, *size + 1);
  EXPECT_EQ(too_big.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_big.status().message().find(std::to_string(*size)), std::string::npos);
}

TEST_F(CoreTest, SilentMemberExpiresAndRoundsStopWaitingForIt) {
  Start(BaseOptions());
  JoinAndSeed(3);
  ASSERT_TRUE(PushFrom(0, 0, 0).ok());
  ASSERT_TRUE(PushFrom(1, 0, 0).ok());
  clock_.Advance(seconds(20));
  ASSERT_TRUE(core_->Heartbeat({keys_[0]}).ok());
  ASSERT_TRUE(core_->Heartbeat({keys_[1]}).ok());
  clock_.Advance(seconds(15));  // worker 2 silent for 35 s > 30 s
  core_->Tick();
  EXPECT_EQ(core_->live_members(), 2u);
  EXPECT_EQ(core_->counters().expirations, 1u);
  // Round 0 of fragment 0 no longer waits for worker 2: it closed on the expiry.
  EXPECT_EQ(core_->round_status(0)->open_round, 1u);
  auto refused = PushFrom(2, 1, 0);
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("Join again"), std::string::npos);
}

TEST_F(CoreTest, LeaveIsIdempotentAndClosesWaitingRounds) {
  Start(BaseOptions());
  JoinAndSeed(2);
  ASSERT_TRUE(PushFrom(0, 0, 0).ok());
  EXPECT_EQ(core_->round_status(0)->open_round, 0u);
  ASSERT_TRUE(core_->Leave(keys_[1]).ok());
  EXPECT_EQ(core_->round_status(0)->open_round, 1u);
  EXPECT_TRUE(core_->Leave(keys_[1]).ok());
  EXPECT_EQ(core_->counters().leaves, 1u);
  EXPECT_EQ(core_->Leave({keys_[1].worker_id, 1}).code(), StatusCode::kPermissionDenied);
}

TEST_F(CoreTest, AwaitUpdateCompletesWhenTheRoundClosesAndCanBeCancelled) {
  Start(BaseOptions());
  JoinAndSeed(2);
  std::optional<StatusOr<UpdatePayload>> got;
  auto id = core_->AwaitUpdate(keys_[0], 0, 0, [&](StatusOr<UpdatePayload> u) { got.emplace(std::move(u)); });
  std::optional<Status> cancelled_cb;
  auto id2 =
      core_->AwaitUpdate(keys_[1], 0, 0, [&](StatusOr<UpdatePayload> u) { cancelled_cb = u.status(); });
  EXPECT_FALSE(got.has_value());
  EXPECT_TRUE(core_->CancelWait(id2));
  ASSERT_TRUE(PushFrom(0, 0, 0).ok());
  EXPECT_FALSE(got.has_value());
  ASSERT_TRUE(PushFrom(1, 0, 0).ok());
  ASSERT_TRUE(got.has_value());
  ASSERT_TRUE(got->ok()) << got->status().ToString();
  EXPECT_EQ((*got)->round, 0u);
  EXPECT_FALSE(core_->CancelWait(id));     // already delivered
  EXPECT_FALSE(cancelled_cb.has_value());  // a cancelled wait never fires

  // A closed round answers at once (synchronously); a bad request answers with the error.
  std::optional<StatusOr<UpdatePayload>> now;
  core_->AwaitUpdate(keys_[1], 0, 0, [&](StatusOr<UpdatePayload> u) { now.emplace(std::move(u)); });
  ASSERT_TRUE(now.has_value() && now->ok());
  std::optional<Status> future;
  core_->AwaitUpdate(keys_[1], 0, 9, [&](StatusOr<UpdatePayload> u) { future = u.status(); });
  ASSERT_TRUE(future.has_value());
  EXPECT_EQ(future->code(), StatusCode::kOutOfRange);

  std::optional<Status> shut;
  core_->AwaitUpdate(keys_[1], 0, 1, [&](StatusOr<UpdatePayload> u) { shut = u.status(); });
  core_->CancelAllWaits(Unavailable("shutting down"));
  ASSERT_TRUE(shut.has_value());
  EXPECT_EQ(shut->code(), StatusCode::kUnavailable);
}

TEST_F(CoreTest, OldRoundsAreGoneWithAClearStatus) {
  auto o = BaseOptions();
  o.retained_rounds = 2;
  Start(o);
  JoinAndSeed(1);
  for (uint64_t r = 0; r < 4; ++r) ASSERT_TRUE(PushFrom(0, 0, r).ok());
  EXPECT_TRUE(core_->GetUpdate(keys_[0], 0, 3).ok());
  EXPECT_TRUE(core_->GetUpdate(keys_[0], 0, 2).ok());
  auto gone = core_->GetUpdate(keys_[0], 0, 1);
  EXPECT_EQ(gone.status().code(), StatusCode::kNotFound);
  EXPECT_NE(gone.status().message().find("Bootstrap"), std::string::npos) << gone.status().message();
}

TEST_F(CoreTest, SeedingFirstJoinerOthersWaitAndSeederLossIsReported) {
  Start(BaseOptions());
  auto a = *core_->Join(Request("a"));
  auto b = *core_->Join(Request("b"));
  EXPECT_TRUE(a.must_seed);
  EXPECT_FALSE(b.must_seed);
  EXPECT_FALSE(b.seeded);
  EXPECT_EQ(core_->Bootstrap(b.key).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->Push(b.key, 0, 0, std::vector<uint8_t>(64)).status().code(),
            StatusCode::kFailedPrecondition);

  std::optional<Status> waited;
  core_->AwaitSeeded(b.key, [&](Status s) { waited = s; });
  EXPECT_FALSE(waited.has_value());
  ASSERT_TRUE(core_->Leave(a.key).ok());  // the seeder leaves before uploading
  ASSERT_TRUE(waited.has_value());
  EXPECT_EQ(waited->code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(waited->message().find("SeedState"), std::string::npos);

  auto c = *core_->Join(Request("c"));
  EXPECT_TRUE(c.must_seed);  // the seeder role moved on
  const auto params = InitialParameters(TestSignature().total_elements());
  std::optional<Status> seeded;
  core_->AwaitSeeded(b.key, [&](Status s) { seeded = s; });
  auto wrong_size = core_->SeedState(c.key, std::vector<float>(10, 0.0f));
  EXPECT_EQ(wrong_size.status().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(core_->SeedState(c.key, params)->accepted);
  ASSERT_TRUE(seeded.has_value() && seeded->ok());
  // A retried identical upload is accepted; different values are not (the worker Bootstraps).
  EXPECT_TRUE(core_->SeedState(c.key, params)->accepted);
  EXPECT_FALSE(core_->SeedState(b.key, InitialParameters(params.size(), 8))->accepted);

  auto boot = core_->Bootstrap(b.key);
  ASSERT_TRUE(boot.ok());
  auto layout = *core_->layout();
  for (uint32_t p = 0; p < 3; ++p) {
    std::vector<float> expect(layout.element_count(p));
    ASSERT_TRUE(layout.Gather(p, params, expect).ok());
    EXPECT_EQ(boot->fragments[p], expect);
    EXPECT_EQ(boot->open_rounds[p], 0u);
  }
  auto w = core_->workers();
  EXPECT_EQ(w[1].bootstrap_bytes_out, params.size() * 4);
  EXPECT_EQ(w[2].bootstrap_bytes_in, params.size() * 4 * 2);
  EXPECT_EQ(core_->counters().sync_bytes_in, 0u);
}

TEST_F(CoreTest, LateJoinerIsNotWaitedForInARoundUnderWay) {
  Start(BaseOptions());
  JoinAndSeed(2);
  ASSERT_TRUE(PushFrom(0, 0, 0).ok());
  auto late = core_->Join(Request("late"));
  ASSERT_TRUE(late.ok());
  EXPECT_EQ(late->open_rounds[0], 0u);
  EXPECT_EQ(core_->round_status(0)->expected, 2u);  // fragment 0's round 0 is under way
  EXPECT_EQ(core_->round_status(1)->expected, 3u);  // fragment 1's round 0 has not started
  ASSERT_TRUE(PushFrom(1, 0, 0).ok());
  EXPECT_EQ(core_->round_status(0)->open_round, 1u);
  EXPECT_EQ(core_->round_status(0)->expected, 3u);
}

TEST_F(CoreTest, JoinWithTheSameNonceIsIdempotent) {
  Start(BaseOptions());
  auto r = Request();
  r.join_nonce = 42;
  auto a = *core_->Join(r);
  auto b = *core_->Join(r);
  EXPECT_EQ(a.key.worker_id, b.key.worker_id);
  EXPECT_EQ(a.key.session, b.key.session);
  EXPECT_EQ(core_->live_members(), 1u);
  EXPECT_TRUE(b.must_seed);
}

TEST_F(CoreTest, HeartbeatCarriesShutdownAndProgress) {
  Start(BaseOptions());
  JoinAndSeed(1);
  auto hb = core_->Heartbeat({keys_[0], 12, 3.5f, 1000, 10, 20});
  ASSERT_TRUE(hb.ok());
  EXPECT_FALSE(hb->shutdown);
  EXPECT_EQ(hb->open_rounds, (std::vector<uint64_t>{0, 0, 0}));
  core_->RequestShutdown("training finished");
  hb = core_->Heartbeat({keys_[0], 13, 3.4f, 1100, 10, 20});
  ASSERT_TRUE(hb.ok());
  EXPECT_TRUE(hb->shutdown);
  EXPECT_EQ(hb->reason, "training finished");
  EXPECT_EQ(core_->workers()[0].step, 13u);
  EXPECT_EQ(core_->workers()[0].reported_bytes_received, 20u);
}

// The start barrier: ready_members counts live members that said ready, and only those; it stays
// counted in later heartbeats that do not repeat it, and a member that leaves stops counting.
TEST_F(CoreTest, ReadyMembersCountsOnlyLiveMembersThatSaidReady) {
  Start(BaseOptions());
  JoinAndSeed(3);
  auto hb = core_->Heartbeat({keys_[0]});
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(hb->live_members, 3u);
  EXPECT_EQ(hb->ready_members, 0u);
  HeartbeatInfo ready{keys_[1]};
  ready.ready = true;
  hb = core_->Heartbeat(ready);
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(hb->ready_members, 1u);
  ready.key = keys_[2];
  ASSERT_TRUE(core_->Heartbeat(ready).ok());
  hb = core_->Heartbeat({keys_[1]});  // not repeated: still ready
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(hb->ready_members, 2u);
  ASSERT_TRUE(core_->Leave(keys_[2]).ok());
  hb = core_->Heartbeat({keys_[0]});
  ASSERT_TRUE(hb.ok());
  EXPECT_EQ(hb->ready_members, 1u);
}

TEST_F(CoreTest, SignatureFromOptionsIsEnforcedAndOptionsAreValidated) {
  auto o = BaseOptions();
  o.signature = TestSignature();
  o.signature->tensors.pop_back();
  o.signature->Seal();
  Start(o);
  auto j = core_->Join(Request());
  EXPECT_EQ(j.status().code(), StatusCode::kFailedPrecondition);

  auto bad = BaseOptions();
  bad.inner_steps = 2;  // H < P
  auto c = CoordinatorCore::Create(bad);
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("H=2"), std::string::npos) << c.status().message();
  bad = BaseOptions();
  bad.outer.momentum = 1.0f;
  EXPECT_FALSE(CoordinatorCore::Create(bad).ok());
  bad = BaseOptions();
  bad.quorum = 0;
  EXPECT_FALSE(CoordinatorCore::Create(bad).ok());
}

}  // namespace
}  // namespace lowband::coordinator
