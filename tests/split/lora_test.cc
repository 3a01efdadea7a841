// LoRA adapters and the base model's files: a fresh adapter changes nothing, merging computes what the
// adapter computed, bad adapter files change nothing; safetensors round-trips and rejects damage.
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../worker/test_util.h"
#include "split/lora.h"
#include "split/model.h"
#include "split/safetensors.h"
#include "worker/checkpoint.h"
#include "worker/inner_optimizer.h"
#include "worker/model.h"

namespace lowband::split {
namespace {

worker::ModelConfig Tiny() {
  worker::ModelConfig c;
  c.d_model = 32;
  c.n_layers = 3;
  c.n_heads = 2;
  c.context = 16;
  return c;
}

std::unique_ptr<worker::Model> MakeGpt(uint64_t seed = 7) {
  auto m = worker::MakeModel(Tiny(), seed);
  EXPECT_TRUE(m.ok());
  return std::move(*m);
}

torch::Tensor Tokens() { return torch::randint(256, {2, 16}, torch::kLong); }

torch::Tensor ForwardWith(worker::Model& m, const worker::LinearAdapters* a, const torch::Tensor& tokens) {
  worker::GptPieces* g = worker::AsGpt(m);
  return g->LmHead(g->FinalNorm(g->Blocks(g->Embed(tokens), 0, m.config().n_layers, a)));
}

void RandomizeB(LoraAdapters& lora) {
  torch::NoGradGuard ng;
  for (auto& [name, t] : lora.NamedParameters()) {
    if (name.ends_with("lora_B.weight")) t.copy_(torch::randn_like(t) * 0.1);
  }
}

TEST(Lora, PiecesComposeToTheModelAndAFreshAdapterChangesNothing) {
  auto m = MakeGpt();
  const torch::Tensor tokens = Tokens();
  torch::NoGradGuard ng;
  const torch::Tensor ref = m->Forward(tokens);
  EXPECT_TRUE(torch::equal(ForwardWith(*m, nullptr, tokens), ref));
  auto lora = LoraAdapters::Create(*worker::AsGpt(*m), 0, 3, LoraSpec{}, 1);
  ASSERT_TRUE(lora.ok());
  EXPECT_EQ((*lora)->NamedParameters().size(), 3u * 4u * 2u);
  EXPECT_TRUE(torch::allclose(ForwardWith(*m, lora->get(), tokens), ref, 0, 0));
}

TEST(Lora, MergedWeightsComputeWhatTheAdaptersComputed) {
  auto m = MakeGpt();
  const torch::Tensor tokens = Tokens();
  auto lora = LoraAdapters::Create(*worker::AsGpt(*m), 1, 3, LoraSpec{4, 8.0, "qkv,mlp_out"}, 2);
  ASSERT_TRUE(lora.ok());
  RandomizeB(**lora);
  torch::NoGradGuard ng;
  const torch::Tensor adapted = ForwardWith(*m, lora->get(), tokens);
  EXPECT_FALSE(torch::allclose(adapted, m->Forward(tokens), 1e-4, 1e-4)) << "the adapters must matter";
  ASSERT_TRUE((*lora)->MergeInto(*m).ok());
  EXPECT_TRUE(torch::allclose(m->Forward(tokens), adapted, 1e-5, 1e-5));
}

TEST(Lora, LoadRejectsMissingOrMisshapenTensorsAndChangesNothing) {
  auto m = MakeGpt();
  auto lora = LoraAdapters::Create(*worker::AsGpt(*m), 0, 1, LoraSpec{}, 3);
  ASSERT_TRUE(lora.ok());
  std::map<std::string, torch::Tensor> file;
  for (auto& [n, t] : (*lora)->NamedParameters()) file[n] = torch::ones_like(t);
  const std::string victim = (*lora)->NamedParameters()[0].first;
  const torch::Tensor before = (*lora)->NamedParameters()[0].second.clone();
  auto wrong = file;
  wrong[victim] = torch::ones({3, 3});
  Status s = (*lora)->Load(wrong);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(victim), std::string::npos) << s.message();
  wrong = file;
  wrong.erase(victim);
  EXPECT_FALSE((*lora)->Load(wrong).ok());
  EXPECT_TRUE(torch::equal((*lora)->NamedParameters()[0].second, before));
  ASSERT_TRUE((*lora)->Load(file).ok());
  EXPECT_TRUE(torch::equal((*lora)->NamedParameters()[0].second, torch::ones_like(before)));
  EXPECT_FALSE(ParseLoraModules("qkv,ffn").ok());
}

TEST(Safetensors, RoundTripsAndLoadsAsTheBaseModel) {
  worker::testing::ScratchDir dir;
  auto m = MakeGpt(11);
  const std::string path = dir / "base.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, m->NamedParameters(), {{"source", "test"}}).ok());
  auto file = ReadSafetensors(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->metadata.at("source"), "test");
  for (auto& [name, p] : m->NamedParameters()) EXPECT_TRUE(torch::equal(file->tensors.at(name), p)) << name;

  SplitConfig split;
  split.base = path;
  auto loaded = LoadBaseModel(Tiny(), split, /*seed=*/99);  // another seed: only the file can make them equal
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  const auto a = m->NamedParameters(), b = (*loaded)->NamedParameters();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
    EXPECT_FALSE(b[i].second.requires_grad()) << "the base must be frozen";
  }
  // A checkpoint directory works the same way.
  auto opt = worker::InnerOptimizer::Create(*m, worker::InnerOptimizerConfig{});
  ASSERT_TRUE(opt.ok());
  ASSERT_TRUE(worker::SaveCheckpoint(dir / "ckpt", *m, **opt, {}).ok());
  split.base = dir / "ckpt";
  auto from_ckpt = LoadBaseModel(Tiny(), split, 99);
  ASSERT_TRUE(from_ckpt.ok()) << from_ckpt.status().ToString();
  EXPECT_TRUE(torch::equal((*from_ckpt)->NamedParameters()[0].second, a[0].second));
  // Another architecture is refused with the reason.
  worker::ModelConfig wide = Tiny();
  wide.d_model = 64;
  split.base = path;
  auto bad = LoadBaseModel(wide, split, 1);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("shape"), std::string::npos) << bad.status().message();
  split.base = dir / "missing.safetensors";
  EXPECT_EQ(LoadBaseModel(Tiny(), split, 1).status().code(), StatusCode::kNotFound);
}

