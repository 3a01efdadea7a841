#include "worker/inner_optimizer.h"

#include <cmath>
#include <limits>
#include <numbers>
#include <string>

#include <torch/nn/utils/clip_grad.h>

#include "worker/torch_compat.h"
#include "worker/torch_runtime.h"

namespace lowband::worker {

Status ValidateInnerOptimizerConfig(const InnerOptimizerConfig& c) {
  const auto bad = [](const std::string& m) { return InvalidArgument("inner optimizer config: " + m); };
  if (!(c.lr > 0.0) || !std::isfinite(c.lr))
    return bad("lr must be a positive number, got " + std::to_string(c.lr));
  if (!(c.beta1 >= 0.0 && c.beta1 < 1.0) || !(c.beta2 >= 0.0 && c.beta2 < 1.0)) {
    return bad("betas must be in [0, 1), got " + std::to_string(c.beta1) + ", " + std::to_string(c.beta2));
  }
  if (!(c.eps > 0.0)) return bad("eps must be > 0, got " + std::to_string(c.eps));
  if (!(c.weight_decay >= 0.0))
    return bad("weight_decay must be >= 0, got " + std::to_string(c.weight_decay));
  if (c.warmup_steps < 0) return bad("warmup_steps must be >= 0, got " + std::to_string(c.warmup_steps));
  if (c.total_steps <= c.warmup_steps) {
    return bad("total_steps (" + std::to_string(c.total_steps) + ") must be greater than warmup_steps (" +
               std::to_string(c.warmup_steps) + ")");
  }
  if (!(c.min_lr_ratio >= 0.0 && c.min_lr_ratio <= 1.0)) {
    return bad("min_lr_ratio must be in [0, 1], got " + std::to_string(c.min_lr_ratio));
  }
  if (std::isnan(c.grad_clip)) return bad("grad_clip must be a number (<= 0 disables clipping)");
  return Status::Ok();
}

double ScheduledLearningRate(const InnerOptimizerConfig& c, int64_t step) {
  if (step < c.warmup_steps)
    return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  const double min_lr = c.lr * c.min_lr_ratio;
  if (step >= c.total_steps) return min_lr;
  const double progress =
      static_cast<double>(step - c.warmup_steps) / static_cast<double>(c.total_steps - c.warmup_steps);
  return min_lr + (c.lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

InnerOptimizer::InnerOptimizer(Model* model, std::vector<torch::Tensor> params,
                               const InnerOptimizerConfig& config)
    : model_(model), config_(config), params_(std::move(params)) {
  // AdamW keeps its moments beside each parameter (zeros_like), so all of them live on device_.
  if (!params_.empty()) device_ = params_.front().device();
  for (const torch::Tensor& p : params_) {
    TORCH_CHECK_VALUE(p.device() == device_, "InnerOptimizer: the parameters are on several devices (",
                      device_, " and ", p.device(), "); put the model on one device");
  }
  std::vector<torch::Tensor> decay, no_decay;
  for (const torch::Tensor& p : params_) {
    (p.dim() >= 2 ? decay : no_decay).push_back(p);
  }
  const auto options = [&](double weight_decay) {
    return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(config.lr)
                                                            .betas({config.beta1, config.beta2})
                                                            .eps(config.eps)
                                                            .weight_decay(weight_decay));
  };
  // The group order (decay, then no-decay) is part of the checkpoint format: Load maps saved state to
  // parameters by position within each group.
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!decay.empty()) groups.emplace_back(decay, options(config.weight_decay));
  if (!no_decay.empty()) groups.emplace_back(no_decay, options(0.0));
  adamw_ = std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(config.lr));
}

InnerOptimizer::~InnerOptimizer() = default;

StatusOr<std::unique_ptr<InnerOptimizer>> InnerOptimizer::Create(Model& model,
                                                                 const InnerOptimizerConfig& config) {
  LOWBAND_RETURN_IF_ERROR(ValidateInnerOptimizerConfig(config));
  return GuardTorch("InnerOptimizer", [&]() -> StatusOr<std::unique_ptr<InnerOptimizer>> {
    std::vector<torch::Tensor> params;
    for (const auto& [name, p] : model.NamedParameters()) params.push_back(p);
    return std::unique_ptr<InnerOptimizer>(new InnerOptimizer(&model, std::move(params), config));
  });
}

