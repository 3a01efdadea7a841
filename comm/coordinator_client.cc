#include "comm/coordinator_client.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "comm/outer_update.h"
#include "comm/tls.h"
#include "comm/wire.h"
#include "proto/lowband.grpc.pb.h"

namespace lowband::comm {
namespace {

// gRPC prefixes every message with a 1-byte flag and a 4-byte length.
constexpr uint64_t kGrpcMessagePrefix = 5;

enum class Traffic { kSync, kBootstrap, kControl };

double Seconds(std::chrono::milliseconds d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

struct CoordinatorClient::Impl {
  std::string target;
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Coordinator::Stub> stub;
  uint64_t nonce = 0;

  mutable std::mutex mu;
  // --- guarded by mu ---
  bool joined = false;
  JoinParams join_params;    // for joining again after the coordinator forgot this worker
  uint64_t incarnation = 0;  // the coordinator process's, from its last reply (0: none yet)
  v1::Caller caller;
  uint32_t chunk_bytes = kMaxChunkBytes;
  std::vector<uint64_t> fragment_elements;
  quant::CodecSpec download_codec;

  // Traffic, lock-free.
  std::atomic<uint64_t> sync_payload_sent{0}, sync_payload_received{0};
  std::atomic<uint64_t> bootstrap_payload_sent{0}, bootstrap_payload_received{0};
  std::atomic<uint64_t> sync_msg_sent{0}, sync_msg_received{0};
  std::atomic<uint64_t> bootstrap_msg_sent{0}, bootstrap_msg_received{0};
  std::atomic<uint64_t> control_msg_sent{0}, control_msg_received{0};
  std::atomic<uint64_t> retries{0};
  std::atomic<uint64_t> epoch{0};
  std::atomic<uint64_t> rejoins{0};
  std::atomic<uint64_t> joins_done{0};  // successful Joins, first included
  std::mutex rejoin_mu;                 // one re-Join at a time

  // A reply's incarnation: a new one means the coordinator restarted (from its checkpoint).
  void SawIncarnation(uint64_t incarnation_seen) {
    std::lock_guard<std::mutex> lock(mu);
    SawIncarnationLocked(incarnation_seen);
  }
  void SawIncarnationLocked(uint64_t incarnation_seen) {
    if (incarnation_seen == 0) return;
    if (incarnation != 0 && incarnation != incarnation_seen) ++epoch;
    incarnation = incarnation_seen;
  }

  // The run's token on every call.
  void Authorize(grpc::ClientContext& ctx) const {
    std::lock_guard<std::mutex> lock(mu);
    ctx.AddMetadata(kTokenMetadataKey, join_params.token);
  }

  v1::Caller CurrentCaller() const {
    std::lock_guard<std::mutex> lock(mu);
    return caller;
  }

  StatusOr<JoinReply> DoJoin(const JoinParams& params);
  // Joins again unless another thread did since `seen_joins`.
  Status Rejoin(uint64_t seen_joins);

  void CountMessage(Traffic t, bool sent, const google::protobuf::Message& m) {
    const uint64_t n = m.ByteSizeLong() + kGrpcMessagePrefix;
    switch (t) {
      case Traffic::kSync:
        (sent ? sync_msg_sent : sync_msg_received) += n;
        break;
      case Traffic::kBootstrap:
        (sent ? bootstrap_msg_sent : bootstrap_msg_received) += n;
        break;
      case Traffic::kControl:
        (sent ? control_msg_sent : control_msg_received) += n;
        break;
    }
  }

  // OK once joined, FAILED_PRECONDITION before. (Each attempt of a call takes CurrentCaller():
  // the caller changes when the client joins again.)
  Status RequireJoined(const char* call) const {
    std::lock_guard<std::mutex> lock(mu);
    if (!joined) {
      return FailedPrecondition(fmt::format("{}: Join the run first", call));
    }
    return Status::Ok();
  }

  uint32_t ChunkBytes() const {
    std::lock_guard<std::mutex> lock(mu);
    return chunk_bytes;
  }

  // Runs `attempt` (grpc::ClientContext&) -> Status until it succeeds, fails with anything but
  // UNAVAILABLE, runs out of attempts, or the call's deadline would pass during the backoff. A call
  // that got through after UNAVAILABLE (the coordinator restarted or the link came back) starts a
  // new epoch. With `rejoin`, a refusal saying this worker is not (or no longer) a member joins
  // again once with the same nonce (the coordinator restores the same worker id) and retries.
  template <typename Attempt>
  Status Call(const std::string& what, std::chrono::milliseconds deadline, Attempt&& attempt,
              bool rejoin = true) {
    const auto end = std::chrono::system_clock::now() + deadline;
    auto backoff = options.retry.initial_backoff;
    bool unavailable = false;
    int rejoins_left = 2;
    for (int i = 1;; ++i) {
      const uint64_t seen_joins = joins_done.load();
      grpc::ClientContext ctx;
      ctx.set_deadline(end);
      Authorize(ctx);
      Status s = attempt(ctx);
      if (unavailable && s.code() != StatusCode::kUnavailable) {
        unavailable = false;
        ++epoch;  // the coordinator answers again: it may be a new process
      }
      if (s.ok()) {
        return s;
      }
      if (rejoin && rejoins_left > 0 &&
          (s.code() == StatusCode::kFailedPrecondition || s.code() == StatusCode::kPermissionDenied) &&
          s.message().find("member") != std::string::npos) {
        --rejoins_left;
        if (Status r = Rejoin(seen_joins); !r.ok()) {
          return r.WithContext(fmt::format("{}: refused ({}); joining again failed", what, s.message()));
        }
        continue;
      }
      const bool retry = s.code() == StatusCode::kUnavailable && i < options.retry.max_attempts &&
                         std::chrono::system_clock::now() + backoff < end;
      if (!retry) {
        if (s.code() == StatusCode::kDeadlineExceeded) {
          return DeadlineExceeded(fmt::format("{}: no answer from the coordinator at {} within {:.1f} s ({})",
                                              what, target, Seconds(deadline), s.message()));
        }
        if (s.code() == StatusCode::kUnavailable) {
          // Before any Join got through, a refused TLS handshake is the likelier cause: say what to check.
          const std::string hint = joins_done.load() == 0 ? " (" + ConnectHint(options.tls) + ")" : "";
          return Unavailable(fmt::format("{}: the coordinator at {} is unavailable after {} attempt(s): {}{}",
                                         what, target, i, s.message(), hint));
        }
        return s.WithContext(what);
      }
      unavailable = true;
      ++retries;
      std::this_thread::sleep_for(backoff);
      backoff = std::min(
          options.retry.max_backoff,
          std::chrono::milliseconds(static_cast<int64_t>(backoff.count() * options.retry.multiplier)));
    }
  }
};

CoordinatorClient::CoordinatorClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CoordinatorClient::~CoordinatorClient() = default;

StatusOr<std::unique_ptr<CoordinatorClient>> CoordinatorClient::Connect(const std::string& target,
                                                                        const ClientOptions& options) {
  if (options.retry.max_attempts < 1) {
    return InvalidArgument("retry.max_attempts must be at least 1");
  }
  if (options.max_chunk_bytes == 0 || options.max_chunk_bytes > kMaxChunkBytes) {
    return InvalidArgument(
        fmt::format("max_chunk_bytes must be in 1..{}, got {}", kMaxChunkBytes, options.max_chunk_bytes));
  }
  auto impl = std::make_unique<Impl>();
  impl->target = target;
  impl->options = options;
  impl->chunk_bytes = options.max_chunk_bytes;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, static_cast<int>(options.retry.initial_backoff.count()));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(options.retry.max_backoff.count()));
  ApplyChannelArguments(options.tls, &args);
  StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = MakeChannelCredentials(options.tls);
  if (!credentials.ok()) {
    return credentials.status().WithContext("connecting to the coordinator");
  }
  impl->channel = grpc::CreateCustomChannel(target, *credentials, args);
  impl->stub = v1::Coordinator::NewStub(impl->channel);
  std::random_device rd;
  while (impl->nonce == 0) {
    impl->nonce = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  if (options.connect_timeout.count() > 0 &&
      !impl->channel->WaitForConnected(std::chrono::system_clock::now() + options.connect_timeout)) {
    return Unavailable(
        fmt::format("cannot reach the coordinator at {} within {:.1f} s; check the address and "
                    "that the coordinator is running; {}",
                    target, Seconds(options.connect_timeout), ConnectHint(options.tls)));
  }
  return std::unique_ptr<CoordinatorClient>(new CoordinatorClient(std::move(impl)));
}

StatusOr<JoinReply> CoordinatorClient::Join(const JoinParams& params) { return impl_->DoJoin(params); }

Status CoordinatorClient::Impl::Rejoin(uint64_t seen_joins) {
  std::lock_guard<std::mutex> serial(rejoin_mu);
  if (joins_done.load() != seen_joins) return Status::Ok();  // another thread joined again meanwhile
  JoinParams params;
  uint64_t old_id = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!joined) return FailedPrecondition("not joined");
    params = join_params;
    old_id = caller.worker_id();
  }
  StatusOr<JoinReply> r = DoJoin(params);
  if (!r.ok()) return r.status();
  ++rejoins;
  ++epoch;
  if (r->worker_id != old_id) {
    // Only a coordinator that lost its record of this worker (a restart from a checkpoint older
    // than the Join) gives another id; what this worker pushed under the old id is not recognised.
    spdlog::warn("coordinator client: joined again as worker {} (was {})", r->worker_id, old_id);
  } else {
    spdlog::warn("coordinator client: the coordinator had dropped worker {}; joined again", old_id);
  }
  return Status::Ok();
}

