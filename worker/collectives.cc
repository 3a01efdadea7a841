#include "worker/collectives.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <optional>

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#ifdef LOWBAND_TORCH_CUDA
#ifndef USE_C10D_NCCL
#error "LOWBAND_TORCH_CUDA needs a LibTorch built with NCCL (its torch_cuda target defines USE_C10D_NCCL)"
#endif
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "worker/torch_compat.h"
#include "worker/torch_runtime.h"

namespace lowband::worker {

namespace {

// An exception's message, without the stack trace LibTorch appends to its own.
std::string Message(const std::exception& e) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&e);
  return torch_error ? TorchErrorMessage(*torch_error) : std::string(e.what());
}

// Copies `tensors` one after the other into the 1-d `flat` (any devices; dtype converted).
void Flatten(const std::vector<torch::Tensor>& tensors, torch::Tensor& flat) {
  int64_t off = 0;
  for (const auto& t : tensors) {
    flat.narrow(0, off, t.numel()).copy_(t.reshape(-1));
    off += t.numel();
  }
}

// The inverse of Flatten: each tensor takes its slice of `flat`, in place.
void Unflatten(const torch::Tensor& flat, std::vector<torch::Tensor>& tensors) {
  int64_t off = 0;
  for (auto& t : tensors) {
    t.copy_(flat.narrow(0, off, t.numel()).view_as(t));
    off += t.numel();
  }
}

}  // namespace

int LocalRank(int fallback) {
  const char* value = std::getenv("LOCAL_RANK");
  if (value == nullptr || *value == '\0') return fallback;
  char* end = nullptr;
  const long rank = std::strtol(value, &end, 10);
  if (*end != '\0' || rank < 0 || rank > INT_MAX) {
    spdlog::warn("LOCAL_RANK='{}' is not a local rank; using {}", value, fallback);
    return fallback;
  }
  return static_cast<int>(rank);
}

StatusOr<std::string> SelectRankDevice(const std::string& configured, int local_rank) {
  std::optional<torch::Device> parsed;
  try {
    parsed.emplace(configured);
  } catch (const c10::Error&) {
  }
  if (!parsed || !(parsed->is_cpu() || parsed->is_cuda()))
    return InvalidArgument("device must be \"cpu\", \"cuda\" or \"cuda:N\", got \"" + configured + "\"");
  if (parsed->is_cpu()) return configured;
  return GuardTorch("selecting the CUDA device", [&]() -> StatusOr<std::string> {
    const int visible = compat::CudaDeviceCount();
    if (visible == 0) {
      return FailedPrecondition("device \"" + configured +
                                "\" asks for CUDA, but this LibTorch sees no CUDA device (a CPU build, "
                                "no driver, or CUDA_VISIBLE_DEVICES empty); use \"cpu\"");
    }
    torch::Device device = *parsed;
    if (!device.has_index()) {
      device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(std::max(0, local_rank) % visible));
    } else if (device.index() >= visible) {
      return InvalidArgument(
          fmt::format("device \"{}\" does not exist: {} CUDA device(s) visible (cuda:0..{})", configured,
                      visible, visible - 1));
    }
#ifdef LOWBAND_TORCH_CUDA
    c10::cuda::set_device(device.index());
#endif
    return device.str();
  });
}

struct DataParallelGroup::Impl {
  ~Impl() {
#ifdef LOWBAND_TORCH_CUDA
    if (nccl) compat::AbortNcclGroup(*nccl);
#endif
  }

  // Whether the parameter collectives of `params` go through NCCL: built with it and the parameters
  // live on the device the NCCL group was made for.
  bool UsesNccl([[maybe_unused]] const std::vector<std::pair<std::string, torch::Tensor>>& params) const {
#ifdef LOWBAND_TORCH_CUDA
    return nccl && !params.empty() && params.front().second.device() == device;
#else
    return false;
#endif
  }

  // Waits for a collective of either group, within the timeout (compat::WaitFor also bounds NCCL's
  // on LibTorch 1.13).
  void Wait(const c10::intrusive_ptr<c10d::Work>& work) const { compat::WaitFor(*work, timeout); }

