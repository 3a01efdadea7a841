#include "tools/launcher.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "comm/link_shaper.h"
#include "comm/metrics.h"
#include "comm/ports.h"
#include "sim/units.h"
#include "tools/command.h"
#include "tools/process.h"

extern char** environ;

namespace lowband::tools {
namespace fs = std::filesystem;
namespace {

volatile std::sig_atomic_t g_interrupted = 0;
constexpr std::chrono::seconds kPortTimeout{30};
void OnSignal(int) { g_interrupted = 1; }

// `self args...` as a child of the run, inside network namespace `netns` (through `ip netns exec`)
// when it is not empty.
StatusOr<Child> SpawnTool(const std::string& name, const std::string& self,
                          const std::vector<std::string>& args, const std::string& log,
                          const std::string& netns = "") {
  std::vector<std::string> argv;
  if (!netns.empty()) argv = {"ip", "netns", "exec", netns};
  argv.push_back(self);
  argv.insert(argv.end(), args.begin(), args.end());
  return Spawn(name, argv, log);
}

// Follows one JSONL file: remembers the offset, parses complete new lines.
class JsonlFollower {
 public:
  explicit JsonlFollower(std::string path) : path_(std::move(path)) {}
  std::vector<nlohmann::json> Poll() {
    std::vector<nlohmann::json> out;
    std::ifstream f(path_);
    if (!f) return out;
    f.seekg(offset_);
    std::string line;
    while (std::getline(f, line)) {
      if (f.eof()) break;  // no newline yet: a partial line, read it next time
      offset_ += static_cast<std::streamoff>(line.size() + 1);
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_discarded()) out.push_back(std::move(j));
    }
    return out;
  }

 private:
  std::string path_;
  std::streamoff offset_ = 0;
};

StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  std::ifstream f(path);
  if (!f) return NotFound("missing " + path);
  auto j = nlohmann::json::parse(f, nullptr, false);
  if (j.is_discarded()) return DataLoss(path + " is not valid JSON");
  return j;
}

}  // namespace

