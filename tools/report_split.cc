// `lowband report` for split-learning client runs: the directories `lowband split-client --out DIR`
// writes (tools/cmd_split.cc; docs/run-outputs.md), compared as one set. A run is recognised by its
// summary.json (IsSplitSummary: "task" or "final_bits_histogram", no "algo"); its held-out accuracy
// (classify) or perplexity (lm) is set against the fp32 run of the same task, next to what crossed the
// cut: mean bits each way, bytes per example with every overhead (headers and AMAQ bit maps) and the
// saving over fp32. Plots: held-out metric vs step (one per task), each AMAQ run's mean bits on the
// wire against its target schedule (metrics/split-client.jsonl train lines; summary bits_curve when the
// log is missing), the AMAQ runs' final bit-width histograms, and held-out metric vs bytes per example
// (one point per run, one plot per task). Reading, formatting and gnuplot are report.cc's
// (tools/report_internal.h).
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "tools/report.h"
#include "tools/report_internal.h"

namespace lowband::tools {

namespace fs = std::filesystem;
using nlohmann::json;
// NOLINTNEXTLINE(google-build-using-namespace): the helpers shared with report.cc.
using namespace report_internal;

namespace {

std::string SplitHint(const fs::path& dir) {
  return fmt::format("run `lowband split-client --config FILE --server HOST:PORT --out {}` first",
                     dir.string());
}

struct SplitEvalPoint {
  int64_t step = 0;
  double loss = 0;
  std::optional<double> accuracy;  // 0..1 (classify)
  std::optional<double> perplexity, wall_seconds;
};

// A train line of metrics/split-client.jsonl (or a point of summary bits_curve).
struct SplitTrainPoint {
  int64_t step = 0;
  std::optional<double> loss, accuracy, bits_up, bits_down, target_bits, bytes_per_example, wall_seconds;
};

struct SplitRun {
  fs::path dir;
  std::string name;  // the directory's name
  std::string task, codec, grad_codec;
  std::optional<int64_t> bits, grad_bits, cut, lora_rank, seed, steps, examples, eval_examples, reconnects;
  double final_eval_loss = 0;
  std::optional<double> final_accuracy, final_perplexity;
  std::vector<SplitEvalPoint> eval_curve;
  std::optional<double> mean_bits_up, mean_bits_down;
  std::vector<double> final_bits_histogram;  // channels at 2..8 bits
  std::optional<double> bytes_up, bytes_down, bitmap_bytes_up, bitmap_bytes_down;
  double bytes_per_example = 0;
  std::optional<double> fp32_bytes_per_example, compression_vs_fp32;
  double wall_seconds = 0;

  std::vector<SplitTrainPoint> train;  // sorted by step
  bool train_from_bits_curve = false;
  bool has_metrics = false;
  int64_t metrics_lines = 0, bad_metrics_lines = 0;

