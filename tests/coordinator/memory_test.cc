// The aggregation state of a round does not grow with the number of workers: contributions are
// added into one fp32 accumulator as they arrive. Measured by counting the bytes live on the heap
// (this binary replaces the global operator new/delete) while M workers push into one round.
#include <atomic>
#include <cstdlib>
#include <new>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "coordinator/core.h"
#include "tests/coordinator/fake_worker.h"

namespace {

std::atomic<int64_t> g_live{0};
std::atomic<int64_t> g_peak{0};

// 16-byte prefix holding the size keeps the default alignment for every fundamental type.
constexpr size_t kPrefix = 16;

void* CountedAlloc(size_t n) {
  void* raw = std::malloc(n + kPrefix);
  if (raw == nullptr) throw std::bad_alloc();
  *static_cast<size_t*>(raw) = n;
  const int64_t live = g_live.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n);
  int64_t peak = g_peak.load();
  while (live > peak && !g_peak.compare_exchange_weak(peak, live)) {
  }
  return static_cast<char*>(raw) + kPrefix;
}

void CountedFree(void* p) {
  if (p == nullptr) return;
  void* raw = static_cast<char*>(p) - kPrefix;
  g_live.fetch_sub(static_cast<int64_t>(*static_cast<size_t*>(raw)));
  std::free(raw);
}

}  // namespace

void* operator new(size_t n) { return CountedAlloc(n); }
void* operator new[](size_t n) { return CountedAlloc(n); }
void operator delete(void* p) noexcept { CountedFree(p); }
void operator delete[](void* p) noexcept { CountedFree(p); }
void operator delete(void* p, size_t) noexcept { CountedFree(p); }
void operator delete[](void* p, size_t) noexcept { CountedFree(p); }

namespace lowband::coordinator {
namespace {

const bool kQuietLogs = [] {
  spdlog::set_level(spdlog::level::warn);
  return true;
}();

struct RoundFootprint {
  int64_t peak_growth = 0;  // heap bytes above the level before the first push
  uint64_t accumulator_bytes = 0;
};

// M workers push into round 0 of a single 64K-value fragment; one more member is expected, so the
// round stays open and we measure the aggregation state alone (not the closing step).
RoundFootprint MeasurePushes(int m) {
  const uint64_t n = 65536;
  auto sig = comm::MakeSignature({{"blocks.0.w", {256, 256}, "float32"}});
  EXPECT_TRUE(sig.ok());
  CoordinatorOptions o;
  o.run_id = "mem";
  o.layout.num_fragments = 1;
  o.signature = *sig;
  auto core = std::move(CoordinatorCore::Create(o)).value();
  std::vector<WorkerKey> keys;
  for (int i = 0; i < m + 1; ++i) {
    JoinRequest r;
    r.run_id = "mem";
    r.signature = *sig;
    keys.push_back(core->Join(r)->key);
  }
  EXPECT_TRUE(core->SeedState(keys[0], lowband::testing::InitialParameters(n))->accepted);
  lowband::testing::FakeWorker w({std::vector<float>(n, 0.0f)}, 1);
  std::vector<std::vector<uint8_t>> payloads;
  for (int i = 0; i < m; ++i) payloads.push_back(w.Contribution(0, o.upload_codec));

  const int64_t base = g_live.load();
  g_peak.store(base);
  for (int i = 0; i < m; ++i) {
    auto r = core->Push(keys[i], 0, 0, payloads[i]);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
  }
  RoundFootprint f;
  f.peak_growth = g_peak.load() - base;
  auto st = core->round_status(0);
  EXPECT_EQ(st->contributions, static_cast<uint32_t>(m));
  EXPECT_EQ(st->open_round, 0u);
  f.accumulator_bytes = st->accumulator_bytes;
  return f;
}

TEST(CoordinatorMemory, RoundStateDoesNotGrowWithTheNumberOfWorkers) {
  const RoundFootprint two = MeasurePushes(2);
  const RoundFootprint many = MeasurePushes(64);
  EXPECT_EQ(two.accumulator_bytes, many.accumulator_bytes);
  // A per-worker copy of the decoded contribution would cost 256 KiB per worker (16 MiB for 64).
  // What may grow is the list of contributor ids (8 bytes per worker) and its vector doubling.
  const int64_t per_worker_copy = 65536 * 4;
  RecordProperty("peak_growth_2", std::to_string(two.peak_growth));
  RecordProperty("peak_growth_64", std::to_string(many.peak_growth));
  EXPECT_LT(many.peak_growth - two.peak_growth, 4096)
      << "2 workers: " << two.peak_growth << " B, 64 workers: " << many.peak_growth << " B";
  EXPECT_LT(many.peak_growth, per_worker_copy);
}

}  // namespace
}  // namespace lowband::coordinator
