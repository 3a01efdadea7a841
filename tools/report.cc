#include "tools/report.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string_view>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

extern char** environ;

namespace lowband::tools {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr std::string_view kLaunchHint = "run `lowband launch --config FILE --workers M --out {}` first";

std::string LaunchHint(const fs::path& dir) { return fmt::format(fmt::runtime(kLaunchHint), dir.string()); }

// ---------------------------------------------------------------------------------------------------
// summary.json

// "string \"abc\"", "number 3", "null", ... for error messages.
std::string Describe(const json& v) {
  std::string text = v.dump();
  if (text.size() > 40) {
    text = text.substr(0, 37) + "...";
  }
  return fmt::format("{} {}", v.type_name(), text);
}

// Reads typed fields of one JSON object of summary.json; every error names the file and the field.
class FieldReader {
 public:
  explicit FieldReader(fs::path file) : file_(std::move(file)) {}

  Status WrongType(const std::string& field, std::string_view expected, const json& got) const {
    return InvalidArgument(
        fmt::format("{}: field \"{}\" must be {}, got {}", file_.string(), field, expected, Describe(got)));
  }
  Status Missing(const std::string& field, std::string_view expected) const {
    return InvalidArgument(fmt::format("{}: required field \"{}\" ({}) is missing; {}", file_.string(), field,
                                       expected, LaunchHint(file_.parent_path())));
  }

  // The member `key` of `obj`, or nullptr when absent or null.
  static const json* Find(const json& obj, std::string_view key) {
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) {
      return nullptr;
    }
    return &*it;
  }

  Status Number(const json& obj, std::string_view key, const std::string& field, std::optional<double>* out,
                bool required = false) const {
    const json* v = Find(obj, key);
    if (v == nullptr) {
      return required ? Missing(field, "a number") : Status::Ok();
    }
    if (!v->is_number()) {
      return WrongType(field, "a number", *v);
    }
    *out = v->get<double>();
    return Status::Ok();
  }

  Status Integer(const json& obj, std::string_view key, const std::string& field,
                 std::optional<int64_t>* out) const {
    const json* v = Find(obj, key);
    if (v == nullptr) {
      return Status::Ok();
    }
    if (v->is_number_integer() || v->is_number_unsigned()) {
      *out = v->get<int64_t>();
      return Status::Ok();
    }
    if (v->is_number_float()) {
      const double d = v->get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e18) {
        *out = static_cast<int64_t>(d);
        return Status::Ok();
      }
    }
    return WrongType(field, "an integer", *v);
  }

  Status String(const json& obj, std::string_view key, const std::string& field, std::string* out,
                bool required = false) const {
    const json* v = Find(obj, key);
    if (v == nullptr) {
      return required ? Missing(field, "a string") : Status::Ok();
    }
    if (!v->is_string()) {
      return WrongType(field, "a string", *v);
    }
    *out = v->get<std::string>();
    return Status::Ok();
  }

  Status Bool(const json& obj, std::string_view key, const std::string& field,
              std::optional<bool>* out) const {
    const json* v = Find(obj, key);
    if (v == nullptr) {
      return Status::Ok();
    }
    if (!v->is_boolean()) {
      return WrongType(field, "true or false", *v);
    }
    *out = v->get<bool>();
    return Status::Ok();
  }

 private:
  fs::path file_;
};

StatusOr<std::string> ReadWholeFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return NotFound(fmt::format("{}: cannot open: {}", path.string(), std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return DataLoss(fmt::format("{}: read error", path.string()));
  }
  return text.str();
}

Status WriteFile(const fs::path& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return PermissionDenied(fmt::format("{}: cannot write: {}", path.string(), std::strerror(errno)));
  }
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  if (!out) {
    return DataLoss(fmt::format("{}: write failed", path.string()));
  }
  return Status::Ok();
}

// Numeric member or nullopt (metrics are best-effort: a wrong type is treated as absent).
std::optional<double> NumberOf(const json& obj, std::string_view key) {
  const auto it = obj.find(key);
  if (it == obj.end() || !it->is_number()) {
    return std::nullopt;
  }
  return it->get<double>();
}