StatusOr<JoinReply> CoordinatorClient::Impl::DoJoin(const JoinParams& params) {
  Impl& d = *this;
  {
    std::lock_guard<std::mutex> lock(d.mu);
    d.join_params = params;
  }
  v1::JoinRequest req;
  req.set_protocol_version(kProtocolVersion);
  req.set_run_id(params.run_id);
  req.set_token(params.token);
  ToProto(params.signature, req.mutable_signature());
  req.set_worker_name(params.worker_name);
  req.set_host(params.host);
  req.set_join_nonce(d.nonce);
  v1::JoinReply rep;
  const Status call = d.Call(
      "Join", d.options.join_deadline,
      [&](grpc::ClientContext& ctx) {
        d.CountMessage(Traffic::kControl, true, req);
        Status s = FromGrpc(d.stub->Join(&ctx, req, &rep));
        if (s.ok()) {
          d.CountMessage(Traffic::kControl, false, rep);
        }
        return s;
      },
      /*rejoin=*/false);
  if (!call.ok()) {
    return call;
  }

  JoinReply r;
  r.worker_id = rep.worker_id();
  for (const v1::FragmentAssignment& f : rep.fragments()) {
    r.fragment_tensors.emplace_back(f.tensor_indices().begin(), f.tensor_indices().end());
    r.fragment_elements.push_back(f.element_count());
  }
  r.inner_steps = rep.schedule().inner_steps();
  r.num_fragments = rep.schedule().num_fragments();
  r.overlap_steps = rep.schedule().overlap_steps();
  r.mixing_alpha = rep.schedule().mixing_alpha();
  LOWBAND_ASSIGN_OR_RETURN(r.nonblock, ParseNonBlockPolicy(rep.schedule().nonblock()));
  r.outer_lr = rep.schedule().outer_lr();
  r.outer_momentum = rep.schedule().outer_momentum();
  r.nesterov = rep.schedule().nesterov();
  StatusOr<quant::CodecSpec> up = FromProto(rep.upload_codec());
  if (!up.ok()) {
    return up.status().WithContext("Join: the coordinator's upload codec");
  }
  StatusOr<quant::CodecSpec> down = FromProto(rep.download_codec());
  if (!down.ok()) {
    return down.status().WithContext("Join: the coordinator's download codec");
  }
  r.upload_codec = *up;
  r.download_codec = *down;
  r.open_rounds.assign(rep.open_rounds().begin(), rep.open_rounds().end());
  r.must_seed = rep.must_seed();
  r.seeded = rep.seeded();
  r.max_chunk_bytes = rep.max_chunk_bytes();
  r.heartbeat_interval = std::chrono::milliseconds(rep.heartbeat_interval_ms());
  r.incarnation = rep.incarnation();
  if (r.fragment_tensors.size() != r.num_fragments || r.open_rounds.size() != r.num_fragments) {
    return Internal(fmt::format("Join: malformed reply: {} fragments, {} assignments, {} open rounds",
                                r.num_fragments, r.fragment_tensors.size(), r.open_rounds.size()));
  }

  std::lock_guard<std::mutex> lock(d.mu);
  d.joined = true;
  d.caller.set_worker_id(rep.worker_id());
  d.caller.set_session(rep.session());
  if (r.max_chunk_bytes > 0) {
    d.chunk_bytes = std::min(d.options.max_chunk_bytes, r.max_chunk_bytes);
  }
  d.fragment_elements = r.fragment_elements;
  d.download_codec = r.download_codec;
  d.SawIncarnationLocked(r.incarnation);
  ++d.joins_done;
  return r;
}

