#include "worker/engine.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "comm/coordinator_client.h"
#include "comm/metrics.h"
#include "comm/outer_update.h"
#include "comm/running_mean.h"
#include "comm/schedule.h"
#include "worker/checkpoint.h"
#include "worker/collectives.h"
#include "worker/data.h"
#include "worker/exchange.h"
#include "worker/fragment_codec.h"
#include "worker/inner_optimizer.h"
#include "worker/model.h"
#include "worker/torch_runtime.h"

namespace lowband::worker {
namespace {

using comm::HumanBytes;
using comm::HumanSeconds;
using comm::MetricsLog;
using comm::RunClock;
using comm::WriteJsonFile;

StatusOr<comm::ModelSignature> SignatureOf(Model& model) {
  std::vector<comm::TensorInfo> tensors;
  for (const ParamInfo& p : Describe(model)) tensors.push_back({p.name, p.shape, p.dtype});
  return comm::MakeSignature(std::move(tensors));
}

// Seed of one stochastic-rounding message: every (worker, fragment, round) draws its own numbers.
uint64_t MessageSeed(uint64_t seed, uint64_t worker, uint32_t fragment, uint64_t round) {
  uint64_t h = seed * 0x9E3779B97F4A7C15ull;
  for (uint64_t v : {worker, static_cast<uint64_t>(fragment), round}) {
    h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  }
  return h;
}

// What every training loop shares: model, data, optimizer, clocks, metrics, evaluation, logging.
class Trainer {
 public:
  explicit Trainer(const EngineOptions& o) : o_(o) {}

  Status Setup() {
    // This rank's device: plain "cuda" picks one GPU per local rank (collectives.h); worker i's rank r
    // is process i x ranks + r of a run started on one machine.
    ModelConfig model = o_.model;
    LOWBAND_ASSIGN_OR_RETURN(
        model.device, SelectRankDevice(o_.model.device, LocalRank(o_.worker_index * o_.ranks + o_.rank)));
    LOWBAND_ASSIGN_OR_RETURN(model_, MakeModel(model, o_.seed));
    LOWBAND_ASSIGN_OR_RETURN(data_, OpenDataset(o_.data, o_.worker_index, o_.num_workers, o_.seed));
    LOWBAND_RETURN_IF_ERROR(CheckModelFitsData(o_.model, o_.data, *data_));
    // A site's ranks draw the site's batch and each trains on its slice (engine.h).
    if (o_.ranks > 1)
      LOWBAND_RETURN_IF_ERROR(data_->SetTrainBatchSize(int64_t{o_.data.batch_size} * o_.ranks));
    LOWBAND_ASSIGN_OR_RETURN(optimizer_, InnerOptimizer::Create(*model_, o_.inner));
    LOWBAND_ASSIGN_OR_RETURN(metrics_, MetricsLog::Open(o_.metrics_path));
    spdlog::info("worker {}/{}: {} model, {} parameters on {}; shard of {} {}", o_.worker_index,
                 o_.num_workers, o_.model.kind, NumParameters(*model_), model_->config().device,
                 data_->TrainSize(), data_->task() == TaskKind::kLanguageModel ? "tokens" : "examples");
    return Status::Ok();
  }

  // The next training batch: this rank's slice of the site's batch when the worker is a site.
  Batch NextBatch() {
    Batch b = data_->NextTrainBatch();
    if (o_.ranks <= 1) return b;
    const int64_t n = o_.data.batch_size, first = int64_t{o_.rank} * n;
    auto slice = [&](const torch::Tensor& t) { return t.defined() ? t.narrow(0, first, n).contiguous() : t; };
    return Batch{slice(b.inputs), slice(b.targets), slice(b.lengths)};
  }

  // One inner step; returns the loss. With a group, the gradients are all-reduced (their mean over
  // the group's ranks) between the backward pass and the optimizer step; the time that takes is
  // added to *comm_seconds.
  StatusOr<float> InnerStep(DataParallelGroup* group = nullptr, double* comm_seconds = nullptr) {
    const Batch batch = NextBatch();
    const auto t0 = RunClock::Clock::now();
    float loss = 0;
    if (group == nullptr) {
      LOWBAND_ASSIGN_OR_RETURN(loss, optimizer_->Step(*model_, batch));
      compute_s_ += RunClock::Since(t0);
    } else {
      LOWBAND_ASSIGN_OR_RETURN(loss, optimizer_->ForwardBackward(*model_, batch));
      compute_s_ += RunClock::Since(t0);
      const auto t1 = RunClock::Clock::now();
      LOWBAND_RETURN_IF_ERROR(group->AllReduceMean(*model_));
      *comm_seconds += RunClock::Since(t1);
      const auto t2 = RunClock::Clock::now();
      LOWBAND_RETURN_IF_ERROR(optimizer_->ApplyStep());
      compute_s_ += RunClock::Since(t2);
    }
    Account(batch, loss);
    return loss;
  }

  // Counts the site's tokens: every rank trained on its own slice of the site's batch.
  void Account(const Batch& batch, float loss) {
    tokens_ += model_->TokensPerBatch(batch) * o_.ranks;
    loss_sum_ += loss;
    ++loss_n_;
    last_loss_ = loss;
  }

  // Evaluates the parameters now in the model (the caller swaps the global ones in).
  StatusOr<EvalResult> EvaluateModel() {
    const auto t0 = RunClock::Clock::now();
    auto r = model_->Evaluate(data_->EvalBatches());
    eval_s_ += RunClock::Since(t0);
    return r;
  }

  void RecordEval(int64_t step, const EvalResult& r, uint64_t bytes_up, uint64_t bytes_down) {
    nlohmann::json rec = {{"event", "eval"},      {"step", step},
                          {"eval_loss", r.loss},  {"wall_seconds", clock_.Elapsed()},
                          {"bytes_up", bytes_up}, {"bytes_down", bytes_down},
                          {"tokens", tokens_}};
    if (r.accuracy) rec["eval_accuracy"] = *r.accuracy;
    metrics_.Write(rec);
    curve_.push_back({{"step", step},
                      {"eval_loss", r.loss},
                      {"wall_seconds", clock_.Elapsed()},
                      {"bytes", bytes_up + bytes_down},
                      {"tokens", tokens_}});
    final_eval_ = r;
    spdlog::info("step {:>6}  eval loss {:.4f}{}", step, r.loss,
                 r.accuracy ? fmt::format("  accuracy {:.4f}", *r.accuracy) : "");
  }