Status ParseSummary(const fs::path& file, const json& s, RunData* run) {
  FieldReader r(file);
  if (!s.is_object()) {
    return r.WrongType("(top level)", "a JSON object", s);
  }

  LOWBAND_RETURN_IF_ERROR(r.String(s, "algo", "algo", &run->algo, /*required=*/true));
  LOWBAND_RETURN_IF_ERROR(r.String(s, "name", "name", &run->name));
  LOWBAND_RETURN_IF_ERROR(r.String(s, "codec", "codec", &run->codec));
  LOWBAND_RETURN_IF_ERROR(r.Integer(s, "workers", "workers", &run->workers));
  LOWBAND_RETURN_IF_ERROR(r.Integer(s, "steps", "steps", &run->steps));
  LOWBAND_RETURN_IF_ERROR(r.Integer(s, "tokens", "tokens", &run->tokens));
  LOWBAND_RETURN_IF_ERROR(r.Integer(s, "H", "H", &run->H));
  LOWBAND_RETURN_IF_ERROR(r.Integer(s, "fragments", "fragments", &run->fragments));
  LOWBAND_RETURN_IF_ERROR(r.Integer(s, "tau", "tau", &run->tau));
  LOWBAND_RETURN_IF_ERROR(r.Number(s, "alpha", "alpha", &run->alpha));
  LOWBAND_RETURN_IF_ERROR(r.Bool(s, "error_feedback", "error_feedback", &run->error_feedback));
  LOWBAND_RETURN_IF_ERROR(r.Number(s, "final_eval_loss", "final_eval_loss", &run->final_eval_loss));
  LOWBAND_RETURN_IF_ERROR(r.Number(s, "bytes_up", "bytes_up", &run->bytes_up));
  LOWBAND_RETURN_IF_ERROR(r.Number(s, "bytes_down", "bytes_down", &run->bytes_down));
  LOWBAND_RETURN_IF_ERROR(r.Number(s, "bootstrap_bytes", "bootstrap_bytes", &run->bootstrap_bytes));
  std::optional<double> wall;
  LOWBAND_RETURN_IF_ERROR(r.Number(s, "wall_seconds", "wall_seconds", &wall, /*required=*/true));
  run->wall_seconds = *wall;
  LOWBAND_RETURN_IF_ERROR(r.Number(s, "compute_seconds", "compute_seconds", &run->compute_seconds));
  LOWBAND_RETURN_IF_ERROR(r.Number(s, "stall_seconds", "stall_seconds", &run->stall_seconds));
  LOWBAND_RETURN_IF_ERROR(
      r.Number(s, "compute_utilization", "compute_utilization", &run->compute_utilization));

  const json* bpw = FieldReader::Find(s, "bytes_per_worker");
  if (bpw == nullptr) {
    return r.Missing("bytes_per_worker", "an array of numbers");
  }
  if (!bpw->is_array()) {
    return r.WrongType("bytes_per_worker", "an array of numbers", *bpw);
  }
  for (size_t i = 0; i < bpw->size(); ++i) {
    const json& v = (*bpw)[i];
    if (!v.is_number()) {
      return r.WrongType(fmt::format("bytes_per_worker[{}]", i), "a number", v);
    }
    run->bytes_per_worker.push_back(v.get<double>());
  }

  const json* curve = FieldReader::Find(s, "eval_curve");
  if (curve == nullptr) {
    return r.Missing("eval_curve", "an array of {step, eval_loss, ...}");
  }
  if (!curve->is_array()) {
    return r.WrongType("eval_curve", "an array of objects", *curve);
  }
  for (size_t i = 0; i < curve->size(); ++i) {
    const json& e = (*curve)[i];
    const std::string at = fmt::format("eval_curve[{}]", i);
    if (!e.is_object()) {
      return r.WrongType(at, "an object", e);
    }
    EvalPoint p;
    std::optional<int64_t> step;
    LOWBAND_RETURN_IF_ERROR(r.Integer(e, "step", at + ".step", &step));
    if (!step) {
      return r.Missing(at + ".step", "an integer");
    }
    p.step = *step;
    std::optional<double> loss;
    LOWBAND_RETURN_IF_ERROR(r.Number(e, "eval_loss", at + ".eval_loss", &loss, /*required=*/true));
    p.eval_loss = *loss;
    LOWBAND_RETURN_IF_ERROR(r.Number(e, "wall_seconds", at + ".wall_seconds", &p.wall_seconds));
    LOWBAND_RETURN_IF_ERROR(r.Number(e, "bytes", at + ".bytes", &p.bytes));
    LOWBAND_RETURN_IF_ERROR(r.Number(e, "tokens", at + ".tokens", &p.tokens));
    run->eval_curve.push_back(p);
  }
  std::stable_sort(run->eval_curve.begin(), run->eval_curve.end(),
                   [](const EvalPoint& a, const EvalPoint& b) { return a.step < b.step; });

  LOWBAND_RETURN_IF_ERROR(
      r.Number(s, "final_eval_accuracy", "final_eval_accuracy", &run->final_eval_accuracy));
  LOWBAND_RETURN_IF_ERROR(
      r.Bool(s, "global_state_identical", "global_state_identical", &run->global_state_identical));
  // The coordinator's own result file, copied in by `lowband launch`: best effort, it is only shown.
  if (const json* coordinator = FieldReader::Find(s, "coordinator");
      coordinator && coordinator->is_object()) {
    if (const auto rounds = NumberOf(*coordinator, "rounds_closed")) {
      CoordinatorStats stats;
      stats.rounds = static_cast<int64_t>(*rounds);
      stats.contributions = NumberOf(*coordinator, "contributions");
      stats.late_pushes = NumberOf(*coordinator, "late_pushes");
      stats.bytes_in = NumberOf(*coordinator, "sync_bytes_in");
      stats.bytes_out = NumberOf(*coordinator, "sync_bytes_out");
      run->coordinator = stats;
    }
  }

  const json* link = FieldReader::Find(s, "link");
  if (link != nullptr) {
    if (!link->is_object()) {
      return r.WrongType("link", "an object or null", *link);
    }
    LinkInfo info;
    LOWBAND_RETURN_IF_ERROR(r.Number(*link, "rate_mbit", "link.rate_mbit", &info.rate_mbit));
    LOWBAND_RETURN_IF_ERROR(r.Number(*link, "latency_ms", "link.latency_ms", &info.latency_ms));
    LOWBAND_RETURN_IF_ERROR(r.String(*link, "kind", "link.kind", &info.kind));
    run->link = info;
  }
  LOWBAND_RETURN_IF_ERROR(r.Number(s, "step_seconds", "step_seconds", &run->step_seconds));
  LOWBAND_RETURN_IF_ERROR(r.String(s, "late", "late", &run->late));
  LOWBAND_RETURN_IF_ERROR(r.Integer(s, "parameters", "parameters", &run->parameters));
  LOWBAND_RETURN_IF_ERROR(r.Integer(s, "codec_block", "codec_block", &run->codec_block));
  if (const json* ws = FieldReader::Find(s, "worker_step_seconds"); ws != nullptr && ws->is_array()) {
    for (const json& e : *ws) {
      if (!e.is_number()) {
        return r.WrongType("worker_step_seconds", "an array of seconds", *ws);
      }
      run->worker_step_seconds.push_back(e.get<double>());
    }
  }
  if (const json* fe = FieldReader::Find(s, "fragment_elements"); fe != nullptr && fe->is_array()) {
    for (const json& e : *fe) {
      if (!e.is_number_unsigned()) {
        return r.WrongType("fragment_elements", "an array of element counts", *fe);
      }
      run->fragment_elements.push_back(e.get<uint64_t>());
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------------
// metrics/*.jsonl

// Calls `on_object` for every line of `path` that is a JSON object; returns {lines, bad lines}.
template <typename F>
std::pair<int64_t, int64_t> ForEachJsonLine(const fs::path& path, F&& on_object) {
  std::ifstream in(path);
  if (!in) {
    spdlog::warn("{}: cannot open ({}); skipped", path.string(), std::strerror(errno));
    return {0, 0};
  }
  int64_t lines = 0;
  int64_t bad = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      continue;
    }
    ++lines;
    json obj = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (obj.is_discarded() || !obj.is_object()) {
      ++bad;
      continue;
    }
    on_object(obj);
  }
  if (bad > 0) {
    spdlog::warn(
        "{}: skipped {} of {} lines that are not JSON objects (a run killed mid-write leaves a "
        "partial last line)",
        path.string(), bad, lines);
  }
  return {lines, bad};
}

// Averages of eval events over workers, keyed by step (fallback when summary.eval_curve is empty).
struct EvalAccumulator {
  double loss = 0, wall = 0, bytes = 0;
  int n = 0, n_wall = 0, n_bytes = 0;
};

void LoadMetrics(RunData* run) {
  const fs::path dir = run->dir / "metrics";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    spdlog::warn("{}: no metrics/ directory; the training-loss plot will not show this run",
                 run->dir.string());
    return;
  }
  std::vector<std::pair<int, fs::path>> workers;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string f = entry.path().filename().string();
    constexpr std::string_view kPrefix = "worker-", kSuffix = ".jsonl";
    if (f.size() <= kPrefix.size() + kSuffix.size() || !f.starts_with(kPrefix) || !f.ends_with(kSuffix)) {
      continue;
    }
    const std::string index = f.substr(kPrefix.size(), f.size() - kPrefix.size() - kSuffix.size());
    if (index.empty() || index.find_first_not_of("0123456789") != std::string::npos || index.size() > 6) {
      continue;
    }
    workers.emplace_back(std::stoi(index), entry.path());
  }
  std::sort(workers.begin(), workers.end());

  struct TrainAccumulator {
    double loss = 0, wall = 0;
    int n = 0, n_wall = 0;
  };
  std::map<int64_t, TrainAccumulator> train;  // step -> sums over workers
  std::map<int64_t, EvalAccumulator> evals;
  for (const auto& [index, path] : workers) {
    const auto [lines, bad] = ForEachJsonLine(path, [&](const json& obj) {
      const auto event = obj.find("event");
      if (event == obj.end() || !event->is_string()) {
        return;
      }
      const auto step = NumberOf(obj, "step");
      if (!step) {
        return;
      }
      if (*event == "step") {
        const auto loss = NumberOf(obj, "loss");
        if (!loss || !std::isfinite(*loss)) {
          return;
        }
        TrainAccumulator& acc = train[static_cast<int64_t>(*step)];
        acc.loss += *loss;
        ++acc.n;
        if (const auto wall = NumberOf(obj, "wall_seconds")) {
          acc.wall += *wall;
          ++acc.n_wall;
        }
      } else if (*event == "eval") {
        const auto loss = NumberOf(obj, "eval_loss");
        if (!loss || !std::isfinite(*loss)) {
          return;
        }
        EvalAccumulator& acc = evals[static_cast<int64_t>(*step)];
        acc.loss += *loss;
        ++acc.n;
        if (const auto wall = NumberOf(obj, "wall_seconds")) {
          acc.wall += *wall;
          ++acc.n_wall;
        }
        const auto up = NumberOf(obj, "bytes_up");
        const auto down = NumberOf(obj, "bytes_down");
        if (up || down) {
          acc.bytes += up.value_or(0) + down.value_or(0);
          ++acc.n_bytes;
        }
      }
    });
    ++run->worker_metrics_files;
    run->metrics_lines += lines;
    run->bad_metrics_lines += bad;
  }
  for (const auto& [step, acc] : train) {
    run->train_loss.push_back({step, acc.loss / acc.n,
                               acc.n_wall > 0 ? std::optional<double>(acc.wall / acc.n_wall) : std::nullopt});
  }
  if (run->eval_curve.empty() && !evals.empty()) {
    spdlog::info("{}: summary eval_curve is empty; using the workers' eval events", run->dir.string());
    for (const auto& [step, acc] : evals) {
      EvalPoint p;
      p.step = step;
      p.eval_loss = acc.loss / acc.n;
      if (acc.n_wall > 0) {
        p.wall_seconds = acc.wall / acc.n_wall;
      }
      if (acc.n_bytes > 0) {
        p.bytes = acc.bytes / acc.n_bytes;
      }
      run->eval_curve.push_back(p);
    }
  }

  // Round events (one per closed round) or status lines (cumulative counters, the last one wins).
  const fs::path coordinator = dir / "coordinator.jsonl";
  if (fs::exists(coordinator, ec)) {
    run->has_coordinator_metrics = true;
    CoordinatorStats from_rounds, from_status;
    bool saw_status = false;
    const auto [lines, bad] = ForEachJsonLine(coordinator, [&](const json& obj) {
      const auto event = obj.find("event");
      if (event == obj.end() || !event->is_string()) {
        return;
      }
      if (*event == "round") {
        ++from_rounds.rounds;
        from_rounds.contributions =
            from_rounds.contributions.value_or(0) + NumberOf(obj, "contributors").value_or(0);
        from_rounds.bytes_in = from_rounds.bytes_in.value_or(0) + NumberOf(obj, "bytes_in").value_or(0);
        from_rounds.bytes_out = from_rounds.bytes_out.value_or(0) + NumberOf(obj, "bytes_out").value_or(0);
      } else if (*event == "status") {
        saw_status = true;
        from_status.rounds =
            std::max(from_status.rounds, static_cast<int64_t>(NumberOf(obj, "rounds_closed").value_or(0)));
        from_status.late_pushes = NumberOf(obj, "late_pushes");
        from_status.bytes_in = NumberOf(obj, "bytes_in");
        from_status.bytes_out = NumberOf(obj, "bytes_out");
      }
    });
    run->metrics_lines += lines;
    run->bad_metrics_lines += bad;
    if (!run->coordinator) {  // summary.json's counters are final; the log may stop early
      if (from_rounds.rounds > 0) {
        run->coordinator = from_rounds;
      } else if (saw_status) {
        run->coordinator = from_status;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Formatting

constexpr std::string_view kDash = "—";

std::string Cell(const std::optional<double>& v, std::string_view format) {
  if (!v || !std::isfinite(*v)) {
    return std::string(kDash);
  }
  return fmt::format(fmt::runtime(format), *v);
}

// 1234567 -> "1.23M".
std::string HumanCount(const std::optional<int64_t>& v) {
  if (!v) {
    return std::string(kDash);
  }
  const double x = static_cast<double>(*v);
  if (std::fabs(x) >= 1e9) {
    return fmt::format("{:.3g}G", x / 1e9);
  }
  if (std::fabs(x) >= 1e6) {
    return fmt::format("{:.3g}M", x / 1e6);
  }
  if (std::fabs(x) >= 1e4) {
    return fmt::format("{:.3g}k", x / 1e3);
  }
  return fmt::format("{}", *v);
}

std::string IntCell(const std::optional<int64_t>& v) {
  return v ? fmt::format("{}", *v) : std::string(kDash);
}

// Escapes what would break a Markdown table cell or turn a name into emphasis.
std::string Md(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (c == '|' || c == '*') {
      out += '\\';  // a cell delimiter or emphasis; `_` is safe inside words (GFM)
    }
    out += (c == '\n' || c == '\r') ? ' ' : c;
  }
  return out;
}

// A double-quoted gnuplot string literal.
std::string GpString(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
    }
    out += (c == '\n' || c == '\r') ? ' ' : c;
  }
  return out + "\"";
}

