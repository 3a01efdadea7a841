#include "coordinator/checkpoint.h"

#include <chrono>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "comm/durable_file.h"
#include "quant/codec.h"

namespace lowband::coordinator {
namespace {

constexpr char kMagic[8] = {'L', 'B', 'C', 'O', 'O', 'R', 'D', '1'};

void PutU64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}
uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}
void PutFloats(std::string& out, const std::vector<float>& v) {
  // fp32 little-endian (the only byte order lowband builds for, as on the wire).
  out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

constexpr CounterField kCounterFields[] = {
    {"joins", &CoordinatorCounters::joins, "Join calls accepted"},
    {"rejoins", &CoordinatorCounters::rejoins, "members that joined again under the same id"},
    {"leaves", &CoordinatorCounters::leaves, "workers that left"},
    {"expirations", &CoordinatorCounters::expirations, "members dropped for missing heartbeats"},
    {"rounds_closed", &CoordinatorCounters::rounds_closed, "rounds closed, all fragments"},
    {"rounds_closed_at_deadline", &CoordinatorCounters::rounds_closed_at_deadline,
     "rounds closed at their deadline with a quorum"},
    {"rounds_overdue", &CoordinatorCounters::rounds_overdue, "rounds past their deadline below quorum"},
    {"rounds_failed", &CoordinatorCounters::rounds_failed, "rounds whose outer update could not be computed"},
    {"contributions", &CoordinatorCounters::contributions, "contributions accepted"},
    {"duplicate_pushes", &CoordinatorCounters::duplicate_pushes, "retried pushes already applied"},
    {"late_pushes", &CoordinatorCounters::late_pushes, "pushes to closed rounds, refused"},
    {"refusals", &CoordinatorCounters::refusals, "refused calls of any kind"},
    {"sync_bytes_in", &CoordinatorCounters::sync_bytes_in, "contribution payload bytes received"},
    {"sync_bytes_out", &CoordinatorCounters::sync_bytes_out, "update payload bytes sent"},
    {"bootstrap_bytes_in", &CoordinatorCounters::bootstrap_bytes_in, "seed bytes received"},
    {"bootstrap_bytes_out", &CoordinatorCounters::bootstrap_bytes_out, "bootstrap bytes sent"},
};

}  // namespace

std::span<const CounterField> CounterFields() { return kCounterFields; }

nlohmann::json CountersToJson(const CoordinatorCounters& c) {
  nlohmann::json j = nlohmann::json::object();
  for (const CounterField& f : kCounterFields) j[f.name] = c.*f.field;
  return j;
}

namespace {

// A header integer of type T. nlohmann's get<> converts a float (2.5, 3.8e19) to an integer type
// without a check, and out of range that is undefined behaviour; a checkpoint is input, so floats,
// negatives where T is unsigned, and values out of T's range are refused (the decoder turns the
// exception into DATA_LOSS).
template <typename T>
T Int(const nlohmann::json& j) {
  if (!j.is_number_integer()) throw std::invalid_argument("expected an integer, got " + j.dump());
  if (j.is_number_unsigned()) {
    const uint64_t v = j.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
      throw std::out_of_range("integer " + j.dump() + " out of range");
    }
    return static_cast<T>(v);
  }
  const int64_t v = j.get<int64_t>();
  if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
      (v > 0 && static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<T>::max()))) {
    throw std::out_of_range("integer " + j.dump() + " out of range");
  }
  return static_cast<T>(v);
}

template <typename T>
std::vector<T> Ints(const nlohmann::json& j) {
  if (!j.is_array()) throw std::invalid_argument("expected an array of integers, got " + j.dump());
  std::vector<T> out;
  out.reserve(j.size());
  for (const auto& v : j) out.push_back(Int<T>(v));
  return out;
}

CoordinatorCounters CountersFrom(const nlohmann::json& j) {
  CoordinatorCounters c;
  for (const CounterField& f : kCounterFields) c.*f.field = Int<uint64_t>(j.at(f.name));
  return c;
}

// Hands out consecutive byte ranges of the blob section, refusing to run past its end.
class BlobReader {
 public:
  explicit BlobReader(std::string_view blobs) : blobs_(blobs) {}
  Status Floats(uint64_t count, std::vector<float>* out, const std::string& what) {
    if (count > (blobs_.size() - at_) / sizeof(float)) return Truncated(what);
    out->resize(count);
    std::memcpy(out->data(), blobs_.data() + at_, count * sizeof(float));
    at_ += count * sizeof(float);
    return Status::Ok();
  }
  Status Raw(uint64_t count, std::vector<uint8_t>* out, const std::string& what) {
    if (count > blobs_.size() - at_) return Truncated(what);
    out->assign(blobs_.begin() + static_cast<std::ptrdiff_t>(at_),
                blobs_.begin() + static_cast<std::ptrdiff_t>(at_ + count));
    at_ += count;
    return Status::Ok();
  }
  bool done() const { return at_ == blobs_.size(); }

