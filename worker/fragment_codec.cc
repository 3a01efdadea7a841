#include "worker/fragment_codec.h"

#include <fmt/format.h>
#include <torch/cuda.h>

#include "comm/outer_update.h"
#include "quant/cuda.h"
#include "worker/torch_runtime.h"

namespace lowband::worker {
torch::Tensor OnHost(const torch::Tensor& t) { return t.is_cpu() ? t : t.to(torch::kCPU); }

std::span<float> FloatsOf(const torch::Tensor& host) {
  TORCH_CHECK(host.is_cpu() && host.is_contiguous() && host.scalar_type() == torch::kFloat,
              "expected a contiguous fp32 tensor in host memory");
  return {host.data_ptr<float>(), static_cast<size_t>(host.numel())};
}

torch::Tensor ToDevice(std::span<const float> values, const torch::Device& device) {
  const torch::Tensor view = torch::from_blob(const_cast<float*>(values.data()),
                                              {static_cast<int64_t>(values.size())}, torch::kFloat);
  return view.to(device, torch::kFloat, /*non_blocking=*/false, /*copy=*/true);
}

namespace {

// The CPU codec, on the tensors themselves (CPU) or on host copies written back (CUDA without the GPU
// codec).
class HostFragmentCodec final : public FragmentCodec {
 public:
  HostFragmentCodec(torch::Device device, std::string path) : FragmentCodec(device, std::move(path)) {}

 protected:
  StatusOr<std::vector<uint8_t>> DoEncode(const quant::CodecSpec& spec, const torch::Tensor& x) override {
    const torch::Tensor host = OnHost(x);
    return quant::Encode(spec, FloatsOf(host));
  }

  StatusOr<std::vector<uint8_t>> DoEncodeWithFeedback(const quant::CodecSpec& spec, const torch::Tensor& x,
                                                      torch::Tensor& residual) override {
    const torch::Tensor host_x = OnHost(x);
    torch::Tensor host_r = OnHost(residual);
    std::vector<uint8_t> payload;
    // On error quant::EncodeWithFeedback leaves the residual as it was.
    LOWBAND_RETURN_IF_ERROR(quant::EncodeWithFeedback(spec, FloatsOf(host_x), FloatsOf(host_r), &payload));
    if (!residual.is_cpu()) residual.copy_(host_r);
    return payload;
  }

  Status DoApplyOuterUpdate(std::span<const uint8_t> payload, torch::Tensor& g) override {
    torch::Tensor host = OnHost(g);
    LOWBAND_RETURN_IF_ERROR(comm::ApplyOuterUpdate(payload, FloatsOf(host), scratch_));
    if (!g.is_cpu()) g.copy_(host);
    return Status::Ok();
  }

 private:
  std::vector<float> scratch_;
};

// The GPU codec: encode on the device into a pinned buffer, decode on the device. The codec runs on its
// own stream, so each call first waits for the work LibTorch has queued on the device (the values it
// reads, and memory LibTorch's allocator may hand out again); the codec's calls return once its stream
// is done.
class GpuFragmentCodec final : public FragmentCodec {
 public:
  GpuFragmentCodec(torch::Device device, std::unique_ptr<quant::cuda::Codec> codec)
      : FragmentCodec(device, fmt::format("gpu codec on {}", device.str())), codec_(std::move(codec)) {}

 protected:
  StatusOr<std::vector<uint8_t>> DoEncode(const quant::CodecSpec& spec, const torch::Tensor& x) override {
    return EncodeOnDevice(spec, x);
  }

  StatusOr<std::vector<uint8_t>> DoEncodeWithFeedback(const quant::CodecSpec& spec, const torch::Tensor& x,
                                                      torch::Tensor& residual) override {
    torch::Tensor y = residual + x;  // the CPU codec's residual += 1 * x: the same single rounding
    LOWBAND_ASSIGN_OR_RETURN(std::vector<uint8_t> payload, EncodeOnDevice(spec, y));
    LOWBAND_RETURN_IF_ERROR(
        codec_->DecodeAddToDevice(payload, -1.0f, y.data_ptr<float>(), static_cast<uint64_t>(y.numel())));
    residual.copy_(y);  // residual = y - dec(payload); untouched until here
    return payload;
  }