  bool Amaq() const { return codec == "amaq"; }
  std::optional<double> BitmapBytes() const {
    if (!bitmap_bytes_up && !bitmap_bytes_down) {
      return std::nullopt;
    }
    return bitmap_bytes_up.value_or(0) + bitmap_bytes_down.value_or(0);
  }
};

// ---------------------------------------------------------------------------------------------------
// The held-out metric: accuracy in % for classify, perplexity for lm, eval loss for anything else.

std::string MetricName(const std::string& task) {
  return task == "classify" ? "accuracy" : (task == "lm" ? "perplexity" : "eval loss");
}

std::optional<double> MetricOf(const std::string& task, double loss, const std::optional<double>& accuracy,
                               const std::optional<double>& perplexity) {
  if (task == "classify") {
    return accuracy ? std::optional<double>(*accuracy * 100) : std::nullopt;
  }
  if (task == "lm") {
    return perplexity ? perplexity : std::optional<double>(std::exp(loss));
  }
  return loss;
}

std::optional<double> FinalMetric(const SplitRun& r) {
  return MetricOf(r.task, r.final_eval_loss, r.final_accuracy, r.final_perplexity);
}

std::string MetricCell(const std::string& task, const std::optional<double>& v) {
  return Cell(v, task == "classify" ? "{:.2f}%" : (task == "lm" ? "{:.3f}" : "{:.4f}"));
}

// The fp32 run of the task of runs[i] with the same seed (paired), else the first fp32 run of the task.
std::optional<size_t> Fp32Baseline(const std::vector<SplitRun>& runs, size_t i) {
  std::optional<size_t> first;
  for (size_t j = 0; j < runs.size(); ++j) {
    if (runs[j].codec == "fp32" && runs[j].task == runs[i].task) {
      if (runs[j].seed == runs[i].seed) {
        return j;
      }
      if (!first) {
        first = j;
      }
    }
  }
  return first;
}

// runs[i]'s final metric against runs[j]'s: accuracy in percentage points, perplexity as a relative
// change in %, eval loss as a difference.
std::optional<double> Delta(const std::vector<SplitRun>& runs, size_t i, size_t j) {
  const auto m = FinalMetric(runs[i]), b = FinalMetric(runs[j]);
  if (!m || !b) {
    return std::nullopt;
  }
  if (runs[i].task == "lm") {
    return *b > 0 ? std::optional<double>((*m / *b - 1) * 100) : std::nullopt;
  }
  return *m - *b;
}

std::optional<double> DeltaVsFp32(const std::vector<SplitRun>& runs, size_t i) {
  const auto base = Fp32Baseline(runs, i);
  return base ? Delta(runs, i, *base) : std::nullopt;
}

// Whether a Delta is an improvement: higher accuracy, lower perplexity or loss.
bool Better(const std::string& task, double delta) { return task == "classify" ? delta > 0 : delta < 0; }

std::string DeltaUnit(const std::string& task) {
  return task == "classify" ? "points" : (task == "lm" ? "percent" : "loss");
}

std::string DeltaCell(const std::vector<SplitRun>& runs, size_t i) {
  const auto base = Fp32Baseline(runs, i);
  if (base && *base == i) {
    return "baseline";
  }
  const std::string& task = runs[i].task;
  return Cell(DeltaVsFp32(runs, i),
              task == "classify" ? "{:+.2f} pt" : (task == "lm" ? "{:+.1f}%" : "{:+.4f}"));
}

// "amaq 4-bit budget", "fixed 4-bit", "fp32"; ", grads fp32" when the gradients use another codec.
std::string CodecLabel(const SplitRun& r) {
  std::string out = r.codec;
  if (r.bits && r.codec == "amaq") {
    out += fmt::format(" {}-bit budget", *r.bits);
  } else if (r.bits && r.codec == "fixed") {
    out += fmt::format(" {}-bit", *r.bits);
  }
  if (!r.grad_codec.empty() && r.grad_codec != "follow") {
    out += ", grads " + r.grad_codec;
    if (r.grad_bits && r.grad_bits != r.bits && r.grad_codec != "fp32")
      out += fmt::format(" {}-bit", *r.grad_bits);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Several seeds: the runs of one task and codec that differ in their seed form a group; groups are
// compared seed by seed (paired), which removes the variation every codec shares (data order, LoRA
// init) from the comparison.

struct SeedGroup {
  std::string task, label;   // label: CodecLabel
  std::vector<size_t> runs;  // indices into the runs, one per seed, in seed order
};

struct Spread {
  size_t n = 0;
  double mean = 0, sd = 0, min = 0, max = 0;  // sd: sample standard deviation (0 for n = 1)
};

Spread SpreadOf(const std::vector<double>& v) {
  Spread s;
  s.n = v.size();
  if (v.empty()) {
    return s;
  }
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  for (const double x : v) {
    s.mean += x / static_cast<double>(v.size());
  }
  if (v.size() > 1) {
    double ss = 0;
    for (const double x : v) {
      ss += (x - s.mean) * (x - s.mean);
    }
    s.sd = std::sqrt(ss / static_cast<double>(v.size() - 1));
  }
  return s;
}

// Groups of runs with a seed, by task and codec label; empty unless some group has two seeds or more
// (a set of single-seed runs needs no second table). A seed given twice in a group keeps its first run.
std::vector<SeedGroup> SeedGroups(const std::vector<SplitRun>& runs) {
  std::vector<SeedGroup> groups;
  bool several = false;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (!runs[i].seed) {
      continue;
    }
    const std::string label = CodecLabel(runs[i]);
    auto g = std::find_if(groups.begin(), groups.end(),
                          [&](const SeedGroup& x) { return x.task == runs[i].task && x.label == label; });
    if (g == groups.end()) {
      groups.push_back({runs[i].task, label, {}});
      g = groups.end() - 1;
    }
    const bool repeated =
        std::any_of(g->runs.begin(), g->runs.end(), [&](size_t j) { return runs[j].seed == runs[i].seed; });
    if (!repeated) {
      g->runs.push_back(i);
      several = several || g->runs.size() > 1;
    }
  }
  if (!several) {
    return {};
  }
  for (SeedGroup& g : groups) {
    std::sort(g.runs.begin(), g.runs.end(),
              [&](size_t a, size_t b) { return *runs[a].seed < *runs[b].seed; });
  }
  return groups;
}

// Delta of group a's run against group b's run of the same seed, for every seed both have.
std::vector<double> PairedDeltas(const std::vector<SplitRun>& runs, const SeedGroup& a, const SeedGroup& b) {
  std::vector<double> out;
  for (const size_t i : a.runs) {
    for (const size_t j : b.runs) {
      if (runs[i].seed == runs[j].seed) {
        if (const auto d = Delta(runs, i, j)) {
          out.push_back(*d);
        }
      }
    }
  }
  return out;
}

// How a run's gradients are coded, up to what makes two runs comparable: gradients that follow the
// activations' map, are fixed at the activations' width or learn their own widths at that budget all
// spend the activations' budget, so AMAQ with any of them is set against fixed b-bit.
std::string GradsAtTheBudget(const SplitRun& r) {
  // Summaries write the resolved width for fixed and amaq gradients and none for follow and fp32.
  const bool same_bits = !r.grad_bits || r.grad_bits == r.bits;
  const bool at_budget =
      r.grad_codec == "follow" || ((r.grad_codec == "amaq" || r.grad_codec == "fixed") && same_bits);
  return at_budget ? std::string("budget") : r.grad_codec;
}

// AMAQ at a budget of b bits set against fixed b-bit of the same task, when both groups exist.
std::vector<std::pair<size_t, size_t>> AmaqVsFixed(const std::vector<SplitRun>& runs,
                                                   const std::vector<SeedGroup>& groups) {
  std::vector<std::pair<size_t, size_t>> pairs;
  for (size_t a = 0; a < groups.size(); ++a) {
    const SplitRun& ra = runs[groups[a].runs.front()];
    if (!ra.Amaq() || !ra.bits) {
      continue;
    }
    for (size_t f = 0; f < groups.size(); ++f) {
      const SplitRun& rf = runs[groups[f].runs.front()];
      if (rf.codec == "fixed" && rf.bits == ra.bits && rf.task == ra.task &&
          GradsAtTheBudget(rf) == GradsAtTheBudget(ra)) {
        pairs.emplace_back(a, f);
      }
    }
  }
  return pairs;
}

std::optional<size_t> Fp32Group(const std::vector<SplitRun>& runs, const std::vector<SeedGroup>& groups,
                                const std::string& task) {
  for (size_t g = 0; g < groups.size(); ++g) {
    if (groups[g].task == task && runs[groups[g].runs.front()].codec == "fp32") {
      return g;
    }
  }
  return std::nullopt;
}

std::string SeedList(const std::vector<SplitRun>& runs, const std::vector<size_t>& idx) {
  std::string out;
  for (const size_t i : idx) {
    out += (out.empty() ? "" : ",") + std::to_string(*runs[i].seed);
  }
  return out;
}

std::string SpreadCell(const Spread& s, const char* unit, int precision) {
  if (s.n == 0) {
    return std::string(kDash);
  }
  return fmt::format("{:+.{}f} ± {:.{}f}{}", s.mean, precision, s.sd, precision, unit);
}

// What the "Across seeds" section and the `seeds` JSON show, computed once.
struct GroupStats {
  Spread metric, bits, bytes, saving;
  std::optional<Spread> vs_fp32;  // paired by seed; not for the fp32 group itself
};
struct AmaqFixedStats {
  size_t amaq = 0, fixed = 0;  // group indices
  Spread delta;                // AMAQ - fixed, paired by seed
  int64_t better = 0, tied = 0, worse = 0;
};

std::vector<GroupStats> StatsOf(const std::vector<SplitRun>& runs, const std::vector<SeedGroup>& groups) {
  std::vector<GroupStats> out;
  for (const SeedGroup& g : groups) {
    std::vector<double> metric, bits, bytes, saving;
    for (const size_t i : g.runs) {
      if (const auto m = FinalMetric(runs[i])) {
        metric.push_back(*m);
      }
      if (runs[i].mean_bits_up) {
        bits.push_back(*runs[i].mean_bits_up);
      }
      bytes.push_back(runs[i].bytes_per_example);
      if (runs[i].compression_vs_fp32) {
        saving.push_back(*runs[i].compression_vs_fp32);
      }
    }
    GroupStats st{SpreadOf(metric), SpreadOf(bits), SpreadOf(bytes), SpreadOf(saving), std::nullopt};
    if (const auto f = Fp32Group(runs, groups, g.task); f && runs[g.runs.front()].codec != "fp32") {
      st.vs_fp32 = SpreadOf(PairedDeltas(runs, g, groups[*f]));
    }
    out.push_back(st);
  }
  return out;
}

std::vector<AmaqFixedStats> AmaqFixedOf(const std::vector<SplitRun>& runs,
                                        const std::vector<SeedGroup>& groups) {
  std::vector<AmaqFixedStats> out;
  for (const auto& [a, f] : AmaqVsFixed(runs, groups)) {
    const std::vector<double> d = PairedDeltas(runs, groups[a], groups[f]);
    AmaqFixedStats st{a, f, SpreadOf(d), 0, 0, 0};
    for (const double x : d) {
      if (x == 0) {
        ++st.tied;
      } else if (Better(groups[a].task, x)) {
        ++st.better;
      } else {
        ++st.worse;
      }
    }
    out.push_back(st);
  }
  return out;
}

std::string SeedsMarkdown(const std::vector<SplitRun>& runs, const std::vector<SeedGroup>& groups) {
  std::string md = "## Across seeds\n\n";
  md +=
      "| task | codec | seeds | held-out metric: mean ± sd | min .. max | vs fp32, paired by seed | mean "
      "bits up "
      "| bytes / example | fewer bytes than fp32 |\n|---|---|---|--:|--:|--:|--:|--:|--:|\n";
  const std::vector<GroupStats> stats = StatsOf(runs, groups);
  for (size_t k = 0; k < groups.size(); ++k) {
    const SeedGroup& g = groups[k];
    const GroupStats& st = stats[k];
    const int digits = g.task == "lm" ? 3 : 2;
    const std::string unit = g.task == "classify" ? "%" : "";
    const std::string vs_fp32 =
        st.vs_fp32 ? SpreadCell(*st.vs_fp32, g.task == "classify" ? " pt" : "%", 2) : std::string(kDash);
    md += fmt::format("| {} | {} | {} | {:.{}f} ± {:.{}f}{} | {:.{}f} .. {:.{}f} | {} | {} | {} | {} |\n",
                      Md(g.task), Md(g.label), SeedList(runs, g.runs), st.metric.mean, digits, st.metric.sd,
                      digits, unit, st.metric.min, digits, st.metric.max, digits, vs_fp32,
                      st.bits.n ? fmt::format("{:.2f}", st.bits.mean) : std::string(kDash),
                      HumanBytes(st.bytes.mean),
                      st.saving.n ? fmt::format("{:.2f}x", st.saving.mean) : std::string(kDash));
  }
  const std::vector<AmaqFixedStats> pairs = AmaqFixedOf(runs, groups);
  if (!pairs.empty()) {
    md +=
        "\nAMAQ against fixed width at its budget, seed by seed (same seed: same data order, LoRA init and "
        "rounding draws):\n\n| task | AMAQ | against | seeds | AMAQ − fixed: mean ± sd | standard error | "
        "AMAQ "
        "better / tied / worse |\n|---|---|---|---|--:|--:|--:|\n";
    for (const AmaqFixedStats& p : pairs) {
      const std::string& task = groups[p.amaq].task;
      const char* unit = task == "classify" ? " pt" : "%";
      md += fmt::format(
          "| {} | {} | {} | {} | {} | {} | {} / {} / {} |\n", Md(task), Md(groups[p.amaq].label),
          Md(groups[p.fixed].label), p.delta.n, SpreadCell(p.delta, unit, 2),
          p.delta.n > 1
              ? fmt::format("{:.2f}{}", p.delta.sd / std::sqrt(static_cast<double>(p.delta.n)), unit)
              : std::string(kDash),
          p.better, p.tied, p.worse);
    }
  }
  md +=
      "\nA group is every run of one task and codec with a `seed` in its summary.json; sd is the sample "
      "standard deviation over seeds. \"vs fp32\" and \"AMAQ − fixed\" pair runs of the same seed and "
      "average the differences (accuracy in points, perplexity in %); higher accuracy and lower perplexity "
      "are better.\n\n";
  return md;
}

json SeedsJson(const std::vector<SplitRun>& runs, const std::vector<SeedGroup>& groups) {
  json out = {{"groups", json::array()}, {"amaq_vs_fixed", json::array()}};
  const std::vector<GroupStats> stats = StatsOf(runs, groups);
  for (size_t k = 0; k < groups.size(); ++k) {
    const SeedGroup& g = groups[k];
    const GroupStats& st = stats[k];
    json seeds = json::array();
    for (const size_t i : g.runs) {
      seeds.push_back(*runs[i].seed);
    }
    json entry = {{"task", g.task},
                  {"codec_label", g.label},
                  {"seeds", seeds},
                  {"metric", MetricName(g.task)},
                  {"metric_mean", st.metric.mean},
                  {"metric_sd", st.metric.sd},
                  {"metric_min", st.metric.min},
                  {"metric_max", st.metric.max}};
    if (st.vs_fp32) {
      entry["delta_vs_fp32_mean"] = st.vs_fp32->mean;
      entry["delta_vs_fp32_sd"] = st.vs_fp32->sd;
      entry["delta_unit"] = DeltaUnit(g.task);
    }
    out["groups"].push_back(entry);
  }
  for (const AmaqFixedStats& p : AmaqFixedOf(runs, groups)) {
    out["amaq_vs_fixed"].push_back({{"task", groups[p.amaq].task},
                                    {"amaq", groups[p.amaq].label},
                                    {"fixed", groups[p.fixed].label},
                                    {"seeds", p.delta.n},
                                    {"delta_mean", p.delta.mean},
                                    {"delta_sd", p.delta.sd},
                                    {"delta_unit", DeltaUnit(groups[p.amaq].task)},
                                    {"amaq_better", p.better},
                                    {"tied", p.tied},
                                    {"amaq_worse", p.worse}});
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Reading

Status ParseSplitSummary(const fs::path& file, const json& s, SplitRun* run) {
  FieldReader r(file, SplitHint(file.parent_path()));
  if (!s.is_object()) {
    return r.WrongType("(top level)", "a JSON object", s);
  }
  LOWBAND_RETURN_IF_ERROR(r.String(s, "task", "task", &run->task, /*required=*/true));
  LOWBAND_RETURN_IF_ERROR(r.String(s, "codec", "codec", &run->codec, /*required=*/true));
  LOWBAND_RETURN_IF_ERROR(r.Integer(s, "steps", "steps", &run->steps, /*required=*/true));
  std::optional<double> loss, per_example, wall;
  LOWBAND_RETURN_IF_ERROR(r.Number(s, "final_eval_loss", "final_eval_loss", &loss, /*required=*/true));
  LOWBAND_RETURN_IF_ERROR(
      r.Number(s, "bytes_per_example", "bytes_per_example", &per_example, /*required=*/true));
  LOWBAND_RETURN_IF_ERROR(r.Number(s, "wall_seconds", "wall_seconds", &wall, /*required=*/true));
  run->final_eval_loss = *loss;
  run->bytes_per_example = *per_example;
  run->wall_seconds = *wall;
  LOWBAND_RETURN_IF_ERROR(
      r.Number(s, "final_accuracy", "final_accuracy", &run->final_accuracy, run->task == "classify"));
  LOWBAND_RETURN_IF_ERROR(r.String(s, "grad_codec", "grad_codec", &run->grad_codec));
  for (const auto& [key, out] : {std::pair<const char*, std::optional<int64_t>*>{"bits", &run->bits},
                                 {"grad_bits", &run->grad_bits},
                                 {"cut", &run->cut},
                                 {"seed", &run->seed},
                                 {"lora_rank", &run->lora_rank},
                                 {"examples", &run->examples},
                                 {"eval_examples", &run->eval_examples},
                                 {"reconnects", &run->reconnects}}) {
    LOWBAND_RETURN_IF_ERROR(r.Integer(s, key, key, out));
  }
  for (const auto& [key, out] :
       {std::pair<const char*, std::optional<double>*>{"final_perplexity", &run->final_perplexity},
        {"mean_bits_up", &run->mean_bits_up},
        {"mean_bits_down", &run->mean_bits_down},
        {"bytes_up", &run->bytes_up},
        {"bytes_down", &run->bytes_down},
        {"bitmap_bytes_up", &run->bitmap_bytes_up},
        {"bitmap_bytes_down", &run->bitmap_bytes_down},
        {"fp32_bytes_per_example", &run->fp32_bytes_per_example},
        {"compression_vs_fp32", &run->compression_vs_fp32}}) {
    LOWBAND_RETURN_IF_ERROR(r.Number(s, key, key, out));
  }
  LOWBAND_RETURN_IF_ERROR(
      r.NumberArray(s, "final_bits_histogram", "final_bits_histogram", &run->final_bits_histogram));
  const auto eval_point = [&](const json& e, const std::string& at) -> Status {
    SplitEvalPoint p;
    std::optional<int64_t> step;
    std::optional<double> point_loss;
    LOWBAND_RETURN_IF_ERROR(r.Integer(e, "step", at + ".step", &step, /*required=*/true));
    LOWBAND_RETURN_IF_ERROR(r.Number(e, "loss", at + ".loss", &point_loss, /*required=*/true));
    p.step = *step;
    p.loss = *point_loss;
    LOWBAND_RETURN_IF_ERROR(r.Number(e, "accuracy", at + ".accuracy", &p.accuracy));
    LOWBAND_RETURN_IF_ERROR(r.Number(e, "perplexity", at + ".perplexity", &p.perplexity));
    LOWBAND_RETURN_IF_ERROR(r.Number(e, "wall_seconds", at + ".wall_seconds", &p.wall_seconds));
    run->eval_curve.push_back(p);
    return Status::Ok();
  };
  LOWBAND_RETURN_IF_ERROR(r.ObjectArray(s, "eval_curve", "eval_curve", "an array of {step, loss, ...}",
                                        eval_point, /*required=*/true));
  SortByStep(&run->eval_curve);

  // The allocator's schedule, the fallback for the bits plot when the metrics log is gone.
  if (const json* bits = FieldReader::Find(s, "bits_curve"); bits != nullptr && bits->is_array()) {
    for (const json& e : *bits) {
      if (!e.is_object() || !NumberOf(e, "step")) {
        continue;
      }
      SplitTrainPoint p;
      p.step = static_cast<int64_t>(*NumberOf(e, "step"));
      p.bits_up = NumberOf(e, "mean_bits");
      p.target_bits = NumberOf(e, "target");
      run->train.push_back(p);
    }
    run->train_from_bits_curve = !run->train.empty();
  }
  return Status::Ok();
}

void LoadSplitMetrics(SplitRun* run) {
  const fs::path path = run->dir / "metrics" / "split-client.jsonl";
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    spdlog::warn("{}: not found; the bits plot falls back to summary.json bits_curve", path.string());
    return;
  }
  run->has_metrics = true;
  std::vector<SplitTrainPoint> train;
  const auto [lines, bad] = ForEachJsonLine(path, [&](const json& obj) {
    const auto event = obj.find("event");
    const auto step = NumberOf(obj, "step");
    if (event == obj.end() || *event != "train" || !step) {
      return;
    }
    SplitTrainPoint p;
    p.step = static_cast<int64_t>(*step);
    p.loss = NumberOf(obj, "loss");
    p.accuracy = NumberOf(obj, "accuracy");
    p.bits_up = NumberOf(obj, "bits_up");
    p.bits_down = NumberOf(obj, "bits_down");
    p.target_bits = NumberOf(obj, "target_bits");
    p.bytes_per_example = NumberOf(obj, "bytes_per_example");
    p.wall_seconds = NumberOf(obj, "wall_seconds");
    train.push_back(p);
  });
  run->metrics_lines = lines;
  run->bad_metrics_lines = bad;
  if (!train.empty()) {
    SortByStep(&train);
    run->train = std::move(train);
    run->train_from_bits_curve = false;
  }
}

// A split run from DIR/summary.json, already read (`summary`), and DIR/metrics/.
StatusOr<SplitRun> LoadSplitRun(const fs::path& dir, const json& summary) {
  SplitRun run;
  run.dir = dir;
  run.name = DirName(dir);
  LOWBAND_RETURN_IF_ERROR(ParseSplitSummary(dir / "summary.json", summary, &run));
  LoadSplitMetrics(&run);
  return run;
}

// ---------------------------------------------------------------------------------------------------
// Plots

std::vector<std::string> Tasks(const std::vector<SplitRun>& runs) {
  std::vector<std::string> tasks;
  for (const SplitRun& r : runs) {
    if (std::find(tasks.begin(), tasks.end(), r.task) == tasks.end()) {
      tasks.push_back(r.task);
    }
  }
  return tasks;
}

std::string Title(const std::string& task) {
  return task == "classify" ? "Held-out accuracy (%)" : "Held-out " + MetricName(task);
}

std::string EvalData(const SplitRun& r) {
  std::string out = fmt::format(
      "# {} ({}): held-out set (summary.json eval_curve)\n# step loss accuracy_percent perplexity "
      "wall_seconds\n",
      r.name, r.task);
  for (const SplitEvalPoint& e : r.eval_curve) {
    const auto accuracy = e.accuracy ? std::optional<double>(*e.accuracy * 100) : std::nullopt;
    const auto perplexity =
        r.task == "lm" ? MetricOf("lm", e.loss, std::nullopt, e.perplexity) : e.perplexity;
    out += fmt::format("{} {} {} {} {}\n", e.step, Dat(e.loss), Dat(accuracy), Dat(perplexity),
                       Dat(e.wall_seconds));
  }
  return out;
}

std::string TrainData(const SplitRun& r) {
  std::string out = fmt::format(
      "# {}: {}\n# step loss accuracy_percent bits_up bits_down target_bits bytes_per_example "
      "wall_seconds\n",
      r.name,
      r.train_from_bits_curve ? "summary.json bits_curve (allocator mean bits and target)"
                              : "metrics/split-client.jsonl train lines");
  for (const SplitTrainPoint& t : r.train) {
    const auto accuracy = t.accuracy ? std::optional<double>(*t.accuracy * 100) : std::nullopt;
    out += fmt::format("{} {} {} {} {} {} {} {}\n", t.step, Dat(t.loss), Dat(accuracy), Dat(t.bits_up),
                       Dat(t.bits_down), Dat(t.target_bits), Dat(t.bytes_per_example), Dat(t.wall_seconds));
  }
  return out;
}

// Column of EvalData that holds the task's metric.
int MetricColumn(const std::string& task) { return task == "classify" ? 3 : (task == "lm" ? 4 : 2); }

Plot MetricVsStep(const std::vector<SplitRun>& runs, const std::vector<std::string>& slugs,
                  const std::string& task) {
  const std::string what = Title(task);
  Plot p{"split_" + SafeName(task) + "_vs_step", fmt::format("{} vs step ({})", what, task), "", ""};
  std::vector<std::string> items;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (runs[i].task != task || runs[i].eval_curve.empty()) {
      continue;
    }
    items.push_back(fmt::format("\"{}.eval.dat\" using 1:{} with linespoints lw 2 pt 7 ps 0.8 lc {} title {}",
                                slugs[i], MetricColumn(task), Color(i), GpString(runs[i].name)));
  }
  if (items.empty()) {
    p.skip = "no " + task + " run has eval points";
    return p;
  }
  p.body = fmt::format("set title {}\nset xlabel \"step\"\nset ylabel {}\nset key bottom right\n",
                       GpString(fmt::format("{} vs step, {} runs", what, task)), GpString(what)) +
           PlotCommand(items);
  return p;
}

Plot BitsVsStep(const SplitRun& r, size_t index, const std::string& slug) {
  Plot p{"split_bits_" + slug, fmt::format("Mean bits on the wire vs step: {}", r.name), "", ""};
  const bool any =
      std::any_of(r.train.begin(), r.train.end(), [](const SplitTrainPoint& t) { return t.bits_up; });
  if (!any) {
    p.skip = fmt::format("{}: no train lines with bits_up in metrics/split-client.jsonl", r.name);
    return p;
  }
  std::vector<std::string> items = {
      fmt::format("\"{}.train.dat\" using 1:4 with linespoints lw 2 pt 7 ps 0.5 lc {} title \"activations "
                  "(up)\"",
                  slug, Color(index))};
  if (std::any_of(r.train.begin(), r.train.end(), [](const SplitTrainPoint& t) { return t.bits_down; })) {
    items.push_back(
        fmt::format("\"{}.train.dat\" using 1:5 with lines lw 1 dt 3 lc {} title \"gradients (down)\"", slug,
                    Color(index + 1)));
  }
  items.push_back(fmt::format(
      "\"{}.train.dat\" using 1:6 with steps lw 2 dt 2 lc rgb \"#000000\" title \"target schedule\"", slug));
  p.body = fmt::format(
      "set title {}\nset xlabel \"step\"\nset ylabel \"mean code bits per value\"\nset yrange [1.5:8.5]\n",
      GpString(fmt::format("{}: mean bits on the wire vs target ({}){}", r.name, CodecLabel(r),
                           r.train_from_bits_curve ? " [summary bits_curve]" : "")));
  p.body += PlotCommand(items);
  return p;
}

Plot BitsHistogram(const std::vector<SplitRun>& runs, std::string* data) {
  Plot p{"split_bits_histogram", "Final bit widths of the AMAQ runs", "", ""};
  std::vector<size_t> amaq;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (runs[i].Amaq() && !runs[i].final_bits_histogram.empty()) {
      amaq.push_back(i);
    }
  }
  if (amaq.empty()) {
    p.skip = "no AMAQ run has final_bits_histogram";
    return p;
  }
  *data = "# channels at each bit width at the end (summary.json final_bits_histogram)\n# bits";
  size_t widths = 0;
  for (const size_t i : amaq) {
    *data += " " + SafeName(runs[i].name);
    widths = std::max(widths, runs[i].final_bits_histogram.size());
  }
  *data += "\n";
  for (size_t w = 0; w < widths; ++w) {
    *data += fmt::format("{}", w + 2);
    for (const size_t i : amaq) {
      const auto& h = runs[i].final_bits_histogram;
      *data += " " + (w < h.size() ? Dat(h[w]) : std::string("?"));
    }
    *data += "\n";
  }
  std::vector<std::string> items;
  for (size_t k = 0; k < amaq.size(); ++k) {
    items.push_back(fmt::format("\"split_bits_histogram.dat\" using {}{} title {} lc {}", k + 2,
                                k == 0 ? ":xtic(1)" : "", GpString(runs[amaq[k]].name), Color(amaq[k])));
  }
  p.body =
      "set title \"Final bit width per channel (AMAQ)\"\nset style data histograms\n"
      "set style histogram clustered gap 1\nset style fill solid 0.85 border -1\nset boxwidth 0.9\n"
      "set xlabel \"bits\"\nset ylabel \"channels\"\nset yrange [0:*]\n" +
      PlotCommand(items);
  return p;
}

Plot MetricVsBytes(const std::vector<SplitRun>& runs, const std::string& task, std::string* data) {
  const std::string what = Title(task);
  Plot p{"split_" + SafeName(task) + "_vs_bytes", fmt::format("{} vs bytes per example ({})", what, task), "",
         ""};
  double max_bytes = 0;
  for (const SplitRun& r : runs) {
    if (r.task == task) {
      max_bytes = std::max(max_bytes, r.bytes_per_example);
    }
  }
  const Unit unit = ByteUnit(max_bytes);
  *data = fmt::format("# {} runs: bytes per example ({}, up + down, every overhead) {} name colour\n", task,
                      unit.name, MetricName(task));
  double lo = 0, hi = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const SplitRun& r = runs[i];
    const auto metric = FinalMetric(r);
    if (r.task != task || !metric || r.bytes_per_example <= 0) {
      continue;
    }
    const double x = r.bytes_per_example / unit.divisor;
    lo = lo == 0 ? x : std::min(lo, x);
    hi = std::max(hi, x);
    const int rgb = std::stoi(std::string(kColors[i % kColors.size()]), nullptr, 16);
    *data += fmt::format("{} {} {} {}\n", Dat(x), Dat(metric), GpString(r.name), rgb);
  }
  if (hi == 0) {
    p.skip = "no " + task + " run has a held-out metric and positive bytes_per_example";
    return p;
  }
  const std::string file = p.name + ".dat";
  // Log x, with room on the right for the run-name labels.
  p.body = fmt::format(
      "set title {}\nset logscale x\nset format x \"%g\"\nset xrange [{:.6g}:{:.6g}]\n"
      "set offsets 0, 0, graph 0.1, graph 0.1\nset xlabel \"bytes per example ({}, log scale)\"\n"
      "set ylabel {}\nset key off\n",
      GpString(fmt::format("{} vs bytes per example, {} runs (final evaluation)", what, task)), lo / 1.5,
      hi * 3, unit.name, GpString(what));
  p.body +=
      PlotCommand({fmt::format("\"{}\" using 1:2:4 with points pt 7 ps 1.8 lc rgb variable notitle", file),
                   fmt::format("\"{}\" using 1:2:3 with labels offset char 1.2,0.6 left notitle", file)});
  return p;
}

// ---------------------------------------------------------------------------------------------------
// report.md and --json

std::string Markdown(const std::string& title, const std::vector<SplitRun>& runs,
                     const std::vector<Plot>& plots, const Gnuplot& gnuplot,
                     const std::vector<std::string>& plot_notes) {
  std::vector<fs::path> dirs;
  dirs.reserve(runs.size());
  for (const SplitRun& r : runs) {
    dirs.push_back(r.dir);
  }
  const std::vector<std::string> tasks = Tasks(runs);
  std::string metric_header = "held-out " + MetricName(tasks.front());
  if (tasks.size() > 1) {
    metric_header = "held-out metric (classify: accuracy, lm: perplexity)";
  }
  std::string md = MarkdownHeader(title, dirs) + "## Split-learning runs\n\n";
  md += fmt::format(
      "| run | task | codec | steps | {} | vs fp32 | mean bits up / down | bytes / example | bit-map bytes | "
      "fewer bytes than fp32 | wall s |\n|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
      metric_header);
  for (size_t i = 0; i < runs.size(); ++i) {
    const SplitRun& r = runs[i];
    std::string bitmap(kDash);
    if (const auto b = r.BitmapBytes()) {
      const double total = r.bytes_up.value_or(0) + r.bytes_down.value_or(0);
      bitmap = HumanBytes(*b) + (total > 0 ? fmt::format(" ({:.2g}%)", *b / total * 100) : "");
    }
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |\n", Md(r.name),
                      Md(r.task), Md(CodecLabel(r)), IntCell(r.steps), MetricCell(r.task, FinalMetric(r)),
                      DeltaCell(runs, i), Cell(r.mean_bits_up, "{:.2f}"), Cell(r.mean_bits_down, "{:.2f}"),
                      HumanBytes(r.bytes_per_example), bitmap, Cell(r.compression_vs_fp32, "{:.2f}x"),
                      Cell(r.wall_seconds, "{:.1f}"));
  }
  md +=
      "\nHeld-out accuracy (classify) or perplexity (lm) is the client's final evaluation (its bottom "
      "and the server's top on the held-out batches). \"vs fp32\" compares it with the fp32 run of the "
      "same task: accuracy in percentage points, perplexity as a relative change (lower is better); — "
      "when no fp32 run of that task is given. Mean bits are the code bits per value that crossed the "
      "cut, averaged over the steps (activations up, gradients down; 32 for fp32). Bytes / example is "
      "(bytes up + bytes down) / examples over the training steps: every byte of every AMAQ payload "
      "(header, per-channel min and scale, codes, bit maps), not gRPC framing, targets or evaluation "
      "traffic; bit-map bytes are the maps alone, both ways (share of all bytes). \"Fewer "
      "bytes than fp32\" is summary.json's `compression_vs_fp32`: what the same values would take in "
      "fp32 (4 bytes each, both ways) over the bytes sent.\n\n";

