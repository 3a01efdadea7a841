#include "worker/ddp.h"

#include <cstdlib>

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "worker/torch_runtime.h"

namespace lowband::worker {

struct GradientAllReducer::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  std::chrono::milliseconds timeout;
  int size = 1;
  torch::Tensor flat;  // reused gradient buffer
};

GradientAllReducer::GradientAllReducer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GradientAllReducer::~GradientAllReducer() = default;

StatusOr<std::unique_ptr<GradientAllReducer>> GradientAllReducer::Create(const std::string& store_address,
                                                                         int rank, int size,
                                                                         std::chrono::milliseconds timeout) {
  const auto colon = store_address.rfind(':');
  if (colon == std::string::npos) {
    return InvalidArgument("ddp store address must be host:port, got '" + store_address + "'");
  }
  const std::string host = store_address.substr(0, colon);
  int port = 0;
  try {
    port = std::stoi(store_address.substr(colon + 1));
  } catch (const std::exception&) {
    port = -1;
  }
  if (port <= 0 || port > 65535)
    return InvalidArgument("ddp store port is not a port: '" + store_address + "'");
  if (rank < 0 || rank >= size)
    return InvalidArgument(fmt::format("rank {} is outside 0..{}", rank, size - 1));
  auto impl = std::make_unique<Impl>();
  impl->timeout = timeout;
  impl->size = size;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = static_cast<size_t>(size);
    so.waitWorkers = true;
    so.timeout = timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(host, so);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    // Like torchrun: GLOO_SOCKET_IFNAME names the interface Gloo binds to (deploy/netns-lab.sh sets it,
    // each namespace reaching the others through its own eth0); otherwise the store's host, which is
    // right when every rank runs on one machine.
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    opts->devices.push_back(ifname != nullptr && *ifname != '\0'
                                ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                                : c10d::ProcessGroupGloo::createDeviceForHostname(host));
    impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, rank, size, opts);
  } catch (const std::exception& e) {
    return Unavailable(
        fmt::format("ddp rendezvous at {} (rank {} of {}) failed: {}; is rank 0 up and the port free?",
                    store_address, rank, size, e.what()));
  }
  spdlog::info("ddp: rank {} of {} joined the Gloo process group at {}", rank, size, store_address);
  return std::unique_ptr<GradientAllReducer>(new GradientAllReducer(std::move(impl)));
}

Status GradientAllReducer::BroadcastParameters(Model& model) {
  try {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : model.NamedParameters()) {
      std::vector<at::Tensor> t{p.data()};
      impl_->group->broadcast(t)->wait(impl_->timeout);
      broadcast_bytes_ += static_cast<uint64_t>(p.numel()) * 4;
    }
  } catch (const std::exception& e) {
    return Unavailable(std::string("ddp parameter broadcast failed (a rank died or timed out): ") + e.what());
  }
  return Status::Ok();
}

Status GradientAllReducer::AllReduceMean(Model& model) {
  try {
    torch::NoGradGuard no_grad;
    auto params = model.NamedParameters();
    std::vector<torch::Tensor> grads;
    int64_t total = 0;
    for (auto& [name, p] : params) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.grad());
      total += p.numel();
    }
    if (!impl_->flat.defined() || impl_->flat.numel() != total)
      impl_->flat = torch::empty({total}, torch::kFloat32);
    int64_t off = 0;
    for (auto& g : grads) {
      impl_->flat.narrow(0, off, g.numel()).copy_(g.reshape(-1));
      off += g.numel();
    }
    std::vector<at::Tensor> t{impl_->flat};
    impl_->group->allreduce(t)->wait(impl_->timeout);
    impl_->flat.div_(impl_->size);
    off = 0;
    for (auto& g : grads) {
      g.copy_(impl_->flat.narrow(0, off, g.numel()).view_as(g));
      off += g.numel();
    }
    const uint64_t m = static_cast<uint64_t>(impl_->size);
    bytes_sent_ += m > 1 ? 2 * (m - 1) * static_cast<uint64_t>(total) * 4 / m : 0;
  } catch (const std::exception& e) {
    return Unavailable(std::string("ddp gradient all-reduce failed (a rank died or timed out): ") + e.what());
  }
  return Status::Ok();
}

}  // namespace lowband::worker