// "12" or "?" (gnuplot's missing-value marker, see `set datafile missing`).
std::string Dat(const std::optional<double>& v) {
  if (!v || !std::isfinite(*v)) {
    return "?";
  }
  return fmt::format("{:.10g}", *v);
}

// The bytes ratio cell: "1", "0.02 (1/50)", "2.5".
std::string RatioCell(const std::optional<double>& ratio) {
  if (!ratio || !std::isfinite(*ratio)) {
    return std::string(kDash);
  }
  if (*ratio > 0 && *ratio < 1) {
    return fmt::format("{:.3g} (1/{:.3g})", *ratio, 1.0 / *ratio);
  }
  return fmt::format("{:.3g}", *ratio);
}

struct Unit {
  double divisor;
  std::string name;
};

Unit ByteUnit(double max_bytes) {
  static constexpr std::array<std::string_view, 5> kNames = {"B", "KiB", "MiB", "GiB", "TiB"};
  double divisor = 1;
  size_t i = 0;
  while (i + 1 < kNames.size() && max_bytes >= 1024 * divisor) {
    divisor *= 1024;
    ++i;
  }
  return {divisor, std::string(kNames[i])};
}

Unit TimeUnit(double max_seconds) {
  if (max_seconds >= 3 * 3600) {
    return {3600, "h"};
  }
  if (max_seconds >= 180) {
    return {60, "min"};
  }
  return {1, "s"};
}

// Filesystem-safe, unique stem for a run's data files.
std::string Slug(size_t index, std::string_view name) {
  std::string out = fmt::format("run{}-", index);
  for (const char c : name) {
    if (out.size() >= 48) {
      break;
    }
    const bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_' || c == '.';
    out += safe ? c : '_';
  }
  return out;
}

constexpr std::array<std::string_view, 10> kColors = {"1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd",
                                                      "8c564b", "e377c2", "7f7f7f", "bcbd22", "17becf"};

std::string Color(size_t i) { return fmt::format("rgb \"#{}\"", kColors[i % kColors.size()]); }
// The same hue, faint: transparent where the terminal has alpha (pngcairo's #AARRGGBB, AA being
// transparency), else blended towards white (libgd's png drops alpha and the raw curves would drown).
std::string FaintColor(size_t i, bool alpha) {
  const std::string_view hex = kColors[i % kColors.size()];
  if (alpha) {
    return fmt::format("rgb \"#b0{}\"", hex);
  }
  std::string out = "rgb \"#";
  for (size_t c = 0; c < 3; ++c) {
    const int v = std::stoi(std::string(hex.substr(2 * c, 2)), nullptr, 16);
    out += fmt::format("{:02x}", v + (255 - v) * 7 / 10);
  }
  return out + "\"";
}

std::optional<size_t> BaselineIndex(const std::vector<RunData>& runs) {
  for (size_t i = 0; i < runs.size(); ++i) {
    if (runs[i].algo == "ddp") {
      return i;
    }
  }
  return std::nullopt;
}

std::optional<double> BytesRatio(const std::vector<RunData>& runs, size_t i) {
  const auto base = BaselineIndex(runs);
  if (!base || runs[*base].bytes_per_worker.empty() || runs[i].bytes_per_worker.empty()) {
    return std::nullopt;
  }
  const double denom = runs[*base].MeanBytesPerWorker();
  if (denom <= 0) {
    return std::nullopt;
  }
  return runs[i].MeanBytesPerWorker() / denom;
}

// Centered moving average over `window` points (shrinking at the ends).
std::vector<double> Smooth(const std::vector<TrainPoint>& points, int window) {
  const int64_t n = static_cast<int64_t>(points.size());
  const int64_t half = std::max(0, window / 2);
  std::vector<double> prefix(points.size() + 1, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    prefix[i + 1] = prefix[i] + points[i].loss;
  }
  std::vector<double> out(points.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t lo = std::max<int64_t>(0, i - half);
    const int64_t hi = std::min(n, i + half + 1);
    out[i] = (prefix[hi] - prefix[lo]) / static_cast<double>(hi - lo);
  }
  return out;
}