StatusOr<bool> CoordinatorClient::SeedState(std::span<const float> all_parameters) {
  Impl& d = *impl_;
  LOWBAND_RETURN_IF_ERROR(d.RequireJoined("SeedState"));
  const std::span<const uint8_t> bytes = AsBytes(all_parameters);
  const uint32_t chunk = d.ChunkBytes();
  v1::SeedMessage header;
  header.mutable_header()->set_element_count(all_parameters.size());
  header.mutable_header()->set_crc32c(quant::Crc32c(bytes));
  bool accepted = false;
  const Status call = d.Call("SeedState", d.options.seed_deadline, [&](grpc::ClientContext& ctx) {
    *header.mutable_header()->mutable_caller() = d.CurrentCaller();
    v1::SeedReply rep;
    auto writer = d.stub->SeedState(&ctx, &rep);
    bool open = writer->Write(header);
    d.CountMessage(Traffic::kBootstrap, true, header);
    v1::SeedMessage m;
    for (size_t off = 0; open && off < bytes.size(); off += chunk) {
      const size_t n = std::min<size_t>(chunk, bytes.size() - off);
      m.set_chunk(bytes.data() + off, n);
      open = writer->Write(m);
      if (open) {
        d.bootstrap_payload_sent += n;
        d.CountMessage(Traffic::kBootstrap, true, m);
      }
    }
    if (open) {
      writer->WritesDone();
    }
    Status s = FromGrpc(writer->Finish());
    if (s.ok()) {
      d.CountMessage(Traffic::kBootstrap, false, rep);
      accepted = rep.accepted();
    }
    return s;
  });
  if (!call.ok()) {
    return call;
  }
  return accepted;
}

