// FragmentCodec: the Streaming DiLoCo engine's codec for fragment tensors, run where the tensors live.
//
// The engine keeps each fragment's global copy g_p (and its error-feedback residual) on the model's
// device, computes the outer gradient g_p - theta_p there, and hands it here:
//   - CPU tensors go through the CPU codec (quant/codec.h) in place;
//   - CUDA tensors go through the GPU codec (quant/cuda.h): a kernel encodes on the device and only
//     the payload (about 1/8 of the values' bytes at 4 bits) crosses to a pinned host buffer, the one
//     the network send is filled from; an update is validated on the host and decoded on the device;
//   - CUDA tensors in a build without the GPU codec (or with no usable device for it) go through the
//     CPU codec on host copies, with the reason in path().
// Every path produces the same payload bytes and the same fp32 results as the CPU reference
// (quant::Encode, quant::EncodeWithFeedback, comm::ApplyOuterUpdate): the GPU kernels share the CPU's
// per-value code, and the element-wise steps are single IEEE operations on both.
//
// Thread safety: one thread at a time (the engine's training thread). Tensors are 1-D, contiguous,
// fp32, on the codec's device.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "quant/codec.h"
#include "quant/status.h"

namespace lowband::worker {

// Host views and copies of the engine's fragment tensors (they throw like any LibTorch call).
// The tensor itself when it is in host memory (writes reach it), else a host copy.
torch::Tensor OnHost(const torch::Tensor& t);
// The values of a contiguous fp32 tensor in host memory.
std::span<float> FloatsOf(const torch::Tensor& host);
// A new 1-D fp32 tensor on `device` holding `values`.
torch::Tensor ToDevice(std::span<const float> values, const torch::Device& device);

class FragmentCodec {
 public:
  // A codec for tensors on `device`. A CUDA device uses the GPU codec when this build has it and
  // falls back to host copies otherwise (path() says which and why).
  static StatusOr<std::unique_ptr<FragmentCodec>> For(const torch::Device& device);
  virtual ~FragmentCodec() = default;

  // The payload of x (quant::Encode).
  StatusOr<std::vector<uint8_t>> Encode(const quant::CodecSpec& spec, const torch::Tensor& x);
  // Error feedback (quant::EncodeWithFeedback): encodes y = x + residual and leaves
  // residual = y - dec(payload). On error the residual is unchanged.
  StatusOr<std::vector<uint8_t>> EncodeWithFeedback(const quant::CodecSpec& spec, const torch::Tensor& x,
                                                    torch::Tensor& residual);
  // g -= dec(payload) (comm::ApplyOuterUpdate): the payload is validated and every result must be
  // finite, else nothing is written and the error names what was wrong.
  Status ApplyOuterUpdate(std::span<const uint8_t> payload, torch::Tensor& g);

  // "cpu codec", "gpu codec on cuda:0", or "cpu codec through host copies (why)".
  const std::string& path() const { return path_; }

 protected:
  FragmentCodec(torch::Device device, std::string path) : device_(device), path_(std::move(path)) {}
  // The work of each call, on tensors already checked (1-D, contiguous, fp32, on device(), residual
  // sized like x); LibTorch exceptions become a Status in the caller.
  virtual StatusOr<std::vector<uint8_t>> DoEncode(const quant::CodecSpec& spec, const torch::Tensor& x) = 0;
  virtual StatusOr<std::vector<uint8_t>> DoEncodeWithFeedback(const quant::CodecSpec& spec,
                                                              const torch::Tensor& x,
                                                              torch::Tensor& residual) = 0;
  virtual Status DoApplyOuterUpdate(std::span<const uint8_t> payload, torch::Tensor& g) = 0;
  const torch::Device& device() const { return device_; }

 private:
  // OK when t is a defined 1-D contiguous fp32 tensor on device() (what names the argument).
  Status CheckTensor(const torch::Tensor& t, const char* what) const;

  torch::Device device_;
  std::string path_;
};

}  // namespace lowband::worker
