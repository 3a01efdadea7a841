#include "coordinator/service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "comm/outer_update.h"
#include "comm/tls.h"
#include "comm/wire.h"
#include "proto/lowband.grpc.pb.h"

#include <grpcpp/alarm.h>

namespace lowband::coordinator {
namespace {

namespace v1 = ::lowband::v1;

WorkerKey KeyOf(const v1::Caller& caller) { return {caller.worker_id(), caller.session()}; }

grpc::Status GrpcError(const Status& s) { return comm::ToGrpc(s); }

grpc::Status Invalid(const std::string& message) { return {grpc::StatusCode::INVALID_ARGUMENT, message}; }

// The run's token from the call's metadata ("x-lowband-token"); "" when absent.
std::string_view TokenOf(const grpc::CallbackServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find(comm::kTokenMetadataKey);
  return it == md.end() ? std::string_view() : std::string_view(it->second.data(), it->second.size());
}

// Streams refused before they start (wrong token): finish at once, delete themselves when done.
template <typename Message>
class RefusedReader final : public grpc::ServerReadReactor<Message> {
 public:
  explicit RefusedReader(grpc::Status s) { this->Finish(std::move(s)); }
  void OnDone() override { delete this; }
};
template <typename Message>
class RefusedWriter final : public grpc::ServerWriteReactor<Message> {
 public:
  explicit RefusedWriter(grpc::Status s) { this->Finish(std::move(s)); }
  void OnDone() override { delete this; }
};

// Pushes in flight per worker (streams past their header, not finished yet), against
// ServiceOptions::max_inflight_pushes: each one holds a contribution-sized buffer.
class InflightPushes {
 public:
  explicit InflightPushes(uint32_t limit) : limit_(limit) {}
  bool Acquire(uint64_t worker) {
    std::lock_guard<std::mutex> lock(mu_);
    uint32_t& n = count_[worker];
    if (n >= limit_) return false;
    ++n;
    return true;
  }
  void Release(uint64_t worker) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = count_.find(worker);
    if (it != count_.end() && --it->second == 0) count_.erase(it);
  }
  uint32_t limit() const { return limit_; }

 private:
  const uint32_t limit_;
  std::mutex mu_;
  std::map<uint64_t, uint32_t> count_;  // guarded by mu_; only workers with pushes in flight
};

// --- Uploads: a client stream of one header message, then chunks -------------------------------
//
// The shape shared by SeedState and PushFragment: the first message must be the header, every later
// one a chunk of at most max_chunk_bytes; the chunks fill exactly the bytes the header declared
// (more is refused at once, fewer when the stream ends). Derived (CRTP) supplies
//   grpc::Status OnHeader(const Header&, bool* done)  validate before any byte is kept; call
//                                                     Expect(buffer, bytes); *done = true finishes OK
//   grpc::Status OnComplete()                         every declared byte is in: check and apply
// and names the call and header for the messages.
template <typename Derived, typename Message>
class UploadReader : public grpc::ServerReadReactor<Message> {
 public:
  void OnReadDone(bool ok) override {
    if (!ok) {
      this->Finish(Complete());
      return;
    }
    if (!have_header_) {
      if (!msg_.has_header()) {
        this->Finish(
            Invalid(fmt::format("{}: the first message must be a {}, got a chunk", Call(), Header())));
        return;
      }
      bool done = false;
      if (grpc::Status s = derived().OnHeader(msg_.header(), &done); !s.ok() || done) {
        this->Finish(s);
        return;
      }
      have_header_ = true;
    } else {
      if (!msg_.has_chunk()) {
        this->Finish(Invalid(fmt::format("{}: a second {} arrived; after the header only chunks may follow",
                                         Call(), Header())));
        return;
      }
      const std::string& chunk = msg_.chunk();
      if (chunk.size() > options_.max_chunk_bytes) {
        this->Finish(Invalid(fmt::format("{}: chunk of {} bytes exceeds the {}-byte limit; split it", Call(),
                                         chunk.size(), options_.max_chunk_bytes)));
        return;
      }
      if (received_ + chunk.size() > capacity_) {
        this->Finish(
            Invalid(fmt::format("{}: the stream carries more than the {} bytes its header declared; refused",
                                Call(), capacity_)));
        return;
      }
      if (!chunk.empty()) {
        derived().Reserve(received_ + chunk.size());
        std::memcpy(buffer_ + received_, chunk.data(), chunk.size());
      }
      received_ += chunk.size();
    }
    this->StartRead(&msg_);
  }