TEST(Safetensors, RejectsDamagedFiles) {
  worker::testing::ScratchDir dir;
  const std::string path = dir / "t.safetensors";
  ASSERT_TRUE(
      WriteSafetensors(path, {{"a", torch::arange(6, torch::kFloat).view({2, 3})}, {"b", torch::ones({4})}})
          .ok());
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const auto write = [&](const std::string& b) { worker::testing::WriteFile(path + ".bad", b); };
  // Every truncation is refused.
  for (size_t n = 0; n < bytes.size(); n += 7) {
    write(bytes.substr(0, n));
    EXPECT_FALSE(ReadSafetensors(path + ".bad").ok()) << "truncated to " << n;
  }
  // A header length beyond the file.
  std::string big = bytes;
  big[5] = 1;
  write(big);
  EXPECT_FALSE(ReadSafetensors(path + ".bad").ok());
  // An unknown dtype, a wrong size and an overlap, by editing the JSON header.
  const uint64_t n =
      static_cast<uint8_t>(bytes[0]) | (static_cast<uint64_t>(static_cast<uint8_t>(bytes[1])) << 8);
  const std::string header = bytes.substr(8, n), data = bytes.substr(8 + n);
  const auto with_header = [&](std::string h) {
    while (h.size() < n) h.push_back(' ');
    return bytes.substr(0, 8) + h.substr(0, n) + data;
  };
  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {"\"F32\"", "\"I9\" "}, {"[2,3]", "[2,4]"}, {"[24,40]", "[20,36]"}}) {
    std::string h = header;
    const auto pos = h.find(from);
    ASSERT_NE(pos, std::string::npos) << from << " in " << header;
    h.replace(pos, from.size(), to);
    write(with_header(h));
    EXPECT_FALSE(ReadSafetensors(path + ".bad").ok()) << to;
  }
}

}  // namespace
}  // namespace lowband::split
