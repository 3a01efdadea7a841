#include "worker/inner_optimizer.h"

#include <cmath>
#include <cstring>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/worker/test_util.h"
#include "worker/data.h"
#include "worker/torch_runtime.h"

namespace lowband::worker {
namespace {

ModelConfig TinyGpt() {
  ModelConfig c;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 2;
  c.context = 32;
  return c;
}

std::unique_ptr<Model> Make(const ModelConfig& c, uint64_t seed) {
  auto m = MakeModel(c, seed);
  EXPECT_TRUE(m.ok()) << m.status().message();
  return m.ok() ? std::move(m).value() : nullptr;
}

std::unique_ptr<InnerOptimizer> MakeOptimizer(Model& m, const InnerOptimizerConfig& c) {
  auto o = InnerOptimizer::Create(m, c);
  EXPECT_TRUE(o.ok()) << o.status().message();
  return o.ok() ? std::move(o).value() : nullptr;
}

std::vector<float> Flat(Model& m) {
  std::vector<float> flat;
  CopyParamsTo(m, &flat);
  return flat;
}

class WorkerInnerOptimizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ASSERT_TRUE(ConfigureTorchThreads({}).ok()); }
};

TEST_F(WorkerInnerOptimizerTest, ScheduleHitsWarmupPeakAndMinAtTheRightSteps) {
  InnerOptimizerConfig c;
  c.lr = 1e-3;
  c.warmup_steps = 10;
  c.total_steps = 110;
  c.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(c, 0), 1e-4);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(c, 4), 5e-4);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(c, 9), 1e-3);        // end of warmup: peak
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(c, 10), 1e-3);       // cosine starts at the peak
  EXPECT_NEAR(ScheduledLearningRate(c, 60), 0.55e-3, 1e-12);  // half way: mean of peak and min
  EXPECT_NEAR(ScheduledLearningRate(c, 110), 1e-4, 1e-12);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(c, 5000), 1e-4);
  for (int64_t s = 10; s < 110; ++s) EXPECT_GT(ScheduledLearningRate(c, s), ScheduledLearningRate(c, s + 1));
  c.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(c, 0), 1e-3);
}

TEST_F(WorkerInnerOptimizerTest, InvalidConfigsAreRejected) {
  auto model = Make(TinyGpt(), 0);
  InnerOptimizerConfig c;
  c.total_steps = 50;  // == warmup
  EXPECT_EQ(InnerOptimizer::Create(*model, c).status().code(), StatusCode::kInvalidArgument);
  c = {};
  c.lr = -1;
  EXPECT_FALSE(InnerOptimizer::Create(*model, c).ok());
  c = {};
  c.beta2 = 1.0;
  EXPECT_FALSE(InnerOptimizer::Create(*model, c).ok());
}

TEST_F(WorkerInnerOptimizerTest, TinyGptLearnsRepetitiveText) {
  testing::ScratchDir dir;
  testing::WriteFile(dir / "text.txt", testing::RepetitiveText(20000));
  DataConfig data_config;
  data_config.dataset = "text:" + (dir / "text.txt");
  data_config.batch_size = 8;
  data_config.seq_len = 32;
  data_config.eval_batches = 4;
  auto data = OpenDataset(data_config, 0, 1, 3);
  ASSERT_TRUE(data.ok()) << data.status().message();
  auto model = Make(TinyGpt(), 1);
  InnerOptimizerConfig oc;
  oc.lr = 1e-2;
  oc.warmup_steps = 5;
  oc.total_steps = 50;
  auto opt = MakeOptimizer(*model, oc);
  ASSERT_TRUE(model && opt);

  auto before = model->Evaluate((*data)->EvalBatches());
  ASSERT_TRUE(before.ok());
  EXPECT_NEAR(before->loss, std::log(256.0), 0.1);
  float first_loss = 0, last_loss = 0;
  for (int s = 0; s < 50; ++s) {
    auto loss = opt->Step(*model, (*data)->NextTrainBatch());
    ASSERT_TRUE(loss.ok()) << loss.status().message();
    if (s == 0) first_loss = *loss;
    last_loss = *loss;
  }
  EXPECT_EQ(opt->step(), 50);
  auto after = model->Evaluate((*data)->EvalBatches());
  ASSERT_TRUE(after.ok());
  // The text is a fixed 45-byte cycle whose byte frequencies alone give 3.05 nats; getting well below
  // that needs context, i.e. the attention has learned something (typically ~0.9 after 50 steps).
  EXPECT_LT(after->loss, 1.6) << "eval loss " << before->loss << " -> " << after->loss;
  EXPECT_LT(last_loss, first_loss - 3.5) << "train loss " << first_loss << " -> " << last_loss;
}

TEST_F(WorkerInnerOptimizerTest, SplitStepEqualsStepAndClipsGradients) {
  auto a = Make(TinyGpt(), 5);
  auto b = Make(TinyGpt(), 5);
  InnerOptimizerConfig oc;
  oc.grad_clip = 0.05;
  auto oa = MakeOptimizer(*a, oc);
  auto ob = MakeOptimizer(*b, oc);
  ASSERT_TRUE(a && b && oa && ob);
  torch::manual_seed(0);
  torch::Tensor tokens = torch::randint(256, {4, 17}, torch::kLong);
  const Batch batch{tokens.slice(1, 0, 16).contiguous(), tokens.slice(1, 1, 17).contiguous(),
                    torch::Tensor()};

  for (int s = 0; s < 3; ++s) {
    auto la = oa->Step(*a, batch);
    auto lb = ob->ForwardBackward(*b, batch);
    ASSERT_TRUE(la.ok() && lb.ok());
    EXPECT_EQ(*la, *lb);
    ASSERT_TRUE(ob->ApplyStep().ok());
  }
  const auto fa = Flat(*a), fb = Flat(*b);
  EXPECT_EQ(std::memcmp(fa.data(), fb.data(), fa.size() * sizeof(float)), 0);

  // Gradients at init are far above 0.05: ApplyStep reports the raw norm and leaves them clipped.
  EXPECT_GT(ob->last_grad_norm(), 0.05);
  double squared = 0;
  for (const auto& [name, p] : b->NamedParameters()) squared += p.grad().pow(2).sum().item<double>();
  EXPECT_NEAR(std::sqrt(squared), 0.05, 1e-3);
}

TEST_F(WorkerInnerOptimizerTest, MisuseAndBadBatchesBecomeStatuses) {
  auto model = Make(TinyGpt(), 0);
  auto other = Make(TinyGpt(), 0);
  auto opt = MakeOptimizer(*model, {});
  ASSERT_TRUE(model && other && opt);
  EXPECT_EQ(opt->ApplyStep().code(), StatusCode::kFailedPrecondition);
  const Batch good{torch::zeros({1, 4}, torch::kLong), torch::zeros({1, 4}, torch::kLong), torch::Tensor()};
  EXPECT_EQ(opt->Step(*other, good).status().code(), StatusCode::kInvalidArgument);
  // Token id beyond the vocabulary: LibTorch throws inside; the optimizer returns an error.
  const Batch bad{torch::full({1, 4}, 300, torch::kLong), torch::zeros({1, 4}, torch::kLong),
                  torch::Tensor()};
  auto r = opt->Step(*model, bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("inner step 0"), std::string::npos) << r.status().message();
  EXPECT_EQ(opt->step(), 0);
  EXPECT_TRUE(opt->Step(*model, good).ok());
  EXPECT_EQ(opt->step(), 1);
}

}  // namespace
}  // namespace lowband::worker
