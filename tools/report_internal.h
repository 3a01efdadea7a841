// What the two halves of `lowband report` share, and nothing else includes: the training-run report
// (tools/report.cc, runs of `lowband launch`) and the split-learning report (tools/report_split.cc,
// runs of `lowband split-client`) read summary.json fields with the same typed, file-and-field-naming
// errors, skip the same partial metrics lines, format cells and gnuplot data alike, and draw their
// plots through the same gnuplot runner (scripts and .dat files kept; gnuplot missing is not an error).
// Defined in tools/report.cc, except the split report's entry points (tools/report_split.cc).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/status.h"
#include "tools/report.h"

namespace lowband::tools::report_internal {

// "run `lowband launch ... --out DIR` first": how to produce a training run directory.
std::string LaunchHint(const std::filesystem::path& dir);

// "string \"abc\"", "number 3", "null", ... for error messages.
std::string Describe(const nlohmann::json& v);

// Reads typed fields of one JSON object of summary.json; every error names the file and the field.
// Absent and null members are the same; `required` turns their absence into an error that ends with
// `hint` (how to produce the file; LaunchHint when empty).
class FieldReader {
 public:
  explicit FieldReader(std::filesystem::path file, std::string hint = "");

  Status WrongType(const std::string& field, std::string_view expected, const nlohmann::json& got) const;
  Status Missing(const std::string& field, std::string_view expected) const;

  // The member `key` of `obj`, or nullptr when absent or null.
  static const nlohmann::json* Find(const nlohmann::json& obj, std::string_view key);

  Status Number(const nlohmann::json& obj, std::string_view key, const std::string& field,
                std::optional<double>* out, bool required = false) const;
  Status Integer(const nlohmann::json& obj, std::string_view key, const std::string& field,
                 std::optional<int64_t>* out, bool required = false) const;
  Status String(const nlohmann::json& obj, std::string_view key, const std::string& field, std::string* out,
                bool required = false) const;
  Status Bool(const nlohmann::json& obj, std::string_view key, const std::string& field,
              std::optional<bool>* out) const;
  // An array of numbers; an element of another type is an error naming it ("field[i]").
  Status NumberArray(const nlohmann::json& obj, std::string_view key, const std::string& field,
                     std::vector<double>* out, bool required = false) const;
  // An array of objects: calls `each(element, "field[i]")` for each, stopping at its first error.
  // `expected` describes the array in the error when it is required and missing.
  Status ObjectArray(const nlohmann::json& obj, std::string_view key, const std::string& field,
                     std::string_view expected,
                     const std::function<Status(const nlohmann::json&, const std::string&)>& each,
                     bool required = false) const;