  void LogStep(int64_t step, uint64_t bytes_up, uint64_t bytes_down) {
    const double wall = clock_.Elapsed();
    const double interval = wall - last_log_wall_;
    const double tps = interval > 0 ? static_cast<double>(tokens_ - last_log_tokens_) / interval : 0.0;
    const double mean_loss = loss_n_ ? loss_sum_ / loss_n_ : 0.0;
    metrics_.Write({{"event", "step"},
                    {"step", step},
                    {"loss", mean_loss},
                    {"tokens", tokens_},
                    {"tokens_per_s", tps},
                    {"bytes_up", bytes_up},
                    {"bytes_down", bytes_down},
                    {"stall_seconds", stall_s_},
                    {"compute_seconds", compute_s_},
                    {"wall_seconds", wall},
                    {"lr", optimizer_->current_lr()}});
    const double eta =
        step > 0 ? wall / static_cast<double>(step) * static_cast<double>(o_.steps - step) : 0.0;
    spdlog::info("step {:>6}/{}  loss {:.4f}  {:.0f} tok/s  up {}  down {}  stall {:.1f}s  ETA {}", step,
                 o_.steps, mean_loss, tps, HumanBytes(static_cast<double>(bytes_up)),
                 HumanBytes(static_cast<double>(bytes_down)), stall_s_, HumanSeconds(eta));
    last_log_wall_ = wall;
    last_log_tokens_ = tokens_;
    loss_sum_ = 0;
    loss_n_ = 0;
  }

  nlohmann::json Result(const std::string& algo, int64_t steps_done) const {
    const double wall = clock_.Elapsed();
    const double busy = wall - eval_s_;  // evaluation is bookkeeping, not training
    return {
        {"algo", algo},
        {"worker", o_.worker_index},
        {"workers", o_.num_workers},
        {"steps", steps_done},
        {"tokens", tokens_},
        {"wall_seconds", wall},
        {"train_wall_seconds", busy},
        {"compute_seconds", compute_s_},
        {"stall_seconds", stall_s_},
        {"eval_seconds", eval_s_},
        {"setup_seconds", setup_s_},
        {"compute_utilization", busy > 0 ? compute_s_ / busy : 0.0},
        {"eval_curve", curve_},
        {"final_eval_loss", final_eval_ ? nlohmann::json(final_eval_->loss) : nlohmann::json(nullptr)},
        {"final_eval_accuracy", final_eval_ && final_eval_->accuracy ? nlohmann::json(*final_eval_->accuracy)
                                                                     : nlohmann::json(nullptr)},
        {"parameters", NumParameters(*model_)}};
  }

  bool EvalDue(int64_t step) const { return o_.evaluate && step % o_.eval_every == 0; }

  // Training starts now: the clock restarts, so wall time and utilization cover training only
  // (model set-up, join, bootstrap download and the start barrier are reported as setup_seconds).
  void BeginTraining() {
    setup_s_ = clock_.Elapsed();
    clock_ = RunClock();
    last_log_wall_ = 0;
  }

  const EngineOptions& o_;
  RunClock clock_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Dataset> data_;
  std::unique_ptr<InnerOptimizer> optimizer_;
  MetricsLog metrics_;
  double compute_s_ = 0, stall_s_ = 0, eval_s_ = 0, last_log_wall_ = 0, setup_s_ = 0;
  int64_t tokens_ = 0, last_log_tokens_ = 0;
  double loss_sum_ = 0;
  int64_t loss_n_ = 0;
  float last_loss_ = 0;
  nlohmann::json curve_ = nlohmann::json::array();
  std::optional<EvalResult> final_eval_;
};

// Sends heartbeats (step, loss, tokens) on its own thread; remembers a shutdown request.
class Heartbeat {
 public:
  Heartbeat(comm::CoordinatorClient* client, std::chrono::milliseconds interval)
      : client_(client), interval_(interval.count() > 0 ? interval : std::chrono::milliseconds(5000)) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~Heartbeat() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Update(uint64_t step, float loss, uint64_t tokens) {
    step_ = step;
    loss_ = loss;
    tokens_ = tokens;
  }
  bool shutdown_requested() const { return shutdown_; }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, interval_, [&] { return stop_; })) {
      lock.unlock();
      auto r = client_->Heartbeat({step_.load(), loss_.load(), tokens_.load()});
      if (r.ok() && r->shutdown) {
        spdlog::warn("coordinator asks this worker to stop: {}", r->reason);
        shutdown_ = true;
      } else if (!r.ok()) {
        spdlog::warn("heartbeat failed: {}", r.status().ToString());
      }
      lock.lock();
    }
  }

  comm::CoordinatorClient* client_;
  std::chrono::milliseconds interval_;
  std::atomic<uint64_t> step_{0}, tokens_{0};
  std::atomic<float> loss_{0};
  std::atomic<bool> shutdown_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // GUARDED_BY(mu_)
  std::thread thread_;
};

// Saves the replica, the optimizer and `extras` (plus step, data position and algo) into checkpoint_dir.
Status SaveWorkerCheckpoint(const EngineOptions& o, Trainer& trainer, int64_t step, CheckpointExtras extras) {
  extras.metadata = {{"step", step}, {"batches_drawn", trainer.data_->TrainBatchesDrawn()}, {"algo", o.algo}};
  auto path = SaveCheckpoint(o.checkpoint_dir, *trainer.model_, *trainer.optimizer_, extras);
  if (!path.ok()) return path.status();
  spdlog::info("checkpoint at step {}: {}", step, *path);
  return Status::Ok();
}

class StreamingWorker {
 public:
  explicit StreamingWorker(const EngineOptions& o) : o_(o), trainer_(o) {}

