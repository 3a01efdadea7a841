#include "worker/model.h"

#include <cmath>
#include <cstring>
#include <regex>
#include <set>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "worker/torch_runtime.h"

namespace lowband::worker {
namespace {

ModelConfig TinyGpt() {
  ModelConfig c;
  c.kind = "gpt";
  c.vocab = 256;
  c.d_model = 32;
  c.n_layers = 3;
  c.n_heads = 4;
  c.context = 16;
  return c;
}

ModelConfig Classifier(const std::string& kind) {
  ModelConfig c;
  c.kind = kind;
  c.n_layers = 2;
  c.hidden = 64;
  return c;
}

std::unique_ptr<Model> Make(const ModelConfig& c, uint64_t seed) {
  auto model = MakeModel(c, seed);
  EXPECT_TRUE(model.ok()) << model.status().message();
  return model.ok() ? std::move(model).value() : nullptr;
}

std::vector<float> Flat(Model& m) {
  std::vector<float> flat;
  CopyParamsTo(m, &flat);
  return flat;
}

bool BitIdentical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

Batch RandomTokens(int64_t b, int64_t t, int64_t vocab) {
  torch::manual_seed(123);
  torch::Tensor x = torch::randint(vocab, {b, t + 1}, torch::kLong);
  return Batch{x.slice(1, 0, t).contiguous(), x.slice(1, 1, t + 1).contiguous(), torch::Tensor()};
}

Batch RandomImages(int64_t b) {
  torch::manual_seed(321);
  return Batch{torch::randn({b, 1, 28, 28}), torch::randint(10, {b}, torch::kLong), torch::Tensor()};
}

class WorkerModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ASSERT_TRUE(ConfigureTorchThreads({}).ok()); }
};

TEST_F(WorkerModelTest, GptLossIsLogVocabAtInitAndEvaluateCountsTokens) {
  auto model = Make(TinyGpt(), 1);
  ASSERT_NE(model, nullptr);
  const Batch batch = RandomTokens(3, 16, 256);
  torch::Tensor loss = model->Loss(batch);
  EXPECT_EQ(loss.dim(), 0);
  EXPECT_TRUE(loss.requires_grad());
  EXPECT_NEAR(loss.item<double>(), std::log(256.0), 0.1);
  EXPECT_EQ(model->TokensPerBatch(batch), 48);

  auto eval = model->Evaluate({batch, batch});
  ASSERT_TRUE(eval.ok()) << eval.status().message();
  EXPECT_EQ(eval->count, 96);
  EXPECT_FALSE(eval->accuracy.has_value());
  EXPECT_NEAR(eval->loss, loss.item<double>(), 1e-4);  // no dropout: eval and train mode agree
}

TEST_F(WorkerModelTest, ForwardGivesLogitsOfTheRightShape) {
  auto gpt = Make(TinyGpt(), 1);
  ASSERT_NE(gpt, nullptr);
  EXPECT_EQ(gpt->Forward(RandomTokens(3, 16, 256).inputs).sizes(), (std::vector<int64_t>{3, 16, 256}));
  ModelConfig untied = TinyGpt();
  untied.tie_embeddings = false;
  untied.vocab = 100;
  auto gpt2 = Make(untied, 1);
  ASSERT_NE(gpt2, nullptr);
  EXPECT_EQ(gpt2->Forward(RandomTokens(2, 7, 100).inputs).sizes(), (std::vector<int64_t>{2, 7, 100}));
  for (const std::string kind : {"mlp", "cnn"}) {
    auto m = Make(Classifier(kind), 1);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(m->Forward(RandomImages(5).inputs).sizes(), (std::vector<int64_t>{5, 10})) << kind;
    EXPECT_THROW(m->Forward(torch::zeros({5, 784})), c10::Error) << kind;
  }
}

TEST_F(WorkerModelTest, GptIsCausal) {
  // Changing token k must not change the logits at positions before k (and must change them at k).
  auto model = Make(TinyGpt(), 2);
  ASSERT_NE(model, nullptr);
  torch::Tensor a = RandomTokens(1, 16, 256).inputs;
  torch::Tensor b = a.clone();
  b[0][10] = (a[0][10].item<int64_t>() + 1) % 256;
  torch::NoGradGuard no_grad;
  const torch::Tensor la = model->Forward(a), lb = model->Forward(b);
  EXPECT_TRUE(la.slice(1, 0, 10).equal(lb.slice(1, 0, 10)));
  EXPECT_FALSE(torch::allclose(la.slice(1, 10, 11), lb.slice(1, 10, 11)));
}

