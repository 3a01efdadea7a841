// Host side of quant::cuda: device and pinned buffers, the Codec (stream, staging, header, checks).
// Without LOWBAND_HAVE_CUDA every entry point reports that the build has no CUDA.
#include "quant/cuda.h"

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "quant/internal.h"

#if LOWBAND_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace lowband::quant::cuda {

#if LOWBAND_HAVE_CUDA
// Defined in kernels_cuda.cu.
Status LaunchEncodeKernel(const CodecSpec& spec, const float* x, uint64_t n, uint8_t* params, uint8_t* codes,
                          int* error, void* stream);
Status LaunchDecodeKernel(Format format, ScaleType scale_type, uint32_t block_size, const uint8_t* params,
                          const uint8_t* codes, uint64_t n, float* out, float weight, bool add, void* stream);
#endif

namespace {

#if LOWBAND_HAVE_CUDA
Status CudaError(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return Status::Ok();
  const Status s = e == cudaErrorMemoryAllocation ? ResourceExhausted("") : Internal("");
  return Status(s.code(),
                "CUDA " + what + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}
#define LOWBAND_CUDA_RETURN_IF_ERROR(expr, what) LOWBAND_RETURN_IF_ERROR(CudaError((expr), (what)))
#else
Status NotBuilt() {
  return FailedPrecondition(
      "this lowband was built without CUDA (no CUDA compiler was found at configure time, or "
      "-DLOWBAND_WITH_CUDA=OFF): install the CUDA toolkit and reconfigure to use the GPU codecs");
}
#endif

}  // namespace

bool Built() { return LOWBAND_HAVE_CUDA != 0; }

// Movable buffers: the moves are the same with and without CUDA; Free() differs.
DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    Free();
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}
DeviceBuffer::~DeviceBuffer() { Free(); }
PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    Free();
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}
PinnedBuffer::~PinnedBuffer() { Free(); }

#if LOWBAND_HAVE_CUDA

Status Available() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls report their own
    return FailedPrecondition(std::string("no usable CUDA device: ") + cudaGetErrorString(e) +
                              " (is the NVIDIA driver loaded, and does it support CUDA " +
                              std::to_string(CUDART_VERSION / 1000) + "?)");
  }
  if (count == 0) return FailedPrecondition("no CUDA device on this machine");
  // A device can be present but refuse a context (another process holds it in exclusive mode, or
  // it is in a failed state): cudaFree(nullptr) creates the context without allocating anything.
  if (const cudaError_t c = cudaFree(nullptr); c != cudaSuccess) {
    cudaGetLastError();
    return FailedPrecondition(std::string("the CUDA device cannot be used: ") + cudaGetErrorString(c) +
                              " (in exclusive compute mode another process may hold it; see nvidia-smi)");
  }
  return Status::Ok();
}

std::string DeviceDescription() {
  if (Status s = Available(); !s.ok()) return s.message();
  int dev = 0;
  cudaDeviceProp p{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
    return "CUDA device (properties unavailable)";
  }
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
         std::to_string(p.multiProcessorCount) + " SMs, " + std::to_string(p.totalGlobalMem >> 20) + " MiB)";
}

// --- Buffers ---------------------------------------------------------------------------------

StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  LOWBAND_RETURN_IF_ERROR(Available());
  DeviceBuffer b;
  if (bytes > 0)
    LOWBAND_CUDA_RETURN_IF_ERROR(cudaMalloc(&b.ptr_, bytes), "cudaMalloc(" + std::to_string(bytes) + ")");
  b.bytes_ = bytes;
  return b;
}
void DeviceBuffer::Free() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}
Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes, size_t offset) {
  if (offset > bytes_ || bytes > bytes_ - offset) {
    return OutOfRange("copy of " + std::to_string(bytes) + " bytes at offset " + std::to_string(offset) +
                      " overruns a device buffer of " + std::to_string(bytes_));
  }
  if (bytes == 0) return Status::Ok();
  return CudaError(cudaMemcpy(static_cast<uint8_t*>(ptr_) + offset, src, bytes, cudaMemcpyHostToDevice),
                   "copy to device");
}
Status DeviceBuffer::CopyToHost(void* dst, size_t bytes, size_t offset) const {
  if (offset > bytes_ || bytes > bytes_ - offset) {
    return OutOfRange("copy of " + std::to_string(bytes) + " bytes at offset " + std::to_string(offset) +
                      " overruns a device buffer of " + std::to_string(bytes_));
  }
  if (bytes == 0) return Status::Ok();
  return CudaError(cudaMemcpy(dst, static_cast<const uint8_t*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost),
                   "copy to host");
}

