#include "worker/checkpoint.h"

#include <cstring>
#include <filesystem>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "comm/durable_file.h"
#include "tests/worker/test_util.h"
#include "worker/torch_runtime.h"

namespace lowband::worker {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

ModelConfig TinyGpt() {
  ModelConfig c;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = 2;
  c.context = 8;
  return c;
}

struct Replica {
  std::unique_ptr<Model> model;
  std::unique_ptr<InnerOptimizer> optimizer;
};

Replica MakeReplica(const ModelConfig& c, uint64_t seed) {
  auto m = MakeModel(c, seed);
  EXPECT_TRUE(m.ok()) << m.status().message();
  Replica r{std::move(m).value(), nullptr};
  InnerOptimizerConfig oc;
  oc.warmup_steps = 2;
  oc.total_steps = 20;
  oc.lr = 1e-2;
  auto o = InnerOptimizer::Create(*r.model, oc);
  EXPECT_TRUE(o.ok()) << o.status().message();
  r.optimizer = std::move(o).value();
  return r;
}

Batch TokenBatch(int64_t seed) {
  torch::manual_seed(static_cast<uint64_t>(seed));
  torch::Tensor t = torch::randint(256, {2, 9}, torch::kLong);
  return Batch{t.slice(1, 0, 8).contiguous(), t.slice(1, 1, 9).contiguous(), torch::Tensor()};
}

std::vector<float> Flat(Model& m) {
  std::vector<float> flat;
  CopyParamsTo(m, &flat);
  return flat;
}

bool BitIdentical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class WorkerCheckpointTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ASSERT_TRUE(ConfigureTorchThreads({}).ok()); }
};

TEST_F(WorkerCheckpointTest, SaveLoadRestoresParamsOptimizerStateAndExtras) {
  ScratchDir dir;
  Replica a = MakeReplica(TinyGpt(), 1);
  for (int s = 0; s < 3; ++s) ASSERT_TRUE(a.optimizer->Step(*a.model, TokenBatch(s)).ok());

  CheckpointExtras extras;
  extras.vectors["global.0"] = {1.5F, -2.25F, 3.0e-8F};
  extras.vectors["residual"] = std::vector<float>(1000, 0.125F);
  extras.metadata = {{"round", 7}, {"data_batches", 3}};
  auto saved = SaveCheckpoint(dir.path().string(), *a.model, *a.optimizer, extras);
  ASSERT_TRUE(saved.ok()) << saved.status().message();
  const auto saved_params = Flat(*a.model);

  // Continue the original for one step.
  ASSERT_TRUE(a.optimizer->Step(*a.model, TokenBatch(3)).ok());
  const auto continued = Flat(*a.model);

  // A fresh replica (different init) loads the checkpoint and takes the same step.
  Replica b = MakeReplica(TinyGpt(), 99);
  auto loaded = LoadCheckpoint(dir.path().string(), *b.model, *b.optimizer);
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  EXPECT_TRUE(BitIdentical(Flat(*b.model), saved_params));
  EXPECT_EQ(b.optimizer->step(), 3);
  EXPECT_EQ(loaded->vectors, extras.vectors);
  EXPECT_EQ(loaded->metadata, extras.metadata);
  ASSERT_TRUE(b.optimizer->Step(*b.model, TokenBatch(3)).ok());
  EXPECT_TRUE(BitIdentical(Flat(*b.model), continued))
      << "a step after load must equal a step without the save/load (AdamW moments and schedule restored)";
}

