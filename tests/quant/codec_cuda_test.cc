// The CUDA codecs against the CPU reference: identical payload bytes for every blockwise format,
// scale type, rounding and block size; identical decoded (and decode-added) floats; the CPU's
// errors for bad input; a bad payload changes nothing on the device. Needs a CUDA build and a GPU:
// elsewhere the GPU tests skip, saying which is missing, and one test checks that the library then
// refuses clearly instead of crashing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "quant/codec.h"
#include "quant/cuda.h"

namespace lowband::quant {
namespace {

#define SKIP_WITHOUT_GPU()                                                                     \
  do {                                                                                         \
    if (Status s = cuda::Available(); !s.ok()) GTEST_SKIP() << "needs a GPU: " << s.message(); \
  } while (0)

// Values with a spread of block magnitudes, exact zeros of both signs, subnormals and repeats.
std::vector<float> TestValues(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) {
    const float block_scale = std::ldexp(1.0f, static_cast<int>((i / 64) % 24) - 12);
    x[i] = normal(rng) * block_scale;
    switch (rng() % 41) {
      case 0:
        x[i] = 0.0f;
        break;
      case 1:
        x[i] = -0.0f;
        break;
      case 2:
        x[i] = std::numeric_limits<float>::denorm_min() * static_cast<float>(rng() % 100);
        break;
      case 3:
        x[i] = i > 0 ? x[i - 1] : x[i];
        break;
      default:
        break;
    }
  }
  return x;
}

std::vector<uint32_t> Bits(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  if (!v.empty()) std::memcpy(b.data(), v.data(), v.size() * 4);
  return b;
}

// Device copy of x, starting `misalign` floats into the buffer (to test unaligned pointers).
struct OnDevice {
  cuda::DeviceBuffer buffer;
  float* ptr = nullptr;
};
OnDevice Upload(const std::vector<float>& x, size_t misalign = 0) {
  OnDevice d;
  auto b = cuda::DeviceBuffer::Allocate((x.size() + misalign + 1) * sizeof(float));
  EXPECT_TRUE(b.ok()) << b.status().message();
  d.buffer = std::move(b).value();
  EXPECT_TRUE(d.buffer.CopyFromHost(x.data(), x.size() * sizeof(float), misalign * sizeof(float)).ok());
  d.ptr = d.buffer.floats() + misalign;
  return d;
}
std::vector<float> Download(const OnDevice& d, size_t n) {
  std::vector<float> out(n);
  const size_t offset = static_cast<size_t>(d.ptr - d.buffer.floats()) * sizeof(float);
  EXPECT_TRUE(d.buffer.CopyToHost(out.data(), n * sizeof(float), offset).ok());
  return out;
}

class GpuCodecFormat : public ::testing::TestWithParam<Format> {};

TEST_P(GpuCodecFormat, SameBytesAndFloatsAsTheCpuReference) {
  SKIP_WITHOUT_GPU();
  auto codec_or = cuda::Codec::Create();
  ASSERT_TRUE(codec_or.ok()) << codec_or.status().message();
  cuda::Codec& codec = **codec_or;
  const Format format = GetParam();
  int cases = 0;
  for (ScaleType scale : {ScaleType::kBf16, ScaleType::kFp32, ScaleType::kFp16, ScaleType::kPow2}) {
    for (Rounding rounding : {Rounding::kNearest, Rounding::kStochastic}) {
      for (uint32_t block : {64u, 32u, 128u, 256u, 72u, 1024u}) {
        CodecSpec spec;
        spec.format = format;
        spec.scale_type = scale;
        spec.rounding = rounding;
        spec.block_size = block;
        spec.seed = 0x1234567890ULL + block;
        if (!Validate(spec).ok()) continue;  // e.g. an asymmetric format with a pow2 scale
        for (size_t n :
             {size_t{1}, size_t{7}, size_t{8}, size_t{63}, size_t{65}, size_t{1000}, size_t{100003}}) {
          const size_t misalign = n % 2;  // odd sizes also start off a 16-byte boundary
          const std::vector<float> x = TestValues(n, static_cast<uint32_t>(n * 31 + block));
          const std::string what = std::string(FormatName(format)) + " scale " +
                                   std::string(ScaleTypeName(scale)) +
                                   (rounding == Rounding::kStochastic ? " stochastic" : "") + " block " +
                                   std::to_string(block) + " n " + std::to_string(n);
          // CPU reference (fp16 scales can be out of range for the widest blocks: both must refuse).
          auto cpu = Encode(spec, x);
          OnDevice dx = Upload(x, misalign);
          std::vector<uint8_t> gpu(EncodedSize(spec, n), 0xAB);
          const Status s = codec.EncodeToHost(spec, dx.ptr, n, gpu);
          if (!cpu.ok()) {
            EXPECT_EQ(s.message(), cpu.status().message()) << what;
            continue;
          }
          ASSERT_TRUE(s.ok()) << what << ": " << s.message();
          ASSERT_EQ(gpu, *cpu) << what;
          ++cases;

          // Decode and decode-add on the device give the CPU's floats to the bit.
          auto want = Decode(*cpu);
          ASSERT_TRUE(want.ok());
          OnDevice out = Upload(std::vector<float>(n, 0.0f), 1 - misalign);
          ASSERT_TRUE(codec.DecodeToDevice(gpu, out.ptr, n).ok()) << what;
          EXPECT_EQ(Bits(Download(out, n)), Bits(*want)) << what;

          std::vector<float> acc = TestValues(n, 99);
          OnDevice dacc = Upload(acc, misalign);
          ASSERT_TRUE(DecodeAdd(*cpu, -0.37f, acc).ok());
          ASSERT_TRUE(codec.DecodeAddToDevice(gpu, -0.37f, dacc.ptr, n).ok()) << what;
          EXPECT_EQ(Bits(Download(dacc, n)), Bits(acc)) << what;
        }
      }
    }
  }
  EXPECT_GT(cases, 50);
}

INSTANTIATE_TEST_SUITE_P(AllBlockwise, GpuCodecFormat,
                         ::testing::Values(Format::kInt8Sym, Format::kInt8Asym, Format::kInt4Sym,
                                           Format::kInt4Asym, Format::kInt2Sym, Format::kInt2Asym,
                                           Format::kFp8E4M3, Format::kFp4E2M1, Format::kFp4E3M0,
                                           Format::kNf4),
                         [](const auto& p) { return std::string(FormatName(p.param)); });

TEST(GpuCodec, LargeInputMatchesTheCpu) {
  SKIP_WITHOUT_GPU();
  auto codec = cuda::Codec::Create();
  ASSERT_TRUE(codec.ok());
  const size_t n = (size_t{1} << 24) + 37;  // many thread blocks, and a ragged last block
  const std::vector<float> x = TestValues(n, 7);
  OnDevice dx = Upload(x);
  for (Format f : {Format::kFp4E3M0, Format::kInt8Sym}) {
    CodecSpec spec;
    spec.format = f;
    auto cpu = Encode(spec, x);
    ASSERT_TRUE(cpu.ok());
    std::vector<uint8_t> gpu(cpu->size());
    ASSERT_TRUE((*codec)->EncodeToHost(spec, dx.ptr, n, gpu).ok());
    EXPECT_TRUE(gpu == *cpu) << FormatName(f);
  }
}

TEST(GpuCodec, PassthroughFormatsGoThroughTheCpuCodec) {
  SKIP_WITHOUT_GPU();
  auto codec = cuda::Codec::Create();
  ASSERT_TRUE(codec.ok());
  const std::vector<float> x = TestValues(1001, 3);
  OnDevice dx = Upload(x);
  for (Format f : {Format::kFp32, Format::kBf16, Format::kFp16}) {
    CodecSpec spec;
    spec.format = f;
    auto cpu = Encode(spec, x);
    ASSERT_TRUE(cpu.ok());
    std::vector<uint8_t> gpu(cpu->size());
    ASSERT_TRUE((*codec)->EncodeToHost(spec, dx.ptr, x.size(), gpu).ok());
    EXPECT_EQ(gpu, *cpu) << FormatName(f);
    OnDevice out = Upload(std::vector<float>(x.size()));
    ASSERT_TRUE((*codec)->DecodeToDevice(gpu, out.ptr, x.size()).ok());
    EXPECT_EQ(Bits(Download(out, x.size())), Bits(*Decode(*cpu))) << FormatName(f);
  }
}

TEST(GpuCodec, NonFiniteInputIsTheCpuErrorNamingTheValue) {
  SKIP_WITHOUT_GPU();
  auto codec = cuda::Codec::Create();
  ASSERT_TRUE(codec.ok());
  std::vector<float> x = TestValues(5000, 5);
  x[4321] = std::numeric_limits<float>::quiet_NaN();
  x[4400] = std::numeric_limits<float>::infinity();
  OnDevice dx = Upload(x);
  CodecSpec spec;
  const auto cpu = Encode(spec, x);
  ASSERT_FALSE(cpu.ok());
  std::vector<uint8_t> gpu(EncodedSize(spec, x.size()));
  const Status s = (*codec)->EncodeToHost(spec, dx.ptr, x.size(), gpu);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), cpu.status().message());
  EXPECT_NE(s.message().find("4321"), std::string::npos) << s.message();
}

