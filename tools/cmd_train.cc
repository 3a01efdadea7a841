// `lowband coordinator`, `lowband worker` and `lowband launch`: a training run's processes.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "comm/metrics.h"
#include "tools/command.h"
#include "tools/config.h"
#include "tools/launcher.h"
#include "tools/process.h"

#if defined(LOWBAND_HAVE_GRPC)
#include "comm/outer_update.h"
#include "coordinator/checkpoint.h"
#include "coordinator/core.h"
#include "coordinator/http.h"
#include "coordinator/service.h"
#endif
#if defined(LOWBAND_HAVE_ENGINE)
#include "worker/engine.h"
#include "worker/torch_runtime.h"
#endif

namespace lowband::tools {
namespace {

RunConfig Resolve(const ConfigFlags& flags) {
  auto c = ResolveConfig(flags);
  if (!c.ok()) throw CommandError(c.status().message(), 2);
  return *c;
}

void Check(const Status& s) {
  if (!s.ok()) throw CommandError(s.ToString());
}

struct CoordinatorFlags {
  std::string listen = "0.0.0.0:50051";
  std::string checkpoint_dir;
  std::string http;
  std::string http_port_file;
  std::string port_file;
  std::string out;
  int workers = 0;
  bool exit_when_done = false;
};

#if defined(LOWBAND_HAVE_GRPC)
void RunCoordinator(const RunConfig& c, const CoordinatorFlags& f) {
  coordinator::CoordinatorOptions co;
  co.run_id = c.run.id;
  co.token = c.run.token;
  co.layout.num_fragments = static_cast<uint32_t>(c.diloco.fragments);
  auto nb = comm::ParseNonBlockPolicy(c.diloco.nonblock);
  Check(nb.status());
  co.layout.nonblock = *nb;
  co.inner_steps = static_cast<uint64_t>(c.diloco.H);
  co.overlap_steps = static_cast<uint64_t>(c.diloco.tau);
  co.mixing_alpha = static_cast<float>(c.diloco.alpha);
  co.quorum = static_cast<uint32_t>(std::max(1, c.coordinator.quorum));
  co.round_timeout = std::chrono::milliseconds(static_cast<int64_t>(c.coordinator.round_timeout_s * 1000));
  co.heartbeat_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(c.coordinator.heartbeat_timeout_s * 1000));
  co.heartbeat_interval = std::min(co.heartbeat_interval, co.heartbeat_timeout / 3);
  co.outer.lr = static_cast<float>(c.diloco.outer_lr);
  co.outer.momentum = static_cast<float>(c.diloco.outer_momentum);
  co.outer.nesterov = c.diloco.nesterov;
  auto up = UploadCodec(c);
  Check(up.status());
  auto down = DownloadCodec(c);
  Check(down.status());
  co.upload_codec = *up;
  co.download_codec = *down;
  co.max_members = static_cast<uint32_t>(c.coordinator.max_members);
  // Durability: checkpoints every K closed rounds (written before the round's update is handed out)
  // and at SIGTERM; a coordinator started on a directory holding one continues that run.
  std::unique_ptr<coordinator::CheckpointStore> store;
  std::optional<coordinator::CoordinatorSnapshot> restored;
  if (!f.checkpoint_dir.empty()) {
    store = std::make_unique<coordinator::CheckpointStore>(f.checkpoint_dir);
    auto loaded = store->Load();
    Check(loaded.status());
    restored = std::move(*loaded);
    co.checkpoint_every = static_cast<uint32_t>(c.coordinator.checkpoint_every);
    co.on_checkpoint = [s = store.get()](const coordinator::CoordinatorSnapshot& snapshot) {
      if (Status w = s->Write(snapshot); !w.ok()) spdlog::error("coordinator checkpoint: {}", w.ToString());
    };
  }
  // Every closed round goes to the coordinator's JSONL (appended to after a restart).
  auto log = std::make_shared<comm::MetricsLog>();
  auto log_mu = std::make_shared<std::mutex>();
  if (!f.out.empty()) {
    auto l = comm::MetricsLog::Open(f.out + "/metrics/coordinator.jsonl", /*append=*/restored.has_value());
    Check(l.status());
    *log = std::move(*l);
  }
  co.on_round_closed = [log, log_mu](const coordinator::RoundRecord& r) {
    std::lock_guard<std::mutex> lock(*log_mu);
    log->Write({{"event", "round"},
                {"fragment", r.fragment},
                {"round", r.round},
                {"contributions", r.contributions},
                {"at_deadline", r.at_deadline},
                {"failure", r.failure},
                {"global_crc", r.global_crc}});
  };
  auto core = restored ? coordinator::CoordinatorCore::Restore(co, *restored)
                       : coordinator::CoordinatorCore::Create(co);
  Check(core.status());
  if (restored) {
    spdlog::info("coordinator: continuing run '{}' from {} ({} rounds closed)", c.run.id,
                 store->path().string(), restored->counters.rounds_closed);
  }
  coordinator::ServerOptions so;
  so.address = f.listen;
  so.service.max_inflight_pushes = static_cast<uint32_t>(c.coordinator.max_inflight_pushes);
  so.tls = ServerTls(c.tls);
  auto server = coordinator::CoordinatorServer::Start(**core, so);
  Check(server.status());
  spdlog::info(
      "coordinator for run '{}' on port {}: algo {}, H={} P={} tau={} alpha={}, codec {} up / {} down",
      c.run.id, (*server)->port(), c.algo, co.inner_steps, co.layout.num_fragments, co.overlap_steps,
      co.mixing_alpha, quant::FormatName(co.upload_codec.format),
      quant::FormatName(co.download_codec.format));
  if (!f.port_file.empty()) {
    const Status written = WritePortFile(f.port_file, (*server)->port());
    if (!written.ok()) throw CommandError("coordinator: --port-file: " + written.message());
  }
  std::unique_ptr<coordinator::HttpStatusServer> http;
  if (!f.http.empty()) {
    auto h = coordinator::HttpStatusServer::Start(**core, f.http);
    Check(h.status());
    http = std::move(*h);
    if (!f.http_port_file.empty()) {
      const Status written = WritePortFile(f.http_port_file, http->port());
      if (!written.ok()) throw CommandError("coordinator: --http-port-file: " + written.message());
    }
  }
  InstallStopHandlers();
  comm::RunClock clock;
  uint64_t last_rounds = 0;
  double last_status = 0;
  while (!StopRequested()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const auto counters = (*core)->counters();
    if (counters.rounds_closed != last_rounds || clock.Elapsed() - last_status > 10) {
      std::lock_guard<std::mutex> lock(*log_mu);
      log->Write({{"event", "status"},
                  {"wall_seconds", clock.Elapsed()},
                  {"rounds_closed", counters.rounds_closed},
                  {"live_members", (*core)->live_members()},
                  {"bytes_in", counters.sync_bytes_in},
                  {"bytes_out", counters.sync_bytes_out},
                  {"late_pushes", counters.late_pushes},
                  {"refusals", counters.refusals}});
      if (counters.rounds_closed != last_rounds) {
        spdlog::info("rounds closed {}  members {}  in {}  out {}", counters.rounds_closed,
                     (*core)->live_members(), comm::HumanBytes(static_cast<double>(counters.sync_bytes_in)),
                     comm::HumanBytes(static_cast<double>(counters.sync_bytes_out)));
      }
      last_rounds = counters.rounds_closed;
      last_status = clock.Elapsed();
    }
    // Done once as many workers as expected have left (finished) and none is live: a worker that
    // died is not done (its restart will leave), nor are members a restored coordinator lost.
    if (f.exit_when_done && f.workers > 0 && counters.leaves >= static_cast<uint64_t>(f.workers) &&
        (*core)->live_members() == 0) {
      spdlog::info("all {} workers have left; stopping", f.workers);
      break;
    }
  }
  (*server)->Stop();
  if (http) http->Stop();
  if (store) {
    // At SIGTERM/SIGINT or the end: the state as it is now, for a coordinator started again.
    if (Status w = store->Write((*core)->Snapshot()); !w.ok()) {
      spdlog::error("coordinator checkpoint at exit: {}", w.ToString());
    } else {
      spdlog::info("coordinator: state saved to {} ({} checkpoints written, last took {:.3f} s)",
                   store->path().string(), store->writes(), store->last_write_seconds());
    }
  }
  const auto counters = (*core)->counters();
  nlohmann::json open_rounds = nlohmann::json::array();
  for (uint32_t p = 0; (*core)->seeded() && p < co.layout.num_fragments; ++p) {
    open_rounds.push_back((*core)->round_status(p)->open_round);
  }
  // Every counter (coordinator::CountersToJson, the names the checkpoint and /status.json use), then
  // the run's end state.
  nlohmann::json r = coordinator::CountersToJson(counters);
  r.update({{"global_crc", (*core)->GlobalStateCrc()},
            {"open_rounds", open_rounds},
            {"checkpoints_written", store ? store->writes() : 0},
            {"checkpoint_last_write_seconds", store ? store->last_write_seconds() : 0.0},
            {"restored", restored.has_value()},
            // Mean seconds from a round's close to its update being available (the simulator's
            // coordinator_seconds), over the rounds this process closed.
            {"round_seconds", (*core)->round_timing().Get()},
            {"rounds_timed", (*core)->round_timing().n},
            {"wall_seconds", clock.Elapsed()}});
  if (!f.out.empty()) Check(comm::WriteJsonFile(f.out + "/metrics/coordinator-result.json", r));
  spdlog::info("coordinator done: {} rounds, {} contributions, {} late pushes refused",
               counters.rounds_closed, counters.contributions, counters.late_pushes);
}
#endif

struct WorkerFlags {
  std::string coordinator;
  std::string ddp_store;
  std::string out;
  std::string name;
  int worker_id = 0;
  int workers = 1;
  int rank = 0;
  std::string site_store;
  int64_t checkpoint_every = 0;
  bool resume = false;
  // Given on the command line (or through LOWBAND_RANK): torchrun's environment does not override them.
  bool rank_given = false, worker_id_given = false, workers_given = false;
};

#if defined(LOWBAND_HAVE_ENGINE)
// What torchrun tells the processes it starts (`torchrun --no-python lowband worker ...`).
struct TorchrunEnv {
  int rank = 0;
  int world = 1;
  std::string store;         // MASTER_ADDR:MASTER_PORT
  bool agent_store = false;  // TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent hosts the store
  std::string prefix;        // keys of this attempt: a restarted job never reads the last one's
};

// torchrun's environment when TORCHELASTIC_RUN_ID (which torchrun always sets) is present; a missing or
// malformed variable then is an error naming it.
std::optional<TorchrunEnv> FromTorchrun() {
  if (std::getenv("TORCHELASTIC_RUN_ID") == nullptr) return std::nullopt;
  const auto text = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') {
      throw CommandError(
          fmt::format("started by torchrun (TORCHELASTIC_RUN_ID is set) but {} is not set: start "
                      "lowband with `torchrun --no-python lowband worker ...`, or unset "
                      "TORCHELASTIC_RUN_ID and pass --rank and --site-store",
                      name),
          2);
    }
    return v;
  };
  const auto number = [&](const char* name) -> int {
    const std::string v = text(name);
    size_t used = 0;
    int n = -1;
    try {
      n = std::stoi(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != v.size() || n < 0) {
      throw CommandError(fmt::format("{}='{}' (from torchrun) is not a non-negative integer", name, v), 2);
    }
    return n;
  };
  TorchrunEnv t;
  t.rank = number("RANK");
  t.world = number("WORLD_SIZE");
  const int port = number("MASTER_PORT");
  t.store = fmt::format("{}:{}", text("MASTER_ADDR"), port);
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  t.agent_store = agent != nullptr && std::string_view(agent) == "True";
  const char* restarts = std::getenv("TORCHELASTIC_RESTART_COUNT");
  t.prefix = fmt::format("/lowband/attempt_{}", restarts != nullptr ? restarts : "0");
  return t;
}

