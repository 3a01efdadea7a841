#include "split/server.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <random>

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "comm/wire.h"
#include "proto/lowband.grpc.pb.h"
#include "split/amaq.h"
#include "split/model.h"
#include "worker/inner_optimizer.h"
#include "worker/torch_runtime.h"

namespace lowband::split {
namespace {

using Clock = std::chrono::steady_clock;
using Stream = grpc::ServerReaderWriter<v1::SplitServerMessage, v1::SplitClientMessage>;

constexpr int kMaxClasses = 1 << 16;
constexpr int64_t kMaxRows = int64_t{1} << 22;

grpc::Status Error(grpc::StatusCode code, const std::string& message) { return {code, message}; }

std::string NewSessionId() {
  std::random_device rd;
  return fmt::format("{:08x}{:08x}", rd(), rd());
}

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t z = a ^ (b + 0x9E3779B97F4A7C15ull + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

// One client's state on the server.
struct Session {
  std::string id;
  v1::SplitHello hello;  // the settings it was created with
  std::unique_ptr<ServerHalf> half;
  std::unique_ptr<worker::InnerOptimizer> optimizer;
  quant::AmaqDecoder act_decoder;
  quant::AmaqEncoder grad_encoder;
  // grad_codec amaq: the gradients' own gates.
  std::optional<BitAllocator> grad_allocator;
  int64_t next_step = 0;
  bool attached = false;
  Clock::time_point last_active = Clock::now();
};

class SplitServer::Impl final : public v1::SplitLearning::Service {
 public:
  explicit Impl(SplitServerOptions options) : options_(std::move(options)) {}

  Status Init() {
    LOWBAND_RETURN_IF_ERROR(ValidateSplitConfig(options_.split, options_.model));
    at::set_num_threads(std::max(1, options_.threads));
    LOWBAND_ASSIGN_OR_RETURN(base_, LoadBaseModel(options_.model, options_.split, options_.seed));
    grpc::ServerBuilder builder;
    LOWBAND_ASSIGN_OR_RETURN(const std::shared_ptr<grpc::ServerCredentials> credentials,
                             comm::MakeServerCredentials(options_.tls));
    builder.AddListeningPort(options_.listen, credentials, &port_);
    builder.RegisterService(this);
    builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
    builder.SetMaxSendMessageSize(options_.max_message_bytes);
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0) {
      return Unavailable("split-server: cannot listen on '" + options_.listen +
                         "' (address in use or not local?): pick another --listen address");
    }
    if (comm::PlaintextBeyondLoopback(options_.tls, options_.listen)) {
      spdlog::warn(
          "split-server: plaintext gRPC on {}: anyone on the path can read the token, activations and "
          "gradients; serve TLS with --tls-dir (deploy/make-certs.sh) or keep the port on a trusted network",
          options_.listen);
    }
    return Status::Ok();
  }

  grpc::Status Train(grpc::ServerContext* /*context*/, Stream* stream) override {
    v1::SplitClientMessage msg;
    if (!stream->Read(&msg)) return grpc::Status::OK;  // the client went away before saying anything
    if (!msg.has_hello()) {
      return Reject(grpc::StatusCode::INVALID_ARGUMENT, "the first message of a session must be SplitHello");
    }
    std::shared_ptr<Session> session;
    if (grpc::Status s = Attach(msg.hello(), &session); !s.ok())
      return Reject(s.error_code(), s.error_message());
    v1::SplitServerMessage welcome;
    welcome.mutable_welcome()->set_session_id(session->id);
    welcome.mutable_welcome()->set_next_step(session->next_step);
    welcome.mutable_welcome()->set_server_trainable_parameters(session->half->NumParameters());
    welcome.mutable_welcome()->set_server_blocks(options_.model.n_layers - options_.split.cut);
    grpc::Status result = grpc::Status::OK;
    if (stream->Write(welcome)) result = Serve(*session, stream);
    Detach(session);
    if (!result.ok()) ++rejected_;
    return result;
  }

  grpc::Status Reject(grpc::StatusCode code, const std::string& message) {
    ++rejected_;
    spdlog::warn("split-server: rejected a stream: {}", message);
    return Error(code, message);
  }

  grpc::Status Attach(const v1::SplitHello& h, std::shared_ptr<Session>* out) {
    if (h.protocol_version() != kSplitProtocolVersion) {
      return Error(
          grpc::StatusCode::FAILED_PRECONDITION,
          fmt::format("split protocol version {} is not this server's ({}): use the same lowband release on "
                      "both sides",
                      h.protocol_version(), kSplitProtocolVersion));
    }
    if (!options_.token.empty() && h.token() != options_.token) {
      return Error(grpc::StatusCode::UNAUTHENTICATED, "wrong token: pass the server's --token");
    }
    const auto& m = options_.model;
    if (h.cut() != options_.split.cut || h.d_model() != m.d_model || h.n_layers() != m.n_layers ||
        h.context() != m.context) {
      return Error(
          grpc::StatusCode::FAILED_PRECONDITION,
          fmt::format(
              "client model (cut {}, d_model {}, n_layers {}, context {}) does not match the server's "
              "(cut {}, d_model {}, n_layers {}, context {}): use the same split config on both sides",
              h.cut(), h.d_model(), h.n_layers(), h.context(), options_.split.cut, m.d_model, m.n_layers,
              m.context));
    }
    if (h.task() != options_.split.task) {
      return Error(grpc::StatusCode::FAILED_PRECONDITION,
                   fmt::format("client task '{}' is not the server's '{}'", h.task(), options_.split.task));
    }
    std::unique_lock lock(mu_);
    if (!h.resume_session().empty()) {
      const auto it = sessions_.find(h.resume_session());
      if (it == sessions_.end()) {
        return Error(grpc::StatusCode::NOT_FOUND,
                     "unknown session '" + h.resume_session() +
                         "' (expired, finished or never created): start a new session");
      }
      if (it->second->attached) {
        return Error(grpc::StatusCode::ABORTED,
                     "session '" + h.resume_session() + "' is attached to another stream");
      }
      it->second->attached = true;
      it->second->last_active = Clock::now();
      // The client's encoders start over; so must this session's decoders (and the gradient map).
      it->second->act_decoder.Reset();
      it->second->grad_encoder.ForceBitmap();
      *out = it->second;
      return grpc::Status::OK;
    }
    DropExpiredLocked();
    if (static_cast<int>(sessions_.size()) >= options_.split.max_sessions) {
      return Error(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          fmt::format("the server holds {} sessions (split.max_sessions): retry later", sessions_.size()));
    }
    lock.unlock();
    // Build outside the lock: other sessions keep going meanwhile.
    SplitConfig split = options_.split;
    split.codec = h.act_codec();
    split.bits = h.bits();
    split.grad_codec = ResolveGradCodec(h.grad_codec(), h.act_codec());
    split.grad_bits = h.grad_bits();
    split.grad_rounding = h.grad_rounding();
    split.lora_rank = h.lora_rank();
    split.lora_alpha = h.lora_alpha();
    split.lora_modules = h.lora_modules();
    if (Status s = ValidateSplitConfig(split, options_.model); !s.ok()) {
      return Error(grpc::StatusCode::INVALID_ARGUMENT, "session settings: " + s.message());
    }
    if (h.task() == "classify" && (h.num_classes() < 2 || h.num_classes() > kMaxClasses)) {
      return Error(grpc::StatusCode::INVALID_ARGUMENT,
                   fmt::format("num_classes must be in [2, {}], got {}", kMaxClasses, h.num_classes()));
    }
    worker::InnerOptimizerConfig opt;
    opt.lr = h.lr();
    opt.warmup_steps = h.warmup_steps();
    opt.total_steps = h.total_steps();
    opt.weight_decay = h.weight_decay();
    opt.grad_clip = h.grad_clip();
    auto session = std::make_shared<Session>();
    session->hello = h;
    session->hello.set_grad_codec(split.grad_codec);  // resolved: Step reads it
    LoraSpec lora{h.lora_rank(), h.lora_alpha(), h.lora_modules()};
    auto half = ServerHalf::Create(*base_, split, h.num_classes(), lora, ServerSeed(h.seed()));
    if (!half.ok()) return Error(grpc::StatusCode::INVALID_ARGUMENT, half.status().message());
    session->half = std::move(*half);
    auto optimizer = worker::InnerOptimizer::Create(session->half->Parameters(), opt);
    if (!optimizer.ok()) {
      return Error(grpc::StatusCode::INVALID_ARGUMENT, "session optimizer: " + optimizer.status().message());
    }
    session->optimizer = std::move(*optimizer);
    if (split.grad_codec == "amaq") {
      auto gates = BitAllocator::ForGradients(options_.model.d_model, split, h.total_steps());
      if (!gates.ok())
        return Error(grpc::StatusCode::INVALID_ARGUMENT, "gradient gates: " + gates.status().message());
      session->grad_allocator = std::move(*gates);
    }
    session->attached = true;
    lock.lock();
    // Another hello may have filled the last place while this session was being built.
    if (static_cast<int>(sessions_.size()) >= options_.split.max_sessions) {
      return Error(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          fmt::format("the server holds {} sessions (split.max_sessions): retry later", sessions_.size()));
    }
    do {
      session->id = NewSessionId();
    } while (sessions_.contains(session->id));
    sessions_[session->id] = session;
    ++started_;
    spdlog::info("split-server: session {} for '{}' ({} {}-bit, grad {}, {} trainable parameters here)",
                 session->id, h.client_name(), h.act_codec(), h.bits(), h.grad_codec(),
                 session->half->NumParameters());
    *out = session;
    return grpc::Status::OK;
  }

  void Detach(const std::shared_ptr<Session>& session) {
    std::lock_guard lock(mu_);
    session->attached = false;
    session->last_active = Clock::now();
  }

  void DropExpiredLocked() {
    const auto now = Clock::now();
    const auto timeout = std::chrono::duration<double>(options_.split.session_timeout_s);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (!it->second->attached && now - it->second->last_active > timeout) {
        spdlog::info("split-server: session {} expired", it->first);
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }

  grpc::Status Serve(Session& session, Stream* stream) {
    v1::SplitClientMessage msg;
    while (stream->Read(&msg)) {
      if (msg.has_forward()) {
        v1::SplitServerMessage reply;
        if (grpc::Status s = Step(session, msg.forward(), reply.mutable_backward()); !s.ok()) {
          spdlog::warn("split-server: session {}: {}", session.id, s.error_message());
          return s;
        }
        if (!stream->Write(reply)) return grpc::Status::OK;  // client gone; the session stays for a resume
      } else if (msg.has_finish()) {
        v1::SplitServerMessage reply;
        reply.mutable_finished()->set_steps(session.next_step);
        if (msg.finish().save()) {
          auto saved = Save(session);
          if (!saved.ok()) return comm::ToGrpc(saved.status());
          reply.mutable_finished()->set_saved_to(*saved);
        }
        {
          std::lock_guard lock(mu_);
          sessions_.erase(session.id);
        }
        stream->Write(reply);
        spdlog::info("split-server: session {} finished after {} steps", session.id, session.next_step);
        return grpc::Status::OK;
      } else {
        return Error(grpc::StatusCode::INVALID_ARGUMENT,
                     "expected SplitForward or SplitFinish after the welcome");
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status Step(Session& session, const v1::SplitForward& f, v1::SplitBackward* out) {
    const auto t0 = Clock::now();
    const int64_t B = f.batch(), T = f.time(), C = options_.model.d_model;
    const std::string& task = options_.split.task;
    if (B < 1 || T < 1 || T > options_.model.context || B * T > kMaxRows) {
      return Error(grpc::StatusCode::INVALID_ARGUMENT,
                   fmt::format("activations [{}, {}, {}]: batch must be >= 1 and time in [1, context={}]", B,
                               T, C, options_.model.context));
    }
    const int64_t want_targets = task == "classify" ? B : B * T;
    if (f.targets_size() != want_targets || (task == "classify" && f.lengths_size() != B)) {
      return Error(
          grpc::StatusCode::INVALID_ARGUMENT,
          fmt::format("{} with batch {} and time {} needs {} targets{}, got {} targets and {} lengths", task,
                      B, T, want_targets, task == "classify" ? " and one length per row" : "",
                      f.targets_size(), f.lengths_size()));
    }
    if (f.train() && f.step() != session.next_step) {
      return Error(grpc::StatusCode::ABORTED,
                   fmt::format("training step {} out of order: the session expects step {}", f.step(),
                               session.next_step));
    }
    auto decoded = DecodeCut(session.act_decoder, f.activations(), B * T, C);
    if (!decoded.ok()) return comm::ToGrpc(decoded.status().WithContext("activations"));
    bytes_received_ += static_cast<int64_t>(f.activations().size());

    const Status status = worker::GuardTorch("split step", [&]() -> Status {
      const torch::Device device = worker::AsGpt(*base_)->device();
      torch::Tensor targets =
          torch::tensor(std::vector<int64_t>(f.targets().begin(), f.targets().end()), torch::kLong);
      if (task == "lm") targets = targets.view({B, T});
      torch::Tensor lengths;
      if (task == "classify") {
        lengths = torch::tensor(std::vector<int64_t>(f.lengths().begin(), f.lengths().end()), torch::kLong);
      }
      torch::Tensor x = decoded->values.view({B, T, C}).to(device);
      if (!f.train()) {
        torch::NoGradGuard no_grad;
        const HalfResult r = session.half->Forward(x, targets, lengths);
        Fill(out, f.step(), r.loss.item<double>(), r, t0);
        ++eval_batches_;
        return Status::Ok();
      }
      x.set_requires_grad(true);
      session.optimizer->ZeroGrad();
      const HalfResult r = session.half->Forward(x, targets, lengths);
      const double loss = r.loss.item<double>();
      if (!std::isfinite(loss)) return InvalidArgument("the loss is not finite; step skipped");
      r.loss.backward();
      const torch::Tensor grad = x.grad().reshape({B * T, C});
      // The gradient's bits: the activations' map, its own fixed width or gates, or fp32.
      std::vector<uint8_t> bits;
      const std::string& gc = session.hello.grad_codec();
      if (gc == "fixed") {
        bits.assign(static_cast<size_t>(C),
                    static_cast<uint8_t>(ResolveGradBits(session.hello.grad_bits(), session.hello.bits())));
      } else if (session.grad_allocator) {
        bits = session.grad_allocator->bits();
      } else if (gc == "follow") {
        bits = session.act_decoder.bitmap().bits;  // empty when the activations are fp32
      }
      quant::AmaqOptions o;
      o.rounding = session.hello.grad_rounding() == "nearest" ? quant::Rounding::kNearest
                                                              : quant::Rounding::kStochastic;
      o.seed = Mix(session.hello.seed(), static_cast<uint64_t>(f.step()));
      LOWBAND_ASSIGN_OR_RETURN(EncodedCut g, EncodeCut(session.grad_encoder, grad, bits, o));
      // Everything checked: now the update.
      LOWBAND_RETURN_IF_ERROR(session.optimizer->ApplyStep());
      // The next step's gradient widths (the encode above has already refused a non-finite gradient).
      if (session.grad_allocator) {
        LOWBAND_RETURN_IF_ERROR(session.grad_allocator->UpdateFromGradient(f.step(), grad.contiguous()));
        out->set_grad_noise_vs_uniform(session.grad_allocator->stats().noise_vs_uniform);
      }
      ++session.next_step;
      Fill(out, f.step(), loss, r, t0);
      bytes_sent_ += static_cast<int64_t>(g.payload.size());
      out->set_gradient(std::move(g.payload));
      ++train_steps_;
      return Status::Ok();
    });
    return comm::ToGrpc(status);
  }

  static void Fill(v1::SplitBackward* out, int64_t step, double loss, const HalfResult& r,
                   Clock::time_point t0) {
    out->set_step(step);
    out->set_loss(loss);
    out->set_correct(r.correct);
    out->set_count(r.count);
    out->set_server_seconds(std::chrono::duration<double>(Clock::now() - t0).count());
  }

  StatusOr<std::string> Save(Session& session) {
    if (options_.split.out.empty()) return std::string();
    const auto& h = session.hello;
    std::string name = h.client_name().empty() ? session.id : h.client_name();
    for (char& c : name) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '_';
    }
    const std::string dir = (std::filesystem::path(options_.split.out) / "sessions" / name).string();
    nlohmann::ordered_json fields = {{"blocks", {options_.split.cut, options_.model.n_layers}},
                                     {"task", options_.split.task},
                                     {"num_classes", h.num_classes()},
                                     {"r", h.lora_rank()},
                                     {"lora_alpha", h.lora_alpha()},
                                     {"modules", h.lora_modules()},
                                     {"base", options_.split.base},
                                     {"steps", session.next_step},
                                     {"act_codec", h.act_codec()},
                                     {"bits", h.bits()},
                                     {"grad_codec", h.grad_codec()}};  // resolved when the session opened
    if (GradBitsApply(h.grad_codec())) fields["grad_bits"] = ResolveGradBits(h.grad_bits(), h.bits());
    LOWBAND_RETURN_IF_ERROR(SaveAdapterFiles(dir, "server", session.half->NamedParameters(), fields));
    return dir;
  }

  SplitServerOptions options_;
  std::unique_ptr<worker::Model> base_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Session>> sessions_;
  std::atomic<int64_t> started_{0}, train_steps_{0}, eval_batches_{0}, rejected_{0}, bytes_received_{0},
      bytes_sent_{0};
  std::mutex shutdown_mu_;
  std::condition_variable shutdown_cv_;
  bool shutting_down_ = false;
};

SplitServer::SplitServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SplitServer::~SplitServer() { Shutdown(); }

StatusOr<std::unique_ptr<SplitServer>> SplitServer::Start(const SplitServerOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  LOWBAND_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<SplitServer>(new SplitServer(std::move(impl)));
}

int SplitServer::port() const { return impl_->port_; }

void SplitServer::Wait() {
  std::unique_lock lock(impl_->shutdown_mu_);
  impl_->shutdown_cv_.wait(lock, [&] { return impl_->shutting_down_; });
}

void SplitServer::Shutdown() {
  {
    std::lock_guard lock(impl_->shutdown_mu_);
    if (impl_->shutting_down_) return;
    impl_->shutting_down_ = true;
  }
  if (impl_->server_) impl_->server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  impl_->shutdown_cv_.notify_all();
}

SplitServerCounters SplitServer::counters() const {
  SplitServerCounters c;
  c.sessions_started = impl_->started_;
  {
    std::lock_guard lock(impl_->mu_);
    c.sessions_active = static_cast<int64_t>(impl_->sessions_.size());
  }
  c.train_steps = impl_->train_steps_;
  c.eval_batches = impl_->eval_batches_;
  c.rejected = impl_->rejected_;
  c.bytes_received = impl_->bytes_received_;
  c.bytes_sent = impl_->bytes_sent_;
  return c;
}

StatusOr<std::vector<std::pair<std::string, torch::Tensor>>> SplitServer::SessionParameters(
    const std::string& id, bool gradients) const {
  std::shared_ptr<Session> s;
  {
    std::lock_guard lock(impl_->mu_);
    const auto it = impl_->sessions_.find(id);
    if (it == impl_->sessions_.end()) return NotFound("no session '" + id + "'");
    s = it->second;
  }
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, t] : s->half->NamedParameters()) {
    torch::Tensor v = gradients ? t.grad() : t;
    out.emplace_back(name, v.defined() ? v.detach().clone().cpu() : torch::Tensor());
  }
  return out;
}

}  // namespace lowband::split
