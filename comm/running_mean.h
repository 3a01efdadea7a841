// RunningMean: the mean of a running sum (per-sync times, per-step bits, a logging window, the
// coordinator's round times). Not thread-safe: guard it like the state it sits in.
#pragma once

#include <cstdint>

namespace lowband::comm {

struct RunningMean {
  double sum = 0;
  int64_t n = 0;
  void Add(double v) {
    sum += v;
    ++n;
  }
  double Get() const { return n > 0 ? sum / static_cast<double>(n) : 0.0; }
};

}  // namespace lowband::comm
