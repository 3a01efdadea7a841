#include "sim/units.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>
#include <span>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace lowband::sim {

namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Splits "12.5mbit" into the number 12.5 and the unit "mbit" (lower case, spaces dropped).
bool SplitNumber(std::string_view text, double* value, std::string* unit) {
  text = Trim(text);
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(begin, end, *value, std::chars_format::general);
  if (ec != std::errc() || ptr == begin) return false;
  *unit = Lower(Trim(std::string_view(ptr, static_cast<size_t>(end - ptr))));
  return std::isfinite(*value);
}

// A unit (lower case) and what one of it is worth in the base unit.
struct Unit {
  std::string_view name;
  double scale;
};

// How one kind of quantity is written (ParseScaled).
struct Quantity {
  std::string_view what;       // "bandwidth": names the quantity in errors
  std::string_view unit_word;  // "unit" or "suffix"
  std::string_view accepted;   // what is accepted, ending every error that can be fixed by a unit
  // Empty: a bare number is in the base unit. Else a bare number is refused, and this says why.
  std::string_view no_unit;
  bool bare_zero = false;   // a bare 0 is accepted even when bare numbers are refused
  bool per_second = false;  // a trailing "/s" after the unit is dropped ("12.3 Mbit/s")
  std::span<const Unit> units;
};

// `text` as a number times its unit's scale, the unit looked up case-insensitively in q.units.
// The range is the caller's to check.
StatusOr<double> ParseScaled(std::string_view text, const Quantity& q) {
  double value = 0;
  std::string unit;
  if (!SplitNumber(text, &value, &unit)) {
    return InvalidArgument(fmt::format("{} '{}' is not {}", q.what, text, q.accepted));
  }
  if (q.per_second && unit.size() > 2 && unit.ends_with("/s")) unit.resize(unit.size() - 2);
  if (unit.empty()) {
    if (q.no_unit.empty() || (q.bare_zero && value == 0)) return value;
    return InvalidArgument(
        fmt::format("{} '{}' has no unit {}; give {}", q.what, text, q.no_unit, q.accepted));
  }
  for (const Unit& u : q.units) {
    if (unit == u.name) return value * u.scale;
  }
  return InvalidArgument(
      fmt::format("{} '{}' has an unknown {} '{}'; give {}", q.what, text, q.unit_word, unit, q.accepted));
}

std::string Significant3(double v) {
  if (v >= 100) return fmt::format("{:.0f}", v);
  if (v >= 10) return fmt::format("{:.1f}", v);
  return fmt::format("{:.2f}", v);
}

}  // namespace

StatusOr<double> ParseBandwidth(std::string_view text) {
  const std::string lower = Lower(Trim(text));
  if (lower == "inf" || lower == "infinite" || lower == "unlimited") {
    return std::numeric_limits<double>::infinity();
  }
  static constexpr Unit kUnits[] = {
      {"bit", 1},           {"kbit", 1e3},           {"mbit", 1e6},
      {"gbit", 1e9},        {"tbit", 1e12},          {"kibit", 1024.0},
      {"mibit", 1048576.0}, {"gibit", 1073741824.0}, {"tibit", 1099511627776.0},
      {"bps", 8},           {"kbps", 8e3},           {"mbps", 8e6},
      {"gbps", 8e9},        {"tbps", 8e12},
  };
  static constexpr Quantity kBandwidth = {
      "bandwidth",
      "unit",
      "a number and a unit: bit, kbit, mbit, gbit, tbit (bits/s), kibit, mibit, gibit, tibit (binary), "
      "bps, kbps, mbps, gbps, tbps (bytes/s, as in tc), or \"inf\"; e.g. 100mbit, 1gbit, 12.5mbps",
      "(tc would read a bare number as bytes/s)",
      /*bare_zero=*/false,
      /*per_second=*/true,
      kUnits,
  };
  LOWBAND_ASSIGN_OR_RETURN(const double bps, ParseScaled(text, kBandwidth));
  if (!(bps > 0)) return InvalidArgument("bandwidth '" + std::string(text) + "' must be positive");
  return bps;
}

StatusOr<double> ParseSeconds(std::string_view text) {
  static constexpr Unit kUnits[] = {
      {"s", 1}, {"sec", 1}, {"ms", 1e-3}, {"us", 1e-6}, {"ns", 1e-9}, {"min", 60}, {"m", 60}, {"h", 3600},
  };
  static constexpr Quantity kDuration = {
      "duration",
      "unit",
      "a number with a unit: ns, us, ms, s, m/min, h (0 needs none); e.g. 20ms, 0.8s",
      "(40 could be seconds or ms)",
      /*bare_zero=*/true,
      /*per_second=*/false,
      kUnits,
  };
  LOWBAND_ASSIGN_OR_RETURN(const double seconds, ParseScaled(text, kDuration));
  if (seconds < 0) return InvalidArgument("duration '" + std::string(text) + "' must not be negative");
  return seconds;
}

StatusOr<uint64_t> ParseCount(std::string_view text) {
  static constexpr Unit kUnits[] = {{"k", 1e3}, {"m", 1e6}, {"b", 1e9}, {"g", 1e9}, {"t", 1e12}};
  static constexpr Quantity kCount = {
      "count",
      "suffix",
      "a non-negative number with an optional suffix k, M, B/G, T; e.g. 1.2e9, 350M, 7B",
      /*no_unit=*/"",
      /*bare_zero=*/false,
      /*per_second=*/false,
      kUnits,
  };
  LOWBAND_ASSIGN_OR_RETURN(const double scaled, ParseScaled(text, kCount));
  const double v = std::round(scaled);
  if (v < 0 || v > 9.0e18) {
    return InvalidArgument("count '" + std::string(text) + "' is out of range; give " +
                           std::string(kCount.accepted));
  }
  return static_cast<uint64_t>(v);
}

StatusOr<std::vector<uint64_t>> ParseCountList(std::string_view text) {
  std::vector<uint64_t> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    auto v = ParseCount(text.substr(start, comma - start));
    if (!v.ok()) return v.status();
    out.push_back(*v);
    start = comma + 1;
  }
  return out;
}

std::string FormatBandwidth(double bits_per_second) {
  if (std::isinf(bits_per_second)) return "inf";
  static constexpr const char* kUnits[] = {"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s", "Pbit/s"};
  double v = bits_per_second;
  size_t u = 0;
  // Round first so that 999.96 kbit/s prints as "1.00 Mbit/s", not "1000 kbit/s".
  while (u + 1 < std::size(kUnits) && std::stod(Significant3(v)) >= 1000) {
    v /= 1000;
    ++u;
  }
  return Significant3(v) + " " + kUnits[u];
}

std::string FormatSeconds(double seconds) {
  if (std::isinf(seconds)) return "inf";
  if (seconds < 1e-3) return Significant3(seconds * 1e6) + " us";
  if (seconds < 1) return Significant3(seconds * 1e3) + " ms";
  if (seconds < 600) return Significant3(seconds) + " s";
  if (seconds < 7200) return Significant3(seconds / 60) + " min";
  return Significant3(seconds / 3600) + " h";
}

std::string FormatBytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "kB", "MB", "GB", "TB", "PB", "EB"};
  double v = bytes;
  size_t u = 0;
  while (u + 1 < std::size(kUnits) && std::stod(Significant3(v)) >= 1000) {
    v /= 1000;
    ++u;
  }
  if (u == 0) return fmt::format("{:.0f} B", v);
  return Significant3(v) + " " + kUnits[u];
}

}  // namespace lowband::sim