  void OnDone() override { delete &derived(); }

 protected:
  UploadReader(CoordinatorCore& core, const ServiceOptions& options, grpc::CallbackServerContext* ctx)
      : core_(core), options_(options), ctx_(ctx) {}
  // The derived constructor calls this last, once every member is set.
  void Begin() { this->StartRead(&msg_); }
  // The chunks go to [buffer, buffer + bytes).
  void Expect(uint8_t* buffer, uint64_t bytes) {
    buffer_ = buffer;
    capacity_ = bytes;
  }
  // Default for a buffer allocated in full by OnHeader.
  void Reserve(uint64_t /*bytes*/) {}

  CoordinatorCore& core_;
  const ServiceOptions& options_;

 private:
  Derived& derived() { return static_cast<Derived&>(*this); }
  static const char* Call() { return Derived::kCall; }
  static const char* Header() { return Derived::kHeader; }

  grpc::Status Complete() {
    if (ctx_->IsCancelled()) {
      return {grpc::StatusCode::CANCELLED, fmt::format("{}: cancelled by the client", Call())};
    }
    if (!have_header_) {
      return Invalid(fmt::format("{}: the stream was empty; expected a {} and chunks", Call(), Header()));
    }
    if (received_ != capacity_) {
      return Invalid(fmt::format("{}: the stream ended after {} of the {} bytes its header declared", Call(),
                                 received_, capacity_));
    }
    return derived().OnComplete();
  }

  grpc::CallbackServerContext* ctx_;
  Message msg_;
  bool have_header_ = false;
  uint8_t* buffer_ = nullptr;
  uint64_t capacity_ = 0;
  uint64_t received_ = 0;
};

// SeedState: the first worker's fp32 parameters.
class SeedReader final : public UploadReader<SeedReader, v1::SeedMessage> {
 public:
  static constexpr const char* kCall = "SeedState";
  static constexpr const char* kHeader = "SeedHeader";

  SeedReader(CoordinatorCore& core, const ServiceOptions& options, grpc::CallbackServerContext* ctx,
             v1::SeedReply* reply)
      : UploadReader(core, options, ctx), reply_(reply) {
    Begin();
  }

  grpc::Status OnHeader(const v1::SeedHeader& h, bool* /*done*/) {
    key_ = KeyOf(h.caller());
    if (Status s = core_.CheckMember(key_, "SeedState"); !s.ok()) {
      return GrpcError(s);
    }
    const uint64_t expected = core_.SeedElements();
    if (h.element_count() != expected) {
      return Invalid(fmt::format("SeedState: the run's model has {} parameters, the header declares {}",
                                 expected, h.element_count()));
    }
    // The buffer grows as the values arrive (a header alone never makes the coordinator allocate
    // the whole model).
    expected_ = expected;
    crc_ = h.crc32c();
    Expect(nullptr, expected * sizeof(float));
    return grpc::Status::OK;
  }

  void Reserve(uint64_t bytes) {
    const uint64_t need = (bytes + sizeof(float) - 1) / sizeof(float);
    if (need <= values_.size()) return;
    values_.resize(std::min<uint64_t>(expected_, std::max<uint64_t>(need, 2 * values_.size())));
    Expect(reinterpret_cast<uint8_t*>(values_.data()), expected_ * sizeof(float));
  }