  // The parameter collectives, on NCCL when `on_nccl` (see UsesNccl), else on Gloo.
  void AllReduce(std::vector<at::Tensor>& tensors, [[maybe_unused]] bool on_nccl) {
#ifdef LOWBAND_TORCH_CUDA
    if (on_nccl) return Wait(nccl->allreduce(tensors));
#endif
    Wait(gloo->allreduce(tensors));
  }
  void BroadcastFromRank0(std::vector<at::Tensor>& tensors, [[maybe_unused]] bool on_nccl) {
#ifdef LOWBAND_TORCH_CUDA
    if (on_nccl) return Wait(nccl->broadcast(tensors));
#endif
    Wait(gloo->broadcast(tensors));
  }

  // Broadcasts rank 0's element count, resizes `v` to it, then broadcasts the elements (host data:
  // Gloo).
  template <typename T>
  void BroadcastVector(std::vector<T>* v, torch::Dtype dtype) {
    std::vector<at::Tensor> n{torch::tensor({static_cast<int64_t>(v->size())}, torch::kInt64)};
    BroadcastFromRank0(n, /*on_nccl=*/false);
    v->resize(static_cast<size_t>(n[0].item<int64_t>()));
    if (v->empty()) return;
    std::vector<at::Tensor> t{torch::from_blob(v->data(), {static_cast<int64_t>(v->size())}, dtype)};
    BroadcastFromRank0(t, /*on_nccl=*/false);
  }

  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#ifdef LOWBAND_TORCH_CUDA
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;  // null unless the model is on a CUDA device
#endif
  torch::Device device{torch::kCPU};
  std::chrono::milliseconds timeout;
  std::string name;
  torch::Tensor flat;  // reused parameter or gradient buffer (host for Gloo, device for NCCL)

  // Makes `flat` an fp32 buffer of `total` values on `where`, reusing it when it already is one.
  void FlatBuffer(int64_t total, const torch::Device& where) {
    if (!flat.defined() || flat.numel() != total || flat.device() != where)
      flat = torch::empty({total}, torch::TensorOptions().dtype(torch::kFloat32).device(where));
  }
};

DataParallelGroup::DataParallelGroup(std::unique_ptr<Impl> impl, int rank, int size)
    : impl_(std::move(impl)), rank_(rank), size_(size) {}
DataParallelGroup::~DataParallelGroup() = default;

const char* DataParallelGroup::parameter_backend() const {
#ifdef LOWBAND_TORCH_CUDA
  if (impl_->nccl) return "nccl";
#endif
  return "gloo";
}

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
  try {
    impl->device = torch::Device(o.device);
  } catch (const c10::Error&) {
    return InvalidArgument(
        fmt::format("{}: device must be \"cpu\" or \"cuda:N\", got \"{}\"", o.name, o.device));
  }
  impl->timeout = o.timeout;
  const auto rendezvous = o.rendezvous_timeout.count() > 0 ? o.rendezvous_timeout : o.timeout;
  impl->name = o.name;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = o.rank == 0 && !o.external_store;
    so.numWorkers = static_cast<size_t>(o.size);
    so.waitWorkers = true;  // a client counts itself in; the host waits for numWorkers
    so.timeout = rendezvous;
    impl->store = c10::make_intrusive<c10d::TCPStore>(host, so);
    if (!o.store_prefix.empty())
      impl->store = c10::make_intrusive<c10d::PrefixStore>(o.store_prefix, impl->store);
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
    impl->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("gloo", impl->store), o.rank, o.size, opts);
#ifdef LOWBAND_TORCH_CUDA
    if (impl->device.is_cuda()) {
      if (!impl->device.has_index()) impl->device = torch::Device(torch::kCUDA, c10::cuda::current_device());
      compat::SetNcclErrorHandling();
      auto nccl_opts = c10d::ProcessGroupNCCL::Options::create();
      nccl_opts->timeout = o.timeout;  // the watchdog's limit for one collective
      // The communicator itself is set up by the first collective (on impl->device).
      impl->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          c10::make_intrusive<c10d::PrefixStore>("nccl", impl->store), o.rank, o.size, nccl_opts);
    }