StatusOr<GlobalState> CoordinatorClient::Bootstrap() {
  Impl& d = *impl_;
  LOWBAND_RETURN_IF_ERROR(d.RequireJoined("Bootstrap"));
  std::vector<uint64_t> expected_elements;
  {
    std::lock_guard<std::mutex> lock(d.mu);
    expected_elements = d.fragment_elements;
  }
  v1::BootstrapRequest req;
  GlobalState state;
  const Status call = d.Call("Bootstrap", d.options.bootstrap_deadline, [&](grpc::ClientContext& ctx) {
    *req.mutable_caller() = d.CurrentCaller();
    d.CountMessage(Traffic::kBootstrap, true, req);
    auto reader = d.stub->Bootstrap(&ctx, req);
    v1::BootstrapMessage m;
    std::vector<uint32_t> crcs;
    bool have_header = false;
    size_t fragment = 0;
    size_t offset = 0;  // bytes into the current fragment
    Status protocol_error;
    state = GlobalState();
    while (reader->Read(&m)) {
      d.CountMessage(Traffic::kBootstrap, false, m);
      if (!have_header) {
        if (!m.has_header()) {
          protocol_error = DataLoss("Bootstrap: the stream did not start with a header");
          break;
        }
        const auto& h = m.header();
        if (h.element_counts_size() != h.open_rounds_size() || h.element_counts_size() != h.crc32c_size() ||
            !std::equal(h.element_counts().begin(), h.element_counts().end(), expected_elements.begin(),
                        expected_elements.end())) {
          protocol_error =
              DataLoss("Bootstrap: the header's fragment sizes differ from the layout in JoinReply");
          break;
        }
        for (int p = 0; p < h.element_counts_size(); ++p) {
          state.fragments.emplace_back(h.element_counts(p));
          state.open_rounds.push_back(h.open_rounds(p));
          crcs.push_back(h.crc32c(p));
        }
        have_header = true;
        continue;
      }
      const std::string& chunk = m.chunk();
      while (fragment < state.fragments.size() &&
             offset == state.fragments[fragment].size() * sizeof(float)) {
        ++fragment;
        offset = 0;
      }
      if (fragment == state.fragments.size() ||
          offset + chunk.size() > state.fragments[fragment].size() * sizeof(float)) {
        protocol_error = DataLoss("Bootstrap: the stream carries more bytes than its header declared");
        break;
      }
      std::memcpy(reinterpret_cast<uint8_t*>(state.fragments[fragment].data()) + offset, chunk.data(),
                  chunk.size());
      offset += chunk.size();
      d.bootstrap_payload_received += chunk.size();
    }
    if (!protocol_error.ok()) {
      ctx.TryCancel();
      (void)reader->Finish();
      return protocol_error;
    }
    LOWBAND_RETURN_IF_ERROR(FromGrpc(reader->Finish()));
    if (!have_header) {
      return DataLoss("Bootstrap: the stream ended without a header");
    }
    for (size_t p = 0; p < state.fragments.size(); ++p) {
      if (CrcOfFloats(state.fragments[p]) != crcs[p]) {
        return DataLoss(
            fmt::format("Bootstrap: fragment {} is short or does not match its CRC32C: corrupted in "
                        "transit; Bootstrap again",
                        p));
      }
    }
    return Status::Ok();
  });
  if (!call.ok()) {
    return call;
  }
  return state;
}

