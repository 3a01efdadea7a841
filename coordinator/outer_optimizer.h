// The outer optimizer of (Streaming) DiLoCo: SGD with (Nesterov) momentum on the mean outer
// gradient of a round (DESIGN.md §3):
//   buf' = mu * buf + mean
//   u    = lr * (mean + mu * buf')   (Nesterov)     or     u = lr * buf'   (heavy ball)
// and the caller applies g -= dec(enc(u)). The step writes the new momentum to a separate buffer
// so that the caller can commit it only after the update has been encoded and applied.
//
// Thread safety: immutable after construction; Step may run concurrently on different buffers.
// Lifetimes: nothing is retained.
#pragma once

#include <span>

#include "quant/status.h"

namespace lowband::coordinator {

struct OuterOptimizerOptions {
  // Outer learning rate lr (the paper uses 0.4-0.7).
  float lr = 0.7f;
  // Momentum mu, in [0, 1).
  float momentum = 0.9f;
  // Nesterov momentum (the paper's choice) or plain heavy-ball momentum.
  bool nesterov = true;
};

// Names the bad field: lr must be finite and > 0, momentum finite in [0, 1).
Status Validate(const OuterOptimizerOptions& options);

class OuterOptimizer {
 public:
  explicit OuterOptimizer(OuterOptimizerOptions options) : options_(options) {}

  const OuterOptimizerOptions& options() const { return options_; }

  // All spans have the same length. `update` may alias `mean` (element i is read before it is
  // written); `next_momentum` must not alias anything else.
  void Step(std::span<const float> mean, std::span<const float> momentum, std::span<float> next_momentum,
            std::span<float> update) const;

 private:
  OuterOptimizerOptions options_;
};

}  // namespace lowband::coordinator
