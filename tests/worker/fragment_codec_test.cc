// The engine's fragment codec gives exactly the CPU reference's bytes and floats (quant::Encode,
// quant::EncodeWithFeedback, comm::ApplyOuterUpdate) on the CPU and, where LibTorch has CUDA and a GPU
// is present, on the GPU; bad payloads and bad tensors are refused and change nothing.
#include "worker/fragment_codec.h"

#include <cmath>
#include <cstring>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "comm/outer_update.h"
#include "quant/codec.h"
#include "quant/cuda.h"
#include "worker/torch_runtime.h"

namespace lowband::worker {
namespace {

std::vector<float> Values(size_t n, uint64_t seed, float scale = 1e-2f) {
  torch::manual_seed(seed);
  const torch::Tensor t = torch::randn({static_cast<int64_t>(n)}) * scale;
  return {t.data_ptr<float>(), t.data_ptr<float>() + n};
}

std::vector<float> HostValues(const torch::Tensor& t) {
  const torch::Tensor h = OnHost(t);
  const std::span<const float> v = FloatsOf(h);
  return {v.begin(), v.end()};
}

bool Same(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<quant::CodecSpec> Specs() {
  quant::CodecSpec fp4;  // Streaming DiLoCo's default upload codec
  fp4.format = quant::Format::kFp4E3M0;
  quant::CodecSpec int4;
  int4.format = quant::Format::kInt4Sym;
  int4.block_size = 128;
  int4.rounding = quant::Rounding::kStochastic;
  int4.seed = 77;
  quant::CodecSpec int8;
  int8.format = quant::Format::kInt8Asym;
  int8.scale_type = quant::ScaleType::kFp32;
  quant::CodecSpec fp32;
  fp32.format = quant::Format::kFp32;
  return {fp4, int4, int8, fp32};
}

// Runs every property on tensors of `device`.
void CheckMatchesTheCpuReference(const torch::Device& device) {
  auto codec = FragmentCodec::For(device);
  ASSERT_TRUE(codec.ok()) << codec.status().message();
  FragmentCodec& c = **codec;
  const size_t n = 1000;  // not a multiple of any block size
  for (const quant::CodecSpec& spec : Specs()) {
    SCOPED_TRACE(std::string(quant::FormatName(spec.format)));
    const std::vector<float> x = Values(n, 1);
    // Encode: the reference's bytes.
    auto want = quant::Encode(spec, x);
    ASSERT_TRUE(want.ok());
    auto got = c.Encode(spec, ToDevice(x, device));
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_EQ(*got, *want);

    // Error feedback over three rounds: the same payloads and the same residual, updated in place.
    std::vector<float> ref_residual(n, 0.0f);
    torch::Tensor residual = ToDevice(ref_residual, device);
    for (uint64_t round = 0; round < 3; ++round) {
      const std::vector<float> xr = Values(n, 10 + round);
      std::vector<uint8_t> ref_payload;
      ASSERT_TRUE(quant::EncodeWithFeedback(spec, xr, ref_residual, &ref_payload).ok());
      auto payload = c.EncodeWithFeedback(spec, ToDevice(xr, device), residual);
      ASSERT_TRUE(payload.ok()) << payload.status().message();
      EXPECT_EQ(*payload, ref_payload) << "round " << round;
      EXPECT_TRUE(Same(HostValues(residual), ref_residual)) << "round " << round;
    }

    // Applying an update: g -= dec(payload), bit for bit.
    std::vector<float> ref_g = Values(n, 3, 1.0f), scratch;
    torch::Tensor g = ToDevice(ref_g, device);
    ASSERT_TRUE(comm::ApplyOuterUpdate(*want, ref_g, scratch).ok());
    ASSERT_TRUE(c.ApplyOuterUpdate(*want, g).ok());
    EXPECT_TRUE(Same(HostValues(g), ref_g));
  }

  // Bad input is refused with a reason, and changes nothing.
  quant::CodecSpec spec = Specs()[0];
  const std::vector<float> x = Values(n, 5);
  auto payload = quant::Encode(spec, x);
  ASSERT_TRUE(payload.ok());
  const std::vector<float> g0 = Values(n, 6, 1.0f);
  torch::Tensor g = ToDevice(g0, device);

  std::vector<uint8_t> corrupt = *payload;
  corrupt[corrupt.size() / 2] ^= 0x40;  // a flipped bit in the body: the checksum catches it
  Status s = c.ApplyOuterUpdate(corrupt, g);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(Same(HostValues(g), g0)) << s.message();

  auto other_size = quant::Encode(spec, Values(n + 1, 5));  // another fragment's update
  ASSERT_TRUE(other_size.ok());
  s = c.ApplyOuterUpdate(*other_size, g);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("1001"), std::string::npos) << s.message();
  EXPECT_TRUE(Same(HostValues(g), g0));

  // A valid update that would overflow one value to infinity.
  std::vector<float> huge(n, 0.0f), g_big = g0;
  huge[17] = -3e38f;
  g_big[17] = 3e38f;
  quant::CodecSpec exact;
  exact.format = quant::Format::kFp32;
  auto overflow = quant::Encode(exact, huge);
  ASSERT_TRUE(overflow.ok());
  torch::Tensor gb = ToDevice(g_big, device);
  s = c.ApplyOuterUpdate(*overflow, gb);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("non-finite"), std::string::npos) << s.message();
  EXPECT_TRUE(Same(HostValues(gb), g_big));

