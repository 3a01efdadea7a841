// bench_gpu_codec: throughput of the CUDA codecs as a ratio of device-to-device copy bandwidth
// measured in the same run, on the same buffer sizes.
//
// For each size and format it times (CUDA events, best of --repeat after a warm-up):
//   copy      cudaMemcpy device-to-device of the fp32 input (reads and writes 4 bytes per value)
//   encode    the encode kernel: reads the fp32 input, writes block scales and packed codes
//   decode    the decode kernel: reads scales and codes, writes fp32
//   decode+   the decode-add kernel (out += w * decoded): reads and writes the fp32 output
// Bandwidth counts bytes read plus bytes written, as the copy's does, so ratio = kernel bandwidth /
// copy bandwidth says how close a kernel runs to the memory system's limit (goal >= 0.8).
// It also times the whole EncodeToHost (kernel, copy of the payload to pinned host memory, header
// and CRC32C) and, for perspective, the CPU encoder (one thread, AVX2) on the same values.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "quant/codec.h"
#include "quant/cuda.h"

namespace {

using lowband::quant::CodecSpec;
namespace cuda = lowband::quant::cuda;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "bench_gpu_codec: %s\n", what.c_str());
  std::exit(1);
}
void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) Die(std::string(what) + ": " + cudaGetErrorString(e));
}
void Check(const lowband::Status& s, const char* what) {
  if (!s.ok()) Die(std::string(what) + ": " + s.message());
}

