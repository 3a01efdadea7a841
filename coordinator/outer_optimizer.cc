#include "coordinator/outer_optimizer.h"

#include <cassert>
#include <cmath>

#include <fmt/format.h>

namespace lowband::coordinator {

Status Validate(const OuterOptimizerOptions& options) {
  if (!std::isfinite(options.lr) || options.lr <= 0.0f) {
    return InvalidArgument(fmt::format("outer lr must be a finite number > 0, got {}", options.lr));
  }
  if (!std::isfinite(options.momentum) || options.momentum < 0.0f || options.momentum >= 1.0f) {
    return InvalidArgument(fmt::format("outer momentum must be in [0, 1), got {}", options.momentum));
  }
  return Status::Ok();
}

void OuterOptimizer::Step(std::span<const float> mean, std::span<const float> momentum,
                          std::span<float> next_momentum, std::span<float> update) const {
  assert(mean.size() == momentum.size() && mean.size() == next_momentum.size() &&
         mean.size() == update.size());
  const float lr = options_.lr;
  const float mu = options_.momentum;
  if (options_.nesterov) {
    for (size_t i = 0; i < mean.size(); ++i) {
      const float m = mean[i];
      const float b = mu * momentum[i] + m;
      next_momentum[i] = b;
      update[i] = lr * (m + mu * b);
    }
  } else {
    for (size_t i = 0; i < mean.size(); ++i) {
      const float b = mu * momentum[i] + mean[i];
      next_momentum[i] = b;
      update[i] = lr * b;
    }
  }
}

}  // namespace lowband::coordinator
