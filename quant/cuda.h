// quant::cuda: the blockwise codecs on an NVIDIA GPU, producing the same payload bytes as the CPU
// reference (codec.h) and decoding to the same floats.
//
// Encode reads fp32 values in device memory and writes the payload into host memory, the place it
// goes to the network from: a kernel computes every block's scale and codes on the device, one copy
// moves the body (about 1/8 of the input for 4-bit codes) into a pinned staging buffer, and the host
// adds the 32-byte header and its CRC32C. Decode is the mirror: the host validates the payload
// (header, sizes, checksum, scale values) exactly as quant::DecodeInto does, one copy moves the body
// to the device, and a kernel writes (or accumulates, DecodeAdd) the floats in device memory.
//
// Formats: every blockwise format (2-, 4- and 8-bit codes, every scale type, nearest and stochastic
// rounding, any valid block size); the passthrough formats (fp32/bf16/fp16) go through the CPU
// codec after a device-to-host copy. Errors are the CPU codec's: when the device finds a non-finite
// value or a scale out of range, the input is copied back and the CPU encoder names the bad value.
//
// Without a CUDA build (LOWBAND_HAVE_CUDA unset) or without a usable device, every call returns
// FailedPrecondition saying which; Available() tells callers up front.
//
// Thread safety: a Codec (it owns its stream and staging buffers) is used by one thread at a time;
// distinct Codecs may run concurrently. Device pointers must stay valid for the call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "quant/codec.h"
#include "quant/status.h"

namespace lowband::quant::cuda {

// True when this library was built with the CUDA kernels.
bool Built();
// OK when the kernels are built and a CUDA device can be used; otherwise FailedPrecondition naming
// why (not built with CUDA, no device, driver too old, ...).
Status Available();
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)", or the reason none is usable.
std::string DeviceDescription();

// Memory on the current CUDA device. Movable, not copyable; freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static StatusOr<DeviceBuffer> Allocate(size_t bytes);
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return ptr_; }
  float* floats() const { return static_cast<float*>(ptr_); }
  size_t size() const { return bytes_; }
  // Synchronous copies; `offset` in bytes.
  [[nodiscard]] Status CopyFromHost(const void* src, size_t bytes, size_t offset = 0);
  [[nodiscard]] Status CopyToHost(void* dst, size_t bytes, size_t offset = 0) const;

 private:
  void Free();
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory (cudaHostAlloc): copies to and from the device run at full PCIe/NVLink
// speed and asynchronously. Movable, not copyable.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  static StatusOr<PinnedBuffer> Allocate(size_t bytes);
  PinnedBuffer(PinnedBuffer&& o) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer();

  uint8_t* data() const { return ptr_; }
  size_t size() const { return bytes_; }
  std::span<uint8_t> span() const { return {ptr_, bytes_}; }

 private:
  void Free();
  uint8_t* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Low-level device-to-device entry points (what the benchmark times): no header, no host copies.
// The body goes to two device regions, block parameters and packed codes, each laid out as in the
// payload. `params` needs quant::ParamBytes(spec, n) bytes, `codes` quant::CodeBytes(spec, n) and must be
// 16-byte aligned. `error` is a device int that the kernel sets non-zero (never clears) on a non-finite value
// or an out-of-range scale. `stream` is a cudaStream_t (nullptr: the legacy default stream).
[[nodiscard]] Status LaunchEncode(const CodecSpec& spec, const float* x, uint64_t n, uint8_t* params,
                                  uint8_t* codes, int* error, void* stream);
// out[i] = value i (add: out[i] += weight * value i) from device params/codes laid out as above;
// `layout` gives the format, block size and scale type (its other fields are not used).
[[nodiscard]] Status LaunchDecode(const CodecSpec& layout, const uint8_t* params, const uint8_t* codes,
                                  uint64_t n, float* out, float weight, bool add, void* stream);

// A codec bound to one device, with its own stream and reusable staging buffers (grown on demand).
class Codec {
 public:
  // A codec for CUDA device `device` (-1: the calling thread's current device). Fails
  // (FailedPrecondition) when Available() does, InvalidArgument for a device that does not exist.
  static StatusOr<std::unique_ptr<Codec>> Create(int device = -1);
  ~Codec();
  Codec(const Codec&) = delete;
  Codec& operator=(const Codec&) = delete;

  // Encodes n floats at device pointer `x` into out (host memory, at least EncodedSize(spec, n)
  // bytes; pinned memory avoids a bounce through a staging copy). Same bytes as quant::EncodeInto.
  [[nodiscard]] Status EncodeToHost(const CodecSpec& spec, const float* x, uint64_t n,
                                    std::span<uint8_t> out);
  // Validates the payload like quant::DecodeInto, then writes n floats at device pointer `out`
  // (n must equal the payload's element count). Nothing is written if the payload is invalid.
  [[nodiscard]] Status DecodeToDevice(std::span<const uint8_t> payload, float* out, uint64_t n);
  // out[i] += weight * decoded[i], on the device.
  [[nodiscard]] Status DecodeAddToDevice(std::span<const uint8_t> payload, float weight, float* out,
                                         uint64_t n);

  // The stream the codec's kernels and copies run on (a cudaStream_t).
  void* stream() const;

 private:
  struct Impl;
  explicit Codec(std::unique_ptr<Impl> impl);
  Status Decode(std::span<const uint8_t> payload, float weight, bool add, float* out, uint64_t n);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowband::quant::cuda
