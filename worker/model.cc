#include "worker/model.h"

#include <cmath>
#include <cstring>
#include <numbers>
#include <optional>
#include <string_view>

#include <fmt/format.h>
#include <torch/cuda.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/utils.h>

#include "worker/torch_compat.h"
#include "worker/torch_runtime.h"

namespace lowband::worker {
namespace {

namespace F = torch::nn::functional;

// ---------------------------------------------------------------------------------------------------
// Deterministic initialization: each parameter gets its own stream, seeded from (seed, name), so the
// values do not depend on construction order or on LibTorch's global generator, and are computed in
// double precision with portable arithmetic (splitmix64 + Box-Muller) before rounding to fp32.

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t HashName(std::string_view name) {  // FNV-1a, 64-bit
  uint64_t h = 0xCBF29CE484222325ULL;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001B3ULL;
  }
  return h;
}

enum class InitKind { kNormal, kZeros, kOnes };
struct InitRule {
  InitKind kind = InitKind::kNormal;
  double stddev = 0.0;
};

void InitParameter(const std::string& name, torch::Tensor& param, InitRule rule, uint64_t seed) {
  torch::Tensor values = torch::empty(param.sizes(), torch::TensorOptions().dtype(torch::kFloat));
  float* out = values.data_ptr<float>();
  const int64_t n = values.numel();
  if (rule.kind == InitKind::kZeros || rule.kind == InitKind::kOnes) {
    const float v = rule.kind == InitKind::kOnes ? 1.0F : 0.0F;
    for (int64_t i = 0; i < n; ++i) out[i] = v;
  } else {
    uint64_t state = seed ^ HashName(name);
    SplitMix64(state);              // decorrelate nearby seeds
    auto uniform_open = [&state] {  // in (0, 1]
      return (static_cast<double>(SplitMix64(state) >> 11) + 1.0) * 0x1.0p-53;
    };
    for (int64_t i = 0; i < n; i += 2) {
      const double r = std::sqrt(-2.0 * std::log(uniform_open()));
      const double theta = 2.0 * std::numbers::pi * uniform_open();
      out[i] = static_cast<float>(rule.stddev * r * std::cos(theta));
      if (i + 1 < n) out[i + 1] = static_cast<float>(rule.stddev * r * std::sin(theta));
    }
  }
  torch::NoGradGuard no_grad;
  param.copy_(values);
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string DtypeName(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat:
      return "float32";
    case torch::kDouble:
      return "float64";
    case torch::kHalf:
      return "float16";
    case torch::kBFloat16:
      return "bfloat16";
    default:
      return std::string(c10::toString(t));
  }
}

// ---------------------------------------------------------------------------------------------------
// GPT

// y = linear(x) + the adapter's delta for this layer, if the caller passed adapters that have one.
torch::Tensor AdaptedLinear(torch::nn::Linear& linear, const std::string& name, const torch::Tensor& x,
                            const LinearAdapters* adapters) {
  torch::Tensor y = linear(x);
  if (adapters != nullptr) {
    torch::Tensor delta = adapters->Delta(name, x);
    if (delta.defined()) y = y + delta;
  }
  return y;
}

struct CausalSelfAttentionImpl : torch::nn::Module {
  CausalSelfAttentionImpl(const ModelConfig& c, const std::string& prefix)
      : qkv_name(prefix + "qkv"),
        out_name(prefix + "out"),
        n_heads(c.n_heads),
        dropout(c.dropout),
        qkv(register_module("qkv", torch::nn::Linear(c.d_model, 3 * c.d_model))),
        out(register_module("out", torch::nn::Linear(c.d_model, c.d_model))),
        // Lower-triangular: position t may attend to positions <= t. A buffer, not a parameter, so it
        // follows the module across devices but is not trained or exchanged.
        causal(register_buffer("causal", torch::ones({c.context, c.context}, torch::kBool).tril())) {}

