// CoordinatorServer + CoordinatorClient over real gRPC on 127.0.0.1 (port chosen by the OS).
#include <algorithm>
#include <atomic>
#include <barrier>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "comm/coordinator_client.h"
#include "comm/link_shaper.h"
#include "comm/outer_update.h"
#include "comm/wire.h"
#include "coordinator/core.h"
#include "coordinator/service.h"
#include "proto/lowband.grpc.pb.h"
#include "tests/coordinator/fake_worker.h"

namespace lowband {
namespace {

using namespace std::chrono_literals;
using coordinator::CoordinatorCore;
using coordinator::CoordinatorOptions;
using coordinator::CoordinatorServer;

const bool kQuietLogs = [] {
  spdlog::set_level(spdlog::level::warn);
  return true;
}();

class RpcTest : public ::testing::Test {
 protected:
  void StartServer(CoordinatorOptions o = Options(), coordinator::ServerOptions so = ServerOpts()) {
    auto core = CoordinatorCore::Create(std::move(o));
    ASSERT_TRUE(core.ok()) << core.status().ToString();
    core_ = std::move(core).value();
    auto server = CoordinatorServer::Start(*core_, so);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    ASSERT_GT(server_->port(), 0);
  }

  static coordinator::ServerOptions ServerOpts() {
    coordinator::ServerOptions so;
    so.address = "127.0.0.1:0";
    so.tick_interval = 20ms;
    so.shutdown_grace = 500ms;
    return so;
  }

  static CoordinatorOptions Options() {
    CoordinatorOptions o;
    o.run_id = "rpc";
    o.token = "t0k";
    o.layout.num_fragments = 3;
    o.inner_steps = 30;
    o.round_timeout = 10s;
    return o;
  }

  static comm::JoinParams Params(const std::string& name) {
    comm::JoinParams p;
    p.run_id = "rpc";
    p.token = "t0k";
    p.signature = testing::TestSignature();
    p.worker_name = name;
    p.host = "127.0.0.1";
    return p;
  }

  static comm::ClientOptions FastClient() {
    comm::ClientOptions c;
    c.connect_timeout = 5s;
    c.retry.initial_backoff = 20ms;
    c.retry.max_backoff = 200ms;
    return c;
  }

  std::unique_ptr<comm::CoordinatorClient> Client(comm::ClientOptions c = FastClient()) {
    auto client = comm::CoordinatorClient::Connect(server_->target(), c);
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return client.ok() ? std::move(client).value() : nullptr;
  }

  // Joins, seeds the run and returns the seeder's client.
  std::unique_ptr<comm::CoordinatorClient> SeededClient() {
    auto c = Client();
    auto j = c->Join(Params("seeder"));
    EXPECT_TRUE(j.ok() && j->must_seed) << j.status().ToString();
    auto s = c->SeedState(testing::InitialParameters(testing::TestSignature().total_elements()));
    EXPECT_TRUE(s.ok() && *s) << s.status().ToString();
    return c;
  }

