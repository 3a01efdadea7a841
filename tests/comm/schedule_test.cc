#include "comm/schedule.h"

#include <map>
#include <numeric>

#include <gtest/gtest.h>

namespace lowband::comm {
namespace {

// embed, blocks 0..5 (two tensors each), final norm, head.
ModelSignature SixBlockSignature() {
  std::vector<TensorInfo> t;
  t.push_back({"embed.weight", {10, 4}, "float32"});
  for (int b = 0; b < 6; ++b) {
    t.push_back({"blocks." + std::to_string(b) + ".w", {4, 4}, "float32"});
    t.push_back({"blocks." + std::to_string(b) + ".b", {4}, "float32"});
  }
  t.push_back({"norm.weight", {4}, "float32"});
  t.push_back({"head.weight", {4, 10}, "float32"});
  return *MakeSignature(std::move(t));
}

// Fragment of every tensor, by name.
std::map<std::string, uint32_t> FragmentsByName(const ModelSignature& s, const FragmentLayout& l) {
  std::map<std::string, uint32_t> m;
  for (uint32_t i = 0; i < s.tensors.size(); ++i) m[s.tensors[i].name] = l.fragment_of_tensor(i);
  return m;
}

TEST(BlockIndexOf, ParsesOnlyBlockPrefixes) {
  EXPECT_EQ(BlockIndexOf("blocks.12.attn.w"), 12u);
  EXPECT_EQ(BlockIndexOf("blocks.0.b"), 0u);
  EXPECT_EQ(BlockIndexOf("blocks.x.w"), std::nullopt);
  EXPECT_EQ(BlockIndexOf("blocks.3"), std::nullopt);
  EXPECT_EQ(BlockIndexOf("blocks..w"), std::nullopt);
  EXPECT_EQ(BlockIndexOf("myblocks.1.w"), std::nullopt);
  EXPECT_EQ(BlockIndexOf("embed.weight"), std::nullopt);
}

TEST(FragmentLayout, OwnPolicyStridesBlocksAndKeepsNonBlockApart) {
  const ModelSignature s = SixBlockSignature();
  auto l = FragmentLayout::Create(s, {4, NonBlockPolicy::kOwn});
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  ASSERT_EQ(l->num_fragments(), 4u);
  auto f = FragmentsByName(s, *l);
  for (int b = 0; b < 6; ++b) {
    EXPECT_EQ(f["blocks." + std::to_string(b) + ".w"], static_cast<uint32_t>(b % 3)) << "block " << b;
    EXPECT_EQ(f["blocks." + std::to_string(b) + ".b"], static_cast<uint32_t>(b % 3)) << "block " << b;
  }
  EXPECT_EQ(f["embed.weight"], 3u);
  EXPECT_EQ(f["norm.weight"], 3u);
  EXPECT_EQ(f["head.weight"], 3u);
  EXPECT_EQ(l->element_count(0), 2u * 20);  // blocks 0 and 3
  EXPECT_EQ(l->element_count(3), 40u + 4 + 40);
  uint64_t total = 0;
  for (uint32_t p = 0; p < 4; ++p) total += l->element_count(p);
  EXPECT_EQ(total, s.total_elements());
  // Within a fragment, tensors keep signature order.
  for (const FragmentInfo& fi : l->fragments())
    EXPECT_TRUE(std::is_sorted(fi.tensors.begin(), fi.tensors.end()));
}

TEST(FragmentLayout, SpreadPolicyRoundRobinsNonBlockTensors) {
  const ModelSignature s = SixBlockSignature();
  auto l = FragmentLayout::Create(s, {3, NonBlockPolicy::kSpread});
  ASSERT_TRUE(l.ok());
  auto f = FragmentsByName(s, *l);
  for (int b = 0; b < 6; ++b)
    EXPECT_EQ(f["blocks." + std::to_string(b) + ".w"], static_cast<uint32_t>(b % 3));
  EXPECT_EQ(f["embed.weight"], 0u);
  EXPECT_EQ(f["norm.weight"], 1u);
  EXPECT_EQ(f["head.weight"], 2u);
}

TEST(FragmentLayout, OneFragmentHoldsEverything) {
  const ModelSignature s = SixBlockSignature();
  for (NonBlockPolicy policy : {NonBlockPolicy::kOwn, NonBlockPolicy::kSpread}) {
    auto l = FragmentLayout::Create(s, {1, policy});
    ASSERT_TRUE(l.ok());
    EXPECT_EQ(l->num_fragments(), 1u);
    EXPECT_EQ(l->element_count(0), s.total_elements());
    EXPECT_EQ(l->fragment(0).tensors.size(), s.tensors.size());
  }
}

TEST(FragmentLayout, RefusesEmptyFragments) {
  const ModelSignature s = SixBlockSignature();
  auto too_many = FragmentLayout::Create(s, {8, NonBlockPolicy::kOwn});  // 6 blocks over 7 fragments
  EXPECT_EQ(too_many.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_many.status().message().find("empty"), std::string::npos) << too_many.status().message();
  EXPECT_FALSE(FragmentLayout::Create(s, {0, NonBlockPolicy::kOwn}).ok());

  auto no_blocks = *MakeSignature({{"a", {3}, "float32"}, {"b", {3}, "float32"}});
  auto own = FragmentLayout::Create(no_blocks, {2, NonBlockPolicy::kOwn});
  EXPECT_NE(own.status().message().find("spread"), std::string::npos) << own.status().message();
  EXPECT_TRUE(FragmentLayout::Create(no_blocks, {2, NonBlockPolicy::kSpread}).ok());
}

TEST(FragmentLayout, GatherScatterRoundTripAndAssignmentRebuild) {
  const ModelSignature s = SixBlockSignature();
  auto l = *FragmentLayout::Create(s, {4, NonBlockPolicy::kOwn});
  std::vector<float> all(s.total_elements());
  std::iota(all.begin(), all.end(), 0.0f);
  std::vector<float> back(all.size(), -1.0f);
  for (uint32_t p = 0; p < l.num_fragments(); ++p) {
    std::vector<float> frag(l.element_count(p));
    ASSERT_TRUE(l.Gather(p, all, frag).ok());
    // The first tensor of fragment p starts at its signature offset.
    EXPECT_EQ(frag[0], static_cast<float>(l.tensor_offset(l.fragment(p).tensors[0])));
    ASSERT_TRUE(l.Scatter(p, frag, back).ok());
  }
  EXPECT_EQ(back, all);
  std::vector<float> wrong(3);
  EXPECT_FALSE(l.Gather(0, all, wrong).ok());

  std::vector<std::vector<uint32_t>> assignment;
  for (const FragmentInfo& f : l.fragments()) assignment.push_back(f.tensors);
  auto rebuilt = FragmentLayout::FromAssignment(s, assignment);
  ASSERT_TRUE(rebuilt.ok());
  EXPECT_TRUE(rebuilt->CheckSameAs(l).ok());
  auto spread = *FragmentLayout::Create(s, {4, NonBlockPolicy::kSpread});
  Status diff = spread.CheckSameAs(l);
  EXPECT_EQ(diff.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(diff.message().find("fragment 0"), std::string::npos) << diff.message();

  auto twice = assignment;
  twice[1].push_back(twice[0][0]);
  EXPECT_FALSE(FragmentLayout::FromAssignment(s, twice).ok());
  auto missing = assignment;
  missing[3].pop_back();
  EXPECT_FALSE(FragmentLayout::FromAssignment(s, missing).ok());
}

TEST(FragmentSchedule, OffsetsAreStaggered) {
  auto s = *FragmentSchedule::Create(12, 3, 1);
  EXPECT_EQ(s.Offset(0), 0u);
  EXPECT_EQ(s.Offset(1), 4u);
  EXPECT_EQ(s.Offset(2), 8u);
  auto odd = *FragmentSchedule::Create(10, 3, 1);
  EXPECT_EQ(odd.Offset(1), 3u);
  EXPECT_EQ(odd.Offset(2), 6u);
}

// Every fragment is due every H steps; rounds count up by one per sync; at most one fragment is
// due per step (H % P == 0 and not).
TEST(FragmentSchedule, EveryFragmentEveryHStepsOneAtATime) {
  for (auto [h, p] : std::vector<std::pair<uint64_t, uint32_t>>{{12, 3}, {100, 4}, {10, 3}, {5, 5}, {7, 1}}) {
    auto s = *FragmentSchedule::Create(h, p, 0);
    std::vector<std::vector<uint64_t>> due(p);
    for (uint64_t t = 0; t <= 20 * h; ++t) {
      auto at = s.FragmentsDueAt(t);
      EXPECT_LE(at.size(), 1u) << "H=" << h << " P=" << p << " t=" << t;
      for (uint32_t f : at) {
        EXPECT_EQ(s.RoundAt(f, t), due[f].size()) << "round numbering, t=" << t;
        EXPECT_EQ(s.DueStep(f, due[f].size()), t);
        due[f].push_back(t);
      }
    }
    for (uint32_t f = 0; f < p; ++f) {
      ASSERT_GE(due[f].size(), 19u) << "H=" << h << " P=" << p << " fragment " << f;
      EXPECT_EQ(due[f][0], s.Offset(f) == 0 ? h : s.Offset(f));
      for (size_t k = 1; k < due[f].size(); ++k) EXPECT_EQ(due[f][k] - due[f][k - 1], h);
    }
  }
}

TEST(FragmentSchedule, NextDueAndApplyStep) {
  auto s = *FragmentSchedule::Create(12, 3, 2);
  EXPECT_EQ(s.NextDue(0, 0), 12u);
  EXPECT_EQ(s.NextDue(0, 12), 12u);
  EXPECT_EQ(s.NextDue(0, 13), 24u);
  EXPECT_EQ(s.NextDue(1, 0), 4u);
  EXPECT_EQ(s.NextDue(1, 5), 16u);
  EXPECT_EQ(s.NextDue(2, 8), 8u);
  EXPECT_EQ(s.ApplyStep(1, 0), 6u);
  EXPECT_EQ(s.ApplyStep(0, 1), 26u);
  EXPECT_FALSE(s.IsDue(0, 0));
  EXPECT_TRUE(s.IsDue(1, 16));
  EXPECT_FALSE(s.IsDue(1, 12));
}

TEST(FragmentSchedule, DiLoCoIsOneFragmentWithoutOverlap) {
  auto s = *FragmentSchedule::Create(50, 1, 0);
  EXPECT_EQ(s.FragmentsDueAt(50), std::vector<uint32_t>{0});
  EXPECT_TRUE(s.FragmentsDueAt(49).empty());
  EXPECT_EQ(s.RoundAt(0, 100), 1u);
  EXPECT_EQ(s.ApplyStep(0, 1), 100u);
}

TEST(FragmentSchedule, RejectsBadParametersWithClearMessages) {
  auto small = FragmentSchedule::Create(2, 3, 0);
  ASSERT_EQ(small.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(small.status().message().find("H=2"), std::string::npos) << small.status().message();
  EXPECT_NE(small.status().message().find("P=3"), std::string::npos) << small.status().message();
  auto overlap = FragmentSchedule::Create(10, 2, 10);
  EXPECT_NE(overlap.status().message().find("tau=10"), std::string::npos) << overlap.status().message();
  EXPECT_FALSE(FragmentSchedule::Create(0, 1, 0).ok());
  EXPECT_FALSE(FragmentSchedule::Create(10, 0, 0).ok());
}

TEST(NonBlockPolicy, ParsesItsNames) {
  EXPECT_EQ(*ParseNonBlockPolicy("own"), NonBlockPolicy::kOwn);
  EXPECT_EQ(*ParseNonBlockPolicy("spread"), NonBlockPolicy::kSpread);
  EXPECT_FALSE(ParseNonBlockPolicy("shared").ok());
  EXPECT_EQ(NonBlockPolicyName(NonBlockPolicy::kSpread), "spread");
}

}  // namespace
}  // namespace lowband::comm