int SmoothWindow(int requested, size_t points) {
  if (requested > 0) {
    return requested;
  }
  int w = static_cast<int>(points / 20);
  w = std::clamp(w, 1, 201);
  return w | 1;  // odd, so the window is centered
}

// ---------------------------------------------------------------------------------------------------
// gnuplot

struct ProcessResult {
  int exit_code = 0;
  std::string output;  // stdout + stderr
};

// Runs `argv` (argv[0] looked up on PATH) in `cwd` with stdin from /dev/null and stdout+stderr captured.
// NotFound when the program does not exist; DeadlineExceeded when it runs past the timeout.
StatusOr<ProcessResult> RunProcess(const std::vector<std::string>& argv, const fs::path& cwd,
                                   int timeout_seconds) {
  char log_template[] = "/tmp/lowband-report-XXXXXX";
  const int log_fd = ::mkstemp(log_template);
  if (log_fd < 0) {
    return Internal(fmt::format("cannot create a temporary file: {}", std::strerror(errno)));
  }
  const std::string log_path = log_template;

  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const std::string& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, log_fd, 1);
  posix_spawn_file_actions_adddup2(&actions, log_fd, 2);
  posix_spawn_file_actions_addclose(&actions, log_fd);
  posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(log_fd);
  auto cleanup = [&] { ::unlink(log_path.c_str()); };
  if (rc == ENOENT) {
    cleanup();
    return NotFound(fmt::format("\"{}\" was not found", argv[0]));
  }
  if (rc != 0) {
    cleanup();
    return Internal(fmt::format("cannot start \"{}\": {}", argv[0], std::strerror(rc)));
  }

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
  int status = 0;
  while (true) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) {
      break;
    }
    if (done < 0 && errno != EINTR) {
      cleanup();
      return Internal(fmt::format("waitpid failed: {}", std::strerror(errno)));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      cleanup();
      return DeadlineExceeded(
          fmt::format("\"{}\" did not finish within {} s and was killed", argv[0], timeout_seconds));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ProcessResult result;
  result.exit_code =
      WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  auto text = ReadWholeFile(log_path);
  if (text.ok()) {
    result.output = std::move(text).value();
  }
  cleanup();
  return result;
}

// The last few lines of `text`, for error messages.
std::string Tail(std::string text, int max_lines) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
    text.pop_back();
  }
  size_t pos = text.size();
  for (int i = 0; i < max_lines && pos != std::string::npos && pos > 0; ++i) {
    pos = text.rfind('\n', pos - 1);
  }
  return pos == std::string::npos ? text : text.substr(pos + 1);
}

struct Gnuplot {
  bool usable = false;
  std::string terminal = "pngcairo";  // what the scripts are written for
  std::string reason;                 // why it is not usable
  bool turned_off = false;            // no executable given (--no-plots)
};

Gnuplot ProbeGnuplot(const std::string& exe, const fs::path& cwd, int timeout_seconds) {
  Gnuplot g;
  if (exe.empty()) {
    g.reason = "plots were turned off (--no-plots)";
    g.turned_off = true;
    return g;
  }
  auto probe = RunProcess({exe, "-e", "set terminal"}, cwd, timeout_seconds);
  if (!probe.ok()) {
    g.reason = probe.status().code() == StatusCode::kNotFound
                   ? fmt::format("gnuplot was not found (looked for \"{}\"{})", exe,
                                 exe.find('/') == std::string::npos ? " on PATH" : "")
                   : probe.status().message();
    return g;
  }
  if (probe->exit_code != 0) {
    g.reason = fmt::format("\"{} -e 'set terminal'\" failed (exit {}): {}", exe, probe->exit_code,
                           Tail(probe->output, 3));
    return g;
  }
  std::istringstream lines(probe->output);
  bool has_png = false, has_pngcairo = false;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string first;
    words >> first;
    has_png |= first == "png";
    has_pngcairo |= first == "pngcairo";
  }
  if (!has_png && !has_pngcairo) {
    g.reason = fmt::format("\"{}\" has neither the pngcairo nor the png terminal", exe);
    return g;
  }
  g.usable = true;
  g.terminal = has_pngcairo ? "pngcairo" : "png";
  return g;
}

// One plot: a gnuplot script (without the terminal header) or why it is not drawn.
struct Plot {
  std::string name;     // file stem: NAME.gp draws NAME.png
  std::string caption;  // heading in report.md
  std::string body;     // gnuplot commands after `set output`; empty: not drawn
  std::string skip;     // why not drawn (when body is empty)
};

std::string ScriptHeader(const Plot& plot, const std::string& terminal) {
  const std::string term = terminal == "pngcairo" ? "pngcairo size 960,600 noenhanced font \"sans,10\""
                                                  : "png size 960,600 noenhanced";
  return fmt::format(
      "# Generated by `lowband report`. Edit and re-render with: gnuplot {0}.gp   (run it in this "
      "directory)\n"
      "set terminal {1}\n"
      "set output \"{0}.png\"\n"
      "set datafile missing \"?\"\n"
      "set grid\n"
      "set key top right\n",
      plot.name, term);
}

// Joins "plot a, \\\n     b".
std::string PlotCommand(const std::vector<std::string>& items) {
  std::string out = "plot ";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) {
      out += ", \\\n     ";
    }
    out += items[i];
  }
  return out + "\n";
}

struct PlotInputs {
  const std::vector<RunData>& runs;
  const std::vector<std::string>& slugs;  // data file stems, one per run
  bool alpha = true;                      // the terminal draws transparent colours
  bool simulate = false;                  // draw the simulator's curves in the utilization plot
};

Plot EvalVsStep(const PlotInputs& in) {
  Plot p{"eval_loss_vs_step", "Eval loss vs step", "", ""};
  std::vector<std::string> items;
  for (size_t i = 0; i < in.runs.size(); ++i) {
    if (in.runs[i].eval_curve.empty()) {
      continue;
    }
    items.push_back(fmt::format("\"{}.eval.dat\" using 1:2 with linespoints lw 2 pt 7 ps 0.6 lc {} title {}",
                                in.slugs[i], Color(i), GpString(in.runs[i].name)));
  }
  if (items.empty()) {
    p.skip = "no run has eval points";
    return p;
  }
  p.body =
      "set title \"Eval loss vs step\"\nset xlabel \"step\"\nset ylabel \"eval loss\"\n" + PlotCommand(items);
  return p;
}

Plot EvalVsBytes(const PlotInputs& in) {
  Plot p{"eval_loss_vs_bytes", "Eval loss vs bytes per worker", "", ""};
  double max_bytes = 0;
  for (const RunData& run : in.runs) {
    for (const EvalPoint& e : run.eval_curve) {
      max_bytes = std::max(max_bytes, e.bytes.value_or(0));
    }
  }
  const Unit unit = ByteUnit(max_bytes);
  std::vector<std::string> items;
  for (size_t i = 0; i < in.runs.size(); ++i) {
    const bool any = std::any_of(in.runs[i].eval_curve.begin(), in.runs[i].eval_curve.end(),
                                 [](const EvalPoint& e) { return e.bytes.value_or(0) > 0; });
    if (!any) {
      continue;
    }
    items.push_back(
        fmt::format("\"{}.eval.dat\" using ($4 > 0 ? $4 / {:.10g} : 1/0):2 with linespoints lw 2 pt 7 ps 0.6 "
                    "lc {} title {}",
                    in.slugs[i], unit.divisor, Color(i), GpString(in.runs[i].name)));
  }
  if (items.empty()) {
    p.skip = "no eval point carries a positive \"bytes\" count";
    return p;
  }
  p.body = fmt::format(
      "set title \"Eval loss vs bytes per worker (sent + received)\"\nset logscale x\nset format x \"%g\"\n"
      "set xlabel \"bytes per worker ({})\"\nset ylabel \"eval loss\"\n",
      unit.name);
  p.body += PlotCommand(items);
  return p;
}