  Status Run() {
    LOWBAND_RETURN_IF_ERROR(trainer_.Setup());
    const auto params = trainer_.model_->NamedParameters();
    if (!params.empty()) device_ = params.front().second.device();
    LOWBAND_ASSIGN_OR_RETURN(fcodec_, FragmentCodec::For(device_));
    spdlog::info("fragments: global copies on {}, {}", device_.str(), fcodec_->path());
    if (o_.ranks > 1) {
      LOWBAND_ASSIGN_OR_RETURN(
          site_,
          DataParallelGroup::Create({o_.site_store, o_.rank, o_.ranks, o_.collective_timeout,
                                     fmt::format("site {}", o_.worker_index), o_.start_timeout,
                                     trainer_.model_->config().device, o_.external_store, o_.store_prefix}));
    }
    int64_t start = 0;
    if (o_.resume) {
      LOWBAND_ASSIGN_OR_RETURN(start, Resume());
    }
    LOWBAND_ASSIGN_OR_RETURN(signature_, SignatureOf(*trainer_.model_));
    if (leader()) {
      LOWBAND_RETURN_IF_ERROR(Join());
      LOWBAND_RETURN_IF_ERROR(WaitForPeers());
    }
    if (site_) LOWBAND_RETURN_IF_ERROR(ShareSiteState(start));
    if (leader()) {
      exchanger_ = std::make_unique<FragmentExchanger>(client_.get(), o_.update_timeout);
      heartbeat_ = std::make_unique<Heartbeat>(client_.get(), reply_.heartbeat_interval);
    }
    trainer_.BeginTraining();
    if (start == 0 && trainer_.EvalDue(0)) LOWBAND_RETURN_IF_ERROR(Evaluate(0));

    int64_t t = start;
    while (t < o_.steps) {
      ++t;
      LOWBAND_ASSIGN_OR_RETURN(const float loss, trainer_.InnerStep(site_.get(), &site_comm_s_));
      if (heartbeat_)
        heartbeat_->Update(static_cast<uint64_t>(t), loss, static_cast<uint64_t>(trainer_.tokens_));
      LOWBAND_RETURN_IF_ERROR(ApplyDue(t, /*final=*/false));
      LOWBAND_RETURN_IF_ERROR(SendDue(t));
      if (schedule_->overlap() == 0) LOWBAND_RETURN_IF_ERROR(ApplyDue(t, false));
      if (t % o_.log_every == 0) trainer_.LogStep(t, BytesUp(), BytesDown());
      if (trainer_.EvalDue(t) && t != o_.steps) LOWBAND_RETURN_IF_ERROR(Evaluate(t));
      if (o_.checkpoint_every > 0 && t % o_.checkpoint_every == 0 && t != o_.steps) {
        LOWBAND_RETURN_IF_ERROR(Checkpoint(t));
      }
      if (site_ && o_.site_check_every > 0 && t % o_.site_check_every == 0) {
        LOWBAND_RETURN_IF_ERROR(CheckSite(t));
      }
      LOWBAND_ASSIGN_OR_RETURN(const bool stop, StopRequested());
      if (stop) break;
    }
    // Every round sent is applied before the end, so all copies of g end identical.
    LOWBAND_RETURN_IF_ERROR(ApplyDue(t, /*final=*/true));
    if (site_) LOWBAND_RETURN_IF_ERROR(CheckSite(t));
    if (t % o_.log_every != 0) trainer_.LogStep(t, BytesUp(), BytesDown());
    if (o_.evaluate) LOWBAND_RETURN_IF_ERROR(Evaluate(t));
    if (!o_.checkpoint_dir.empty()) LOWBAND_RETURN_IF_ERROR(Checkpoint(t));
    heartbeat_.reset();
    if (exchanger_) exchanger_stats_ = {exchanger_->repushes(), exchanger_->late_pushes()};
    exchanger_.reset();
    if (client_) {
      if (Status s = client_->Leave("finished"); !s.ok()) spdlog::warn("leave: {}", s.ToString());
    }
    return WriteResult(t);
  }

 private:
  // The rank that talks to the coordinator: the only rank of a plain worker, rank 0 of a site.
  bool leader() const { return o_.rank == 0; }

  // Whether the coordinator asked this worker to stop; a site's leader tells its other ranks, so
  // that they all stop after the same step.
  StatusOr<bool> StopRequested() {
    bool stop = heartbeat_ && heartbeat_->shutdown_requested();
    if (!site_) return stop;
    int64_t flag = stop ? 1 : 0;
    LOWBAND_RETURN_IF_ERROR(site_->Broadcast(&flag));
    return flag != 0;
  }