// Under torchrun, its processes are one site's ranks (streaming, diloco) or the ddp world, and its
// store is their group's store. Explicit flags win; a --ranks that disagrees with WORLD_SIZE is refused.
void ApplyTorchrun(RunConfig& c, WorkerFlags& f, worker::EngineOptions& e) {
  const std::optional<TorchrunEnv> t = FromTorchrun();
  if (!t) return;
  std::string& store = c.algo == "ddp" ? f.ddp_store : f.site_store;
  if (c.algo == "ddp") {
    if (!f.worker_id_given) f.worker_id = t->rank;
    if (!f.workers_given) f.workers = t->world;
  } else {
    if (!f.rank_given) f.rank = t->rank;
    if (c.site.ranks == 1) {
      c.site.ranks = t->world;
    } else if (c.site.ranks != t->world) {
      throw CommandError(
          fmt::format("--ranks {} but torchrun started {} processes (WORLD_SIZE): one torchrun job "
                      "is one site; drop --ranks or start {} processes per site",
                      c.site.ranks, t->world, c.site.ranks),
          2);
    }
  }
  if (store.empty()) {
    store = t->store;
    e.external_store = t->agent_store;
    e.store_prefix = t->prefix;
  }
  spdlog::info("torchrun: {} {} of {}, store {}{}", c.algo == "ddp" ? "ddp rank" : "site rank",
               c.algo == "ddp" ? f.worker_id : f.rank, t->world, store,
               e.external_store ? " (hosted by torchrun's agent)" : "");
}

