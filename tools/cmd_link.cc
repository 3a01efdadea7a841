// `lowband link`: one link shaper (comm/link_shaper.h), a TCP proxy with a token-bucket rate and a
// one-way latency in each direction, run until SIGINT/SIGTERM. `lowband launch` starts one per worker
// as `lowband link --listen HOST:0 --port-file F --upstream COORD --rate R --latency L --stats-json S`
// and reads S after stopping it with SIGTERM; keep those flags and that file stable.
#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "comm/link_shaper.h"
#include "comm/metrics.h"
#include "sim/units.h"
#include "tools/command.h"

namespace lowband::tools {

namespace {

constexpr const char* kFooter =
    R"(The link, per direction (up = client -> upstream, down = upstream -> client):
  rate     one token bucket per direction, shared by every connection through this shaper (like one
           real link). tc units: 100mbit, 1gbit, 500kbit, 8000bit are bits/s; 10mbps, 500kbps are
           BYTES/s; kibit/mibit/gibit are powers of 1024; "unlimited" (or no --rate) = no limit; a
           bare number is refused (tc would read it as bytes/s).
           Payload bytes are counted (TCP/IP headers are not).
  latency  one-way propagation delay added after serialization (40ms, 1s, 500us, 0), so a ping's
           round trip grows by up-latency + down-latency.
  jitter   each segment's latency is latency + U(-jitter, +jitter), clamped at 0; bytes within a
           connection are never reordered (a segment waits for its predecessor).
  --rate/--latency/--jitter set both directions; --up-*/--down-* override one direction.

Output:
  every --stats-every, a log line: bytes and goodput each way, active/accepted/failed/reset connections
  --stats-json FILE  (rewritten atomically every period and at exit) the options and counters:
                     listen, port, upstream, up/down {rate_bits_per_second, latency_seconds,
                     jitter_seconds}, bytes_up, bytes_down, connections_accepted/active/failed/reset,
                     buffered_bytes, max_buffered_bytes, max_queue_delay_*_seconds, elapsed_seconds,
                     running (false in the file written at exit)
  --port-file FILE   the bound port, one line, written atomically once listening (use with port 0)
Stops on SIGINT or SIGTERM with exit code 0; bad options exit with code 2.

Examples:
  lowband link --listen 127.0.0.1:6000 --upstream 127.0.0.1:50051 --rate 100mbit --latency 40ms
  lowband link --listen 127.0.0.1:0 --port-file link.port --upstream 10.0.0.5:50051 \
      --rate 10mbit --latency 20ms --jitter 2ms --stats-json link.json
  lowband link --listen :6000 --upstream coord:50051 --up-rate 20mbit --down-rate 100mbit --latency 30ms)";

struct LinkArgs {
  std::string listen = "127.0.0.1:0";
  std::string upstream;
  std::string rate, latency, jitter;
  std::string up_rate, down_rate, up_latency, down_latency, up_jitter, down_jitter;
  std::string stats_every = "5s";
  std::string stats_json;
  std::string port_file;
  std::string connect_timeout = "10s";
  size_t burst = 0;
  size_t buffer = 0;
  uint64_t seed = 1;
};

// A link rate: sim::ParseBandwidth's forms; "unlimited"/"inf" is LinkDirection's 0 (no limit).
StatusOr<double> ParseLinkRate(std::string_view text) {
  LOWBAND_ASSIGN_OR_RETURN(const double bps, sim::ParseBandwidth(text));
  return std::isinf(bps) ? 0.0 : bps;
}

// The value of the first non-empty text, parsed; `fallback` when both are empty.
double ParseOr(const std::string& specific, const std::string& both, double fallback,
               StatusOr<double> (*parse)(std::string_view), const char* flag_specific,
               const char* flag_both) {
  const std::string& text = specific.empty() ? both : specific;
  if (text.empty()) return fallback;
  auto value = parse(text);
  if (!value.ok()) {
    throw CommandError(
        fmt::format("link: {}: {}", specific.empty() ? flag_both : flag_specific, value.status().message()),
        2);
  }
  return *value;
}

nlohmann::json StatsJson(const LinkArgs& args, const comm::LinkShaperOptions& options, int port,
                         const comm::LinkStats& stats, double elapsed, bool running) {
  nlohmann::json j{{"listen", args.listen},
                   {"port", port},
                   {"upstream", options.upstream},
                   {"up", comm::ToJson(options.up)},
                   {"down", comm::ToJson(options.down)},
                   {"seed", options.seed},
                   {"elapsed_seconds", elapsed},
                   {"running", running}};
  j.update(comm::ToJson(stats));
  return j;
}

void RunLink(const LinkArgs& args) {
  // LinkShaper::Start checks the addresses (a missing --upstream, HOST:PORT syntax) and the values;
  // its InvalidArgument ("link shaper: upstream: bad address ...") exits 2 below.
  comm::LinkShaperOptions options;
  options.listen = args.listen;
  options.upstream = args.upstream;
  options.up.rate_bits_per_second = ParseOr(args.up_rate, args.rate, 0, ParseLinkRate, "--up-rate", "--rate");
  options.down.rate_bits_per_second =
      ParseOr(args.down_rate, args.rate, 0, ParseLinkRate, "--down-rate", "--rate");
  options.up.latency_seconds =
      ParseOr(args.up_latency, args.latency, 0, sim::ParseSeconds, "--up-latency", "--latency");
  options.down.latency_seconds =
      ParseOr(args.down_latency, args.latency, 0, sim::ParseSeconds, "--down-latency", "--latency");
  options.up.jitter_seconds =
      ParseOr(args.up_jitter, args.jitter, 0, sim::ParseSeconds, "--up-jitter", "--jitter");
  options.down.jitter_seconds =
      ParseOr(args.down_jitter, args.jitter, 0, sim::ParseSeconds, "--down-jitter", "--jitter");
  options.connect_timeout_seconds =
      ParseOr(args.connect_timeout, "", 10, sim::ParseSeconds, "--connect-timeout", "--connect-timeout");
  const double stats_every =
      ParseOr(args.stats_every, "", 5, sim::ParseSeconds, "--stats-every", "--stats-every");
  options.seed = args.seed;
  options.burst_bytes = args.burst;
  options.buffer_bytes = args.buffer;

  // Block the stop signals before the shaper's thread exists (it inherits the mask), so that only
  // the sigtimedwait below takes them and a SIGTERM that comes early still ends in a clean exit.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto started = comm::LinkShaper::Start(options);
  if (!started.ok()) {
    const int code = started.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
    throw CommandError(started.status().message(), code);  // "link shaper: ..."
  }
  std::unique_ptr<comm::LinkShaper> shaper = std::move(started).value();
  const int port = shaper->port();
  if (!args.port_file.empty()) {
    const Status st = WritePortFile(args.port_file, port);
    if (!st.ok()) throw CommandError("link: --port-file: " + st.message());
  }

  const comm::RunClock clock;
  auto write_json = [&](bool running) {
    if (args.stats_json.empty()) return;
    const Status st = comm::WriteJsonFile(
        args.stats_json, StatsJson(args, options, port, shaper->stats(), clock.Elapsed(), running));
    if (!st.ok()) spdlog::warn("link: --stats-json: {}", st.message());
  };
  write_json(true);

  comm::LinkStats last = shaper->stats();
  double last_time = clock.Elapsed();
  auto log_stats = [&] {
    const comm::LinkStats now = shaper->stats();
    const double t = clock.Elapsed();
    const double dt = std::max(t - last_time, 1e-9);
    spdlog::info(
        "link: up {} ({:.3f} Mbit/s), down {} ({:.3f} Mbit/s); connections: {} active, {} accepted, {} "
        "failed, {} "
        "reset",
        comm::HumanBytes(static_cast<double>(now.bytes_up)),
        static_cast<double>(now.bytes_up - last.bytes_up) * 8 / dt / 1e6,
        comm::HumanBytes(static_cast<double>(now.bytes_down)),
        static_cast<double>(now.bytes_down - last.bytes_down) * 8 / dt / 1e6, now.connections_active,
        now.connections_accepted, now.connections_failed, now.connections_reset);
    last = now;
    last_time = t;
  };

  // Wake up every stats period (or every second to just wait for a signal).
  const double period = stats_every > 0 ? stats_every : 1.0;
  double next = period;
  int received = 0;
  while (received == 0) {
    const double wait = std::max(0.0, next - clock.Elapsed());
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(wait);
    ts.tv_nsec = static_cast<long>((wait - static_cast<double>(ts.tv_sec)) * 1e9);
    const int sig = sigtimedwait(&stop_signals, nullptr, &ts);
    if (sig > 0) {
      received = sig;
      break;
    }
    if (sig < 0 && errno != EAGAIN && errno != EINTR) {
      spdlog::error("link: waiting for signals failed: {}", std::strerror(errno));
      break;
    }
    if (clock.Elapsed() >= next) {
      next += period;
      if (stats_every > 0) {
        log_stats();
        write_json(true);
      }
    }
  }
  spdlog::info("link: {} received, stopping", received == SIGINT    ? "SIGINT"
                                              : received == SIGTERM ? "SIGTERM"
                                                                    : "?");
  shaper->Stop();
  log_stats();
  write_json(false);
}

}  // namespace

