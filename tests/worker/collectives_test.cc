// DataParallelGroup: two ranks (threads of this process, each with its own TCPStore client and Gloo
// pair over loopback) all-reduce, broadcast and compare, and fail with a clear error instead of
// hanging when a peer stops answering. On a machine with GPUs (CUDA LibTorch), ranks on CUDA devices
// do the same on the device (through NCCL when built with LOWBAND_TORCH_CUDA); how a rank picks its GPU.
#include "worker/collectives.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <optional>
#include <thread>

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "comm/ports.h"
#include "worker/model.h"

namespace lowband::worker {
namespace {

// Runs body(group, device) on `size` ranks at once, each in its own thread with its own group. With
// `cuda`, rank r's model and group are on the GPU SelectRankDevice("cuda", r) picks (one per rank).
void OnRanks(int size, std::chrono::milliseconds timeout, bool cuda,
             const std::function<void(DataParallelGroup&, const std::string& device)>& body) {
  const std::string store = "127.0.0.1:" + std::to_string(comm::FreeLoopbackPort());
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      std::string device = "cpu";
      if (cuda) {
        auto selected = SelectRankDevice("cuda", r);  // also this thread's current CUDA device
        ASSERT_TRUE(selected.ok()) << selected.status().ToString();
        device = *selected;
      }
      auto group =
          DataParallelGroup::Create({store, r, size, timeout, "test site", std::chrono::seconds(60), device});
      ASSERT_TRUE(group.ok()) << group.status().ToString();
      body(**group, device);
    });
  }
  for (auto& t : threads) t.join();
}

void OnRanks(int size, std::chrono::milliseconds timeout,
             const std::function<void(DataParallelGroup&)>& body) {
  OnRanks(size, timeout, /*cuda=*/false, [&](DataParallelGroup& g, const std::string&) { body(g); });
}

int CudaDevices() { return static_cast<int>(torch::cuda::device_count()); }

// Sets (or, with nullptr, unsets) an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    value ? ::setenv(name, value, 1) : ::unsetenv(name);
  }
  ~ScopedEnv() { old_ ? ::setenv(name_, old_->c_str(), 1) : ::unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

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

// Every parameter's gradient, flattened in NamedParameters order, copied to the host.
std::vector<float> Gradients(Model& model) {
  std::vector<float> out;
  for (auto& [name, p] : model.NamedParameters()) {
    auto g =
        p.grad().defined() ? p.grad().reshape(-1).to(torch::kCPU).contiguous() : torch::zeros({p.numel()});
    out.insert(out.end(), g.data_ptr<float>(), g.data_ptr<float>() + g.numel());
  }
  return out;
}

// Largest |got - want| relative to the largest |want|.
double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
  double worst = 0, scale = 0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::abs(got[i] - want[i])));
    scale = std::max(scale, static_cast<double>(std::abs(want[i])));
  }
  return scale > 0 ? worst / scale : worst;
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
  EXPECT_LT(RelativeError(got[0], want), 1e-5);
}