Plot EvalVsWall(const PlotInputs& in) {
  Plot p{"eval_loss_vs_wall", "Eval loss vs wall time", "", ""};
  double max_wall = 0;
  for (const RunData& run : in.runs) {
    for (const EvalPoint& e : run.eval_curve) {
      max_wall = std::max(max_wall, e.wall_seconds.value_or(0));
    }
  }
  const Unit unit = TimeUnit(max_wall);
  std::vector<std::string> items;
  for (size_t i = 0; i < in.runs.size(); ++i) {
    const bool any = std::any_of(in.runs[i].eval_curve.begin(), in.runs[i].eval_curve.end(),
                                 [](const EvalPoint& e) { return e.wall_seconds.has_value(); });
    if (!any) {
      continue;
    }
    items.push_back(
        fmt::format("\"{}.eval.dat\" using ($3 / {:g}):2 with linespoints lw 2 pt 7 ps 0.6 lc {} title {}",
                    in.slugs[i], unit.divisor, Color(i), GpString(in.runs[i].name)));
  }
  if (items.empty()) {
    p.skip = "no eval point carries \"wall_seconds\"";
    return p;
  }
  p.body = fmt::format(
      "set title \"Eval loss vs wall time\"\nset xlabel \"wall time ({})\"\nset ylabel \"eval loss\"\n",
      unit.name);
  p.body += PlotCommand(items);
  return p;
}

Plot TrainVsStep(const PlotInputs& in) {
  Plot p{"train_loss_vs_step", "Training loss vs step", "", ""};
  std::vector<std::string> items;
  for (size_t i = 0; i < in.runs.size(); ++i) {
    if (in.runs[i].train_loss.empty()) {
      continue;
    }
    items.push_back(fmt::format("\"{}.train.dat\" using 1:2 with lines lw 1 lc {} notitle", in.slugs[i],
                                FaintColor(i, in.alpha)));
  }
  for (size_t i = 0; i < in.runs.size(); ++i) {
    if (in.runs[i].train_loss.empty()) {
      continue;
    }
    items.push_back(fmt::format("\"{}.train.dat\" using 1:3 with lines lw 2 lc {} title {}", in.slugs[i],
                                Color(i), GpString(in.runs[i].name)));
  }
  if (items.empty()) {
    p.skip = "no run has step events in metrics/worker-*.jsonl";
    return p;
  }
  p.body =
      "set title \"Training loss vs step (mean over workers; faint: raw, bold: centered moving average)\"\n"
      "set xlabel \"step\"\nset ylabel \"training loss\"\n" +
      PlotCommand(items);
  return p;
}

Plot BytesPerWorker(const PlotInputs& in, std::string* data) {
  Plot p{"bytes_per_worker", "Bytes per worker", "", ""};
  size_t max_workers = 0;
  double max_bytes = 0, min_positive = 0;
  for (const RunData& run : in.runs) {
    max_workers = std::max(max_workers, run.bytes_per_worker.size());
    for (const double b : run.bytes_per_worker) {
      max_bytes = std::max(max_bytes, b);
      if (b > 0 && (min_positive == 0 || b < min_positive)) {
        min_positive = b;
      }
    }
  }
  if (max_workers == 0 || max_bytes <= 0) {
    p.skip = "no run has positive bytes_per_worker";
    return p;
  }
  const Unit unit = ByteUnit(max_bytes);
  // Spans of more than ~30x (e.g. ddp next to a streaming run) would flatten the small bars: log y.
  const bool log_y = max_bytes / min_positive > 30;
  *data = fmt::format(
      "# bytes per worker ({}), summary.json bytes_per_worker; ? = run has no such worker\n# worker",
      unit.name);
  for (size_t r = 0; r < in.runs.size(); ++r) {
    *data += " " + in.slugs[r];
  }
  *data += "\n";
  for (size_t w = 0; w < max_workers; ++w) {
    *data += fmt::format("{}", w);
    for (const RunData& run : in.runs) {
      *data += " ";
      *data += w < run.bytes_per_worker.size() && (!log_y || run.bytes_per_worker[w] > 0)
                   ? Dat(run.bytes_per_worker[w] / unit.divisor)
                   : "?";
    }
    *data += "\n";
  }
  std::vector<std::string> items;
  for (size_t r = 0; r < in.runs.size(); ++r) {
    items.push_back(fmt::format("\"bytes_per_worker.dat\" using {}{} title {} lc {}", r + 2,
                                r == 0 ? ":xtic(1)" : "", GpString(in.runs[r].name), Color(r)));
  }
  p.body = fmt::format(
      "set title \"Bytes sent + received per worker\"\n"
      "set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.85 border -1\n"
      "set boxwidth 0.9\nset xlabel \"worker\"\nset ylabel \"bytes ({}{})\"\n",
      unit.name, log_y ? ", log scale" : "");
  if (log_y) {
    p.body += fmt::format("set logscale y\nset yrange [{:.6g}:*]\n", min_positive / unit.divisor / 2);
  } else {
    p.body += "set yrange [0:*]\n";
  }
  p.body += PlotCommand(items);
  return p;
}

// Only when at least two runs carry a link and their rates differ.
std::optional<Plot> UtilizationVsBandwidth(const PlotInputs& in, std::string* data, std::string* sim_data) {
  std::set<double> rates;
  for (const RunData& run : in.runs) {
    if (run.link && run.link->rate_mbit && run.compute_utilization) {
      rates.insert(*run.link->rate_mbit);
    }
  }
  if (rates.size() < 2) {
    return std::nullopt;
  }
  Plot p{"utilization_vs_bandwidth", "Compute utilization vs bandwidth", "", ""};
  // One series per (algo, codec), sorted by rate; gnuplot separates data blocks with two blank lines.
  std::map<std::string, std::vector<size_t>> series;
  for (size_t i = 0; i < in.runs.size(); ++i) {
    const RunData& run = in.runs[i];
    if (!run.link || !run.link->rate_mbit || !run.compute_utilization) {
      continue;
    }
    series[run.algo + (run.codec.empty() ? "" : " " + run.codec) + (run.late == "defer" ? " defer" : "")]
        .push_back(i);
  }
  *data = "# rate_mbit compute_utilization run_name; one block per (algo, codec)\n";
  std::vector<std::string> items;
  size_t block = 0;
  for (auto& [label, indices] : series) {
    std::sort(indices.begin(), indices.end(),
              [&](size_t a, size_t b) { return *in.runs[a].link->rate_mbit < *in.runs[b].link->rate_mbit; });
    *data += fmt::format("# {}\n", label);
    for (const size_t i : indices) {
      *data += fmt::format("{} {} {}\n", Dat(in.runs[i].link->rate_mbit), Dat(in.runs[i].compute_utilization),
                           GpString(in.runs[i].name));
    }
    *data += "\n\n";
    items.push_back(
        fmt::format("\"utilization_vs_bandwidth.dat\" index {} using 1:2 with linespoints lw 2 pt 7 "
                    "lc {} title {}",
                    block, Color(block), GpString(label)));
    items.push_back(fmt::format(
        "\"utilization_vs_bandwidth.dat\" index {} using 1:2:3 with labels offset char 1,0.6 left notitle",
        block));
    ++block;
  }
  if (in.simulate) {
    // The simulator's curve for each series: the settings and measured step time of its run with the
    // median step time, over the whole rate axis.
    const double lo = *rates.begin() / 1.5, hi = *rates.rbegin() * 6;
    std::string sim = "# rate_mbit simulated_utilization; one block per (algo, codec), same order\n";
    size_t sim_block = 0, color = 0;
    for (auto& [label, indices] : series) {
      std::vector<size_t> by_step = indices;
      std::sort(by_step.begin(), by_step.end(), [&](size_t a, size_t b) {
        return in.runs[a].step_seconds.value_or(0) < in.runs[b].step_seconds.value_or(0);
      });
      const RunData& rep = in.runs[by_step[by_step.size() / 2]];
      std::string curve;
      for (int k = 0; k <= 60; ++k) {
        const double rate = lo * std::pow(hi / lo, k / 60.0);
        auto point = SimulateRun(rep, rate);
        if (!point.ok()) {
          curve.clear();
          break;
        }
        curve += fmt::format("{:.6g} {:.6g}\n", rate, point->utilization);
      }
      if (!curve.empty()) {
        sim += fmt::format("# {} (simulated with the settings of {})\n{}\n\n", label, rep.name, curve);
        items.push_back(fmt::format(
            "\"utilization_vs_bandwidth.sim.dat\" index {} using 1:2 with lines dt 2 lw 2 lc {} title {}",
            sim_block, Color(color), GpString(label + " (simulated)")));
        ++sim_block;
      }
      ++color;
    }
    *data += "\n# simulated curves: utilization_vs_bandwidth.sim.dat\n";
    *sim_data = std::move(sim);
  }
  // Room on the right for the run-name labels.
  p.body = fmt::format(
      "set title \"Compute utilization vs link bandwidth\"\nset logscale x\nset format x \"%g\"\n"
      "set xrange [{:.6g}:{:.6g}]\nset xlabel \"link rate (Mbit/s)\"\nset ylabel \"compute utilization\"\n"
      "set yrange [0:1.05]\nset key bottom right\n",
      *rates.begin() / 1.5, *rates.rbegin() * 6);
  p.body += PlotCommand(items);
  return p;
}