TEST(GpuCodec, BadPayloadIsRefusedAndTheDeviceBufferKeepsItsValues) {
  SKIP_WITHOUT_GPU();
  auto codec = cuda::Codec::Create();
  ASSERT_TRUE(codec.ok());
  const std::vector<float> x = TestValues(4096, 11);
  CodecSpec spec;
  auto payload = Encode(spec, x);
  ASSERT_TRUE(payload.ok());
  const std::vector<float> before = TestValues(4096, 12);
  OnDevice out = Upload(before);

  std::vector<uint8_t> corrupt = *payload;
  corrupt[kHeaderBytes + 100] ^= 0x10;
  Status s = (*codec)->DecodeToDevice(corrupt, out.ptr, x.size());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("checksum"), std::string::npos) << s.message();

  s = (*codec)->DecodeAddToDevice(*payload, 1.0f, out.ptr, x.size() - 1);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("different tensor"), std::string::npos) << s.message();

  s = (*codec)->DecodeAddToDevice(*payload, std::numeric_limits<float>::quiet_NaN(), out.ptr, x.size());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);

  std::vector<uint8_t> truncated(payload->begin(), payload->end() - 1);
  EXPECT_EQ((*codec)->DecodeToDevice(truncated, out.ptr, x.size()).code(), StatusCode::kDataLoss);
  EXPECT_EQ(Bits(Download(out, x.size())), Bits(before));
}