void RegisterLink(CLI::App& app) {
  auto args = std::make_shared<LinkArgs>();
  auto* cmd = app.add_subcommand("link",
                                 "Run a link shaper: a TCP proxy with a token-bucket rate and a one-way "
                                 "latency (+ jitter) per direction");
  cmd->footer(kFooter);
  cmd->add_option("--listen", args->listen,
                  "Address to listen on, HOST:PORT ([V6]:PORT; port 0 picks a free one)")
      ->capture_default_str();
  cmd->add_option("--upstream", args->upstream, "Where connections are forwarded, HOST:PORT (required)");
  cmd->add_option("--rate", args->rate,
                  "Rate of both directions, tc units (100mbit, 10mbps = bytes/s; unlimited)");
  cmd->add_option("--latency", args->latency, "One-way latency of both directions (40ms, 1s, 500us)");
  cmd->add_option("--jitter", args->jitter, "Latency jitter of both directions: U(-J, +J) per segment");
  cmd->add_option("--up-rate", args->up_rate, "Rate client -> upstream (overrides --rate)");
  cmd->add_option("--down-rate", args->down_rate, "Rate upstream -> client (overrides --rate)");
  cmd->add_option("--up-latency", args->up_latency, "Latency client -> upstream (overrides --latency)");
  cmd->add_option("--down-latency", args->down_latency, "Latency upstream -> client (overrides --latency)");
  cmd->add_option("--up-jitter", args->up_jitter, "Jitter client -> upstream (overrides --jitter)");
  cmd->add_option("--down-jitter", args->down_jitter, "Jitter upstream -> client (overrides --jitter)");
  cmd->add_option("--burst", args->burst,
                  "Token-bucket depth in bytes, each direction (0: max(3000, rate x 1 ms))")
      ->capture_default_str();
  cmd->add_option("--buffer", args->buffer,
                  "Bytes one connection may hold per direction before the shaper stops reading (0: rate x "
                  "(latency + jitter + 50 ms) + 256 KiB)")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "Seed of the jitter draws")->capture_default_str();
  cmd->add_option("--connect-timeout", args->connect_timeout, "Time an upstream connect may take")
      ->capture_default_str();
  cmd->add_option("--stats-every", args->stats_every,
                  "Period of the stats log line and --stats-json (0: at exit only)")
      ->capture_default_str();
  cmd->add_option("--stats-json", args->stats_json,
                  "Write options and counters here (atomically) every period and at exit");
  cmd->add_option("--port-file", args->port_file, "Write the bound port here (atomically) once listening");
  cmd->callback([args] { RunLink(*args); });
}

}  // namespace lowband::tools