TEST_F(WorkerModelTest, GptAcceptsShorterSequencesAndRejectsLongerThanContext) {
  auto model = Make(TinyGpt(), 1);
  ASSERT_NE(model, nullptr);
  EXPECT_NO_THROW(model->Loss(RandomTokens(2, 5, 256)));
  EXPECT_THROW(model->Loss(RandomTokens(2, 17, 256)), c10::Error);
  auto eval = model->Evaluate({RandomTokens(2, 17, 256)});
  ASSERT_FALSE(eval.ok());
  EXPECT_EQ(eval.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(eval.status().message().find("context"), std::string::npos) << eval.status().message();
}

TEST_F(WorkerModelTest, ClassifiersStartNearUniformAndReportAccuracy) {
  for (const std::string kind : {"mlp", "cnn"}) {
    SCOPED_TRACE(kind);
    auto model = Make(Classifier(kind), 5);
    ASSERT_NE(model, nullptr);
    const Batch batch = RandomImages(8);
    EXPECT_NEAR(model->Loss(batch).item<double>(), std::log(10.0), 0.1);
    EXPECT_EQ(model->TokensPerBatch(batch), 8);
    auto eval = model->Evaluate({batch});
    ASSERT_TRUE(eval.ok()) << eval.status().message();
    EXPECT_EQ(eval->count, 8);
    ASSERT_TRUE(eval->accuracy.has_value());
    EXPECT_GE(*eval->accuracy, 0.0);
    EXPECT_LE(*eval->accuracy, 1.0);
  }
}

TEST_F(WorkerModelTest, EvaluateRestoresTrainingMode) {
  auto model = Make(Classifier("mlp"), 5);
  ASSERT_NE(model, nullptr);
  model->module().train();
  ASSERT_TRUE(model->Evaluate({RandomImages(4)}).ok());
  EXPECT_TRUE(model->module().is_training());
  model->module().eval();
  ASSERT_TRUE(model->Evaluate({RandomImages(4)}).ok());
  EXPECT_FALSE(model->module().is_training());
  EXPECT_FALSE(model->Evaluate({}).ok());
}

TEST_F(WorkerModelTest, SameSeedGivesBitIdenticalParametersDifferentSeedsDiffer) {
  for (const ModelConfig& c : {TinyGpt(), Classifier("mlp"), Classifier("cnn")}) {
    SCOPED_TRACE(c.kind);
    // LibTorch's global generator must not matter.
    torch::manual_seed(1);
    auto a = Make(c, 42);
    torch::manual_seed(999);
    auto b = Make(c, 42);
    auto other = Make(c, 43);
    ASSERT_TRUE(a && b && other);
    const auto fa = Flat(*a), fb = Flat(*b), fo = Flat(*other);
    EXPECT_TRUE(BitIdentical(fa, fb));
    ASSERT_EQ(fa.size(), fo.size());
    int64_t differing = 0;
    for (size_t i = 0; i < fa.size(); ++i) differing += fa[i] != fo[i];
    // Biases and LayerNorm parameters start at constants; every random weight must differ.
    EXPECT_GT(differing, static_cast<int64_t>(fa.size() * 8 / 10));
  }
}

TEST_F(WorkerModelTest, InitialWeightsHaveTheIntendedScale) {
  auto model = Make(TinyGpt(), 3);
  ASSERT_NE(model, nullptr);
  for (const auto& [name, p] : model->NamedParameters()) {
    SCOPED_TRACE(name);
    if (name.ends_with(".bias")) {
      EXPECT_EQ(p.abs().max().item<float>(), 0.0F);
    } else if (p.dim() == 1) {
      EXPECT_TRUE(torch::all(p == 1).item<bool>());
    } else if (name.ends_with("out.weight")) {
      EXPECT_NEAR(p.std().item<double>(), 0.02 / std::sqrt(6.0), 0.002);
    } else {
      EXPECT_NEAR(p.std().item<double>(), 0.02, 0.002);
      EXPECT_NEAR(p.mean().item<double>(), 0.0, 0.002);
    }
  }
}

TEST_F(WorkerModelTest, ParameterNamesFollowTheBlockRuleAndEachAppearsOnce) {
  for (bool tie : {true, false}) {
    ModelConfig c = TinyGpt();
    c.tie_embeddings = tie;
    for (const ModelConfig& config : {c, Classifier("mlp"), Classifier("cnn")}) {
      SCOPED_TRACE(config.kind + (tie ? " tied" : " untied"));
      auto model = Make(config, 9);
      ASSERT_NE(model, nullptr);
      const auto named = model->NamedParameters();
      const std::regex block_re(R"(^blocks\.(\d+)\.[a-z_0-9.]+$)");
      std::set<std::string> names;
      std::set<const void*> storages;
      std::set<int> blocks_seen;
      for (const auto& [name, p] : named) {
        EXPECT_TRUE(names.insert(name).second) << "duplicate name " << name;
        EXPECT_TRUE(storages.insert(p.data_ptr()).second) << "tensor listed twice: " << name;
        std::smatch m;
        if (std::regex_match(name, m, block_re)) {
          blocks_seen.insert(std::stoi(m[1]));
        } else {
          EXPECT_EQ(name.find("blocks"), std::string::npos) << name;
        }
      }
      const int expected_blocks = config.kind == "cnn" ? 3 : config.n_layers;
      EXPECT_EQ(static_cast<int>(blocks_seen.size()), expected_blocks);
      EXPECT_EQ(*blocks_seen.rbegin(), expected_blocks - 1);
      EXPECT_EQ(named.size(), model->module().parameters().size());
      if (config.kind == "gpt") {
        EXPECT_EQ(named.front().first, "embed.weight");
        EXPECT_EQ(names.count("head.weight"), tie ? 0U : 1U);
        EXPECT_EQ(names.count("blocks.2.attn.qkv.weight"), 1U);
      }
      // Describe: the same order, contiguous offsets, fp32.
      const auto info = Describe(*model);
      ASSERT_EQ(info.size(), named.size());
      int64_t offset = 0;
      for (size_t i = 0; i < info.size(); ++i) {
        EXPECT_EQ(info[i].name, named[i].first);
        EXPECT_EQ(info[i].dtype, "float32");
        EXPECT_EQ(info[i].offset, offset);
        EXPECT_EQ(info[i].numel, named[i].second.numel());
        offset += info[i].numel;
      }
      EXPECT_EQ(offset, NumParameters(*model));
    }
  }
}

TEST_F(WorkerModelTest, DefaultGptHasTheDocumentedSize) {
  auto model = Make(ModelConfig{}, 0);
  ASSERT_NE(model, nullptr);
  const int64_t n = NumParameters(*model);
  EXPECT_GT(n, 800'000);
  EXPECT_LT(n, 900'000);
}

TEST_F(WorkerModelTest, CopyParamsRoundTripsExactlyAndRejectsWrongLength) {
  auto a = Make(TinyGpt(), 1);
  auto b = Make(TinyGpt(), 2);
  ASSERT_TRUE(a && b);
  const auto fa = Flat(*a);
  ASSERT_EQ(static_cast<int64_t>(fa.size()), NumParameters(*a));
  // Writes go into the existing tensors (optimizer state stays attached).
  const void* before = b->NamedParameters()[0].second.data_ptr();
  ASSERT_TRUE(CopyParamsFrom(*b, fa).ok());
  EXPECT_EQ(b->NamedParameters()[0].second.data_ptr(), before);
  EXPECT_TRUE(BitIdentical(Flat(*b), fa));
  const Batch batch = RandomTokens(2, 8, 256);
  EXPECT_EQ(a->Loss(batch).item<float>(), b->Loss(batch).item<float>());

  auto c = Make(TinyGpt(), 3);
  const auto fc = Flat(*c);
  std::vector<float> short_vector(fa.begin(), fa.end() - 1);
  const Status s = CopyParamsFrom(*c, short_vector);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("expected " + std::to_string(fa.size()) + " floats"), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("got " + std::to_string(fa.size() - 1)), std::string::npos) << s.message();
  EXPECT_TRUE(BitIdentical(Flat(*c), fc));  // unchanged
}

TEST_F(WorkerModelTest, FragmentCopiesTouchOnlyTheirTensorsAndMatchTheFlatView) {
  auto a = Make(TinyGpt(), 1);
  auto b = Make(TinyGpt(), 2);
  ASSERT_TRUE(a && b);
  const auto info = Describe(*a);
  ASSERT_GE(info.size(), 4u);
  // Every other tensor, like one Streaming DiLoCo fragment.
  std::vector<uint32_t> tensors;
  size_t n = 0;
  for (uint32_t i = 1; i < info.size(); i += 2) {
    tensors.push_back(i);
    n += static_cast<size_t>(info[i].numel);
  }
  // Reading: the subset is the flat view's pieces, in order.
  const auto fa = Flat(*a);
  std::vector<float> part(n), expect;
  ASSERT_TRUE(CopyParamsTo(*a, tensors, part).ok());
  for (uint32_t i : tensors)
    expect.insert(expect.end(), fa.begin() + info[i].offset, fa.begin() + info[i].offset + info[i].numel);
  EXPECT_TRUE(BitIdentical(part, expect));
  // Writing: b takes a's fragment, its other tensors keep their values.
  const auto fb = Flat(*b);
  ASSERT_TRUE(CopyParamsFrom(*b, tensors, part).ok());
  const auto fb2 = Flat(*b);
  for (uint32_t i = 0; i < info.size(); ++i) {
    const bool in_fragment = i % 2 == 1;
    const auto& want = in_fragment ? fa : fb;
    EXPECT_EQ(std::memcmp(fb2.data() + info[i].offset, want.data() + info[i].offset,
                          static_cast<size_t>(info[i].numel) * sizeof(float)),
              0)
        << info[i].name;
  }
  // A wrong length or an index out of range is refused and writes nothing.
  std::vector<float> short_part(n - 1);
  Status s = CopyParamsFrom(*b, tensors, short_part);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(std::to_string(n)), std::string::npos) << s.message();
  const std::vector<uint32_t> bad = {0, static_cast<uint32_t>(info.size())};
  std::vector<float> any(static_cast<size_t>(info[0].numel) + 1);
  s = CopyParamsFrom(*b, bad, any);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("out of range"), std::string::npos) << s.message();
  EXPECT_FALSE(CopyParamsTo(*b, bad, any).ok());
  EXPECT_TRUE(BitIdentical(Flat(*b), fb2));
}