#endif
  } catch (const std::exception& e) {
    return Unavailable(fmt::format(
        "{} rendezvous at {} (rank {} of {}) failed within {} s: {}; is rank 0 up, the port free, and "
        "every rank started with the same size?",
        o.name, o.store_address, o.rank, o.size, rendezvous.count() / 1000, Message(e)));
  }
  auto group = std::unique_ptr<DataParallelGroup>(new DataParallelGroup(std::move(impl), o.rank, o.size));
  spdlog::info("{}: rank {} of {} joined the process group at {} (parameters on {} through {})", o.name,
               o.rank, o.size, o.store_address, group->impl_->device.str(), group->parameter_backend());
  return group;
}

Status DataParallelGroup::Failed(const char* what, const std::exception& e) const {
  return Unavailable(fmt::format("{} {} failed on rank {} of {} (a rank died or timed out after {} s): {}",
                                 impl_->name, what, rank_, size_, impl_->timeout.count() / 1000, Message(e)));
}

Status DataParallelGroup::BroadcastParameters(Model& model) {
  try {
    torch::NoGradGuard no_grad;
    auto params = model.NamedParameters();
    if (impl_->UsesNccl(params)) {
      // One flat buffer on the device: a single NCCL broadcast instead of one per tensor.
      std::vector<torch::Tensor> values;
      int64_t total = 0;
      for (auto& [name, p] : params) {
        values.push_back(p.data());
        total += p.numel();
      }
      impl_->FlatBuffer(total, impl_->device);
      Flatten(values, impl_->flat);
      std::vector<at::Tensor> t{impl_->flat};
      impl_->BroadcastFromRank0(t, /*on_nccl=*/true);
      if (rank_ != 0) Unflatten(impl_->flat, values);
      broadcast_bytes_ += static_cast<uint64_t>(total) * 4;
      return Status::Ok();
    }
    for (auto& [name, p] : params) {
      std::vector<at::Tensor> t{p.data()};
      impl_->BroadcastFromRank0(t, /*on_nccl=*/false);
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
    const bool on_nccl = impl_->UsesNccl(params);
    std::vector<torch::Tensor> grads;
    int64_t total = 0;
    for (auto& [name, p] : params) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.grad());
      total += p.numel();
    }
    // Gloo reduces on the host; NCCL on the parameters' device.
    const torch::Device where = on_nccl ? impl_->device : torch::Device(torch::kCPU);
    impl_->FlatBuffer(total, where);
    Flatten(grads, impl_->flat);
    std::vector<at::Tensor> t{impl_->flat};
    impl_->AllReduce(t, on_nccl);
    impl_->flat.div_(size_);
    Unflatten(impl_->flat, grads);
    const uint64_t m = static_cast<uint64_t>(size_);
    allreduce_bytes_ += m > 1 ? 2 * (m - 1) * static_cast<uint64_t>(total) * 4 / m : 0;
  } catch (const std::exception& e) {
    return Failed("gradient all-reduce", e);
  }
  return Status::Ok();
}

Status DataParallelGroup::Broadcast(std::vector<float>* values) {
  try {
    impl_->BroadcastVector(values, torch::kFloat32);
    broadcast_bytes_ += values->size() * sizeof(float);
  } catch (const std::exception& e) {
    return Failed("broadcast", e);
  }
  return Status::Ok();
}

Status DataParallelGroup::Broadcast(std::vector<uint8_t>* bytes) {
  try {
    impl_->BroadcastVector(bytes, torch::kUInt8);
    broadcast_bytes_ += bytes->size();
  } catch (const std::exception& e) {
    return Failed("broadcast", e);
  }
  return Status::Ok();
}

Status DataParallelGroup::Broadcast(int64_t* value) {
  try {
    std::vector<at::Tensor> t{torch::tensor({*value}, torch::kInt64)};
    impl_->BroadcastFromRank0(t, /*on_nccl=*/false);
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
    impl_->Wait(impl_->gloo->allgather(out, in));
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