  grpc::Status OnComplete() {
    if (comm::CrcOfFloats(values_) != crc_) {
      return {grpc::StatusCode::DATA_LOSS,
              "SeedState: the values do not match the header's CRC32C: corrupted "
              "in transit; upload again"};
    }
    StatusOr<SeedResult> r = core_.SeedState(key_, values_);
    if (!r.ok()) {
      return GrpcError(r.status());
    }
    reply_->set_accepted(r->accepted);
    return grpc::Status::OK;
  }

 private:
  v1::SeedReply* reply_;
  WorkerKey key_;
  uint32_t crc_ = 0;
  uint64_t expected_ = 0;
  std::vector<float> values_;
};

// PushFragment: one encoded contribution to (fragment, round).
class PushReader final : public UploadReader<PushReader, v1::PushMessage> {
 public:
  static constexpr const char* kCall = "PushFragment";
  static constexpr const char* kHeader = "PushHeader";

  PushReader(CoordinatorCore& core, const ServiceOptions& options, grpc::CallbackServerContext* ctx,
             v1::PushReply* reply, InflightPushes& inflight)
      : UploadReader(core, options, ctx), reply_(reply), inflight_(inflight) {
    Begin();
  }
  ~PushReader() {
    if (holds_slot_) inflight_.Release(key_.worker_id);
  }

  grpc::Status OnHeader(const v1::PushHeader& h, bool* done) {
    key_ = KeyOf(h.caller());
    fragment_ = h.fragment();
    round_ = h.round();
    crc_ = h.crc32c();
    // Membership, fragment, exact size and round are checked before any payload byte is kept.
    StatusOr<PushResult> check = core_.CheckPush(key_, fragment_, round_, h.payload_bytes());
    if (!check.ok()) {
      return GrpcError(check.status());
    }
    if (check->duplicate) {
      Fill(*check);
      *done = true;
      return grpc::Status::OK;
    }
    if (!inflight_.Acquire(key_.worker_id)) {
      return {
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          fmt::format("PushFragment: worker {} already has {} pushes in flight, the limit; wait for one to "
                      "finish",
                      key_.worker_id, inflight_.limit())};
    }
    holds_slot_ = true;
    payload_.resize(h.payload_bytes());
    Expect(payload_.data(), payload_.size());
    return grpc::Status::OK;
  }

  grpc::Status OnComplete() {
    if (quant::Crc32c(payload_) != crc_) {
      return {grpc::StatusCode::DATA_LOSS,
              "PushFragment: the payload does not match the header's CRC32C: "
              "corrupted in transit; push it again"};
    }
    StatusOr<PushResult> r = core_.Push(key_, fragment_, round_, payload_);
    if (!r.ok()) {
      return GrpcError(r.status());
    }
    Fill(*r);
    return grpc::Status::OK;
  }

 private:
  void Fill(const PushResult& r) {
    reply_->set_duplicate(r.duplicate);
    reply_->set_contributions(r.contributions);
    reply_->set_open_round(r.open_round);
  }