  // The site's leader has joined (and holds the global state); it gives the other ranks the run's
  // settings, the fragment layout, the open rounds, the global copy g and its parameters.
  Status ShareSiteState(int64_t start) {
    std::vector<uint8_t> msg;
    if (leader()) {
      const nlohmann::json j = {{"worker_id", reply_.worker_id},
                                {"H", reply_.inner_steps},
                                {"P", reply_.num_fragments},
                                {"tau", reply_.overlap_steps},
                                {"alpha", reply_.mixing_alpha},
                                {"codec", quant::FormatName(reply_.upload_codec.format)},
                                {"fragment_tensors", reply_.fragment_tensors},
                                {"next_round", next_round_},
                                {"start", start}};
      const std::string text = j.dump();
      msg.assign(text.begin(), text.end());
    }
    LOWBAND_RETURN_IF_ERROR(site_->Broadcast(&msg));
    if (!leader()) {
      const auto j = nlohmann::json::parse(msg.begin(), msg.end(), nullptr, false);
      if (j.is_discarded() || !j.is_object()) return DataLoss("the site leader's run settings are not JSON");
      try {
        reply_.worker_id = j.at("worker_id").get<uint64_t>();
        reply_.inner_steps = j.at("H").get<uint64_t>();
        reply_.num_fragments = j.at("P").get<uint32_t>();
        reply_.overlap_steps = j.at("tau").get<uint64_t>();
        reply_.mixing_alpha = j.at("alpha").get<float>();
        codec_name_ = j.at("codec").get<std::string>();
        reply_.fragment_tensors = j.at("fragment_tensors").get<std::vector<std::vector<uint32_t>>>();
        next_round_ = j.at("next_round").get<std::vector<uint64_t>>();
        if (const int64_t leader_start = j.at("start").get<int64_t>(); leader_start != start) {
          return FailedPrecondition(
              fmt::format("rank {} of site {} resumed at step {} but the site's leader at step {}: resume "
                          "every rank of a "
                          "site from checkpoints of the same step",
                          o_.rank, o_.worker_index, start, leader_start));
        }
      } catch (const std::exception& e) {
        return DataLoss(std::string("the site leader's run settings are incomplete: ") + e.what());
      }
      LOWBAND_ASSIGN_OR_RETURN(
          schedule_,
          comm::FragmentSchedule::Create(reply_.inner_steps, reply_.num_fragments, reply_.overlap_steps));
      LOWBAND_ASSIGN_OR_RETURN(layout_,
                               comm::FragmentLayout::FromAssignment(signature_, reply_.fragment_tensors));
      pending_.assign(layout_->num_fragments(), Pending{});
      g_.resize(layout_->num_fragments());
      residual_.resize(layout_->num_fragments());
    }
    // g in signature order, then the parameters: rank 0's become everyone's.
    CopyParamsTo(*trainer_.model_, &theta_);
    std::vector<float> global(leader() ? theta_.size() : 0);
    if (leader()) LOWBAND_RETURN_IF_ERROR(ScatterGlobal(global));
    LOWBAND_RETURN_IF_ERROR(site_->Broadcast(&global));
    if (global.size() != theta_.size()) {
      return DataLoss(
          fmt::format("the site leader's global copy has {} values, this rank's model {}: start "
                      "every rank of a site with the same model config",
                      global.size(), theta_.size()));
    }
    for (uint32_t p = 0; !leader() && p < g_.size(); ++p) LOWBAND_RETURN_IF_ERROR(GatherGlobal(p, global));
    LOWBAND_RETURN_IF_ERROR(site_->BroadcastParameters(*trainer_.model_));
    CopyParamsTo(*trainer_.model_, &theta_);
    if (!leader()) {
      spdlog::info("rank {} of site {}: H={} P={} tau={} alpha={}, global state from the site's leader",
                   o_.rank, o_.worker_index, reply_.inner_steps, reply_.num_fragments, reply_.overlap_steps,
                   reply_.mixing_alpha);
    }
    return CheckSite(start);
  }

  // Every rank of the site holds the same parameters and global copy (CRC32C digests compared).
  Status CheckSite(int64_t step) {
    CopyParamsTo(*trainer_.model_, &theta_);
    uint32_t g_crc = 0;
    for (uint32_t p = 0; p < g_.size(); ++p) {
      LOWBAND_ASSIGN_OR_RETURN(const uint32_t crc, GlobalCrc(p));
      g_crc = g_crc * 0x9E3779B1u + crc;
    }
    const uint64_t digest = (uint64_t{comm::CrcOfFloats(theta_)} << 32) | g_crc;
    LOWBAND_RETURN_IF_ERROR(
        site_->CheckIdentical(digest, fmt::format("parameters or global copy after step {}", step)));
    ++site_checks_;
    return Status::Ok();
  }

  Status Join() {
    comm::ClientOptions copts;
    copts.tls = o_.tls;
    LOWBAND_ASSIGN_OR_RETURN(client_, comm::CoordinatorClient::Connect(o_.coordinator, copts));
    comm::JoinParams jp{o_.run_id, o_.token, signature_, o_.worker_name, ""};
    LOWBAND_ASSIGN_OR_RETURN(reply_, client_->Join(jp));
    LOWBAND_ASSIGN_OR_RETURN(schedule_, comm::FragmentSchedule::Create(
                                            reply_.inner_steps, reply_.num_fragments, reply_.overlap_steps));
    LOWBAND_ASSIGN_OR_RETURN(layout_,
                             comm::FragmentLayout::FromAssignment(signature_, reply_.fragment_tensors));
    LOWBAND_ASSIGN_OR_RETURN(
        const comm::FragmentLayout own,
        comm::FragmentLayout::Create(signature_, {reply_.num_fragments, reply_.nonblock}));
    LOWBAND_RETURN_IF_ERROR(own.CheckSameAs(*layout_).WithContext("fragment layout sent by the coordinator"));
    spdlog::info("joined as worker id {}: H={} P={} tau={} alpha={} codec up {} / down {}", reply_.worker_id,
                 reply_.inner_steps, reply_.num_fragments, reply_.overlap_steps, reply_.mixing_alpha,
                 quant::FormatName(reply_.upload_codec.format),
                 quant::FormatName(reply_.download_codec.format));
    codec_name_ = quant::FormatName(reply_.upload_codec.format);

    const uint32_t P = layout_->num_fragments();
    g_.resize(P);
    residual_.resize(P);
    pending_.assign(P, Pending{});
    next_round_ = reply_.open_rounds;
    CopyParamsTo(*trainer_.model_, &theta_);
    // A fresh run seeds g with the initial parameters; a resumed one with its checkpointed g.
    const std::vector<float>& seed = resumed_global_.empty() ? theta_ : resumed_global_;
    bool have_state = false;
    if (reply_.must_seed) {
      LOWBAND_ASSIGN_OR_RETURN(have_state, client_->SeedState(seed));
      if (have_state) {
        for (uint32_t p = 0; p < P; ++p) LOWBAND_RETURN_IF_ERROR(GatherGlobal(p, seed));
        spdlog::info("seeded the global state ({} values)", seed.size());
      }
    }
    if (!have_state) {
      LOWBAND_ASSIGN_OR_RETURN(comm::GlobalState state, client_->Bootstrap());
      if (state.fragments.size() != P) return DataLoss("bootstrap carried the wrong number of fragments");
      for (uint32_t p = 0; p < P; ++p) {
        if (resumed_global_.empty()) LOWBAND_RETURN_IF_ERROR(layout_->Scatter(p, state.fragments[p], theta_));
        LOWBAND_RETURN_IF_ERROR(SetGlobal(p, state.fragments[p]));
      }
      next_round_ = state.open_rounds;
      // A resumed worker keeps its own replica (theta) and takes only g from the coordinator.
      if (resumed_global_.empty()) LOWBAND_RETURN_IF_ERROR(CopyParamsFrom(*trainer_.model_, theta_));
      spdlog::info("bootstrapped the global state ({} values)", theta_.size());
    }
    for (uint32_t p = 0; o_.error_feedback && p < P; ++p) {
      const size_t n = layout_->element_count(p);
      auto it = resumed_residuals_.find(p);
      const std::vector<float> residual = it != resumed_residuals_.end() && it->second.size() == n
                                              ? std::move(it->second)
                                              : std::vector<float>(n, 0.0f);
      LOWBAND_RETURN_IF_ERROR(GuardTorch("error-feedback residual", [&]() -> Status {
        residual_[p] = ToDevice(residual, device_);
        return Status::Ok();
      }));
    }
    return Status::Ok();
  }

