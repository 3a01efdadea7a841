#include "tools/bench_site.h"

#if defined(LOWBAND_HAVE_ENGINE)

#include <algorithm>
#include <chrono>
#include <thread>

#include <fmt/format.h>
#include <torch/torch.h>

#include "comm/ports.h"
#include "tools/command.h"
#include "worker/collectives.h"
#include "worker/inner_optimizer.h"
#include "worker/model.h"
#include "worker/torch_runtime.h"

namespace lowband::tools {
namespace {

using Clock = std::chrono::steady_clock;

template <typename T>
T Get(StatusOr<T> v, const std::string& what) {
  if (!v.ok()) throw CommandError(what + ": " + v.status().ToString());
  return std::move(*v);
}

void Check(const Status& s, const std::string& what) {
  if (!s.ok()) throw CommandError(what + ": " + s.ToString());
}

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A random batch of token windows (timing only: the values do not matter, the shapes do).
worker::Batch TokenBatch(const RunConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t T = c.data.seq_len, B = c.data.batch_size;
  auto seq = torch::randint(0, c.model.vocab, {B, T + 1}, torch::kInt64);
  return {seq.narrow(1, 0, T).contiguous(), seq.narrow(1, 1, T).contiguous(), torch::Tensor()};
}

struct Timings {
  double single_step = 0;        // one rank alone
  double site_step = 0;          // slowest rank of the site, per step
  double site_allreduce = 0;     // its all-reduce share, per step
  double allreduce_alone = 0;    // slowest rank, per all-reduce
  double side_by_side_step = 0;  // slowest of R ranks stepping alone at the same time
  int64_t parameters = 0;
};

// Runs body(rank, group) on R threads with a fresh group each time; rethrows the first failure.
template <typename F>
void OnRanks(int ranks, F&& body) {
  const std::string store = fmt::format("127.0.0.1:{}", comm::FreeLoopbackPort());
  std::vector<std::string> errors(static_cast<size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        // One compute thread per rank, as in a worker process: OpenMP's thread count is per thread.
        Check(worker::ConfigureTorchThreads({1, 0}), "LibTorch threads");
        auto group =
            Get(worker::DataParallelGroup::Create({store, r, ranks, std::chrono::seconds(120), "bench site"}),
                "rendezvous");
        body(r, *group);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& e : errors) {
    if (!e.empty()) throw CommandError(e);
  }
}

// One round: one rank alone (on a thread of its own with one compute thread, exactly like each rank
// of the site); then R ranks stepping alone side by side; the site of R ranks (the same per-rank
// batch, gradients all-reduced every step); and the all-reduce of the same gradients alone.
Timings MeasureRound(const RunConfig& c, const SiteBenchOptions& o) {
  Timings t;
  std::thread([&] {
    Check(worker::ConfigureTorchThreads({1, 0}), "LibTorch threads");
    auto model = Get(worker::MakeModel(c.model, c.seed), "model");
    auto opt = Get(worker::InnerOptimizer::Create(*model, c.inner), "optimizer");
    t.parameters = worker::NumParameters(*model);
    const worker::Batch batch = TokenBatch(c, 1);
    for (int i = 0; i < o.warmup; ++i) Get(opt->Step(*model, batch), "step");
    const auto t0 = Clock::now();
    for (int i = 0; i < o.steps; ++i) Get(opt->Step(*model, batch), "step");
    t.single_step = Since(t0) / o.steps;
  }).join();
  std::vector<double> step(static_cast<size_t>(o.ranks)), reduce(step.size()), alone(step.size()),
      apart(step.size());
  OnRanks(o.ranks, [&](int r, worker::DataParallelGroup& g) {
    auto model = Get(worker::MakeModel(c.model, c.seed), "model");
    auto opt = Get(worker::InnerOptimizer::Create(*model, c.inner), "optimizer");
    const worker::Batch batch = TokenBatch(c, 1 + static_cast<uint64_t>(r));
    // (d) The R ranks side by side, each stepping alone: what sharing the machine costs, without the site.
    for (int i = 0; i < o.warmup; ++i) Get(opt->Step(*model, batch), "step");
    Check(g.CheckIdentical(0, "barrier"), "barrier");
    const auto t3 = Clock::now();
    for (int i = 0; i < o.steps; ++i) Get(opt->Step(*model, batch), "step");
    apart[static_cast<size_t>(r)] = Since(t3) / o.steps;
    double in_reduce = 0;
    auto site_step = [&](bool timed) {
      Get(opt->ForwardBackward(*model, batch), "forward/backward");
      const auto t1 = Clock::now();
      Check(g.AllReduceMean(*model), "all-reduce");
      if (timed) in_reduce += Since(t1);
      Check(opt->ApplyStep(), "optimizer step");
    };
    for (int i = 0; i < o.warmup; ++i) site_step(false);
    Check(g.CheckIdentical(0, "barrier"), "barrier");
    const auto t0 = Clock::now();
    for (int i = 0; i < o.steps; ++i) site_step(true);
    step[static_cast<size_t>(r)] = Since(t0) / o.steps;
    reduce[static_cast<size_t>(r)] = in_reduce / o.steps;
    for (int i = 0; i < o.warmup; ++i) Check(g.AllReduceMean(*model), "all-reduce");
    Check(g.CheckIdentical(0, "barrier"), "barrier");
    const auto t2 = Clock::now();
    for (int i = 0; i < o.steps; ++i) Check(g.AllReduceMean(*model), "all-reduce");
    alone[static_cast<size_t>(r)] = Since(t2) / o.steps;
  });
  const auto slowest = std::max_element(step.begin(), step.end()) - step.begin();
  t.site_step = step[static_cast<size_t>(slowest)];
  t.site_allreduce = reduce[static_cast<size_t>(slowest)];
  t.allreduce_alone = *std::max_element(alone.begin(), alone.end());
  t.side_by_side_step = *std::max_element(apart.begin(), apart.end());
  return t;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Rounds interleave the three measurements, so that a slow spell of a shared machine hits them alike;
// each figure is the median over rounds.
Timings Measure(const RunConfig& c, const SiteBenchOptions& o) {
  std::vector<double> single, site, reduce, alone, apart;
  Timings t;
  for (int round = 0; round < o.rounds; ++round) {
    t = MeasureRound(c, o);
    single.push_back(t.single_step);
    site.push_back(t.site_step);
    reduce.push_back(t.site_allreduce);
    alone.push_back(t.allreduce_alone);
    apart.push_back(t.side_by_side_step);
  }
  t.single_step = Median(single);
  t.site_step = Median(site);
  t.site_allreduce = Median(reduce);
  t.allreduce_alone = Median(alone);
  t.side_by_side_step = Median(apart);
  return t;
}

}  // namespace

nlohmann::json RunSiteBench(const RunConfig& config, const SiteBenchOptions& o) {
  if (config.model.kind != "gpt") throw CommandError("bench site times the GPT (model.kind gpt)", 2);
  if (o.ranks < 2) throw CommandError("--ranks must be at least 2", 2);
  Check(worker::ConfigureTorchThreads({1, 1}), "LibTorch threads");
  std::vector<int> widths = o.widths;
  if (widths.empty()) widths.push_back(config.model.d_model);
  nlohmann::json rows = nlohmann::json::array();
  for (int w : widths) {
    RunConfig c = config;
    c.model.d_model = w;
    if (w % c.model.n_heads != 0)
      throw CommandError(fmt::format("width {} is not divisible by model.n_heads {}", w, c.model.n_heads), 2);
    const Timings t = Measure(c, o);
    // What the site costs beyond R ranks sharing the machine, as a multiple of its all-reduce alone.
    const double overhead = t.site_step - t.side_by_side_step;
    nlohmann::json row = {
        {"d_model", w},
        {"parameters", t.parameters},
        {"gradient_bytes", t.parameters * 4},
        {"single_step_seconds", t.single_step},
        {"side_by_side_step_seconds", t.side_by_side_step},
        {"site_step_seconds", t.site_step},
        {"site_allreduce_seconds", t.site_allreduce},
        {"allreduce_alone_seconds", t.allreduce_alone},
        {"site_overhead_seconds", overhead},
        {"overhead_over_allreduce_alone", t.allreduce_alone > 0 ? overhead / t.allreduce_alone : 0.0},
        {"site_throughput_ratio", t.site_step > 0 ? o.ranks * t.single_step / t.site_step : 0.0}};
    if (o.progress) {
      fmt::print(
          stderr,
          "d_model {:>5}: one rank {:.1f} ms/step, {} side by side {:.1f}, site {:.1f}, all-reduce alone "
          "{:.2f} ms\n",
          w, 1e3 * t.single_step, o.ranks, 1e3 * t.side_by_side_step, 1e3 * t.site_step,
          1e3 * t.allreduce_alone);
    }
    rows.push_back(row);
  }
  return {{"bench", "site"},
          {"ranks", o.ranks},
          {"cores", std::thread::hardware_concurrency()},
          {"batch_size", config.data.batch_size},
          {"seq_len", config.data.seq_len},
          {"n_layers", config.model.n_layers},
          {"steps", o.steps},
          {"rounds", o.rounds},
          {"rows", rows}};
}

std::string SiteBenchTable(const nlohmann::json& r) {
  std::string out = fmt::format(
      "site of {} ranks (threads over loopback Gloo, {} cores), batch {} x {} tokens per rank; medians of {} "
      "rounds of {} timed steps\n",
      r["ranks"].get<int>(), r["cores"].get<int>(), r["batch_size"].get<int>(), r["seq_len"].get<int>(),
      r["rounds"].get<int>(), r["steps"].get<int>());
  out += fmt::format("{:>7} {:>9} {:>10} {:>13} {:>9} {:>11} {:>12} {:>14} {:>11}\n", "d_model", "params",
                     "1 rank ms", "side/side ms", "site ms", "in-step AR", "AR alone ms", "overhead / AR",
                     "throughput");
  for (const auto& row : r["rows"]) {
    auto ms = [&](const char* key) { return 1e3 * row[key].get<double>(); };
    out += fmt::format("{:>7} {:>9} {:>10.1f} {:>13.1f} {:>9.1f} {:>11.1f} {:>12.2f} {:>14.2f} {:>10.2f}x\n",
                       row["d_model"].get<int>(), row["parameters"].get<int64_t>(), ms("single_step_seconds"),
                       ms("side_by_side_step_seconds"), ms("site_step_seconds"), ms("site_allreduce_seconds"),
                       ms("allreduce_alone_seconds"), row["overhead_over_allreduce_alone"].get<double>(),
                       row["site_throughput_ratio"].get<double>());
  }
  out +=
      "side/side: the ranks stepping alone at the same time (what sharing the machine costs). overhead / AR: "
      "(site "
      "step - side/side step) / all-reduce alone, 1 = the site costs its all-reduce and nothing else. "
      "in-step AR "
      "includes waiting for the slower rank. throughput: the site's tokens/s over one rank alone.\n";
  return out;
}

}  // namespace lowband::tools

#endif  // LOWBAND_HAVE_ENGINE
