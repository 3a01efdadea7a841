// `lowband bench quant`: codec throughput (as a ratio to memcpy in the same run), bits per value
// and relative RMS error for every quant/ format.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lowband::tools {

struct QuantBenchOptions {
  double mib = 64;                   // fp32 buffer size
  unsigned block = 64;               // block size of the blockwise formats
  std::string scale = "bf16";        // block scale storage
  std::vector<std::string> formats;  // empty: all
  int repeat = 3;                    // best of N for each timing
  bool progress = true;              // a line per format on stderr
};

nlohmann::json RunQuantBench(const QuantBenchOptions& opt);
std::string QuantBenchTable(const nlohmann::json& result);

}  // namespace lowband::tools