StatusOr<PinnedBuffer> PinnedBuffer::Allocate(size_t bytes) {
  LOWBAND_RETURN_IF_ERROR(Available());
  PinnedBuffer b;
  if (bytes > 0) {
    void* p = nullptr;
    LOWBAND_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&p, bytes, cudaHostAllocDefault),
                                 "cudaHostAlloc(" + std::to_string(bytes) + ")");
    b.ptr_ = static_cast<uint8_t*>(p);
  }
  b.bytes_ = bytes;
  return b;
}
void PinnedBuffer::Free() {
  if (ptr_ != nullptr) cudaFreeHost(ptr_);
}

// --- Kernels ---------------------------------------------------------------------------------

namespace {
// What both kernel launches need: a valid blockwise layout and an aligned code area.
Status CheckLaunch(const CodecSpec& spec, const uint8_t* codes) {
  LOWBAND_RETURN_IF_ERROR(Validate(spec));
  if (!IsBlockwise(spec.format)) {
    return InvalidArgument(std::string(FormatName(spec.format)) +
                           " is a passthrough format: the CUDA kernels take the blockwise formats only");
  }
  if (reinterpret_cast<uintptr_t>(codes) % 16 != 0)
    return InvalidArgument("code area must be 16-byte aligned");
  return Status::Ok();
}
}  // namespace

Status LaunchEncode(const CodecSpec& spec, const float* x, uint64_t n, uint8_t* params, uint8_t* codes,
                    int* error, void* stream) {
  LOWBAND_RETURN_IF_ERROR(CheckLaunch(spec, codes));
  if (n == 0) return Status::Ok();
  return LaunchEncodeKernel(spec, x, n, params, codes, error, stream);
}

Status LaunchDecode(const CodecSpec& layout, const uint8_t* params, const uint8_t* codes, uint64_t n,
                    float* out, float weight, bool add, void* stream) {
  LOWBAND_RETURN_IF_ERROR(CheckLaunch(layout, codes));
  if (n == 0) return Status::Ok();
  return LaunchDecodeKernel(layout.format, layout.scale_type, layout.block_size, params, codes, n, out,
                            weight, add, stream);
}

// --- Codec -----------------------------------------------------------------------------------

struct Codec::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  DeviceBuffer params, codes, error;  // device staging, grown on demand
  PinnedBuffer host;                  // host staging (error flag, passthrough values)

  ~Impl() {
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  static Status Grow(DeviceBuffer* b, size_t bytes) {
    if (b->size() >= bytes) return Status::Ok();
    LOWBAND_ASSIGN_OR_RETURN(*b, DeviceBuffer::Allocate(bytes + bytes / 4));
    return Status::Ok();
  }
  Status GrowHost(size_t bytes) {
    if (host.size() >= bytes) return Status::Ok();
    LOWBAND_ASSIGN_OR_RETURN(host, PinnedBuffer::Allocate(bytes + bytes / 4));
    return Status::Ok();
  }
  Status Sync(const char* what) { return CudaError(cudaStreamSynchronize(stream), what); }

  // The device values, on the host (for the CPU codec: passthrough formats and error messages).
  StatusOr<float*> ValuesOnHost(const float* x, uint64_t n) {
    LOWBAND_RETURN_IF_ERROR(GrowHost(n * sizeof(float)));
    LOWBAND_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(host.data(), x, n * sizeof(float), cudaMemcpyDeviceToHost, stream),
        "copy values to host");
    LOWBAND_RETURN_IF_ERROR(Sync("copy values to host"));
    return reinterpret_cast<float*>(host.data());
  }
};

// Makes the codec's device current for the call and restores the caller's.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device) cudaSetDevice(device);
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

