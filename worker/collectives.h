// DataParallelGroup: the ranks that train one replica data-parallel, through LibTorch's own c10d
// process groups over a c10d TCPStore rendezvous (rank 0 hosts the store). It carries the ddp
// baseline (every worker is a rank) and a site (a Streaming DiLoCo worker made of R ranks, whose
// rank 0 alone talks to the coordinator).
//
// Backends. ProcessGroupGloo carries every collective of a CPU model, and always the broadcasts of
// host data (values, bytes, integers) and CheckIdentical. When lowband is built against a CUDA
// LibTorch with NCCL (LOWBAND_TORCH_CUDA) and GroupOptions::device is a CUDA device, the group also
// creates a ProcessGroupNCCL, and AllReduceMean and BroadcastParameters of parameters on that device
// run through it on the device tensors, never copying them to the host. The two groups share the
// TCPStore under the key prefixes "gloo/" and "nccl/". Without LOWBAND_TORCH_CUDA (or for a CPU
// model) Gloo carries everything, staging CUDA gradients through the host.
//
// AllReduceMean flattens every parameter's gradient into one fp32 buffer (on the host for Gloo, on the
// device for NCCL), all-reduces it (sum) and divides by the group size, so every rank steps with the
// same mean gradient. BroadcastParameters gives every rank rank 0's parameters (NCCL: one flat device
// buffer; Gloo: tensor by tensor). The other broadcasts carry rank 0's values or bytes to the others;
// CheckIdentical compares a digest across ranks.
//
// Timeouts: every collective has one (GroupOptions::timeout, also set as Gloo's and NCCL's own): a
// dead rank makes the others fail with a clear error ("site 2 gradient all-reduce failed on rank 1 of
// 2 ...") instead of hanging. NCCL: unless TORCH_NCCL_ASYNC_ERROR_HANDLING is set, the group sets it to
// 2 (abort the communicators on an error, but leave reporting it to the caller) so that a failure
// comes back as that Status rather than LibTorch's watchdog aborting the process.
//
// Which GPU a rank uses (SelectRankDevice, called before the model is built): the model config's
// device when it names one ("cuda:3"); for plain "cuda", cuda:(local rank mod the number of visible
// GPUs). The local rank is $LOCAL_RANK when set (torchrun sets it; so should any launcher that starts
// several processes per multi-GPU machine), else the training engine's fallback: worker index x ranks
// per worker + rank, the process's index among a run's processes when `lowband launch` starts them all
// on one machine. With CUDA_VISIBLE_DEVICES giving each process one GPU, every process gets cuda:0, its
// own. The chosen device becomes the process's current CUDA device (so that LibTorch and NCCL create
// their CUDA context there only).
//
// Byte accounting: the all-reduce is counted as a ring all-reduce (Gloo's default for CPU tensors;
// NCCL may choose another algorithm, the count stays the ring's): each rank sends and receives
// 2 (M-1)/M x 4 bytes per parameter per step; a broadcast counts its payload once on every rank.
//
// Intra-site collectives live here rather than in comm/ because they need LibTorch, and comm/ is
// torch-free (the coordinator builds without LibTorch).
// Thread safety: one thread calls the collectives. Lifetimes: owns the store and the process groups;
// destroying the group aborts NCCL's communicators (every collective has completed or failed by then).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "quant/status.h"
#include "worker/model.h"

namespace lowband::worker {

struct GroupOptions {
  // c10d TCPStore "host:port"; rank 0 listens there, the others connect.
  std::string store_address;
  int rank = 0;
  int size = 1;
  // Every collective gives up after this long.
  std::chrono::milliseconds timeout{300'000};
  // Names the group in errors and logs: "ddp", "site 2".
  std::string name = "ddp";
  // Reaching the store (every rank started and connected to it) gives up after this long; 0:
  // `timeout`. Ranks may start far apart, so it is often longer than a collective's.
  std::chrono::milliseconds rendezvous_timeout{0};
  // Where the model's parameters live ("cpu", "cuda:N"; see SelectRankDevice). A CUDA device makes a
  // CUDA build (LOWBAND_TORCH_CUDA) run the parameter collectives through NCCL on it; every rank of a
  // group must name the same kind of device.
  std::string device = "cpu";
  // The store is hosted by someone else, as torchrun's agent hosts it (TORCHELASTIC_USE_AGENT_STORE):
  // every rank, rank 0 included, connects to it as a client.
  bool external_store = false;
  // Keys go under this prefix ("" for none): torchrun's workers use "/worker/attempt_<restart count>",
  // so that a restarted group never reads the keys of the attempt before it.
  std::string store_prefix = "";
};

// This process's local rank: $LOCAL_RANK when set to a number >= 0, otherwise `fallback`.
int LocalRank(int fallback);

// The device this rank's model lives on (see the file comment): `configured` when it is "cpu" or names
// a CUDA device ("cuda:N"); plain "cuda" becomes "cuda:<local_rank mod visible GPUs>". A CUDA device
// becomes the process's current device when built with LOWBAND_TORCH_CUDA. FailedPrecondition when
// CUDA is asked for and no GPU is visible; InvalidArgument for a malformed device.
[[nodiscard]] StatusOr<std::string> SelectRankDevice(const std::string& configured, int local_rank);

class DataParallelGroup {
 public:
  static StatusOr<std::unique_ptr<DataParallelGroup>> Create(const GroupOptions& options);
  ~DataParallelGroup();

  int rank() const { return rank_; }
  int size() const { return size_; }
  // The backend of the parameter collectives (AllReduceMean, BroadcastParameters) for a model on
  // GroupOptions::device: "nccl" or "gloo".
  const char* parameter_backend() const;

  // Every rank's parameters become rank 0's.
  [[nodiscard]] Status BroadcastParameters(Model& model);
  // Every parameter's .grad() becomes the mean over ranks.
  [[nodiscard]] Status AllReduceMean(Model& model);
  // Rank 0's values (or bytes) replace every other rank's; the others are resized to fit.
  [[nodiscard]] Status Broadcast(std::vector<float>* values);
  [[nodiscard]] Status Broadcast(std::vector<uint8_t>* bytes);
  // Rank 0's value replaces every other rank's: one collective (the vectors above take two).
  [[nodiscard]] Status Broadcast(int64_t* value);
  // Fails on every rank (DataLoss naming the ranks that differ from rank 0) unless every rank passes
  // the same digest; `what` names the compared state in the error.
  [[nodiscard]] Status CheckIdentical(uint64_t digest, const std::string& what);

  // Bytes of all-reduce traffic (ring accounting, each way) and of broadcasts.
  uint64_t allreduce_bytes() const { return allreduce_bytes_; }
  uint64_t broadcast_bytes() const { return broadcast_bytes_; }

 private:
  struct Impl;
  DataParallelGroup(std::unique_ptr<Impl> impl, int rank, int size);
  Status Failed(const char* what, const std::exception& e) const;
  std::unique_ptr<Impl> impl_;
  int rank_;
  int size_;
  uint64_t allreduce_bytes_ = 0;
  uint64_t broadcast_bytes_ = 0;
};

}  // namespace lowband::worker
