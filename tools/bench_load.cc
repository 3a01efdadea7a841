#include "tools/bench_load.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "comm/coordinator_client.h"
#include "comm/metrics.h"
#include "comm/signature.h"
#include "quant/codec.h"
#include "tools/command.h"
#include "tools/process.h"

namespace lowband::tools {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr double kMiB = 1024.0 * 1024.0;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// ---- the coordinator process --------------------------------------------------------------------

// What the coordinator process is made of, read from /proc/<pid>: resident memory and CPU time.
struct ProcSample {
  double rss_bytes = 0;  // VmRSS
  double hwm_bytes = 0;  // VmHWM: the peak resident size so far
  double cpu_seconds = 0;
  bool ok = false;
};

ProcSample ReadProc(pid_t pid) {
  ProcSample s;
  std::ifstream status(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(status, line)) {
    auto kib = [&](const char* key, double* out) {
      if (line.rfind(key, 0) == 0) {
        *out = 1024.0 * std::strtod(line.c_str() + std::strlen(key), nullptr);
        return true;
      }
      return false;
    };
    if (kib("VmRSS:", &s.rss_bytes)) s.ok = true;
    kib("VmHWM:", &s.hwm_bytes);
  }
  // /proc/<pid>/stat: "pid (comm) state ..."; utime and stime are fields 14 and 15, the 12th and
  // 13th after the closing parenthesis (comm may contain spaces).
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string all((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  if (const auto close = all.rfind(')'); close != std::string::npos) {
    std::istringstream rest(all.substr(close + 1));
    std::string field;
    double ticks = 0;
    for (int i = 0; i < 13 && rest >> field; ++i) {
      if (i >= 11) ticks += std::strtod(field.c_str(), nullptr);
    }
    s.cpu_seconds = ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  return s;
}

double SelfCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec);
  };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

// The machine's 1-minute load average: other work on the same cores skews every figure here.
double LoadAverage() {
  std::ifstream in("/proc/loadavg");
  double one = -1;
  in >> one;
  return one;
}

// One `lowband coordinator` child on 127.0.0.1 (a port of its choosing, read from --port-file), its
// output in a log file of a private temporary directory. The destructor stops it (SIGTERM, then
// SIGKILL) and removes the directory, so no error path leaves a process behind (and
// tools/process.h's PDEATHSIG covers a benchmark that is killed).
class CoordinatorProcess {
 public:
  CoordinatorProcess(const std::string& self, const std::vector<std::string>& settings, bool checkpoints) {
    std::string tmpl = (fs::temp_directory_path() / "lowband-bench-load-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr)
      throw CommandError(fmt::format("cannot create a temporary directory: {}", std::strerror(errno)));
    dir_ = tmpl;
    std::vector<std::string> args = {self,          "coordinator", "--listen",
                                     "127.0.0.1:0", "--port-file", (dir_ / "port").string(),
                                     "--out",       dir_.string()};
    for (const auto& s : settings) {
      args.push_back("--set");
      args.push_back(s);
    }
    if (checkpoints) args.insert(args.end(), {"--checkpoint-dir", (dir_ / "checkpoint").string()});
    StatusOr<Child> child = Spawn("the coordinator", args, log_path().string());
    if (!child.ok()) {
      Cleanup();
      throw CommandError(child.status().message());
    }
    children_.push_back(std::move(child).value());
    started_ = Clock::now();
  }
  ~CoordinatorProcess() {
    Stop();
    Cleanup();
  }
  CoordinatorProcess(const CoordinatorProcess&) = delete;
  CoordinatorProcess& operator=(const CoordinatorProcess&) = delete;

  pid_t pid() const { return children_.front().pid; }
  Clock::time_point started() const { return started_; }
  fs::path log_path() const { return dir_ / "coordinator.log"; }

  // Waits for the port file; fails naming the log's tail if the process exits first.
  int WaitForPort(std::chrono::seconds timeout) {
    StatusOr<int> port =
        WaitForPortFile((dir_ / "port").string(), children_, "the coordinator", log_path().string(), timeout);
    if (!port.ok()) throw CommandError(port.status().message());
    return *port;
  }

  // "" while it runs; otherwise how it ended and its log's tail.
  std::string Exited() {
    Child& c = children_.front();
    if (!Poll(c)) return "";
    return fmt::format("the coordinator (pid {}) ended with {}; its log:\n{}", c.pid, Describe(c.status),
                       Tail(c.log, 20));
  }

  // SIGTERM, up to 15 s to finish (it writes its result file), then SIGKILL. Idempotent.
  void Stop() { tools::Stop(children_, {0}, std::chrono::seconds(15)); }

  // The counters the coordinator writes when it stops (metrics/coordinator-result.json), or null.
  nlohmann::json Result() const {
    std::ifstream in(dir_ / "metrics" / "coordinator-result.json");
    if (!in) return nullptr;
    auto j = nlohmann::json::parse(in, nullptr, false);
    return j.is_discarded() ? nlohmann::json(nullptr) : j;
  }

 private:
  void Cleanup() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  fs::path dir_;
  std::vector<Child> children_;  // the one coordinator (a vector for tools/process.h)
  Clock::time_point started_;
};

// Samples the coordinator's /proc entry every `interval` on a thread of its own, with the number of
// full rounds every worker had finished at that moment.
class MemorySampler {
 public:
  struct Sample {
    double t = 0;  // seconds since the coordinator started
    ProcSample proc;
    int rounds = 0;
  };

  MemorySampler(pid_t pid, Clock::time_point t0, std::chrono::milliseconds interval,
                std::function<int()> rounds_done)
      : pid_(pid), t0_(t0), interval_(interval), rounds_done_(std::move(rounds_done)) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~MemorySampler() { Finish(); }
  MemorySampler(const MemorySampler&) = delete;
  MemorySampler& operator=(const MemorySampler&) = delete;

  // Takes a last sample, stops the thread and returns every sample.
  std::vector<Sample> Finish() {
    if (thread_.joinable()) {
      stop_ = true;
      thread_.join();
      TakeSample();
    }
    std::lock_guard<std::mutex> lock(mu_);
    return samples_;
  }
  Sample Latest() {
    std::lock_guard<std::mutex> lock(mu_);
    return samples_.empty() ? Sample{} : samples_.back();
  }

 private:
  void Loop() {
    while (!stop_) {
      TakeSample();
      const auto until = Clock::now() + interval_;
      while (!stop_ && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  void TakeSample() {
    Sample s{Seconds(Clock::now() - t0_), ReadProc(pid_), rounds_done_()};
    if (!s.proc.ok) return;  // the process is gone
    std::lock_guard<std::mutex> lock(mu_);
    samples_.push_back(s);
  }

  pid_t pid_;
  Clock::time_point t0_;
  std::chrono::milliseconds interval_;
  std::function<int()> rounds_done_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<Sample> samples_;  // GUARDED_BY(mu_)
  std::thread thread_;
};

// ---- the synthetic workers ----------------------------------------------------------------------

// Fast deterministic uniform values in [-scale, scale) (splitmix64): setup cost, not measured.
void FillRandom(std::vector<float>* v, uint64_t seed, float scale) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& f : *v) {
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    f = scale * (static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
}

// One tensor per fragment, "blocks.<p>.weight", with the run's nonblock policy "spread" tensor p is
// fragment p: P fragments of equal size (the last takes the remainder).
comm::ModelSignature SyntheticSignature(int64_t params, int fragments) {
  std::vector<comm::TensorInfo> tensors;
  const int64_t each = params / fragments;
  for (int p = 0; p < fragments; ++p) {
    const int64_t n = p + 1 == fragments ? params - each * (fragments - 1) : each;
    tensors.push_back({fmt::format("blocks.{}.weight", p), {n}, "float32"});
  }
  auto s = comm::MakeSignature(std::move(tensors));
  if (!s.ok()) throw CommandError("synthetic model signature: " + s.status().ToString());
  return *s;
}

// Decides, once per round boundary (when every worker has arrived), whether the workers go on:
// the barrier's completion runs on one thread while the others wait, so they all see the same
// answer and stop after the same round.
struct RoundGate {
  struct Shared* sh;
  void operator()() noexcept;
};

// What every worker thread shares.
struct Shared {
  Shared(int workers_, int warmup_, int rounds_, double seconds_)
      : workers(workers_),
        warmup(warmup_),
        max_rounds(rounds_),
        seconds(seconds_),
        rounds_done(static_cast<size_t>(workers_)),
        errors(static_cast<size_t>(workers_)),
        gate(workers_, RoundGate{this}) {}
  const int workers, warmup;
  const int max_rounds;  // timed rounds; with seconds > 0 at most this many (0: no limit)
  const double seconds;  // > 0: stop at the first round boundary this long after the timed start
  Clock::time_point t0 = Clock::now();
  std::vector<std::atomic<int>> rounds_done;  // full rounds each worker has finished
  std::atomic<bool> failed{false};
  std::atomic<int> exited{0};  // worker threads that have returned
  std::mutex mu;
  std::vector<std::string> errors;  // GUARDED_BY(mu)
  // Written by RoundGate only (inside the barrier's completion), read by workers after it.
  int boundaries = 0;  // completed phases: 0 = the start barrier, k + 1 = after round k
  bool stop = false;
  Clock::time_point timed_start;
  std::atomic<int64_t> ready_ns{0};  // when the start barrier opened (ns since t0)
  std::barrier<RoundGate> gate;

  int64_t Now() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
  }
  int MinRoundsDone() const {
    int m = INT32_MAX;
    for (const auto& r : rounds_done) m = std::min(m, r.load());
    return m;
  }
  void Fail(int worker, const std::string& what) {
    {
      std::lock_guard<std::mutex> lock(mu);
      errors[static_cast<size_t>(worker)] = what;
    }
    failed = true;
  }
};

void RoundGate::operator()() noexcept {
  const int done = sh->boundaries++;  // full rounds finished
  if (done == 0) sh->ready_ns = sh->Now();
  if (done == sh->warmup) sh->timed_start = Clock::now();
  const int timed = done - sh->warmup;
  if (sh->failed) {
    sh->stop = true;
  } else if (sh->seconds > 0) {
    sh->stop = timed > 0 && (Seconds(Clock::now() - sh->timed_start) >= sh->seconds ||
                             (sh->max_rounds > 0 && timed >= sh->max_rounds));
  } else {
    sh->stop = timed >= sh->max_rounds;
  }
}

struct WorkerResult {
  // Per fragment round (k * P + p, warmup included): this worker's push started, its update arrived
  // (ns since Shared::t0).
  std::vector<int64_t> push_ns, update_ns;
  std::vector<double> push_s, update_s;    // per timed fragment round: the two calls' durations
  comm::TrafficCounters at_start, at_end;  // at the first timed push and at the end
};

struct WorkerPlan {
  std::string target, run_id, token;
  comm::ModelSignature signature;
  std::chrono::milliseconds round_timeout{0};
};

template <typename T>
T Need(StatusOr<T> v, const std::string& what) {
  if (!v.ok()) throw CommandError(what + ": " + v.status().ToString());
  return std::move(*v);
}

void RunWorker(int w, const WorkerPlan& plan, Shared& sh, WorkerResult* out) {
  // Whatever way a worker leaves before the end, it drops out of the round barrier so that the
  // others are never left waiting there (they see `failed` and stop too).
  bool finished = false;
  struct Drop {
    bool& finished;
    Shared& sh;
    ~Drop() {
      ++sh.exited;
      if (!finished) {
        sh.failed = true;
        sh.gate.arrive_and_drop();
      }
    }
  } drop{finished, sh};
  try {
    // Few retries: on loopback an unreachable coordinator has died, and that should end the run soon.
    comm::ClientOptions copts;
    copts.retry.max_attempts = 3;
    auto client = Need(comm::CoordinatorClient::Connect(plan.target, copts), "connect");
    const comm::JoinReply reply =
        Need(client->Join({plan.run_id, plan.token, plan.signature, fmt::format("load-{}", w), "127.0.0.1"}),
             "join");
    std::vector<uint64_t> open = reply.open_rounds;
    bool have_state = false;
    if (reply.must_seed) {
      std::vector<float> init(plan.signature.total_elements());
      FillRandom(&init, 0, 0.1f);
      have_state = Need(client->SeedState(init), "seed");
    }
    if (!have_state) open = Need(client->Bootstrap(), "bootstrap").open_rounds;
    const auto P = static_cast<uint32_t>(reply.fragment_elements.size());
    // One random contribution per fragment, encoded once with the run's upload codec: the
    // coordinator validates and aggregates it in full every round; the encode is not measured.
    std::vector<std::vector<uint8_t>> payloads(P);
    for (uint32_t p = 0; p < P; ++p) {
      std::vector<float> values(reply.fragment_elements[p]);
      FillRandom(&values, 1000 + static_cast<uint64_t>(w) * P + p, 1e-3f);
      payloads[p] = Need(quant::Encode(reply.upload_codec, values), "encode");
    }
    // The coordinator's start barrier (as a training worker's): wait until every worker holds the
    // state; then this process's own barrier, so that the first round starts together.
    const auto start_deadline = Clock::now() + std::chrono::seconds(300);
    for (;;) {
      const auto hb = Need(client->Heartbeat({0, 0.0f, 0, /*ready=*/true}), "heartbeat");
      if (hb.ready_members >= static_cast<uint32_t>(sh.workers)) break;
      if (sh.failed) return;
      if (Clock::now() > start_deadline) {
        throw CommandError(
            fmt::format("only {} of {} workers were ready after 300 s", hb.ready_members, sh.workers));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    sh.gate.arrive_and_wait();

    for (int k = 0; !sh.stop; ++k) {
      if (k == sh.warmup) out->at_start = client->traffic();
      for (uint32_t p = 0; p < P; ++p) {
        const uint64_t round = open[p] + static_cast<uint64_t>(k);
        const auto t0 = Clock::now();
        out->push_ns.push_back(sh.Now());
        const auto pushed = Need(client->PushFragment(p, round, payloads[p]),
                                 fmt::format("push of fragment {} round {}", p, round));
        if (pushed.duplicate)
          throw CommandError(fmt::format("fragment {} round {}: push taken as a duplicate", p, round));
        const auto t1 = Clock::now();
        const auto give_up = t1 + plan.round_timeout;
        std::vector<uint8_t> update;
        for (;;) {
          auto u = client->GetUpdate(p, round, std::chrono::milliseconds(5000));
          if (u.ok()) {
            update = std::move(*u);
            break;
          }
          if (u.status().code() != StatusCode::kDeadlineExceeded) {
            throw CommandError(
                fmt::format("update of fragment {} round {}: {}", p, round, u.status().ToString()));
          }
          if (sh.failed) return;
          if (Clock::now() > give_up) {
            throw CommandError(fmt::format("fragment {} round {} did not close within {} s", p, round,
                                           plan.round_timeout.count() / 1000));
          }
        }
        const auto t2 = Clock::now();
        out->update_ns.push_back(sh.Now());
        const auto info = Need(quant::Inspect(update), "update payload");
        if (info.element_count != reply.fragment_elements[p]) {
          throw CommandError(fmt::format("the update of fragment {} has {} values, expected {}", p,
                                         info.element_count, reply.fragment_elements[p]));
        }
        if (k >= sh.warmup) {
          out->push_s.push_back(Seconds(t1 - t0));
          out->update_s.push_back(Seconds(t2 - t1));
        }
      }
      sh.rounds_done[static_cast<size_t>(w)] = k + 1;
      sh.gate.arrive_and_wait();
    }
    if (sh.failed) return;
    out->at_end = client->traffic();
    finished = true;
    if (Status s = client->Leave("load benchmark done"); !s.ok())
      throw CommandError("leave: " + s.ToString());
  } catch (const std::exception& e) {
    sh.Fail(w, e.what());
  }
}

// ---- statistics --------------------------------------------------------------------------------

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, rank > 0 ? rank - 1 : 0)];
}

nlohmann::json Distribution(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return {{"p50", Percentile(v, 0.5)},
          {"p99", Percentile(v, 0.99)},
          {"min", v.empty() ? 0.0 : *std::min_element(v.begin(), v.end())},
          {"max", v.empty() ? 0.0 : *std::max_element(v.begin(), v.end())},
          {"mean", v.empty() ? 0.0 : sum / static_cast<double>(v.size())},
          {"count", v.size()}};
}

// Least-squares slope of y over x.
double Slope(const std::vector<double>& x, const std::vector<double>& y) {
  const auto n = static_cast<double>(x.size());
  if (x.size() < 2) return 0;
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sx += x[i];
    sy += y[i];
    sxx += x[i] * x[i];
    sxy += x[i] * y[i];
  }
  const double den = n * sxx - sx * sx;
  return den > 0 ? (n * sxy - sx * sy) / den : 0;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The coordinator's memory over the run. RSS swings within a round (payload buffers come and go),
// so levels are medians over a tenth of the timed samples (at least one): its first tenth (start),
// the tenth from its middle (mid) and its last tenth (end). RSS also keeps settling for a while
// after the warmup (allocator arenas and gRPC buffers reach their working size: ~50 rounds at 64
// workers), then levels off; a leak does not level off. So flatness is judged on the second half,
// end - mid, while end - start and the slopes over the whole timed part and its second half are
// reported beside it.
nlohmann::json MemoryReport(const std::vector<MemorySampler::Sample>& samples, double ready_s, double start_s,
                            double end_s) {
  if (samples.empty()) throw CommandError("no memory sample of the coordinator was taken");
  auto mib = [](double b) { return b / kMiB; };
  std::vector<double> t, rss;
  double max_rss = 0, hwm = 0, ready_rss = samples.back().proc.rss_bytes;
  for (auto it = samples.rbegin(); it != samples.rend(); ++it) {
    if (it->t >= ready_s) ready_rss = it->proc.rss_bytes;
  }
  for (const auto& s : samples) {
    max_rss = std::max(max_rss, s.proc.rss_bytes);
    hwm = std::max(hwm, s.proc.hwm_bytes);
    if (s.t >= start_s && s.t <= end_s) {
      t.push_back(s.t);
      rss.push_back(s.proc.rss_bytes);
    }
  }
  if (rss.empty()) {  // a timed part shorter than one sampling interval: the nearest sample
    t.push_back(samples.back().t);
    rss.push_back(samples.back().proc.rss_bytes);
  }
  const auto tenth = static_cast<std::ptrdiff_t>(std::max<size_t>(1, rss.size() / 10));
  const auto half = static_cast<std::ptrdiff_t>(rss.size() / 2);
  const double start = Median({rss.begin(), rss.begin() + tenth});
  const double mid =
      Median({rss.begin() + half, rss.begin() + std::min<std::ptrdiff_t>(half + tenth, std::ssize(rss))});
  const double end = Median({rss.end() - tenth, rss.end()});
  // Flat: what the second half added is within noise (8 MiB or 5% of the mid level, the larger).
  const bool flat = end - mid <= std::max(8 * kMiB, 0.05 * mid);
  const std::vector<double> late_t(t.begin() + half, t.end()), late_rss(rss.begin() + half, rss.end());
  nlohmann::json series = nlohmann::json::array();
  for (const auto& s : samples) {
    series.push_back(
        {std::round(s.t * 1000) / 1000, std::round(mib(s.proc.rss_bytes) * 100) / 100, s.rounds});
  }
  return {{"first_mib", mib(samples.front().proc.rss_bytes)},
          {"ready_mib", mib(ready_rss)},
          {"timed_start_mib", mib(start)},
          {"timed_mid_mib", mib(mid)},
          {"timed_end_mib", mib(end)},
          {"timed_max_mib", mib(*std::max_element(rss.begin(), rss.end()))},
          {"max_mib", mib(max_rss)},
          {"peak_hwm_mib", mib(hwm)},
          {"growth_mib", mib(end - start)},
          {"second_half_growth_mib", mib(end - mid)},
          {"slope_mib_per_minute", mib(Slope(t, rss)) * 60},
          {"second_half_slope_mib_per_minute", mib(Slope(late_t, late_rss)) * 60},
          {"flat", flat},
          {"timed_samples", rss.size()},
          {"samples_columns", {"seconds", "rss_mib", "rounds_done"}},
          {"samples", series}};
}

// ---- one point of the sweep --------------------------------------------------------------------

nlohmann::json RunPoint(const LoadBenchOptions& o, int workers, const std::string& self) {
  const std::string run_id = fmt::format("bench-load-{}", workers);
  std::random_device rd;
  const std::string token = fmt::format("{:016x}", (static_cast<uint64_t>(rd()) << 32) ^ rd());
  const int H = std::max(100, o.fragments);
  CoordinatorProcess coord(
      self,
      {"run.id=" + run_id, "run.token=" + token, fmt::format("diloco.fragments={}", o.fragments),
       "diloco.nonblock=spread", fmt::format("diloco.H={}", H), "codec.format=" + o.codec,
       fmt::format("codec.block={}", o.block), fmt::format("coordinator.quorum={}", workers),
       // Rounds close on all N contributions, never at a deadline, and nobody is dropped.
       fmt::format("coordinator.round_timeout_s={}", std::max(3600.0, 2 * o.round_timeout_s)),
       fmt::format("coordinator.heartbeat_timeout_s={}", std::max(600.0, 2 * o.round_timeout_s)),
       fmt::format("coordinator.checkpoint_every={}", o.checkpoint_every)},
      o.checkpoint_every > 0);
  const int port = coord.WaitForPort(std::chrono::seconds(60));
  const double port_s = Seconds(Clock::now() - coord.started());
  const double load_before = LoadAverage();

  Shared sh(workers, o.warmup, o.rounds, o.seconds);
  sh.t0 = coord.started();
  MemorySampler sampler(coord.pid(), coord.started(), std::chrono::milliseconds(o.sample_ms),
                        [&sh] { return sh.MinRoundsDone(); });
  WorkerPlan plan{fmt::format("127.0.0.1:{}", port), run_id, token, SyntheticSignature(o.params, o.fragments),
                  std::chrono::milliseconds(static_cast<int64_t>(o.round_timeout_s * 1000))};
  std::vector<WorkerResult> results(static_cast<size_t>(workers));
  const double self_cpu0 = SelfCpuSeconds();
  std::vector<std::thread> threads;
  // On any early exit: stop the workers (they watch `failed`) and join them before `sh` goes away.
  struct JoinAll {
    std::vector<std::thread>& threads;
    Shared& sh;
    ~JoinAll() {
      for (auto& t : threads) {
        if (!t.joinable()) continue;
        sh.failed = true;
        t.join();
      }
    }
  } join_all{threads, sh};
  threads.reserve(static_cast<size_t>(workers));
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] { RunWorker(w, plan, sh, &results[static_cast<size_t>(w)]); });
  }

  // Progress, and a watch on the coordinator process while the workers run.
  const int every = o.progress_every > 0 ? o.progress_every
                    : o.seconds > 0      ? 0  // time-based: a line every seconds / 10
                                         : std::max(1, (o.warmup + o.rounds) / 10);
  const std::string of = o.seconds > 0 ? "" : fmt::format("/{}", o.warmup + o.rounds);
  int printed = 0;
  auto last_line = Clock::now();
  bool ready_said = false;
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const int done = sh.MinRoundsDone();
    if (o.progress && !ready_said && sh.ready_ns > 0) {
      ready_said = true;
      fmt::print(stderr, "{:>3} workers: all joined and ready after {:.1f} s, coordinator RSS {:.0f} MiB\n",
                 workers, 1e-9 * static_cast<double>(sh.ready_ns.load()),
                 sampler.Latest().proc.rss_bytes / kMiB);
      last_line = Clock::now();
    }
    const double dt = Seconds(Clock::now() - last_line);
    const bool due = every > 0 ? done >= printed + every : dt >= o.seconds / 10 && done > printed;
    if (o.progress && ready_said && due) {
      fmt::print(stderr, "{:>3} workers: round {:>4}{} ({}) {:>7.2f} rounds/s, coordinator RSS {:.0f} MiB\n",
                 workers, done, of, done <= o.warmup ? "warmup" : "timed",
                 (done - printed) / std::max(dt, 1e-9), sampler.Latest().proc.rss_bytes / kMiB);
      printed = done;
      last_line = Clock::now();
    }
    if (sh.exited == workers || sh.failed) break;
    if (const std::string why = coord.Exited(); !why.empty()) throw CommandError(why);
  }
  for (auto& t : threads) t.join();
  const double self_cpu = SelfCpuSeconds() - self_cpu0;
  const auto samples = sampler.Finish();
  if (sh.failed) {
    std::lock_guard<std::mutex> lock(sh.mu);
    for (size_t w = 0; w < sh.errors.size(); ++w) {
      if (!sh.errors[w].empty()) {
        throw CommandError(fmt::format("{} workers: worker {}: {}\ncoordinator log:\n{}", workers, w,
                                       sh.errors[w], Tail(coord.log_path().string(), 10)));
      }
    }
    throw CommandError(fmt::format("{} workers: the run failed", workers));
  }
  coord.Stop();
  const nlohmann::json counters = coord.Result();

