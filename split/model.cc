#include "split/model.h"

#include <cmath>
#include <cstring>
#include <filesystem>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/loss.h>
#include <torch/torch.h>

#include "split/amaq.h"
#include "split/safetensors.h"
#include "worker/checkpoint.h"
#include "worker/torch_runtime.h"

namespace lowband::split {
namespace {

namespace F = torch::nn::functional;

Status LoadSafetensorsInto(const std::string& path, worker::Model& model) {
  LOWBAND_ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensors(path));
  const auto named = model.NamedParameters();
  for (const auto& [name, p] : named) {
    const auto it = file.tensors.find(name);
    if (it == file.tensors.end()) {
      return InvalidArgument("base model '" + path + "' has no tensor '" + name +
                             "': it was saved for another architecture (names must match the GPT's)");
    }
    if (it->second.sizes() != p.sizes()) {
      std::ostringstream msg;
      msg << "base model '" << path << "' tensor '" << name << "' has shape " << it->second.sizes()
          << " but the model needs " << p.sizes() << ": check model.d_model / n_layers / vocab / context";
      return InvalidArgument(msg.str());
    }
  }
  if (file.tensors.size() != named.size()) {
    for (const auto& [name, t] : file.tensors) {
      bool known = false;
      for (const auto& [n, p] : named) known |= n == name;
      if (!known)
        return InvalidArgument("base model '" + path + "' has tensor '" + name + "' that the model does not");
    }
  }
  return worker::GuardTorch("load " + path, [&]() -> Status {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : named) p.copy_(file.tensors.at(name));
    return Status::Ok();
  });
}

}  // namespace

uint64_t ClientSeed(uint64_t seed) { return seed * 0x9E3779B97F4A7C15ull + 1; }
uint64_t ServerSeed(uint64_t seed) { return seed * 0x9E3779B97F4A7C15ull + 2; }

Status ValidateSplitConfig(const SplitConfig& s, const worker::ModelConfig& m) {
  if (m.kind != "gpt") return InvalidArgument("split learning needs model.kind gpt, got '" + m.kind + "'");
  if (s.cut < 1 || s.cut >= m.n_layers) {
    return InvalidArgument("split.cut must be in [1, " + std::to_string(m.n_layers - 1) +
                           "] (blocks on the client; " + std::to_string(m.n_layers) +
                           " blocks in the model), got " + std::to_string(s.cut));
  }
  if (s.task != "classify" && s.task != "lm")
    return InvalidArgument("split.task: expected classify or lm, got '" + s.task + "'");
  LOWBAND_ASSIGN_OR_RETURN(const CutCodec codec, ParseCutCodec(s.codec));
  if (codec != CutCodec::kFp32 && (s.bits < 2 || s.bits > 8))
    return InvalidArgument("split.bits must be in [2, 8], got " + std::to_string(s.bits));
  const std::string grads = ResolveGradCodec(s.grad_codec, s.codec);
  if (grads != "follow" && grads != "fixed" && grads != "amaq" && grads != "fp32") {
    return InvalidArgument("split.grad_codec: expected auto, follow, fixed, amaq or fp32, got '" +
                           s.grad_codec + "'");
  }
  if (const int gb = ResolveGradBits(s.grad_bits, s.bits);
      s.grad_bits < 0 || ((grads == "fixed" || grads == "amaq") && (gb < 2 || gb > 8))) {
    return InvalidArgument("split.grad_bits must be 0 (= split.bits) or in [2, 8], got " +
                           std::to_string(s.grad_bits));
  }
  if (s.grad_rounding != "stochastic" && s.grad_rounding != "nearest")
    return InvalidArgument("split.grad_rounding: expected stochastic or nearest, got '" + s.grad_rounding +
                           "'");
  if (s.lora_rank < 1) return InvalidArgument("split.lora_rank must be >= 1");
  if (!(s.lora_alpha > 0)) return InvalidArgument("split.lora_alpha must be > 0");
  LOWBAND_RETURN_IF_ERROR(ParseLoraModules(s.lora_modules).status().WithContext("split.lora_modules"));
  if (s.max_sessions < 1) return InvalidArgument("split.max_sessions must be >= 1");
  if (!(s.session_timeout_s > 0)) return InvalidArgument("split.session_timeout_s must be > 0");
  return Status::Ok();
}