  std::unique_ptr<CoordinatorCore> core_;
  std::unique_ptr<CoordinatorServer> server_;
};

// Three workers in threads: join, seed (the first joiner, late on purpose so the others' Bootstrap
// waits server-side), bootstrap, then three rounds of every fragment (push, wait for the update,
// apply). Every worker's copy of g ends bit-identical to the coordinator's.
TEST_F(RpcTest, ThreeWorkersRunRoundsAndHoldTheCoordinatorsState) {
  StartServer();
  constexpr int kWorkers = 3;
  constexpr uint64_t kRounds = 3;
  const comm::ModelSignature sig = testing::TestSignature();
  const std::vector<float> init = testing::InitialParameters(sig.total_elements());
  std::barrier joined(kWorkers);
  std::vector<std::vector<uint32_t>> crcs(kWorkers);
  std::vector<comm::TrafficCounters> traffic(kWorkers);
  std::vector<char> seeded(kWorkers, 0);
  std::atomic<int> failures{0};
  auto fail = [&](const std::string& what, const Status& s) {
    ADD_FAILURE() << what << ": " << s.ToString();
    ++failures;
  };

  auto run = [&](int w) {
    auto client = comm::CoordinatorClient::Connect(server_->target(), FastClient());
    StatusOr<comm::JoinReply> j = client.ok() ? (*client)->Join(Params("w" + std::to_string(w)))
                                              : StatusOr<comm::JoinReply>(client.status());
    joined.arrive_and_wait();  // everyone has joined before the seeder uploads
    if (!j.ok()) return fail("join", j.status());
    comm::CoordinatorClient& c = **client;
    auto layout = comm::FragmentLayout::FromAssignment(sig, j->fragment_tensors);
    if (!layout.ok()) return fail("layout", layout.status());
    if (Status s = layout->CheckSameAs(*comm::FragmentLayout::Create(sig, {3, comm::NonBlockPolicy::kOwn}));
        !s.ok()) {
      return fail("layout check", s);
    }
    std::vector<std::vector<float>> g(layout->num_fragments());
    if (j->must_seed) {
      std::this_thread::sleep_for(200ms);  // the others are already waiting in Bootstrap
      auto s = c.SeedState(init);
      if (!s.ok() || !*s) return fail("seed", s.status());
      seeded[w] = 1;
      for (uint32_t p = 0; p < g.size(); ++p) {
        g[p].resize(layout->element_count(p));
        (void)layout->Gather(p, init, g[p]);
      }
    } else {
      auto b = c.Bootstrap();
      if (!b.ok()) return fail("bootstrap", b.status());
      g = b->fragments;
    }
    testing::FakeWorker worker(g, 1000 + w);
    for (uint64_t r = 0; r < kRounds; ++r) {
      for (uint32_t p = 0; p < 3; ++p) {
        auto payload = worker.Contribution(p, j->upload_codec);
        auto pushed = c.PushFragment(p, r, payload);
        if (!pushed.ok()) return fail("push", pushed.status());
        auto update = c.GetUpdate(p, r, 10s);
        if (!update.ok()) return fail("get update", update.status());
        worker.Apply(p, *update);
      }
      auto hb = c.Heartbeat({r, 1.0f, 100 * r});
      if (!hb.ok()) return fail("heartbeat", hb.status());
    }
    crcs[w] = worker.Crc();
    traffic[w] = c.traffic();
    if (Status s = c.Leave("done"); !s.ok()) return fail("leave", s);
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) threads.emplace_back(run, w);
  for (auto& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);

  const auto expected = core_->GlobalStateCrc();
  for (int w = 0; w < kWorkers; ++w) EXPECT_EQ(crcs[w], expected) << "worker " << w;
  EXPECT_EQ(core_->counters().rounds_closed, 3 * kRounds);
  EXPECT_EQ(std::count(seeded.begin(), seeded.end(), 1), 1);

  // Byte accounting: sync and bootstrap kept apart, and both sides agree on payload bytes.
  uint64_t up = 0;
  for (uint32_t p = 0; p < 3; ++p) up += *core_->ContributionBytes(p);
  const uint64_t model_bytes = sig.total_elements() * sizeof(float);
  for (int w = 0; w < kWorkers; ++w) {
    EXPECT_EQ(traffic[w].sync_payload_bytes_sent, kRounds * up) << "worker " << w;
    EXPECT_EQ(traffic[w].sync_payload_bytes_received, kRounds * up)
        << "worker " << w;  // same codec both ways
    EXPECT_EQ(traffic[w].bootstrap_payload_bytes_received, seeded[w] ? 0 : model_bytes);
    EXPECT_EQ(traffic[w].bootstrap_payload_bytes_sent, seeded[w] ? model_bytes : 0);
    EXPECT_GT(traffic[w].sync_message_bytes_sent, traffic[w].sync_payload_bytes_sent);
    EXPECT_GT(traffic[w].control_message_bytes_sent, 0u);
  }
  const auto counters = core_->counters();
  EXPECT_EQ(counters.sync_bytes_in, kWorkers * kRounds * up);
  EXPECT_EQ(counters.sync_bytes_out, kWorkers * kRounds * up);
  EXPECT_EQ(counters.bootstrap_bytes_out, (kWorkers - 1) * model_bytes);
  EXPECT_EQ(counters.bootstrap_bytes_in, model_bytes);
}

TEST_F(RpcTest, WrongTokenIsUnauthenticated) {
  StartServer();
  auto c = Client();
  auto p = Params("intruder");
  p.token = "nope";
  auto j = c->Join(p);
  EXPECT_EQ(j.status().code(), StatusCode::kUnauthenticated) << j.status().ToString();
  EXPECT_NE(j.status().message().find("token"), std::string::npos) << j.status().message();
  auto hb = c->Heartbeat({});
  EXPECT_EQ(hb.status().code(), StatusCode::kFailedPrecondition);  // never joined
}

TEST_F(RpcTest, CorruptPayloadIsRefusedWithDataLoss) {
  StartServer();
  auto c = SeededClient();
  auto b = c->Bootstrap();
  ASSERT_TRUE(b.ok());
  testing::FakeWorker w(b->fragments, 5);
  auto payload = w.Contribution(1, core_->options().upload_codec);
  payload[payload.size() - 3] ^= 0x5a;  // the transport CRC is computed over the corrupted bytes
  const auto before = core_->GlobalStateCrc();
  auto pushed = c->PushFragment(1, 0, payload);
  EXPECT_EQ(pushed.status().code(), StatusCode::kDataLoss) << pushed.status().ToString();
  EXPECT_NE(pushed.status().message().find("checksum"), std::string::npos) << pushed.status().message();
  EXPECT_EQ(core_->GlobalStateCrc(), before);
  EXPECT_EQ(core_->round_status(1)->contributions, 0u);
}

// Streams that break the chunking rules, sent with the raw stub.
TEST_F(RpcTest, MalformedPushStreamsAreRefused) {
  StartServer();
  auto c = SeededClient();
  auto b = c->Bootstrap();
  ASSERT_TRUE(b.ok());
  testing::FakeWorker w(b->fragments, 6);
  const auto payload = w.Contribution(0, core_->options().upload_codec);
  uint64_t session = 0;
  {
    // A second member joined with the raw stub (the client does not expose its session key).
    auto channel = grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials());
    auto stub = v1::Coordinator::NewStub(channel);
    v1::JoinRequest req;
    req.set_protocol_version(comm::kProtocolVersion);
    req.set_run_id("rpc");
    req.set_token("t0k");
    comm::ToProto(testing::TestSignature(), req.mutable_signature());
    req.set_join_nonce(77);
    v1::JoinReply rep;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    ctx.AddMetadata(comm::kTokenMetadataKey, "t0k");
    ASSERT_TRUE(stub->Join(&ctx, req, &rep).ok());
    session = rep.session();
    ASSERT_NE(rep.worker_id(), c->worker_id());
    ASSERT_TRUE(c->Leave().ok());  // only the raw member stays, so its push would close the round
    const uint64_t raw_id = rep.worker_id();

    auto push = [&](uint64_t declared, const std::vector<std::string>& chunks) {
      v1::PushReply reply;
      grpc::ClientContext pctx;
      pctx.set_deadline(std::chrono::system_clock::now() + 5s);
      pctx.AddMetadata(comm::kTokenMetadataKey, "t0k");
      auto writer = stub->PushFragment(&pctx, &reply);
      v1::PushMessage m;
      m.mutable_header()->mutable_caller()->set_worker_id(raw_id);
      m.mutable_header()->mutable_caller()->set_session(session);
      m.mutable_header()->set_fragment(0);
      m.mutable_header()->set_round(0);
      m.mutable_header()->set_payload_bytes(declared);
      m.mutable_header()->set_crc32c(quant::Crc32c(payload));
      bool open = writer->Write(m);
      for (const std::string& chunk : chunks) {
        if (!open) break;
        v1::PushMessage cm;
        cm.set_chunk(chunk);
        open = writer->Write(cm);
      }
      if (open) writer->WritesDone();
      return writer->Finish();
    };
    const std::string bytes(payload.begin(), payload.end());
    const auto before = core_->GlobalStateCrc();

    grpc::Status longer = push(payload.size(), {bytes, "extra"});
    EXPECT_EQ(longer.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << longer.error_message();
    EXPECT_NE(longer.error_message().find("more than"), std::string::npos) << longer.error_message();

    grpc::Status shorter = push(payload.size(), {bytes.substr(0, 10)});
    EXPECT_EQ(shorter.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << shorter.error_message();

    grpc::Status oversized = push(payload.size() * 1000, {});
    EXPECT_EQ(oversized.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << oversized.error_message();
    EXPECT_NE(oversized.error_message().find(std::to_string(payload.size())), std::string::npos)
        << oversized.error_message();

    grpc::Status big_chunk = push(payload.size(), {std::string((1u << 20) + 1, 'x')});
    EXPECT_EQ(big_chunk.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << big_chunk.error_message();
    EXPECT_NE(big_chunk.error_message().find("limit"), std::string::npos) << big_chunk.error_message();

    EXPECT_EQ(core_->GlobalStateCrc(), before);
    EXPECT_EQ(core_->round_status(0)->contributions, 0u);

    // The same payload, properly chunked, goes through.
    grpc::Status good = push(payload.size(), {bytes.substr(0, 40), bytes.substr(40)});
    EXPECT_TRUE(good.ok()) << good.error_message();
    EXPECT_EQ(core_->round_status(0)->open_round, 1u);
  }
}

TEST_F(RpcTest, GetUpdateWaitsUntilItsDeadlineWithoutBlockingTheServer) {
  StartServer();
  auto a = SeededClient();
  auto bclient = Client();
  ASSERT_TRUE(bclient->Join(Params("b")).ok());
  auto g = a->Bootstrap();
  ASSERT_TRUE(g.ok());
  testing::FakeWorker w(g->fragments, 9);
  ASSERT_TRUE(a->PushFragment(2, 0, w.Contribution(2, core_->options().upload_codec)).ok());

  // Many waits on an open round at once: they hold no server thread, so the push below still
  // gets through while they wait.
  std::vector<std::thread> waiters;
  std::atomic<int> deadline_exceeded{0};
  for (int i = 0; i < 8; ++i) {
    waiters.emplace_back([&] {
      auto u = a->GetUpdate(2, 0, 300ms);
      if (u.status().code() == StatusCode::kDeadlineExceeded) ++deadline_exceeded;
    });
  }
  auto start = std::chrono::steady_clock::now();
  auto hb = bclient->Heartbeat({});
  EXPECT_TRUE(hb.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 250ms);
  for (auto& t : waiters) t.join();
  EXPECT_EQ(deadline_exceeded.load(), 8);

  // A wait that is answered: b's push closes the round while a waits.
  std::thread closer([&] {
    std::this_thread::sleep_for(100ms);
    auto bs = bclient->Bootstrap();
    ASSERT_TRUE(bs.ok());
    testing::FakeWorker wb(bs->fragments, 10);
    ASSERT_TRUE(bclient->PushFragment(2, 0, wb.Contribution(2, core_->options().upload_codec)).ok());
  });
  auto u = a->GetUpdate(2, 0, 5s);
  closer.join();
  ASSERT_TRUE(u.ok()) << u.status().ToString();
  EXPECT_EQ(u->size(), *core_->ContributionBytes(2));
  // Asking for a round that has not opened is refused at once.
  auto future = a->GetUpdate(2, 5, 5s);
  EXPECT_EQ(future.status().code(), StatusCode::kOutOfRange) << future.status().ToString();
}

// GetUpdate's timeout bounds the wait for the round, not the transfer: an update that takes five
// times that long to come down a slow link (a `LinkShaper` between worker and coordinator) still
// arrives, whole, instead of being cut off and fetched again.
TEST_F(RpcTest, SlowUpdateTransferIsNotCutByTheWaitBound) {
  StartServer();
  auto a = SeededClient();
  auto g = a->Bootstrap();
  ASSERT_TRUE(g.ok());
  const uint64_t update_bytes = *core_->ContributionBytes(2);
  comm::LinkShaperOptions lo;
  lo.upstream = server_->target();
  lo.down.rate_bits_per_second = static_cast<double>(update_bytes) * 8.0;  // the update: ~1 s
  lo.burst_bytes = 64;
  auto shaper = comm::LinkShaper::Start(lo);
  ASSERT_TRUE(shaper.ok()) << shaper.status().ToString();
  auto b = comm::CoordinatorClient::Connect("127.0.0.1:" + std::to_string((*shaper)->port()), FastClient());
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_TRUE((*b)->Join(Params("slow")).ok());
  testing::FakeWorker w(g->fragments, 9);
  ASSERT_TRUE(a->PushFragment(2, 0, w.Contribution(2, core_->options().upload_codec)).ok());
  ASSERT_TRUE((*b)->PushFragment(2, 0, w.Contribution(2, core_->options().upload_codec)).ok());
  const auto start = std::chrono::steady_clock::now();
  auto u = (*b)->GetUpdate(2, 0, 200ms);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(u.ok()) << u.status().ToString();
  EXPECT_EQ(u->size(), update_bytes);
  EXPECT_GT(took, 500ms) << "the link was not slow enough to prove anything";
}

TEST_F(RpcTest, StoppingTheServerReleasesWaitingCalls) {
  StartServer();
  auto opts = FastClient();
  opts.retry.max_attempts = 1;
  auto a = Client(opts);
  ASSERT_TRUE(a->Join(Params("a")).ok());
  ASSERT_TRUE(a->SeedState(testing::InitialParameters(testing::TestSignature().total_elements())).ok());
  auto b = Client(opts);
  ASSERT_TRUE(b->Join(Params("b")).ok());
  std::thread stopper([&] {
    std::this_thread::sleep_for(200ms);
    server_->Stop();
  });
  auto start = std::chrono::steady_clock::now();
  auto u = a->GetUpdate(0, 0, 20s);
  stopper.join();
  EXPECT_EQ(u.status().code(), StatusCode::kUnavailable) << u.status().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

TEST_F(RpcTest, CallsRetryWhileTheCoordinatorIsStarting) {
  // Find a free port, then start the coordinator on it only after the client began joining.
  StartServer();
  const int port = server_->port();
  server_->Stop();
  server_.reset();
  auto opts = FastClient();
  opts.connect_timeout = 0ms;
  opts.retry.max_attempts = 30;
  auto client = comm::CoordinatorClient::Connect("127.0.0.1:" + std::to_string(port), opts);
  ASSERT_TRUE(client.ok());
  std::thread starter([&] {
    std::this_thread::sleep_for(300ms);
    coordinator::ServerOptions so;
    so.address = "127.0.0.1:" + std::to_string(port);
    auto s = CoordinatorServer::Start(*core_, so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(s).value();
  });
  auto j = (*client)->Join(Params("early"));
  starter.join();
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_GT((*client)->traffic().retries, 0u);
}

// A raw stub's member (the client does not expose its session key): worker id and session.
struct RawMember {
  std::unique_ptr<v1::Coordinator::Stub> stub;
  uint64_t id = 0;
  uint64_t session = 0;
};

RawMember JoinRaw(const std::string& target, uint64_t nonce) {
  RawMember m;
  m.stub = v1::Coordinator::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  v1::JoinRequest req;
  req.set_protocol_version(comm::kProtocolVersion);
  req.set_run_id("rpc");
  req.set_token("t0k");
  comm::ToProto(testing::TestSignature(), req.mutable_signature());
  req.set_join_nonce(nonce);
  v1::JoinReply rep;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  ctx.AddMetadata(comm::kTokenMetadataKey, "t0k");
  grpc::Status s = m.stub->Join(&ctx, req, &rep);
  EXPECT_TRUE(s.ok()) << s.error_message();
  m.id = rep.worker_id();
  m.session = rep.session();
  return m;
}

TEST_F(RpcTest, EveryCallWithoutTheRunsTokenIsUnauthenticatedAndChangesNothing) {
  StartServer();
  auto c = SeededClient();
  RawMember m = JoinRaw(server_->target(), 5);
  const auto before = core_->counters();
  for (const char* token : {"", "t0K", "t0k-and-more"}) {
    v1::HeartbeatRequest req;
    req.mutable_caller()->set_worker_id(m.id);
    req.mutable_caller()->set_session(m.session);
    req.set_step(99);
    v1::HeartbeatReply rep;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    if (*token != 0) ctx.AddMetadata(comm::kTokenMetadataKey, token);
    grpc::Status s = m.stub->Heartbeat(&ctx, req, &rep);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << token << ": " << s.error_message();

    v1::GetUpdateRequest ureq;
    *ureq.mutable_caller() = req.caller();
    grpc::ClientContext uctx;
    uctx.set_deadline(std::chrono::system_clock::now() + 5s);
    if (*token != 0) uctx.AddMetadata(comm::kTokenMetadataKey, token);
    auto reader = m.stub->GetUpdate(&uctx, ureq);
    v1::UpdateMessage msg;
    EXPECT_FALSE(reader->Read(&msg));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_EQ(core_->counters().refusals, before.refusals + 6);
  for (const auto& w : core_->workers()) EXPECT_NE(w.step, 99u);
  EXPECT_TRUE(c->Heartbeat({}).ok());  // the real client sends the token on every call
}

TEST_F(RpcTest, PushesInFlightPerWorkerAreLimited) {
  auto so = ServerOpts();
  so.service.max_inflight_pushes = 2;
  StartServer(Options(), so);
  auto c = SeededClient();
  RawMember m = JoinRaw(server_->target(), 6);
  const uint64_t size = quant::EncodedSize(core_->options().upload_codec, 272);
  struct Open {
    grpc::ClientContext ctx;
    v1::PushReply reply;
    std::unique_ptr<grpc::ClientWriter<v1::PushMessage>> writer;
  };
  auto start = [&](uint32_t fragment) {
    auto o = std::make_unique<Open>();
    o->ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    o->ctx.AddMetadata(comm::kTokenMetadataKey, "t0k");
    o->writer = m.stub->PushFragment(&o->ctx, &o->reply);
    v1::PushMessage h;
    h.mutable_header()->mutable_caller()->set_worker_id(m.id);
    h.mutable_header()->mutable_caller()->set_session(m.session);
    h.mutable_header()->set_fragment(fragment);
    h.mutable_header()->set_round(0);
    h.mutable_header()->set_payload_bytes(core_->ContributionBytes(fragment).value());
    EXPECT_TRUE(o->writer->Write(h));
    return o;
  };
  ASSERT_EQ(core_->ContributionBytes(1).value(), size);
  auto first = start(0);
  auto second = start(1);
  std::this_thread::sleep_for(300ms);  // both headers are in: two slots held
  auto third = start(2);
  third->writer->WritesDone();
  grpc::Status refused = third->writer->Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_NE(refused.error_message().find("in flight"), std::string::npos) << refused.error_message();
  // Ending the open streams frees the slots: the next push gets past its header again.
  first->writer->WritesDone();
  EXPECT_EQ(first->writer->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);  // no bytes sent
  second->writer->WritesDone();
  EXPECT_EQ(second->writer->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  auto fourth = start(2);
  fourth->writer->WritesDone();
  grpc::Status after = fourth->writer->Finish();
  EXPECT_EQ(after.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << after.error_message();
  EXPECT_NE(after.error_message().find("ended after 0"), std::string::npos) << after.error_message();
}

// A coordinator stopped and started again from its checkpoint on the same port: the client rides
// out the gap, keeps its membership, sees a new epoch, pushes its lost contribution again, and the
// round closes with both contributions; its copy of g matches the restored coordinator's.
TEST_F(RpcTest, CoordinatorRestartedFromItsCheckpointIsTransparentToWorkers) {
  StartServer();
  const int port = server_->port();
  auto a = SeededClient();
  auto b = Client();
  ASSERT_TRUE(b->Join(Params("b")).ok());
  auto ga = a->Bootstrap();
  auto gb = b->Bootstrap();
  ASSERT_TRUE(ga.ok() && gb.ok());
  testing::FakeWorker wa(ga->fragments, 1), wb(gb->fragments, 2);
  // Round 0 of fragment 1 closes before the restart; a's round-0 push of fragment 0 is acknowledged
  // but its round is still open.
  const auto codec = core_->options().upload_codec;
  ASSERT_TRUE(a->PushFragment(1, 0, wa.Contribution(1, codec)).ok());
  ASSERT_TRUE(b->PushFragment(1, 0, wb.Contribution(1, codec)).ok());
  const auto pa = wa.Contribution(0, codec);
  ASSERT_TRUE(a->PushFragment(0, 0, pa).ok());
  const coordinator::CoordinatorSnapshot snapshot = core_->Snapshot();
  const uint64_t epoch_before = a->epoch();
  server_->Stop();
  server_.reset();
  core_.reset();

  std::thread restarter([&] {
    std::this_thread::sleep_for(500ms);
    auto restored = CoordinatorCore::Restore(Options(), snapshot);
    ASSERT_TRUE(restored.ok()) << restored.status().ToString();
    core_ = std::move(restored).value();
    auto so = ServerOpts();
    so.address = "127.0.0.1:" + std::to_string(port);
    auto s = CoordinatorServer::Start(*core_, so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(s).value();
  });
  // The retained update of the closed round comes through the gap.
  auto u1 = a->GetUpdate(1, 0, 5s);
  restarter.join();
  ASSERT_TRUE(u1.ok()) << u1.status().ToString();
  wa.Apply(1, *u1);
  EXPECT_GT(a->epoch(), epoch_before);
  EXPECT_EQ(a->traffic().rejoins, 0u);  // the restored coordinator knew it
  // The open round came back empty: a pushes again (not a duplicate), b contributes, it closes.
  auto again = a->PushFragment(0, 0, pa);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_FALSE(again->duplicate);
  ASSERT_TRUE(b->PushFragment(0, 0, wb.Contribution(0, codec)).ok());
  auto u0 = a->GetUpdate(0, 0, 5s);
  ASSERT_TRUE(u0.ok()) << u0.status().ToString();
  EXPECT_EQ(core_->round_status(0)->open_round, 1u);
  wa.Apply(0, *u0);
  EXPECT_EQ(wa.Crc(), core_->GlobalStateCrc());
}

// A client the coordinator dropped (heartbeats stopped for longer than heartbeat_timeout) joins
// again on its own at its next call, under the same worker id.
TEST_F(RpcTest, DroppedClientJoinsAgainUnderItsIdOnItsNextCall) {
  auto o = Options();
  o.heartbeat_timeout = 300ms;
  o.heartbeat_interval = 100ms;
  StartServer(o);
  auto a = SeededClient();
  const uint64_t id = a->worker_id();
  std::this_thread::sleep_for(700ms);
  EXPECT_EQ(core_->live_members(), 0u);
  auto hb = a->Heartbeat({});
  ASSERT_TRUE(hb.ok()) << hb.status().ToString();
  EXPECT_EQ(a->worker_id(), id);
  EXPECT_EQ(a->traffic().rejoins, 1u);
  EXPECT_EQ(core_->counters().rejoins, 1u);
  EXPECT_EQ(core_->live_members(), 1u);
}

}  // namespace
}  // namespace lowband