  // Fragment rounds of the timed part: latency from the first push (of any worker) to the last
  // update received. Every worker ran the same rounds (they stop together at a round boundary).
  const size_t P = static_cast<size_t>(o.fragments);
  const size_t first_timed = static_cast<size_t>(o.warmup) * P;
  const size_t fragment_rounds = results.front().push_ns.size();
  for (const auto& r : results) {
    if (r.push_ns.size() != fragment_rounds || r.update_ns.size() != fragment_rounds)
      throw CommandError(fmt::format("{} workers: the workers ran different numbers of rounds", workers));
  }
  if (fragment_rounds <= first_timed)
    throw CommandError(fmt::format("{} workers: no timed round ran", workers));
  std::vector<double> latency;
  int64_t start_ns = INT64_MAX, end_ns = 0;
  for (size_t i = first_timed; i < fragment_rounds; ++i) {
    int64_t first = INT64_MAX, last = 0;
    for (const auto& r : results) {
      first = std::min(first, r.push_ns[i]);
      last = std::max(last, r.update_ns[i]);
    }
    latency.push_back(1e-9 * static_cast<double>(last - first));
    start_ns = std::min(start_ns, first);
    end_ns = std::max(end_ns, last);
  }
  const int rounds = static_cast<int>(fragment_rounds / P) - o.warmup;
  const double start_s = 1e-9 * static_cast<double>(start_ns);
  const double end_s = 1e-9 * static_cast<double>(end_ns);
  const double wall = end_s - start_s;
  std::vector<double> push_s, update_s;
  double up = 0, down = 0, msg = 0;
  for (const auto& r : results) {
    push_s.insert(push_s.end(), r.push_s.begin(), r.push_s.end());
    update_s.insert(update_s.end(), r.update_s.begin(), r.update_s.end());
    up += static_cast<double>(r.at_end.sync_payload_bytes_sent - r.at_start.sync_payload_bytes_sent);
    down +=
        static_cast<double>(r.at_end.sync_payload_bytes_received - r.at_start.sync_payload_bytes_received);
    msg += static_cast<double>(r.at_end.sync_message_bytes_sent - r.at_start.sync_message_bytes_sent +
                               r.at_end.sync_message_bytes_received - r.at_start.sync_message_bytes_received);
  }
  const double ready_s = 1e-9 * static_cast<double>(sh.ready_ns.load());
  // The coordinator's CPU time over the timed rounds, between the samples just around them.
  const MemorySampler::Sample* c0 = &samples.front();
  const MemorySampler::Sample* c1 = &samples.back();
  for (const auto& s : samples) {
    if (s.t <= start_s) c0 = &s;
  }
  for (auto it = samples.rbegin(); it != samples.rend(); ++it) {
    if (it->t >= end_s) c1 = &*it;
  }
  const double cpu = c1->proc.cpu_seconds - c0->proc.cpu_seconds;
  const double cpu_span = c1->t - c0->t;
  nlohmann::json point = {
      {"workers", workers},
      {"rounds", rounds},
      {"warmup_rounds", o.warmup},
      {"fragment_rounds", latency.size()},
      {"coordinator_start_seconds", port_s},
      {"setup_seconds", ready_s},
      {"timed_seconds", wall},
      {"rounds_per_second", rounds / wall},
      {"fragment_rounds_per_second", static_cast<double>(latency.size()) / wall},
      {"round_latency_seconds", Distribution(latency)},
      {"push_seconds", Distribution(push_s)},
      {"get_update_seconds", Distribution(update_s)},
      {"payload_bytes_up", up},
      {"payload_bytes_down", down},
      {"payload_bytes_per_second", (up + down) / wall},
      {"payload_bytes_up_per_second", up / wall},
      {"payload_bytes_down_per_second", down / wall},
      {"message_bytes_per_second", msg / wall},
      {"coordinator_cpu_seconds", cpu},
      {"coordinator_cpu_cores", cpu_span > 0 ? cpu / cpu_span : 0.0},
      {"coordinator_cpu_per_fragment_round_seconds", cpu / static_cast<double>(latency.size())},
      {"bench_process_cpu_seconds", self_cpu},
      {"load_average_1m", {{"start", load_before}, {"end", LoadAverage()}}},
      {"coordinator_rss", MemoryReport(samples, ready_s, start_s, end_s)},
      {"coordinator_counters", counters}};
  // The coordinator's own count says whether every round really closed with all N contributions.
  if (counters.is_object()) {
    const auto expect = static_cast<uint64_t>(o.warmup + rounds) * P;
    const auto closed = counters.value("rounds_closed", uint64_t{0});
    const auto contributions = counters.value("contributions", uint64_t{0});
    const auto at_deadline = counters.value("rounds_closed_at_deadline", uint64_t{0});
    if (closed != expect || contributions != expect * static_cast<uint64_t>(workers) || at_deadline != 0) {
      throw CommandError(
          fmt::format("{} workers: the coordinator closed {} rounds ({} at their deadline) with {} "
                      "contributions; expected "
                      "{} rounds with {} each",
                      workers, closed, at_deadline, contributions, expect, workers));
    }
  }
  if (o.progress) {
    fmt::print(stderr, "{:>3} workers: {:.2f} rounds/s, fragment round p50 {:.1f} ms p99 {:.1f} ms, RSS {}\n",
               workers, rounds / wall, 1e3 * Percentile(latency, 0.5), 1e3 * Percentile(latency, 0.99),
               point["coordinator_rss"]["flat"].get<bool>() ? "flat" : "GROWING");
  }
  return point;
}

