// The split-learning settings: where the model is cut, which adapters train, what crosses the cut and
// how AMAQ learns its bit widths. Plain values (no LibTorch), so the CLI and the config table can hold
// them; split/ checks them (ValidateSplitConfig in split/model.h) before building anything.
#pragma once

#include <cstdint>
#include <string>

namespace lowband::split {

// split.grad_bits as used: 0 means the activations' bits.
inline int ResolveGradBits(int grad_bits, int bits) { return grad_bits > 0 ? grad_bits : bits; }
// split.grad_codec as used: "auto" means the gradients' own gates for AMAQ activations and the
// activations' map (fixed width, or fp32) for the other codecs.
inline std::string ResolveGradCodec(const std::string& grad_codec, const std::string& codec) {
  if (grad_codec != "auto") return grad_codec;
  return codec == "amaq" ? "amaq" : "follow";
}
// Whether a resolved gradient codec has a width of its own (split.grad_bits): fixed gradients and
// their own gates do; "follow" takes the activations' map and fp32 has none.
inline bool GradBitsApply(const std::string& resolved_grad_codec) {
  return resolved_grad_codec == "fixed" || resolved_grad_codec == "amaq";
}

struct SplitConfig {
  // The base model: a lowband checkpoint directory (its LATEST, or one ckpt-* directory) or a
  // .safetensors file whose tensor names and shapes are the GPT's parameters. "" starts from the
  // seeded random initialization (tests only: fine-tuning a random model is rarely what you want).
  std::string base;
  // The cut: the client runs the embeddings and blocks [0, cut), the server blocks [cut, n_layers),
  // the final norm and the task head. 1 <= cut <= n_layers - 1.
  int cut = 2;
  // "classify": a linear head on the final hidden state of each example's last real token (classes =
  // the dataset's); "lm": next-token loss with the (frozen) language-model head.
  std::string task = "classify";

  // LoRA: y = W x + (alpha / rank) * B A x, A [rank, in] random, B [out, rank] zero at the start.
  int lora_rank = 8;
  double lora_alpha = 16.0;
  // Which linear layers of every block get an adapter: a comma list of qkv, attn_out, fc, mlp_out.
  std::string lora_modules = "qkv,attn_out,fc,mlp_out";

  // What crosses the cut forward (activations): "fp32", "fixed" (every channel `bits` bits) or "amaq"
  // (learned per-channel bits in [2, 8] whose mean follows a schedule down to `bits`).
  std::string codec = "amaq";
  // Fixed: the bit width; AMAQ: the budget (target mean bits at the end of the schedule).
  int bits = 4;
  // Backward (dL/dX): "follow" (the activations' bit map; fp32 when codec is fp32), "fixed"
  // (grad_bits for every channel), "amaq" (the gradients' own gates on the server, learned like the
  // activations' with the same schedule and controller settings, budget grad_bits; split/amaq.h),
  // "fp32", or "auto" (ResolveGradCodec: amaq for AMAQ activations, follow otherwise; the client sends
  // the resolved choice).
  std::string grad_codec = "auto";
  // Bits of fixed gradients, or the budget of amaq gradients; 0 = the same as `bits`.
  int grad_bits = 0;
  // Rounding of the gradients: "stochastic" (unbiased) or "nearest". Activations always round to
  // nearest.
  std::string grad_rounding = "stochastic";

  // AMAQ gates: b_c = 2 + 6 * sigmoid(gate_scale * q_c), gates start at `start_bits`.
  double start_bits = 7.6;
  double gate_scale = 1.0;
  // SGD learning rate of the gates (not Adam: Adam would erase the importance weighting).
  double gate_lr = 1.0;
  // The target mean bits steps from 8 down to `bits` over this fraction of the steps, in whole bits.
  double schedule_fraction = 0.4;
  // lambda(t) is a PI controller on the wire's mean bits: lambda = I + lambda_kp * (mean - target),
  // I += lambda_lr * (mean - target). It may go negative: a budget is to be used, not undercut.
  double lambda_lr = 0.02;
  double lambda_kp = 2.0;
  // Weight each channel's bits by 1 / importance^importance_power (importance = EMA of the loss
  // sensitivity sum_t (dL/dx_tc)^2 * scale_c^2), normalized to mean 1; 0 = plain mean bits (what the
  // "expected" bit gradient needs: it already carries the importance; 0.5 suits "sample").
  double importance_power = 0;
  // EMA factor of the importance estimate.
  double importance_decay = 0.9;
  // The task term of the gates' gradient, dL/db_c through the quantization step:
  //   "expected": its expectation over the rounding noise, -ln2 2^b/(2^b-1) * sum_t G_tc^2 s_c^2 / 12
  //               (the second-order loss increase, G^2 standing in for the curvature), from the
  //               importance EMA: low variance, and its fixed point with the plain budget penalty is
  //               the importance-weighted water-filling allocation;
  //   "sample":   this step's -ln2 2^B/(2^B-1) * sum_t G_tc (x^_tc - x_tc) (unbiased, much noisier).
  std::string bit_gradient = "expected";
  // Round the continuous widths to wire bits whose sum is exactly round(target * channels) (largest
  // remainders first), so the budget is spent, not over- or undershot; false rounds each channel alone
  // and leaves the mean to the controller.
  bool exact_budget = true;

  // Server: most concurrent sessions; idle sessions are dropped after session_timeout_s.
  int max_sessions = 16;
  double session_timeout_s = 600;
  // Server: where it writes each session's adapters (sessions/NAME); "" = no files. The client writes its
  // own under its --out directory.
  std::string out;
};

}  // namespace lowband::split