  Status DoApplyOuterUpdate(std::span<const uint8_t> payload, torch::Tensor& g) override {
    torch::Tensor decoded = torch::empty_like(g);
    torch::cuda::synchronize(device().index());
    const Status s =
        codec_->DecodeToDevice(payload, decoded.data_ptr<float>(), static_cast<uint64_t>(g.numel()));
    if (s.ok()) {
      torch::Tensor result = g - decoded;
      if (torch::isfinite(result).all().item<bool>()) {
        g.copy_(result);
        return Status::Ok();
      }
    }
    // A payload the device refused, or a non-finite result: the host reference names what was wrong,
    // on a copy (g is not written).
    torch::Tensor host = g.to(torch::kCPU);
    const Status h = comm::ApplyOuterUpdate(payload, FloatsOf(host), scratch_);
    if (!h.ok()) return h;
    return s.ok() ? Internal(
                        "the GPU gave a non-finite outer update result that the CPU reference does not "
                        "(a lowband bug)")
                  : s;
  }

 private:
  StatusOr<std::vector<uint8_t>> EncodeOnDevice(const quant::CodecSpec& spec, const torch::Tensor& x) {
    const auto n = static_cast<uint64_t>(x.numel());
    const size_t size = quant::EncodedSize(spec, n);
    if (staging_.size() < size) {
      LOWBAND_ASSIGN_OR_RETURN(staging_, quant::cuda::PinnedBuffer::Allocate(size));
    }
    torch::cuda::synchronize(device().index());
    LOWBAND_RETURN_IF_ERROR(codec_->EncodeToHost(spec, x.data_ptr<float>(), n, staging_.span().first(size)));
    return std::vector<uint8_t>(staging_.data(), staging_.data() + size);
  }

  std::unique_ptr<quant::cuda::Codec> codec_;
  quant::cuda::PinnedBuffer staging_;  // the payload's first stop on the host, where the send copies from
  std::vector<float> scratch_;
};

}  // namespace

Status FragmentCodec::CheckTensor(const torch::Tensor& t, const char* what) const {
  if (!t.defined() || t.dim() != 1 || t.scalar_type() != torch::kFloat || !t.is_contiguous()) {
    return InvalidArgument(fmt::format("{}: expected a contiguous 1-D fp32 tensor", what));
  }
  if (t.device() != device_) {
    return InvalidArgument(fmt::format("{} is on {} but this fragment codec works on {}", what,
                                       t.device().str(), device_.str()));
  }
  return Status::Ok();
}

StatusOr<std::vector<uint8_t>> FragmentCodec::Encode(const quant::CodecSpec& spec, const torch::Tensor& x) {
  LOWBAND_RETURN_IF_ERROR(CheckTensor(x, "outer gradient"));
  return GuardTorch("encode fragment", [&] { return DoEncode(spec, x); });
}

StatusOr<std::vector<uint8_t>> FragmentCodec::EncodeWithFeedback(const quant::CodecSpec& spec,
                                                                 const torch::Tensor& x,
                                                                 torch::Tensor& residual) {
  LOWBAND_RETURN_IF_ERROR(CheckTensor(x, "outer gradient"));
  LOWBAND_RETURN_IF_ERROR(CheckTensor(residual, "error-feedback residual"));
  if (residual.numel() != x.numel()) {
    return InvalidArgument(fmt::format(
        "error-feedback residual has {} values, the outer gradient {}: keep one residual per fragment",
        residual.numel(), x.numel()));
  }
  return GuardTorch("encode fragment with error feedback",
                    [&] { return DoEncodeWithFeedback(spec, x, residual); });
}

Status FragmentCodec::ApplyOuterUpdate(std::span<const uint8_t> payload, torch::Tensor& g) {
  LOWBAND_RETURN_IF_ERROR(CheckTensor(g, "global fragment"));
  return GuardTorch("apply outer update", [&] { return DoApplyOuterUpdate(payload, g); });
}

StatusOr<std::unique_ptr<FragmentCodec>> FragmentCodec::For(const torch::Device& device) {
  if (device.is_cpu()) return std::unique_ptr<FragmentCodec>(new HostFragmentCodec(device, "cpu codec"));
  if (!device.is_cuda()) {
    return InvalidArgument("fragment codec: device " + device.str() + " is neither the CPU nor a CUDA GPU");
  }
  auto gpu = quant::cuda::Codec::Create(device.has_index() ? device.index() : -1);
  if (!gpu.ok()) {
    return std::unique_ptr<FragmentCodec>(
        new HostFragmentCodec(device, "cpu codec through host copies (" + gpu.status().message() + ")"));
  }
  return std::unique_ptr<FragmentCodec>(new GpuFragmentCodec(device, std::move(*gpu)));
}

}  // namespace lowband::worker