StatusOr<std::unique_ptr<worker::Model>> LoadBaseModel(const worker::ModelConfig& config,
                                                       const SplitConfig& split, uint64_t seed) {
  LOWBAND_ASSIGN_OR_RETURN(std::unique_ptr<worker::Model> model, worker::MakeModel(config, seed));
  if (!split.base.empty()) {
    std::error_code ec;
    if (!std::filesystem::exists(split.base, ec)) {
      return NotFound(
          "split.base '" + split.base +
          "' does not exist: give a lowband checkpoint directory (e.g. runs/NAME/checkpoints/worker-0) "
          "or a .safetensors file");
    }
    if (split.base.ends_with(".safetensors")) {
      LOWBAND_RETURN_IF_ERROR(LoadSafetensorsInto(split.base, *model));
    } else {
      LOWBAND_RETURN_IF_ERROR(worker::LoadCheckpointParameters(split.base, *model).status());
    }
  }
  for (auto& [name, p] : model->NamedParameters()) p.set_requires_grad(false);
  model->module().eval();
  return model;
}

StatusOr<std::unique_ptr<ServerHalf>> ServerHalf::Create(worker::Model& base, const SplitConfig& split,
                                                         int num_classes, const LoraSpec& lora,
                                                         uint64_t seed) {
  worker::GptPieces* gpt = worker::AsGpt(base);
  if (gpt == nullptr) return InvalidArgument("split learning needs a GPT base model");
  LOWBAND_RETURN_IF_ERROR(ValidateSplitConfig(split, base.config()));
  if (split.task == "classify" && num_classes < 2)
    return InvalidArgument("classify needs at least 2 classes, got " + std::to_string(num_classes));
  std::unique_ptr<ServerHalf> half(new ServerHalf());
  half->gpt_ = gpt;
  half->begin_ = split.cut;
  half->end_ = base.config().n_layers;
  half->task_ = split.task;
  LOWBAND_ASSIGN_OR_RETURN(half->lora_, LoraAdapters::Create(*gpt, half->begin_, half->end_, lora, seed));
  if (split.task == "classify") {
    return worker::GuardTorch("ServerHalf::Create", [&]() -> StatusOr<std::unique_ptr<ServerHalf>> {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(seed ^ 0x48656164ull);
      const int64_t c = base.config().d_model;
      half->head_w_ = (torch::randn({num_classes, c}, gen, torch::kFloat) * 0.02)
                          .to(gpt->device())
                          .set_requires_grad(true);
      half->head_b_ =
          torch::zeros({num_classes}, torch::TensorOptions().device(gpt->device())).set_requires_grad(true);
      return std::move(half);
    });
  }
  return half;
}

HalfResult ServerHalf::Forward(const torch::Tensor& x, const torch::Tensor& targets,
                               const torch::Tensor& lengths) {
  torch::Tensor h = gpt_->FinalNorm(gpt_->Blocks(x, begin_, end_, lora_.get()));
  HalfResult r;
  const int64_t B = x.size(0), T = x.size(1);
  if (task_ == "classify") {
    TORCH_CHECK_VALUE(
        targets.dim() == 1 && targets.size(0) == B && lengths.dim() == 1 && lengths.size(0) == B,
        "classify needs targets [", B, "] and lengths [", B, "], got ", targets.sizes(), " and ",
        lengths.sizes());
    TORCH_CHECK_VALUE(lengths.min().item<int64_t>() >= 1 && lengths.max().item<int64_t>() <= T,
                      "lengths must be in [1, ", T, "]");
    const int64_t classes = head_w_.size(0);
    TORCH_CHECK_VALUE(targets.min().item<int64_t>() >= 0 && targets.max().item<int64_t>() < classes,
                      "class ids must be in [0, ", classes, ")");
    const torch::Tensor index = (lengths.to(h.device()) - 1).view({B, 1, 1}).expand({B, 1, h.size(2)});
    const torch::Tensor last = h.gather(1, index).squeeze(1);  // [B, C]
    const torch::Tensor logits = torch::addmm(head_b_, last, head_w_.t());
    const torch::Tensor t = targets.to(h.device());
    r.loss = F::cross_entropy(logits, t);
    r.correct = logits.argmax(1).eq(t).sum().item<int64_t>();
    r.count = B;
  } else {
    TORCH_CHECK_VALUE(targets.dim() == 2 && targets.size(0) == B && targets.size(1) == T,
                      "lm needs targets [", B, ", ", T, "], got ", targets.sizes());
    const torch::Tensor logits = gpt_->LmHead(h);
    const int64_t vocab = logits.size(-1);
    TORCH_CHECK_VALUE(targets.min().item<int64_t>() >= 0 && targets.max().item<int64_t>() < vocab,
                      "token ids must be in [0, ", vocab, ")");
    r.loss = F::cross_entropy(logits.view({-1, vocab}), targets.to(h.device()).reshape({-1}));
    r.count = B * T;
  }
  return r;
}