  torch::Tensor forward(const torch::Tensor& x, const LinearAdapters* adapters) {
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
    const int64_t head_dim = C / n_heads;
    // [B, T, 3C] -> [3, B, heads, T, head_dim]
    torch::Tensor qkv_heads =
        AdaptedLinear(qkv, qkv_name, x, adapters).view({B, T, 3, n_heads, head_dim}).permute({2, 0, 3, 1, 4});
    torch::Tensor q = qkv_heads[0], k = qkv_heads[1], v = qkv_heads[2];
    torch::Tensor att =
        torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(head_dim)));
    att = att.masked_fill(causal.slice(0, 0, T).slice(1, 0, T).logical_not(),
                          -std::numeric_limits<float>::infinity());
    att = torch::softmax(att, -1);
    att = torch::dropout(att, dropout, is_training());
    torch::Tensor y = torch::matmul(att, v).transpose(1, 2).contiguous().view({B, T, C});
    return torch::dropout(AdaptedLinear(out, out_name, y, adapters), dropout, is_training());
  }

  std::string qkv_name, out_name;
  int64_t n_heads;
  double dropout;
  torch::nn::Linear qkv;
  torch::nn::Linear out;
  torch::Tensor causal;
};
TORCH_MODULE(CausalSelfAttention);

struct FeedForwardImpl : torch::nn::Module {
  FeedForwardImpl(const ModelConfig& c, const std::string& prefix)
      : fc_name(prefix + "fc"),
        out_name(prefix + "out"),
        dropout(c.dropout),
        fc(register_module("fc", torch::nn::Linear(c.d_model, 4 * c.d_model))),
        out(register_module("out", torch::nn::Linear(4 * c.d_model, c.d_model))) {}
  torch::Tensor forward(const torch::Tensor& x, const LinearAdapters* adapters) {
    torch::Tensor h = torch::gelu(AdaptedLinear(fc, fc_name, x, adapters));
    return torch::dropout(AdaptedLinear(out, out_name, h, adapters), dropout, is_training());
  }
  std::string fc_name, out_name;
  double dropout;
  torch::nn::Linear fc;
  torch::nn::Linear out;
};
TORCH_MODULE(FeedForward);

// Pre-LayerNorm transformer block: x + attn(ln1(x)), then + mlp(ln2(x)).
struct TransformerBlockImpl : torch::nn::Module {
  TransformerBlockImpl(const ModelConfig& c, const std::string& prefix)
      : ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})))),
        attn(register_module("attn", CausalSelfAttention(c, prefix + "attn."))),
        ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})))),
        mlp(register_module("mlp", FeedForward(c, prefix + "mlp."))) {}
  torch::Tensor forward(torch::Tensor x, const LinearAdapters* adapters) {
    x = x + attn->forward(ln1(x), adapters);
    return x + mlp->forward(ln2(x), adapters);
  }
  torch::nn::LayerNorm ln1;
  CausalSelfAttention attn;
  torch::nn::LayerNorm ln2;
  FeedForward mlp;
};
TORCH_MODULE(TransformerBlock);