void CheckOptions(const LoadBenchOptions& o) {
  auto bad = [](const std::string& what) { throw CommandError(what, 2); };
  if (o.workers.empty()) bad("--workers: give at least one worker count");
  for (int w : o.workers) {
    if (w < 1 || w > 1024) bad(fmt::format("--workers: {} is outside 1..1024", w));
  }
  if (o.rounds < (o.seconds > 0 ? 0 : 1)) bad("--rounds: must be at least 1 (0 = no limit, with --seconds)");
  if (o.seconds < 0) bad("--seconds: must be >= 0");
  if (o.warmup < 0) bad("--warmup: must be >= 0");
  if (o.fragments < 1 || o.fragments > 256) bad("--fragments: must be in 1..256");
  if (o.params < o.fragments)
    bad(fmt::format("--params: {} values cannot fill {} fragments", o.params, o.fragments));
  if (o.sample_ms < 10) bad("--sample-ms: must be at least 10");
  if (!(o.round_timeout_s > 0)) bad("--round-timeout: must be positive");
  auto format = quant::ParseFormat(o.codec);
  if (!format.ok()) bad("--codec: " + format.status().message());
  quant::CodecSpec spec;
  spec.format = *format;
  spec.block_size = static_cast<uint32_t>(std::max(0, o.block));
  if (Status s = quant::Validate(spec); !s.ok()) bad("--block: " + s.message());
}

}  // namespace