  md +=
      "## Settings\n\n| run | cut | LoRA rank | grad codec | examples | eval examples | bytes up | bytes "
      "down "
      "| reconnects |\n|---|--:|--:|---|--:|--:|--:|--:|--:|\n";
  for (const SplitRun& r : runs) {
    const auto bytes = [](const std::optional<double>& b) { return b ? HumanBytes(*b) : std::string(kDash); };
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", Md(r.name), IntCell(r.cut),
                      IntCell(r.lora_rank), r.grad_codec.empty() ? std::string(kDash) : Md(r.grad_codec),
                      IntCell(r.examples), IntCell(r.eval_examples), bytes(r.bytes_up), bytes(r.bytes_down),
                      IntCell(r.reconnects));
  }

  if (const std::vector<SeedGroup> groups = SeedGroups(runs); !groups.empty()) {
    md += SeedsMarkdown(runs, groups);
  }
  md += "\n" + PlotsMarkdown(plots, gnuplot, plot_notes);
  md += "## Metrics files\n\n";
  for (const SplitRun& r : runs) {
    if (!r.has_metrics) {
      md += fmt::format("- `{}`: no metrics/split-client.jsonl{}\n", Md(r.name),
                        r.train_from_bits_curve ? " (bits plot from summary.json bits_curve)" : "");
      continue;
    }
    md += fmt::format("- `{}`: metrics/split-client.jsonl, {} line(s), {} train line(s)", Md(r.name),
                      r.metrics_lines, r.train_from_bits_curve ? 0 : r.train.size());
    if (r.bad_metrics_lines > 0) {
      md += fmt::format(", **{} skipped** (not JSON; a run killed mid-write leaves a partial last line)",
                        r.bad_metrics_lines);
    }
    md += "\n";
  }
  return md;
}

