// LibTorch glue shared by the worker module: turning LibTorch exceptions into Status at the module's
// API edge, and choosing how many threads LibTorch may use.
//
// LibTorch reports errors by throwing c10::Error (and occasionally std::exception); lowband reports
// them as Status values. Every public worker function that calls into LibTorch runs its body through
// GuardTorch, so no exception crosses the worker API.
//
// Threads: LibTorch's intra-op pool is process-global. Library code never sets it; `main` (or a test)
// calls ConfigureTorchThreads once, from the config, before training starts. The default of one
// thread per worker process keeps M workers on a small machine from oversubscribing its cores.
#pragma once

#include <exception>
#include <new>
#include <string>
#include <string_view>
#include <utility>

#include <c10/util/Exception.h>

#include "quant/status.h"

namespace lowband::worker {

// Settings for LibTorch's thread pools.
struct TorchThreadConfig {
  // Threads for one operator (matrix multiply, convolution). 1 per worker process by default: several
  // workers share a machine's cores, and one thread each avoids oversubscription. 0 leaves LibTorch's
  // own default (one per core).
  int intra_op_threads = 1;
  // Threads for running independent operators concurrently (LibTorch's inter-op pool; unused by the
  // eager C++ code paths we run, so 1 is enough). 0 leaves the default. LibTorch allows setting this
  // only once per process, before any inter-op work; later calls that would change it fail.
  int inter_op_threads = 1;
};

// Applies `config` to LibTorch's process-global thread pools. Call from main, once.
[[nodiscard]] Status ConfigureTorchThreads(const TorchThreadConfig& config);

// Prefixes a status message with where it happened ("what: message"); OK stays OK.
[[nodiscard]] inline Status Annotate(const Status& status, std::string_view what) {
  if (status.ok()) return status;
  return Status(status.code(), std::string(what) + ": " + status.message());
}

// Returns LibTorch's message without the C++ stack trace it appends in debug-friendly builds.
std::string TorchErrorMessage(const c10::Error& e);

// Runs `body` (returning Status or StatusOr<T>) and converts an exception escaping from it into a
// status whose message starts with `what`: LibTorch's ValueError/IndexError/TypeError (it blamed the
// input) become InvalidArgument, out-of-memory ResourceExhausted, anything else Internal.
template <typename F>
auto GuardTorch(std::string_view what, F&& body) -> decltype(body()) {
  const auto fail = [&](StatusCode code, const std::string& message) {
    return Status(code, std::string(what) + ": " + message);
  };
  try {
    return std::forward<F>(body)();
  } catch (const c10::ValueError& e) {
    return fail(StatusCode::kInvalidArgument, TorchErrorMessage(e));
  } catch (const c10::IndexError& e) {
    return fail(StatusCode::kInvalidArgument, TorchErrorMessage(e));
  } catch (const c10::TypeError& e) {
    return fail(StatusCode::kInvalidArgument, TorchErrorMessage(e));
  } catch (const c10::Error& e) {
    return fail(StatusCode::kInternal, "LibTorch error: " + TorchErrorMessage(e));
  } catch (const std::bad_alloc&) {
    return fail(StatusCode::kResourceExhausted, "out of memory");
  } catch (const std::exception& e) {
    return fail(StatusCode::kInternal, e.what());
  }
}

}  // namespace lowband::worker