 private:
  std::filesystem::path file_;
  std::string hint_;
};

StatusOr<std::string> ReadWholeFile(const std::filesystem::path& path);
Status WriteFile(const std::filesystem::path& path, std::string_view text);

// DIR/summary.json parsed. NotFound (no directory, no summary.json) and DataLoss (not JSON) name the
// file and end with `hint`.
StatusOr<nlohmann::json> ReadSummary(const std::filesystem::path& dir, std::string_view hint);

// LoadRun (tools/report.h) for a summary.json already read from DIR (ReadSummary).
StatusOr<RunData> LoadRun(const std::filesystem::path& dir, const nlohmann::json& summary);

// Numeric member or nullopt (metrics are best-effort: a wrong type is treated as absent).
std::optional<double> NumberOf(const nlohmann::json& obj, std::string_view key);

// Calls `on_object` for every line of `path` that is a JSON object; returns {lines, bad lines} (blank
// lines are not counted; a bad line, e.g. the partial last line of a killed run, is logged and skipped).
std::pair<int64_t, int64_t> ForEachJsonLine(const std::filesystem::path& path,
                                            const std::function<void(const nlohmann::json&)>& on_object);

// ---------------------------------------------------------------------------------------------------
// Formatting

inline constexpr std::string_view kDash = "—";

// `format` applied to the value, or — when it is absent or not finite.
std::string Cell(const std::optional<double>& v, std::string_view format);
std::string IntCell(const std::optional<int64_t>& v);
// Escapes what would break a Markdown table cell or turn a name into emphasis.
std::string Md(std::string_view text);
// A double-quoted gnuplot string literal.
std::string GpString(std::string_view text);
// "12" or "?" (gnuplot's missing-value marker, see `set datafile missing`).
std::string Dat(const std::optional<double>& v);

struct Unit {
  double divisor;
  std::string name;
};
// The binary unit (B, KiB, ...) that fits `max_bytes`.
Unit ByteUnit(double max_bytes);

// The name of a run directory ("runs/x/" and "runs/x" are both "x").
std::string DirName(const std::filesystem::path& dir);

// Filesystem-safe, unique stem for a run's data files: "run<index>-<name>" (SafeName).
std::string Slug(size_t index, std::string_view name);
// `text` with every character but [A-Za-z0-9._-] replaced by '_', cut to 48 characters.
std::string SafeName(std::string_view text);
// Plot colours, RRGGBB; run i gets kColors[i % 10].
inline constexpr std::array<std::string_view, 10> kColors = {
    "1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd", "8c564b", "e377c2", "7f7f7f", "bcbd22", "17becf"};
// The i-th plot colour, as a gnuplot colour spec: rgb "#RRGGBB".
std::string Color(size_t i);

// Sorts points (anything with a `step`) by step, keeping the order of equal steps.
template <typename Point>
void SortByStep(std::vector<Point>* points) {
  std::stable_sort(points->begin(), points->end(),
                   [](const Point& a, const Point& b) { return a.step < b.step; });
}

// Appends " (2)", " (3)", ... to repeated names: curves are labelled by name.
template <typename Run>
void MakeNamesUnique(std::vector<Run>* runs) {
  std::map<std::string, int> seen;
  for (Run& run : *runs) {
    const int n = ++seen[run.name];
    if (n > 1) {
      run.name += " (" + std::to_string(n) + ")";
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// gnuplot and report.md

struct Gnuplot {
  bool usable = false;
  std::string terminal = "pngcairo";  // what the scripts are written for
  std::string reason;                 // why it is not usable
  bool turned_off = false;            // no executable given (--no-plots)
};

// Whether `exe` runs and has the pngcairo (preferred) or png terminal; empty `exe`: turned off.
Gnuplot ProbeGnuplot(const std::string& exe, const std::filesystem::path& cwd, int timeout_seconds);

// One plot: a gnuplot script (without the terminal header) or why it is not drawn.
struct Plot {
  std::string name;     // file stem: NAME.gp draws NAME.png
  std::string caption;  // heading in report.md
  std::string body;     // gnuplot commands after `set output`; empty: not drawn
  std::string skip;     // why not drawn (when body is empty)
};

// Joins "plot a, \\\n     b".
std::string PlotCommand(const std::vector<std::string>& items);

// The output directory (options.out; else the run directory for one run, ./report for several),
// created. `single_run_dir` is the run directory when there is exactly one run, else empty.
StatusOr<std::filesystem::path> PrepareOutDir(const ReportOptions& options,
                                              const std::filesystem::path& single_run_dir);

// Writes DIR/NAME.gp for every plot with a body and, when gnuplot is usable, draws DIR/NAME.png. A
// plot without a body, or that gnuplot fails on, gets a note in result->plot_notes (and loses its body:
// no broken image link). Fills result->plots and result->plots_skipped(_reason) and logs why plots were
// not drawn.
Status RenderPlots(std::vector<Plot>* plots, const std::filesystem::path& dir, const Gnuplot& gnuplot,
                   const ReportOptions& options, ReportResult* result);

// "# TITLE\n\nGenerated by `lowband report` from `a`, `b`.\n\n".
std::string MarkdownHeader(const std::string& title, const std::vector<std::filesystem::path>& dirs);

// report.md's "## Plots" section: each drawn plot (or its script when gnuplot was not usable), the
// notes on plots not drawn, and how to re-render them.
std::string PlotsMarkdown(const std::vector<Plot>& plots, const Gnuplot& gnuplot,
                          const std::vector<std::string>& plot_notes);

// ---------------------------------------------------------------------------------------------------
// Split-learning client runs (tools/report_split.cc)

// Whether a summary.json was written by `lowband split-client`: an object without "algo" that has
// "task" or "final_bits_histogram".
bool IsSplitSummary(const nlohmann::json& summary);

// WriteReport for runs that are all split-client run directories; summaries[i] is
// options.runs[i]/summary.json, parsed (ReadSummary) and IsSplitSummary.
StatusOr<ReportResult> WriteSplitReport(const ReportOptions& options,
                                        const std::vector<nlohmann::json>& summaries);

}  // namespace lowband::tools::report_internal
