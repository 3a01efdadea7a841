#include "tools/bench_quant.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>

#include <fmt/format.h>

#include "quant/codec.h"
#include "tools/command.h"

namespace lowband::tools {
namespace {

using Clock = std::chrono::steady_clock;

template <typename F>
double BestSeconds(int repeat, F&& f) {
  double best = 1e30;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

double RelRms(const std::vector<float>& x, const std::vector<float>& y) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double d = static_cast<double>(x[i]) - y[i];
    err += d * d;
    ref += static_cast<double>(x[i]) * x[i];
  }
  return std::sqrt(err / std::max(ref, 1e-300));
}

void Check(const Status& s, const std::string& what) {
  if (!s.ok()) throw CommandError(what + ": " + s.ToString());
}

}  // namespace

nlohmann::json RunQuantBench(const QuantBenchOptions& opt) {
  const size_t n = static_cast<size_t>(opt.mib * 1024 * 1024 / 4);
  if (n < 1024) throw CommandError("--mib must give at least 1024 values");
  std::vector<quant::Format> formats;
  if (opt.formats.empty()) {
    for (int i = 0; i < quant::kNumFormats; ++i) formats.push_back(static_cast<quant::Format>(i));
  } else {
    for (const auto& name : opt.formats) {
      auto f = quant::ParseFormat(name);
      Check(f.status(), "--formats");
      formats.push_back(*f);
    }
  }
  auto scale = quant::ParseScaleType(opt.scale);
  Check(scale.status(), "--scale");

  std::mt19937 rng(42);
  std::vector<float> gauss(n), dst(n), out(n), acc(n, 0.0f);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : gauss) v = nd(rng);
  const size_t nt = std::min<size_t>(n, 4u << 20);
  std::vector<float> t3(nt), t3_out(nt);
  std::student_t_distribution<float> td(3.0f);
  for (auto& v : t3) v = td(rng);

  const double gb = static_cast<double>(n) * 4 / 1e9;
  std::memcpy(dst.data(), gauss.data(), n * 4);  // touch every page first
  const double memcpy_s = BestSeconds(opt.repeat + 2, [&] { std::memcpy(dst.data(), gauss.data(), n * 4); });
  const double memcpy_gbps = gb / memcpy_s;
  if (opt.progress) fmt::print(stderr, "memcpy of {:.0f} MiB: {:.2f} GB/s\n", opt.mib, memcpy_gbps);

  nlohmann::json result;
  result["memcpy_gbps"] = memcpy_gbps;
  result["mib"] = opt.mib;
  result["values"] = n;
  result["isa"] = quant::CpuHasAvx2() ? "avx2" : "scalar";
  result["threads"] = 1;
  result["scale_type"] = opt.scale;
  result["formats"] = nlohmann::json::array();
  for (quant::Format f : formats) {
    quant::CodecSpec spec;
    spec.format = f;
    spec.block_size = opt.block;
    spec.scale_type = *scale;
    Check(quant::Validate(spec), std::string(quant::FormatName(f)));
    std::vector<uint8_t> payload(quant::EncodedSize(spec, n));
    Check(quant::EncodeInto(spec, gauss, payload), "encode");
    // Each repetition times memcpy next to the codec, and each ratio uses the best of both, so a
    // machine that slows down for a while slows the baseline too.
    double copy_s = 1e30, enc_s = 1e30, dec_s = 1e30, add_s = 1e30;
    for (int r = 0; r < opt.repeat; ++r) {
      copy_s = std::min(copy_s, BestSeconds(1, [&] { std::memcpy(dst.data(), gauss.data(), n * 4); }));
      enc_s =
          std::min(enc_s, BestSeconds(1, [&] { Check(quant::EncodeInto(spec, gauss, payload), "encode"); }));
      dec_s = std::min(dec_s, BestSeconds(1, [&] { Check(quant::DecodeInto(payload, out), "decode"); }));
      add_s = std::min(add_s,
                       BestSeconds(1, [&] { Check(quant::DecodeAdd(payload, 0.25f, acc), "decode_add"); }));
    }
    const double local_memcpy_gbps = gb / copy_s;
    Check(quant::DecodeInto(payload, out), "decode");
    auto t3_payload = quant::Encode(spec, t3);
    Check(t3_payload.status(), "encode t3");
    Check(quant::DecodeInto(*t3_payload, t3_out), "decode t3");

    nlohmann::json row;
    row["format"] = quant::FormatName(f);
    row["block"] = quant::IsBlockwise(f) ? opt.block : 0;
    row["encode_gbps"] = gb / enc_s;
    row["decode_gbps"] = gb / dec_s;
    row["decode_add_gbps"] = gb / add_s;
    row["memcpy_gbps"] = local_memcpy_gbps;
    row["encode_ratio"] = gb / enc_s / local_memcpy_gbps;
    row["decode_ratio"] = gb / dec_s / local_memcpy_gbps;
    row["decode_add_ratio"] = gb / add_s / local_memcpy_gbps;
    row["bits_per_value"] = quant::BitsPerValue(spec, n);
    row["rel_rms_error_gauss"] = RelRms(gauss, out);
    row["rel_rms_error_t3"] = RelRms(t3, t3_out);
    if (opt.progress) {
      fmt::print(stderr, "  {:<10} encode {:6.2f} GB/s  decode {:6.2f} GB/s  decode_add {:6.2f} GB/s\n",
                 quant::FormatName(f), gb / enc_s, gb / dec_s, gb / add_s);
    }
    result["formats"].push_back(row);
  }
  return result;
}

std::string QuantBenchTable(const nlohmann::json& r) {
  std::string s =
      fmt::format("memcpy {:.2f} GB/s ({} MiB, {}, 1 thread, scales {})\n\n", r["memcpy_gbps"].get<double>(),
                  r["mib"].get<double>(), r["isa"].get<std::string>(), r["scale_type"].get<std::string>());
  s += "| format | block | bits/value | encode GB/s (x memcpy) | decode GB/s (x memcpy) | decode_add GB/s (x "
       "memcpy) | "
       "rel RMS err gauss | rel RMS err t3 |\n";
  s += "|---|---|---|---|---|---|---|---|\n";
  for (const auto& row : r["formats"]) {
    s += fmt::format(
        "| {} | {} | {:.3f} | {:.2f} ({:.2f}) | {:.2f} ({:.2f}) | {:.2f} ({:.2f}) | {:.4f} | {:.4f} |\n",
        row["format"].get<std::string>(), row["block"].get<unsigned>(), row["bits_per_value"].get<double>(),
        row["encode_gbps"].get<double>(), row["encode_ratio"].get<double>(), row["decode_gbps"].get<double>(),
        row["decode_ratio"].get<double>(), row["decode_add_gbps"].get<double>(),
        row["decode_add_ratio"].get<double>(), row["rel_rms_error_gauss"].get<double>(),
        row["rel_rms_error_t3"].get<double>());
  }
  return s;
}

}  // namespace lowband::tools
