// Coordinator durability and limits: snapshots, checkpoint files, restore, rejoin, member and model
// limits. Transport-free (the core and coordinator/checkpoint.h); tests/integration/chaos_test.cc
// kills real processes.
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "coordinator/checkpoint.h"
#include "coordinator/clock.h"
#include "coordinator/core.h"
#include "quant/codec.h"
#include "tests/coordinator/core_fixture.h"
#include "tests/coordinator/fake_worker.h"

namespace lowband::coordinator {
namespace {

using lowband::testing::FakeWorker;
using lowband::testing::InitialParameters;
using lowband::testing::TestSignature;
using std::chrono::milliseconds;
using std::chrono::seconds;

class DurabilityTest : public ::testing::Test {
 protected:
  CoordinatorOptions Options() { return lowband::testing::TestCoordinatorOptions(&clock_); }

  JoinRequest Request(uint64_t nonce) {
    return lowband::testing::TestJoinRequest("w" + std::to_string(nonce), nonce);
  }

  // m members (nonces 1..m) on `core`; the first seeds.
  void JoinAndSeed(CoordinatorCore& core, int m) {
    for (int i = 0; i < m; ++i) {
      auto j = core.Join(Request(i + 1));
      ASSERT_TRUE(j.ok()) << j.status().ToString();
      keys_.push_back(j->key);
      if (i == 0) {
        ASSERT_TRUE(core.SeedState(j->key, InitialParameters(TestSignature().total_elements())).ok());
      }
    }
    for (int i = 0; i < m; ++i) {
      auto b = core.Bootstrap(keys_[i]);
      ASSERT_TRUE(b.ok()) << b.status().ToString();
      workers_.push_back(std::make_unique<FakeWorker>(b->fragments, 200 + i));
    }
  }

  // Every member contributes to (fragment, round), then applies the update.
  void RunRound(CoordinatorCore& core, uint32_t p, uint64_t r) {
    for (size_t w = 0; w < keys_.size(); ++w) {
      auto pushed = core.Push(keys_[w], p, r, workers_[w]->Contribution(p, core.options().upload_codec));
      ASSERT_TRUE(pushed.ok()) << pushed.status().ToString();
    }
    for (size_t w = 0; w < keys_.size(); ++w) {
      auto u = core.GetUpdate(keys_[w], p, r);
      ASSERT_TRUE(u.ok()) << u.status().ToString();
      workers_[w]->Apply(p, *u->payload);
    }
  }

