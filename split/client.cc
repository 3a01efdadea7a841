#include "split/client.h"

#include <chrono>
#include <thread>

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "comm/wire.h"
#include "proto/lowband.grpc.pb.h"
#include "split/server.h"
#include "worker/inner_optimizer.h"
#include "worker/torch_runtime.h"

namespace lowband::split {
namespace {

using Stream = grpc::ClientReaderWriter<v1::SplitClientMessage, v1::SplitServerMessage>;

}  // namespace

class SplitClient::Impl {
 public:
  explicit Impl(SplitClientOptions options) : options_(std::move(options)) {}

  Status Init() {
    LOWBAND_RETURN_IF_ERROR(ValidateSplitConfig(options_.split, options_.model));
    at::set_num_threads(std::max(1, options_.threads));
    LOWBAND_ASSIGN_OR_RETURN(base_, LoadBaseModel(options_.model, options_.split, options_.seed));
    LoraSpec lora{options_.split.lora_rank, options_.split.lora_alpha, options_.split.lora_modules};
    LOWBAND_ASSIGN_OR_RETURN(half_,
                             ClientHalf::Create(*base_, options_.split, lora, ClientSeed(options_.seed)));
    LOWBAND_ASSIGN_OR_RETURN(optimizer_,
                             worker::InnerOptimizer::Create(half_->lora().Parameters(), options_.inner));
    LOWBAND_ASSIGN_OR_RETURN(const CutCodec codec, ParseCutCodec(options_.split.codec));
    LOWBAND_ASSIGN_OR_RETURN(BitAllocator alloc, BitAllocator::Create(codec, options_.model.d_model,
                                                                      options_.split, options_.total_steps));
    allocator_ = std::make_unique<BitAllocator>(std::move(alloc));
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(options_.max_message_bytes);
    args.SetMaxSendMessageSize(options_.max_message_bytes);
    // Notice a dead server (or a dead link) within ~20 s even while waiting for a reply.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    comm::ApplyChannelArguments(options_.tls, &args);
    LOWBAND_ASSIGN_OR_RETURN(const std::shared_ptr<grpc::ChannelCredentials> credentials,
                             comm::MakeChannelCredentials(options_.tls));
    channel_ = grpc::CreateCustomChannel(options_.server, credentials, args);
    stub_ = v1::SplitLearning::NewStub(channel_);
    return Open(/*resume=*/false);
  }

  // Opens a stream and says hello (a new session, or resuming ours).
  Status Open(bool resume) {
    if (stream_) CloseStream();
    const auto deadline = std::chrono::system_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(options_.connect_timeout_s * 1000));
    if (!channel_->WaitForConnected(deadline)) {
      return Unavailable(
          fmt::format("split server {} not reachable within {} s: is `lowband split-server` running "
                      "there and the address right? {}",
                      options_.server, options_.connect_timeout_s, comm::ConnectHint(options_.tls)));
    }
    context_ = std::make_unique<grpc::ClientContext>();
    stream_ = stub_->Train(context_.get());
    v1::SplitClientMessage msg;
    v1::SplitHello* h = msg.mutable_hello();
    const auto& s = options_.split;
    const auto& m = options_.model;
    h->set_protocol_version(kSplitProtocolVersion);
    h->set_token(options_.token);
    h->set_client_name(options_.name);
    if (resume) h->set_resume_session(session_id_);
    h->set_cut(s.cut);
    h->set_d_model(m.d_model);
    h->set_n_layers(m.n_layers);
    h->set_context(m.context);
    h->set_task(s.task);
    h->set_num_classes(options_.num_classes);
    h->set_act_codec(s.codec);
    h->set_bits(s.bits);
    h->set_grad_codec(ResolveGradCodec(s.grad_codec, s.codec));
    h->set_grad_bits(s.grad_bits);
    h->set_grad_rounding(s.grad_rounding);
    h->set_lora_rank(s.lora_rank);
    h->set_lora_alpha(s.lora_alpha);
    h->set_lora_modules(s.lora_modules);
    h->set_lr(options_.inner.lr);
    h->set_warmup_steps(options_.inner.warmup_steps);
    h->set_total_steps(options_.inner.total_steps);
    h->set_weight_decay(options_.inner.weight_decay);
    h->set_grad_clip(options_.inner.grad_clip);
    h->set_seed(options_.seed);
    v1::SplitServerMessage reply;
    if (!stream_->Write(msg) || !stream_->Read(&reply)) return FinishStream("hello");
    if (!reply.has_welcome()) return Internal("the server answered the hello without a welcome");
    session_id_ = reply.welcome().session_id();
    server_next_step_ = reply.welcome().next_step();
    // A fresh stream: both directions start their bit maps over.
    act_encoder_.ForceBitmap();
    grad_decoder_.Reset();
    if (!resume) {
      spdlog::info("split-client: session {} on {} ({} trainable parameters here, {} on the server)",
                   session_id_, options_.server, half_->lora().NumParameters(),
                   reply.welcome().server_trainable_parameters());
    }
    return Status::Ok();
  }