// With runs over links of several rates: one plot per rate of training loss vs wall time, so the
// algorithms can be compared where the link is the same.
std::vector<Plot> LossVsWallPerRate(const PlotInputs& in) {
  std::map<double, std::vector<size_t>> by_rate;
  for (size_t i = 0; i < in.runs.size(); ++i) {
    const RunData& run = in.runs[i];
    const bool timed = std::any_of(run.train_loss.begin(), run.train_loss.end(),
                                   [](const TrainPoint& t) { return t.wall_seconds.has_value(); });
    if (run.link && run.link->rate_mbit && timed) {
      by_rate[*run.link->rate_mbit].push_back(i);
    }
  }
  std::vector<Plot> plots;
  if (by_rate.size() < 2) {
    return plots;
  }
  for (const auto& [rate, indices] : by_rate) {
    Plot p{fmt::format("train_loss_vs_wall_{:g}mbit", rate),
           fmt::format("Training loss vs wall time at {:g} Mbit/s", rate), "", ""};
    std::vector<std::string> items;
    for (const size_t i : indices) {
      items.push_back(fmt::format("\"{}.train.dat\" using 4:3 with lines lw 2 lc {} title {}", in.slugs[i],
                                  Color(i), GpString(in.runs[i].name)));
    }
    p.body = fmt::format(
                 "set title \"Training loss vs wall time, {:g} Mbit/s links (mean over workers, smoothed)\"\n"
                 "set xlabel \"wall time since training started (s)\"\nset ylabel \"training loss\"\n",
                 rate) +
             PlotCommand(items);
    plots.push_back(std::move(p));
  }
  return plots;
}

std::string EvalData(const RunData& run) {
  std::string out = fmt::format(
      "# {}: eval curve (summary.json eval_curve)\n# step eval_loss wall_seconds "
      "bytes_per_worker tokens\n",
      run.name);
  for (const EvalPoint& e : run.eval_curve) {
    out += fmt::format("{} {} {} {} {}\n", e.step, Dat(e.eval_loss), Dat(e.wall_seconds), Dat(e.bytes),
                       Dat(e.tokens));
  }
  return out;
}