nlohmann::json RunLoadBench(const LoadBenchOptions& o) {
  CheckOptions(o);
  const std::string self = o.self.empty() ? SelfPath() : o.self;
  const auto t0 = Clock::now();
  nlohmann::json points = nlohmann::json::array();
  for (int w : o.workers) points.push_back(RunPoint(o, w, self));
  quant::CodecSpec spec;
  spec.format = *quant::ParseFormat(o.codec);
  spec.block_size = static_cast<uint32_t>(o.block);
  uint64_t per_round = 0;
  for (const auto& t : SyntheticSignature(o.params, o.fragments).tensors)
    per_round += quant::EncodedSize(spec, t.element_count());
  return {{"bench", "load"},
          {"cores", std::thread::hardware_concurrency()},
          {"params", o.params},
          {"fragments", o.fragments},
          {"codec", quant::FormatName(spec.format)},
          {"block", o.block},
          {"payload_bytes_per_worker_round", per_round},
          {"rounds_requested", o.rounds},
          {"seconds_requested", o.seconds},
          {"warmup_rounds", o.warmup},
          {"checkpoint_every", o.checkpoint_every},
          {"sample_ms", o.sample_ms},
          {"total_seconds", Seconds(Clock::now() - t0)},
          {"points", points}};
}

std::string LoadBenchTable(const nlohmann::json& r) {
  std::string out = fmt::format(
      "one coordinator process, N synthetic workers over loopback gRPC ({} cores); {} fp32 values in {} "
      "fragments, "
      "{} ({} per worker per round); {} warmup rounds first\n",
      r["cores"].get<int>(), r["params"].get<int64_t>(), r["fragments"].get<int>(),
      r["codec"].get<std::string>(), comm::HumanBytes(r["payload_bytes_per_worker_round"].get<double>()),
      r["warmup_rounds"].get<int>());
  out += fmt::format("{:>7} {:>6} {:>8} {:>9} {:>9} {:>7} {:>12} {:>6} {:>9} {:>9} {:>9} {:>9} {:>5}\n",
                     "workers", "rounds", "rounds/s", "frag p50", "frag p99", "setup", "payload/s", "coord",
                     "RSS start", "RSS mid", "RSS end", "RSS max", "flat");
  for (const auto& p : r["points"]) {
    const auto& m = p["coordinator_rss"];
    const auto& lat = p["round_latency_seconds"];
    out += fmt::format(
        "{:>7} {:>6} {:>8.3f} {:>7.1f}ms {:>7.1f}ms {:>6.1f}s {:>10}/s {:>5.0f}% {:>5.0f} MiB {:>5.0f} MiB "
        "{:>5.0f} MiB "
        "{:>5.0f} MiB {:>5}\n",
        p["workers"].get<int>(), p["rounds"].get<int>(), p["rounds_per_second"].get<double>(),
        1e3 * lat["p50"].get<double>(), 1e3 * lat["p99"].get<double>(), p["setup_seconds"].get<double>(),
        comm::HumanBytes(p["payload_bytes_per_second"].get<double>()),
        100 * p["coordinator_cpu_cores"].get<double>(), m["timed_start_mib"].get<double>(),
        m["timed_mid_mib"].get<double>(), m["timed_end_mib"].get<double>(), m["max_mib"].get<double>(),
        m["flat"].get<bool>() ? "yes" : "NO");
  }
  out +=
      "rounds/s: full rounds (every fragment once, all N contributions each). frag p50/p99: one fragment "
      "round, from "
      "the first push to the last worker holding its update. setup: start to every worker joined and holding "
      "the "
      "state. payload/s: contributions up + updates down. coord: the coordinator's CPU over the timed "
      "rounds, % of "
      "one core. RSS start/mid/end: the coordinator's resident memory over the first tenth, the tenth from "
      "the "
      "middle and the last tenth of the timed rounds (medians); max: the highest sample of the whole point "
      "(bootstrap included); flat: end - mid <= max(8 MiB, 5%).\n";
  return out;
}

}  // namespace lowband::tools