 private:
  static Status Truncated(const std::string& what) {
    return DataLoss("coordinator checkpoint: the data section ends before " + what);
  }
  std::string_view blobs_;
  uint64_t at_ = 0;
};

}  // namespace

std::string EncodeCheckpoint(const CoordinatorSnapshot& s) {
  nlohmann::json h;
  h["run_id"] = s.run_id;
  h["sequence"] = s.sequence;
  h["seeded"] = s.seeded;
  h["seed_crc"] = s.seed_crc;
  h["next_worker_id"] = s.next_worker_id;
  h["layout"] = {{"num_fragments", s.layout.num_fragments},
                 {"nonblock", comm::NonBlockPolicyName(s.layout.nonblock)}};
  if (s.signature) {
    nlohmann::json tensors = nlohmann::json::array();
    for (const comm::TensorInfo& t : s.signature->tensors) {
      tensors.push_back({{"name", t.name}, {"shape", t.shape}, {"dtype", t.dtype}});
    }
    h["signature"] = {{"tensors", std::move(tensors)}, {"hash", s.signature->hash}};
  }
  h["counters"] = CountersToJson(s.counters);
  nlohmann::json members = nlohmann::json::array();
  for (const MemberSnapshot& m : s.members) {
    members.push_back({{"id", m.id},
                       {"session", m.session},
                       {"nonce", m.nonce},
                       {"name", m.name},
                       {"host", m.host},
                       {"live", m.live},
                       {"ready", m.ready},
                       {"expected_from", m.expected_from}});
  }
  h["members"] = std::move(members);
  nlohmann::json fragments = nlohmann::json::array();
  size_t blob_bytes = 0;
  for (const FragmentSnapshot& f : s.fragments) {
    nlohmann::json closed = nlohmann::json::array();
    for (const ClosedRoundSnapshot& c : f.closed) {
      closed.push_back({{"round", c.round},
                        {"contributions", c.contributions},
                        {"contributors", c.contributors},
                        {"payload_bytes", c.payload.size()},
                        {"failure", c.failure}});
      blob_bytes += c.payload.size();
    }
    fragments.push_back(
        {{"open_round", f.open_round}, {"elements", f.global.size()}, {"closed", std::move(closed)}});
    blob_bytes += (f.global.size() + f.momentum.size()) * sizeof(float);
  }
  h["fragments"] = std::move(fragments);
  const std::string header = h.dump();
  // The blobs go straight after the header (one copy of the state, not two).
  std::string out;
  out.reserve(sizeof(kMagic) + 8 + header.size() + blob_bytes + 4);
  out.append(kMagic, sizeof(kMagic));
  PutU64(out, header.size());
  out += header;
  for (const FragmentSnapshot& f : s.fragments) {
    PutFloats(out, f.global);
    PutFloats(out, f.momentum);
    for (const ClosedRoundSnapshot& c : f.closed) {
      out.append(reinterpret_cast<const char*>(c.payload.data()), c.payload.size());
    }
  }
  PutU32(out, quant::Crc32c(Bytes(out)));
  return out;
}