  v1::PushReply* reply_;
  InflightPushes& inflight_;
  bool holds_slot_ = false;
  WorkerKey key_;
  uint32_t fragment_ = 0;
  uint64_t round_ = 0;
  uint32_t crc_ = 0;
  std::vector<uint8_t> payload_;
};

// --- Server streams that first wait on the core ---------------------------------------------------
//
// The wait is registered with the core, whose callback is the only other party that can finish the
// call. Exactly one of two things happens: the core runs the callback (which starts the writes or
// finishes with its error, touching the reactor for the last time in that Start*/Finish call), or
// OnCancel withdraws the wait (CancelWait returns true) and finishes. gRPC invokes OnCancel only
// after the handler returned, by which time wait_id_ is set.

// With wait_ms > 0 an alarm ends the wait for the round (not the transfer) after wait_ms: like
// OnCancel it withdraws the wait, and only if CancelWait wins does it finish the call. The alarm's
// callback always runs (on expiry, or with ok = false once OnDone cancels it), so the reactor is
// deleted by whichever of OnDone and that callback comes last.
class UpdateWriter final : public grpc::ServerWriteReactor<v1::UpdateMessage> {
 public:
  UpdateWriter(CoordinatorCore& core, const ServiceOptions& options, const v1::GetUpdateRequest& request)
      : core_(core), chunk_bytes_(options.max_chunk_bytes), refs_(request.wait_ms() > 0 ? 2 : 1) {
    wait_id_ = core_.AwaitUpdate(KeyOf(request.caller()), request.fragment(), request.round(),
                                 [this](StatusOr<UpdatePayload> u) { Deliver(std::move(u)); });
    if (request.wait_ms() > 0) {
      const uint64_t fragment = request.fragment(), round = request.round();
      alarm_.Set(std::chrono::system_clock::now() + std::chrono::milliseconds(request.wait_ms()),
                 [this, fragment, round](bool expired) {
                   if (expired && core_.CancelWait(wait_id_)) {
                     Finish({grpc::StatusCode::DEADLINE_EXCEEDED,
                             fmt::format("GetUpdate: round {} of fragment {} is still open; ask again", round,
                                         fragment)});
                   }
                   Unref();
                 });
    }
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish({grpc::StatusCode::CANCELLED, "GetUpdate: the client went away during the transfer"});
      return;
    }
    const std::vector<uint8_t>& bytes = *update_.payload;
    if (offset_ == bytes.size()) {
      Finish(grpc::Status::OK);
      return;
    }
    const size_t n = std::min<size_t>(chunk_bytes_, bytes.size() - offset_);
    msg_.set_chunk(bytes.data() + offset_, n);
    offset_ += n;
    StartWrite(&msg_);
  }

  void OnCancel() override {
    if (core_.CancelWait(wait_id_)) {
      Finish(
          {grpc::StatusCode::CANCELLED, "GetUpdate: cancelled (deadline passed) while the round was open"});
    }
  }

  void OnDone() override {
    alarm_.Cancel();  // its callback still runs (expired = false) and drops its reference
    Unref();
  }

 private:
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  void Deliver(StatusOr<UpdatePayload> u) {
    if (!u.ok()) {
      Finish(GrpcError(u.status()));
      return;
    }
    update_ = std::move(u).value();
    v1::UpdateHeader* h = msg_.mutable_header();
    h->set_fragment(update_.fragment);
    h->set_round(update_.round);
    h->set_payload_bytes(update_.payload->size());
    h->set_crc32c(update_.crc32c);
    h->set_contributions(update_.contributions);
    StartWrite(&msg_);
  }

  CoordinatorCore& core_;
  const uint32_t chunk_bytes_;
  CoordinatorCore::WaitId wait_id_ = 0;
  UpdatePayload update_;
  size_t offset_ = 0;
  v1::UpdateMessage msg_;
  grpc::Alarm alarm_;
  std::atomic<int> refs_;
};

