// GradientAllReducer: the data-parallel baseline's communication, LibTorch's own c10d
// ProcessGroupGloo over a c10d TCPStore rendezvous (rank 0 hosts the store).
//
// AllReduceMean flattens every parameter's gradient into one fp32 buffer, all-reduces it (sum) and
// divides by the world size, so every rank steps with the same mean gradient. Every collective has
// a timeout: a dead rank makes the others fail with a clear error instead of hanging.
// Byte accounting is the ring all-reduce's (Gloo's default for CPU tensors): each rank sends and
// receives 2 (M-1)/M x 4 bytes per parameter per step.
// Thread safety: one training thread. Lifetimes: owns the store and the process group.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "quant/status.h"
#include "worker/model.h"

namespace lowband::worker {

class GradientAllReducer {
 public:
  // store_address "host:port"; rank 0 listens there, the others connect.
  static StatusOr<std::unique_ptr<GradientAllReducer>> Create(const std::string& store_address, int rank,
                                                              int size, std::chrono::milliseconds timeout);
  ~GradientAllReducer();

  // Every rank's parameters become rank 0's.
  Status BroadcastParameters(Model& model);
  // Every parameter's .grad() becomes the mean over ranks.
  Status AllReduceMean(Model& model);

  uint64_t bytes_sent() const { return bytes_sent_; }
  uint64_t bytes_received() const { return bytes_sent_; }  // a ring receives what it sends
  uint64_t broadcast_bytes() const { return broadcast_bytes_; }

 private:
  struct Impl;
  explicit GradientAllReducer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  uint64_t bytes_sent_ = 0;
  uint64_t broadcast_bytes_ = 0;
};

}  // namespace lowband::worker