json Table(const std::vector<SplitRun>& runs) {
  const auto opt = [](const auto& v) { return v ? json(*v) : json(nullptr); };
  json baselines = json::object();
  for (size_t i = 0; i < runs.size(); ++i) {
    if (const auto base = Fp32Baseline(runs, i)) {
      baselines[runs[i].task] = runs[*base].name;
    }
  }
  json table = {{"kind", "split"}, {"baselines", baselines}, {"runs", json::array()}};
  if (const std::vector<SeedGroup> groups = SeedGroups(runs); !groups.empty()) {
    table["seeds"] = SeedsJson(runs, groups);
  }
  for (size_t i = 0; i < runs.size(); ++i) {
    const SplitRun& r = runs[i];
    const auto base = Fp32Baseline(runs, i);
    json histogram = json::array();  // channel counts
    for (const double c : r.final_bits_histogram) {
      histogram.push_back(std::llround(c));
    }
    table["runs"].push_back({
        {"name", r.name},
        {"dir", r.dir.string()},
        {"task", r.task},
        {"codec", r.codec},
        {"bits", opt(r.bits)},
        {"grad_codec", r.grad_codec.empty() ? json(nullptr) : json(r.grad_codec)},
        {"codec_label", CodecLabel(r)},
        {"seed", opt(r.seed)},
        {"steps", opt(r.steps)},
        {"examples", opt(r.examples)},
        {"final_eval_loss", r.final_eval_loss},
        {"final_accuracy", opt(r.final_accuracy)},
        {"final_perplexity", opt(r.task == "lm" ? FinalMetric(r) : r.final_perplexity)},
        {"metric", MetricName(r.task)},
        {"fp32_baseline", base ? json(runs[*base].name) : json(nullptr)},
        {"delta_vs_fp32", opt(DeltaVsFp32(runs, i))},
        {"delta_unit", DeltaUnit(r.task)},
        {"mean_bits_up", opt(r.mean_bits_up)},
        {"mean_bits_down", opt(r.mean_bits_down)},
        {"bytes_per_example", r.bytes_per_example},
        {"bytes_up", opt(r.bytes_up)},
        {"bytes_down", opt(r.bytes_down)},
        {"bitmap_bytes", opt(r.BitmapBytes())},
        {"compression_vs_fp32", opt(r.compression_vs_fp32)},
        {"wall_seconds", r.wall_seconds},
        {"reconnects", opt(r.reconnects)},
        {"final_bits_histogram", histogram},
        {"bad_metrics_lines", r.bad_metrics_lines},
    });
  }
  return table;
}

}  // namespace

