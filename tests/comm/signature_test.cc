#include "comm/signature.h"

#include <cstdint>
#include <limits>

#include <gtest/gtest.h>

namespace lowband::comm {
namespace {

std::vector<TensorInfo> Tensors() {
  return {{"embed.weight", {8, 4}, "float32"}, {"blocks.0.w", {4, 4}, "float32"}, {"head.b", {}, "float32"}};
}

TEST(Signature, HashIsStableAndCoversEveryField) {
  auto a = *MakeSignature(Tensors());
  // Golden value: the hash is part of the protocol; changing the encoding breaks old workers.
  EXPECT_EQ(a.hash, 0x2d74671a9f27828cULL) << std::hex << a.hash;
  EXPECT_EQ(a.total_elements(), 32u + 16 + 1);
  EXPECT_EQ(a.tensors[2].element_count(), 1u);  // a scalar

  auto renamed = Tensors();
  renamed[1].name = "blocks.0.v";
  auto reshaped = Tensors();
  reshaped[1].shape = {2, 8};
  auto retyped = Tensors();
  retyped[1].dtype = "bfloat16";
  auto reordered = Tensors();
  std::swap(reordered[0], reordered[1]);
  for (auto& t : {renamed, reshaped, retyped, reordered}) EXPECT_NE(ComputeSignatureHash(t), a.hash);
}

TEST(Signature, ValidationAndComparisonNameTheProblem) {
  auto dup = Tensors();
  dup[2].name = "embed.weight";
  auto d = MakeSignature(dup);
  EXPECT_NE(d.status().message().find("appears twice"), std::string::npos) << d.status().message();
  auto neg = Tensors();
  neg[0].shape = {-1, 4};
  EXPECT_FALSE(MakeSignature(neg).ok());
  EXPECT_FALSE(MakeSignature({}).ok());
  // Element counts that wrap around uint64 (found by fuzz_comm_wire: (2^63-1)^3 twice made a
  // 27-value model whose SeedState read past the values) or exceed one fp32 vector are refused.
  constexpr int64_t kHuge = std::numeric_limits<int64_t>::max();
  auto wraps = Tensors();
  wraps.push_back({"x", {kHuge, kHuge, kHuge}, "float32"});
  wraps.push_back({"y", {kHuge, kHuge, kHuge}, "float32"});
  auto w = MakeSignature(wraps);
  EXPECT_NE(w.status().message().find("beyond"), std::string::npos) << w.status().message();
  auto sum_wraps = Tensors();
  sum_wraps.push_back({"x", {int64_t{1} << 62}, "float32"});
  sum_wraps.push_back({"y", {int64_t{1} << 62}, "float32"});
  sum_wraps.push_back({"z", {int64_t{1} << 62}, "float32"});
  sum_wraps.push_back({"u", {int64_t{1} << 62}, "float32"});
  EXPECT_FALSE(MakeSignature(sum_wraps).ok());
  auto big = Tensors();
  big[0].shape = {int64_t{1} << 62};
  EXPECT_FALSE(MakeSignature(big).ok());
  big[0].shape = {int64_t{1} << 40};  // huge, but representable
  EXPECT_TRUE(MakeSignature(big).ok());

  auto ours = *MakeSignature(Tensors());
  auto shape = Tensors();
  shape[1].shape = {4, 5};
  Status s = CompareSignatures(ours, *MakeSignature(shape));
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("blocks.0.w"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("[4, 4]"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("[4, 5]"), std::string::npos) << s.message();
  auto fewer = Tensors();
  fewer.pop_back();
  EXPECT_NE(CompareSignatures(ours, *MakeSignature(fewer)).message().find("3 tensors"), std::string::npos);
  EXPECT_TRUE(CompareSignatures(ours, *MakeSignature(Tensors())).ok());
  auto bad_hash = ours;
  bad_hash.hash ^= 1;
  EXPECT_FALSE(ValidateSignature(bad_hash).ok());
}

}  // namespace
}  // namespace lowband::comm