StatusOr<std::unique_ptr<Codec>> Codec::Create(int device) {
  LOWBAND_RETURN_IF_ERROR(Available());
  auto impl = std::make_unique<Impl>();
  if (device < 0) {
    LOWBAND_CUDA_RETURN_IF_ERROR(cudaGetDevice(&impl->device), "cudaGetDevice");
  } else {
    int count = 0;
    LOWBAND_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    if (device >= count) {
      return InvalidArgument("CUDA device " + std::to_string(device) + " does not exist (this process sees " +
                             std::to_string(count) + "); check CUDA_VISIBLE_DEVICES and the model's device");
    }
    impl->device = device;
  }
  DeviceGuard guard(impl->device);  // the stream and buffers belong to the codec's device
  LOWBAND_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking),
                               "cudaStreamCreate");
  LOWBAND_ASSIGN_OR_RETURN(impl->error, DeviceBuffer::Allocate(sizeof(int)));
  LOWBAND_RETURN_IF_ERROR(impl->GrowHost(4096));
  return std::unique_ptr<Codec>(new Codec(std::move(impl)));
}

Codec::Codec(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Codec::~Codec() = default;
void* Codec::stream() const { return impl_->stream; }

Status Codec::EncodeToHost(const CodecSpec& spec, const float* x, uint64_t n, std::span<uint8_t> out) {
  LOWBAND_RETURN_IF_ERROR(Validate(spec));
  const uint64_t size = EncodedSize(spec, n);
  if (out.size() < size) {
    return InvalidArgument("output buffer has " + std::to_string(out.size()) + " bytes; encoding " +
                           std::to_string(n) + " values as " + std::string(FormatName(spec.format)) +
                           " needs " + std::to_string(size) + " (see EncodedSize)");
  }
  Impl& m = *impl_;
  DeviceGuard guard(m.device);
  if (!IsBlockwise(spec.format)) {  // passthrough: the CPU codec on a host copy
    LOWBAND_ASSIGN_OR_RETURN(float* host, m.ValuesOnHost(x, n));
    return EncodeInto(spec, {host, n}, out);
  }
  const uint64_t pb = ParamBytes(spec, n), cb = CodeBytes(spec, n);
  LOWBAND_RETURN_IF_ERROR(Impl::Grow(&m.params, pb));
  LOWBAND_RETURN_IF_ERROR(Impl::Grow(&m.codes, cb));
  auto* error = static_cast<int*>(m.error.data());
  LOWBAND_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(error, 0, sizeof(int), m.stream), "clear error flag");
  LOWBAND_RETURN_IF_ERROR(LaunchEncode(spec, x, n, static_cast<uint8_t*>(m.params.data()),
                                       static_cast<uint8_t*>(m.codes.data()), error, m.stream));
  uint8_t* body = out.data() + kHeaderBytes;
  if (pb > 0) {
    LOWBAND_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(body, m.params.data(), pb, cudaMemcpyDeviceToHost, m.stream),
                                 "copy block scales to host");
  }
  if (cb > 0) {
    LOWBAND_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(body + pb, m.codes.data(), cb, cudaMemcpyDeviceToHost, m.stream),
        "copy codes to host");
  }
  LOWBAND_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(m.host.data(), error, sizeof(int), cudaMemcpyDeviceToHost, m.stream),
      "copy error flag to host");
  LOWBAND_RETURN_IF_ERROR(m.Sync("encode"));
  int flagged = 0;
  std::memcpy(&flagged, m.host.data(), sizeof(int));
  if (flagged != 0) {
    // A non-finite value or a scale out of range: the CPU encoder finds it and names it.
    std::vector<uint8_t> scratch(EncodedSize(spec, n));
    LOWBAND_ASSIGN_OR_RETURN(float* host, m.ValuesOnHost(x, n));
    const Status s = EncodeInto(spec, {host, n}, scratch);
    if (s.ok())
      return Internal("the CUDA encoder rejected input that the CPU encoder accepts (a lowband bug)");
    return s;
  }
  internal::WriteHeader(spec, n, out.data());
  return Status::Ok();
}