  // A run starts when all its workers are members and ready (joined and holding the global
  // state): a round closes once every *live* member has contributed, so a worker that joined late
  // would find its first rounds already closed, and one still downloading its bootstrap would
  // make the first round wait for it while the others stall.
  Status WaitForPeers() {
    if (o_.num_workers <= 1) return Status::Ok();
    // A run under way (a worker restarted, or one joining late) has nobody to wait for.
    const bool under_way =
        std::any_of(next_round_.begin(), next_round_.end(), [](uint64_t r) { return r > 0; });
    if (under_way) {
      spdlog::info("the run is under way (open rounds {}); joining it without the start barrier",
                   fmt::join(next_round_, ","));
      return client_->Heartbeat({0, 0.0f, 0, /*ready=*/true}).status();
    }
    const auto deadline = RunClock::Clock::now() + o_.start_timeout;
    bool logged = false;
    for (;;) {
      auto r = client_->Heartbeat({0, 0.0f, 0, /*ready=*/true});
      if (!r.ok()) return r.status().WithContext("waiting for the other workers to join");
      if (r->ready_members >= static_cast<uint32_t>(o_.num_workers)) break;
      if (RunClock::Clock::now() > deadline) {
        return DeadlineExceeded(
            fmt::format("only {} of {} workers joined within {} s; start the others (same "
                        "--workers) or lower --workers",
                        r->live_members, o_.num_workers, o_.start_timeout.count() / 1000));
      }
      if (!logged) spdlog::info("waiting for {} workers ({} joined)", o_.num_workers, r->live_members);
      logged = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return Status::Ok();
  }

  // Loads the latest checkpoint (replica, AdamW state, data position, global copy, residuals).
  StatusOr<int64_t> Resume() {
    auto extras = LoadCheckpoint(o_.checkpoint_dir, *trainer_.model_, *trainer_.optimizer_);
    if (!extras.ok()) return extras.status().WithContext("resuming from " + o_.checkpoint_dir);
    const int64_t step = extras->metadata.value("step", int64_t{0});
    LOWBAND_RETURN_IF_ERROR(trainer_.data_->SeekTrain(extras->metadata.value("batches_drawn", int64_t{0})));
    auto g = extras->vectors.find("global");
    if (g == extras->vectors.end())
      return DataLoss("checkpoint in " + o_.checkpoint_dir + " has no global copy");
    resumed_global_ = std::move(g->second);
    for (auto& [name, v] : extras->vectors) {
      if (name.rfind("residual.", 0) == 0) resumed_residuals_[std::stoul(name.substr(9))] = std::move(v);
    }
    spdlog::info("resuming at step {} from {}", step, o_.checkpoint_dir);
    return step;
  }

  Status Checkpoint(int64_t step) {
    CheckpointExtras extras;
    // g in signature order (one vector, so a resumed run may use another fragment layout).
    std::vector<float> global(theta_.size());
    LOWBAND_RETURN_IF_ERROR(ScatterGlobal(global));
    for (uint32_t p = 0; o_.error_feedback && leader() && p < residual_.size(); ++p) {
      LOWBAND_RETURN_IF_ERROR(GuardTorch("checkpoint residual", [&]() -> Status {
        const torch::Tensor host = OnHost(residual_[p]);
        const std::span<const float> r = FloatsOf(host);
        extras.vectors["residual." + std::to_string(p)].assign(r.begin(), r.end());
        return Status::Ok();
      }));
    }
    extras.vectors["global"] = std::move(global);
    return SaveWorkerCheckpoint(o_, trainer_, step, std::move(extras));
  }

  Status SendDue(int64_t t) {
    for (uint32_t p : schedule_->FragmentsDueAt(static_cast<uint64_t>(t))) {
      if (pending_[p].active) {
        // A deferred result still missing when the fragment is due again: it must come first.
        LOWBAND_RETURN_IF_ERROR(Collect(p, /*block=*/true));
      }
      const uint64_t round = next_round_[p]++;
      pending_[p] = {true, round, t + static_cast<int64_t>(schedule_->overlap())};
      if (!leader()) continue;  // the site's leader sends; the other ranks wait for the update with it
      const auto encode_start = RunClock::Clock::now();
      // The outer gradient g_p - theta_p is formed and encoded where the model is: on a GPU only the
      // payload crosses to the host (fragment_codec.h). The cost is the fragment's size.
      LOWBAND_ASSIGN_OR_RETURN(const torch::Tensor theta_p,
                               FlatParams(*trainer_.model_, layout_->fragment(p).tensors));
      torch::Tensor delta;
      LOWBAND_RETURN_IF_ERROR(GuardTorch("outer gradient", [&]() -> Status {
        delta = g_[p] - theta_p;
        return Status::Ok();
      }));
      quant::CodecSpec spec = reply_.upload_codec;
      spec.seed = MessageSeed(o_.seed, reply_.worker_id, p, round);
      auto payload = o_.error_feedback ? fcodec_->EncodeWithFeedback(spec, delta, residual_[p])
                                       : fcodec_->Encode(spec, delta);
      if (!payload.ok())
        return payload.status().WithContext(fmt::format("encoding fragment {} at step {}", p, t));
      bytes_encoded_ += payload->size();
      exchanger_->Send(p, round, std::move(*payload));
      encode_.Add(RunClock::Since(encode_start));
    }
    return Status::Ok();
  }

  // Applies the results whose step has come (all of them when `final`).
  Status ApplyDue(int64_t t, bool final) {
    for (uint32_t p = 0; p < pending_.size(); ++p) {
      if (!pending_[p].active || (!final && pending_[p].apply_step > t)) continue;
      LOWBAND_RETURN_IF_ERROR(Collect(p, /*block=*/final || o_.late == "wait"));
    }
    return Status::Ok();
  }

  // Takes fragment p's result (blocking or not) and applies it.
  Status Collect(uint32_t p, bool block) {
    const Pending pend = pending_[p];
    std::optional<StatusOr<std::vector<uint8_t>>> got;
    const auto t0 = RunClock::Clock::now();
    if (leader()) got = block ? exchanger_->Wait(p, pend.round) : exchanger_->Poll(p, pend.round);
    bool resynced = false;
    if (leader() && got && !got->ok() &&
        (got->status().code() == StatusCode::kNotFound || got->status().code() == StatusCode::kOutOfRange)) {
      LOWBAND_RETURN_IF_ERROR(Resync(p, got->status()));
      resynced = true;
    }
    if (site_) LOWBAND_RETURN_IF_ERROR(ShareUpdate(p, &got, &resynced));
    if (block) trainer_.stall_s_ += RunClock::Since(t0);
    if (resynced) {
      pending_[p].active = false;
      return Merge(p);
    }
    if (!got) return Status::Ok();  // deferred: applied when it arrives
    if (!got->ok()) return got->status();
    pending_[p].active = false;
    // g_p -= dec(update), exactly as the coordinator did; then theta_p = alpha theta_p + (1-alpha) g_p.
    const auto apply_start = RunClock::Clock::now();
    LOWBAND_RETURN_IF_ERROR(fcodec_->ApplyOuterUpdate(**got, g_[p])
                                .WithContext(fmt::format("update of fragment {} round {}", p, pend.round)));
    LOWBAND_RETURN_IF_ERROR(Merge(p));
    apply_.Add(RunClock::Since(apply_start));
    return Status::Ok();
  }

  // The coordinator no longer has what this worker needs for fragment p: the round's update is
  // gone (the worker fell further behind than the retained rounds), or a coordinator restored from
  // an older checkpoint has not reached that round. Takes fragment p's global state and open round
  // from Bootstrap; the local replica is kept (and merged with it like after an update).
  Status Resync(uint32_t p, const Status& why) {
    spdlog::warn("fragment {}: {}; taking the fragment's global state from the coordinator", p,
                 why.message());
    LOWBAND_ASSIGN_OR_RETURN(comm::GlobalState state, client_->Bootstrap());
    const size_t n = layout_->element_count(p);
    if (p >= state.fragments.size() || state.fragments[p].size() != n) {
      return DataLoss(fmt::format("bootstrap for resync carried no fragment {} of {} values", p, n));
    }
    LOWBAND_RETURN_IF_ERROR(SetGlobal(p, state.fragments[p]));
    next_round_[p] = state.open_rounds[p];
    if (o_.error_feedback) {
      LOWBAND_RETURN_IF_ERROR(GuardTorch("error-feedback residual", [&]() -> Status {
        residual_[p].zero_();
        return Status::Ok();
      }));
    }
    ++resyncs_;
    return Status::Ok();
  }

  // theta_p = alpha theta_p + (1 - alpha) g_p.
  // On the model's device, one IEEE rounding per product and per sum, as the host loop it replaces.
  Status Merge(uint32_t p) {
    const std::vector<uint32_t>& tensors = layout_->fragment(p).tensors;
    LOWBAND_ASSIGN_OR_RETURN(torch::Tensor local, FlatParams(*trainer_.model_, tensors));
    const float a = reply_.mixing_alpha, b = 1.0f - reply_.mixing_alpha;
    LOWBAND_RETURN_IF_ERROR(GuardTorch("merge", [&]() -> Status {
      local.mul_(a).add_(g_[p] * b);
      return Status::Ok();
    }));
    return SetFlatParams(*trainer_.model_, tensors, local);
  }

  // Fragment p's global copy, from host values, on the model's device.
  Status SetGlobal(uint32_t p, std::span<const float> values) {
    return GuardTorch("global copy", [&]() -> Status {
      g_[p] = ToDevice(values, device_);
      return Status::Ok();
    });
  }
  // The same, gathered from every parameter's values in signature order.
  Status GatherGlobal(uint32_t p, std::span<const float> all) {
    std::vector<float> values(layout_->element_count(p));
    LOWBAND_RETURN_IF_ERROR(layout_->Gather(p, all, values));
    return SetGlobal(p, values);
  }
  // Writes every fragment's global copy into its place in `all` (signature order).
  Status ScatterGlobal(std::span<float> all) {
    return GuardTorch("global copy", [&]() -> Status {
      for (uint32_t p = 0; p < g_.size(); ++p) {
        const torch::Tensor host = OnHost(g_[p]);
        LOWBAND_RETURN_IF_ERROR(layout_->Scatter(p, FloatsOf(host), all));
      }
      return Status::Ok();
    });
  }
  StatusOr<uint32_t> GlobalCrc(uint32_t p) {
    return GuardTorch("global copy", [&]() -> StatusOr<uint32_t> {
      const torch::Tensor host = OnHost(g_[p]);
      return comm::CrcOfFloats(FloatsOf(host));
    });
  }

  // The site's leader passes what it got for a round (nothing yet, the encoded update, an error,
  // or the fragment's global state after a resync) to the other ranks, which then hold the same.
  Status ShareUpdate(uint32_t p, std::optional<StatusOr<std::vector<uint8_t>>>* got, bool* resynced) {
    enum : uint8_t { kNotYet = 0, kUpdate = 1, kError = 2, kResync = 3 };
    std::vector<uint8_t> msg;
    if (leader()) {
      if (*resynced) {
        LOWBAND_ASSIGN_OR_RETURN(
            const torch::Tensor host,
            GuardTorch("global copy", [&]() -> StatusOr<torch::Tensor> { return OnHost(g_[p]); }));
        const std::span<const float> g = FloatsOf(host);
        msg.resize(1 + sizeof(uint64_t) + g.size_bytes());
        msg[0] = kResync;
        std::memcpy(msg.data() + 1, &next_round_[p], sizeof(uint64_t));
        std::memcpy(msg.data() + 1 + sizeof(uint64_t), g.data(), g.size_bytes());
      } else if (!got->has_value()) {
        msg = {kNotYet};
      } else if (!(*got)->ok()) {
        const std::string text = (*got)->status().ToString();
        msg.push_back(kError);
        msg.insert(msg.end(), text.begin(), text.end());
      } else {
        msg.reserve(1 + (**got)->size());
        msg.push_back(kUpdate);
        msg.insert(msg.end(), (**got)->begin(), (**got)->end());
      }
    }
    LOWBAND_RETURN_IF_ERROR(site_->Broadcast(&msg));
    if (leader()) return Status::Ok();
    if (msg.empty() || msg[0] > kResync) return DataLoss("the site leader sent a malformed update message");
    if (msg[0] == kResync) {
      std::vector<float> g(layout_->element_count(p));
      if (msg.size() != 1 + sizeof(uint64_t) + g.size() * sizeof(float))
        return DataLoss("the site leader's resync message has the wrong size");
      std::memcpy(&next_round_[p], msg.data() + 1, sizeof(uint64_t));
      std::memcpy(g.data(), msg.data() + 1 + sizeof(uint64_t), g.size() * sizeof(float));
      LOWBAND_RETURN_IF_ERROR(SetGlobal(p, g));
      *resynced = true;
    } else if (msg[0] == kNotYet) {
      got->reset();
    } else if (msg[0] == kError) {
      *got = Unavailable("the site's leader (rank 0) failed to get the update: " +
                         std::string(msg.begin() + 1, msg.end()));
    } else {
      *got = std::vector<uint8_t>(msg.begin() + 1, msg.end());
    }
    return Status::Ok();
  }

  Status Evaluate(int64_t step) {
    CopyParamsTo(*trainer_.model_, &theta_);
    std::vector<float> global = theta_;
    LOWBAND_RETURN_IF_ERROR(ScatterGlobal(global));
    LOWBAND_RETURN_IF_ERROR(CopyParamsFrom(*trainer_.model_, global));
    auto r = trainer_.EvaluateModel();
    LOWBAND_RETURN_IF_ERROR(CopyParamsFrom(*trainer_.model_, theta_));
    if (!r.ok()) return r.status();
    trainer_.RecordEval(step, *r, BytesUp(), BytesDown());
    return Status::Ok();
  }

  // Coordinator traffic: the site's leader carries all of it.
  uint64_t BytesUp() const { return client_ ? client_->traffic().sync_payload_bytes_sent : 0; }
  uint64_t BytesDown() const { return client_ ? client_->traffic().sync_payload_bytes_received : 0; }

  Status WriteResult(int64_t steps_done) {
    nlohmann::json r = trainer_.Result(o_.algo, steps_done);
    const comm::TrafficCounters tc = client_ ? client_->traffic() : comm::TrafficCounters{};
    r["worker_id"] = reply_.worker_id;
    r["bytes_up"] = tc.sync_payload_bytes_sent;
    r["bytes_down"] = tc.sync_payload_bytes_received;
    r["wire_bytes_up"] = tc.sync_message_bytes_sent;
    r["wire_bytes_down"] = tc.sync_message_bytes_received;
    r["bootstrap_bytes"] = tc.bootstrap_payload_bytes_sent + tc.bootstrap_payload_bytes_received;
    r["control_bytes"] = tc.control_message_bytes_sent + tc.control_message_bytes_received;
    r["bytes_encoded"] = bytes_encoded_;
    r["codec"] = codec_name_;
    r["H"] = reply_.inner_steps;
    r["fragments"] = reply_.num_fragments;
    r["tau"] = reply_.overlap_steps;
    r["alpha"] = reply_.mixing_alpha;
    r["error_feedback"] = o_.error_feedback;
    nlohmann::json crcs = nlohmann::json::array();
    for (uint32_t p = 0; p < g_.size(); ++p) {
      LOWBAND_ASSIGN_OR_RETURN(const uint32_t crc, GlobalCrc(p));
      crcs.push_back(crc);
    }
    r["global_crc"] = crcs;
    r["fragment_codec"] = fcodec_->path();
    r["rounds_sent"] = next_round_;
    r["resyncs"] = resyncs_;
    // Training-thread seconds of the exchange that are neither compute nor stall, per sync (the
    // simulator's encode_seconds and apply_seconds): copying and encoding a fragment's outer
    // gradient, and decoding and merging its update.
    r["encode_seconds"] = encode_.Get();
    r["apply_seconds"] = apply_.Get();
    r["syncs_encoded"] = encode_.n;
    r["updates_applied"] = apply_.n;
    r["repushes"] = exchanger_stats_.repushes;
    r["late_pushes"] = exchanger_stats_.late_pushes;
    r["rejoins"] = tc.rejoins;
    r["retries"] = tc.retries;
    std::vector<float> params;
    CopyParamsTo(*trainer_.model_, &params);
    r["params_crc"] = comm::CrcOfFloats(params);
    r["rank"] = o_.rank;
    r["ranks"] = o_.ranks;
    if (site_) {
      r["site_allreduce_bytes"] = site_->allreduce_bytes();
      r["site_broadcast_bytes"] = site_->broadcast_bytes();
      r["site_comm_seconds"] = site_comm_s_;
      r["site_checks"] = site_checks_;
    }
    nlohmann::json sizes = nlohmann::json::array();
    for (uint32_t p = 0; p < layout_->num_fragments(); ++p) sizes.push_back(layout_->element_count(p));
    r["fragment_elements"] = sizes;
    spdlog::info("done: {} steps, final eval loss {}, up {}, down {}, stall {:.1f}s", steps_done,
                 r["final_eval_loss"].dump(), HumanBytes(static_cast<double>(tc.sync_payload_bytes_sent)),
                 HumanBytes(static_cast<double>(tc.sync_payload_bytes_received)), trainer_.stall_s_);
    if (o_.result_path.empty()) return Status::Ok();
    return WriteJsonFile(o_.result_path, r);
  }

  struct Pending {
    bool active = false;
    uint64_t round = 0;
    int64_t apply_step = 0;
  };

  const EngineOptions& o_;
  Trainer trainer_;
  std::unique_ptr<comm::CoordinatorClient> client_;
  comm::ModelSignature signature_;
  comm::JoinReply reply_;
  std::optional<comm::FragmentSchedule> schedule_;
  std::optional<comm::FragmentLayout> layout_;
  torch::Device device_{torch::kCPU};  // the model's: where g, the residuals and the merge live
  std::unique_ptr<FragmentCodec> fcodec_;
  // Per fragment: the global copy g_p and, with error feedback (leader only), the residual.
  std::vector<torch::Tensor> g_, residual_;
  std::vector<float> theta_;
  std::vector<float> resumed_global_;  // from the checkpoint, when resuming
  std::map<uint32_t, std::vector<float>> resumed_residuals_;
  std::vector<Pending> pending_;
  std::vector<uint64_t> next_round_;
  uint64_t resyncs_ = 0;  // fragments taken from the coordinator's global state mid-run
  struct {
    uint64_t repushes = 0;
    uint64_t late_pushes = 0;
  } exchanger_stats_;
  uint64_t bytes_encoded_ = 0;
  comm::RunningMean encode_, apply_;  // seconds per sync
  std::string codec_name_;
  std::unique_ptr<DataParallelGroup> site_;  // a site's ranks (null for a one-rank worker)
  double site_comm_s_ = 0;                   // gradient all-reduce within the site
  int64_t site_checks_ = 0;
  std::unique_ptr<FragmentExchanger> exchanger_;
  std::unique_ptr<Heartbeat> heartbeat_;
};

class DdpWorker {
 public:
  explicit DdpWorker(const EngineOptions& o) : o_(o), trainer_(o) {}