namespace report_internal {

bool IsSplitSummary(const json& summary) {
  return summary.is_object() && !summary.contains("algo") &&
         (summary.contains("task") || summary.contains("final_bits_histogram"));
}

StatusOr<ReportResult> WriteSplitReport(const ReportOptions& options, const std::vector<json>& summaries) {
  if (summaries.size() != options.runs.size()) {
    return InvalidArgument(
        fmt::format("report: {} run directories but {} summaries", options.runs.size(), summaries.size()));
  }
  std::vector<SplitRun> runs;
  ReportResult result;
  for (size_t i = 0; i < options.runs.size(); ++i) {
    const fs::path& dir = options.runs[i];
    spdlog::info("report: reading {} (split-learning run)", dir.string());
    LOWBAND_ASSIGN_OR_RETURN(SplitRun run, LoadSplitRun(dir, summaries[i]));
    result.bad_metrics_lines += run.bad_metrics_lines;
    runs.push_back(std::move(run));
  }
  MakeNamesUnique(&runs);
  LOWBAND_ASSIGN_OR_RETURN(result.out_dir,
                           PrepareOutDir(options, runs.size() == 1 ? runs[0].dir : fs::path()));
  const fs::path dir = result.out_dir;

  std::vector<std::string> slugs;
  for (size_t i = 0; i < runs.size(); ++i) {
    slugs.push_back(Slug(i, runs[i].name));
    LOWBAND_RETURN_IF_ERROR(WriteFile(dir / (slugs[i] + ".eval.dat"), EvalData(runs[i])));
    if (!runs[i].train.empty()) {
      LOWBAND_RETURN_IF_ERROR(WriteFile(dir / (slugs[i] + ".train.dat"), TrainData(runs[i])));
    }
  }

  const Gnuplot gnuplot = ProbeGnuplot(options.gnuplot, dir, options.gnuplot_timeout_seconds);
  const std::vector<std::string> tasks = Tasks(runs);
  std::vector<Plot> plots;
  plots.reserve(2 * tasks.size() + runs.size() + 1);
  for (const std::string& task : tasks) {
    plots.push_back(MetricVsStep(runs, slugs, task));
  }
  for (size_t i = 0; i < runs.size(); ++i) {
    if (runs[i].Amaq()) {
      plots.push_back(BitsVsStep(runs[i], i, slugs[i]));
    }
  }
  std::string histogram;
  plots.push_back(BitsHistogram(runs, &histogram));
  if (!histogram.empty()) {
    LOWBAND_RETURN_IF_ERROR(WriteFile(dir / "split_bits_histogram.dat", histogram));
  }
  for (const std::string& task : tasks) {
    std::string data;
    plots.push_back(MetricVsBytes(runs, task, &data));
    if (!plots.back().body.empty()) {
      LOWBAND_RETURN_IF_ERROR(WriteFile(dir / (plots.back().name + ".dat"), data));
    }
  }
  LOWBAND_RETURN_IF_ERROR(RenderPlots(&plots, dir, gnuplot, options, &result));

  std::string title = options.title;
  if (title.empty()) {
    title = runs.size() == 1 ? "lowband report: " + runs[0].name
                             : fmt::format("lowband report: {} split-learning runs", runs.size());
  }
  result.report_md = dir / "report.md";
  LOWBAND_RETURN_IF_ERROR(
      WriteFile(result.report_md, Markdown(title, runs, plots, gnuplot, result.plot_notes)));
  result.table = Table(runs);
  result.table["report"] = result.report_md.string();
  spdlog::info("report: wrote {} ({} plot(s))", result.report_md.string(), result.plots.size());
  return result;
}

}  // namespace report_internal
}  // namespace lowband::tools
