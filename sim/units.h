// sim units: the text forms of rates, durations and counts that `lowband simulate` reads and prints.
//
// Rates follow tc(8): "kbit", "mbit", "gbit", "tbit" (and "bit") are bits per second with SI
// prefixes (1 mbit = 10^6 bit/s); "kibit", "mibit", "gibit", "tibit" are binary prefixes; "bps",
// "kbps", "mbps", "gbps", "tbps" are *bytes* per second (1 mbps = 8 * 10^6 bit/s). Units are
// case-insensitive, may be followed by "/s" ("12.3 Mbit/s", the form FormatBandwidth prints, reads
// back), and "inf"/"unlimited" is an infinitely fast link. A bare number is refused: tc reads it as
// bytes/s, most people mean bits/s, and the difference is a factor of 8.
// Durations: "20ms", "0.8s", "250us", "1.5min" (or "1.5m"), "2h"; a bare number other than 0 is
// refused (is "40" seconds or milliseconds?).
// Counts: "1.2e9", "350M", "7B" (k/K = 10^3, M = 10^6, B/G = 10^9, T = 10^12).
//
// Every subcommand reads rates and durations through these (`lowband link`, `launch --link-*`,
// `simulate`), so one spelling means one thing everywhere.
// Thread safety: pure functions. Lifetimes: nothing is retained.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "quant/status.h"

namespace lowband::sim {

// Bits per second (> 0, or +infinity for "inf"). The error names what came and what is accepted.
StatusOr<double> ParseBandwidth(std::string_view text);
// Seconds (>= 0, finite).
StatusOr<double> ParseSeconds(std::string_view text);
// A non-negative count with an optional SI suffix, rounded to the nearest integer.
StatusOr<uint64_t> ParseCount(std::string_view text);
// Comma-separated list of counts ("1e6,2e6").
StatusOr<std::vector<uint64_t>> ParseCountList(std::string_view text);

// "12.3 Mbit/s" (3 significant digits, unit chosen so the number is in [1, 1000); "inf" for an
// infinite rate).
std::string FormatBandwidth(double bits_per_second);
// "812 ms", "1.23 s", "2.5 h".
std::string FormatSeconds(double seconds);
// "1.23 GB" (SI, bytes).
std::string FormatBytes(double bytes);

}  // namespace lowband::sim
