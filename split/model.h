// The two halves of a split GPT and the conversion of cut tensors to AMAQ payloads.
//
// The base model is one worker::Model (a GPT) loaded from a lowband checkpoint or a safetensors file,
// frozen (requires_grad false) and shared: the client's half runs Embed + Blocks[0, cut) through it,
// each server session runs Blocks[cut, n) + FinalNorm + its task head through the same base with its
// own LoRA adapters and head (trained by worker::InnerOptimizer over their tensors). The task heads:
//   classify  logits = W h_last + b, h_last = the final-normed hidden state of each row's last real
//             token (causal attention: it has seen the whole example), W [classes, d_model] trained
//   lm        next-token logits through the base model's (frozen) LM head
//
// Thread safety: a ServerHalf / ClientHalf is used by one thread at a time; several
// halves may run forward/backward through the same frozen base concurrently (nothing in it is
// written). Lifetimes: halves point into the base model, which must outlive them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "quant/amaq.h"
#include "quant/status.h"
#include "split/config.h"
#include "split/lora.h"
#include "worker/config.h"
#include "worker/model.h"

namespace lowband::split {

// Cross-field checks of the split settings against the model (cut inside the blocks, task known,
// codecs known, LoRA modules known, bits in range).
[[nodiscard]] Status ValidateSplitConfig(const SplitConfig& split, const worker::ModelConfig& model);

// Builds the GPT of `model`, loads `split.base` into it (checkpoint directory or .safetensors; "" keeps
// the seeded initialization), freezes every parameter and switches it to eval mode (no dropout).
[[nodiscard]] StatusOr<std::unique_ptr<worker::Model>> LoadBaseModel(const worker::ModelConfig& model,
                                                                     const SplitConfig& split, uint64_t seed);

// What one forward through the server half gives.
struct HalfResult {
  torch::Tensor loss;   // scalar, mean over targets, with autograd
  int64_t correct = 0;  // classify
  int64_t count = 0;    // targets
};

// Blocks [cut, n), the final norm and the task head, with this session's LoRA adapters.
class ServerHalf {
 public:
  [[nodiscard]] static StatusOr<std::unique_ptr<ServerHalf>> Create(worker::Model& base,
                                                                    const SplitConfig& split, int num_classes,
                                                                    const LoraSpec& lora, uint64_t seed);
  // x [B, T, d_model] (requires_grad for training), targets int64 [B] (classify) or [B, T] (lm),
  // lengths int64 [B] (classify). Throws c10::Error on a shape or range error.
  HalfResult Forward(const torch::Tensor& x, const torch::Tensor& targets, const torch::Tensor& lengths);
  std::vector<torch::Tensor> Parameters() const;
  // Adapters then head ("head.weight", "head.bias"), for saving.
  std::vector<std::pair<std::string, torch::Tensor>> NamedParameters() const;
  int64_t NumParameters() const;
  LoraAdapters& lora() { return *lora_; }

 private:
  ServerHalf() = default;
  worker::GptPieces* gpt_ = nullptr;
  int begin_ = 0, end_ = 0;
  std::string task_;
  std::unique_ptr<LoraAdapters> lora_;
  torch::Tensor head_w_, head_b_;
};

// Embeddings and blocks [0, cut) with the client's LoRA adapters.
class ClientHalf {
 public:
  [[nodiscard]] static StatusOr<std::unique_ptr<ClientHalf>> Create(worker::Model& base,
                                                                    const SplitConfig& split,
                                                                    const LoraSpec& lora, uint64_t seed);
  // tokens int64 [B, T] -> cut activations [B, T, d_model] with autograd through the adapters.
  torch::Tensor Forward(const torch::Tensor& tokens);
  LoraAdapters& lora() { return *lora_; }

 private:
  ClientHalf() = default;
  worker::GptPieces* gpt_ = nullptr;
  int cut_ = 0;
  std::unique_ptr<LoraAdapters> lora_;
};

// Server and client seeds derived from one run seed, so the two sides' adapters differ.
uint64_t ClientSeed(uint64_t seed);
uint64_t ServerSeed(uint64_t seed);

// Cut tensors <-> AMAQ payloads. `x` is float [rows, channels] (any device; copied to the CPU); empty
// `bits` means fp32 passthrough.
struct EncodedCut {
  std::string payload;
  quant::AmaqStats stats;
};
[[nodiscard]] StatusOr<EncodedCut> EncodeCut(quant::AmaqEncoder& encoder, const torch::Tensor& x,
                                             const std::vector<uint8_t>& bits,
                                             const quant::AmaqOptions& options);
// Decodes into a float [rows, channels] CPU tensor and checks the payload's dimensions; `stats` is
// the payload's byte breakdown (exact, from its header and the decoder's bit map).
struct DecodedCut {
  torch::Tensor values;
  quant::AmaqStats stats;
};
[[nodiscard]] StatusOr<DecodedCut> DecodeCut(quant::AmaqDecoder& decoder, const std::string& payload,
                                             int64_t rows, int64_t channels);

}  // namespace lowband::split
