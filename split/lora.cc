#include "split/lora.h"

#include <cmath>
#include <filesystem>
#include <sstream>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "comm/durable_file.h"
#include "split/safetensors.h"
#include "worker/torch_runtime.h"

namespace lowband::split {

StatusOr<std::vector<std::string>> ParseLoraModules(const std::string& modules) {
  static const std::map<std::string, std::string> kKnown = {
      {"qkv", "attn.qkv"}, {"attn_out", "attn.out"}, {"fc", "mlp.fc"}, {"mlp_out", "mlp.out"}};
  std::vector<std::string> out;
  std::stringstream in(modules);
  std::string item;
  while (std::getline(in, item, ',')) {
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (item.empty()) continue;
    const auto it = kKnown.find(item);
    if (it == kKnown.end()) {
      return InvalidArgument("lora modules: unknown module '" + item +
                             "'; choose from qkv, attn_out, fc, mlp_out");
    }
    out.push_back(it->second);
  }
  if (out.empty()) return InvalidArgument("lora modules: empty; choose from qkv, attn_out, fc, mlp_out");
  return out;
}

StatusOr<std::unique_ptr<LoraAdapters>> LoraAdapters::Create(worker::GptPieces& gpt, int begin, int end,
                                                             const LoraSpec& spec, uint64_t seed) {
  if (spec.rank < 1) return InvalidArgument("lora rank must be >= 1, got " + std::to_string(spec.rank));
  if (!(spec.alpha > 0)) return InvalidArgument("lora alpha must be > 0");
  LOWBAND_ASSIGN_OR_RETURN(const std::vector<std::string> suffixes, ParseLoraModules(spec.modules));
  return worker::GuardTorch("LoraAdapters::Create", [&]() -> StatusOr<std::unique_ptr<LoraAdapters>> {
    std::unique_ptr<LoraAdapters> lora(new LoraAdapters(spec));
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed ^ 0x4c6f5241ull);
    for (int block = begin; block < end; ++block) {
      for (const worker::LinearInfo& info : gpt.BlockLinears(block)) {
        bool wanted = false;
        for (const auto& s : suffixes) wanted |= info.name.size() >= s.size() && info.name.ends_with(s);
        if (!wanted) continue;
        const double bound = 1.0 / std::sqrt(static_cast<double>(info.in));
        torch::Tensor a = (torch::rand({spec.rank, info.in}, gen, torch::kFloat) * 2.0 - 1.0) * bound;
        torch::Tensor b = torch::zeros({info.out, spec.rank}, torch::kFloat);
        Adapter adapter{a.to(gpt.device()).set_requires_grad(true),
                        b.to(gpt.device()).set_requires_grad(true)};
        lora->order_.push_back(info.name);
        lora->adapters_.emplace(info.name, std::move(adapter));
      }
    }
    return lora;
  });
}

torch::Tensor LoraAdapters::Delta(const std::string& name, const torch::Tensor& x) const {
  const auto it = adapters_.find(name);
  if (it == adapters_.end()) return {};
  return torch::matmul(torch::matmul(x, it->second.a.t()), it->second.b.t()) * scaling_;
}

std::vector<std::pair<std::string, torch::Tensor>> LoraAdapters::NamedParameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& name : order_) {
    const Adapter& a = adapters_.at(name);
    out.emplace_back(name + ".lora_A.weight", a.a);
    out.emplace_back(name + ".lora_B.weight", a.b);
  }
  return out;
}

std::vector<torch::Tensor> LoraAdapters::Parameters() const {
  std::vector<torch::Tensor> out;
  for (auto& [name, t] : NamedParameters()) out.push_back(t);
  return out;
}

int64_t LoraAdapters::NumParameters() const {
  int64_t n = 0;
  for (const auto& [name, t] : NamedParameters()) n += t.numel();
  return n;
}

Status LoraAdapters::Load(const std::map<std::string, torch::Tensor>& tensors) {
  for (const auto& [name, t] : NamedParameters()) {
    const auto it = tensors.find(name);
    if (it == tensors.end()) return InvalidArgument("adapter file has no tensor '" + name + "'");
    if (it->second.sizes() != t.sizes()) {
      std::ostringstream msg;
      msg << "adapter tensor '" << name << "' has shape " << it->second.sizes() << ", expected " << t.sizes()
          << " (a different rank or model width)";
      return InvalidArgument(msg.str());
    }
  }
  return worker::GuardTorch("LoraAdapters::Load", [&]() -> Status {
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : NamedParameters()) t.copy_(tensors.at(name));
    return Status::Ok();
  });
}

Status LoraAdapters::MergeInto(worker::Model& model) const {
  std::map<std::string, torch::Tensor> params;
  for (auto& [name, p] : model.NamedParameters()) params.emplace(name, p);
  for (const auto& name : order_) {
    if (!params.contains(name + ".weight"))
      return InvalidArgument("MergeInto: the model has no layer '" + name + "'");
  }
  return worker::GuardTorch("LoraAdapters::MergeInto", [&]() -> Status {
    torch::NoGradGuard no_grad;
    for (const auto& name : order_) {
      const Adapter& a = adapters_.at(name);
      params.at(name + ".weight").add_(torch::matmul(a.b, a.a) * scaling_);
    }
    return Status::Ok();
  });
}

Status SaveAdapterFiles(const std::string& dir, const std::string& side,
                        const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                        const nlohmann::ordered_json& fields) {
  if (!fields.is_object()) return InvalidArgument("SaveAdapterFiles: fields must be a JSON object");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Unavailable("cannot create '" + dir + "': " + ec.message());
  const std::filesystem::path path(dir);
  LOWBAND_RETURN_IF_ERROR(WriteSafetensors((path / "adapter_model.safetensors").string(), tensors,
                                           {{"format", "pt"}, {"lowband", "split-" + side}}));
  nlohmann::ordered_json config = {{"format", "lowband-split-adapters"}, {"side", side}};
  config.update(fields);
  return comm::WriteFileAtomically(path / "adapter_config.json", config.dump(2) + "\n");
}

}  // namespace lowband::split
