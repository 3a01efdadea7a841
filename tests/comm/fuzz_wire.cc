// libFuzzer target for the wire side of the coordinator protocol: arbitrary bytes parsed as the
// lowband.v1 messages a coordinator receives (and the JoinReply a worker receives), converted with
// comm/wire.h exactly as the gRPC service (coordinator/service.cc) and client
// (comm/coordinator_client.cc) do, and handed to a CoordinatorCore. Errors must come back as
// statuses, never as crashes, undefined behaviour or unbounded allocations.
//
// Input: byte 0 = message kind (bits 0-2) and switches; the rest is the message (kinds 0, 2, 4-7) or
// a stream of messages, each a 16-bit little-endian length and that many bytes (kinds 1 and 3).
//   kind 0 JoinRequest   -> FromProto(signature) -> Join on a fresh core whose first joiner defines
//                           the run (P = 1..4 from bits 5-6, nonblock spread when bit 7); an accepted
//                           signature must convert back unchanged, its layout must cover exactly its
//                           elements, and seeding and bootstrapping it must work.
//   kind 1 SeedMessage stream   -> the service's SeedState checks, then CoordinatorCore::SeedState.
//   kind 2 HeartbeatRequest     -> CoordinatorCore::Heartbeat.
//   kind 3 PushMessage stream   -> CheckPush before any byte is kept (an accepted header declares
//                                  exactly the fragment's contribution size), chunks within the
//                                  limit and the declared size, then CoordinatorCore::Push.
//   kind 4 GetUpdateRequest     -> GetUpdate and AwaitUpdate.
//   kind 5 LeaveRequest or BootstrapRequest (bit 7).
//   kind 6 JoinReply            -> the client's conversions (non-block policy, codecs, fragment
//                                  assignment against the run's signature, schedule).
//   kind 7 CodecSpec            -> FromProto / Validate / ToProto round trip, and the status mapping.
// Switches: bit 3 re-seals a JoinRequest's signature hash (an honest client's hash, so that the
// checks behind it are reached) and fixes a stream's transport CRC32C; bit 4 gives a caller with
// worker id 1 or 2 that member's real session (sessions are random, a fuzzer cannot guess them),
// and makes kind 0 build its JoinRequest from the bytes (StructuredJoin) rather than parse them;
// bit 5 gives a stream's header (kinds 1, 3) the size, fragment and round the run expects, so that
// its chunks reach SeedState / Push.
// Cores for kinds 1-5 run over a 3-tensor signature (36 values, 3 fragments), two members, seeded,
// with round 0 of fragment 0 closed.
//   cmake -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
//         -DLOWBAND_FUZZ=ON -DLOWBAND_SANITIZE=address -DLOWBAND_WITH_TORCH=OFF
//   ninja -C build-fuzz fuzz_comm_wire && ./build-fuzz/tests/comm/fuzz_comm_wire -max_total_time=600
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <fuzzer/FuzzedDataProvider.h>
#include <google/protobuf/stubs/logging.h>
#include <spdlog/spdlog.h>

#include "comm/outer_update.h"
#include "comm/schedule.h"
#include "comm/signature.h"
#include "comm/wire.h"
#include "coordinator/core.h"
#include "proto/lowband.pb.h"
#include "quant/codec.h"

#include "tests/fuzz_require.h"

namespace {

using namespace lowband;
using namespace lowband::coordinator;

using lowband::testing::Require;

constexpr uint64_t kMaxSeedValues = uint64_t{1} << 16;

comm::ModelSignature WireSignature() {
  auto s = comm::MakeSignature(
      {{"blocks.0.w", {4, 4}, "float32"}, {"blocks.1.w", {4, 4}, "float32"}, {"head.w", {4}, "float32"}});
  Require(s.ok());
  return *s;
}

std::vector<float> Ramp(uint64_t n) {
  std::vector<float> v(n);
  for (uint64_t i = 0; i < n; ++i) v[i] = 0.01f * static_cast<float>(i % 97);
  return v;
}

// A seeded run over WireSignature: members 1 and 2, round 0 of fragment 0 closed.
struct SeededRun {
  ManualClock clock;
  std::unique_ptr<CoordinatorCore> core;
  WorkerKey keys[2];