class BootstrapWriter final : public grpc::ServerWriteReactor<v1::BootstrapMessage> {
 public:
  BootstrapWriter(CoordinatorCore& core, const ServiceOptions& options, const v1::BootstrapRequest& request)
      : core_(core), chunk_bytes_(options.max_chunk_bytes), key_(KeyOf(request.caller())) {
    wait_id_ = core_.AwaitSeeded(key_, [this](const Status& s) { OnSeeded(s); });
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish({grpc::StatusCode::CANCELLED, "Bootstrap: the client went away during the transfer"});
      return;
    }
    // Skip to the next fragment with bytes left.
    while (fragment_ < state_.fragments.size() &&
           offset_ == state_.fragments[fragment_].size() * sizeof(float)) {
      ++fragment_;
      offset_ = 0;
    }
    if (fragment_ == state_.fragments.size()) {
      Finish(grpc::Status::OK);
      return;
    }
    // A chunk never spans two fragments; it is at most chunk_bytes_ long.
    const auto bytes = comm::AsBytes(state_.fragments[fragment_]);
    const size_t n = std::min<size_t>(chunk_bytes_, bytes.size() - offset_);
    msg_.set_chunk(bytes.data() + offset_, n);
    offset_ += n;
    StartWrite(&msg_);
  }

  void OnCancel() override {
    if (core_.CancelWait(wait_id_)) {
      Finish({grpc::StatusCode::CANCELLED,
              "Bootstrap: cancelled (deadline passed) before the state was seeded"});
    }
  }

  void OnDone() override { delete this; }

 private:
  void OnSeeded(const Status& s) {
    if (!s.ok()) {
      Finish(GrpcError(s));
      return;
    }
    StatusOr<BootstrapState> state = core_.Bootstrap(key_);
    if (!state.ok()) {
      Finish(GrpcError(state.status()));
      return;
    }
    state_ = std::move(state).value();
    v1::BootstrapHeader* h = msg_.mutable_header();
    for (size_t p = 0; p < state_.fragments.size(); ++p) {
      h->add_element_counts(state_.fragments[p].size());
      h->add_open_rounds(state_.open_rounds[p]);
      h->add_crc32c(state_.crc32c[p]);
    }
    StartWrite(&msg_);
  }

  CoordinatorCore& core_;
  const uint32_t chunk_bytes_;
  const WorkerKey key_;
  CoordinatorCore::WaitId wait_id_ = 0;
  BootstrapState state_;
  size_t fragment_ = 0;
  size_t offset_ = 0;
  v1::BootstrapMessage msg_;
};

// --- The service ------------------------------------------------------------------------------------