StatusOr<CoordinatorSnapshot> DecodeCheckpoint(std::string_view bytes) {
  if (bytes.size() < sizeof(kMagic) + 8 + 4 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return DataLoss("not a lowband coordinator checkpoint (no LBCOORD1 magic, or shorter than its framing)");
  }
  const std::string_view body = bytes.substr(0, bytes.size() - 4);
  const uint32_t stored = GetU32(bytes.data() + body.size());
  if (quant::Crc32c(Bytes(body)) != stored) {
    return DataLoss("coordinator checkpoint: CRC32C mismatch (the file is truncated or corrupted)");
  }
  const uint64_t header_len = GetU64(bytes.data() + sizeof(kMagic));
  if (header_len > body.size() - sizeof(kMagic) - 8) {
    return DataLoss(fmt::format("coordinator checkpoint: header of {} bytes runs past the end", header_len));
  }
  const std::string_view header = body.substr(sizeof(kMagic) + 8, header_len);
  BlobReader blobs(body.substr(sizeof(kMagic) + 8 + header_len));
  const auto h = nlohmann::json::parse(header.begin(), header.end(), nullptr, false);
  if (h.is_discarded() || !h.is_object())
    return DataLoss("coordinator checkpoint: the header is not a JSON object");
  CoordinatorSnapshot s;
  try {
    s.run_id = h.at("run_id").get<std::string>();
    s.sequence = Int<uint64_t>(h.at("sequence"));
    s.seeded = h.at("seeded").get<bool>();
    s.seed_crc = Int<uint32_t>(h.at("seed_crc"));
    s.next_worker_id = Int<uint64_t>(h.at("next_worker_id"));
    s.layout.num_fragments = Int<uint32_t>(h.at("layout").at("num_fragments"));
    LOWBAND_ASSIGN_OR_RETURN(s.layout.nonblock,
                             comm::ParseNonBlockPolicy(h.at("layout").at("nonblock").get<std::string>()));
    if (h.contains("signature")) {
      comm::ModelSignature sig;
      for (const auto& t : h.at("signature").at("tensors")) {
        sig.tensors.push_back({t.at("name").get<std::string>(), Ints<int64_t>(t.at("shape")),
                               t.at("dtype").get<std::string>()});
      }
      sig.hash = Int<uint64_t>(h.at("signature").at("hash"));
      LOWBAND_RETURN_IF_ERROR(comm::ValidateSignature(sig).WithContext("coordinator checkpoint: signature"));
      s.signature = std::move(sig);
    }
    s.counters = CountersFrom(h.at("counters"));
    for (const auto& m : h.at("members")) {
      s.members.push_back({Int<uint64_t>(m.at("id")), Int<uint64_t>(m.at("session")),
                           Int<uint64_t>(m.at("nonce")), m.at("name").get<std::string>(),
                           m.at("host").get<std::string>(), m.at("live").get<bool>(),
                           m.at("ready").get<bool>(), Ints<uint64_t>(m.at("expected_from"))});
    }
    uint32_t p = 0;
    for (const auto& f : h.at("fragments")) {
      FragmentSnapshot fs;
      fs.open_round = Int<uint64_t>(f.at("open_round"));
      const uint64_t elements = Int<uint64_t>(f.at("elements"));
      LOWBAND_RETURN_IF_ERROR(
          blobs.Floats(elements, &fs.global, fmt::format("fragment {}'s global state", p)));
      LOWBAND_RETURN_IF_ERROR(blobs.Floats(elements, &fs.momentum, fmt::format("fragment {}'s momentum", p)));
      for (const auto& c : f.at("closed")) {
        ClosedRoundSnapshot r;
        r.round = Int<uint64_t>(c.at("round"));
        r.contributions = Int<uint32_t>(c.at("contributions"));
        r.contributors = Ints<uint64_t>(c.at("contributors"));
        r.failure = c.at("failure").get<std::string>();
        LOWBAND_RETURN_IF_ERROR(blobs.Raw(Int<uint64_t>(c.at("payload_bytes")), &r.payload,
                                          fmt::format("fragment {}'s update of round {}", p, r.round)));
        fs.closed.push_back(std::move(r));
      }
      s.fragments.push_back(std::move(fs));
      ++p;
    }
  } catch (const std::exception& e) {
    return DataLoss(std::string("coordinator checkpoint: the header is incomplete: ") + e.what());
  }
  if (!blobs.done())
    return DataLoss("coordinator checkpoint: bytes left over after the data its header describes");
  return s;
}

CheckpointStore::CheckpointStore(std::filesystem::path dir)
    : dir_(std::move(dir)), path_(dir_ / "coordinator.ckpt") {}

Status CheckpointStore::Write(const CoordinatorSnapshot& snapshot) {
  std::lock_guard<std::mutex> lock(mu_);
  if (have_written_ && snapshot.sequence < written_sequence_) return Status::Ok();
  const auto t0 = std::chrono::steady_clock::now();
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec)
    return Internal(fmt::format("cannot create checkpoint directory {}: {}", dir_.string(), ec.message()));
  LOWBAND_RETURN_IF_ERROR(comm::WriteFileAtomically(path_, EncodeCheckpoint(snapshot), 0600)
                              .WithContext("writing the coordinator checkpoint"));
  have_written_ = true;
  written_sequence_ = snapshot.sequence;
  ++writes_;
  last_write_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  spdlog::debug("coordinator: checkpoint at {} closed rounds written to {} in {:.3f} s", snapshot.sequence,
                path_.string(), last_write_seconds_);
  return Status::Ok();
}

StatusOr<std::optional<CoordinatorSnapshot>> CheckpointStore::Load() const {
  std::error_code ec;
  if (!std::filesystem::exists(path_, ec)) return std::optional<CoordinatorSnapshot>();
  LOWBAND_ASSIGN_OR_RETURN(const std::string bytes, comm::ReadWholeFile(path_));
  StatusOr<CoordinatorSnapshot> s = DecodeCheckpoint(bytes);
  if (!s.ok()) {
    return s.status().WithContext(
        fmt::format("{}: move the file away to start the run afresh", path_.string()));
  }
  return std::optional<CoordinatorSnapshot>(std::move(s).value());
}

uint64_t CheckpointStore::writes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return writes_;
}

double CheckpointStore::last_write_seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_write_seconds_;
}

}  // namespace lowband::coordinator