  SeededRun() {
    CoordinatorOptions o;
    o.signature = WireSignature();
    o.layout.num_fragments = 3;
    o.clock = &clock;
    auto c = CoordinatorCore::Create(std::move(o));
    Require(c.ok());
    core = std::move(c).value();
    for (WorkerKey& k : keys) {
      JoinRequest j;
      j.run_id = core->options().run_id;
      j.signature = WireSignature();
      auto r = core->Join(j);
      Require(r.ok());
      k = r->key;
    }
    Require(keys[0].worker_id == 1 && keys[1].worker_id == 2);
    auto s = core->SeedState(keys[0], Ramp(core->SeedElements()));
    Require(s.ok() && s->accepted);
    for (const WorkerKey& k : keys) {
      auto payload = quant::Encode(core->options().upload_codec, std::vector<float>(16, 0.01f));
      Require(payload.ok());
      Require(core->Push(k, 0, 0, *payload).ok());
    }
    Require(core->round_status(0)->open_round == 1);
  }

  // The service's KeyOf, with the real session for members 1 and 2 when `fix` is set.
  WorkerKey KeyOf(const v1::Caller& caller, bool fix) const {
    WorkerKey k{caller.worker_id(), caller.session()};
    if (fix && (k.worker_id == 1 || k.worker_id == 2)) k.session = keys[k.worker_id - 1].session;
    return k;
  }
};

// Splits the input into length-prefixed records (at most 16).
std::vector<std::span<const uint8_t>> Records(std::span<const uint8_t> in) {
  std::vector<std::span<const uint8_t>> out;
  while (!in.empty() && out.size() < 16) {
    size_t len = in[0];
    if (in.size() >= 2) len |= size_t{in[1]} << 8;
    in = in.subspan(in.size() >= 2 ? 2 : 1);
    len = len < in.size() ? len : in.size();
    out.push_back(in.first(len));
    in = in.subspan(len);
  }
  return out;
}

template <typename Message>
bool Parse(Message& m, std::span<const uint8_t> bytes) {
  return m.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

// --- kind 0 ---------------------------------------------------------------------------------------

// Bit 4: a JoinRequest an honest client could send (the run's id, token and protocol version) whose
// tensors (names, shapes, dtypes) come from the bytes, serialized and parsed back; raw bytes rarely
// nest a well-formed signature three messages deep.
std::string StructuredJoin(std::span<const uint8_t> bytes) {
  FuzzedDataProvider in(bytes.data(), bytes.size());
  v1::JoinRequest req;
  req.set_protocol_version(comm::kProtocolVersion);
  req.set_run_id(CoordinatorOptions().run_id);
  req.set_join_nonce(in.ConsumeIntegral<uint8_t>());
  const int tensors = 1 + in.ConsumeIntegral<uint8_t>() % 6;
  for (int i = 0; i < tensors; ++i) {
    v1::TensorInfo* t = req.mutable_signature()->add_tensors();
    const uint8_t how = in.ConsumeIntegral<uint8_t>();
    t->set_name(how < 192 ? "blocks." + std::to_string(how % 4) + ".w" + std::to_string(i)
                          : in.ConsumeRandomLengthString(12));
    t->set_dtype(how & 1 ? in.ConsumeRandomLengthString(8) : "float32");
    const int rank = in.ConsumeIntegral<uint8_t>() % 4;
    for (int d = 0; d < rank; ++d) {
      const uint8_t dim = in.ConsumeIntegral<uint8_t>();
      if (dim < 128) {
        t->add_shape(dim % 9);
      } else if (dim < 224) {
        t->add_shape(int64_t{1} << (dim % 63));
      } else {
        t->add_shape(in.ConsumeIntegral<int64_t>());
      }
    }
  }
  req.mutable_signature()->set_hash(in.ConsumeIntegral<uint64_t>());
  return req.SerializeAsString();
}

void Join(std::span<const uint8_t> bytes, uint8_t ctrl) {
  v1::JoinRequest req;
  if (ctrl & 16) {
    const std::string wire = StructuredJoin(bytes);
    if (!req.ParseFromString(wire)) return;  // proto3 refuses a string field that is not UTF-8
  } else if (!Parse(req, bytes)) {
    return;
  }
  if (req.protocol_version() != comm::kProtocolVersion) return;  // the service refuses it first
  JoinRequest j;
  j.run_id = req.run_id();
  j.token = req.token();
  j.signature = comm::FromProto(req.signature());
  if (ctrl & 8) j.signature.Seal();
  j.worker_name = req.worker_name();
  j.host = req.host();
  j.join_nonce = req.join_nonce();
  const bool well_formed = comm::ValidateSignature(j.signature).ok();

  ManualClock clock;
  CoordinatorOptions o;
  o.layout.num_fragments = 1 + ((ctrl >> 5) & 3);
  o.inner_steps = 100;
  o.layout.nonblock = (ctrl & 128) ? comm::NonBlockPolicy::kSpread : comm::NonBlockPolicy::kOwn;
  o.clock = &clock;
  auto created = CoordinatorCore::Create(std::move(o));
  Require(created.ok());
  CoordinatorCore& core = **created;
  auto r = core.Join(j);
  if (!r.ok()) {
    Require(core.counters().refusals == 1 && core.live_members() == 0);
    return;
  }
  Require(well_formed);
  // The accepted signature converts back unchanged.
  v1::ModelSignature back;
  comm::ToProto(j.signature, &back);
  Require(comm::FromProto(back) == j.signature);
  // The layout covers every tensor once and exactly the signature's elements.
  const comm::FragmentLayout& layout = r->layout;
  Require(layout.num_fragments() == core.options().layout.num_fragments);
  Require(r->open_rounds.size() == layout.num_fragments() && r->must_seed && !r->seeded);
  std::vector<int> seen(j.signature.tensors.size(), 0);
  uint64_t total = 0;
  for (const comm::FragmentInfo& f : layout.fragments()) {
    uint64_t sum = 0;
    for (uint32_t t : f.tensors) {
      Require(t < seen.size());
      ++seen[t];
      sum += j.signature.tensors[t].element_count();
    }
    Require(!f.tensors.empty() && sum == f.element_count);
    total += sum;
  }
  for (int n : seen) Require(n == 1);
  Require(total == j.signature.total_elements() && core.SeedElements() == total);
  for (uint32_t p = 0; p < layout.num_fragments(); ++p) Require(core.ContributionBytes(p).ok());
  // A retried Join with the same nonce is the same member.
  if (j.join_nonce != 0) {
    auto again = core.Join(j);
    Require(again.ok() && again->key.worker_id == r->key.worker_id && again->key.session == r->key.session);
  }
  // Seeding it (as the service would for a run this small) and bootstrapping work.
  if (total > kMaxSeedValues) return;
  const std::vector<float> values = Ramp(total);
  auto seeded = core.SeedState(r->key, values);
  Require(seeded.ok() && seeded->accepted);
  auto state = core.Bootstrap(r->key);
  Require(state.ok() && state->fragments.size() == layout.num_fragments());
  std::vector<float> all(total, -1.0f);
  for (uint32_t p = 0; p < layout.num_fragments(); ++p) {
    Require(state->fragments[p].size() == layout.element_count(p));
    Require(layout.Scatter(p, state->fragments[p], all).ok());
  }
  Require(all == values);
}

// --- kinds 1 and 3: the service's upload streams -------------------------------------------------

void SeedStream(std::span<const uint8_t> bytes, uint8_t ctrl) {
  SeededRun run;
  CoordinatorCore& core = *run.core;
  std::vector<float> values;
  uint64_t capacity = 0, received = 0;
  uint32_t crc = 0;
  WorkerKey key;
  bool have_header = false;
  for (std::span<const uint8_t> rec : Records(bytes)) {
    v1::SeedMessage m;
    if (!Parse(m, rec)) return;
    if (!have_header) {
      if (!m.has_header()) return;
      key = run.KeyOf(m.header().caller(), ctrl & 16);
      if (!core.CheckMember(key, "SeedState").ok()) return;
      const uint64_t declared = (ctrl & 32) ? core.SeedElements() : m.header().element_count();
      if (declared != core.SeedElements()) return;
      values.resize(declared);  // bounded: the run's own size
      capacity = values.size() * sizeof(float);
      crc = m.header().crc32c();
      have_header = true;
      continue;
    }
    if (!m.has_chunk()) return;
    const std::string& chunk = m.chunk();
    if (chunk.size() > comm::kMaxChunkBytes || received + chunk.size() > capacity) return;
    if (!chunk.empty())
      std::memcpy(reinterpret_cast<uint8_t*>(values.data()) + received, chunk.data(), chunk.size());
    received += chunk.size();
  }
  if (!have_header || received != capacity) return;
  if (ctrl & 8) crc = comm::CrcOfFloats(values);
  if (comm::CrcOfFloats(values) != crc) return;
  const std::vector<uint32_t> before = core.GlobalStateCrc();
  auto r = core.SeedState(key, values);
  Require(core.GlobalStateCrc() == before);  // already seeded: never replaced
  const std::vector<float> seed = Ramp(values.size());
  if (r.ok()) Require(r->accepted == (std::memcmp(values.data(), seed.data(), 4 * values.size()) == 0));
}

void PushStream(std::span<const uint8_t> bytes, uint8_t ctrl) {
  SeededRun run;
  CoordinatorCore& core = *run.core;
  std::vector<uint8_t> payload;
  uint64_t received = 0;
  uint32_t crc = 0, fragment = 0;
  uint64_t round = 0;
  WorkerKey key;
  bool have_header = false;
  for (std::span<const uint8_t> rec : Records(bytes)) {
    v1::PushMessage m;
    if (!Parse(m, rec)) return;
    if (!have_header) {
      if (!m.has_header()) return;
      v1::PushHeader h = m.header();
      key = run.KeyOf(h.caller(), ctrl & 16);
      if ((ctrl & 32) && core.ContributionBytes(h.fragment() % 3).ok()) {
        h.set_fragment(h.fragment() % 3);  // an honest header, so that the chunks reach Push
        h.set_round(core.round_status(h.fragment())->open_round);
        h.set_payload_bytes(*core.ContributionBytes(h.fragment()));
      }
      fragment = h.fragment();
      round = h.round();
      crc = h.crc32c();
      auto check = core.CheckPush(key, fragment, round, h.payload_bytes());
      if (!check.ok() || check->duplicate) return;
      // Checked before a byte is kept: the buffer the service allocates is the exact contribution.
      auto exact = core.ContributionBytes(fragment);
      Require(exact.ok() && h.payload_bytes() == *exact && check->open_round == round);
      payload.resize(h.payload_bytes());
      have_header = true;
      continue;
    }
    if (!m.has_chunk()) return;
    const std::string& chunk = m.chunk();
    if (chunk.size() > comm::kMaxChunkBytes || received + chunk.size() > payload.size()) return;
    if (!chunk.empty()) std::memcpy(payload.data() + received, chunk.data(), chunk.size());
    received += chunk.size();
  }
  if (!have_header || received != payload.size()) return;
  if (ctrl & 8) crc = quant::Crc32c(payload);
  if (quant::Crc32c(payload) != crc) return;
  const std::vector<uint32_t> before = core.GlobalStateCrc();
  const uint64_t contributions = core.counters().contributions;
  auto r = core.Push(key, fragment, round, payload);
  if (!r.ok()) {
    Require(core.GlobalStateCrc() == before && core.counters().contributions == contributions);
    return;
  }
  Require(core.counters().contributions == contributions + (r->duplicate ? 0 : 1));
  for (const FragmentSnapshot& f : core.Snapshot().fragments) {
    Require(quant::FirstNonFinite(f.global) == f.global.size());
  }
}

// --- kinds 2, 4, 5 --------------------------------------------------------------------------------

void Heartbeat(std::span<const uint8_t> bytes, uint8_t ctrl) {
  v1::HeartbeatRequest req;
  if (!Parse(req, bytes)) return;
  SeededRun run;
  HeartbeatInfo info;
  info.key = run.KeyOf(req.caller(), ctrl & 16);
  info.step = req.step();
  info.last_loss = req.last_loss();
  info.tokens = req.tokens();
  info.bytes_sent = req.bytes_sent();
  info.bytes_received = req.bytes_received();
  info.ready = req.ready();
  auto r = run.core->Heartbeat(info);
  if (r.ok()) Require(r->live_members == 2 && r->ready_members <= 2 && r->open_rounds.size() == 3);
}

void GetUpdate(std::span<const uint8_t> bytes, uint8_t ctrl) {
  v1::GetUpdateRequest req;
  if (!Parse(req, bytes)) return;
  SeededRun run;
  const WorkerKey key = run.KeyOf(req.caller(), ctrl & 16);
  auto r = run.core->GetUpdate(key, req.fragment(), req.round());
  if (r.ok()) {
    Require(r->fragment == 0 && r->round == 0 && r->contributions == 2);
    Require(quant::Crc32c(*r->payload) == r->crc32c);
  }
  int calls = 0;
  const auto id = run.core->AwaitUpdate(key, req.fragment(), req.round(), [&](StatusOr<UpdatePayload> u) {
    ++calls;
    Require(u.ok() == r.ok());
  });
  if (run.core->CancelWait(id)) Require(calls == 0);
  run.core.reset();
  Require(calls <= 1);
}

void LeaveOrBootstrap(std::span<const uint8_t> bytes, uint8_t ctrl) {
  SeededRun run;
  const std::vector<uint32_t> before = run.core->GlobalStateCrc();
  if (ctrl & 128) {
    v1::BootstrapRequest req;
    if (!Parse(req, bytes)) return;
    auto r = run.core->Bootstrap(run.KeyOf(req.caller(), ctrl & 16));
    if (r.ok()) Require(r->crc32c == before);
  } else {
    v1::LeaveRequest req;
    if (!Parse(req, bytes)) return;
    const Status s = run.core->Leave(run.KeyOf(req.caller(), ctrl & 16));
    if (s.ok()) Require(run.core->live_members() <= 2);
  }
  Require(run.core->GlobalStateCrc() == before);
}

// --- kinds 6 and 7: what a worker receives --------------------------------------------------------

void CheckCodecRoundTrip(const v1::CodecSpec& proto) {
  StatusOr<quant::CodecSpec> spec = comm::FromProto(proto);
  if (!spec.ok() || !quant::Validate(*spec).ok()) return;
  v1::CodecSpec back;
  comm::ToProto(*spec, &back);
  StatusOr<quant::CodecSpec> again = comm::FromProto(back);
  Require(again.ok() && again->format == spec->format && again->scale_type == spec->scale_type &&
          again->block_size == spec->block_size && again->rounding == spec->rounding);
  const std::vector<float> x = Ramp(100);
  auto payload = quant::Encode(*spec, x);
  Require(payload.ok() && payload->size() == quant::EncodedSize(*spec, x.size()));
  auto decoded = quant::Decode(*payload);
  Require(decoded.ok() && decoded->size() == x.size());
}

void JoinReply(std::span<const uint8_t> bytes) {
  v1::JoinReply rep;
  if (!Parse(rep, bytes)) return;
  (void)comm::ParseNonBlockPolicy(rep.schedule().nonblock()).ok();
  CheckCodecRoundTrip(rep.upload_codec());
  CheckCodecRoundTrip(rep.download_codec());
  std::vector<std::vector<uint32_t>> assignment;
  for (const v1::FragmentAssignment& f : rep.fragments()) {
    assignment.emplace_back(f.tensor_indices().begin(), f.tensor_indices().end());
  }
  const comm::ModelSignature sig = WireSignature();
  auto layout = comm::FragmentLayout::FromAssignment(sig, assignment);
  if (layout.ok()) {
    Require(layout->num_fragments() == assignment.size() && layout->total_elements() == sig.total_elements());
    auto ours = comm::FragmentLayout::Create(sig, {layout->num_fragments(), comm::NonBlockPolicy::kOwn});
    if (ours.ok()) Require(ours->CheckSameAs(*layout).ok() == (*ours == *layout));
  }
  auto schedule = comm::FragmentSchedule::Create(rep.schedule().inner_steps(), rep.schedule().num_fragments(),
                                                 rep.schedule().overlap_steps());
  if (schedule.ok() && schedule->inner_steps() <= (uint64_t{1} << 32)) {  // step arithmetic in range
    const uint64_t t = rep.worker_id() % (uint64_t{1} << 40);
    for (uint32_t p = 0; p < schedule->num_fragments() && p < 8; ++p) {
      const uint64_t next = schedule->NextDue(p, t);
      Require(next >= t && schedule->IsDue(p, next));
      Require(schedule->DueStep(p, schedule->RoundAt(p, next)) == next);
    }
  }
}

void CodecAndStatus(std::span<const uint8_t> bytes) {
  v1::CodecSpec spec;
  if (Parse(spec, bytes)) CheckCodecRoundTrip(spec);
  const int code = bytes.empty() ? 0 : bytes[0] % 20;
  const std::string message(bytes.begin(), bytes.end());
  const Status s = comm::FromGrpc(grpc::Status(static_cast<grpc::StatusCode>(code), message));
  Require(s.ok() == (code == 0));
  const grpc::Status g = comm::ToGrpc(s);
  Require(g.ok() == s.ok());
  if (!s.ok()) Require(comm::FromGrpc(g).code() == s.code());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  spdlog::set_level(spdlog::level::off);
  google::protobuf::SetLogHandler(nullptr);  // invalid UTF-8 in string fields is logged, not fatal
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t ctrl = data[0];
  const std::span<const uint8_t> rest(data + 1, size - 1);
  switch (ctrl & 7) {
    case 0:
      Join(rest, ctrl);
      break;
    case 1:
      SeedStream(rest, ctrl);
      break;
    case 2:
      Heartbeat(rest, ctrl);
      break;
    case 3:
      PushStream(rest, ctrl);
      break;
    case 4:
      GetUpdate(rest, ctrl);
      break;
    case 5:
      LeaveOrBootstrap(rest, ctrl);
      break;
    case 6:
      JoinReply(rest);
      break;
    default:
      CodecAndStatus(rest);
      break;
  }
  return 0;
}