StatusOr<HeartbeatReply> CoordinatorClient::Heartbeat(const HeartbeatInfo& info) {
  Impl& d = *impl_;
  LOWBAND_RETURN_IF_ERROR(d.RequireJoined("Heartbeat"));
  v1::HeartbeatRequest req;
  req.set_step(info.step);
  req.set_last_loss(info.last_loss);
  req.set_tokens(info.tokens);
  req.set_ready(info.ready);
  req.set_bytes_sent(d.sync_payload_sent.load() + d.bootstrap_payload_sent.load());
  req.set_bytes_received(d.sync_payload_received.load() + d.bootstrap_payload_received.load());
  v1::HeartbeatReply rep;
  const Status call = d.Call("Heartbeat", d.options.control_deadline, [&](grpc::ClientContext& ctx) {
    *req.mutable_caller() = d.CurrentCaller();
    d.CountMessage(Traffic::kControl, true, req);
    Status s = FromGrpc(d.stub->Heartbeat(&ctx, req, &rep));
    if (s.ok()) {
      d.CountMessage(Traffic::kControl, false, rep);
    }
    return s;
  });
  if (!call.ok()) {
    return call;
  }
  HeartbeatReply r;
  r.shutdown = rep.action() == v1::HeartbeatReply::SHUTDOWN;
  r.reason = rep.reason();
  r.open_rounds.assign(rep.open_rounds().begin(), rep.open_rounds().end());
  r.live_members = rep.live_members();
  r.seeded = rep.seeded();
  r.ready_members = rep.ready_members();
  d.SawIncarnation(rep.incarnation());
  return r;
}

StatusOr<PushReply> CoordinatorClient::PushFragment(uint32_t fragment, uint64_t round,
                                                    std::span<const uint8_t> payload) {
  Impl& d = *impl_;
  LOWBAND_RETURN_IF_ERROR(d.RequireJoined("PushFragment"));
  const uint32_t chunk = d.ChunkBytes();
  v1::PushMessage header;
  v1::PushHeader* h = header.mutable_header();
  h->set_fragment(fragment);
  h->set_round(round);
  h->set_payload_bytes(payload.size());
  h->set_crc32c(quant::Crc32c(payload));
  PushReply r;
  const std::string what = fmt::format("PushFragment(fragment {}, round {})", fragment, round);
  const Status call = d.Call(what, d.options.push_deadline, [&](grpc::ClientContext& ctx) {
    *h->mutable_caller() = d.CurrentCaller();
    v1::PushReply rep;
    auto writer = d.stub->PushFragment(&ctx, &rep);
    bool open = writer->Write(header);
    d.CountMessage(Traffic::kSync, true, header);
    v1::PushMessage m;
    for (size_t off = 0; open && off < payload.size(); off += chunk) {
      const size_t n = std::min<size_t>(chunk, payload.size() - off);
      m.set_chunk(payload.data() + off, n);
      open = writer->Write(m);
      if (open) {
        d.sync_payload_sent += n;
        d.CountMessage(Traffic::kSync, true, m);
      }
    }
    if (open) {
      writer->WritesDone();
    }
    Status s = FromGrpc(writer->Finish());
    if (s.ok()) {
      d.CountMessage(Traffic::kSync, false, rep);
      r.duplicate = rep.duplicate();
      r.contributions = rep.contributions();
      r.open_round = rep.open_round();
    }
    return s;
  });
  if (!call.ok()) {
    return call;
  }
  return r;
}