std::string TrainData(const RunData& run, int window) {
  std::string out = fmt::format(
      "# {}: training loss, mean over workers (metrics/worker-*.jsonl)\n# step loss smoothed(window {}) "
      "wall_seconds\n",
      run.name, window);
  const std::vector<double> smooth = Smooth(run.train_loss, window);
  for (size_t i = 0; i < run.train_loss.size(); ++i) {
    out += fmt::format("{} {} {} {}\n", run.train_loss[i].step, Dat(run.train_loss[i].loss), Dat(smooth[i]),
                       Dat(run.train_loss[i].wall_seconds));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// report.md

std::string LinkCell(const RunData& run) {
  if (!run.link) {
    return "none";
  }
  std::string out;
  if (run.link->rate_mbit) {
    out += fmt::format("{:g} Mbit/s", *run.link->rate_mbit);
  }
  if (run.link->latency_ms) {
    out += fmt::format("{}{:g} ms", out.empty() ? "" : ", ", *run.link->latency_ms);
  }
  return out.empty() ? "shaped" : out;
}

std::string Markdown(const std::string& title, const std::vector<RunData>& runs,
                     const std::vector<Plot>& plots, const Gnuplot& gnuplot,
                     const std::vector<std::string>& plot_notes) {
  std::string md = fmt::format("# {}\n\nGenerated by `lowband report` from", title);
  for (size_t i = 0; i < runs.size(); ++i) {
    md += fmt::format("{} `{}`", i == 0 ? "" : ",", runs[i].dir.string());
  }
  md += ".\n\n## Runs\n\n";

  const auto base = BaselineIndex(runs);
  md += "| run | algo | codec | workers | steps | tokens | final eval loss | bytes / worker (mean) |";
  if (base) {
    md += " bytes vs ddp |";
  }
  md += " wall s | compute util. | stall s |\n|---|---|---|--:|--:|--:|--:|--:|";
  if (base) {
    md += "--:|";
  }
  md += "--:|--:|--:|\n";
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunData& r = runs[i];
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} |", Md(r.name), Md(r.algo),
                      r.codec.empty() ? std::string(kDash) : Md(r.codec), IntCell(r.workers),
                      IntCell(r.steps), HumanCount(r.tokens), Cell(r.final_eval_loss, "{:.4f}"),
                      r.bytes_per_worker.empty() ? std::string(kDash) : HumanBytes(r.MeanBytesPerWorker()));
    if (base) {
      md += fmt::format(" {} |", RatioCell(BytesRatio(runs, i)));
    }
    const std::optional<double> util =
        r.compute_utilization ? std::optional<double>(*r.compute_utilization * 100) : std::nullopt;
    md += fmt::format(" {} | {} | {} |\n", Cell(r.wall_seconds, "{:.1f}"), Cell(util, "{:.1f}%"),
                      Cell(r.stall_seconds, "{:.1f}"));
  }
  md +=
      "\nBytes / worker is the mean of summary.json's `bytes_per_worker` (bytes sent + received by each "
      "worker).";
  if (base) {
    md += fmt::format(
        " \"bytes vs ddp\" divides it by the same mean of the ddp run `{}`{}.", Md(runs[*base].name),
        std::count_if(runs.begin(), runs.end(), [](const RunData& r) { return r.algo == "ddp"; }) > 1
            ? " (the first ddp run given)"
            : "");
  }
  md +=
      " Compute utilization is summary.json's `compute_utilization` (inner compute time over wall time).\n\n";

  if (std::any_of(runs.begin(), runs.end(), [](const RunData& r) { return r.simulated.has_value(); })) {
    md +=
        "## Measured vs simulated utilization\n\n| run | algo | codec | link | step time | measured | "
        "simulated | difference | relative |\n|---|---|---|---|--:|--:|--:|--:|--:|\n";
    for (const RunData& r : runs) {
      if (!r.simulated || !r.compute_utilization) continue;
      const double m = *r.compute_utilization, p = r.simulated->utilization;
      std::string step = fmt::format("{:.1f} ms", r.simulated->step_seconds * 1e3);
      if (r.simulated->per_worker_steps) {
        const auto [lo, hi] = std::minmax_element(r.worker_step_seconds.begin(), r.worker_step_seconds.end());
        step += fmt::format(" ({:.1f}..{:.1f})", *lo * 1e3, *hi * 1e3);
      }
      md += fmt::format("| {} | {} | {} | {} | {} | {:.1f}% | {:.1f}% | {:+.1f} pt | {:+.1f}% |\n",
                        Md(r.name), Md(r.algo), r.codec.empty() ? std::string(kDash) : Md(r.codec),
                        LinkCell(r), step, m * 100, p * 100, (p - m) * 100, m > 0 ? (p / m - 1) * 100 : 0.0);
    }
    md +=
        "\nThe simulator (`lowband simulate`, docs/simulator.md) ran each run's algorithm, workers, H, "
        "fragments, tau and codec with the run's measured step time (`step_seconds`: mean compute of one "
        "inner step; each worker with its own, shown in brackets, when the run recorded them: workers "
        "sharing cores run at different speeds and every round waits for the slowest) and fragment sizes, "
        "over the run's link: its rate (for tc tbf links the payload share 1448/1514 of it) and latency. "
        "Relative = simulated / measured - 1.\n\n";
  }

  const bool any_accuracy = std::any_of(runs.begin(), runs.end(),
                                        [](const RunData& r) { return r.final_eval_accuracy.has_value(); });
  const bool any_identical = std::any_of(
      runs.begin(), runs.end(), [](const RunData& r) { return r.global_state_identical.has_value(); });
  md +=
      "## Settings\n\n| run | H | fragments | tau | alpha | error feedback | link | bytes up | bytes down | "
      "bootstrap bytes | coordinator rounds |";
  md += std::string(any_accuracy ? " final eval accuracy |" : "") +
        (any_identical ? " global state identical |" : "") +
        "\n|---|--:|--:|--:|--:|---|---|--:|--:|--:|--:|" + (any_accuracy ? "--:|" : "") +
        (any_identical ? "---|" : "") + "\n";
  for (const RunData& r : runs) {
    const auto bytes = [](const std::optional<double>& b) { return b ? HumanBytes(*b) : std::string(kDash); };
    std::string rounds(kDash);
    if (r.coordinator) {
      const CoordinatorStats& c = *r.coordinator;
      rounds = fmt::format("{}", c.rounds);
      if (c.contributions && c.rounds > 0) {
        rounds +=
            fmt::format(" ({:.3g} contributions/round)", *c.contributions / static_cast<double>(c.rounds));
      }
      if (c.late_pushes && *c.late_pushes > 0) {
        rounds += fmt::format(", {:g} late pushes", *c.late_pushes);
      }
    }
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |", Md(r.name), IntCell(r.H),
                      IntCell(r.fragments), IntCell(r.tau), Cell(r.alpha, "{:g}"),
                      r.error_feedback ? (*r.error_feedback ? "on" : "off") : std::string(kDash), LinkCell(r),
                      bytes(r.bytes_up), bytes(r.bytes_down), bytes(r.bootstrap_bytes), rounds);
    if (any_accuracy) {
      md += fmt::format(" {} |", Cell(r.final_eval_accuracy, "{:.4f}"));
    }
    if (any_identical) {
      md += fmt::format(" {} |", r.global_state_identical ? (*r.global_state_identical ? "yes" : "**no**")
                                                          : std::string(kDash));
    }
    md += "\n";
  }

  md += "\n## Plots\n\n";
  if (!gnuplot.usable && gnuplot.turned_off) {
    md += "Plots were not drawn (`--no-plots`); render the scripts below with gnuplot.\n\n";
  } else if (!gnuplot.usable) {
    md += fmt::format(
        "**Plots skipped:** {}. Install gnuplot with `deploy/install-deps.sh` (or `apt-get install "
        "gnuplot-nox`), "
        "then run `lowband report` again, or render the scripts below by hand.\n\n",
        gnuplot.reason);
  }
  for (const Plot& p : plots) {
    if (p.body.empty()) {
      continue;
    }
    md += fmt::format("### {}\n\n", p.caption);
    if (gnuplot.usable) {
      md += fmt::format("![{}]({}.png)\n\n", p.caption, p.name);
    } else {
      md += fmt::format("(not drawn: `{}.gp`)\n\n", p.name);
    }
  }
  if (!plot_notes.empty()) {
    md += "Not drawn:\n\n";
    for (const std::string& note : plot_notes) {
      md += fmt::format("- {}\n", note);
    }
    md += "\n";
  }
  md +=
      "Each plot is drawn by `NAME.gp` from the `*.dat` files next to it. Edit a script and re-render it "
      "with `gnuplot NAME.gp` in this directory.\n\n";

  md += "## Metrics files\n\n";
  for (const RunData& r : runs) {
    md += fmt::format("- `{}`: {} worker file(s){}, {} line(s)", Md(r.name), r.worker_metrics_files,
                      r.has_coordinator_metrics ? " + coordinator.jsonl" : "", r.metrics_lines);
    if (r.bad_metrics_lines > 0) {
      md += fmt::format(", **{} skipped** (not JSON; a run killed mid-write leaves a partial last line)",
                        r.bad_metrics_lines);
    }
    md += "\n";
  }
  return md;
}

}  // namespace

double RunData::MeanBytesPerWorker() const {
  if (bytes_per_worker.empty()) {
    return 0;
  }
  double sum = 0;
  for (const double b : bytes_per_worker) {
    sum += b;
  }
  return sum / static_cast<double>(bytes_per_worker.size());
}

std::string HumanBytes(double bytes) {
  if (!std::isfinite(bytes)) {
    return std::string(kDash);
  }
  const Unit unit = ByteUnit(std::fabs(bytes));
  if (unit.divisor == 1) {
    return fmt::format("{:.0f} B", bytes);
  }
  const double v = bytes / unit.divisor;
  return fmt::format("{:.{}f} {}", v, v < 10 ? 2 : (v < 100 ? 1 : 0), unit.name);
}

StatusOr<RunData> LoadRun(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return NotFound(fmt::format("{}: no such run directory; {}", dir.string(), LaunchHint(dir)));
  }
  const fs::path file = dir / "summary.json";
  if (!fs::exists(file, ec)) {
    return NotFound(fmt::format("{}: not found (the run has not finished, or {} is not a run directory); {}",
                                file.string(), dir.string(), LaunchHint(dir)));
  }
  LOWBAND_ASSIGN_OR_RETURN(const std::string text, ReadWholeFile(file));
  const json summary = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (summary.is_discarded()) {
    return DataLoss(
        fmt::format("{}: not valid JSON (truncated or hand-edited?); {}", file.string(), LaunchHint(dir)));
  }
  RunData run;
  run.dir = dir;
  LOWBAND_RETURN_IF_ERROR(ParseSummary(file, summary, &run));
  if (run.name.empty()) {
    run.name = fs::absolute(dir).lexically_normal().filename().string();
  }
  if (run.name.empty()) {
    run.name = fs::absolute(dir).lexically_normal().parent_path().filename().string();
  }
  LoadMetrics(&run);
  return run;
}

