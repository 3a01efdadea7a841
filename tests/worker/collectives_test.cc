// DataParallelGroup: two ranks (threads of this process, each with its own TCPStore client and Gloo
// pair over loopback) all-reduce, broadcast and compare, and fail with a clear error instead of
// hanging when a peer stops answering.
#include "worker/collectives.h"

#include <chrono>
#include <functional>
#include <thread>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "comm/ports.h"
#include "worker/model.h"

namespace lowband::worker {
namespace {

// Runs body(group) on `size` ranks at once, each in its own thread with its own group.
void OnRanks(int size, std::chrono::milliseconds timeout,
             const std::function<void(DataParallelGroup&)>& body) {
  const std::string store = "127.0.0.1:" + std::to_string(comm::FreeLoopbackPort());
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      auto group =
          DataParallelGroup::Create({store, r, size, timeout, "test site", std::chrono::seconds(60)});
      ASSERT_TRUE(group.ok()) << group.status().ToString();
      body(**group);
    });
  }
  for (auto& t : threads) t.join();
}

ModelConfig TinyGpt() {
  ModelConfig c;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = 2;
  c.context = 16;
  return c;
}

Batch RandomTokens(int64_t rows, uint64_t seed) {
  torch::manual_seed(seed);
  auto seq = torch::randint(0, 256, {rows, 17}, torch::kInt64);
  return Batch{seq.narrow(1, 0, 16).contiguous(), seq.narrow(1, 1, 16).contiguous(), torch::Tensor()};
}

std::vector<float> Gradients(Model& model) {
  std::vector<float> out;
  for (auto& [name, p] : model.NamedParameters()) {
    auto g = p.grad().defined() ? p.grad().reshape(-1).contiguous() : torch::zeros({p.numel()});
    out.insert(out.end(), g.data_ptr<float>(), g.data_ptr<float>() + g.numel());
  }
  return out;
}

TEST(DataParallelGroupTest, MeanOfHalfBatchGradientsIsTheFullBatchGradient) {
  const Batch full = RandomTokens(8, 7);
  auto reference = MakeModel(TinyGpt(), /*seed=*/1);
  ASSERT_TRUE(reference.ok());
  (*reference)->Loss(full).backward();
  const std::vector<float> want = Gradients(**reference);
  std::vector<std::vector<float>> got(2);
  std::vector<std::vector<float>> params(2);
  OnRanks(2, std::chrono::seconds(30), [&](DataParallelGroup& g) {
    // Rank 1 starts from other weights: the broadcast makes rank 0's everyone's.
    auto model = MakeModel(TinyGpt(), g.rank() == 0 ? 1 : 99);
    ASSERT_TRUE(model.ok());
    ASSERT_TRUE(g.BroadcastParameters(**model).ok());
    const Batch half{full.inputs.narrow(0, 4 * g.rank(), 4), full.targets.narrow(0, 4 * g.rank(), 4),
                     torch::Tensor()};
    (*model)->Loss(half).backward();
    ASSERT_TRUE(g.AllReduceMean(**model).ok());
    got[g.rank()] = Gradients(**model);
    CopyParamsTo(**model, &params[g.rank()]);
    EXPECT_EQ(g.allreduce_bytes(), 4 * want.size());  // ring: 2 (M-1)/M x 4 bytes per value, M = 2
  });
  ASSERT_EQ(got[0].size(), want.size());
  EXPECT_EQ(params[0], params[1]);
  EXPECT_EQ(got[0], got[1]) << "the ranks hold different gradients after the all-reduce";
  double worst = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::abs(got[0][i] - want[i])));
    scale = std::max(scale, static_cast<double>(std::abs(want[i])));
  }
  EXPECT_LT(worst, 1e-5 * scale) << "largest gradient " << scale;
}

TEST(DataParallelGroupTest, BroadcastGivesEveryRankRankZerosValuesAndBytes) {
  OnRanks(3, std::chrono::seconds(30), [&](DataParallelGroup& g) {
    std::vector<float> values(static_cast<size_t>(5 + 10 * g.rank()), static_cast<float>(g.rank()));
    if (g.rank() == 0) values = {1.5f, -2.0f, 3.25f};
    ASSERT_TRUE(g.Broadcast(&values).ok());
    EXPECT_EQ(values, (std::vector<float>{1.5f, -2.0f, 3.25f})) << "rank " << g.rank();
    std::vector<uint8_t> bytes(static_cast<size_t>(g.rank()), 7);  // rank 0 sends nothing
    ASSERT_TRUE(g.Broadcast(&bytes).ok());
    EXPECT_TRUE(bytes.empty()) << "rank " << g.rank();
    bytes = g.rank() == 0 ? std::vector<uint8_t>{0, 255, 9} : std::vector<uint8_t>{};
    ASSERT_TRUE(g.Broadcast(&bytes).ok());
    EXPECT_EQ(bytes, (std::vector<uint8_t>{0, 255, 9})) << "rank " << g.rank();
    int64_t value = g.rank() == 0 ? -123456789012345 : g.rank();
    ASSERT_TRUE(g.Broadcast(&value).ok());
    EXPECT_EQ(value, -123456789012345) << "rank " << g.rank();
  });
}

TEST(DataParallelGroupTest, CheckIdenticalFailsOnEveryRankNamingTheRankThatDiffers) {
  OnRanks(3, std::chrono::seconds(30), [&](DataParallelGroup& g) {
    EXPECT_TRUE(g.CheckIdentical(42, "parameters").ok());
    const Status s = g.CheckIdentical(g.rank() == 2 ? 43 : 42, "parameters after step 9");
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << "rank " << g.rank();
    EXPECT_NE(s.message().find("parameters after step 9 of rank(s) 2 differ"), std::string::npos)
        << s.message();
  });
}

TEST(DataParallelGroupTest, ACollectiveTimesOutWithAClearErrorWhenAPeerStopsAnswering) {
  const auto timeout = std::chrono::seconds(3);
  OnRanks(2, timeout, [&](DataParallelGroup& g) {
    if (g.rank() == 1) {
      std::this_thread::sleep_for(timeout * 3);  // alive (its sockets stay open) but never calls
      return;
    }
    auto model = MakeModel(TinyGpt(), 1);
    ASSERT_TRUE(model.ok());
    const auto t0 = std::chrono::steady_clock::now();
    const Status s = g.AllReduceMean(**model);
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(s.code(), StatusCode::kUnavailable);
    EXPECT_NE(s.message().find("test site gradient all-reduce failed on rank 0 of 2"), std::string::npos)
        << s.message();
    EXPECT_EQ(s.message().find("frame #"), std::string::npos)
        << "LibTorch's stack trace leaked: " << s.message();
    EXPECT_LT(waited, timeout * 3) << "the all-reduce waited for the peer instead of timing out";
  });
}

TEST(DataParallelGroupTest, BadAddressesAndRanksAreRefusedBeforeAnyNetworking) {
  EXPECT_EQ(DataParallelGroup::Create({"localhost", 0, 2}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DataParallelGroup::Create({"localhost:99999", 0, 2}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(DataParallelGroup::Create({"localhost:1234", 2, 2}).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lowband::worker
