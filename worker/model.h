// Models a worker trains: a small GPT (byte- or token-level language model) and two Fashion-MNIST
// classifiers (MLP, CNN), behind one interface the training engine uses without knowing which it has.
//
// Parameters are exposed by name in a stable order. Names are whole-layer names, and every parameter
// of a repeated layer starts with "blocks.<i>." so that Streaming DiLoCo's fragment layout (block i
// goes to fragment i mod P) can be computed from the names alone; everything else (embeddings, final
// norm, head) has a name outside "blocks.". The flat fp32 view (CopyParamsTo/From, ParamInfo::offset)
// concatenates the parameters in that same order; it is what the engine quantizes and exchanges.
//
// Initialization does not touch LibTorch's global random generator: every parameter is drawn from its
// own generator seeded by (seed, parameter name), in double precision on the host and rounded to
// fp32, so the same seed gives bit-identical parameters in every process, on every machine.
//
// Thread safety: a Model is not thread-safe; one thread trains it at a time. Lifetimes: a Model owns
// its torch::nn::Module; tensors returned by NamedParameters() alias the live parameters (writing
// into them changes the model) and stay valid as long as the Model does.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "quant/status.h"
#include "worker/config.h"

namespace lowband::worker {

// One minibatch. Language models: inputs and targets int64 [B, T] (targets are the inputs shifted by
// one token). Image classifiers: inputs float [B, 1, 28, 28] (normalized), targets int64 [B]. Text
// classifiers: inputs int64 [B, T] token ids padded at the end with 0, `lengths` int64 [B] the real
// tokens of each row (1..T), targets int64 [B] class ids.
struct Batch {
  torch::Tensor inputs;
  torch::Tensor targets;
  // Text classification only (undefined otherwise).
  torch::Tensor lengths;
};

// Result of evaluating on a set of batches.
struct EvalResult {
  // Mean cross-entropy per target (token or example), in nats.
  double loss = 0.0;
  // Fraction of examples classified correctly (classifiers only).
  std::optional<double> accuracy;
  // Number of targets the means are over (tokens for language models, examples for classifiers).
  int64_t count = 0;
};

class Model {
 public:
  virtual ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Mean cross-entropy of `batch` as a scalar tensor with autograd history; switches the module to
  // training mode (dropout active) first. Throws c10::Error on malformed batches (wrong shape, token
  // id out of range); the inner optimizer converts that into a Status.
  virtual torch::Tensor Loss(const Batch& batch) = 0;

  // Logits for `inputs` in the module's current mode, with autograd unless the caller disabled it:
  // [B, T, vocab] for language models, [B, classes] for classifiers. Throws c10::Error on bad input.
  virtual torch::Tensor Forward(const torch::Tensor& inputs) = 0;

  // Evaluation mode and no autograd: the mean loss (and accuracy for classifiers) over all targets of
  // `batches`. Restores the previous training/eval mode afterwards.
  [[nodiscard]] virtual StatusOr<EvalResult> Evaluate(const std::vector<Batch>& batches) = 0;

  // All trainable parameters, each once, in a stable order (see the file comment for the naming).
  virtual std::vector<std::pair<std::string, torch::Tensor>> NamedParameters() = 0;

  // The underlying module (for optimizers, train()/eval(), device moves).
  virtual torch::nn::Module& module() = 0;

  // Targets in `batch`: tokens (language models) or examples (classifiers).
  virtual int64_t TokensPerBatch(const Batch& batch) const;

  // The configuration the model was built from.
  const ModelConfig& config() const { return config_; }

 protected:
  explicit Model(ModelConfig config) : config_(std::move(config)) {}

