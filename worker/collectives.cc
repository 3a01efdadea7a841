#include "worker/collectives.h"

#include <cstdlib>

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "worker/torch_runtime.h"

namespace lowband::worker {

namespace {

// An exception's message, without the stack trace LibTorch appends to its own.
std::string Message(const std::exception& e) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&e);
  return torch_error ? TorchErrorMessage(*torch_error) : std::string(e.what());
}

}  // namespace

struct DataParallelGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  std::chrono::milliseconds timeout;
  std::string name;
  torch::Tensor flat;  // reused gradient buffer
};

DataParallelGroup::DataParallelGroup(std::unique_ptr<Impl> impl, int rank, int size)
    : impl_(std::move(impl)), rank_(rank), size_(size) {}
DataParallelGroup::~DataParallelGroup() = default;

StatusOr<std::unique_ptr<DataParallelGroup>> DataParallelGroup::Create(const GroupOptions& o) {
  const auto colon = o.store_address.rfind(':');
  if (colon == std::string::npos) {
    return InvalidArgument(
        fmt::format("{} store address must be host:port, got '{}'", o.name, o.store_address));
  }
  const std::string host = o.store_address.substr(0, colon);
  int port = 0;
  try {
    port = std::stoi(o.store_address.substr(colon + 1));
  } catch (const std::exception&) {
    port = -1;
  }
  if (port <= 0 || port > 65535)
    return InvalidArgument(fmt::format("{} store port is not a port: '{}'", o.name, o.store_address));
  if (o.size < 1 || o.rank < 0 || o.rank >= o.size)
    return InvalidArgument(fmt::format("{}: rank {} is outside 0..{}", o.name, o.rank, o.size - 1));
  auto impl = std::make_unique<Impl>();
  impl->timeout = o.timeout;
  const auto rendezvous = o.rendezvous_timeout.count() > 0 ? o.rendezvous_timeout : o.timeout;
  impl->name = o.name;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = o.rank == 0;
    so.numWorkers = static_cast<size_t>(o.size);
    so.waitWorkers = true;
    so.timeout = rendezvous;
    impl->store = c10::make_intrusive<c10d::TCPStore>(host, so);
    // Gloo's own timeout bounds every collective (Work::wait does not) and the connection of the ranks
    // to each other, which starts once all have reached the store.
    auto opts = c10d::ProcessGroupGloo::Options::create(o.timeout);
    // Like torchrun: GLOO_SOCKET_IFNAME names the interface Gloo binds to (deploy/netns-lab.sh sets it,
    // each namespace reaching the others through its own eth0); otherwise the store's host, which is
    // right when every rank runs on one machine.
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    opts->devices.push_back(ifname != nullptr && *ifname != '\0'
                                ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                                : c10d::ProcessGroupGloo::createDeviceForHostname(host));
    impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, o.rank, o.size, opts);
  } catch (const std::exception& e) {
    return Unavailable(fmt::format(
        "{} rendezvous at {} (rank {} of {}) failed within {} s: {}; is rank 0 up, the port free, and "
        "every rank started with the same size?",
        o.name, o.store_address, o.rank, o.size, rendezvous.count() / 1000, Message(e)));
  }
  spdlog::info("{}: rank {} of {} joined the Gloo process group at {}", o.name, o.rank, o.size,
               o.store_address);
  return std::unique_ptr<DataParallelGroup>(new DataParallelGroup(std::move(impl), o.rank, o.size));
}

Status DataParallelGroup::Failed(const char* what, const std::exception& e) const {
  return Unavailable(fmt::format("{} {} failed on rank {} of {} (a rank died or timed out after {} s): {}",
                                 impl_->name, what, rank_, size_, impl_->timeout.count() / 1000, Message(e)));
}