StatusOr<std::unique_ptr<InnerOptimizer>> InnerOptimizer::Create(std::vector<torch::Tensor> params,
                                                                 const InnerOptimizerConfig& config) {
  LOWBAND_RETURN_IF_ERROR(ValidateInnerOptimizerConfig(config));
  return GuardTorch("InnerOptimizer", [&]() -> StatusOr<std::unique_ptr<InnerOptimizer>> {
    return std::unique_ptr<InnerOptimizer>(new InnerOptimizer(nullptr, std::move(params), config));
  });
}

void InnerOptimizer::ZeroGrad() {
  compat::ZeroGrad(*adamw_);  // zeroes .grad() in place, keeping its storage, in every LibTorch
  has_gradients_ = true;
}

StatusOr<float> InnerOptimizer::ForwardBackward(Model& model, const Batch& batch) {
  if (&model != model_) {
    return InvalidArgument(
        model_ == nullptr ? "InnerOptimizer: created over tensors; run the backward yourself after ZeroGrad"
                          : "InnerOptimizer: called with a different model than the one it was created for");
  }
  return GuardTorch("inner step " + std::to_string(step_), [&]() -> StatusOr<float> {
    compat::ZeroGrad(*adamw_);  // zeroes .grad() in place, keeping its storage, in every LibTorch
    has_gradients_ = false;
    torch::Tensor loss = model.Loss(batch);
    const float value = loss.item<float>();
    if (!std::isfinite(value)) {
      return Aborted("training diverged: the loss is " + std::to_string(value) + " at inner step " +
                     std::to_string(step_) + "; lower the learning rate or check the data");
    }
    loss.backward();
    has_gradients_ = true;
    return value;
  });
}

Status InnerOptimizer::ApplyStep() {
  if (!has_gradients_) {
    return FailedPrecondition(
        "InnerOptimizer::ApplyStep: no gradients; call ForwardBackward (or ZeroGrad and "
        "your own backward) first");
  }
  return GuardTorch("inner step " + std::to_string(step_), [&]() -> Status {
    const double max_norm =
        config_.grad_clip > 0.0 ? config_.grad_clip : std::numeric_limits<double>::infinity();
    last_grad_norm_ = torch::nn::utils::clip_grad_norm_(params_, max_norm);
    has_gradients_ = false;
    if (!std::isfinite(last_grad_norm_)) {
      return Aborted("training diverged: the gradient norm is " + std::to_string(last_grad_norm_) +
                     " at inner step " + std::to_string(step_) + "; the update was skipped");
    }
    const double lr = ScheduledLearningRate(config_, step_);
    for (auto& group : adamw_->param_groups())
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    adamw_->step();
    ++step_;
    return Status::Ok();
  });
}

StatusOr<float> InnerOptimizer::Step(Model& model, const Batch& batch) {
  LOWBAND_ASSIGN_OR_RETURN(const float loss, ForwardBackward(model, batch));
  LOWBAND_RETURN_IF_ERROR(ApplyStep());
  return loss;
}

Status InnerOptimizer::Save(torch::serialize::OutputArchive& archive) const {
  return GuardTorch("InnerOptimizer::Save", [&]() -> Status {
    torch::serialize::OutputArchive adamw_archive;
    adamw_->save(adamw_archive);
    archive.write("adamw", adamw_archive);
    archive.write("inner_step", c10::IValue(step_));
    archive.write("last_grad_norm", c10::IValue(last_grad_norm_));
    return Status::Ok();
  });
}

Status InnerOptimizer::Load(torch::serialize::InputArchive& archive) {
  return GuardTorch("InnerOptimizer::Load", [&]() -> Status {
    torch::serialize::InputArchive adamw_archive;
    archive.read("adamw", adamw_archive);
    c10::IValue step, grad_norm;
    archive.read("inner_step", step);
    archive.read("last_grad_norm", grad_norm);
    adamw_->load(adamw_archive);
    step_ = step.toInt();
    last_grad_norm_ = grad_norm.toDouble();
    has_gradients_ = false;
    return Status::Ok();
  });
}

}  // namespace lowband::worker