nlohmann::json ComparisonTable(const std::vector<RunData>& runs) {
  const auto opt = [](const auto& v) { return v ? json(*v) : json(nullptr); };
  const auto base = BaselineIndex(runs);
  json table = {{"baseline", base ? json(runs[*base].name) : json(nullptr)}, {"runs", json::array()}};
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunData& r = runs[i];
    table["runs"].push_back({
        {"name", r.name},
        {"dir", r.dir.string()},
        {"algo", r.algo},
        {"codec", r.codec.empty() ? json(nullptr) : json(r.codec)},
        {"workers", opt(r.workers)},
        {"steps", opt(r.steps)},
        {"tokens", opt(r.tokens)},
        {"final_eval_loss", opt(r.final_eval_loss)},
        {"bytes_per_worker_mean", r.bytes_per_worker.empty() ? json(nullptr) : json(r.MeanBytesPerWorker())},
        {"bytes_ratio_to_ddp", opt(BytesRatio(runs, i))},
        {"wall_seconds", r.wall_seconds},
        {"compute_utilization", opt(r.compute_utilization)},
        {"stall_seconds", opt(r.stall_seconds)},
        {"link_rate_mbit", r.link ? opt(r.link->rate_mbit) : json(nullptr)},
        {"link_latency_ms", r.link ? opt(r.link->latency_ms) : json(nullptr)},
        {"step_seconds", opt(r.step_seconds)},
        {"simulated_utilization", r.simulated ? json(r.simulated->utilization) : json(nullptr)},
        {"bad_metrics_lines", r.bad_metrics_lines},
    });
  }
  return table;
}

StatusOr<ReportResult> WriteReport(const ReportOptions& options) {
  if (options.runs.empty()) {
    return InvalidArgument("report: give at least one run directory");
  }
  ReportResult result;
  for (const fs::path& dir : options.runs) {
    spdlog::info("report: reading {}", dir.string());
    LOWBAND_ASSIGN_OR_RETURN(RunData run, LoadRun(dir));
    result.bad_metrics_lines += run.bad_metrics_lines;
    result.runs.push_back(std::move(run));
  }
  std::vector<RunData>& runs = result.runs;
  // Curves are labelled by name: make names unique.
  std::map<std::string, int> seen;
  for (RunData& run : runs) {
    const int n = ++seen[run.name];
    if (n > 1) {
      run.name += fmt::format(" ({})", n);
    }
  }

  result.out_dir = !options.out.empty() ? options.out : (runs.size() == 1 ? runs[0].dir : fs::path("report"));
  // Flat, next to report.md (docs/run-outputs.md: RUN/report.md, RUN/*.png), so scripts, data and images
  // sit together and `gnuplot NAME.gp` works in that directory.
  const fs::path plots_dir = result.out_dir;
  std::error_code ec;
  fs::create_directories(plots_dir, ec);
  if (ec) {
    return PermissionDenied(fmt::format("{}: cannot create: {}", plots_dir.string(), ec.message()));
  }

  std::vector<std::string> slugs;
  for (size_t i = 0; i < runs.size(); ++i) {
    slugs.push_back(Slug(i, runs[i].name));
  }

  // Data files.
  for (size_t i = 0; i < runs.size(); ++i) {
    LOWBAND_RETURN_IF_ERROR(WriteFile(plots_dir / (slugs[i] + ".eval.dat"), EvalData(runs[i])));
    if (!runs[i].train_loss.empty()) {
      const int window = SmoothWindow(options.smooth, runs[i].train_loss.size());
      LOWBAND_RETURN_IF_ERROR(WriteFile(plots_dir / (slugs[i] + ".train.dat"), TrainData(runs[i], window)));
    }
  }

  const Gnuplot gnuplot = ProbeGnuplot(options.gnuplot, plots_dir, options.gnuplot_timeout_seconds);
  if (options.simulate) {
    for (RunData& run : runs) {
      if (!run.link) continue;
      auto simulated = SimulateRun(run);
      if (simulated.ok()) {
        run.simulated = *simulated;
      } else {
        spdlog::warn("report: {}", simulated.status().message());
      }
    }
  }
  const PlotInputs in{runs, slugs, gnuplot.terminal == "pngcairo", options.simulate};
  std::vector<Plot> plots = {EvalVsStep(in), EvalVsBytes(in), EvalVsWall(in), TrainVsStep(in)};
  std::string bytes_data;
  plots.push_back(BytesPerWorker(in, &bytes_data));
  if (!bytes_data.empty()) {
    LOWBAND_RETURN_IF_ERROR(WriteFile(plots_dir / "bytes_per_worker.dat", bytes_data));
  }
  for (Plot& plot : LossVsWallPerRate(in)) {
    plots.push_back(std::move(plot));
  }
  std::string util_data, util_sim_data;
  if (auto util = UtilizationVsBandwidth(in, &util_data, &util_sim_data)) {
    plots.push_back(std::move(*util));
    LOWBAND_RETURN_IF_ERROR(WriteFile(plots_dir / "utilization_vs_bandwidth.dat", util_data));
    if (!util_sim_data.empty()) {
      LOWBAND_RETURN_IF_ERROR(WriteFile(plots_dir / "utilization_vs_bandwidth.sim.dat", util_sim_data));
    }
  }

  if (!gnuplot.usable) {
    result.plots_skipped = true;
    result.plots_skipped_reason = gnuplot.reason;
  }
  if (options.gnuplot.empty()) {
    spdlog::info("report: plots not drawn (--no-plots); the scripts are in {}", plots_dir.string());
  } else if (!gnuplot.usable) {
    spdlog::warn(
        "report: plots skipped: {}. Install gnuplot with deploy/install-deps.sh (or apt-get install "
        "gnuplot-nox) and run lowband report again; the scripts are in {}",
        gnuplot.reason, plots_dir.string());
  }

  for (Plot& plot : plots) {
    if (plot.body.empty()) {
      result.plot_notes.push_back(fmt::format("{}: {}", plot.caption, plot.skip));
      continue;
    }
    const std::string script = plot.name + ".gp";
    LOWBAND_RETURN_IF_ERROR(WriteFile(plots_dir / script, ScriptHeader(plot, gnuplot.terminal) + plot.body));
    if (!gnuplot.usable) {
      continue;
    }
    const fs::path png = plots_dir / (plot.name + ".png");
    fs::remove(png, ec);
    auto ran = RunProcess({options.gnuplot, script}, plots_dir, options.gnuplot_timeout_seconds);
    std::string failure;
    if (!ran.ok()) {
      failure = ran.status().message();
    } else if (ran->exit_code != 0) {
      failure = fmt::format("gnuplot exited with {}: {}", ran->exit_code, Tail(ran->output, 4));
    } else if (!fs::exists(png, ec) || fs::file_size(png, ec) == 0) {
      failure = fmt::format("gnuplot wrote no image: {}", Tail(ran->output, 4));
    }
    if (!failure.empty()) {
      spdlog::warn("report: {}: {}", script, failure);
      result.plot_notes.push_back(fmt::format("{}: gnuplot failed on {}: {}", plot.caption, script, failure));
      plot.body.clear();  // no broken image link in report.md
      continue;
    }
    if (!ran->output.empty()) {
      spdlog::debug("report: {}: {}", script, Tail(ran->output, 4));
    }
    spdlog::info("report: wrote {}", png.string());
    result.plots.push_back(png);
  }

  std::string title = options.title;
  if (title.empty()) {
    title = runs.size() == 1 ? "lowband report: " + runs[0].name
                             : fmt::format("lowband report: {} runs", runs.size());
  }
  result.report_md = result.out_dir / "report.md";
  LOWBAND_RETURN_IF_ERROR(
      WriteFile(result.report_md, Markdown(title, runs, plots, gnuplot, result.plot_notes)));
  result.table = ComparisonTable(runs);
  result.table["report"] = result.report_md.string();
  spdlog::info("report: wrote {} ({} plot(s))", result.report_md.string(), result.plots.size());
  return result;
}

}  // namespace lowband::tools