  Status Run() {
    if (o_.ranks > 1) {
      return InvalidArgument(
          "algo ddp is already data-parallel over all its workers: run --workers M x R instead of sites of "
          "--ranks R (sites are for streaming and diloco)");
    }
    if (o_.resume) {
      // Its checkpoints are snapshots (and a fine-tuning base); restarting ranks from them in step is not
      // built yet, and silently starting over would overwrite them.
      return FailedPrecondition(
          "algo ddp cannot resume from checkpoints (only streaming and diloco can): start a new "
          "run, or drop --resume");
    }
    LOWBAND_RETURN_IF_ERROR(trainer_.Setup());
    LOWBAND_ASSIGN_OR_RETURN(
        reducer_,
        DataParallelGroup::Create({o_.store_address, o_.worker_index, o_.num_workers, o_.collective_timeout,
                                   "ddp", o_.start_timeout, trainer_.model_->config().device,
                                   o_.external_store, o_.store_prefix}));
    // Every rank starts from rank 0's parameters (they are equal by seed; this makes it a fact).
    LOWBAND_RETURN_IF_ERROR(reducer_->BroadcastParameters(*trainer_.model_));
    trainer_.BeginTraining();
    if (trainer_.EvalDue(0)) LOWBAND_RETURN_IF_ERROR(Evaluate(0));
    int64_t t = 0;
    while (t < o_.steps) {
      ++t;
      // ddp's all-reduce is its communication: its time is the run's stall time.
      LOWBAND_RETURN_IF_ERROR(trainer_.InnerStep(reducer_.get(), &trainer_.stall_s_).status());
      if (t % o_.log_every == 0) trainer_.LogStep(t, Bytes(), Bytes());
      if (trainer_.EvalDue(t) && t != o_.steps) LOWBAND_RETURN_IF_ERROR(Evaluate(t));
      if (o_.checkpoint_every > 0 && t % o_.checkpoint_every == 0 && t != o_.steps) {
        LOWBAND_RETURN_IF_ERROR(SaveWorkerCheckpoint(o_, trainer_, t, {}));
      }
    }
    if (t % o_.log_every != 0) trainer_.LogStep(t, Bytes(), Bytes());
    if (o_.evaluate) LOWBAND_RETURN_IF_ERROR(Evaluate(t));
    // Every rank holds the same replica; each saves its own (the base for fine-tuning, e.g. split-client).
    if (!o_.checkpoint_dir.empty()) LOWBAND_RETURN_IF_ERROR(SaveWorkerCheckpoint(o_, trainer_, t, {}));
    nlohmann::json r = trainer_.Result("ddp", t);
    // A ring all-reduce receives what it sends.
    r["bytes_up"] = Bytes();
    r["bytes_down"] = Bytes();
    r["bytes_accounting"] = "ring all-reduce: 2(M-1)/M x 4 bytes x parameters per step, each way";
    r["bootstrap_bytes"] = reducer_->broadcast_bytes();
    r["codec"] = "fp32";
    std::vector<float> params;
    CopyParamsTo(*trainer_.model_, &params);
    r["params_crc"] = comm::CrcOfFloats(params);
    if (o_.result_path.empty()) return Status::Ok();
    return WriteJsonFile(o_.result_path, r);
  }

 private:
  Status Evaluate(int64_t step) {
    auto r = trainer_.EvaluateModel();
    if (!r.ok()) return r.status();
    trainer_.RecordEval(step, *r, Bytes(), Bytes());
    return Status::Ok();
  }

  uint64_t Bytes() const { return reducer_->allreduce_bytes(); }

  const EngineOptions& o_;
  Trainer trainer_;
  std::unique_ptr<DataParallelGroup> reducer_;
};

}  // namespace

Status RunWorker(const EngineOptions& options) {
  if (options.algo == "ddp") return DdpWorker(options).Run();
  if (options.algo == "streaming" || options.algo == "diloco") return StreamingWorker(options).Run();
  return InvalidArgument("algo must be ddp, diloco or streaming, got '" + options.algo + "'");
}

}  // namespace lowband::worker