class CoordinatorService final : public v1::Coordinator::CallbackService {
 public:
  CoordinatorService(CoordinatorCore& core, const ServiceOptions& options)
      : core_(core), options_(options), inflight_(options.max_inflight_pushes) {}

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* ctx, const v1::JoinRequest* request,
                                 v1::JoinReply* reply) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    grpc::Status s = CheckToken(ctx, "Join");
    reactor->Finish(s.ok() ? DoJoin(*request, reply) : s);
    return reactor;
  }

  grpc::ServerReadReactor<v1::SeedMessage>* SeedState(grpc::CallbackServerContext* ctx,
                                                      v1::SeedReply* reply) override {
    if (grpc::Status s = CheckToken(ctx, "SeedState"); !s.ok()) return new RefusedReader<v1::SeedMessage>(s);
    return new SeedReader(core_, options_, ctx, reply);
  }

  grpc::ServerWriteReactor<v1::BootstrapMessage>* Bootstrap(grpc::CallbackServerContext* ctx,
                                                            const v1::BootstrapRequest* request) override {
    if (grpc::Status s = CheckToken(ctx, "Bootstrap"); !s.ok())
      return new RefusedWriter<v1::BootstrapMessage>(s);
    return new BootstrapWriter(core_, options_, *request);
  }

  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx, const v1::HeartbeatRequest* request,
                                      v1::HeartbeatReply* reply) override {
    if (grpc::Status s = CheckToken(ctx, "Heartbeat"); !s.ok()) {
      grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
      reactor->Finish(s);
      return reactor;
    }
    HeartbeatInfo info;
    info.key = KeyOf(request->caller());
    info.step = request->step();
    info.last_loss = request->last_loss();
    info.tokens = request->tokens();
    info.bytes_sent = request->bytes_sent();
    info.bytes_received = request->bytes_received();
    info.ready = request->ready();
    StatusOr<HeartbeatResult> r = core_.Heartbeat(info);
    if (r.ok()) {
      reply->set_action(r->shutdown ? v1::HeartbeatReply::SHUTDOWN : v1::HeartbeatReply::CONTINUE);
      reply->set_reason(r->reason);
      for (uint64_t round : r->open_rounds) {
        reply->add_open_rounds(round);
      }
      reply->set_live_members(r->live_members);
      reply->set_seeded(r->seeded);
      reply->set_ready_members(r->ready_members);
      reply->set_incarnation(r->incarnation);
    }
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(GrpcError(r.status()));
    return reactor;
  }

  grpc::ServerReadReactor<v1::PushMessage>* PushFragment(grpc::CallbackServerContext* ctx,
                                                         v1::PushReply* reply) override {
    if (grpc::Status s = CheckToken(ctx, "PushFragment"); !s.ok())
      return new RefusedReader<v1::PushMessage>(s);
    return new PushReader(core_, options_, ctx, reply, inflight_);
  }

  grpc::ServerWriteReactor<v1::UpdateMessage>* GetUpdate(grpc::CallbackServerContext* ctx,
                                                         const v1::GetUpdateRequest* request) override {
    if (grpc::Status s = CheckToken(ctx, "GetUpdate"); !s.ok())
      return new RefusedWriter<v1::UpdateMessage>(s);
    return new UpdateWriter(core_, options_, *request);
  }

  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* ctx, const v1::LeaveRequest* request,
                                  v1::LeaveReply* /*reply*/) override {
    if (grpc::Status t = CheckToken(ctx, "Leave"); !t.ok()) {
      grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
      reactor->Finish(t);
      return reactor;
    }
    Status s = core_.Leave(KeyOf(request->caller()));
    if (s.ok() && !request->reason().empty()) {
      spdlog::info("coordinator: worker {} left: {}", request->caller().worker_id(), request->reason());
    }
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(GrpcError(s));
    return reactor;
  }

 private:
  grpc::Status CheckToken(const grpc::CallbackServerContext* ctx, const char* call) {
    return GrpcError(core_.CheckToken(TokenOf(ctx), call));
  }

  grpc::Status DoJoin(const v1::JoinRequest& request, v1::JoinReply* reply) {
    if (request.protocol_version() != comm::kProtocolVersion) {
      return {grpc::StatusCode::FAILED_PRECONDITION,
              fmt::format("Join: the worker speaks protocol version {}, this coordinator version {}; run the "
                          "same lowband release on both sides",
                          request.protocol_version(), comm::kProtocolVersion)};
    }
    JoinRequest j;
    j.run_id = request.run_id();
    j.token = request.token();
    j.signature = comm::FromProto(request.signature());
    j.worker_name = request.worker_name();
    j.host = request.host();
    j.join_nonce = request.join_nonce();
    StatusOr<JoinResult> r = core_.Join(j);
    if (!r.ok()) {
      return GrpcError(r.status());
    }
    reply->set_worker_id(r->key.worker_id);
    reply->set_session(r->key.session);
    for (uint32_t p = 0; p < r->layout.num_fragments(); ++p) {
      v1::FragmentAssignment* f = reply->add_fragments();
      f->set_index(p);
      for (uint32_t t : r->layout.fragment(p).tensors) {
        f->add_tensor_indices(t);
      }
      f->set_element_count(r->layout.element_count(p));
    }
    v1::Schedule* s = reply->mutable_schedule();
    s->set_inner_steps(r->inner_steps);
    s->set_num_fragments(r->layout.num_fragments());
    s->set_overlap_steps(r->overlap_steps);
    s->set_mixing_alpha(r->mixing_alpha);
    s->set_nonblock(std::string(comm::NonBlockPolicyName(r->nonblock)));
    s->set_outer_lr(r->outer.lr);
    s->set_outer_momentum(r->outer.momentum);
    s->set_nesterov(r->outer.nesterov);
    comm::ToProto(r->upload_codec, reply->mutable_upload_codec());
    comm::ToProto(r->download_codec, reply->mutable_download_codec());
    for (uint64_t round : r->open_rounds) {
      reply->add_open_rounds(round);
    }
    reply->set_must_seed(r->must_seed);
    reply->set_seeded(r->seeded);
    reply->set_max_chunk_bytes(options_.max_chunk_bytes);
    reply->set_heartbeat_interval_ms(static_cast<uint32_t>(r->heartbeat_interval.count()));
    reply->set_protocol_version(comm::kProtocolVersion);
    reply->set_incarnation(r->incarnation);
    return grpc::Status::OK;
  }

  CoordinatorCore& core_;
  const ServiceOptions options_;
  InflightPushes inflight_;
};

}  // namespace

