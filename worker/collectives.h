// DataParallelGroup: the ranks that train one replica data-parallel, through LibTorch's own c10d
// ProcessGroupGloo over a c10d TCPStore rendezvous (rank 0 hosts the store). It carries the ddp
// baseline (every worker is a rank) and a site (a Streaming DiLoCo worker made of R ranks, whose
// rank 0 alone talks to the coordinator).
//
// AllReduceMean flattens every parameter's gradient into one fp32 buffer, all-reduces it (sum) and
// divides by the group size, so every rank steps with the same mean gradient. The broadcasts carry
// rank 0's parameters, values or bytes to the others; CheckIdentical compares a digest across ranks.
// Every collective has a timeout: a dead rank makes the others fail with a clear error instead of
// hanging. Byte accounting: the all-reduce is counted as a ring all-reduce (Gloo's default for CPU
// tensors): each rank sends and receives 2 (M-1)/M x 4 bytes per parameter per step; a broadcast
// counts its payload once on every rank.
//
// Intra-site collectives live here rather than in comm/ because they need LibTorch, and comm/ is
// torch-free (the coordinator builds without LibTorch).
// Thread safety: one thread calls the collectives. Lifetimes: owns the store and the process group.
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
};

class DataParallelGroup {
 public:
  static StatusOr<std::unique_ptr<DataParallelGroup>> Create(const GroupOptions& options);
  ~DataParallelGroup();

  int rank() const { return rank_; }
  int size() const { return size_; }

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
