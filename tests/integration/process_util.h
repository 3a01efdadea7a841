// Helpers of the integration tests: the lowband executable under test and a shell runner.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

namespace lowband::testing {

// The executable CTest passes in LOWBAND_BIN (else "lowband" on PATH).
inline std::string Bin() {
  const char* b = std::getenv("LOWBAND_BIN");
  return b ? b : "lowband";
}

// Runs a shell command; returns its exit code and its output (stdout and stderr).
inline std::pair<int, std::string> Shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  while (p && std::fgets(buf, sizeof(buf), p)) out += buf;
  const int st = p ? ::pclose(p) : -1;
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

}  // namespace lowband::testing