struct GptNet : torch::nn::Module {
  explicit GptNet(const ModelConfig& c) : config(c) {
    embed = register_module("embed", torch::nn::Embedding(c.vocab, c.d_model));
    pos_embed = register_module("pos_embed", torch::nn::Embedding(c.context, c.d_model));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < c.n_layers; ++i)
      blocks->push_back(TransformerBlock(c, "blocks." + std::to_string(i) + "."));
    ln_f = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})));
    if (!c.tie_embeddings) {
      head = register_module("head",
                             torch::nn::Linear(torch::nn::LinearOptions(c.d_model, c.vocab).bias(false)));
    }
  }

  // inputs int64 [B, T] -> logits [B, T, vocab]
  torch::Tensor forward(const torch::Tensor& inputs) {
    torch::Tensor x = Embed(inputs);
    x = RunBlocks(x, 0, config.n_layers, nullptr);
    return LmHead(ln_f(x));
  }

  // inputs int64 [B, T] -> token + position embeddings [B, T, C] (dropout in training).
  torch::Tensor Embed(const torch::Tensor& inputs) {
    TORCH_CHECK_VALUE(inputs.dim() == 2 && inputs.scalar_type() == torch::kLong,
                      "GPT expects int64 token ids of shape [batch, time], got ", inputs.scalar_type(), " ",
                      inputs.sizes());
    const int64_t T = inputs.size(1);
    TORCH_CHECK_VALUE(T >= 1 && T <= config.context, "GPT sequence length ", T,
                      " is outside [1, context=", config.context,
                      "]: set the data's seq_len to the model context");
    torch::Tensor positions =
        torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(inputs.device()));
    torch::Tensor x = embed(inputs) + pos_embed(positions);
    return torch::dropout(x, config.dropout, is_training());
  }

  torch::Tensor RunBlocks(torch::Tensor x, int begin, int end, const LinearAdapters* adapters) {
    for (int i = begin; i < end; ++i)
      x = blocks[static_cast<size_t>(i)]->as<TransformerBlockImpl>()->forward(x, adapters);
    return x;
  }

  torch::Tensor LmHead(const torch::Tensor& x) {
    return config.tie_embeddings ? torch::matmul(x, embed->weight.t()) : head(x);
  }

  InitRule RuleFor(const std::string& name, const torch::Tensor& p) const {
    if (EndsWith(name, ".bias")) return {InitKind::kZeros, 0.0};
    if (p.dim() == 1) return {InitKind::kOnes, 0.0};  // LayerNorm gains
    // GPT-2: residual-branch output projections are scaled down with depth so the residual stream's
    // variance does not grow with the number of blocks.
    if (EndsWith(name, "attn.out.weight") || EndsWith(name, "mlp.out.weight")) {
      return {InitKind::kNormal, 0.02 / std::sqrt(2.0 * config.n_layers)};
    }
    return {InitKind::kNormal, 0.02};
  }

  ModelConfig config;
  torch::nn::Embedding embed{nullptr};
  torch::nn::Embedding pos_embed{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
  torch::nn::Linear head{nullptr};
};

// ---------------------------------------------------------------------------------------------------
// Classifiers (Fashion-MNIST: inputs [B, 1, 28, 28])

constexpr int64_t kImageSide = 28;

struct ClassifierNet : torch::nn::Module {
  virtual torch::Tensor forward(const torch::Tensor& images) = 0;  // -> logits [B, classes]

  static void CheckImages(const torch::Tensor& images) {
    TORCH_CHECK_VALUE(images.dim() == 4 && images.size(1) == 1 && images.size(2) == kImageSide &&
                          images.size(3) == kImageSide && images.is_floating_point(),
                      "classifier expects float images of shape [batch, 1, 28, 28], got ",
                      images.scalar_type(), " ", images.sizes());
  }

  InitRule RuleFor(const std::string& name, const torch::Tensor& p) const {
    if (EndsWith(name, ".bias")) return {InitKind::kZeros, 0.0};
    // A small head makes the initial prediction near uniform (loss ~ ln(classes)).
    if (name == "head.weight") return {InitKind::kNormal, 0.01};
    const double fan_in = static_cast<double>(p.numel()) / static_cast<double>(p.size(0));
    return {InitKind::kNormal, std::sqrt(2.0 / fan_in)};  // He init for ReLU layers
  }
};

struct DenseBlockImpl : torch::nn::Module {
  DenseBlockImpl(int64_t in, int64_t out, double dropout_p)
      : dropout(dropout_p), fc(register_module("fc", torch::nn::Linear(in, out))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return torch::dropout(torch::relu(fc(x)), dropout, is_training());
  }
  double dropout;
  torch::nn::Linear fc;
};
TORCH_MODULE(DenseBlock);