Status Codec::Decode(std::span<const uint8_t> payload, float weight, bool add, float* out, uint64_t n) {
  LOWBAND_ASSIGN_OR_RETURN(const PayloadInfo info, Inspect(payload));
  LOWBAND_RETURN_IF_ERROR(internal::CheckDecodeTarget(info, n, weight));
  Impl& m = *impl_;
  DeviceGuard guard(m.device);
  const uint8_t* body = payload.data() + kHeaderBytes;
  if (!IsBlockwise(info.format)) {  // passthrough: the CPU codec, then one copy
    LOWBAND_RETURN_IF_ERROR(m.GrowHost(n * sizeof(float)));
    auto* host = reinterpret_cast<float*>(m.host.data());
    if (add) {
      LOWBAND_ASSIGN_OR_RETURN(host, m.ValuesOnHost(out, n));
      LOWBAND_RETURN_IF_ERROR(DecodeAdd(payload, weight, {host, n}));
    } else {
      LOWBAND_RETURN_IF_ERROR(DecodeInto(payload, {host, n}));
    }
    LOWBAND_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(out, host, n * sizeof(float), cudaMemcpyHostToDevice, m.stream),
        "copy values to device");
    return m.Sync("decode");
  }
  const CodecSpec spec = internal::SpecOf(info);
  const uint64_t pb = ParamBytes(spec, n), cb = CodeBytes(spec, n);
  LOWBAND_RETURN_IF_ERROR(Impl::Grow(&m.params, pb));
  LOWBAND_RETURN_IF_ERROR(Impl::Grow(&m.codes, cb));
  LOWBAND_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(m.params.data(), body, pb, cudaMemcpyHostToDevice, m.stream),
                               "copy block scales to device");
  LOWBAND_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(m.codes.data(), body + pb, cb, cudaMemcpyHostToDevice, m.stream),
      "copy codes to device");
  LOWBAND_RETURN_IF_ERROR(LaunchDecode(spec, static_cast<const uint8_t*>(m.params.data()),
                                       static_cast<const uint8_t*>(m.codes.data()), n, out, weight, add,
                                       m.stream));
  return m.Sync("decode");
}

Status Codec::DecodeToDevice(std::span<const uint8_t> payload, float* out, uint64_t n) {
  return Decode(payload, 1.0f, false, out, n);
}
Status Codec::DecodeAddToDevice(std::span<const uint8_t> payload, float weight, float* out, uint64_t n) {
  return Decode(payload, weight, true, out, n);
}

#else  // !LOWBAND_HAVE_CUDA

Status Available() { return NotBuilt(); }
std::string DeviceDescription() { return NotBuilt().message(); }
StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t) { return NotBuilt(); }
void DeviceBuffer::Free() {}
Status DeviceBuffer::CopyFromHost(const void*, size_t, size_t) { return NotBuilt(); }
Status DeviceBuffer::CopyToHost(void*, size_t, size_t) const { return NotBuilt(); }
StatusOr<PinnedBuffer> PinnedBuffer::Allocate(size_t) { return NotBuilt(); }
void PinnedBuffer::Free() {}
Status LaunchEncode(const CodecSpec&, const float*, uint64_t, uint8_t*, uint8_t*, int*, void*) {
  return NotBuilt();
}
Status LaunchDecode(const CodecSpec&, const uint8_t*, const uint8_t*, uint64_t, float*, float, bool, void*) {
  return NotBuilt();
}
struct Codec::Impl {};
StatusOr<std::unique_ptr<Codec>> Codec::Create(int) { return NotBuilt(); }
Codec::Codec(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Codec::~Codec() = default;
void* Codec::stream() const { return nullptr; }
Status Codec::EncodeToHost(const CodecSpec&, const float*, uint64_t, std::span<uint8_t>) {
  return NotBuilt();
}
Status Codec::Decode(std::span<const uint8_t>, float, bool, float*, uint64_t) { return NotBuilt(); }
Status Codec::DecodeToDevice(std::span<const uint8_t>, float*, uint64_t) { return NotBuilt(); }
Status Codec::DecodeAddToDevice(std::span<const uint8_t>, float, float*, uint64_t) { return NotBuilt(); }

#endif  // LOWBAND_HAVE_CUDA

}  // namespace lowband::quant::cuda