  Status FinishStream(const std::string& what) {
    const grpc::Status s = stream_->Finish();
    stream_.reset();
    Status st = comm::FromGrpc(s);
    if (st.ok()) st = Unavailable("the server closed the stream during " + what);
    return st.WithContext("split server " + options_.server);
  }

  void CloseStream() {
    if (!stream_) return;
    context_->TryCancel();
    (void)stream_->Finish();
    stream_.reset();
  }

  // Sends `msg` and reads one reply, reconnecting (and calling `on_resume` to rebuild the message)
  // while the failure is a broken stream.
  Status Exchange(v1::SplitClientMessage* msg, v1::SplitServerMessage* reply,
                  const std::function<Status(v1::SplitClientMessage*, bool* already_applied)>& on_resume,
                  bool* already_applied) {
    *already_applied = false;
    for (int attempt = 0;; ++attempt) {
      if (stream_ && stream_->Write(*msg) && stream_->Read(reply)) return Status::Ok();
      Status s = stream_ ? FinishStream("a step") : Unavailable("no stream");
      if (s.code() != StatusCode::kUnavailable || attempt >= options_.max_reconnects) return s;
      spdlog::warn("split-client: {}; reconnecting ({}/{})", s.message(), attempt + 1,
                   options_.max_reconnects);
      std::this_thread::sleep_for(std::chrono::milliseconds(200 << std::min(attempt, 5)));
      if (Status o = Open(/*resume=*/true); !o.ok()) {
        if (o.code() != StatusCode::kUnavailable) return o;
        continue;
      }
      ++reconnects_;
      LOWBAND_RETURN_IF_ERROR(on_resume(msg, already_applied));
      if (*already_applied) return Status::Ok();
    }
  }

