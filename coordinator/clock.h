// Time source for the coordinator core: the steady clock in production, a manual clock in tests,
// so that round deadlines and heartbeat expiry are tested without sleeping.
//
// Thread safety: Now() may be called from any thread; ManualClock::Advance/Set too (atomic).
// Lifetimes: whoever injects a clock keeps it alive for as long as the core that uses it.
#pragma once

#include <atomic>
#include <chrono>

namespace lowband::coordinator {

using SteadyTime = std::chrono::steady_clock::time_point;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual SteadyTime Now() const = 0;
};

class SteadyClock final : public Clock {
 public:
  SteadyTime Now() const override { return std::chrono::steady_clock::now(); }
  // A process-wide instance (stateless).
  static const SteadyClock& Instance() {
    static const SteadyClock clock;
    return clock;
  }
};

// Starts at an arbitrary fixed point and moves only when told to.
class ManualClock final : public Clock {
 public:
  SteadyTime Now() const override { return SteadyTime(std::chrono::nanoseconds(ns_.load())); }
  void Advance(std::chrono::nanoseconds d) { ns_ += d.count(); }

 private:
  std::atomic<int64_t> ns_{int64_t{1'000'000'000'000}};
};

}  // namespace lowband::coordinator