// The same on GPUs: one rank per GPU (at most 2; a single GPU makes a group of one), the model and the
// collectives on the device. Skipped without a CUDA device.
TEST(DataParallelGroupTest, OnCudaDevicesTheMeanGradientIsComputedOnTheDevice) {
  if (CudaDevices() == 0) GTEST_SKIP() << "no CUDA device";
  const int ranks = std::min(CudaDevices(), 2);
  const int64_t rows = 8 / ranks;
  const Batch full = RandomTokens(8, 7);
  auto reference = MakeModel(TinyGpt(), /*seed=*/1);  // on the host
  ASSERT_TRUE(reference.ok());
  (*reference)->Loss(full).backward();
  const std::vector<float> want = Gradients(**reference);
  std::vector<std::vector<float>> got(static_cast<size_t>(ranks)), params(static_cast<size_t>(ranks));
  OnRanks(ranks, std::chrono::seconds(60), /*cuda=*/true,
          [&](DataParallelGroup& g, const std::string& device) {
#ifdef LOWBAND_TORCH_CUDA
            EXPECT_STREQ(g.parameter_backend(), "nccl");
#endif
            ModelConfig config = TinyGpt();
            config.device = device;
            auto model = MakeModel(config, g.rank() == 0 ? 1 : 99);
            ASSERT_TRUE(model.ok()) << model.status().ToString();
            ASSERT_TRUE(g.BroadcastParameters(**model).ok());
            const Batch part{full.inputs.narrow(0, rows * g.rank(), rows),
                             full.targets.narrow(0, rows * g.rank(), rows), torch::Tensor()};
            (*model)->Loss(part).backward();
            const Status reduced = g.AllReduceMean(**model);
            ASSERT_TRUE(reduced.ok()) << reduced.ToString();
            for (auto& [name, p] : (*model)->NamedParameters()) {
              EXPECT_EQ(p.device().str(), device) << name;
              EXPECT_EQ(p.grad().device().str(), device) << name << "'s gradient left the device";
            }
            got[static_cast<size_t>(g.rank())] = Gradients(**model);
            CopyParamsTo(**model, &params[static_cast<size_t>(g.rank())]);
            // Host data keeps going through Gloo beside NCCL (their store keys apart).
            int64_t value = g.rank() == 0 ? 77 : -1;
            ASSERT_TRUE(g.Broadcast(&value).ok());
            EXPECT_EQ(value, 77);
            EXPECT_TRUE(g.CheckIdentical(5, "a constant").ok());
          });
  for (int r = 0; r < ranks; ++r) {
    EXPECT_EQ(params[static_cast<size_t>(r)], params[0]) << "rank " << r << " kept its own parameters";
    EXPECT_EQ(got[static_cast<size_t>(r)], got[0]) << "rank " << r << " holds other gradients";
  }
  std::vector<float> initial;
  CopyParamsTo(**reference, &initial);
  EXPECT_EQ(params[0], initial) << "rank 0's parameters changed on the way";
  EXPECT_LT(RelativeError(got[0], want), 1e-4) << "the device's mean gradient is not the full batch's";
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

// torchrun's agent store: the store is hosted outside the group (here by the test, as torchrun's agent
// hosts it), every rank connects as a client, and each attempt's keys live under their own prefix. A
// rank 0 that tried to host the store itself could not bind the port the agent holds. A second attempt
// of the group on the same store (a torchrun restart, keys of the first still there) forms again, under
// keys of its own.
TEST(DataParallelGroupTest, RanksJoinAStoreHostedByTorchrunsAgentUnderTheirAttemptsPrefix) {
  const int port = comm::FreeLoopbackPort();
  c10d::TCPStoreOptions agent_options;
  agent_options.port = static_cast<uint16_t>(port);
  agent_options.isServer = true;
  agent_options.waitWorkers = false;
  agent_options.timeout = std::chrono::seconds(30);
  auto agent = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", agent_options);
  int64_t keys[2] = {0, 0};
  for (int attempt = 0; attempt < 2; ++attempt) {
    const std::string prefix = "/lowband/attempt_" + std::to_string(attempt);
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; ++r) {
      threads.emplace_back([&, r] {
        GroupOptions o{"127.0.0.1:" + std::to_string(port), r, 2, std::chrono::seconds(30), "torchrun site"};
        o.external_store = true;
        o.store_prefix = prefix;
        auto group = DataParallelGroup::Create(o);
        ASSERT_TRUE(group.ok()) << "attempt " << attempt << ": " << group.status().ToString();
        int64_t value = r == 0 ? 1000 + attempt : -1;
        ASSERT_TRUE((*group)->Broadcast(&value).ok());
        EXPECT_EQ(value, 1000 + attempt) << "rank " << r;
      });
    }
    for (auto& t : threads) t.join();
    keys[attempt] = agent->getNumKeys();
  }
  // The second attempt wrote keys of its own beside the first's (without the prefix it would have
  // overwritten the first attempt's keys, and their number would not grow).
  EXPECT_GT(keys[1], keys[0]);
  // Without external_store, rank 0 tries to host the store on the port the agent holds: a clear error.
  GroupOptions host{"127.0.0.1:" + std::to_string(port), 0, 1, std::chrono::seconds(5), "torchrun site"};
  host.rendezvous_timeout = std::chrono::seconds(5);
  const auto refused = DataParallelGroup::Create(host);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("rendezvous"), std::string::npos) << refused.status().message();
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