std::vector<std::pair<std::string, torch::Tensor>> ServerHalf::NamedParameters() const {
  auto out = lora_->NamedParameters();
  if (head_w_.defined()) {
    out.emplace_back("head.weight", head_w_);
    out.emplace_back("head.bias", head_b_);
  }
  return out;
}

std::vector<torch::Tensor> ServerHalf::Parameters() const {
  std::vector<torch::Tensor> out;
  for (auto& [n, t] : NamedParameters()) out.push_back(t);
  return out;
}

int64_t ServerHalf::NumParameters() const {
  int64_t n = 0;
  for (const auto& [name, t] : NamedParameters()) n += t.numel();
  return n;
}

StatusOr<std::unique_ptr<ClientHalf>> ClientHalf::Create(worker::Model& base, const SplitConfig& split,
                                                         const LoraSpec& lora, uint64_t seed) {
  worker::GptPieces* gpt = worker::AsGpt(base);
  if (gpt == nullptr) return InvalidArgument("split learning needs a GPT base model");
  LOWBAND_RETURN_IF_ERROR(ValidateSplitConfig(split, base.config()));
  std::unique_ptr<ClientHalf> half(new ClientHalf());
  half->gpt_ = gpt;
  half->cut_ = split.cut;
  LOWBAND_ASSIGN_OR_RETURN(half->lora_, LoraAdapters::Create(*gpt, 0, split.cut, lora, seed));
  return half;
}

torch::Tensor ClientHalf::Forward(const torch::Tensor& tokens) {
  return gpt_->Blocks(gpt_->Embed(tokens), 0, cut_, lora_.get());
}

StatusOr<EncodedCut> EncodeCut(quant::AmaqEncoder& encoder, const torch::Tensor& x,
                               const std::vector<uint8_t>& bits, const quant::AmaqOptions& options) {
  if (!x.defined() || x.dim() != 2) return InvalidArgument("EncodeCut: expected a [rows, channels] tensor");
  const torch::Tensor cpu = x.detach().to(torch::kCPU, torch::kFloat).contiguous();
  EncodedCut out;
  std::vector<uint8_t> payload;
  quant::AmaqOptions o = options;
  o.passthrough = options.passthrough || bits.empty();
  LOWBAND_RETURN_IF_ERROR(encoder.Encode(
      std::span<const float>(cpu.data_ptr<float>(), static_cast<size_t>(cpu.numel())),
      static_cast<uint32_t>(cpu.size(0)), static_cast<uint32_t>(cpu.size(1)), bits, o, &payload, &out.stats));
  out.payload.assign(reinterpret_cast<const char*>(payload.data()), payload.size());
  return out;
}

StatusOr<DecodedCut> DecodeCut(quant::AmaqDecoder& decoder, const std::string& payload, int64_t rows,
                               int64_t channels) {
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  DecodedCut out;
  out.values = torch::empty({rows, channels}, torch::kFloat);
  quant::AmaqInfo info;
  LOWBAND_RETURN_IF_ERROR(
      decoder
          .Decode(bytes,
                  std::span<float>(out.values.data_ptr<float>(), static_cast<size_t>(out.values.numel())),
                  &info)
          .WithContext("cut payload for [" + std::to_string(rows) + ", " + std::to_string(channels) + "]"));
  if (static_cast<int64_t>(info.rows) != rows || static_cast<int64_t>(info.channels) != channels) {
    return InvalidArgument("cut payload is [" + std::to_string(info.rows) + ", " +
                           std::to_string(info.channels) + "] but the message says [" + std::to_string(rows) +
                           ", " + std::to_string(channels) + "]");
  }
  out.stats = info.passthrough ? quant::AmaqPassthroughBreakdown(info.rows, info.channels)
                               : quant::AmaqBreakdown(info.rows, decoder.bitmap().bits, info.has_bitmap);
  return out;
}

}  // namespace lowband::split
