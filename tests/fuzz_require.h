// What every libFuzzer harness here checks its invariants with.
#pragma once

#include <cstdio>

namespace lowband::testing {

// Names the harness file and line of a violated invariant, then stops (libFuzzer saves the input).
inline void Require(bool ok, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  if (ok) return;
  std::fprintf(stderr, "%s:%d: invariant violated\n", file, line);
  __builtin_trap();
}

}  // namespace lowband::testing