Status DataParallelGroup::BroadcastParameters(Model& model) {
  try {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : model.NamedParameters()) {
      std::vector<at::Tensor> t{p.data()};
      impl_->group->broadcast(t)->wait(impl_->timeout);
      broadcast_bytes_ += static_cast<uint64_t>(p.numel()) * 4;
    }
  } catch (const std::exception& e) {
    return Failed("parameter broadcast", e);
  }
  return Status::Ok();
}

Status DataParallelGroup::AllReduceMean(Model& model) {
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
    impl_->flat.div_(size_);
    off = 0;
    for (auto& g : grads) {
      g.copy_(impl_->flat.narrow(0, off, g.numel()).view_as(g));
      off += g.numel();
    }
    const uint64_t m = static_cast<uint64_t>(size_);
    allreduce_bytes_ += m > 1 ? 2 * (m - 1) * static_cast<uint64_t>(total) * 4 / m : 0;
  } catch (const std::exception& e) {
    return Failed("gradient all-reduce", e);
  }
  return Status::Ok();
}

namespace {

// Broadcasts rank 0's element count, resizes `v` to it, then broadcasts the elements.
template <typename T>
void BroadcastVector(c10d::ProcessGroupGloo& group, std::chrono::milliseconds timeout, std::vector<T>* v,
                     torch::Dtype dtype) {
  std::vector<at::Tensor> n{torch::tensor({static_cast<int64_t>(v->size())}, torch::kInt64)};
  group.broadcast(n)->wait(timeout);
  v->resize(static_cast<size_t>(n[0].item<int64_t>()));
  if (v->empty()) return;
  std::vector<at::Tensor> t{torch::from_blob(v->data(), {static_cast<int64_t>(v->size())}, dtype)};
  group.broadcast(t)->wait(timeout);
}

}  // namespace

Status DataParallelGroup::Broadcast(std::vector<float>* values) {
  try {
    BroadcastVector(*impl_->group, impl_->timeout, values, torch::kFloat32);
    broadcast_bytes_ += values->size() * sizeof(float);
  } catch (const std::exception& e) {
    return Failed("broadcast", e);
  }
  return Status::Ok();
}

Status DataParallelGroup::Broadcast(std::vector<uint8_t>* bytes) {
  try {
    BroadcastVector(*impl_->group, impl_->timeout, bytes, torch::kUInt8);
    broadcast_bytes_ += bytes->size();
  } catch (const std::exception& e) {
    return Failed("broadcast", e);
  }
  return Status::Ok();
}

Status DataParallelGroup::Broadcast(int64_t* value) {
  try {
    std::vector<at::Tensor> t{torch::tensor({*value}, torch::kInt64)};
    impl_->group->broadcast(t)->wait(impl_->timeout);
    *value = t[0].item<int64_t>();
    broadcast_bytes_ += sizeof(int64_t);
  } catch (const std::exception& e) {
    return Failed("broadcast", e);
  }
  return Status::Ok();
}

Status DataParallelGroup::CheckIdentical(uint64_t digest, const std::string& what) {
  std::vector<int64_t> all(static_cast<size_t>(size_));
  try {
    std::vector<at::Tensor> in{torch::tensor({static_cast<int64_t>(digest)}, torch::kInt64)};
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < size_; ++r) out[0].push_back(torch::empty({1}, torch::kInt64));
    impl_->group->allgather(out, in)->wait(impl_->timeout);
    for (int r = 0; r < size_; ++r)
      all[static_cast<size_t>(r)] = out[0][static_cast<size_t>(r)].item<int64_t>();
  } catch (const std::exception& e) {
    return Failed("consistency check", e);
  }
  std::vector<int> differ;
  for (int r = 1; r < size_; ++r) {
    if (all[static_cast<size_t>(r)] != all[0]) differ.push_back(r);
  }
  if (differ.empty()) return Status::Ok();
  return DataLoss(
      fmt::format("{}: {} of rank(s) {} differ from rank 0's; the ranks have diverged (a "
                  "nondeterministic kernel, or ranks built or configured differently)",
                  impl_->name, what, fmt::join(differ, ", ")));
}

}  // namespace lowband::worker