std::unique_ptr<grpc::Service> NewCoordinatorService(CoordinatorCore& core, const ServiceOptions& options) {
  return std::make_unique<CoordinatorService>(core, options);
}

CoordinatorServer::CoordinatorServer(CoordinatorCore& core, ServerOptions options)
    : core_(core), options_(std::move(options)) {}

StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(CoordinatorCore& core,
                                                                      const ServerOptions& options) {
  if (options.service.max_chunk_bytes == 0 || options.service.max_chunk_bytes > comm::kMaxChunkBytes) {
    return InvalidArgument(fmt::format("max_chunk_bytes must be in 1..{}, got {}", comm::kMaxChunkBytes,
                                       options.service.max_chunk_bytes));
  }
  if (options.tick_interval.count() <= 0) {
    return InvalidArgument("tick_interval must be positive");
  }
  std::unique_ptr<CoordinatorServer> server(new CoordinatorServer(core, options));
  server->service_ = NewCoordinatorService(core, options.service);
  grpc::ServerBuilder builder;
  StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = comm::MakeServerCredentials(options.tls);
  if (!credentials.ok()) {
    return credentials.status().WithContext("coordinator TLS");
  }
  builder.AddListeningPort(options.address, *credentials, &server->port_);
  builder.RegisterService(server->service_.get());
  builder.SetMaxReceiveMessageSize(comm::kMaxMessageBytes);
  builder.SetMaxSendMessageSize(comm::kMaxMessageBytes);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    server->stopped_ = true;
    return Unavailable(
        fmt::format("cannot listen on '{}': the address is invalid or the port is in use; pick "
                    "another listen address (port 0 picks a free one)",
                    options.address));
  }
  server->ticker_ = std::thread([s = server.get()] { s->TickLoop(); });
  spdlog::info("coordinator: serving run '{}' on {} (port {}, {})", core.options().run_id, options.address,
               server->port_, comm::Describe(options.tls));
  if (comm::PlaintextBeyondLoopback(options.tls, options.address)) {
    spdlog::warn(
        "coordinator: plaintext gRPC on {}: anyone on the path can read the run token and the payloads; "
        "serve TLS with --tls-dir (deploy/make-certs.sh) or keep the port on a trusted network",
        options.address);
  }
  return server;
}

CoordinatorServer::~CoordinatorServer() { Stop(); }

std::string CoordinatorServer::target() const {
  std::string host = options_.address.substr(0, options_.address.rfind(':'));
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::") {
    host = "127.0.0.1";
  }
  return fmt::format("{}:{}", host, port_);
}

void CoordinatorServer::TickLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, options_.tick_interval, [this] { return stopping_; });
    if (stopping_) {
      break;
    }
    lock.unlock();
    core_.Tick();
    lock.lock();
  }
}

void CoordinatorServer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) {
      return;
    }
    stopped_ = true;
    stopping_ = true;
  }
  cv_.notify_all();
  if (ticker_.joinable()) {
    ticker_.join();
  }
  core_.CancelAllWaits(Unavailable("the coordinator is shutting down; reconnect with backoff"));
  server_->Shutdown(std::chrono::system_clock::now() + options_.shutdown_grace);
  server_->Wait();
  spdlog::info("coordinator: server on port {} stopped", port_);
}

}  // namespace lowband::coordinator
