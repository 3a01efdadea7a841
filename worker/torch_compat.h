// What differs between the LibTorch versions lowband builds against, in one place: Debian's LibTorch
// 1.13 (CPU) and LibTorch 2.x (the GPU machines run 2.11 with CUDA 13 and NCCL). <torch/version.h>
// says which one is being compiled against; the rest of worker/ calls these helpers instead of
// testing versions itself.
//
// Differences that need no helper, because the code we write is the same for both:
//   - c10d::ProcessGroupGloo and c10d::ProcessGroupNCCL are c10d::ProcessGroups in 1.13 and
//     c10d::Backends in 2.x; both are constructed from (store, rank, size, options) and offer the
//     broadcast/allreduce/allgather we call, returning c10::intrusive_ptr<c10d::Work>.
//   - ProcessGroupGloo::Options::create(timeout) and ProcessGroupNCCL::Options::create() (with a
//     `timeout` field) exist in both; createDeviceForInterface/Hostname gained a defaulted lazyInit.
//   - c10d::TCPStoreOptions has the same fields we set (2.x adds useLibUV, on by default);
//     c10d::PrefixStore(prefix, store) is the same.
// Differences in behaviour are handled here (ZeroGrad, WaitFor, SetNcclErrorHandling, AbortNcclGroup),
// and so are changed return types (CudaDeviceCount, InteropThreads).
//
// Thread safety: the helpers are stateless, except that SetNcclErrorHandling edits the environment
// (call it before starting threads that read it). Include only from .cc files of worker/.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/optim/optimizer.h>
#include <torch/version.h>

// True when compiling against LibTorch major.minor or newer.
#define LOWBAND_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace lowband::worker::compat {

// Zeroes every parameter's .grad() in place, keeping the tensor. 1.13's Optimizer::zero_grad() does
// that; 2.x's zero_grad() drops the gradients instead (set_to_none = true by default), which would
// make AdamW skip parameters that got no gradient in a step (1.13 decays them) and reallocate every
// gradient each step. lowband keeps the 1.13 behaviour with both.
inline void ZeroGrad(torch::optim::Optimizer& optimizer) {
#if LOWBAND_TORCH_AT_LEAST(2, 0)
  optimizer.zero_grad(/*set_to_none=*/false);
#else
  optimizer.zero_grad();
#endif
}

// Visible CUDA devices (size_t in 1.13, c10::DeviceIndex in 2.x); 0 for a CPU-only LibTorch.
inline int CudaDeviceCount() { return static_cast<int>(torch::cuda::device_count()); }

// Threads in LibTorch's inter-op pool (int in 1.13, size_t in 2.x).
inline int64_t InteropThreads() { return static_cast<int64_t>(at::get_num_interop_threads()); }

// Waits until `work` (a c10d collective) has finished; throws if it failed or did not finish within
// `timeout`. Gloo: wait() returns or throws when the collective ends, which Gloo's own timeout
// (ProcessGroupGloo::Options) bounds, in both versions. NCCL differs: 2.x's wait(timeout) blocks the
// calling thread until the collective is done and throws on an error or on the timeout (after
// aborting the communicator); 1.13's only makes the current CUDA stream wait for the collective (its
// timeout applies only with NCCL_BLOCKING_WAIT=1), so completion is polled here. `Work` is c10d::Work
// (a template so that this header needs no c10d include).
template <typename Work>
void WaitFor(Work& work, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  work.wait(timeout);
  while (!work.isCompleted()) {
    if (std::chrono::steady_clock::now() >= deadline) {
      throw std::runtime_error("the collective did not complete within " + std::to_string(timeout.count()) +
                               " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (std::exception_ptr error = work.exception()) std::rethrow_exception(error);
}

// How ProcessGroupNCCL's watchdog reacts when a collective fails or times out. Its 2.x default
// (TORCH_NCCL_ASYNC_ERROR_HANDLING=3) takes the whole process down with std::abort from the watchdog
// thread, racing the caller's own error report. Mode 2 (CleanUpOnly) aborts the communicators, which
// frees any rank stuck in an NCCL kernel, and leaves the error to Work::wait, which throws; lowband
// then reports it as a Status. Sets it unless the user chose a mode (under either name). Call before
// creating the process group: it reads the variable in its constructor.
inline void SetNcclErrorHandling() {
  if (std::getenv("TORCH_NCCL_ASYNC_ERROR_HANDLING") != nullptr ||
      std::getenv("NCCL_ASYNC_ERROR_HANDLING") != nullptr) {
    return;
  }
#if LOWBAND_TORCH_AT_LEAST(2, 2)
  ::setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2", /*overwrite=*/0);
#else
  ::setenv("NCCL_ASYNC_ERROR_HANDLING", "2", /*overwrite=*/0);
#endif
}

// Releases an NCCL process group's communicators before it is destroyed. lowband waits for every
// collective it starts, so none is in flight then, and an abort is the one ending that never waits
// for the peers (2.x's shutdown() finalizes the communicators, which can wait on ranks that failed).
// 2.x warns when a ProcessGroupNCCL is destroyed without abort() or shutdown(); 1.13 has neither and
// aborts the communicators in its destructor. Never throws (it runs from destructors).
template <typename NcclGroup>
void AbortNcclGroup(NcclGroup& group) noexcept {
#if LOWBAND_TORCH_AT_LEAST(2, 4)
  try {
    group.abort();
  } catch (...) {  // NOLINT(bugprone-empty-catch): best effort while tearing down
  }
#else
  (void)group;
#endif
}

}  // namespace lowband::worker::compat