StatusOr<nlohmann::json> Summarize(const std::string& run_dir, const RunConfig& config, int workers,
                                   double wall_seconds) {
  nlohmann::json s;
  s["name"] = config.run.name;
  s["algo"] = config.algo;
  s["workers"] = workers;
  s["steps"] = config.steps;
  s["codec"] = config.algo == "ddp" ? "fp32" : config.codec.format;
  s["codec_block"] = config.codec.block;
  s["H"] = config.diloco.H;
  s["fragments"] = config.diloco.fragments;
  s["tau"] = config.diloco.tau;
  s["late"] = config.diloco.late;
  s["alpha"] = config.diloco.alpha;
  s["error_feedback"] = config.codec.error_feedback;
  s["model"] = config.model.kind;
  s["ranks_per_worker"] = config.site.ranks;
  s["link"] = nullptr;
  uint64_t tokens = 0, up = 0, down = 0, boot = 0;
  double compute = 0, stall = 0, util = 0, encode = 0, apply = 0;
  nlohmann::json per_worker = nlohmann::json::array(), crcs = nlohmann::json::array();
  nlohmann::json worker_steps = nlohmann::json::array();
  bool site_identical = true;
  uint64_t site_bytes = 0;
  for (int i = 0; i < workers; ++i) {
    LOWBAND_ASSIGN_OR_RETURN(nlohmann::json r,
                             ReadJson(fmt::format("{}/metrics/worker-{}-result.json", run_dir, i)));
    tokens += r.value("tokens", uint64_t{0});
    const uint64_t u = r.value("bytes_up", uint64_t{0}), d = r.value("bytes_down", uint64_t{0});
    up += u;
    down += d;
    per_worker.push_back(u + d);
    boot += r.value("bootstrap_bytes", uint64_t{0});
    compute += r.value("compute_seconds", 0.0);
    stall += r.value("stall_seconds", 0.0);
    const double worker_steps_done = r.value("steps", 0.0);
    worker_steps.push_back(worker_steps_done > 0 ? r.value("compute_seconds", 0.0) / worker_steps_done : 0.0);
    util += r.value("compute_utilization", 0.0);
    encode += r.value("encode_seconds", 0.0);
    apply += r.value("apply_seconds", 0.0);
    if (r.contains("global_crc")) crcs.push_back(r["global_crc"]);
    // A site's other ranks: the same parameters and global copy as its leader, and their traffic.
    for (int rank = 1; rank < config.site.ranks; ++rank) {
      LOWBAND_ASSIGN_OR_RETURN(
          const nlohmann::json rr,
          ReadJson(fmt::format("{}/metrics/worker-{}-rank-{}-result.json", run_dir, i, rank)));
      site_identical = site_identical &&
                       rr.value("params_crc", nlohmann::json()) == r.value("params_crc", nlohmann::json()) &&
                       rr.value("global_crc", nlohmann::json()) == r.value("global_crc", nlohmann::json());
      site_bytes +=
          rr.value("site_allreduce_bytes", uint64_t{0}) + rr.value("site_broadcast_bytes", uint64_t{0});
    }
    site_bytes += r.value("site_allreduce_bytes", uint64_t{0}) + r.value("site_broadcast_bytes", uint64_t{0});
    if (i == 0) {
      s["eval_curve"] = r.value("eval_curve", nlohmann::json::array());
      s["final_eval_loss"] = r.value("final_eval_loss", nlohmann::json(nullptr));
      s["final_eval_accuracy"] = r.value("final_eval_accuracy", nlohmann::json(nullptr));
      s["parameters"] = r.value("parameters", 0);
      s["steps"] = r.value("steps", config.steps);
      // The coordinator's fragment layout, as a streaming/diloco worker saw it (ddp has none).
      if (r.contains("fragment_elements")) s["fragment_elements"] = r["fragment_elements"];
    }
  }
  s["tokens"] = tokens;
  if (config.site.ranks > 1) {
    // Every rank of every site ended with its leader's parameters and global copy (CRC32C).
    s["site_state_identical"] = site_identical;
    // Intra-site traffic (all-reduce, ring accounting, and broadcasts), all ranks of all sites: it
    // stays on each site's fast fabric and is not part of bytes_up/bytes_down.
    s["site_bytes"] = site_bytes;
  }
  s["bytes_up"] = up;
  s["bytes_down"] = down;
  s["bytes_per_worker"] = per_worker;
  s["bootstrap_bytes"] = boot;
  s["wall_seconds"] = wall_seconds;
  s["compute_seconds"] = compute / workers;
  s["stall_seconds"] = stall / workers;
  s["compute_utilization"] = util / workers;
  // Mean compute time of one inner step (forward, backward, optimizer): the simulator's step time.
  const double steps_done = s["steps"].is_number() ? s["steps"].get<double>() : 0.0;
  s["step_seconds"] = steps_done > 0 ? compute / workers / steps_done : 0.0;
  // Per worker: workers sharing a machine's cores run at different speeds, and a round waits for
  // the slowest (the simulator takes these as step-time factors).
  s["worker_step_seconds"] = worker_steps;
  if (config.algo != "ddp") {
    // Per sync, on the training thread (mean over workers): encoding an outer gradient, and
    // decoding and merging an update (the simulator's encode_seconds and apply_seconds).
    s["encode_seconds"] = encode / workers;
    s["apply_seconds"] = apply / workers;
    auto coord = ReadJson(run_dir + "/metrics/coordinator-result.json");
    if (coord.ok()) {
      s["coordinator"] = *coord;
      bool same = !crcs.empty();
      for (const auto& c : crcs) same = same && c == (*coord)["global_crc"];
      s["global_state_identical"] = same;
    }
  }
  return s;
}

