// MetricsLog: a worker's JSONL metrics file (one JSON object per line, flushed per line so a
// launcher can follow it while the run goes and a killed run leaves at most one partial line),
// plus the per-step counters and timers the training loops keep.
// Thread safety: MetricsLog is not thread-safe (the training thread owns it); StepTimer is a value.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "quant/status.h"

namespace lowband::comm {

class MetricsLog {
 public:
  // Opens (truncating, or appending with `append`) `path`, creating its directory; an empty path
  // discards every record.
  static StatusOr<MetricsLog> Open(const std::string& path, bool append = false);
  MetricsLog() = default;
  MetricsLog(MetricsLog&& other) noexcept : file_(other.file_) { other.file_ = nullptr; }
  MetricsLog& operator=(MetricsLog&& other) noexcept;
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  ~MetricsLog();

  void Write(const nlohmann::json& record);

 private:
  std::FILE* file_ = nullptr;
};

// Seconds since construction, and accumulators for where the time went.
class RunClock {
 public:
  using Clock = std::chrono::steady_clock;
  RunClock() : start_(Clock::now()) {}
  double Elapsed() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }
  static double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

 private:
  Clock::time_point start_;
};

// Writes `json` to `path` atomically (temp file, fsync, rename).
Status WriteJsonFile(const std::string& path, const nlohmann::json& json);

// "1.23 MB", "512 B" (decimal units).
std::string HumanBytes(double bytes);
// "1h02m", "3m20s", "12s".
std::string HumanSeconds(double seconds);

}  // namespace lowband::comm