// Best time in seconds of `repeat` runs of f on `stream` (after one warm-up run).
template <typename F>
double BestSeconds(int repeat, cudaStream_t stream, F&& f) {
  cudaEvent_t start, stop;
  Check(cudaEventCreate(&start), "cudaEventCreate");
  Check(cudaEventCreate(&stop), "cudaEventCreate");
  f();
  Check(cudaStreamSynchronize(stream), "warm-up");
  float best = 1e30f;
  for (int i = 0; i < repeat; ++i) {
    Check(cudaEventRecord(start, stream), "cudaEventRecord");
    f();
    Check(cudaEventRecord(stop, stream), "cudaEventRecord");
    Check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0;
    Check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    best = std::min(best, ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return best / 1e3;
}

template <typename F>
double BestWallSeconds(int repeat, F&& f) {
  f();
  double best = 1e30;
  for (int i = 0; i < repeat; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Throughput of lowband's CUDA codecs as a ratio of device-to-device copy bandwidth"};
  std::vector<double> mibs{1, 16, 256};
  std::vector<std::string> formats{"fp4_e3m0", "int4_sym", "nf4", "int8_sym", "fp8_e4m3", "int4_asym"};
  unsigned block = 64;
  int repeat = 20;
  bool cpu = true;
  std::string json_path;
  app.add_option("--mib", mibs, "fp32 input sizes in MiB")->delimiter(',');
  app.add_option("--formats", formats, "codec formats (quant/ names)")->delimiter(',');
  app.add_option("--block", block, "block size of the blockwise formats")->check(CLI::Range(32u, 4096u));
  app.add_option("--repeat", repeat, "timed runs per measurement (the best is kept)")
      ->check(CLI::Range(1, 1000));
  app.add_flag("!--no-cpu", cpu, "skip the CPU encoder timing");
  app.add_option("--json", json_path, "also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);

  Check(cuda::Available(), "no GPU");
  std::printf("device: %s\n", cuda::DeviceDescription().c_str());
  auto codec_or = cuda::Codec::Create();
  Check(codec_or.status(), "codec");
  cuda::Codec& codec = **codec_or;
  const auto stream = static_cast<cudaStream_t>(codec.stream());

  nlohmann::json rows = nlohmann::json::array();
  std::printf("%8s %-10s %9s %9s %6s %9s %6s %9s %6s %11s %11s %8s\n", "MiB", "format", "copy GB/s",
              "enc GB/s", "ratio", "dec GB/s", "ratio", "dec+ GB/s", "ratio", "e2e in GB/s", "CPU in GB/s",
              "bits/val");
  for (double mib : mibs) {
    const uint64_t n = static_cast<uint64_t>(mib * 1024 * 1024 / 4);
    std::vector<float> host(n);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 1e-2f);
    for (float& v : host) v = normal(rng);
    auto x = cuda::DeviceBuffer::Allocate(n * 4);
    auto y = cuda::DeviceBuffer::Allocate(n * 4);
    Check(x.status(), "allocate");
    Check(y.status(), "allocate");
    Check(x->CopyFromHost(host.data(), n * 4), "upload");
    const double copy_s = BestSeconds(repeat, stream, [&] {
      Check(cudaMemcpyAsync(y->data(), x->data(), n * 4, cudaMemcpyDeviceToDevice, stream), "copy");
    });
    const double copy_bw = 2.0 * n * 4 / copy_s;

    for (const std::string& name : formats) {
      auto format = lowband::quant::ParseFormat(name);
      Check(format.status(), "format");
      CodecSpec spec;
      spec.format = *format;
      spec.block_size = block;
      Check(lowband::quant::Validate(spec), "spec");
      const uint64_t pb = lowband::quant::ParamBytes(spec, n), cb = lowband::quant::CodeBytes(spec, n);
      auto params = cuda::DeviceBuffer::Allocate(pb);
      auto codes = cuda::DeviceBuffer::Allocate(cb);
      auto error = cuda::DeviceBuffer::Allocate(sizeof(int));
      Check(params.status(), "allocate");
      Check(codes.status(), "allocate");
      Check(error.status(), "allocate");
      auto* p = static_cast<uint8_t*>(params->data());
      auto* c = static_cast<uint8_t*>(codes->data());
      auto* e = static_cast<int*>(error->data());
      Check(cudaMemset(e, 0, sizeof(int)), "memset");
      const double enc_s = BestSeconds(repeat, stream, [&] {
        Check(cuda::LaunchEncode(spec, x->floats(), n, p, c, e, stream), "encode");
      });
      const double dec_s = BestSeconds(repeat, stream, [&] {
        Check(cuda::LaunchDecode(spec, p, c, n, y->floats(), 1.0f, false, stream), "decode");
      });
      const double add_s = BestSeconds(repeat, stream, [&] {
        Check(cuda::LaunchDecode(spec, p, c, n, y->floats(), 0.5f, true, stream), "decode-add");
      });
      int flagged = 0;
      Check(cudaMemcpy(&flagged, e, sizeof(int), cudaMemcpyDeviceToHost), "flag");
      if (flagged) Die("encode kernel flagged the benchmark input");

      // End to end: kernel, payload to pinned host memory, header and CRC32C.
      const uint64_t size = lowband::quant::EncodedSize(spec, n);
      auto pinned = cuda::PinnedBuffer::Allocate(size);
      Check(pinned.status(), "pinned");
      const double e2e_s = BestWallSeconds(std::max(3, repeat / 4), [&] {
        Check(codec.EncodeToHost(spec, x->floats(), n, pinned->span()), "EncodeToHost");
      });
      // The payload is the CPU encoder's, byte for byte (the tests check every format; a spot check here).
      auto reference = lowband::quant::Encode(spec, host);
      Check(reference.status(), "cpu encode");
      if (!std::equal(reference->begin(), reference->end(), pinned->data()))
        Die("GPU payload differs from the CPU's");
      double cpu_s = 0;
      if (cpu) {
        cpu_s = BestWallSeconds(
            2, [&] { Check(lowband::quant::EncodeInto(spec, host, *reference), "cpu encode"); });
      }

      const double enc_bw = (n * 4.0 + pb + cb) / enc_s;
      const double dec_bw = (n * 4.0 + pb + cb) / dec_s;
      const double add_bw = (2.0 * n * 4 + pb + cb) / add_s;
      const double bits = lowband::quant::BitsPerValue(spec, n);
      std::printf("%8.0f %-10s %9.0f %9.0f %6.2f %9.0f %6.2f %9.0f %6.2f %11.1f %11.2f %8.2f\n", mib,
                  name.c_str(), copy_bw / 1e9, enc_bw / 1e9, enc_bw / copy_bw, dec_bw / 1e9, dec_bw / copy_bw,
                  add_bw / 1e9, add_bw / copy_bw, n * 4.0 / e2e_s / 1e9, cpu ? n * 4.0 / cpu_s / 1e9 : 0.0,
                  bits);
      std::fflush(stdout);
      rows.push_back({{"mib", mib},
                      {"values", n},
                      {"format", name},
                      {"block", block},
                      {"bits_per_value", bits},
                      {"copy_gbps", copy_bw / 1e9},
                      {"encode_gbps", enc_bw / 1e9},
                      {"encode_ratio", enc_bw / copy_bw},
                      {"decode_gbps", dec_bw / 1e9},
                      {"decode_ratio", dec_bw / copy_bw},
                      {"decode_add_gbps", add_bw / 1e9},
                      {"decode_add_ratio", add_bw / copy_bw},
                      {"encode_to_host_input_gbps", n * 4.0 / e2e_s / 1e9},
                      {"cpu_encode_input_gbps", cpu ? n * 4.0 / cpu_s / 1e9 : 0.0}});
    }
  }
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << nlohmann::json{{"device", cuda::DeviceDescription()}, {"repeat", repeat}, {"rows", rows}}.dump(2)
        << "\n";
    if (!out) Die("cannot write " + json_path);
  }
  return 0;
}