  // A non-finite outer gradient is refused by name; error feedback keeps its residual.
  std::vector<float> bad = x;
  bad[3] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> r0 = Values(n, 8, 1e-3f);
  torch::Tensor residual = ToDevice(r0, device);
  s = c.Encode(spec, ToDevice(bad, device)).status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("nan"), std::string::npos) << s.message();
  s = c.EncodeWithFeedback(spec, ToDevice(bad, device), residual).status();
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(Same(HostValues(residual), r0)) << s.message();

  // Tensors that are not 1-D contiguous fp32 on the codec's device are refused.
  EXPECT_EQ(c.Encode(spec, ToDevice(x, device).view({10, 100})).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Encode(spec, ToDevice(x, device).to(torch::kDouble)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Encode(spec, ToDevice(x, device).slice(0, 0, n, 2)).status().code(),
            StatusCode::kInvalidArgument);
  torch::Tensor short_residual = ToDevice(Values(n - 1, 9), device);
  EXPECT_EQ(c.EncodeWithFeedback(spec, ToDevice(x, device), short_residual).status().code(),
            StatusCode::kInvalidArgument);
}

class FragmentCodecTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ASSERT_TRUE(ConfigureTorchThreads({}).ok()); }
};

TEST_F(FragmentCodecTest, CpuTensorsGetTheCpuReferenceBytesAndFloats) {
  auto codec = FragmentCodec::For(torch::kCPU);
  ASSERT_TRUE(codec.ok());
  EXPECT_EQ((*codec)->path(), "cpu codec");
  CheckMatchesTheCpuReference(torch::kCPU);
}

TEST_F(FragmentCodecTest, UpdatesAreAppliedToCpuTensorsInPlace) {
  // The CPU path works on the tensor's own memory: an update applied to g is visible through any
  // other handle to the same storage (what the engine relies on when it keeps g_p as a tensor).
  auto codec = FragmentCodec::For(torch::kCPU);
  ASSERT_TRUE(codec.ok());
  const std::vector<float> x = Values(256, 1);
  auto payload = quant::Encode(Specs()[0], x);
  ASSERT_TRUE(payload.ok());
  torch::Tensor g = torch::ones({256});
  const torch::Tensor alias = g;
  ASSERT_TRUE((*codec)->ApplyOuterUpdate(*payload, g).ok());
  EXPECT_EQ(alias.data_ptr<float>(), g.data_ptr<float>());
  EXPECT_NE(alias[0].item<float>(), 1.0f);
}

TEST_F(FragmentCodecTest, TensorsOnAnotherDeviceAreRefused) {
  auto codec = FragmentCodec::For(torch::kCPU);
  ASSERT_TRUE(codec.ok());
  if (!torch::cuda::is_available()) {
    // The device check itself, without a GPU: a codec for cuda:0 is refused a CPU tensor. Without the
    // GPU codec this build's cuda codec falls back to host copies, and says so.
    auto cuda_codec = FragmentCodec::For(torch::Device(torch::kCUDA, 0));
    ASSERT_TRUE(cuda_codec.ok());
    EXPECT_NE((*cuda_codec)->path().find("host copies"), std::string::npos) << (*cuda_codec)->path();
    const Status s = (*cuda_codec)->Encode(Specs()[0], torch::zeros({64})).status();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("cuda:0"), std::string::npos) << s.message();
    return;
  }
  const Status s = (*codec)->Encode(Specs()[0], torch::zeros({64}, torch::Device(torch::kCUDA, 0))).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("cuda:0"), std::string::npos) << s.message();
}

TEST_F(FragmentCodecTest, GpuTensorsGetTheCpuReferenceBytesAndFloats) {
  if (!torch::cuda::is_available()) {
    GTEST_SKIP()
        << "needs a CUDA build of LibTorch and a visible GPU; this process has neither (docs/gpu.md)";
  }
  const torch::Device device(torch::kCUDA, 0);
  auto codec = FragmentCodec::For(device);
  ASSERT_TRUE(codec.ok()) << codec.status().message();
  // With the GPU codec built and usable, the device path is the one under test.
  if (quant::cuda::Available().ok()) {
    EXPECT_EQ((*codec)->path(), "gpu codec on cuda:0");
  }
  std::cout << "fragment codec on cuda:0: " << (*codec)->path() << "\n";
  CheckMatchesTheCpuReference(device);
}

}  // namespace
}  // namespace lowband::worker