StatusOr<std::vector<uint8_t>> CoordinatorClient::GetUpdate(uint32_t fragment, uint64_t round,
                                                            std::chrono::milliseconds timeout) {
  Impl& d = *impl_;
  LOWBAND_RETURN_IF_ERROR(d.RequireJoined("GetUpdate"));
  uint64_t max_bytes = 0;
  {
    std::lock_guard<std::mutex> lock(d.mu);
    if (fragment < d.fragment_elements.size()) {
      max_bytes = quant::EncodedSize(d.download_codec, d.fragment_elements[fragment]);
    }
  }
  v1::GetUpdateRequest req;
  req.set_fragment(fragment);
  req.set_round(round);
  req.set_wait_ms(static_cast<uint32_t>(std::clamp<int64_t>(timeout.count(), 1, INT32_MAX)));
  std::vector<uint8_t> payload;
  const std::string what = fmt::format("GetUpdate(fragment {}, round {})", fragment, round);
  const Status call = d.Call(what, timeout + d.options.update_deadline, [&](grpc::ClientContext& ctx) {
    *req.mutable_caller() = d.CurrentCaller();
    d.CountMessage(Traffic::kSync, true, req);
    auto reader = d.stub->GetUpdate(&ctx, req);
    v1::UpdateMessage m;
    bool have_header = false;
    uint64_t declared = 0;
    uint32_t crc = 0;
    Status protocol_error;
    payload.clear();
    while (reader->Read(&m)) {
      d.CountMessage(Traffic::kSync, false, m);
      if (!have_header) {
        if (!m.has_header()) {
          protocol_error = DataLoss("the update stream did not start with a header");
          break;
        }
        declared = m.header().payload_bytes();
        crc = m.header().crc32c();
        if (m.header().fragment() != fragment || m.header().round() != round ||
            (max_bytes > 0 && declared != max_bytes)) {
          protocol_error = DataLoss(
              fmt::format("the update header describes fragment {} round {} ({} bytes); "
                          "expected fragment {} round {} ({} bytes)",
                          m.header().fragment(), m.header().round(), declared, fragment, round, max_bytes));
          break;
        }
        payload.reserve(declared);
        have_header = true;
        continue;
      }
      if (payload.size() + m.chunk().size() > declared) {
        protocol_error = DataLoss("the update stream carries more bytes than its header declared");
        break;
      }
      payload.insert(payload.end(), m.chunk().begin(), m.chunk().end());
      d.sync_payload_received += m.chunk().size();
    }
    if (!protocol_error.ok()) {
      ctx.TryCancel();
      (void)reader->Finish();
      return protocol_error;
    }
    LOWBAND_RETURN_IF_ERROR(FromGrpc(reader->Finish()));
    if (!have_header || payload.size() != declared || quant::Crc32c(payload) != crc) {
      return DataLoss(fmt::format(
          "the update arrived incomplete or corrupted ({} of {} bytes, CRC {}); ask again", payload.size(),
          declared, have_header && quant::Crc32c(payload) == crc ? "ok" : "mismatch"));
    }
    return Status::Ok();
  });
  if (!call.ok()) {
    return call;
  }
  return payload;
}

Status CoordinatorClient::Leave(const std::string& reason) {
  Impl& d = *impl_;
  LOWBAND_RETURN_IF_ERROR(d.RequireJoined("Leave"));
  v1::LeaveRequest req;
  req.set_reason(reason);
  return d.Call(
      "Leave", d.options.control_deadline,
      [&](grpc::ClientContext& ctx) {
        *req.mutable_caller() = d.CurrentCaller();
        v1::LeaveReply rep;
        d.CountMessage(Traffic::kControl, true, req);
        Status s = FromGrpc(d.stub->Leave(&ctx, req, &rep));
        if (s.ok()) {
          d.CountMessage(Traffic::kControl, false, rep);
        }
        return s;
      },
      /*rejoin=*/false);
}

uint64_t CoordinatorClient::worker_id() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->joined ? impl_->caller.worker_id() : 0;
}

TrafficCounters CoordinatorClient::traffic() const {
  const Impl& d = *impl_;
  TrafficCounters t;
  t.sync_payload_bytes_sent = d.sync_payload_sent.load();
  t.sync_payload_bytes_received = d.sync_payload_received.load();
  t.bootstrap_payload_bytes_sent = d.bootstrap_payload_sent.load();
  t.bootstrap_payload_bytes_received = d.bootstrap_payload_received.load();
  t.sync_message_bytes_sent = d.sync_msg_sent.load();
  t.sync_message_bytes_received = d.sync_msg_received.load();
  t.bootstrap_message_bytes_sent = d.bootstrap_msg_sent.load();
  t.bootstrap_message_bytes_received = d.bootstrap_msg_received.load();
  t.control_message_bytes_sent = d.control_msg_sent.load();
  t.control_message_bytes_received = d.control_msg_received.load();
  t.retries = d.retries.load();
  t.rejoins = d.rejoins.load();
  return t;
}

uint64_t CoordinatorClient::epoch() const { return impl_->epoch.load(); }

}  // namespace lowband::comm
