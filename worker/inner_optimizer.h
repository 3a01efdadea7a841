// The inner optimizer: what each worker runs on its own replica between two outer synchronizations.
// AdamW with linear warmup then cosine decay to min_lr, and global gradient-norm clipping.
//
// Step = zero_grad + forward + backward + clip + AdamW step. The data-parallel baseline needs to touch
// the gradients between backward and the update (all-reduce), so the two halves are also available:
// ForwardBackward leaves the gradients in each parameter's .grad(), ApplyStep clips and updates.
//
// Weight decay is decoupled (AdamW) and applied to matrices and embeddings only, not to biases or
// LayerNorm gains (the usual GPT practice). The learning rate of update number s (0-based) is
//   lr * (s + 1) / warmup_steps                                         for s < warmup_steps,
//   min_lr + (lr - min_lr) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2   up to total_steps,
//   min_lr = lr * min_lr_ratio                                          after total_steps.
//
// Devices: the parameters must all live on one device (the model's: CPU or a GPU); AdamW's moments
// are created beside them, and Load (through LoadCheckpoint, which maps the archive to device()) puts
// restored moments there too, so a checkpoint written on one device resumes on another.
//
// Thread safety: one thread at a time. Lifetimes: the optimizer holds the model's parameter tensors;
// the Model must outlive it, and parameters must be updated in place (CopyParamsFrom does), never
// replaced, or the AdamW state detaches from them.
#pragma once

#include <cstdint>
#include <memory>

#include <torch/optim/adamw.h>
#include <torch/serialize/archive.h>

#include "quant/status.h"
#include "worker/config.h"
#include "worker/model.h"

namespace lowband::worker {

// Checks ranges (lr > 0, betas in [0, 1), total_steps > warmup_steps >= 0, ...).
[[nodiscard]] Status ValidateInnerOptimizerConfig(const InnerOptimizerConfig& config);

// The learning rate of update number `step` (0-based) under the schedule in the file comment.
double ScheduledLearningRate(const InnerOptimizerConfig& config, int64_t step);

class InnerOptimizer {
 public:
  // Builds AdamW over all of model.NamedParameters(). `model` must outlive the optimizer.
  [[nodiscard]] static StatusOr<std::unique_ptr<InnerOptimizer>> Create(Model& model,
                                                                        const InnerOptimizerConfig& config);
  // Builds AdamW over plain tensors (e.g. LoRA adapters beside a frozen model): the caller runs its own
  // forward and backward between ZeroGrad and ApplyStep; ForwardBackward and Step are refused.
  [[nodiscard]] static StatusOr<std::unique_ptr<InnerOptimizer>> Create(std::vector<torch::Tensor> params,
                                                                        const InnerOptimizerConfig& config);
  ~InnerOptimizer();
  InnerOptimizer(const InnerOptimizer&) = delete;
  InnerOptimizer& operator=(const InnerOptimizer&) = delete;

  // One full update on `batch`; returns the loss before the update. `model` must be the model the
  // optimizer was created for. Aborted if the loss or the gradient norm is not finite (nothing is
  // updated then).
  [[nodiscard]] StatusOr<float> Step(Model& model, const Batch& batch);

  // First half of Step: zero the gradients, forward, backward. Returns the loss; the gradients are in
  // each parameter's .grad() for the caller to read or all-reduce before ApplyStep.
  [[nodiscard]] StatusOr<float> ForwardBackward(Model& model, const Batch& batch);

  // Zeroes the gradients and opens a step whose backward the caller runs itself (tensor optimizers).
  void ZeroGrad();

  // Second half of Step: clip the gradients, set this step's learning rate, apply AdamW, advance the
  // step counter. FailedPrecondition unless a ForwardBackward came before it.
  [[nodiscard]] Status ApplyStep();

  // Updates applied so far (the schedule position).
  int64_t step() const { return step_; }
  // Learning rate the next ApplyStep will use.
  double current_lr() const { return ScheduledLearningRate(config_, step_); }
  // Global gradient norm before clipping, from the last ApplyStep (0 before the first).
  double last_grad_norm() const { return last_grad_norm_; }
  const InnerOptimizerConfig& config() const { return config_; }
  // Where the parameters, their gradients and the AdamW state live (CPU for an empty optimizer).
  const torch::Device& device() const { return device_; }

  // Serializes the AdamW state (moments, per-parameter step counts) and the schedule position.
  [[nodiscard]] Status Save(torch::serialize::OutputArchive& archive) const;
  // Restores what Save wrote, into an optimizer created for a model of the same shape. The archive's
  // tensors must be on device() (InputArchive::load_from(path, device())).
  [[nodiscard]] Status Load(torch::serialize::InputArchive& archive);

 private:
  InnerOptimizer(Model* model, std::vector<torch::Tensor> params, const InnerOptimizerConfig& config);

  Model* model_;  // null for an optimizer over plain tensors
  InnerOptimizerConfig config_;
  std::vector<torch::Tensor> params_;
  torch::Device device_{torch::kCPU};
  std::unique_ptr<torch::optim::AdamW> adamw_;
  int64_t step_ = 0;
  double last_grad_norm_ = 0.0;
  bool has_gradients_ = false;
};

}  // namespace lowband::worker