std::string SummaryTable(const nlohmann::json& s) {
  auto num = [&](const char* k) { return s.contains(k) && s[k].is_number() ? s[k].get<double>() : 0.0; };
  double mean_bytes = 0;
  for (const auto& b : s["bytes_per_worker"]) mean_bytes += b.get<double>();
  if (!s["bytes_per_worker"].empty()) mean_bytes /= static_cast<double>(s["bytes_per_worker"].size());
  std::string out;
  out += fmt::format("  {:<26} {}\n", "run", s.value("name", ""));
  out += fmt::format("  {:<26} {} ({} workers, codec {})\n", "algorithm", s.value("algo", ""),
                     s.value("workers", 0), s.value("codec", ""));
  const bool classifier = s.value("model", "gpt") != "gpt";
  out += fmt::format("  {:<26} {} steps, {} {}\n", "trained", s.value("steps", 0),
                     s.value("tokens", uint64_t{0}), classifier ? "examples" : "tokens");
  out +=
      fmt::format("  {:<26} {}\n", "final held-out loss",
                  s["final_eval_loss"].is_number() ? fmt::format("{:.4f}", num("final_eval_loss")) : "n/a");
  if (s.contains("final_eval_accuracy") && s["final_eval_accuracy"].is_number()) {
    out += fmt::format("  {:<26} {:.2f} %\n", "final held-out accuracy", 100 * num("final_eval_accuracy"));
  }
  out += fmt::format("  {:<26} {} (up {}, down {})\n", "bytes per worker", comm::HumanBytes(mean_bytes),
                     comm::HumanBytes(num("bytes_up") / std::max(1, s.value("workers", 1))),
                     comm::HumanBytes(num("bytes_down") / std::max(1, s.value("workers", 1))));
  out += fmt::format("  {:<26} {}\n", "bootstrap bytes (apart)", comm::HumanBytes(num("bootstrap_bytes")));
  out += fmt::format("  {:<26} {:.1f} s (compute {:.1f} s, stall {:.1f} s per worker)\n", "wall time",
                     num("wall_seconds"), num("compute_seconds"), num("stall_seconds"));
  out += fmt::format("  {:<26} {:.1f} %\n", "compute utilization", 100 * num("compute_utilization"));
  if (s.value("ranks_per_worker", 1) > 1) {
    out += fmt::format("  {:<26} {} ranks each, {} intra-site; ranks identical: {}\n", "sites",
                       s.value("ranks_per_worker", 1), comm::HumanBytes(num("site_bytes")),
                       s.value("site_state_identical", false) ? "yes" : "NO");
  }
  if (s.contains("global_state_identical")) {
    out += fmt::format("  {:<26} {}\n", "global copies identical",
                       s["global_state_identical"].get<bool>() ? "yes (CRC32C of every fragment)" : "NO");
  }
  return out;
}

namespace {

// The addresses of deploy/netns-lab.sh's hosts.
std::string NetnsCoordinatorIp() { return "10.77.0.1"; }
std::string NetnsWorkerIp(int worker) { return fmt::format("10.77.0.{}", 10 + worker); }

// A cgroup (v2 cpu.max, or v1 cpu.cfs_quota_us) capping one process at `cores` CPUs; removed by
// the destructor (after the process has exited). The period is the kernel's default 100 ms: a
// throttled worker sits out the rest of a period, communication threads included (measured in
// docs/bandwidth-lab.md; a shorter period, tried once by hand, made LibTorch's steps several times
// slower).
class CpuCap {
 public:
  static StatusOr<std::unique_ptr<CpuCap>> Create(const std::string& name, double cores) {
    const fs::path v2 = "/sys/fs/cgroup", v1 = "/sys/fs/cgroup/cpu";
    const int64_t period = 100000, quota = std::max<int64_t>(1000, static_cast<int64_t>(cores * period));
    auto cap = std::unique_ptr<CpuCap>(new CpuCap);
    std::error_code ec;
    if (fs::exists(v2 / "cgroup.subtree_control", ec) && fs::exists(v2 / "cpu.max", ec)) {
      cap->dir_ = v2 / name;
      fs::create_directories(cap->dir_, ec);
      if (!ec) ec = Write(cap->dir_ / "cpu.max", fmt::format("{} {}", quota, period));
    } else if (fs::exists(v1 / "cpu.cfs_quota_us", ec)) {
      cap->dir_ = v1 / name;
      fs::create_directories(cap->dir_, ec);
      if (!ec) ec = Write(cap->dir_ / "cpu.cfs_period_us", std::to_string(period));
      if (!ec) ec = Write(cap->dir_ / "cpu.cfs_quota_us", std::to_string(quota));
    } else {
      return FailedPrecondition("--cpu-per-worker needs the Linux cgroup cpu controller (/sys/fs/cgroup)");
    }
    if (ec) {
      return PermissionDenied(fmt::format("--cpu-per-worker: cannot set up cgroup {} ({}); it needs root",
                                          cap->dir_.string(), ec.message()));
    }
    return cap;
  }
  Status Add(pid_t pid) {
    if (auto ec = Write(dir_ / "cgroup.procs", std::to_string(pid))) {
      return PermissionDenied(fmt::format("--cpu-per-worker: cannot move process {} into {}: {}", pid,
                                          dir_.string(), ec.message()));
    }
    return Status::Ok();
  }
  ~CpuCap() {
    std::error_code ec;
    fs::remove(dir_, ec);  // rmdir: succeeds once the process has left (exited)
  }