TEST_F(WorkerCheckpointTest, WithoutOptimizerStateTheNextStepDiffers) {
  // The property above is not vacuous: dropping the AdamW moments changes the next update.
  Replica a = MakeReplica(TinyGpt(), 1);
  for (int s = 0; s < 3; ++s) ASSERT_TRUE(a.optimizer->Step(*a.model, TokenBatch(s)).ok());
  Replica b = MakeReplica(TinyGpt(), 2);
  ASSERT_TRUE(CopyParamsFrom(*b.model, Flat(*a.model)).ok());
  ASSERT_TRUE(a.optimizer->Step(*a.model, TokenBatch(3)).ok());
  ASSERT_TRUE(b.optimizer->Step(*b.model, TokenBatch(3)).ok());
  EXPECT_FALSE(BitIdentical(Flat(*a.model), Flat(*b.model)));
}

TEST_F(WorkerCheckpointTest, LoadRefusesADifferentModelAndChangesNothing) {
  ScratchDir dir;
  Replica a = MakeReplica(TinyGpt(), 1);
  ASSERT_TRUE(SaveCheckpoint(dir.path().string(), *a.model, *a.optimizer, {}).ok());
  ModelConfig wider = TinyGpt();
  wider.d_model = 32;
  Replica b = MakeReplica(wider, 2);
  const auto before = Flat(*b.model);
  auto loaded = LoadCheckpoint(dir.path().string(), *b.model, *b.optimizer);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(loaded.status().message().find("different model configuration"), std::string::npos)
      << loaded.status().message();
  EXPECT_TRUE(BitIdentical(Flat(*b.model), before));
}

TEST_F(WorkerCheckpointTest, LatestSwitchesAtomicallyAndOldOnesArePruned) {
  ScratchDir dir;
  const std::string d = dir.path().string();
  Replica a = MakeReplica(TinyGpt(), 1);
  EXPECT_EQ(LatestCheckpoint(d).status().code(), StatusCode::kNotFound);
  std::vector<std::string> paths;
  for (int s = 0; s < 4; ++s) {
    ASSERT_TRUE(a.optimizer->Step(*a.model, TokenBatch(s)).ok());
    auto p = SaveCheckpoint(d, *a.model, *a.optimizer, {}, {.keep_last = 2});
    ASSERT_TRUE(p.ok()) << p.status().message();
    paths.push_back(*p);
  }
  // Saving again at the same step makes a new checkpoint, not an overwrite.
  auto same_step = SaveCheckpoint(d, *a.model, *a.optimizer, {}, {.keep_last = 2});
  ASSERT_TRUE(same_step.ok());
  EXPECT_NE(*same_step, paths.back());
  EXPECT_EQ(fs::path(*same_step).filename(), "ckpt-0000000004.1");
  auto latest = LatestCheckpoint(d);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, *same_step);
  int dirs = 0;
  for (const auto& e : fs::directory_iterator(d)) dirs += e.is_directory();
  EXPECT_EQ(dirs, 2);
  EXPECT_TRUE(fs::exists(paths.back()));
  EXPECT_FALSE(fs::exists(paths.front()));
}

TEST_F(WorkerCheckpointTest, DamagedCheckpointIsAnErrorNotACrash) {
  ScratchDir dir;
  const std::string d = dir.path().string();
  Replica a = MakeReplica(TinyGpt(), 1);
  auto p = SaveCheckpoint(d, *a.model, *a.optimizer, {});
  ASSERT_TRUE(p.ok());
  auto bytes = comm::ReadWholeFile(*p + "/model.pt");
  ASSERT_TRUE(bytes.ok());
  testing::WriteFile(*p + "/model.pt", bytes->substr(0, bytes->size() / 2));
  Replica b = MakeReplica(TinyGpt(), 2);
  const auto before = Flat(*b.model);
  auto loaded = LoadCheckpoint(d, *b.model, *b.optimizer);
  EXPECT_FALSE(loaded.ok());
  EXPECT_TRUE(BitIdentical(Flat(*b.model), before));

  testing::WriteFile(d + "/LATEST", "ckpt-0000000999\n");
  loaded = LoadCheckpoint(d, *b.model, *b.optimizer);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("missing"), std::string::npos) << loaded.status().message();
}

}  // namespace
}  // namespace lowband::worker