 private:
  ModelConfig config_;
};

// Additive adapters beside a GPT's linear layers: y = W x + b + Delta(name, x). Split learning uses them
// for LoRA (split/lora.h) while the base weights stay frozen and shared. Delta is called from the
// forward pass of whichever thread runs it; implementations must not keep per-call state.
class LinearAdapters {
 public:
  virtual ~LinearAdapters();
  // The adapter's output for linear layer `name` ("blocks.3.attn.qkv") on input x [..., in], shaped
  // [..., out]; an undefined tensor when this layer has no adapter.
  virtual torch::Tensor Delta(const std::string& name, const torch::Tensor& x) const = 0;
};

// A linear layer of a GPT block, by the name LinearAdapters sees.
struct LinearInfo {
  std::string name;  // "blocks.3.attn.qkv", "blocks.3.attn.out", "blocks.3.mlp.fc", "blocks.3.mlp.out"
  int64_t in = 0;
  int64_t out = 0;
};

// The pieces of a GPT's forward pass, so that split learning can cut it after any block:
// logits = LmHead(FinalNorm(Blocks(Embed(tokens), 0, n_layers, nullptr))) is exactly Forward(tokens).
// Everything runs in the module's current train/eval mode, with autograd unless the caller disabled it.
class GptPieces {
 public:
  virtual ~GptPieces();
  // int64 token ids [B, T] (any device) -> token + position embeddings [B, T, d_model].
  virtual torch::Tensor Embed(const torch::Tensor& tokens) = 0;
  // Blocks begin..end-1 on activations [B, T, d_model], with optional adapters.
  virtual torch::Tensor Blocks(torch::Tensor x, int begin, int end, const LinearAdapters* adapters) = 0;
  // The final LayerNorm.
  virtual torch::Tensor FinalNorm(const torch::Tensor& x) = 0;
  // Normalized activations [..., d_model] -> next-token logits [..., vocab].
  virtual torch::Tensor LmHead(const torch::Tensor& x) = 0;
  // The four linear layers of block `block`, in forward order.
  virtual std::vector<LinearInfo> BlockLinears(int block) = 0;
  // Where the parameters live.
  virtual torch::Device device() const = 0;
};

// The GPT pieces of `model`, or nullptr when it is not a GPT. Valid as long as the model is.
GptPieces* AsGpt(Model& model);

// Checks `config` (kind, sizes, divisibility, device) without building anything.
[[nodiscard]] Status ValidateModelConfig(const ModelConfig& config);

// Builds and initializes a model. The same (config, seed) gives bit-identical parameters in every
// process; different seeds give different parameters.
[[nodiscard]] StatusOr<std::unique_ptr<Model>> MakeModel(const ModelConfig& config, uint64_t seed);

// One parameter, as it appears in the model signature and in the flat fp32 view.
struct ParamInfo {
  std::string name;            // e.g. "blocks.3.attn.qkv.weight"
  std::vector<int64_t> shape;  // e.g. {384, 128}
  std::string dtype;           // "float32"
  int64_t numel = 0;           // product of shape
  int64_t offset = 0;          // index of its first element in the flat fp32 view
};

// The parameters in NamedParameters order, with their place in the flat fp32 view.
std::vector<ParamInfo> Describe(Model& model);

// Total number of parameter elements (the length of the flat fp32 view).
int64_t NumParameters(Model& model);

// Copies every parameter, in NamedParameters order, into one contiguous fp32 vector (resized to
// NumParameters). Works from any device.
void CopyParamsTo(Model& model, std::vector<float>* flat);

// Overwrites every parameter from a flat fp32 vector laid out as CopyParamsTo writes it. The tensors
// are written in place (optimizer state stays attached). Rejects a length other than NumParameters
// and changes nothing in that case.
[[nodiscard]] Status CopyParamsFrom(Model& model, std::span<const float> flat);

// The same for a subset: the parameters whose NamedParameters indices are `tensors` (ascending),
// concatenated in that order (a Streaming DiLoCo fragment: comm::FragmentInfo::tensors). Only those
// tensors are read or written (from any device), so a fragment costs its own size, not the model's.
// `flat` must hold exactly their elements; an index out of range or a wrong length is refused and
// nothing is written.
[[nodiscard]] Status CopyParamsTo(Model& model, std::span<const uint32_t> tensors, std::span<float> flat);
[[nodiscard]] Status CopyParamsFrom(Model& model, std::span<const uint32_t> tensors,
                                    std::span<const float> flat);

// The same subset as one contiguous 1-D fp32 tensor on the model's device (a copy), and its inverse,
// which writes such a tensor (on any device) back into those parameters in place. These keep a
// fragment where the model is: on a GPU nothing crosses to the host. `flat` must hold exactly the
// subset's elements; an index out of range or a wrong length is refused and nothing is written.
[[nodiscard]] StatusOr<torch::Tensor> FlatParams(Model& model, std::span<const uint32_t> tensors);
[[nodiscard]] Status SetFlatParams(Model& model, std::span<const uint32_t> tensors,
                                   const torch::Tensor& flat);

}  // namespace lowband::worker