 private:
  CpuCap() = default;
  static std::error_code Write(const fs::path& file, const std::string& text) {
    std::ofstream f(file);
    f << text;
    f.flush();
    return f ? std::error_code() : std::make_error_code(std::errc::permission_denied);
  }
  fs::path dir_;
};

bool HasLink(const LaunchOptions& o) {
  return !o.link_rate.empty() || !o.link_latency.empty() || !o.link_jitter.empty() ||
         !o.link_up_rate.empty() || !o.link_down_rate.empty();
}

// The link options of `lowband launch` (--link-*, --netns-rate), parsed once.
struct LinkConfig {
  bool shaped = false;                     // a `lowband link` shaper per worker (HasLink)
  std::optional<double> netns_bps;         // the tc tbf rate deploy/netns-lab.sh set (with --netns)
  std::optional<double> rate_bps;          // the shapers' rate both ways; nullopt: none or unlimited
  std::optional<double> up_bps, down_bps;  // per-direction overrides (nullopt: none or unlimited)
  double latency_seconds = 0;
  std::optional<double> jitter_seconds;
};

// Parses the link options; the error names the flag and the text. Reads no file.
StatusOr<LinkConfig> ParseLinkConfig(const LaunchOptions& o) {
  LinkConfig l;
  l.shaped = HasLink(o);
  auto rate = [](const std::string& text, const char* flag, std::optional<double>* out) -> Status {
    if (text.empty()) return Status::Ok();
    auto bps = sim::ParseBandwidth(text);
    if (!bps.ok()) return bps.status().WithContext(flag);
    if (std::isfinite(*bps)) *out = *bps;  // "unlimited": no rate to record
    return Status::Ok();
  };
  if (!o.netns.empty()) LOWBAND_RETURN_IF_ERROR(rate(o.netns_rate, "--netns-rate", &l.netns_bps));
  LOWBAND_RETURN_IF_ERROR(rate(o.link_rate, "--link-rate", &l.rate_bps));
  LOWBAND_RETURN_IF_ERROR(rate(o.link_up_rate, "--link-up-rate", &l.up_bps));
  LOWBAND_RETURN_IF_ERROR(rate(o.link_down_rate, "--link-down-rate", &l.down_bps));
  auto seconds = [](const std::string& text, const char* flag, std::optional<double>* out) -> Status {
    if (text.empty()) return Status::Ok();
    auto s = sim::ParseSeconds(text);
    if (!s.ok()) return s.status().WithContext(flag);
    *out = *s;
    return Status::Ok();
  };
  std::optional<double> latency;
  LOWBAND_RETURN_IF_ERROR(seconds(o.link_latency, "--link-latency", &latency));
  l.latency_seconds = latency.value_or(0.0);
  LOWBAND_RETURN_IF_ERROR(seconds(o.link_jitter, "--link-jitter", &l.jitter_seconds));
  return l;
}

// summary.json's "link" as configured (docs/run-outputs.md); the shapers' counters are added at
// the end of the run. rate_mbit is the rate of the link both ways that the report plots and
// simulates: the shapers' --link-rate when there is one, else the tc tbf rate; the tbf rate is
// also kept under netns_rate_mbit, and per-direction overrides only under up/down_rate_mbit.
nlohmann::json LinkJson(const LaunchOptions& o, const LinkConfig& l) {
  nlohmann::json link;
  if (!o.netns.empty()) {
    link["kind"] = l.shaped ? "netns-tbf+shaper" : "netns-tbf";
  } else {
    link["kind"] = "shaper";
  }
  const auto mbit = [](double bps) { return bps / 1e6; };
  if (l.netns_bps) link["netns_rate_mbit"] = mbit(*l.netns_bps);
  if (l.rate_bps) {
    link["rate_mbit"] = mbit(*l.rate_bps);
  } else if (l.netns_bps) {
    link["rate_mbit"] = mbit(*l.netns_bps);
  }
  if (l.up_bps) link["up_rate_mbit"] = mbit(*l.up_bps);
  if (l.down_bps) link["down_rate_mbit"] = mbit(*l.down_bps);
  link["latency_ms"] = l.latency_seconds * 1e3;
  if (l.jitter_seconds) link["jitter_ms"] = *l.jitter_seconds * 1e3;
  return link;
}

// What each worker's shaper counted (RUN/links/worker-<i>.json, written when it stopped); null for
// a shaper that left no file.
nlohmann::json ShaperStats(const LaunchOptions& o) {
  nlohmann::json shapers = nlohmann::json::array();
  for (int i = 0; i < o.workers; ++i) {
    auto stats = ReadJson(fmt::format("{}/links/worker-{}.json", o.out, i));
    shapers.push_back(stats.ok() ? *stats : nlohmann::json(nullptr));
  }
  return shapers;
}

}  // namespace