struct ConvBlockImpl : torch::nn::Module {
  ConvBlockImpl(int64_t in_channels, int64_t out_channels)
      : conv(register_module(
            "conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, out_channels, 3).padding(1)))) {}
  torch::Tensor forward(const torch::Tensor& x) { return torch::max_pool2d(torch::relu(conv(x)), 2); }
  torch::nn::Conv2d conv;
};
TORCH_MODULE(ConvBlock);

struct MlpNet : ClassifierNet {
  explicit MlpNet(const ModelConfig& c) {
    blocks = register_module("blocks", torch::nn::ModuleList());
    int64_t width = kImageSide * kImageSide;
    for (int i = 0; i < c.n_layers; ++i) {
      blocks->push_back(DenseBlock(width, c.hidden, c.dropout));
      width = c.hidden;
    }
    head = register_module("head", torch::nn::Linear(width, c.num_classes));
  }
  torch::Tensor forward(const torch::Tensor& images) override {
    CheckImages(images);
    torch::Tensor x = images.flatten(1);
    for (const auto& block : *blocks) x = block->as<DenseBlockImpl>()->forward(x);
    return head(x);
  }
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::Linear head{nullptr};
};

struct CnnNet : ClassifierNet {
  explicit CnnNet(const ModelConfig& c) {
    const int64_t ch = std::max(8, c.hidden / 16);
    blocks = register_module("blocks", torch::nn::ModuleList());
    blocks->push_back(ConvBlock(1, ch));       // -> [ch, 14, 14]
    blocks->push_back(ConvBlock(ch, 2 * ch));  // -> [2ch, 7, 7]
    blocks->push_back(DenseBlock(2 * ch * (kImageSide / 4) * (kImageSide / 4), c.hidden, c.dropout));
    head = register_module("head", torch::nn::Linear(c.hidden, c.num_classes));
  }
  torch::Tensor forward(const torch::Tensor& images) override {
    CheckImages(images);
    torch::Tensor x = blocks[0]->as<ConvBlockImpl>()->forward(images);
    x = blocks[1]->as<ConvBlockImpl>()->forward(x);
    x = blocks[2]->as<DenseBlockImpl>()->forward(x.flatten(1));
    return head(x);
  }
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::Linear head{nullptr};
};

// ---------------------------------------------------------------------------------------------------
// Model implementations

// Switches a module to eval mode for a scope and restores the previous mode, even on exceptions.
class EvalModeScope {
 public:
  explicit EvalModeScope(torch::nn::Module& m) : module_(m), was_training_(m.is_training()) {
    module_.eval();
  }
  ~EvalModeScope() { module_.train(was_training_); }
  EvalModeScope(const EvalModeScope&) = delete;
  EvalModeScope& operator=(const EvalModeScope&) = delete;

 private:
  torch::nn::Module& module_;
  bool was_training_;
};

std::vector<std::pair<std::string, torch::Tensor>> ParamsOf(torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : m.named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

template <typename Net>
void InitAll(Net& net, uint64_t seed) {
  for (auto& [name, param] : ParamsOf(net)) InitParameter(name, param, net.RuleFor(name, param), seed);
}

Batch ToDevice(const Batch& b, const torch::Device& device) {
  if (b.inputs.device() == device && b.targets.device() == device &&
      (!b.lengths.defined() || b.lengths.device() == device))
    return b;
  return Batch{b.inputs.to(device), b.targets.to(device),
               b.lengths.defined() ? b.lengths.to(device) : b.lengths};
}

class GptModel final : public Model, public GptPieces {
 public:
  GptModel(const ModelConfig& c, uint64_t seed)
      : Model(c), net_(std::make_shared<GptNet>(c)), device_(c.device) {
    InitAll(*net_, seed);
    net_->to(device_);
  }

  torch::Tensor Loss(const Batch& batch) override {
    if (!net_->is_training()) net_->train();
    const Batch b = ToDevice(batch, device_);
    CheckTargets(b);
    torch::Tensor logits = net_->forward(b.inputs);
    return F::cross_entropy(logits.view({-1, logits.size(-1)}), b.targets.reshape({-1}));
  }

  torch::Tensor Forward(const torch::Tensor& inputs) override { return net_->forward(inputs.to(device_)); }

  StatusOr<EvalResult> Evaluate(const std::vector<Batch>& batches) override {
    if (batches.empty()) return InvalidArgument("Evaluate: no batches to evaluate");
    return GuardTorch("Evaluate", [&]() -> StatusOr<EvalResult> {
      EvalModeScope eval_mode(*net_);
      torch::NoGradGuard no_grad;
      double loss_sum = 0.0;
      int64_t count = 0;
      for (const Batch& batch : batches) {
        const Batch b = ToDevice(batch, device_);
        CheckTargets(b);
        torch::Tensor logits = net_->forward(b.inputs);
        loss_sum += F::cross_entropy(logits.view({-1, logits.size(-1)}), b.targets.reshape({-1}),
                                     F::CrossEntropyFuncOptions().reduction(torch::kSum))
                        .item<double>();
        count += b.targets.numel();
      }
      return EvalResult{loss_sum / static_cast<double>(count), std::nullopt, count};
    });
  }

  std::vector<std::pair<std::string, torch::Tensor>> NamedParameters() override { return ParamsOf(*net_); }
  torch::nn::Module& module() override { return *net_; }

  // GptPieces
  torch::Tensor Embed(const torch::Tensor& tokens) override { return net_->Embed(tokens.to(device_)); }
  torch::Tensor Blocks(torch::Tensor x, int begin, int end, const LinearAdapters* adapters) override {
    TORCH_CHECK_VALUE(0 <= begin && begin <= end && end <= config().n_layers, "GPT blocks [", begin, ", ",
                      end, ") are outside [0, ", config().n_layers, "]");
    TORCH_CHECK_VALUE(x.dim() == 3 && x.size(2) == config().d_model, "GPT blocks expect [batch, time, ",
                      config().d_model, "] activations, got ", x.sizes());
    return net_->RunBlocks(std::move(x), begin, end, adapters);
  }
  torch::Tensor FinalNorm(const torch::Tensor& x) override { return net_->ln_f(x); }
  torch::Tensor LmHead(const torch::Tensor& x) override { return net_->LmHead(x); }
  std::vector<LinearInfo> BlockLinears(int block) override {
    const ModelConfig& c = config();
    const std::string p = "blocks." + std::to_string(block) + ".";
    return {{p + "attn.qkv", c.d_model, 3 * c.d_model},
            {p + "attn.out", c.d_model, c.d_model},
            {p + "mlp.fc", c.d_model, 4 * c.d_model},
            {p + "mlp.out", 4 * c.d_model, c.d_model}};
  }
  torch::Device device() const override { return device_; }

 private:
  static void CheckTargets(const Batch& b) {
    TORCH_CHECK_VALUE(b.targets.scalar_type() == torch::kLong && b.targets.sizes() == b.inputs.sizes(),
                      "language-model targets must be int64 with the inputs' shape ", b.inputs.sizes(),
                      ", got ", b.targets.scalar_type(), " ", b.targets.sizes());
  }

  std::shared_ptr<GptNet> net_;
  torch::Device device_;
};

class ClassifierModel final : public Model {
 public:
  ClassifierModel(const ModelConfig& c, std::shared_ptr<ClassifierNet> net, uint64_t seed)
      : Model(c), net_(std::move(net)), device_(c.device) {
    InitAll(*net_, seed);
    net_->to(device_);
  }

  torch::Tensor Loss(const Batch& batch) override {
    if (!net_->is_training()) net_->train();
    const Batch b = ToDevice(batch, device_);
    CheckTargets(b);
    return F::cross_entropy(net_->forward(b.inputs), b.targets);
  }

  torch::Tensor Forward(const torch::Tensor& inputs) override { return net_->forward(inputs.to(device_)); }

  StatusOr<EvalResult> Evaluate(const std::vector<Batch>& batches) override {
    if (batches.empty()) return InvalidArgument("Evaluate: no batches to evaluate");
    return GuardTorch("Evaluate", [&]() -> StatusOr<EvalResult> {
      EvalModeScope eval_mode(*net_);
      torch::NoGradGuard no_grad;
      double loss_sum = 0.0;
      int64_t count = 0, correct = 0;
      for (const Batch& batch : batches) {
        const Batch b = ToDevice(batch, device_);
        CheckTargets(b);
        torch::Tensor logits = net_->forward(b.inputs);
        loss_sum += F::cross_entropy(logits, b.targets, F::CrossEntropyFuncOptions().reduction(torch::kSum))
                        .item<double>();
        correct += logits.argmax(1).eq(b.targets).sum().item<int64_t>();
        count += b.targets.numel();
      }
      return EvalResult{loss_sum / static_cast<double>(count),
                        static_cast<double>(correct) / static_cast<double>(count), count};
    });
  }

  std::vector<std::pair<std::string, torch::Tensor>> NamedParameters() override { return ParamsOf(*net_); }
  torch::nn::Module& module() override { return *net_; }

 private:
  static void CheckTargets(const Batch& b) {
    TORCH_CHECK_VALUE(b.targets.scalar_type() == torch::kLong && b.targets.dim() == 1 &&
                          b.targets.size(0) == b.inputs.size(0),
                      "classifier targets must be int64 of shape [batch=", b.inputs.size(0), "], got ",
                      b.targets.scalar_type(), " ", b.targets.sizes());
  }

  std::shared_ptr<ClassifierNet> net_;
  torch::Device device_;
};

}  // namespace

Model::~Model() = default;
LinearAdapters::~LinearAdapters() = default;
GptPieces::~GptPieces() = default;

GptPieces* AsGpt(Model& model) { return dynamic_cast<GptPieces*>(&model); }

int64_t Model::TokensPerBatch(const Batch& batch) const { return batch.targets.numel(); }

Status ValidateModelConfig(const ModelConfig& c) {
  const auto bad = [](const std::string& m) { return InvalidArgument("model config: " + m); };
  if (c.kind != "gpt" && c.kind != "mlp" && c.kind != "cnn") {
    return bad("kind must be \"gpt\", \"mlp\" or \"cnn\", got \"" + c.kind + "\"");
  }
  if (!(c.dropout >= 0.0 && c.dropout < 1.0))
    return bad("dropout must be in [0, 1), got " + std::to_string(c.dropout));
  if (c.kind == "gpt") {
    if (c.vocab < 2) return bad("vocab must be >= 2, got " + std::to_string(c.vocab));
    if (c.d_model < 1 || c.n_heads < 1 || c.d_model % c.n_heads != 0) {
      return bad("d_model (" + std::to_string(c.d_model) + ") must be a positive multiple of n_heads (" +
                 std::to_string(c.n_heads) + ")");
    }
    if (c.n_layers < 1) return bad("n_layers must be >= 1, got " + std::to_string(c.n_layers));
    if (c.context < 1) return bad("context must be >= 1, got " + std::to_string(c.context));
  } else {
    if (c.hidden < 1) return bad("hidden must be >= 1, got " + std::to_string(c.hidden));
    if (c.num_classes < 2) return bad("num_classes must be >= 2, got " + std::to_string(c.num_classes));
    if (c.kind == "mlp" && c.n_layers < 1)
      return bad("n_layers must be >= 1 for an mlp, got " + std::to_string(c.n_layers));
  }
  try {
    const torch::Device device(c.device);
    if (device.is_cuda() && !torch::cuda::is_available()) {
      return FailedPrecondition(
          "model config: device \"" + c.device +
          "\" asked for CUDA, but this LibTorch has no usable CUDA device; use \"cpu\"");
    }
    if (!device.is_cpu() && !device.is_cuda()) {
      return bad("device must be \"cpu\", \"cuda\" or \"cuda:N\", got \"" + c.device + "\"");
    }
    if (device.is_cuda() && device.has_index() && device.index() >= compat::CudaDeviceCount()) {
      return bad("device \"" + c.device + "\" does not exist: " + std::to_string(compat::CudaDeviceCount()) +
                 " CUDA device(s) visible");
    }
  } catch (const c10::Error& e) {
    return bad("device must be \"cpu\", \"cuda\" or \"cuda:N\", got \"" + c.device + "\"");
  }
  return Status::Ok();
}

StatusOr<std::unique_ptr<Model>> MakeModel(const ModelConfig& config, uint64_t seed) {
  LOWBAND_RETURN_IF_ERROR(ValidateModelConfig(config));
  return GuardTorch("MakeModel", [&]() -> StatusOr<std::unique_ptr<Model>> {
    std::unique_ptr<Model> model;
    if (config.kind == "gpt") {
      model = std::make_unique<GptModel>(config, seed);
    } else if (config.kind == "mlp") {
      model = std::make_unique<ClassifierModel>(config, std::make_shared<MlpNet>(config), seed);
    } else {
      model = std::make_unique<ClassifierModel>(config, std::make_shared<CnnNet>(config), seed);
    }
    return model;
  });
}

std::vector<ParamInfo> Describe(Model& model) {
  std::vector<ParamInfo> out;
  int64_t offset = 0;
  for (const auto& [name, p] : model.NamedParameters()) {
    ParamInfo info{name, p.sizes().vec(), DtypeName(p.scalar_type()), p.numel(), offset};
    offset += p.numel();
    out.push_back(std::move(info));
  }
  return out;
}

int64_t NumParameters(Model& model) {
  int64_t n = 0;
  for (const auto& [name, p] : model.NamedParameters()) n += p.numel();
  return n;
}

void CopyParamsTo(Model& model, std::vector<float>* flat) {
  const auto params = model.NamedParameters();
  int64_t total = 0;
  for (const auto& [name, p] : params) total += p.numel();
  flat->resize(static_cast<size_t>(total));
  torch::NoGradGuard no_grad;
  float* dst = flat->data();
  for (const auto& [name, p] : params) {
    const torch::Tensor src = p.detach().to(torch::kCPU, torch::kFloat).contiguous();
    std::memcpy(dst, src.data_ptr<float>(), static_cast<size_t>(src.numel()) * sizeof(float));
    dst += src.numel();
  }
}

Status CopyParamsFrom(Model& model, std::span<const float> flat) {
  const auto params = model.NamedParameters();
  int64_t total = 0;
  for (const auto& [name, p] : params) total += p.numel();
  if (static_cast<int64_t>(flat.size()) != total) {
    return InvalidArgument("CopyParamsFrom: expected " + std::to_string(total) +
                           " floats (the model's parameter count), got " + std::to_string(flat.size()) +
                           "; the vector was built for a different model configuration");
  }
  return GuardTorch("CopyParamsFrom", [&]() -> Status {
    torch::NoGradGuard no_grad;
    const float* src = flat.data();
    for (const auto& [name, p] : params) {
      // from_blob does not copy and never writes; copy_ converts device and dtype as needed.
      const torch::Tensor view = torch::from_blob(const_cast<float*>(src), p.sizes(), torch::kFloat);
      p.copy_(view);
      src += p.numel();
    }
    return Status::Ok();
  });
}

namespace {

// The tensors of `tensors` (indices into NamedParameters), after checking them and, when given, that
// `flat_size` is their total element count.
StatusOr<std::vector<torch::Tensor>> SelectParams(Model& model, std::span<const uint32_t> tensors,
                                                  std::optional<size_t> flat_size, const char* what) {
  const auto params = model.NamedParameters();
  std::vector<torch::Tensor> out;
  out.reserve(tensors.size());
  int64_t total = 0;
  for (uint32_t i : tensors) {
    if (i >= params.size()) {
      return InvalidArgument(
          fmt::format("{}: parameter index {} is out of range (the model has {}); the "
                      "fragment layout was built for a different model",
                      what, i, params.size()));
    }
    out.push_back(params[i].second);
    total += params[i].second.numel();
  }
  if (flat_size && static_cast<int64_t>(*flat_size) != total) {
    return InvalidArgument(fmt::format("{}: the {} selected parameters hold {} floats, the buffer {}", what,
                                       tensors.size(), total, *flat_size));
  }
  return out;
}

}  // namespace

Status CopyParamsTo(Model& model, std::span<const uint32_t> tensors, std::span<float> flat) {
  LOWBAND_ASSIGN_OR_RETURN(auto selected, SelectParams(model, tensors, flat.size(), "CopyParamsTo"));
  return GuardTorch("CopyParamsTo", [&]() -> Status {
    torch::NoGradGuard no_grad;
    float* dst = flat.data();
    for (const torch::Tensor& p : selected) {
      // copy_ into a host view converts device and dtype in one step.
      torch::from_blob(dst, p.sizes(), torch::kFloat).copy_(p.detach());
      dst += p.numel();
    }
    return Status::Ok();
  });
}

Status CopyParamsFrom(Model& model, std::span<const uint32_t> tensors, std::span<const float> flat) {
  LOWBAND_ASSIGN_OR_RETURN(auto selected, SelectParams(model, tensors, flat.size(), "CopyParamsFrom"));
  return GuardTorch("CopyParamsFrom", [&]() -> Status {
    torch::NoGradGuard no_grad;
    const float* src = flat.data();
    for (torch::Tensor& p : selected) {
      p.copy_(torch::from_blob(const_cast<float*>(src), p.sizes(), torch::kFloat));
      src += p.numel();
    }
    return Status::Ok();
  });
}

StatusOr<torch::Tensor> FlatParams(Model& model, std::span<const uint32_t> tensors) {
  LOWBAND_ASSIGN_OR_RETURN(auto selected, SelectParams(model, tensors, std::nullopt, "FlatParams"));
  int64_t total = 0;
  for (const torch::Tensor& p : selected) total += p.numel();
  torch::Tensor flat;
  LOWBAND_RETURN_IF_ERROR(GuardTorch("FlatParams", [&]() -> Status {
    torch::NoGradGuard no_grad;
    const torch::Device device = selected.empty() ? torch::Device(torch::kCPU) : selected.front().device();
    flat = torch::empty({total}, torch::TensorOptions().dtype(torch::kFloat).device(device));
    int64_t at = 0;
    for (const torch::Tensor& p : selected) {
      flat.narrow(0, at, p.numel()).view(p.sizes()).copy_(p.detach());
      at += p.numel();
    }
    return Status::Ok();
  }));
  return flat;
}

Status SetFlatParams(Model& model, std::span<const uint32_t> tensors, const torch::Tensor& flat) {
  if (!flat.defined() || flat.dim() != 1 || flat.scalar_type() != torch::kFloat) {
    return InvalidArgument("SetFlatParams: expected a 1-D fp32 tensor (as FlatParams returns)");
  }
  LOWBAND_ASSIGN_OR_RETURN(auto selected,
                           SelectParams(model, tensors, static_cast<size_t>(flat.numel()), "SetFlatParams"));
  return GuardTorch("SetFlatParams", [&]() -> Status {
    torch::NoGradGuard no_grad;
    int64_t at = 0;
    for (torch::Tensor& p : selected) {
      p.copy_(flat.narrow(0, at, p.numel()).view(p.sizes()));
      at += p.numel();
    }
    return Status::Ok();
  });
}

}  // namespace lowband::worker