  ManualClock clock_;
  std::vector<WorkerKey> keys_;
  std::vector<std::unique_ptr<FakeWorker>> workers_;
};

TEST_F(DurabilityTest, RestoredCoreContinuesBitIdenticallyAndKeepsMembers) {
  auto a = CoordinatorCore::Create(Options());
  ASSERT_TRUE(a.ok());
  JoinAndSeed(**a, 2);
  for (uint64_t r = 0; r < 3; ++r) {
    for (uint32_t p = 0; p < 3; ++p) RunRound(**a, p, r);
  }
  // One contribution into the open round of fragment 1: it is not part of the checkpoint.
  const auto contribution = workers_[0]->Contribution(1, (*a)->options().upload_codec);
  ASSERT_TRUE((*a)->Push(keys_[0], 1, 3, contribution).ok());

  const std::string bytes = EncodeCheckpoint((*a)->Snapshot());
  auto decoded = DecodeCheckpoint(bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  auto b = CoordinatorCore::Restore(Options(), *decoded);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ((*b)->GlobalStateCrc(), (*a)->GlobalStateCrc());
  EXPECT_EQ((*b)->counters().rounds_closed, 9u);
  EXPECT_NE((*b)->incarnation(), (*a)->incarnation());

  // The members' keys still work; the open round restarted empty and waits for both again.
  for (const WorkerKey& k : keys_) {
    auto hb = (*b)->Heartbeat({k, 1, 0.0f, 0, 0, 0, false});
    ASSERT_TRUE(hb.ok()) << hb.status().ToString();
    EXPECT_EQ(hb->live_members, 2u);
    EXPECT_EQ(hb->open_rounds, (std::vector<uint64_t>{3, 3, 3}));
  }
  auto rs = (*b)->round_status(1);
  ASSERT_TRUE(rs.ok());
  EXPECT_EQ(rs->contributions, 0u);
  EXPECT_EQ(rs->expected, 2u);

  // Retained updates survive byte for byte; a closed round's contributor is still a duplicate.
  auto old_update = (*a)->GetUpdate(keys_[1], 2, 2);
  auto new_update = (*b)->GetUpdate(keys_[1], 2, 2);
  ASSERT_TRUE(old_update.ok() && new_update.ok());
  EXPECT_EQ(*old_update->payload, *new_update->payload);
  auto dup = (*b)->Push(keys_[0], 2, 2, workers_[0]->Contribution(2, (*b)->options().upload_codec));
  ASSERT_TRUE(dup.ok()) << dup.status().ToString();
  EXPECT_TRUE(dup->duplicate);

  // The same contributions to the next round on both cores: the same new global state.
  ASSERT_TRUE((*b)->Push(keys_[0], 1, 3, contribution).ok());
  const auto second = workers_[1]->Contribution(1, (*a)->options().upload_codec);
  ASSERT_TRUE((*a)->Push(keys_[1], 1, 3, second).ok());
  ASSERT_TRUE((*b)->Push(keys_[1], 1, 3, second).ok());
  EXPECT_EQ((*b)->GlobalStateCrc(), (*a)->GlobalStateCrc());
  EXPECT_EQ((*b)->counters().rounds_closed, 10u);
}

TEST_F(DurabilityTest, CheckpointFilesRefuseCorruptionTruncationAndOtherRuns) {
  auto a = CoordinatorCore::Create(Options());
  ASSERT_TRUE(a.ok());
  JoinAndSeed(**a, 2);
  RunRound(**a, 0, 0);
  const std::string good = EncodeCheckpoint((*a)->Snapshot());
  ASSERT_TRUE(DecodeCheckpoint(good).ok());

  for (size_t at : {size_t{3}, size_t{20}, good.size() / 2, good.size() - 1}) {
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 0x40);
    auto d = DecodeCheckpoint(bad);
    EXPECT_EQ(d.status().code(), StatusCode::kDataLoss) << "flipped byte " << at;
  }
  for (size_t keep : {size_t{0}, size_t{10}, good.size() - 5}) {
    auto d = DecodeCheckpoint(good.substr(0, keep));
    EXPECT_EQ(d.status().code(), StatusCode::kDataLoss) << "kept " << keep << " bytes";
  }

  auto other = Options();
  other.run_id = "run-other";
  auto wrong_run = CoordinatorCore::Restore(other, *DecodeCheckpoint(good));
  EXPECT_EQ(wrong_run.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(wrong_run.status().message().find("run-a"), std::string::npos) << wrong_run.status().ToString();
  auto fewer = Options();
  fewer.layout.num_fragments = 2;
  auto wrong_layout = CoordinatorCore::Restore(fewer, *DecodeCheckpoint(good));
  EXPECT_EQ(wrong_layout.status().code(), StatusCode::kFailedPrecondition)
      << wrong_layout.status().ToString();

  // The store: nothing yet, then the last written; an older snapshot never replaces a newer one.
  const auto dir = std::filesystem::temp_directory_path() / ("lowband-ckpt-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  CheckpointStore store(dir);
  auto none = store.Load();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  const CoordinatorSnapshot older = (*a)->Snapshot();
  RunRound(**a, 1, 0);
  ASSERT_TRUE(store.Write((*a)->Snapshot()).ok());
  ASSERT_TRUE(store.Write(older).ok());
  auto loaded = store.Load();
  ASSERT_TRUE(loaded.ok() && loaded->has_value());
  EXPECT_EQ((*loaded)->sequence, 2u);
  EXPECT_EQ(std::filesystem::status(store.path()).permissions() & std::filesystem::perms::others_read,
            std::filesystem::perms::none);
  std::filesystem::remove_all(dir);
}

// A checkpoint file whose JSON header was changed by `edit` (the CRC made right again), so that
// the checks behind the checksum are what refuses it.
std::string WithHeader(const std::string& file, const std::function<void(nlohmann::json&)>& edit) {
  uint64_t len = 0;
  std::memcpy(&len, file.data() + 8, 8);
  nlohmann::json h = nlohmann::json::parse(file.substr(16, len));
  edit(h);
  const std::string header = h.dump();
  std::string out = file.substr(0, 8);
  const uint64_t new_len = header.size();
  out.append(reinterpret_cast<const char*>(&new_len), 8);
  out += header;
  out += file.substr(16 + len, file.size() - 16 - len - 4);
  const uint32_t crc =
      quant::Crc32c(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(out.data()), out.size()));
  out.append(reinterpret_cast<const char*>(&crc), 4);
  return out;
}

// Found by fuzz_coordinator_checkpoint in CI: a float where the header has an integer was converted
// unchecked (3.8e19 into uint64_t is undefined behaviour; 2.5 silently became 2).
TEST_F(DurabilityTest, CheckpointHeaderIntegersMustBeIntegersInRange) {
  auto a = CoordinatorCore::Create(Options());
  ASSERT_TRUE(a.ok());
  JoinAndSeed(**a, 2);
  RunRound(**a, 0, 0);
  const std::string good = EncodeCheckpoint((*a)->Snapshot());
  ASSERT_TRUE(DecodeCheckpoint(WithHeader(good, [](nlohmann::json&) {})).ok());
  const std::vector<std::function<void(nlohmann::json&)>> edits = {
      [](nlohmann::json& h) { h["fragments"][0]["open_round"] = 2.5; },
      [](nlohmann::json& h) { h["sequence"] = 3.78e19; },
      [](nlohmann::json& h) { h["next_worker_id"] = -1; },
      [](nlohmann::json& h) { h["seed_crc"] = uint64_t{1} << 40; },
      [](nlohmann::json& h) { h["members"][0]["expected_from"][0] = 1.0; },
      [](nlohmann::json& h) { h["counters"]["joins"] = "2"; },
  };
  for (size_t i = 0; i < edits.size(); ++i) {
    auto d = DecodeCheckpoint(WithHeader(good, edits[i]));
    EXPECT_EQ(d.status().code(), StatusCode::kDataLoss) << "edit " << i;
  }
}

TEST_F(DurabilityTest, UpdateReachesWaitersOnlyAfterItsCheckpoint) {
  auto o = Options();
  int written = 0;
  uint64_t last_sequence = 0;
  CoordinatorCore* core_ptr = nullptr;
  StatusCode during_write = StatusCode::kOk;
  int late_waiter_written = -1;
  o.checkpoint_every = 1;
  o.on_checkpoint = [&](const CoordinatorSnapshot& s) {
    // Another worker asking while the checkpoint is being written: the round is closed, but its
    // update is not handed out yet; a wait registered now completes once the write is done.
    during_write = core_ptr->GetUpdate(keys_[0], 0, 0).status().code();
    core_ptr->AwaitUpdate(keys_[0], 0, 0, [&](StatusOr<UpdatePayload> u) {
      EXPECT_TRUE(u.ok());
      late_waiter_written = written;
    });
    ++written;
    last_sequence = s.sequence;
    clock_.Advance(milliseconds(250));  // the write takes 250 ms
  };
  auto core = CoordinatorCore::Create(o);
  ASSERT_TRUE(core.ok());
  core_ptr = core->get();
  JoinAndSeed(**core, 2);
  int written_when_delivered = -1;
  (*core)->AwaitUpdate(keys_[1], 0, 0, [&](StatusOr<UpdatePayload> u) {
    EXPECT_TRUE(u.ok());
    written_when_delivered = written;
  });
  for (size_t w = 0; w < 2; ++w) {
    ASSERT_TRUE(
        (*core)->Push(keys_[w], 0, 0, workers_[w]->Contribution(0, (*core)->options().upload_codec)).ok());
  }
  EXPECT_EQ(during_write, StatusCode::kUnavailable);
  EXPECT_EQ(written_when_delivered, 1);
  EXPECT_EQ(late_waiter_written, 1);
  EXPECT_EQ(last_sequence, 1u);
  EXPECT_TRUE((*core)->GetUpdate(keys_[0], 0, 0).ok());
  // The round's time to its update (the simulator's coordinator_seconds) includes the write.
  EXPECT_EQ((*core)->round_timing().n, 1);
  EXPECT_DOUBLE_EQ((*core)->round_timing().sum, 0.25);
}

TEST_F(DurabilityTest, WithoutDurableUpdatesARoundIsTimedToItsClose) {
  auto o = Options();
  o.checkpoint_every = 2;
  o.on_checkpoint = [&](const CoordinatorSnapshot&) { clock_.Advance(milliseconds(250)); };
  auto core = CoordinatorCore::Create(o);
  ASSERT_TRUE(core.ok());
  JoinAndSeed(**core, 2);
  EXPECT_EQ((*core)->round_timing().n, 0);
  RunRound(**core, 0, 0);
  RunRound(**core, 0, 1);
  // Two rounds, each available as soon as it closed; the checkpoint after the second is not waited for.
  EXPECT_EQ((*core)->round_timing().n, 2);
  EXPECT_DOUBLE_EQ((*core)->round_timing().sum, 0.0);
}

TEST_F(DurabilityTest, MemberThatLeftRejoinsUnderItsIdAndItsContributionStaysADuplicate) {
  auto core = CoordinatorCore::Create(Options());
  ASSERT_TRUE(core.ok());
  JoinAndSeed(**core, 3);
  const auto contribution = workers_[0]->Contribution(0, (*core)->options().upload_codec);
  ASSERT_TRUE((*core)->Push(keys_[0], 0, 0, contribution).ok());
  ASSERT_TRUE(
      (*core)->Push(keys_[1], 0, 0, workers_[1]->Contribution(0, (*core)->options().upload_codec)).ok());
  // Worker 0 is dropped (no heartbeats) while its contribution sits in the open round.
  clock_.Advance(seconds(20));
  ASSERT_TRUE((*core)->Heartbeat({keys_[1], 1, 0.0f, 0, 0, 0, false}).ok());
  ASSERT_TRUE((*core)->Heartbeat({keys_[2], 1, 0.0f, 0, 0, 0, false}).ok());
  clock_.Advance(seconds(15));
  (*core)->Tick();
  EXPECT_EQ((*core)->live_members(), 2u);
  auto stale = (*core)->Heartbeat({keys_[0], 1, 0.0f, 0, 0, 0, false});
  EXPECT_EQ(stale.status().code(), StatusCode::kFailedPrecondition);

  auto again = (*core)->Join(Request(1));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->key.worker_id, keys_[0].worker_id);
  EXPECT_NE(again->key.session, keys_[0].session);
  EXPECT_EQ((*core)->counters().rejoins, 1u);
  EXPECT_EQ((*core)->counters().joins, 3u);
  // Its push of the same round again is recognised, not added a second time.
  auto dup = (*core)->Push(again->key, 0, 0, contribution);
  ASSERT_TRUE(dup.ok()) << dup.status().ToString();
  EXPECT_TRUE(dup->duplicate);
  EXPECT_EQ(dup->contributions, 2u);
}

TEST_F(DurabilityTest, MemberAndModelSizeLimitsAreEnforced) {
  auto o = Options();
  o.max_members = 2;
  auto core = CoordinatorCore::Create(o);
  ASSERT_TRUE(core.ok());
  auto a = (*core)->Join(Request(1));
  auto b = (*core)->Join(Request(2));
  ASSERT_TRUE(a.ok() && b.ok());
  auto c = (*core)->Join(Request(3));
  EXPECT_EQ(c.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(c.status().message().find("max_members"), std::string::npos) << c.status().ToString();
  // A retried Join of a member is not a new member.
  EXPECT_TRUE((*core)->Join(Request(2)).ok());
  ASSERT_TRUE((*core)->Leave(a->key).ok());
  EXPECT_TRUE((*core)->Join(Request(3)).ok());

  auto small = Options();
  small.max_parameters = TestSignature().total_elements() - 1;
  auto tiny = CoordinatorCore::Create(small);
  ASSERT_TRUE(tiny.ok());
  auto too_big = (*tiny)->Join(Request(1));
  EXPECT_EQ(too_big.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(too_big.status().message().find("max_parameters"), std::string::npos);
  EXPECT_EQ((*tiny)->SeedElements(), 0u);  // nothing was set up for the refused model
}

TEST_F(DurabilityTest, WrongTokensAreRefusedCountedAndNeverEchoed) {
  auto core = CoordinatorCore::Create(Options());
  ASSERT_TRUE(core.ok());
  EXPECT_TRUE((*core)->CheckToken("secret", "Heartbeat").ok());
  for (const char* bad : {"", "secreT", "secret ", "s"}) {
    Status s = (*core)->CheckToken(bad, "Heartbeat");
    EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << bad;
    EXPECT_EQ(s.message().find("secret"), std::string::npos) << "the token must not appear in messages";
  }
  EXPECT_EQ((*core)->counters().refusals, 4u);
}

}  // namespace
}  // namespace lowband::coordinator