// Two GPUs or more: a rank whose peer stops answering fails its NCCL all-reduce with lowband's error
// within the timeout (LibTorch's watchdog must not take the process down first).
TEST(DataParallelGroupTest, OnCudaDevicesACollectiveTimesOutWithAClearError) {
  if (CudaDevices() < 2) GTEST_SKIP() << "needs 2 CUDA devices, found " << CudaDevices();
  const auto timeout = std::chrono::seconds(5);
  OnRanks(2, timeout, /*cuda=*/true, [&](DataParallelGroup& g, const std::string& device) {
    ModelConfig config = TinyGpt();
    config.device = device;
    auto model = MakeModel(config, 1);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    // Together once, so that the communicator exists; then rank 1 stops answering.
    ASSERT_TRUE(g.BroadcastParameters(**model).ok());
    if (g.rank() == 1) {
      std::this_thread::sleep_for(timeout * 3);
      return;
    }
    (*model)->Loss(RandomTokens(2, 3)).backward();
    const auto t0 = std::chrono::steady_clock::now();
    const Status s = g.AllReduceMean(**model);
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
    EXPECT_NE(s.message().find("test site gradient all-reduce failed on rank 0 of 2"), std::string::npos)
        << s.message();
    EXPECT_LT(waited, timeout * 3) << "the all-reduce waited for the peer instead of timing out";
  });
}

TEST(RankDeviceTest, TheLocalRankComesFromLocalRankWhenItIsOne) {
  {
    ScopedEnv env("LOCAL_RANK", nullptr);
    EXPECT_EQ(LocalRank(5), 5);
  }
  {
    ScopedEnv env("LOCAL_RANK", "3");
    EXPECT_EQ(LocalRank(5), 3);
  }
  for (const char* bad : {"", "x", "-1", "2x"}) {
    ScopedEnv env("LOCAL_RANK", bad);
    EXPECT_EQ(LocalRank(5), 5) << "LOCAL_RANK='" << bad << "'";
  }
}

TEST(RankDeviceTest, CpuStaysCpuAndOtherDevicesAreRefused) {
  auto cpu = SelectRankDevice("cpu", 3);
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  EXPECT_EQ(*cpu, "cpu");
  for (const char* bad : {"tpu", "cuda:x", "", "gpu"}) {
    EXPECT_EQ(SelectRankDevice(bad, 0).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(RankDeviceTest, PlainCudaPicksTheGpuOfTheLocalRank) {
  const int n = CudaDevices();
  if (n == 0) {
    EXPECT_EQ(SelectRankDevice("cuda", 0).status().code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(SelectRankDevice("cuda:0", 0).status().code(), StatusCode::kFailedPrecondition);
    GTEST_SKIP() << "no CUDA device";
  }
  auto picked = SelectRankDevice("cuda", n + 1);
  ASSERT_TRUE(picked.ok()) << picked.status().ToString();
  EXPECT_EQ(*picked, "cuda:" + std::to_string((n + 1) % n));
  auto named = SelectRankDevice("cuda:0", n + 1);  // a named device wins over the local rank
  ASSERT_TRUE(named.ok()) << named.status().ToString();
  EXPECT_EQ(*named, "cuda:0");
  EXPECT_EQ(SelectRankDevice("cuda:" + std::to_string(n), 0).status().code(), StatusCode::kInvalidArgument);
}

TEST(DataParallelGroupTest, BadAddressesAndRanksAreRefusedBeforeAnyNetworking) {
  EXPECT_EQ(DataParallelGroup::Create({"localhost", 0, 2}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DataParallelGroup::Create({"localhost:99999", 0, 2}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(DataParallelGroup::Create({"localhost:1234", 2, 2}).status().code(),
            StatusCode::kInvalidArgument);
  GroupOptions bad_device{"localhost:1234", 0, 1};
  bad_device.device = "tpu:0";
  EXPECT_EQ(DataParallelGroup::Create(bad_device).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lowband::worker