StatusOr<nlohmann::json> Launch(const RunConfig& config, const LaunchOptions& o) {
  if (o.workers < 1) return InvalidArgument("--workers must be at least 1");
  const bool ddp = config.algo == "ddp";
  const bool shaped = HasLink(o);
  if (ddp && shaped) {
    return InvalidArgument(
        "--link-* options shape the worker-coordinator links, but ddp's all-reduce runs rank to rank "
        "through Gloo and never passes the coordinator: shape ddp with deploy/netns-lab.sh --rate R "
        "(kernel tbf on every host's link)");
  }
  // Checked before anything starts, so a typo does not cost a run.
  LOWBAND_ASSIGN_OR_RETURN(const LinkConfig link, ParseLinkConfig(o));
  std::error_code ec;
  fs::create_directories(o.out + "/metrics", ec);
  fs::create_directories(o.out + "/logs", ec);
  if (shaped) fs::create_directories(o.out + "/links", ec);
  if (ec) return Unavailable("cannot create run directory '" + o.out + "': " + ec.message());
  const std::string config_path = o.out + "/config.yaml";
  LOWBAND_RETURN_IF_ERROR(WriteYaml(config, config_path));
  for (const auto& entry : fs::directory_iterator(o.out + "/metrics")) fs::remove(entry.path(), ec);
  const bool lab = !o.netns.empty();
  const std::string coord_ns = lab ? o.netns + "-coord" : "";
  auto worker_ns = [&](int i) { return lab ? fmt::format("{}-w{}", o.netns, i) : std::string(); };
  // Gloo binds its device to this interface inside each namespace (the lab's hosts have eth0).
  if (lab) ::setenv("GLOO_SOCKET_IFNAME", "eth0", 1);

  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::vector<Child> children;
  std::vector<std::unique_ptr<CpuCap>> caps;  // destroyed after the children are reaped
  std::optional<size_t> coordinator_child;
  std::vector<size_t> worker_children, shaper_children;
  auto fail = [&](Status s) {
    std::vector<size_t> all(children.size());
    std::iota(all.begin(), all.end(), size_t{0});
    Stop(children, all, std::chrono::milliseconds(500));
    return s;
  };

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::string> common{"--config", config_path, "--workers", std::to_string(o.workers),
                                  "--out",    o.out};
  // What worker i connects to: the ddp store, the coordinator, or its own shaper in front of it.
  std::vector<std::string> endpoints(o.workers);
  if (ddp) {
    const std::string store = lab ? fmt::format("{}:29500", NetnsWorkerIp(0))
                                  : fmt::format("127.0.0.1:{}", comm::FreeLoopbackPort());
    std::fill(endpoints.begin(), endpoints.end(), store);
  } else {
    const std::string host = lab ? NetnsCoordinatorIp() : "127.0.0.1";
    const std::string port_file = o.out + "/coordinator.port";
    fs::remove(port_file, ec);
    std::vector<std::string> args{"coordinator", "--listen", lab ? "0.0.0.0:0" : "127.0.0.1:0",
                                  "--port-file", port_file,  "--exit-when-done"};
    if (!o.http.empty()) args.insert(args.end(), {"--http", o.http});
    args.insert(args.end(), common.begin(), common.end());
    const std::string log = o.out + "/logs/coordinator.log";
    LOWBAND_ASSIGN_OR_RETURN(Child c, SpawnTool("coordinator", o.self, args, log, coord_ns));
    coordinator_child = children.size();
    children.push_back(c);
    auto port = WaitForPortFile(port_file, children, "the coordinator", log, kPortTimeout);
    if (!port.ok()) return fail(port.status());
    const std::string coordinator = fmt::format("{}:{}", host, *port);
    spdlog::info("coordinator listening on {}", coordinator);
    std::fill(endpoints.begin(), endpoints.end(), coordinator);
    // All shapers start at once, then each is waited for: their start-up times overlap.
    auto shaper_port = [&](int i) { return fmt::format("{}/links/worker-{}.port", o.out, i); };
    auto shaper_log = [&](int i) { return fmt::format("{}/logs/link-{}.log", o.out, i); };
    for (int i = 0; shaped && i < o.workers; ++i) {
      fs::remove(shaper_port(i), ec);
      std::vector<std::string> la{
          "link",         "--listen",     host + ":0",
          "--upstream",   coordinator,    "--port-file",
          shaper_port(i), "--stats-json", fmt::format("{}/links/worker-{}.json", o.out, i)};
      auto add = [&](const char* flag, const std::string& v) {
        if (!v.empty()) la.insert(la.end(), {flag, v});
      };
      add("--rate", o.link_rate);
      add("--latency", o.link_latency);
      add("--jitter", o.link_jitter);
      add("--up-rate", o.link_up_rate);
      add("--down-rate", o.link_down_rate);
      if (link.netns_bps && !link.rate_bps && !link.up_bps && !link.down_bps) {
        // The lab's tc tbf sets the rate and this shaper only the latency: size its buffer for the
        // tbf rate's bandwidth-delay product, or the 256 KiB default would cap the path at 256 KiB
        // per latency (105 Mbit/s at 20 ms) below a faster tbf rate.
        comm::LinkDirection d{*link.netns_bps, link.latency_seconds, link.jitter_seconds.value_or(0.0)};
        add("--buffer", std::to_string(comm::AutoBufferBytes(d)));
      }
      auto sc = SpawnTool(fmt::format("link shaper {}", i), o.self, la, shaper_log(i), coord_ns);
      if (!sc.ok()) return fail(sc.status());
      shaper_children.push_back(children.size());
      children.push_back(*sc);
    }
    for (int i = 0; shaped && i < o.workers; ++i) {
      auto sp = WaitForPortFile(shaper_port(i), children, fmt::format("the link shaper of worker {}", i),
                                shaper_log(i), kPortTimeout);
      if (!sp.ok()) return fail(sp.status());
      endpoints[i] = fmt::format("{}:{}", host, *sp);
    }
    if (shaped) {
      spdlog::info("{} link shapers up (rate {}, latency {}); worker 0 connects through {}", o.workers,
                   o.link_rate.empty() ? "unlimited" : o.link_rate,
                   o.link_latency.empty() ? "0" : o.link_latency, endpoints[0]);
    }
  }
  const int ranks = config.site.ranks;
  for (int i = 0; i < o.workers; ++i) {
    // A site's ranks meet at a TCPStore that its rank 0 hosts (on the worker's own host in the lab).
    const std::string site_store = lab ? fmt::format("{}:29600", NetnsWorkerIp(i))
                                       : fmt::format("127.0.0.1:{}", comm::FreeLoopbackPort());
    for (int rank = 0; rank < ranks; ++rank) {
      std::vector<std::string> args{"worker", "--worker-id", std::to_string(i), "--checkpoint-every",
                                    std::to_string(o.checkpoint_every)};
      if (o.resume) args.push_back("--resume");
      args.insert(args.end(), common.begin(), common.end());
      args.insert(args.end(), {ddp ? "--ddp-store" : "--coordinator", endpoints[i]});
      if (ranks > 1) args.insert(args.end(), {"--rank", std::to_string(rank), "--site-store", site_store});
      const std::string id =
          rank == 0 ? fmt::format("worker-{}", i) : fmt::format("worker-{}-rank-{}", i, rank);
      auto c = SpawnTool(rank == 0 ? fmt::format("worker {}", i) : fmt::format("worker {} rank {}", i, rank),
                         o.self, args, fmt::format("{}/logs/{}.log", o.out, id), worker_ns(i));
      if (!c.ok()) return fail(c.status());
      worker_children.push_back(children.size());
      children.push_back(*c);
      if (o.cpu_per_worker > 0) {
        // The cap is the worker's (the site's): its ranks share it.
        auto cap =
            CpuCap::Create(fmt::format("lowband-{}-w{}-r{}", ::getpid(), i, rank), o.cpu_per_worker / ranks);
        Status added = cap.ok() ? (*cap)->Add(c->pid) : cap.status();
        if (!added.ok()) return fail(added);
        caps.push_back(std::move(*cap));
      }
    }
  }
  spdlog::info("{} {} workers started{}; logs in {}/logs, metrics in {}/metrics", o.workers, config.algo,
               ranks > 1 ? fmt::format(" ({} ranks each)", ranks) : "", o.out, o.out);

  std::vector<JsonlFollower> followers;
  for (int i = 0; i < o.workers; ++i)
    followers.emplace_back(fmt::format("{}/metrics/worker-{}.jsonl", o.out, i));
  std::vector<nlohmann::json> last(o.workers);
  const bool tty = ::isatty(STDOUT_FILENO);
  double last_print = -1e9, last_progress_time = 0;
  int64_t last_min_step = -1;
  for (;;) {
    if (g_interrupted) return fail(Aborted("interrupted: stopped every process of the run"));
    if (auto failed = Reap(children)) {
      return fail(Internal(fmt::format("{} failed ({}); the last lines of {}:\n{}", failed->name,
                                       Describe(failed->status), failed->log, Tail(failed->log, 25))));
    }
    bool workers_done = true;
    for (size_t i : worker_children) workers_done = workers_done && children[i].done;
    for (int i = 0; i < o.workers; ++i) {
      for (auto& rec : followers[i].Poll()) {
        if (rec.value("event", "") == "step") last[i] = rec;
      }
    }
    const double now = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int64_t min_step = INT64_MAX;
    double loss = 0, tps = 0, up = 0, down = 0, stall = 0;
    for (const auto& r : last) {
      min_step = std::min<int64_t>(min_step, r.is_null() ? 0 : r.value("step", int64_t{0}));
      if (r.is_null()) continue;
      loss += r.value("loss", 0.0) / o.workers;
      tps += r.value("tokens_per_s", 0.0);
      up += r.value("bytes_up", 0.0);
      down += r.value("bytes_down", 0.0);
      stall += r.value("stall_seconds", 0.0) / o.workers;
    }
    if (min_step != last_min_step) {
      last_min_step = min_step;
      last_progress_time = now;
    } else if (now - last_progress_time > o.stuck_seconds) {
      return fail(DeadlineExceeded(
          fmt::format("no worker progressed for {:.0f} s; see {}/logs", o.stuck_seconds, o.out)));
    }
    if (workers_done || now - last_print >= (tty ? 1.0 : o.progress_seconds)) {
      const double eta =
          min_step > 0 ? now / static_cast<double>(min_step) * static_cast<double>(config.steps - min_step)
                       : 0;
      const std::string line = fmt::format(
          "step {:>6}/{} ({:3.0f}%)  loss {:.4f}  {:>7.0f} tok/s  up {:>9}  down {:>9}  stall {:5.1f}s  ETA "
          "{}",
          min_step, config.steps, 100.0 * static_cast<double>(min_step) / static_cast<double>(config.steps),
          loss, tps, comm::HumanBytes(up / o.workers), comm::HumanBytes(down / o.workers), stall,
          comm::HumanSeconds(eta));
      if (tty) {
        fmt::print("\r{}\033[K", line);
      } else {
        fmt::print("{}\n", line);
      }
      std::fflush(stdout);
      last_print = now;
    }
    if (workers_done) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  if (tty) fmt::print("\n");
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // The coordinator leaves by itself once every worker has left; give it a moment, then ask.
  if (coordinator_child) {
    for (int i = 0; i < 100 && !children[*coordinator_child].done; ++i) {
      Reap(children);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    Stop(children, {*coordinator_child}, std::chrono::seconds(10));
  }
  Stop(children, shaper_children, std::chrono::seconds(10));  // they write their final stats on SIGTERM
  LOWBAND_ASSIGN_OR_RETURN(nlohmann::json summary, Summarize(o.out, config, o.workers, wall));
  if (shaped || lab) {
    summary["link"] = LinkJson(o, link);
    if (shaped) summary["link"]["shapers"] = ShaperStats(o);
  }
  if (o.cpu_per_worker > 0) summary["cpu_per_worker"] = o.cpu_per_worker;
  LOWBAND_RETURN_IF_ERROR(comm::WriteJsonFile(o.out + "/summary.json", summary));
  return summary;
}

}  // namespace lowband::tools