  static void PutTargets(const worker::Batch& b, v1::SplitForward* f) {
    const torch::Tensor t = b.targets.to(torch::kCPU, torch::kLong).contiguous().view({-1});
    f->mutable_targets()->Add(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
    if (b.lengths.defined()) {
      const torch::Tensor l = b.lengths.to(torch::kCPU, torch::kLong).contiguous();
      for (int64_t i = 0; i < l.numel(); ++i) f->add_lengths(static_cast<int32_t>(l.data_ptr<int64_t>()[i]));
    }
  }

  // The forward message for `batch` with cut activations x2d [B * T, C] encoded at the allocator's
  // bits (activations round to nearest). Called again after a reconnect: the fresh stream gets the
  // bit map again.
  Status BuildForward(const worker::Batch& batch, const torch::Tensor& x2d, int64_t B, int64_t T, bool train,
                      v1::SplitClientMessage* msg, quant::AmaqStats* stats) {
    LOWBAND_ASSIGN_OR_RETURN(EncodedCut enc, EncodeCut(act_encoder_, x2d, allocator_->bits(), {}));
    if (stats) *stats = enc.stats;
    msg->Clear();
    v1::SplitForward* f = msg->mutable_forward();
    f->set_step(next_step_);
    f->set_train(train);
    f->set_batch(static_cast<int32_t>(B));
    f->set_time(static_cast<int32_t>(T));
    f->set_activations(std::move(enc.payload));
    PutTargets(batch, f);
    return Status::Ok();
  }

  // The server's result for the forward of `step`.
  static StatusOr<const v1::SplitBackward*> BackwardOf(const v1::SplitServerMessage& reply, int64_t step) {
    if (!reply.has_backward()) return Internal("the server answered a forward without a backward");
    if (reply.backward().step() != step) {
      return Internal(fmt::format("the server answered step {} to the forward of step {}",
                                  reply.backward().step(), step));
    }
    return &reply.backward();
  }

  StatusOr<StepReport> Train(const worker::Batch& batch) {
    StepReport rep;
    rep.step = next_step_;
    torch::Tensor x, x2d;
    const int64_t C = options_.model.d_model;
    LOWBAND_RETURN_IF_ERROR(worker::GuardTorch("client forward", [&]() -> Status {
      optimizer_->ZeroGrad();
      x = half_->Forward(batch.inputs);
      x2d = x.detach().reshape({-1, C}).to(torch::kCPU).contiguous();
      return Status::Ok();
    }));
    const int64_t B = x.size(0), T = x.size(1);
    v1::SplitClientMessage msg;
    LOWBAND_RETURN_IF_ERROR(BuildForward(batch, x2d, B, T, /*train=*/true, &msg, &rep.up));
    // What the server will decode, when the allocator's "sample" estimate learns from it.
    torch::Tensor xhat;
    if (allocator_->needs_decoded()) {
      xhat = torch::empty_like(x2d);
      const auto& p = msg.forward().activations();
      LOWBAND_RETURN_IF_ERROR(quant::DecodeAmaq({reinterpret_cast<const uint8_t*>(p.data()), p.size()},
                                                act_encoder_.last_sent(),
                                                {xhat.data_ptr<float>(), static_cast<size_t>(xhat.numel())}));
    }
    v1::SplitServerMessage reply;
    bool applied = false;
    LOWBAND_RETURN_IF_ERROR(Exchange(
        &msg, &reply,
        [&](v1::SplitClientMessage* m, bool* already) -> Status {
          if (server_next_step_ == next_step_ + 1) {
            *already = true;
            return Status::Ok();
          }
          if (server_next_step_ != next_step_) {
            return FailedPrecondition(
                fmt::format("after reconnecting the server expects step {} but this client is "
                            "at step {}",
                            server_next_step_, next_step_));
          }
          return BuildForward(batch, x2d, B, T, /*train=*/true, m, &rep.up);
        },
        &applied));
    if (applied) {
      spdlog::warn(
          "split-client: step {} was applied by the server but its reply was lost; the client's adapters "
          "skip this step",
          next_step_);
      rep.skipped_client_update = true;
      ++next_step_;
      return rep;
    }
    LOWBAND_ASSIGN_OR_RETURN(const v1::SplitBackward* back, BackwardOf(reply, next_step_));
    LOWBAND_ASSIGN_OR_RETURN(DecodedCut g, DecodeCut(grad_decoder_, back->gradient(), B * T, C));
    rep.down = g.stats;
    LOWBAND_RETURN_IF_ERROR(worker::GuardTorch("client backward", [&]() -> Status {
      x.backward(g.values.view({B, T, C}).to(x.device()));
      return Status::Ok();
    }));
    LOWBAND_RETURN_IF_ERROR(optimizer_->ApplyStep());
    LOWBAND_RETURN_IF_ERROR(allocator_->Update(next_step_, x2d, xhat, g.values));  // no-op unless AMAQ
    ++next_step_;
    rep.loss = back->loss();
    if (back->grad_noise_vs_uniform() > 0) rep.grad_noise_vs_uniform = back->grad_noise_vs_uniform();
    rep.correct = back->correct();
    rep.count = back->count();
    return rep;
  }

  StatusOr<EvalReport> Evaluate(const std::vector<worker::Batch>& batches) {
    EvalReport rep;
    double loss_sum = 0;
    int64_t correct = 0;
    const int64_t C = options_.model.d_model;
    for (const worker::Batch& batch : batches) {
      torch::Tensor x2d;
      int64_t B = 0, T = 0;
      LOWBAND_RETURN_IF_ERROR(worker::GuardTorch("client eval forward", [&]() -> Status {
        torch::NoGradGuard no_grad;
        const torch::Tensor x = half_->Forward(batch.inputs);
        B = x.size(0);
        T = x.size(1);
        x2d = x.reshape({-1, C}).to(torch::kCPU).contiguous();
        return Status::Ok();
      }));
      v1::SplitClientMessage msg;
      LOWBAND_RETURN_IF_ERROR(BuildForward(batch, x2d, B, T, /*train=*/false, &msg, nullptr));
      v1::SplitServerMessage reply;
      bool applied = false;
      LOWBAND_RETURN_IF_ERROR(Exchange(
          &msg, &reply,
          [&](v1::SplitClientMessage* m, bool*) { return BuildForward(batch, x2d, B, T, false, m, nullptr); },
          &applied));
      LOWBAND_ASSIGN_OR_RETURN(const v1::SplitBackward* back, BackwardOf(reply, next_step_));
      loss_sum += back->loss() * static_cast<double>(back->count());
      correct += back->correct();
      rep.count += back->count();
      rep.examples += B;
    }
    if (rep.count > 0) rep.loss = loss_sum / static_cast<double>(rep.count);
    if (options_.split.task == "classify" && rep.count > 0)
      rep.accuracy = static_cast<double>(correct) / static_cast<double>(rep.count);
    return rep;
  }

  StatusOr<std::string> Finish(bool save_server, const std::string& client_dir) {
    if (!client_dir.empty()) LOWBAND_RETURN_IF_ERROR(SaveClient(client_dir));
    v1::SplitClientMessage msg;
    msg.mutable_finish()->set_save(save_server);
    v1::SplitServerMessage reply;
    if (!stream_ || !stream_->Write(msg) || !stream_->Read(&reply)) return FinishStream("finish");
    stream_->WritesDone();
    (void)stream_->Finish();
    stream_.reset();
    return reply.has_finished() ? reply.finished().saved_to() : std::string();
  }

  Status SaveClient(const std::string& dir) {
    const auto& s = options_.split;
    std::vector<std::pair<std::string, torch::Tensor>> tensors = half_->lora().NamedParameters();
    const auto cont = allocator_->continuous_bits();
    if (!cont.empty()) {
      tensors.emplace_back("amaq.bits",
                           torch::tensor(std::vector<float>(cont.begin(), cont.end()), torch::kFloat));
    }
    return SaveAdapterFiles(dir, "client", tensors,
                            {{"blocks", {0, s.cut}},
                             {"task", s.task},
                             {"r", s.lora_rank},
                             {"lora_alpha", s.lora_alpha},
                             {"modules", s.lora_modules},
                             {"base", s.base},
                             {"steps", next_step_},
                             {"act_codec", s.codec},
                             {"bits", s.bits},
                             {"session", session_id_}});
  }

  SplitClientOptions options_;
  std::unique_ptr<worker::Model> base_;
  std::unique_ptr<ClientHalf> half_;
  std::unique_ptr<worker::InnerOptimizer> optimizer_;
  std::unique_ptr<BitAllocator> allocator_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SplitLearning::Stub> stub_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<Stream> stream_;
  quant::AmaqEncoder act_encoder_;
  quant::AmaqDecoder grad_decoder_;
  std::string session_id_;
  int64_t server_next_step_ = 0;
  int64_t next_step_ = 0;
  int reconnects_ = 0;
};

SplitClient::SplitClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SplitClient::~SplitClient() {
  if (impl_) impl_->CloseStream();
}

StatusOr<std::unique_ptr<SplitClient>> SplitClient::Connect(const SplitClientOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  LOWBAND_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<SplitClient>(new SplitClient(std::move(impl)));
}

StatusOr<StepReport> SplitClient::Train(const worker::Batch& batch) { return impl_->Train(batch); }
StatusOr<EvalReport> SplitClient::Evaluate(const std::vector<worker::Batch>& batches) {
  return impl_->Evaluate(batches);
}
StatusOr<std::string> SplitClient::Finish(bool save_server, const std::string& client_dir) {
  return impl_->Finish(save_server, client_dir);
}
const std::string& SplitClient::session_id() const { return impl_->session_id_; }
int64_t SplitClient::next_step() const { return impl_->next_step_; }
ClientHalf& SplitClient::half() { return *impl_->half_; }
BitAllocator& SplitClient::allocator() { return *impl_->allocator_; }
int SplitClient::reconnects() const { return impl_->reconnects_; }

}  // namespace lowband::split
