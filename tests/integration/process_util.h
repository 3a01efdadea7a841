// Helpers of the integration tests: the lowband executable under test, a shell runner, background
// processes and a generated corpus.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>

namespace lowband::testing {

// The executable CTest passes in LOWBAND_BIN (else "lowband" on PATH).
inline std::string Bin() {
  const char* b = std::getenv("LOWBAND_BIN");
  return b ? b : "lowband";
}

// Writes a text with structure to learn: `words` words of a small vocabulary in repeating patterns.
inline void WriteTinyCorpus(const std::string& path, int words) {
  std::mt19937 rng(5);
  const char* vocab[] = {"the ", "cat ", "sat ", "on ", "a ", "mat ", "and ", "dog ", "ran ", "far. "};
  std::ofstream f(path);
  for (int i = 0; i < words; ++i) f << vocab[(i * 7 + rng() % 3) % 10];
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

// A process running `cmd` through /bin/sh with stdout and stderr into `log`; killed (SIGKILL) and
// reaped on destruction unless it has exited.
class Background {
 public:
  Background(const std::string& cmd, const std::string& log) {
    pid_ = ::fork();
    if (pid_ == 0) {
      const std::string line = "exec " + cmd + " > " + log + " 2>&1";
      ::execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  ~Background() {
    if (pid_ > 0 && !status_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  pid_t pid() const { return pid_; }
  void Signal(int sig) const { ::kill(pid_, sig); }
  // Waits up to `timeout` for the process to end; its wait status, or nullopt while it runs.
  std::optional<int> Wait(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!status_) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        status_ = st;
      } else if (std::chrono::steady_clock::now() >= end) {
        break;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    return status_;
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// Waits up to 30 s for a process to write a port number into `path`; 0 if none came.
inline int ReadPortFile(const std::string& path) {
  for (int i = 0; i < 300 && !std::filesystem::exists(path); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the number is written right after
  std::ifstream in(path);
  int port = 0;
  in >> port;
  return port;
}

}  // namespace lowband::testing
