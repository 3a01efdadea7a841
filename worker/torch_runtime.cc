#include "worker/torch_runtime.h"

#include <dlfcn.h>

#include <ATen/Parallel.h>
#include <torch/types.h>

#include "worker/torch_compat.h"

namespace lowband::worker {
namespace {

// OpenBLAS (Debian's libopenblas0-pthread, LibTorch's BLAS here) keeps its own thread pool, one
// thread per core, which at::set_num_threads does not reach: M worker processes on a machine would
// each run every matrix multiply on all the cores (measured by `lowband bench site`: two ranks on
// two cores ran 2.5x slower per step than with one BLAS thread each). Looked up at run time, so a
// build with another BLAS needs nothing.
void SetOpenBlasThreads(int n) {
  using SetThreads = void (*)(int);
  if (auto* set = reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(n);
}

}  // namespace

std::string TorchErrorMessage(const c10::Error& e) {
  // what_without_backtrace() is LibTorch's message alone; what() appends a multi-line C++ trace.
  std::string message = e.what_without_backtrace();
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  return message;
}

Status ConfigureTorchThreads(const TorchThreadConfig& config) {
  if (config.intra_op_threads < 0 || config.inter_op_threads < 0) {
    return InvalidArgument(
        "ConfigureTorchThreads: thread counts must be >= 0 (0 = LibTorch default), got intra_op=" +
        std::to_string(config.intra_op_threads) + " inter_op=" + std::to_string(config.inter_op_threads));
  }
  return GuardTorch("ConfigureTorchThreads", [&]() -> Status {
    if (config.intra_op_threads > 0) {
      at::set_num_threads(config.intra_op_threads);
      SetOpenBlasThreads(config.intra_op_threads);
    }
    if (config.inter_op_threads > 0 && compat::InteropThreads() != config.inter_op_threads) {
      // Throws once the inter-op pool has started; GuardTorch turns that into a status.
      at::set_num_interop_threads(config.inter_op_threads);
    }
    return Status::Ok();
  });
}

}  // namespace lowband::worker