void RunWorkerCommand(RunConfig c, WorkerFlags f) {
  worker::EngineOptions e;
  ApplyTorchrun(c, f, e);
  e.algo = c.algo;
  e.steps = c.steps;
  e.eval_every = c.eval_every;
  e.log_every = c.log_every;
  e.seed = c.seed;
  e.model = c.model;
  e.data = c.data;
  e.inner = c.inner;
  e.worker_index = f.worker_id;
  e.num_workers = f.workers;
  e.rank = f.rank;
  e.ranks = c.site.ranks;
  e.site_store = f.site_store;
  e.site_check_every = c.site.check_every;
  e.collective_timeout = std::chrono::milliseconds(static_cast<int64_t>(c.site.timeout_s * 1000));
  e.evaluate = f.worker_id == 0 && f.rank == 0;
  e.coordinator = f.coordinator;
  e.run_id = c.run.id;
  e.token = c.run.token;
  e.worker_name = f.name.empty() ? fmt::format("worker-{}", f.worker_id) : f.name;
  e.error_feedback = c.codec.error_feedback;
  e.late = c.diloco.late;
  e.update_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(c.coordinator.round_timeout_s * 1000) + 60'000);
  e.tls = ClientTls(c.tls);
  e.store_address = f.ddp_store;
  e.checkpoint_every = f.checkpoint_every;
  e.resume = f.resume;
  if (!f.out.empty()) {
    // A site's leader (rank 0) writes the worker's files; its other ranks their own beside them.
    const std::string id = f.rank == 0 ? fmt::format("worker-{}", f.worker_id)
                                       : fmt::format("worker-{}-rank-{}", f.worker_id, f.rank);
    e.metrics_path = fmt::format("{}/metrics/{}.jsonl", f.out, id);
    e.result_path = fmt::format("{}/metrics/{}-result.json", f.out, id);
    e.checkpoint_dir = fmt::format("{}/checkpoints/worker-{}", f.out, f.worker_id);
    if (c.site.ranks > 1) e.checkpoint_dir += fmt::format("/rank-{}", f.rank);
  }
  if (c.algo == "ddp" && f.ddp_store.empty())
    throw CommandError("algo ddp needs --ddp-store HOST:PORT (rank 0 listens there)", 2);
  if (c.algo != "ddp" && f.coordinator.empty()) throw CommandError("--coordinator HOST:PORT is required", 2);
  if (f.rank < 0 || f.rank >= c.site.ranks) {
    throw CommandError(
        fmt::format("--rank {} is outside 0..{} (--ranks {})", f.rank, c.site.ranks - 1, c.site.ranks), 2);
  }
  if (c.site.ranks > 1 && f.site_store.empty()) {
    throw CommandError(
        "a site of --ranks > 1 needs --site-store HOST:PORT (a c10d TCPStore that rank 0 hosts; every rank "
        "of "
        "the site passes the same address)",
        2);
  }
  if (f.worker_id < 0 || f.worker_id >= f.workers) {
    throw CommandError(
        fmt::format("--worker-id {} is outside 0..{} (--workers {})", f.worker_id, f.workers - 1, f.workers),
        2);
  }
  Check(worker::RunWorker(e));
}
#endif

}  // namespace