TEST(GpuCodec, OutputBufferTooSmallIsRefused) {
  SKIP_WITHOUT_GPU();
  auto codec = cuda::Codec::Create();
  ASSERT_TRUE(codec.ok());
  const std::vector<float> x = TestValues(640, 13);
  OnDevice dx = Upload(x);
  CodecSpec spec;
  std::vector<uint8_t> small(EncodedSize(spec, x.size()) - 1);
  const Status s = (*codec)->EncodeToHost(spec, dx.ptr, x.size(), small);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("EncodedSize"), std::string::npos) << s.message();
}

TEST(GpuCodec, WithoutCudaEveryCallSaysWhy) {
  if (cuda::Available().ok()) GTEST_SKIP() << "a GPU is usable here: " << cuda::DeviceDescription();
  const Status s = cuda::Available();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("CUDA"), std::string::npos) << s.message();
  auto codec = cuda::Codec::Create();
  ASSERT_FALSE(codec.ok());
  EXPECT_EQ(codec.status().message(), s.message());
  EXPECT_FALSE(cuda::DeviceBuffer::Allocate(64).ok());
  EXPECT_FALSE(cuda::PinnedBuffer::Allocate(64).ok());
  // The CPU codec is unaffected.
  EXPECT_TRUE(Encode(CodecSpec{}, std::vector<float>(64, 1.0f)).ok());
}

}  // namespace
}  // namespace lowband::quant
