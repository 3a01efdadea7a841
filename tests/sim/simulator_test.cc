// Properties of the timeline simulator (sim/simulator.h): hand-computed timelines for each
// algorithm, payload sizes from the codec, monotonicity and the sweep's thresholds, heterogeneous
// workers, and scale.
#include "sim/simulator.h"

#include <cmath>
#include <limits>
#include <numeric>

#include <gtest/gtest.h>

#include "quant/codec.h"
#include "sim/units.h"

namespace lowband::sim {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

quant::CodecSpec Fp32() {
  quant::CodecSpec s;
  s.format = quant::Format::kFp32;
  return s;
}

SimResult SimulateOk(const SimConfig& c) {
  auto r = Simulate(c);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : SimResult{};
}

// A small model on a link whose payload times are easy to compute by hand.
SimConfig Small(Algo algo) {
  SimConfig c;
  c.algo = algo;
  c.workers = 4;
  c.params = 1'000'000;
  c.layers = 4;
  c.ddp_bucket_bytes = 0;  // one bucket per layer: small hand-computable cases
  c.step_seconds = 1.0;
  c.inner_steps = 10;
  c.fragments = 2;
  c.overlap = 1;
  c.codec = Fp32();
  c.bandwidth_bps = 10e6;
  c.latency_seconds = 0.02;
  return c;
}

TEST(SimulatorTest, InfiniteBandwidthAndNoLatencyGiveFullUtilization) {
  for (Algo algo : {Algo::kDdp, Algo::kDiloco, Algo::kStreaming}) {
    for (Topology topo : {Topology::kRing, Topology::kCoordinator}) {
      for (Protocol proto : {Protocol::kEngine, Protocol::kIdeal}) {
        for (DdpOverlap ov : {DdpOverlap::kNone, DdpOverlap::kBackward}) {
          for (uint64_t tau : {0, 1, 3}) {
            SimConfig c = Small(algo);
            c.bandwidth_bps = kInf;
            c.latency_seconds = 0;
            c.topology = topo;
            c.protocol = proto;
            c.ddp_overlap = ov;
            c.overlap = tau;
            const SimResult r = SimulateOk(c);
            SCOPED_TRACE(ToJson(r.config).dump());
            EXPECT_NEAR(r.compute_utilization, 1.0, 1e-9);
            EXPECT_NEAR(r.steady.utilization, 1.0, 1e-9);
            EXPECT_NEAR(r.stall_seconds, 0.0, 1e-9);
          }
        }
      }
    }
  }
}

// ddp, 10 steps of 0.5 s over 100 Mbit/s links with 5 ms latency: each all-reduce takes 0.51 s.
SimConfig SmallDdpOverSlowLinks() {
  SimConfig c = Small(Algo::kDdp);
  c.step_seconds = 0.5;
  c.bandwidth_bps = 100e6;
  c.latency_seconds = 0.005;
  c.steps = 10;
  return c;
}

TEST(SimulatorTest, DdpWithoutOverlapAddsTheRingAllReduceToEveryStep) {
  const SimConfig c = SmallDdpOverSlowLinks();
  const SimResult r = SimulateOk(c);
  // 2(M-1) latency + 2(M-1)/M * 4N bytes * 8 / rate = 6 * 0.005 + 1.5 * 32e6 / 1e8 = 0.03 + 0.48.
  const double per_step = 0.5 + 0.51;
  EXPECT_NEAR(r.wall_seconds, 10 * per_step, 1e-9);
  EXPECT_NEAR(r.stall_seconds, 10 * 0.51, 1e-9);
  EXPECT_NEAR(r.compute_utilization, 0.5 / per_step, 1e-12);
  EXPECT_NEAR(RingAllReduceSeconds(4, 4e6, 100e6, 0.005), 0.51, 1e-12);
  // The engine's byte accounting: 2(M-1)/M x 4N each way per step.
  EXPECT_NEAR(r.bytes_sent_per_worker, 10 * 1.5 * 4e6, 1e-3);
  EXPECT_NEAR(r.bytes_received_per_worker, 10 * 1.5 * 4e6, 1e-3);
  EXPECT_EQ(r.syncs, 10u);
}

TEST(SimulatorTest, DdpHostCostAddsPerByteSentToEveryAllReduce) {
  SimConfig c = SmallDdpOverSlowLinks();
  c.host_seconds_per_byte = 20e-9;  // 20 ms per MB sent
  const SimResult r = SimulateOk(c);
  // The wire's 0.51 s (above) plus 1.5 * 4e6 bytes sent * 20 ns = 0.12 s per all-reduce.
  EXPECT_NEAR(r.stall_seconds, 10 * (0.51 + 0.12), 1e-9);
  EXPECT_NEAR(r.compute_utilization, 0.5 / (0.5 + 0.63), 1e-12);
  // The cost is the host's: an unlimited link without latency still pays it.
  c.bandwidth_bps = kInf;
  c.latency_seconds = 0;
  EXPECT_NEAR(SimulateOk(c).stall_seconds, 10 * 0.12, 1e-9);
  c.host_seconds_per_byte = -1e-9;
  EXPECT_FALSE(Simulate(c).ok());
}

TEST(SimulatorTest, DdpBackwardOverlapHidesAllButTheLastBucketOnAFastLink) {
  SimConfig c = Small(Algo::kDdp);
  c.ddp_overlap = DdpOverlap::kBackward;
  c.bandwidth_bps = 1e9;
  c.latency_seconds = 0.001;
  c.steps = 10;
  const SimResult r = SimulateOk(c);
  // Four 1 MB buckets; each reduces in 6 * 0.001 + 1.5 * 8e6 / 1e9 = 0.018 s, less than one
  // layer's backward (1/6 s), so only the last bucket (layer 0) is left after the compute.
  const double bucket = 0.018;
  EXPECT_NEAR(RingAllReduceSeconds(4, 1e6, 1e9, 0.001), bucket, 1e-12);
  EXPECT_NEAR(r.wall_seconds, 10 * (1.0 + bucket), 1e-9);
  EXPECT_EQ(r.syncs, 40u);
  ASSERT_EQ(r.upload_bytes.size(), 4u);
  EXPECT_EQ(r.upload_bytes[0], 1'000'000u);
}

TEST(SimulatorTest, DdpBucketsMergeLayersUpToTheCap) {
  SimConfig c = Small(Algo::kDdp);
  c.layers = 10;  // 100,000 parameters, 400 kB of gradient per layer
  c.ddp_overlap = DdpOverlap::kBackward;
  c.ddp_bucket_bytes = 1'000'000;
  c.bandwidth_bps = 1e9;
  c.latency_seconds = 0.001;
  c.steps = 10;
  const SimResult r = SimulateOk(c);
  // Layers 9-7, 6-4, 3-1 (1.2 MB each, ready after 3, 6 and 9 layers' backward) and layer 0.
  EXPECT_EQ(r.upload_bytes, (std::vector<uint64_t>{1'200'000, 1'200'000, 1'200'000, 400'000}));
  EXPECT_EQ(r.syncs, 40u);
  // Each merged bucket reduces in 0.006 + 0.0144 s, within the 0.2 s of backward that follows;
  // the step ends with the last one: 0.006 + 1.5 * 3.2e6 / 1e9.
  EXPECT_NEAR(r.wall_seconds, 10 * (1.0 + 0.006 + 0.0048), 1e-9);
}

// Without latency, reducing during the backward pass never loses to reducing after it. With latency
// each of its B per-layer buckets pays the ring's 2(M-1) latencies where kNone pays them once, so it
// can lose, but by at most (B-1) * 2(M-1) latencies per step (its last bucket ends no later than the
// step's compute plus every bucket's reduction); and no step ends before its compute plus the
// reduction of the last bucket (layer 0), which is ready only when the backward is done.
TEST(SimulatorTest, DdpBackwardOverlapIsNeverSlowerThanNone) {
  for (double bw = 1e5; bw < 1e12; bw *= 3.7) {
    for (double lat : {0.0, 0.002, 0.05}) {
      SimConfig c = Small(Algo::kDdp);
      c.layers = 7;
      c.bandwidth_bps = bw;
      c.latency_seconds = lat;
      c.steps = 5;
      const SimResult none = SimulateOk(c);
      c.ddp_overlap = DdpOverlap::kBackward;
      const SimResult backward = SimulateOk(c);
      ASSERT_EQ(backward.upload_bytes.size(), 7u);  // one bucket per layer
      const double M = static_cast<double>(c.workers);
      const double extra_latency = 5.0 * 6 * 2 * (M - 1) * lat;
      EXPECT_LE(backward.wall_seconds, (none.wall_seconds + extra_latency) * (1 + 1e-12)) << bw << " " << lat;
      if (lat == 0) {
        EXPECT_LE(backward.wall_seconds, none.wall_seconds * (1 + 1e-12)) << bw;
      }
      const double last_bucket =
          RingAllReduceSeconds(c.workers, static_cast<double>(backward.upload_bytes.back()), bw, lat);
      EXPECT_GE(backward.wall_seconds, 5 * (c.step_seconds + last_bucket) * (1 - 1e-12)) << bw << " " << lat;
    }
  }
}

TEST(SimulatorTest, DilocoBlocksForOneRoundTripPerSync) {
  // N = 1e6 fp32 (4,000,032 payload bytes each way), H = 10, 10 Mbit/s, 20 ms, T = 1 s.
  SimConfig c = Small(Algo::kDiloco);
  c.steps = 100;
  const double wire = 4'000'032.0 * 8 / 10e6;  // 3.2000256 s each way
  c.protocol = Protocol::kIdeal;
  SimResult r = SimulateOk(c);
  // Ideal: latency + up + latency + down per sync.
  double period = 10 + 2 * 0.02 + 2 * wire;
  EXPECT_NEAR(r.wall_seconds, 10 * period, 1e-9);
  EXPECT_NEAR(r.steady.utilization, 10 / period, 1e-12);
  EXPECT_NEAR(r.compute_utilization, 10 / period, 1e-12);
  EXPECT_EQ(r.syncs, 10u);
  EXPECT_EQ(r.config.fragments, 1u);
  EXPECT_EQ(r.config.overlap, 0u);
  // Engine: the push's reply and the fetch request add two more one-way latencies.
  c.protocol = Protocol::kEngine;
  r = SimulateOk(c);
  period = 10 + 4 * 0.02 + 2 * wire;
  EXPECT_NEAR(r.wall_seconds, 10 * period, 1e-9);
  EXPECT_NEAR(r.stall_seconds, 10 * (period - 10), 1e-9);
}

TEST(SimulatorTest, DilocoOverARingAllReducesThePayload) {
  SimConfig c = Small(Algo::kDiloco);
  c.topology = Topology::kRing;
  c.steps = 100;
  const double sync = RingAllReduceSeconds(4, 4'000'032.0, 10e6, 0.02);
  EXPECT_NEAR(SimulateOk(c).wall_seconds, 10 * (10 + sync), 1e-9);
}

TEST(SimulatorTest, StreamingHidesATransferShorterThanTauSteps) {
  // P = 2 fragments of 500,000 fp32 values: 2,000,032 bytes, 0.16000256 s each way at 100 Mbit/s;
  // with the engine's 4 latencies of 10 ms a sync takes 0.36000512 s, less than tau * T = 1 s.
  SimConfig c = Small(Algo::kStreaming);
  c.bandwidth_bps = 100e6;
  c.latency_seconds = 0.01;
  c.drain = false;
  c.steps = 100;
  const SimResult r = SimulateOk(c);
  EXPECT_EQ(r.stall_seconds, 0.0);
  EXPECT_EQ(r.steady.utilization, 1.0);
  EXPECT_EQ(r.compute_utilization, 1.0);
  EXPECT_EQ(r.syncs, 20u);
  // The engine waits for the last update before it exits: fragment 0 was sent after the last step.
  c.drain = true;
  const SimResult drained = SimulateOk(c);
  const double sync = 4 * 0.01 + 2 * 2'000'032.0 * 8 / 100e6;
  EXPECT_NEAR(drained.stall_seconds, sync, 1e-9);
  EXPECT_EQ(drained.steady.utilization, 1.0);
}

TEST(SimulatorTest, StreamingStallsForTheTransferBeyondTauSteps) {
  SimConfig c = Small(Algo::kStreaming);
  c.bandwidth_bps = 100e6;
  c.latency_seconds = 0.01;
  c.step_seconds = 0.1;
  const double sync = 4 * 0.01 + 2 * 2'000'032.0 * 8 / 100e6;
  for (uint64_t tau : {0, 1, 2}) {
    c.overlap = tau;
    const SimResult r = SimulateOk(c);
    ASSERT_GT(r.steady.syncs, 0u);
    EXPECT_NEAR(r.steady.stall_seconds / static_cast<double>(r.steady.syncs), sync - tau * 0.1, 1e-9) << tau;
    // Per sync period of H steps: H * T compute, P stalls.
    EXPECT_NEAR(r.steady.utilization, 1.0 / (1.0 + 2 * (sync - tau * 0.1) / (10 * 0.1)), 1e-9);
  }
}

TEST(SimulatorTest, StreamingTransfersQueueOnTheLink) {
  // A fragment due every step (P = H = 3), tau = 2, T = 0.2 s, 0.3 s on the wire each way (ideal
  // protocol, no latency). Pushes and updates queue first in, first out, and the run settles at
  // one step per 0.3 s (the link's pace). By hand: fragment 1 goes up 0.2-0.5 and down 0.5-0.8;
  // fragment 2 waits for the uplink (0.5-0.8, down 0.8-1.1); step 3 ends at 0.8 waiting for
  // fragment 1, and from then on each step ends 0.3 s after the last: 0.3 t - 0.1 for t >= 3.
  SimConfig c = Small(Algo::kStreaming);
  c.protocol = Protocol::kIdeal;
  c.latency_seconds = 0;
  c.inner_steps = 3;
  c.fragments = 3;
  c.overlap = 2;
  c.layers = 3;
  c.params = 3'000'000;
  c.step_seconds = 0.2;
  c.upload_bytes = {375'000};  // 0.3 s at 10 Mbit/s
  c.steps = 12;
  c.drain = false;
  const SimResult r = SimulateOk(c);
  EXPECT_NEAR(r.wall_seconds, 0.3 * 12 - 0.1, 1e-9);
  EXPECT_NEAR(r.steady.utilization, 0.2 / 0.3, 1e-9);
  EXPECT_EQ(r.download_bytes, (std::vector<uint64_t>{375'000, 375'000, 375'000}));
  // Without queueing (each transfer alone: 0.6 s > tau * T = 0.4 s) the stall per step would be
  // 0.2 s and a step would take 0.4 s; the queue is what makes the link the bottleneck here.
}

TEST(SimulatorTest, DeferStallsOnlyWhenTheFragmentIsDueAgain) {
  SimConfig c = Small(Algo::kStreaming);
  c.fragments = 1;
  c.protocol = Protocol::kIdeal;
  c.latency_seconds = 0;
  c.upload_bytes = {3'125'000};  // 2.5 s each way: 5 s a sync, H * T = 10 s
  c.drain = false;
  auto stall_per_sync = [](const SimResult& r) {
    EXPECT_TRUE(r.steady.periodic);
    return r.steady.stall_seconds / static_cast<double>(r.steady.syncs);
  };
  c.late = LatePolicy::kWait;
  EXPECT_NEAR(stall_per_sync(SimulateOk(c)), 4.0, 1e-9);  // 5 - tau * T
  c.late = LatePolicy::kDefer;
  EXPECT_EQ(SimulateOk(c).stall_seconds, 0.0);
  c.upload_bytes = {7'500'000};  // 6 s each way: 12 s a sync, 2 s more than H * T
  EXPECT_NEAR(stall_per_sync(SimulateOk(c)), 2.0, 1e-9);
}

TEST(SimulatorTest, AFetchRequestQueuesBehindThePushThatStartedWithIt) {
  // Engine protocol, no latency, H = P = 2 (fragment 1 due at odd steps, 0 at even), tau = 1,
  // defer, T = 0.1 s, 0.3 s on the wire each way. By hand: fragment 1 goes up 0.1-0.4; its fetch
  // request is sent at 0.4, when the reply is back, and so is fragment 0's push (waiting since
  // 0.2): the request leaves after the push, at 0.7, and the update is back at 1.0 (0.7 if the
  // request went beside the push). Step 3 (0.3) must have it before fragment 1 goes again: it
  // stalls until 1.0.
  SimConfig c = Small(Algo::kStreaming);
  c.latency_seconds = 0;
  c.inner_steps = 2;
  c.fragments = 2;
  c.layers = 2;
  c.overlap = 1;
  c.late = LatePolicy::kDefer;
  c.step_seconds = 0.1;
  c.upload_bytes = {375'000};  // 0.3 s at 10 Mbit/s
  c.steps = 3;
  c.drain = false;
  SimResult r = SimulateOk(c);
  EXPECT_NEAR(r.wall_seconds, 1.0, 1e-9);
  EXPECT_NEAR(r.stall_seconds, 0.7, 1e-9);
  // Slower compute (T = 1 s): each push starts after the previous request left; nothing queues
  // and the update of step 1 (pushed 1.0-1.3, back at 1.6) is in before step 2 ends.
  c.step_seconds = 1.0;
  r = SimulateOk(c);
  EXPECT_EQ(r.stall_seconds, 0.0);
  EXPECT_NEAR(r.wall_seconds, 3.0, 1e-9);
}

TEST(SimulatorTest, PayloadBytesAreTheCodecsEncodedSize) {
  SimConfig c;
  c.algo = Algo::kStreaming;
  c.params = 1'000'007;
  c.layers = 5;
  c.fragments = 2;
  c.inner_steps = 10;
  c.codec.format = quant::Format::kFp4E3M0;
  c.codec.block_size = 64;
  quant::CodecSpec down;
  down.format = quant::Format::kInt8Sym;
  down.block_size = 128;
  c.download_codec = down;
  c.steps = 40;
  const SimResult r = SimulateOk(c);
  // Layers 0, 2, 4 and 1, 3; the first N mod L = 2 layers hold one more parameter.
  ASSERT_EQ(r.fragment_params.size(), 2u);
  EXPECT_EQ(r.fragment_params[0], 3 * 200'001u + 1);
  EXPECT_EQ(r.fragment_params[1], 2 * 200'001u + 1);
  EXPECT_EQ(r.fragment_params[0] + r.fragment_params[1], c.params);
  uint64_t up_total = 0, down_total = 0;
  for (size_t p = 0; p < 2; ++p) {
    EXPECT_EQ(r.upload_bytes[p], quant::EncodedSize(c.codec, r.fragment_params[p]));
    EXPECT_EQ(r.download_bytes[p], quant::EncodedSize(down, r.fragment_params[p]));
    up_total += r.upload_bytes[p];
    down_total += r.download_bytes[p];
  }
  // Four periods: each fragment synced four times.
  EXPECT_EQ(r.syncs, 8u);
  EXPECT_DOUBLE_EQ(r.bytes_sent_per_worker, 4.0 * static_cast<double>(up_total));
  EXPECT_DOUBLE_EQ(r.bytes_received_per_worker, 4.0 * static_cast<double>(down_total));
  auto fp = FragmentParams(c);
  ASSERT_TRUE(fp.ok());
  EXPECT_EQ(*fp, r.fragment_params);
}

// A mid-size setup where every variant's utilization crosses the targets inside the sweep range.
SimConfig SweepBase() {
  SimConfig c;
  c.params = 50'000'000;
  c.layers = 8;
  c.workers = 16;
  c.step_seconds = 0.5;
  c.inner_steps = 20;
  c.fragments = 4;
  c.overlap = 2;
  c.latency_seconds = 0.001;
  c.steps = 200;
  return c;
}

TEST(SimulatorTest, UtilizationNeverFallsAsBandwidthGrows) {
  for (const SweepVariant& v : DefaultSweepVariants(SweepBase())) {
    for (bool stragglers : {false, true}) {
      SimConfig c = v.config;
      if (stragglers) {
        c.groups = {WorkerGroup{13, 0, 0, -1, 1.0}, WorkerGroup{2, 0.2e9, 0.2e9, -1, 1.0},
                    WorkerGroup{1, 0, 0, -1, 1.3}};
      }
      double prev_steady = 0, prev_run = 0;
      for (double bw = 1e4; bw < 1e12; bw *= 1.25) {
        const SimResult r = SimulateOk(WithBandwidth(c, bw));
        EXPECT_GE(r.steady.utilization, prev_steady * (1 - 1e-12)) << v.name << " at " << FormatBandwidth(bw);
        EXPECT_GE(r.compute_utilization, prev_run * (1 - 1e-12)) << v.name << " at " << FormatBandwidth(bw);
        EXPECT_LE(r.steady.utilization, 1.0 + 1e-12);
        prev_steady = r.steady.utilization;
        prev_run = r.compute_utilization;
      }
    }
  }
}

TEST(SimulatorTest, SweepThresholdsAreTheSmallestBandwidthReachingEachTarget) {
  const SimConfig base = SweepBase();
  auto sweep = Sweep(base);
  ASSERT_TRUE(sweep.ok()) << sweep.status().ToString();
  ASSERT_EQ(sweep->rows.size(), 6u);
  const std::vector<SweepVariant> variants = DefaultSweepVariants(base);
  int checked = 0;
  for (size_t i = 0; i < sweep->rows.size(); ++i) {
    const SweepRow& row = sweep->rows[i];
    EXPECT_TRUE(row.monotone) << row.name;
    ASSERT_EQ(row.bandwidth_bps.size(), sweep->options.targets.size());
    std::optional<double> prev;
    for (size_t k = 0; k < sweep->options.targets.size(); ++k) {
      const double target = sweep->options.targets[k];
      const auto& bw = row.bandwidth_bps[k];
      if (!bw) continue;
      ASSERT_GT(*bw, sweep->options.min_bps) << row.name;
      EXPECT_GE(SimulateOk(WithBandwidth(variants[i].config, *bw)).steady.utilization, target) << row.name;
      EXPECT_LT(SimulateOk(WithBandwidth(variants[i].config, *bw / 1.01)).steady.utilization, target)
          << row.name;
      if (prev) {
        EXPECT_GE(*bw, *prev) << row.name;  // a higher target needs at least as much
      }
      prev = bw;
      ++checked;
    }
  }
  EXPECT_GE(checked, 25);
  // FP4 needs less bandwidth than fp32 for the same overlap, overlap less than none.
  auto cell = [&](const std::string& name, size_t k) {
    for (const SweepRow& row : sweep->rows) {
      if (row.name == name) return row.bandwidth_bps[k].value_or(kInf);
    }
    return kInf;
  };
  for (size_t k = 0; k < sweep->options.targets.size(); ++k) {
    EXPECT_LT(cell("streaming-fp4", k), cell("streaming-overlap", k));
    EXPECT_LE(cell("streaming-overlap", k), cell("streaming", k));
    EXPECT_LE(cell("ddp", k), cell("ddp-engine", k));
  }
  const std::string table = FormatSweepTable(*sweep);
  EXPECT_NE(table.find("streaming-fp4"), std::string::npos);
  EXPECT_NE(table.find("bit/s"), std::string::npos);
  EXPECT_EQ(ToJson(*sweep)["rows"].size(), 6u);
}

TEST(SimulatorTest, ASweepTargetBeyondReachIsReportedAsSuch) {
  // 10,000 workers in a ring pay 2(M-1) * 20 ms = 400 s of latency per all-reduce: ddp never gets
  // near 50 % of a 1 s step, whatever the bandwidth.
  SimConfig c = SweepBase();
  c.workers = 10'000;
  c.latency_seconds = 0.02;
  SweepOptions o;
  o.targets = {0.5};
  auto sweep = SweepVariants({DefaultSweepVariants(c)[1]}, c, o);
  ASSERT_TRUE(sweep.ok());
  EXPECT_FALSE(sweep->rows[0].bandwidth_bps[0].has_value());
  EXPECT_NE(FormatSweepTable(*sweep).find("> 10.0 Tbit/s"), std::string::npos);
  EXPECT_TRUE(ToJson(*sweep)["rows"][0]["bandwidth_bps"]["0.5"].is_null());
}

TEST(SimulatorTest, AStragglerHoldsEveryoneBack) {
  // DiLoCo, H = 10, T = 1 s, 1 s on the wire each way (ideal protocol, no latency). One of four
  // workers computes 1.5x slower: the round closes at 15 + 1 s and every worker resumes at 17 s.
  SimConfig c = Small(Algo::kDiloco);
  c.protocol = Protocol::kIdeal;
  c.latency_seconds = 0;
  c.upload_bytes = {1'250'000};
  c.steps = 100;
  c.groups = {WorkerGroup{3, 0, 0, -1, 1.0}, WorkerGroup{1, 0, 0, -1, 1.5}};
  SimResult r = SimulateOk(c);
  ASSERT_EQ(r.groups.size(), 2u);
  EXPECT_NEAR(r.groups[0].steady_utilization, 10.0 / 17, 1e-12);
  EXPECT_NEAR(r.groups[1].steady_utilization, 15.0 / 17, 1e-12);
  EXPECT_NEAR(r.steady.utilization, (3 * 10.0 / 17 + 15.0 / 17) / 4, 1e-12);
  EXPECT_NEAR(r.wall_seconds, 10 * 17.0, 1e-9);
  // Alike, the same workers would be at 10 / 12.
  c.groups.clear();
  EXPECT_NEAR(SimulateOk(c).steady.utilization, 10.0 / 12, 1e-12);
}

TEST(SimulatorTest, ASlowLinkHoldsEveryoneBack) {
  // One of four workers at half the rate: its push takes 2 s, so the round closes 2 s after the
  // sync step; the others get the update 1 s later, the slow one 2 s later. From the second period
  // on, everyone runs one period per 10 + 4 s.
  SimConfig c = Small(Algo::kDiloco);
  c.protocol = Protocol::kIdeal;
  c.latency_seconds = 0;
  c.upload_bytes = {1'250'000};
  c.steps = 100;
  c.groups = {WorkerGroup{3, 0, 0, -1, 1.0}, WorkerGroup{1, 5e6, 5e6, -1, 1.0}};
  const SimResult r = SimulateOk(c);
  EXPECT_NEAR(r.groups[0].steady_utilization, 10.0 / 14, 1e-12);
  EXPECT_NEAR(r.groups[1].steady_utilization, 10.0 / 14, 1e-12);
  EXPECT_NEAR(r.groups[0].wall_seconds, 13 + 9 * 14.0, 1e-9);
  EXPECT_NEAR(r.groups[1].wall_seconds, 14 + 9 * 14.0, 1e-9);
  EXPECT_NEAR(r.wall_seconds, 14 + 9 * 14.0, 1e-9);
}

TEST(SimulatorTest, FasterWorkersSettleBehindTheSlowestAndTheSteadyStateIsFoundAfterTheDrift) {
  // Streaming, P = 2, H = 10, tau = 5, T = 1 s. One worker computes at full speed over an
  // infinitely fast link; three compute 1.25x faster (0.8 s a step) over links taking 1 s each way.
  // The fast ones run ahead until the rounds hold them back; then everyone advances 10 s per period,
  // the slow worker never waits (the fast ones' pushes arrive within its 5 steps of overlap) and
  // the fast ones compute 8 s of every 10.
  SimConfig c = Small(Algo::kStreaming);
  c.protocol = Protocol::kIdeal;
  c.latency_seconds = 0;
  c.overlap = 5;
  c.upload_bytes = {1'250'000};
  c.groups = {WorkerGroup{1, kInf, kInf, -1, 1.0}, WorkerGroup{3, 0, 0, -1, 0.8}};
  const SimResult r = SimulateOk(c);
  EXPECT_TRUE(r.steady.periodic);
  EXPECT_NEAR(r.groups[0].steady_utilization, 1.0, 1e-12);
  EXPECT_NEAR(r.groups[1].steady_utilization, 0.8, 1e-12);
  EXPECT_NEAR(r.steady.utilization, (1.0 + 3 * 0.8) / 4, 1e-12);
}

TEST(SimulatorTest, ACoordinatorCapSharesItsIngressAmongAllWorkers) {
  // Four workers push 1 s each over their own links, but the coordinator's ingress has the rate of
  // one link: the round closes after 4 s, the update needs 1 s more.
  SimConfig c = Small(Algo::kDiloco);
  c.protocol = Protocol::kIdeal;
  c.latency_seconds = 0;
  c.upload_bytes = {1'250'000};
  c.steps = 100;
  c.coordinator_ingress_bps = 10e6;
  EXPECT_NEAR(SimulateOk(c).wall_seconds, 10 * 15.0, 1e-9);
  c.coordinator_egress_bps = 10e6;
  EXPECT_NEAR(SimulateOk(c).wall_seconds, 10 * 18.0, 1e-9);
  c.coordinator_seconds = 0.5;
  EXPECT_NEAR(SimulateOk(c).wall_seconds, 10 * 18.5, 1e-9);
}

// Scale costs nothing: 10,000 identical workers are one simulated group, the run is the automatic
// 20 H steps (settled at once, never doubled) and every step costs at most one exchange per layer,
// however many workers and parameters there are (docs/simulator.md times the CLI on this config).
TEST(SimulatorTest, TenThousandWorkersAndAHundredBillionParametersAreOneGroupOfBoundedSteps) {
  for (Algo algo : {Algo::kDdp, Algo::kDiloco, Algo::kStreaming}) {
    for (DdpOverlap ov : {DdpOverlap::kNone, DdpOverlap::kBackward}) {
      SimConfig c;
      c.algo = algo;
      c.params = 100'000'000'000;
      c.layers = 96;
      c.workers = 10'000;
      c.step_seconds = 2.0;
      c.inner_steps = 100;
      c.fragments = 8;
      c.overlap = 1;
      c.bandwidth_bps = 100e9;
      c.latency_seconds = 0.02;
      c.ddp_overlap = ov;
      const SimResult r = SimulateOk(c);
      ASSERT_EQ(r.groups.size(), 1u) << AlgoName(algo);
      EXPECT_EQ(r.groups[0].group.count, 10'000u);
      EXPECT_EQ(r.config.steps, 20 * c.inner_steps) << AlgoName(algo);
      EXPECT_TRUE(r.steady.periodic) << AlgoName(algo);
      EXPECT_LE(r.syncs, r.config.steps * c.layers) << AlgoName(algo);
      EXPECT_GT(r.compute_utilization, 0.0);
      EXPECT_LT(r.compute_utilization, 1.0);
      std::printf("[ scale    ] %s (ddp overlap %s): %llu steps, %llu syncs, utilization %.4f\n",
                  std::string(AlgoName(algo)).c_str(), std::string(DdpOverlapName(ov)).c_str(),
                  static_cast<unsigned long long>(r.config.steps), static_cast<unsigned long long>(r.syncs),
                  r.compute_utilization);
    }
  }
}

TEST(SimulatorTest, InvalidConfigsNameTheField) {
  SimConfig c = Small(Algo::kStreaming);
  c.fragments = 11;
  EXPECT_NE(Simulate(c).status().message().find("fragments"), std::string::npos);
  c = Small(Algo::kStreaming);
  c.overlap = 10;
  EXPECT_NE(Simulate(c).status().message().find("tau"), std::string::npos);
  c = Small(Algo::kStreaming);
  c.groups = {WorkerGroup{3, 0, 0, -1, 1.0}};
  EXPECT_NE(Simulate(c).status().message().find("workers"), std::string::npos);
  c = Small(Algo::kStreaming);
  c.upload_bytes = {1, 2, 3};
  EXPECT_NE(Simulate(c).status().message().find("upload bytes"), std::string::npos);
  c = Small(Algo::kStreaming);
  c.bandwidth_bps = 0;
  EXPECT_NE(Simulate(c).status().message().find("bandwidth"), std::string::npos);
  c = Small(Algo::kStreaming);
  c.codec.format = quant::Format::kInt4Sym;
  c.codec.block_size = 7;
  EXPECT_FALSE(Simulate(c).ok());
  // DiLoCo ignores fragments and tau.
  c = Small(Algo::kDiloco);
  c.fragments = 50;
  c.overlap = 50;
  EXPECT_TRUE(Simulate(c).ok());
}

// The forms `lowband link`, `lowband launch --link-*` and `lowband simulate` read (they all use
// these parsers).
TEST(UnitsTest, RatesInTcUnits) {
  struct Case {
    const char* text;
    double bits;
  };
  for (const Case& c :
       {Case{"100mbit", 100e6}, Case{"1gbit", 1e9}, Case{"500kbit", 500e3}, Case{"8000bit", 8000},
        Case{"10mbps", 80e6}, Case{"1kbps", 8000}, Case{"100bps", 800}, Case{"2.5mbit", 2.5e6},
        Case{"1kibit", 1024}, Case{"1mibit", 1048576}, Case{" 100MBit ", 100e6}, Case{"1tbit", 1e12},
        Case{"1.5Gbit", 1.5e9}, Case{"8kibit", 8192.0}, Case{"12.3 Mbit/s", 12.3e6}}) {
    auto r = ParseBandwidth(c.text);
    ASSERT_TRUE(r.ok()) << c.text << ": " << r.status().ToString();
    EXPECT_EQ(*r, c.bits) << c.text;
  }
  EXPECT_TRUE(std::isinf(*ParseBandwidth("inf")));
  EXPECT_TRUE(std::isinf(*ParseBandwidth("unlimited")));
  struct Bad {
    const char* text;
    const char* why;  // in the message, with the text
  };
  for (const Bad& b :
       {Bad{"fast", "is not"}, Bad{"", "is not"}, Bad{"-1mbit", "must be positive"},
        Bad{"10mbitx", "unknown unit 'mbitx'"}, Bad{"mbit", "is not"}, Bad{"10xbit", "unknown unit 'xbit'"},
        Bad{"1e9", "no unit"}, Bad{"10 mb", "unknown unit 'mb'"}, Bad{"10mb", "unknown unit 'mb'"},
        Bad{"nan", "is not"}, Bad{"0", "no unit"}, Bad{"1000000", "no unit"}, Bad{"100", "no unit"},
        Bad{"10furlongs", "unknown unit"}}) {
    auto r = ParseBandwidth(b.text);
    ASSERT_FALSE(r.ok()) << "'" << b.text << "' parsed as " << *r;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("'" + std::string(b.text) + "'"), std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find(b.why), std::string::npos) << r.status().message();
  }
  EXPECT_EQ(FormatBandwidth(12.3e6), "12.3 Mbit/s");
  EXPECT_EQ(FormatBandwidth(999.96e3), "1.00 Mbit/s");
  EXPECT_EQ(FormatBandwidth(1e3), "1.00 kbit/s");
  EXPECT_EQ(*ParseBandwidth(FormatBandwidth(123e9)), 123e9);
}

TEST(UnitsTest, DurationsNeedAUnit) {
  struct Case {
    const char* text;
    double seconds;
  };
  for (const Case& c :
       {Case{"40ms", 0.040}, Case{"1s", 1}, Case{"500us", 500e-6}, Case{"0", 0}, Case{"2.5ms", 0.0025},
        Case{"1m", 60}, Case{"1min", 60}, Case{"100ns", 100e-9}, Case{"0ms", 0}, Case{" 20MS", 0.020},
        Case{"20ms", 0.02}, Case{"0.8s", 0.8}, Case{"250us", 250e-6}, Case{"2min", 120}}) {
    auto r = ParseSeconds(c.text);
    ASSERT_TRUE(r.ok()) << c.text << ": " << r.status().ToString();
    if (c.seconds == 0) {
      EXPECT_EQ(*r, 0.0) << c.text;
    } else {
      EXPECT_DOUBLE_EQ(*r, c.seconds) << c.text;
    }
  }
  struct Bad {
    const char* text;
    const char* why;  // in the message, with the text
  };
  // A bare number other than 0 is ambiguous (seconds? milliseconds?) and refused.
  for (const Bad& b : {Bad{"40", "no unit"}, Bad{"0.8", "no unit"}, Bad{"soon", "is not"}, Bad{"", "is not"},
                       Bad{"-1ms", "must not be negative"}, Bad{"-1s", "must not be negative"},
                       Bad{"10 parsecs", "unknown unit 'parsecs'"}, Bad{"3parsecs", "unknown unit 'parsecs'"},
                       Bad{"ms", "is not"}, Bad{"5mss", "unknown unit 'mss'"}}) {
    auto r = ParseSeconds(b.text);
    ASSERT_FALSE(r.ok()) << "'" << b.text << "' parsed as " << *r;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("'" + std::string(b.text) + "'"), std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find(b.why), std::string::npos) << r.status().message();
  }
}

TEST(UnitsTest, CountsTakeSiSuffixes) {
  struct Case {
    const char* text;
    uint64_t count;
  };
  for (const Case& c : {Case{"1.2e9", 1'200'000'000u}, Case{"350M", 350'000'000u}, Case{"7B", 7'000'000'000u},
                        Case{"2k", 2'000u}, Case{"1G", 1'000'000'000u}, Case{"1t", 1'000'000'000'000u},
                        Case{"12", 12u}, Case{"0", 0u}}) {
    auto r = ParseCount(c.text);
    ASSERT_TRUE(r.ok()) << c.text << ": " << r.status().ToString();
    EXPECT_EQ(*r, c.count) << c.text;
  }
  EXPECT_EQ(*ParseCountList("1e6,2k"), (std::vector<uint64_t>{1'000'000, 2'000}));
  struct Bad {
    const char* text;
    const char* why;  // in the message, with the text
  };
  for (const Bad& b : {Bad{"many", "is not"}, Bad{"", "is not"}, Bad{"5x", "unknown suffix 'x'"},
                       Bad{"-5", "out of range"}, Bad{"1e19", "out of range"}}) {
    auto r = ParseCount(b.text);
    ASSERT_FALSE(r.ok()) << "'" << b.text << "' parsed as " << *r;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("'" + std::string(b.text) + "'"), std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find(b.why), std::string::npos) << r.status().message();
  }
  EXPECT_FALSE(ParseCountList("1,,2").ok());
}

}  // namespace
}  // namespace lowband::sim
