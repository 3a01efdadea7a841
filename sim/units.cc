#include "sim/units.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>

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
  double value = 0;
  std::string unit;
  const std::string accepted =
      "a number and a unit: bit, kbit, mbit, gbit, tbit (bits/s), kibit, mibit, gibit, tibit (binary), "
      "bps, kbps, mbps, gbps, tbps (bytes/s, as in tc), or \"inf\"; e.g. 100mbit, 1gbit, 12.5mbps";
  if (!SplitNumber(text, &value, &unit)) {
    return InvalidArgument("bandwidth '" + std::string(text) + "' is not " + accepted);
  }
  if (unit.size() > 2 && unit.ends_with("/s")) unit.resize(unit.size() - 2);
  struct Unit {
    const char* name;
    double bits;
  };
  static constexpr Unit kUnits[] = {
      {"bit", 1},           {"kbit", 1e3},           {"mbit", 1e6},
      {"gbit", 1e9},        {"tbit", 1e12},          {"kibit", 1024.0},
      {"mibit", 1048576.0}, {"gibit", 1073741824.0}, {"tibit", 1099511627776.0},
      {"bps", 8},           {"kbps", 8e3},           {"mbps", 8e6},
      {"gbps", 8e9},        {"tbps", 8e12},          {"b/s", 8},
      {"kb/s", 8e3},        {"mb/s", 8e6},           {"gb/s", 8e9},
      {"tb/s", 8e12},
  };
  if (unit.empty()) {
    return InvalidArgument("bandwidth '" + std::string(text) +
                           "' has no unit (tc would read a bare number as bytes/s); give " + accepted);
  }
  for (const Unit& u : kUnits) {
    if (unit == u.name) {
      const double bps = value * u.bits;
      if (!(bps > 0)) return InvalidArgument("bandwidth '" + std::string(text) + "' must be positive");
      return bps;
    }
  }
  return InvalidArgument("bandwidth '" + std::string(text) + "' has an unknown unit '" + unit + "'; give " +
                         accepted);
}

StatusOr<double> ParseSeconds(std::string_view text) {
  double value = 0;
  std::string unit;
  const std::string accepted =
      "a number with a unit: ns, us, ms, s, m/min, h (0 needs none); e.g. 20ms, 0.8s";
  if (!SplitNumber(text, &value, &unit)) {
    return InvalidArgument("duration '" + std::string(text) + "' is not " + accepted);
  }
  double scale = 0;
  if (unit.empty() && value != 0) {
    return InvalidArgument("duration '" + std::string(text) +
                           "' has no unit (40 could be seconds or ms); give " + accepted);
  }
  if (unit.empty() || unit == "s" || unit == "sec") {
    scale = 1;
  } else if (unit == "ms") {
    scale = 1e-3;
  } else if (unit == "us") {
    scale = 1e-6;
  } else if (unit == "ns") {
    scale = 1e-9;
  } else if (unit == "min" || unit == "m") {
    scale = 60;
  } else if (unit == "h") {
    scale = 3600;
  } else {
    return InvalidArgument("duration '" + std::string(text) + "' has an unknown unit '" + unit + "'; give " +
                           accepted);
  }
  if (value < 0) return InvalidArgument("duration '" + std::string(text) + "' must not be negative");
  return value * scale;
}

StatusOr<uint64_t> ParseCount(std::string_view text) {
  double value = 0;
  std::string unit;
  const std::string accepted =
      "a non-negative number with an optional suffix k, M, B/G, T; e.g. 1.2e9, 350M, 7B";
  if (!SplitNumber(text, &value, &unit)) {
    return InvalidArgument("count '" + std::string(text) + "' is not " + accepted);
  }
  double scale = 0;
  if (unit.empty()) {
    scale = 1;
  } else if (unit == "k") {
    scale = 1e3;
  } else if (unit == "m") {
    scale = 1e6;
  } else if (unit == "b" || unit == "g") {
    scale = 1e9;
  } else if (unit == "t") {
    scale = 1e12;
  } else {
    return InvalidArgument("count '" + std::string(text) + "' has an unknown suffix '" + unit + "'; give " +
                           accepted);
  }
  const double v = std::round(value * scale);
  if (v < 0 || v > 9.0e18) {
    return InvalidArgument("count '" + std::string(text) + "' is out of range; give " + accepted);
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
