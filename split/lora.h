// LoRA adapters for a GPT's linear layers (Hu et al.): y = W x + b + (alpha / r) * B (A x), with A
// [r, in] drawn uniform in +-1/sqrt(in) and B [out, r] zero, so a fresh adapter leaves the model
// unchanged. The base weights stay frozen and are shared (a server keeps one base model and one
// LoraAdapters per client session); only A and B train.
//
// Names follow the model's: the adapter of "blocks.3.attn.qkv" has parameters
// "blocks.3.attn.qkv.lora_A.weight" and "...lora_B.weight", the names PEFT-style tools expect.
//
// Thread safety: Delta() only reads; several threads may run forward passes through the same adapters,
// but training (optimizer steps) needs one thread at a time. Lifetimes: independent of any model.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include "quant/status.h"
#include "worker/model.h"

namespace lowband::split {

struct LoraSpec {
  int rank = 8;
  double alpha = 16.0;
  // Comma list of qkv, attn_out, fc, mlp_out.
  std::string modules = "qkv,attn_out,fc,mlp_out";
};

class LoraAdapters final : public worker::LinearAdapters {
 public:
  // Adapters on the chosen linear layers of blocks [begin, end) of `gpt`, on its device. The same
  // seed gives the same A matrices.
  [[nodiscard]] static StatusOr<std::unique_ptr<LoraAdapters>> Create(worker::GptPieces& gpt, int begin,
                                                                      int end, const LoraSpec& spec,
                                                                      uint64_t seed);

  torch::Tensor Delta(const std::string& name, const torch::Tensor& x) const override;

  // A and B of every adapted layer, in block order (the trainable parameters).
  std::vector<std::pair<std::string, torch::Tensor>> NamedParameters() const;
  std::vector<torch::Tensor> Parameters() const;
  int64_t NumParameters() const;

  // Overwrites A and B from tensors named as NamedParameters (e.g. a saved adapter file). Every
  // adapter must be present with its shape; on any mismatch nothing changes.
  [[nodiscard]] Status Load(const std::map<std::string, torch::Tensor>& tensors);

  // W += (alpha / r) * B A for every adapted layer of `model` (whose parameter "<layer>.weight" it
  // finds by name): the merged model computes what base + adapters computed.
  [[nodiscard]] Status MergeInto(worker::Model& model) const;

  const LoraSpec& spec() const { return spec_; }
  double scaling() const { return scaling_; }

 private:
  struct Adapter {
    torch::Tensor a;  // [r, in]
    torch::Tensor b;  // [out, r]
  };
  explicit LoraAdapters(LoraSpec spec) : spec_(std::move(spec)), scaling_(spec_.alpha / spec_.rank) {}

  LoraSpec spec_;
  double scaling_;
  std::vector<std::string> order_;
  std::map<std::string, Adapter> adapters_;
};

// Writes one side's adapters as <dir>/adapter_model.safetensors (the tensors, F32) and
// <dir>/adapter_config.json ({"format": "lowband-split-adapters", "side": side, ...fields}), atomically,
// creating `dir`. `fields` must be a JSON object.
[[nodiscard]] Status SaveAdapterFiles(const std::string& dir, const std::string& side,
                                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                      const nlohmann::ordered_json& fields);

// Parses LoraSpec.modules into the suffixes of the layer names ("attn.qkv", "attn.out", "mlp.fc",
// "mlp.out"); the error names an unknown module and lists the known ones.
[[nodiscard]] StatusOr<std::vector<std::string>> ParseLoraModules(const std::string& modules);

}  // namespace lowband::split