void RegisterTraining(CLI::App& app) {
  // ---- coordinator
  {
    auto* cmd = app.add_subcommand("coordinator", "Run the Streaming DiLoCo coordinator (gRPC server)");
    auto flags = AddConfigFlags(cmd);
    auto f = std::make_shared<CoordinatorFlags>();
    cmd->add_option("--listen", f->listen, "host:port to listen on (port 0: pick one)")
        ->capture_default_str();
    cmd->add_option("--port-file", f->port_file, "Write the bound port to this file once listening");
    cmd->add_option("--http", f->http,
                    "Serve a read-only status page (/), Prometheus metrics (/metrics) and /status.json on "
                    "host:port (port 0: pick one)");
    cmd->add_option("--http-port-file", f->http_port_file, "Write the HTTP port to this file once listening");
    cmd->add_option("--out", f->out, "Run directory for metrics/coordinator*.json[l]");
    cmd->add_option("--checkpoint-dir", f->checkpoint_dir,
                    "Save the coordinator's state here every coordinator.checkpoint_every closed rounds and "
                    "at SIGTERM; when the directory already holds a checkpoint, continue that run from it "
                    "(workers reconnect on their own)");
    cmd->add_option("--workers", f->workers, "Expected workers (with --exit-when-done)");
    cmd->add_flag("--exit-when-done", f->exit_when_done,
                  "Exit once --workers workers have left (finished) and none is live");
    cmd->callback([flags, f] {
#if defined(LOWBAND_HAVE_GRPC)
      RunCoordinator(Resolve(*flags), *f);
#else
      throw CommandError(
          "this build has no gRPC: install libgrpc++-dev (deploy/install-deps.sh) and rebuild");
#endif
    });
  }
  // ---- worker
  {
    auto* cmd =
        app.add_subcommand("worker", "Run one training worker (Streaming DiLoCo / DiLoCo / ddp rank)");
    auto flags = AddConfigFlags(cmd);
    auto f = std::make_shared<WorkerFlags>();
    cmd->add_option("--coordinator", f->coordinator, "Coordinator host:port (streaming, diloco)");
    cmd->add_option("--ddp-store", f->ddp_store, "c10d TCPStore host:port, hosted by worker 0 (ddp)");
    cmd->add_option("--worker-id", f->worker_id, "This worker's index = data shard (0 evaluates)")
        ->capture_default_str();
    cmd->add_option("--workers", f->workers, "Number of workers (data shards / ddp world size)")
        ->capture_default_str();
    cmd->add_option("--name", f->name, "Name shown by the coordinator");
    cmd->add_option("--rank", f->rank,
                    "This process's rank in its site (a worker of --ranks R processes; rank 0 talks to the "
                    "coordinator). Under `torchrun --no-python lowband worker`, RANK, WORLD_SIZE and "
                    "MASTER_ADDR:MASTER_PORT give the rank, --ranks and --site-store (ddp: --worker-id, "
                    "--workers, --ddp-store)")
        ->envname("LOWBAND_RANK")
        ->capture_default_str();
    cmd->add_option("--site-store", f->site_store,
                    "c10d TCPStore host:port of this worker's site, hosted by its rank 0 (--ranks > 1)")
        ->envname("LOWBAND_SITE_STORE");
    cmd->add_option("--out", f->out, "Run directory (metrics/, checkpoints/)");
    cmd->add_option("--checkpoint-every", f->checkpoint_every,
                    "Save a worker checkpoint every N steps (and at the end)");
    cmd->add_flag("--resume", f->resume, "Continue from the latest checkpoint in RUN/checkpoints/worker-N");
    cmd->callback([flags, f, cmd] {
#if defined(LOWBAND_HAVE_ENGINE)
      f->rank_given = cmd->count("--rank") > 0;
      f->worker_id_given = cmd->count("--worker-id") > 0;
      f->workers_given = cmd->count("--workers") > 0;
      RunWorkerCommand(Resolve(*flags), *f);
#else
      throw CommandError("this build has no LibTorch or no gRPC: run deploy/install-deps.sh and rebuild");
#endif
    });
  }
  // ---- launch
  {
    auto* cmd = app.add_subcommand(
        "launch",
        "Start a coordinator and M workers on this machine (real gRPC / Gloo on loopback), show progress, "
        "write RUN/summary.json");
    auto flags = AddConfigFlags(cmd);
    auto o = std::make_shared<LaunchOptions>();
    cmd->add_option("--workers", o->workers, "Number of workers")->capture_default_str();
    cmd->add_option("--out", o->out, "Run directory")->capture_default_str();
    cmd->add_option("--http", o->http,
                    "The coordinator serves its status page, /metrics (Prometheus) and /status.json here "
                    "(host:port)");
    cmd->add_option("--progress-seconds", o->progress_seconds,
                    "Progress line interval when not on a terminal");
    cmd->add_option("--checkpoint-every", o->checkpoint_every,
                    "Worker checkpoints every N steps (and at the end)");
    cmd->add_flag(
        "--resume", o->resume,
        "Resume every worker from its latest checkpoint in RUN/checkpoints (a fresh coordinator is seeded "
        "with the checkpointed global state)");
    auto* link = cmd->add_option_group("links", "Shaped links (docs/link-shaper.md, docs/bandwidth-lab.md)");
    link->add_option(
        "--link-rate", o->link_rate,
        "Put a `lowband link` shaper in front of the coordinator for each worker, with this rate "
        "each way (100mbit, 1gbit, 10mbps = megabytes/s)");
    link->add_option("--link-latency", o->link_latency, "One-way latency each way (20ms)");
    link->add_option("--link-jitter", o->link_jitter, "Uniform jitter added to the latency (2ms)");
    link->add_option("--link-up-rate", o->link_up_rate, "Worker -> coordinator rate (overrides --link-rate)");
    link->add_option("--link-down-rate", o->link_down_rate,
                     "Coordinator -> worker rate (overrides --link-rate)");
    link->add_option(
        "--netns", o->netns,
        "Run inside deploy/netns-lab.sh's namespaces PREFIX-coord, PREFIX-w<i> (set by the script)");
    link->add_option("--netns-rate", o->netns_rate, "The tc tbf rate the lab set (recorded in summary.json)");
    link->add_option(
        "--cpu-per-worker", o->cpu_per_worker,
        "Cap each worker at this many cores (cgroup cpu quota; root), so workers sharing a machine "
        "run at equal speed");
    cmd->callback([flags, o] {
      RunConfig c = Resolve(*flags);
      // launch gives every process its rank and store itself: a torchrun around it must not reach them.
      ::unsetenv("TORCHELASTIC_RUN_ID");
      if (c.run.name == "run") c.run.name = std::filesystem::path(o->out).filename().string();
      o->self = SelfPath();
      auto summary = Launch(c, *o);
      if (!summary.ok()) throw CommandError(summary.status().message());
      fmt::print("\nsummary ({}/summary.json):\n{}", o->out, SummaryTable(*summary));
    });
  }
}

}  // namespace lowband::tools