TEST_F(WorkerModelTest, FlatFragmentTensorsMatchTheCopiesAndWriteBackInPlace) {
  auto a = Make(TinyGpt(), 1);
  auto b = Make(TinyGpt(), 2);
  ASSERT_TRUE(a && b);
  const auto info = Describe(*a);
  const std::vector<uint32_t> tensors = {0, 2, 3, static_cast<uint32_t>(info.size() - 1)};
  size_t n = 0;
  for (uint32_t i : tensors) n += static_cast<size_t>(info[i].numel);
  // Reading: the same values, in the same order, as the host copy of the subset.
  auto flat = FlatParams(*a, tensors);
  ASSERT_TRUE(flat.ok()) << flat.status().message();
  ASSERT_EQ(flat->dim(), 1);
  ASSERT_EQ(flat->numel(), static_cast<int64_t>(n));
  EXPECT_EQ(flat->device(), a->NamedParameters().front().second.device());
  std::vector<float> part(n);
  ASSERT_TRUE(CopyParamsTo(*a, tensors, part).ok());
  EXPECT_EQ(std::memcmp(flat->data_ptr<float>(), part.data(), n * sizeof(float)), 0);
  // It is a copy: changing it leaves the model alone.
  const auto fa = Flat(*a);
  flat->add_(1.0f);
  EXPECT_TRUE(BitIdentical(Flat(*a), fa));
  // Writing: b's subset becomes exactly these values, in place (the parameter tensors are the same
  // objects, so optimizer state stays attached); the other tensors keep theirs.
  const void* before = b->NamedParameters()[tensors[0]].second.data_ptr();
  const auto fb = Flat(*b);
  ASSERT_TRUE(SetFlatParams(*b, tensors, *flat).ok());
  EXPECT_EQ(b->NamedParameters()[tensors[0]].second.data_ptr(), before);
  std::vector<float> got(n);
  ASSERT_TRUE(CopyParamsTo(*b, tensors, got).ok());
  EXPECT_EQ(std::memcmp(got.data(), flat->data_ptr<float>(), n * sizeof(float)), 0);
  const auto fb2 = Flat(*b);
  for (uint32_t i = 1; i + 1 < info.size(); ++i) {
    if (i == 2 || i == 3) continue;
    EXPECT_EQ(std::memcmp(fb2.data() + info[i].offset, fb.data() + info[i].offset,
                          static_cast<size_t>(info[i].numel) * sizeof(float)),
              0)
        << info[i].name;
  }
  // A wrong length, a wrong shape or dtype, or an index out of range is refused and writes nothing.
  Status s = SetFlatParams(*b, tensors, flat->narrow(0, 0, static_cast<int64_t>(n) - 1));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(std::to_string(n)), std::string::npos) << s.message();
  EXPECT_EQ(SetFlatParams(*b, tensors, flat->to(torch::kDouble)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SetFlatParams(*b, tensors, flat->view({1, -1})).code(), StatusCode::kInvalidArgument);
  const std::vector<uint32_t> bad = {0, static_cast<uint32_t>(info.size())};
  s = FlatParams(*b, bad).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("out of range"), std::string::npos) << s.message();
  EXPECT_TRUE(BitIdentical(Flat(*b), fb2));
}

TEST_F(WorkerModelTest, InvalidConfigsAreRejectedWithReasons) {
  ModelConfig c = TinyGpt();
  c.n_heads = 5;
  auto m = MakeModel(c, 0);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("n_heads"), std::string::npos);
  c = TinyGpt();
  c.kind = "rnn";
  EXPECT_EQ(MakeModel(c, 0).status().code(), StatusCode::kInvalidArgument);
  c = TinyGpt();
  c.device = "tpu";
  EXPECT_FALSE(MakeModel(c, 0).ok());
  c = TinyGpt();
  c.dropout = 1.0;
  EXPECT_FALSE(MakeModel(c, 0).ok());
}

}  // namespace
}  // namespace lowband::worker
