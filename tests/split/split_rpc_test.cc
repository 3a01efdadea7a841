// The split server and client over real gRPC on loopback: with fp32 on the wire a split step gives the
// unsplit model's loss and LoRA gradients; bad messages get clear errors while other sessions go on;
// several clients train against one server at once, each with its own session.
#include <atomic>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "proto/lowband.grpc.pb.h"
#include "quant/amaq.h"
#include "split/client.h"
#include "split/model.h"
#include "split/server.h"
#include "worker/inner_optimizer.h"

namespace lowband::split {
namespace {

constexpr int64_t kT = 16;

worker::ModelConfig Tiny() {
  worker::ModelConfig c;
  c.d_model = 32;
  c.n_layers = 3;
  c.n_heads = 2;
  c.context = kT;
  return c;
}

worker::InnerOptimizerConfig Opt() {
  worker::InnerOptimizerConfig o;
  o.lr = 1e-2;
  o.warmup_steps = 0;
  o.total_steps = 50;
  o.weight_decay = 0.01;
  o.grad_clip = 0;  // clipping scales .grad() in place; the comparison wants the raw gradients
  return o;
}

// Windows of a repetitive text (so a language model can learn it) and, for classify, a label that
// depends on the text.
worker::Batch TextBatch(const std::string& task, int64_t index, int64_t b = 4) {
  static const std::string text =
      "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. ";
  torch::Tensor tokens = torch::empty({b, kT + 1}, torch::kLong);
  for (int64_t i = 0; i < b; ++i) {
    const size_t start = static_cast<size_t>((index * 7 + i * 13) % 60);
    for (int64_t t = 0; t <= kT; ++t)
      tokens[i][t] = static_cast<unsigned char>(text[(start + static_cast<size_t>(t)) % text.size()]);
  }
  worker::Batch batch;
  batch.inputs = tokens.slice(1, 0, kT).contiguous();
  if (task == "lm") {
    batch.targets = tokens.slice(1, 1, kT + 1).contiguous();
  } else {
    batch.targets = (tokens.select(1, 0) % 2).contiguous();
    batch.lengths = torch::full({b}, kT, torch::kLong);
    batch.lengths[0] = 5;  // a short row: the head must read its last real token
  }
  return batch;
}

SplitConfig Split(const std::string& task, const std::string& codec) {
  SplitConfig s;
  s.cut = 1;
  s.task = task;
  s.codec = codec;
  s.grad_codec = codec == "fp32" ? "fp32" : "follow";
  s.lora_rank = 4;
  s.session_timeout_s = 60;
  return s;
}

struct Running {
  std::unique_ptr<SplitServer> server;
  std::string address;
};

Running StartServer(const std::string& task, const std::string& codec) {
  SplitServerOptions o;
  o.listen = "127.0.0.1:0";
  o.model = Tiny();
  o.split = Split(task, codec);
  o.seed = 5;
  auto s = SplitServer::Start(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  Running r;
  r.server = std::move(*s);
  r.address = "127.0.0.1:" + std::to_string(r.server->port());
  return r;
}

SplitClientOptions ClientOptions(const Running& r, const std::string& task, const std::string& codec) {
  SplitClientOptions o;
  o.server = r.address;
  o.name = "test";
  o.model = Tiny();
  o.split = Split(task, codec);
  o.inner = Opt();
  o.seed = 5;
  o.total_steps = 50;
  o.connect_timeout_s = 10;
  return o;
}

void ExpectNear(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  ASSERT_TRUE(a.defined() && b.defined()) << what;
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const double diff = (a - b).abs().max().item<double>();
  EXPECT_LE(diff, 1e-5) << what << ": max difference " << diff;
}

class Equivalence : public ::testing::TestWithParam<std::string> {};

TEST_P(Equivalence, Fp32SplitStepsGiveTheUnsplitLossAndLoraGradients) {
  const std::string task = GetParam();
  Running r = StartServer(task, "fp32");
  const SplitClientOptions co = ClientOptions(r, task, "fp32");
  auto client = SplitClient::Connect(co);
  ASSERT_TRUE(client.ok()) << client.status().ToString();

  // The reference: one process, no wire, the same seeds and optimizers.
  auto base = LoadBaseModel(co.model, co.split, co.seed);
  ASSERT_TRUE(base.ok());
  const LoraSpec lora{co.split.lora_rank, co.split.lora_alpha, co.split.lora_modules};
  auto ch = ClientHalf::Create(**base, co.split, lora, ClientSeed(co.seed));
  auto sh = ServerHalf::Create(**base, co.split, 2, lora, ServerSeed(co.seed));
  ASSERT_TRUE(ch.ok() && sh.ok());
  auto opt_c = worker::InnerOptimizer::Create((*ch)->lora().Parameters(), co.inner);
  auto opt_s = worker::InnerOptimizer::Create((*sh)->Parameters(), co.inner);
  ASSERT_TRUE(opt_c.ok() && opt_s.ok());

  for (int64_t step = 0; step < 3; ++step) {
    const worker::Batch batch = TextBatch(task, step);
    (*opt_c)->ZeroGrad();
    (*opt_s)->ZeroGrad();
    const torch::Tensor x = (*ch)->Forward(batch.inputs);
    const HalfResult ref = (*sh)->Forward(x, batch.targets, batch.lengths);
    ref.loss.backward();
    if (step == 0 && task == "lm") {
      // Fresh adapters: the split model is the unsplit base model.
      torch::NoGradGuard ng;
      EXPECT_NEAR((*base)->Loss(batch).item<double>(), ref.loss.item<double>(), 1e-6);
    }

    auto rep = (*client)->Train(batch);
    ASSERT_TRUE(rep.ok()) << rep.status().ToString();
    EXPECT_NEAR(rep->loss, ref.loss.item<double>(), 1e-5) << "step " << step;
    EXPECT_EQ(rep->up.code_bits_per_value, 32.0);

    const auto ref_c = (*ch)->lora().NamedParameters();
    const auto got_c = (*client)->half().lora().NamedParameters();
    for (size_t i = 0; i < ref_c.size(); ++i)
      ExpectNear(got_c[i].second.grad(), ref_c[i].second.grad(), "client " + ref_c[i].first);
    auto got_s = r.server->SessionParameters((*client)->session_id(), /*gradients=*/true);
    ASSERT_TRUE(got_s.ok());
    const auto ref_s = (*sh)->NamedParameters();
    ASSERT_EQ(got_s->size(), ref_s.size());
    for (size_t i = 0; i < ref_s.size(); ++i)
      ExpectNear((*got_s)[i].second, ref_s[i].second.grad(), "server " + ref_s[i].first);
    // After the first step B is no longer zero, so A's gradients are not trivially zero either.
    if (step > 0) {
      EXPECT_GT(ref_c[0].second.grad().abs().max().item<double>(), 0.0);
    }
    ASSERT_TRUE((*opt_c)->ApplyStep().ok());
    ASSERT_TRUE((*opt_s)->ApplyStep().ok());
  }
  auto saved = (*client)->Finish(false, "");
  ASSERT_TRUE(saved.ok()) << saved.status().ToString();
}

INSTANTIATE_TEST_SUITE_P(Tasks, Equivalence, ::testing::Values("lm", "classify"));

// A raw stream, to send what a well-behaved client never would.
struct RawStream {
  explicit RawStream(const std::string& address) {
    stub = v1::SplitLearning::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    stream = stub->Train(&context);
  }
  grpc::Status Finish() {
    stream->WritesDone();
    v1::SplitServerMessage m;
    while (stream->Read(&m)) {
    }
    return stream->Finish();
  }
  std::unique_ptr<v1::SplitLearning::Stub> stub;
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SplitClientMessage, v1::SplitServerMessage>> stream;
};

v1::SplitClientMessage Hello(const std::string& resume = "", int cut = 1) {
  v1::SplitClientMessage m;
  v1::SplitHello* h = m.mutable_hello();
  h->set_protocol_version(kSplitProtocolVersion);
  h->set_resume_session(resume);
  h->set_cut(cut);
  h->set_d_model(32);
  h->set_n_layers(3);
  h->set_context(kT);
  h->set_task("lm");
  h->set_act_codec("amaq");
  h->set_bits(4);
  h->set_grad_codec("follow");
  h->set_grad_bits(4);
  h->set_grad_rounding("stochastic");
  h->set_lora_rank(4);
  h->set_lora_alpha(16);
  h->set_lora_modules("qkv,attn_out,fc,mlp_out");
  h->set_lr(1e-2);
  h->set_total_steps(50);
  h->set_grad_clip(1.0);
  return m;
}

// A valid forward for step 0: [2, kT, 32] activations at 4 bits and 2 * kT targets.
v1::SplitClientMessage Forward(quant::AmaqEncoder& enc) {
  const torch::Tensor x = torch::randn({2 * kT, 32});
  auto e = EncodeCut(enc, x, std::vector<uint8_t>(32, 4), {});
  EXPECT_TRUE(e.ok());
  v1::SplitClientMessage m;
  v1::SplitForward* f = m.mutable_forward();
  f->set_step(0);
  f->set_train(true);
  f->set_batch(2);
  f->set_time(kT);
  f->set_activations(e->payload);
  for (int i = 0; i < 2 * kT; ++i) f->add_targets(65 + i % 20);
  return m;
}

grpc::Status SendAfterHello(const std::string& address, const v1::SplitClientMessage& msg) {
  RawStream s(address);
  v1::SplitServerMessage reply;
  EXPECT_TRUE(s.stream->Write(Hello()));
  EXPECT_TRUE(s.stream->Read(&reply));
  EXPECT_TRUE(reply.has_welcome());
  s.stream->Write(msg);
  return s.Finish();
}

TEST(SplitServer, BadMessagesGetClearErrorsAndOtherSessionsKeepTraining) {
  Running r = StartServer("lm", "amaq");
  auto good = SplitClient::Connect(ClientOptions(r, "lm", "amaq"));
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  ASSERT_TRUE((*good)->Train(TextBatch("lm", 0)).ok());

  const auto expect = [](const grpc::Status& s, grpc::StatusCode code, const std::string& words) {
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_NE(s.error_message().find(words), std::string::npos) << s.error_message();
  };
  {  // No hello first.
    RawStream s(r.address);
    quant::AmaqEncoder enc;
    s.stream->Write(Forward(enc));
    expect(s.Finish(), grpc::StatusCode::INVALID_ARGUMENT, "SplitHello");
  }
  {  // An unknown session.
    RawStream s(r.address);
    s.stream->Write(Hello("no-such-session"));
    expect(s.Finish(), grpc::StatusCode::NOT_FOUND, "no-such-session");
  }
  {  // Another cut than the server's.
    RawStream s(r.address);
    s.stream->Write(Hello("", 2));
    expect(s.Finish(), grpc::StatusCode::FAILED_PRECONDITION, "cut 2");
  }
  quant::AmaqEncoder enc;
  {  // Fewer targets than batch x time.
    v1::SplitClientMessage m = Forward(enc);
    m.mutable_forward()->mutable_targets()->RemoveLast();
    expect(SendAfterHello(r.address, m), grpc::StatusCode::INVALID_ARGUMENT, "targets");
  }
  {  // A shape that does not match the payload.
    enc.ForceBitmap();
    v1::SplitClientMessage m = Forward(enc);
    m.mutable_forward()->set_batch(1);
    m.mutable_forward()->mutable_targets()->Truncate(kT);
    expect(SendAfterHello(r.address, m), grpc::StatusCode::INVALID_ARGUMENT, "32 x 32");
  }
  {  // A corrupt payload.
    enc.ForceBitmap();
    v1::SplitClientMessage m = Forward(enc);
    std::string* p = m.mutable_forward()->mutable_activations();
    (*p)[p->size() / 2] = static_cast<char>((*p)[p->size() / 2] ^ 0x10);
    expect(SendAfterHello(r.address, m), grpc::StatusCode::DATA_LOSS, "checksum");
  }
  {  // A token id outside the vocabulary.
    enc.ForceBitmap();
    v1::SplitClientMessage m = Forward(enc);
    m.mutable_forward()->set_targets(0, 1000);
    expect(SendAfterHello(r.address, m), grpc::StatusCode::INVALID_ARGUMENT, "token ids");
  }
  {  // A training step out of order.
    enc.ForceBitmap();
    v1::SplitClientMessage m = Forward(enc);
    m.mutable_forward()->set_step(5);
    expect(SendAfterHello(r.address, m), grpc::StatusCode::ABORTED, "expects step 0");
  }
  EXPECT_GE(r.server->counters().rejected, 7);
  // The good session was not disturbed.
  for (int64_t step = 1; step < 4; ++step) {
    auto rep = (*good)->Train(TextBatch("lm", step));
    ASSERT_TRUE(rep.ok()) << rep.status().ToString();
    EXPECT_TRUE(std::isfinite(rep->loss));
  }
  EXPECT_EQ((*good)->next_step(), 4);
}

// grad_codec amaq: the server learns the gradients' own widths (budget grad_bits, here 3, while the
// activations are fixed 4-bit), spends exactly that budget once its schedule has reached it, reports
// its noise against uniform widths, and the session still learns. A budget outside [2, 8] is refused.
TEST(SplitServer, GradientsWithTheirOwnGatesSpendTheirBudgetAndTheSessionLearns) {
  Running r = StartServer("lm", "fixed");
  SplitClientOptions o = ClientOptions(r, "lm", "fixed");
  o.split.grad_codec = "amaq";
  o.split.grad_bits = 3;
  constexpr int kSteps = 24;
  o.total_steps = kSteps;
  auto c = SplitClient::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  double first = 0, last = 0;
  StepReport rep;
  for (int step = 0; step < kSteps; ++step) {
    auto got = (*c)->Train(TextBatch("lm", step));
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    rep = *got;
    EXPECT_DOUBLE_EQ(rep.up.code_bits_per_value, 4.0) << step;  // the activations keep their fixed width
    if (step == 0) {
      EXPECT_DOUBLE_EQ(rep.down.code_bits_per_value, 8.0);  // the schedule starts at 8
    }
    if (step < 3) first += rep.loss / 3;
    if (step >= kSteps - 3) last += rep.loss / 3;
  }
  EXPECT_DOUBLE_EQ(rep.down.code_bits_per_value, 3.0);  // after the schedule: the budget, to the bit
  EXPECT_LT(rep.grad_noise_vs_uniform, 1.0);            // mixed widths, by the gates' own estimate
  EXPECT_LT(last, first);
  ASSERT_TRUE((*c)->Finish(false, "").ok());

  // grad_codec auto (the default) gives AMAQ activations their gradients' own gates: with a 3-bit
  // gradient budget under 4-bit activations the gradients end at 3.0 bits; following the activations'
  // map they end at the activations' 4.0.
  for (const std::string grads : {"auto", "follow"}) {
    SplitClientOptions a = ClientOptions(r, "lm", "amaq");
    a.split.grad_codec = grads;
    a.split.grad_bits = 3;
    a.total_steps = kSteps;
    auto ac = SplitClient::Connect(a);
    ASSERT_TRUE(ac.ok()) << ac.status().ToString();
    for (int step = 0; step < kSteps; ++step) {
      auto got = (*ac)->Train(TextBatch("lm", step));
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      rep = *got;
    }
    EXPECT_DOUBLE_EQ(rep.up.code_bits_per_value, 4.0) << grads;
    EXPECT_DOUBLE_EQ(rep.down.code_bits_per_value, grads == "auto" ? 3.0 : 4.0) << grads;
    ASSERT_TRUE((*ac)->Finish(false, "").ok());
  }

  RawStream bad(r.address);
  v1::SplitClientMessage h = Hello();
  h.mutable_hello()->set_grad_codec("amaq");
  h.mutable_hello()->set_grad_bits(9);
  bad.stream->Write(h);
  const grpc::Status s = bad.Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("grad_bits"), std::string::npos) << s.error_message();
}

TEST(SplitServer, ThreeClientsTrainAtOnceWithTheirOwnSessions) {
  Running r = StartServer("lm", "amaq");
  constexpr int kClients = 3, kSteps = 16;
  std::vector<std::string> ids(kClients);
  std::vector<double> first(kClients), last(kClients);
  std::vector<std::string> errors(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      SplitClientOptions o = ClientOptions(r, "lm", "amaq");
      o.name = "client-" + std::to_string(i);
      o.seed = 10 + static_cast<uint64_t>(i);
      o.total_steps = kSteps;
      auto c = SplitClient::Connect(o);
      if (!c.ok()) {
        errors[i] = c.status().ToString();
        return;
      }
      ids[i] = (*c)->session_id();
      for (int step = 0; step < kSteps; ++step) {
        auto rep = (*c)->Train(TextBatch("lm", step + 100 * i));
        if (!rep.ok()) {
          errors[i] = rep.status().ToString();
          return;
        }
        if (step < 3) first[i] += rep->loss / 3;
        if (step >= kSteps - 3) last[i] += rep->loss / 3;
      }
      auto f = (*c)->Finish(false, "");
      if (!f.ok()) errors[i] = f.status().ToString();
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(errors[i], "") << "client " << i;
    EXPECT_LT(last[i], first[i]) << "client " << i << " did not learn";
    for (int j = 0; j < i; ++j) EXPECT_NE(ids[i], ids[j]);
  }
  const auto k = r.server->counters();
  EXPECT_EQ(k.sessions_started, kClients);
  EXPECT_EQ(k.train_steps, kClients * kSteps);
  EXPECT_EQ(k.sessions_active, 0);  // every session finished
}

}  // namespace
}  // namespace lowband::split
