#include "comm/link_shaper.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <deque>
#include <random>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio.hpp>
#include <nlohmann/json.hpp>

namespace lowband::comm {

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

constexpr size_t kReadChunk = 64 * 1024;       // one read from a socket
constexpr size_t kMinSegment = 1500;           // an Ethernet MTU
constexpr size_t kMaxSegment = 64 * 1024;      // keeps pacing smooth at high rates
constexpr size_t kMaxWriteBytes = 256 * 1024;  // one gathered write
constexpr size_t kMaxWriteSegments = 64;
constexpr size_t kMinReadSpace = 4 * 1024;  // resume reading a paused side once this much is free
constexpr size_t kMinBuffer = 64 * 1024;
constexpr size_t kBufferSlack = 256 * 1024;
constexpr double kBufferExtraSeconds = 0.050;

std::string_view Trim(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
  return text;
}

// Per-direction counters that the io thread writes and any thread reads.
struct DirectionCounters {
  std::atomic<uint64_t> delivered{0};
  std::atomic<int64_t> max_queue_ns{0};
};

struct Counters {
  DirectionCounters up, down;
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> active{0};
  std::atomic<uint64_t> failed{0};
  std::atomic<uint64_t> reset{0};
  std::atomic<uint64_t> buffered{0};
  std::atomic<uint64_t> max_buffered{0};
};

// Times are doubles in seconds since the shaper's epoch: the token bucket's arithmetic stays exact
// to well under a nanosecond for days, and needs no duration casts.
class TimeBase {
 public:
  TimeBase() : epoch_(Clock::now()) {}
  double Now() const { return ToSeconds(Clock::now()); }
  double ToSeconds(Clock::time_point t) const { return std::chrono::duration<double>(t - epoch_).count(); }
  Clock::time_point ToTimePoint(double seconds) const {
    return epoch_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  }

 private:
  Clock::time_point epoch_;
};

struct Segment {
  std::vector<char> data;
  double arrival = 0;  // when the shaper read it
  double release = 0;  // when it may be written to the receiver (set by the serializer)
};

class Connection;
class LinkQueue;

// One direction of one connection: reads from `src`, holds the bytes while the link carries them,
// writes them to `dst`.
struct Pipe {
  explicit Pipe(asio::io_context& io) : release_timer(io) {}

  tcp::socket* src = nullptr;
  tcp::socket* dst = nullptr;
  LinkQueue* link = nullptr;
  size_t capacity = 0;
  std::vector<char> read_buf;
  std::deque<Segment> waiting;  // read, not yet serialized (FIFO)
  std::deque<Segment> delayed;  // serialized, in release order
  size_t buffered = 0;          // bytes in waiting + delayed
  double last_release = 0;
  bool reading = false;
  bool writing = false;
  bool eof = false;     // src finished sending
  bool shut = false;    // dst's sending half is shut down: this direction is done
  bool queued = false;  // in the link's ready list
  size_t write_segments = 0;
  asio::steady_timer release_timer;
  bool release_armed = false;
};

// The serializer of one direction of the link: one token bucket shared by every connection.
class LinkQueue {
 public:
  LinkQueue(asio::io_context& io, const TimeBase& time, const LinkDirection& config, size_t burst,
            uint64_t seed, DirectionCounters& counters)
      : time_(time),
        timer_(io),
        seconds_per_byte_(config.rate_bits_per_second > 0 ? 8.0 / config.rate_bits_per_second : 0.0),
        tau_(config.rate_bits_per_second > 0 ? static_cast<double>(burst) * 8.0 / config.rate_bits_per_second
                                             : 0.0),
        latency_(config.latency_seconds),
        jitter_(config.jitter_seconds),
        rng_(seed),
        counters_(counters) {
    // Segments of about 1 ms of link time (an MTU at least): fine enough for smooth pacing, coarse
    // enough that 1 Gbit/s is a few thousand segments a second; never above the bucket depth.
    const auto per_ms = static_cast<size_t>(config.rate_bits_per_second / 8.0 / 1000.0);
    segment_bytes_ =
        config.rate_bits_per_second > 0 ? std::clamp(per_ms, kMinSegment, kMaxSegment) : kReadChunk;
    if (config.rate_bits_per_second > 0)
      segment_bytes_ = std::max<size_t>(1, std::min(segment_bytes_, burst));
  }

  size_t segment_bytes() const { return segment_bytes_; }

  // `pipe` (owned by `conn`) has segments waiting for the serializer.
  void Enqueue(std::shared_ptr<Connection> conn, Pipe* pipe) {
    if (!pipe->queued) {
      pipe->queued = true;
      ready_.emplace_back(std::move(conn), pipe);
    }
    if (!timer_armed_) Pump();
  }

  void Shutdown() {
    timer_.cancel();
    ready_.clear();
  }

 private:
  void Pump();

  void Arm(double at) {
    timer_armed_ = true;
    timer_.expires_at(time_.ToTimePoint(at));
    timer_.async_wait([this](const error_code& ec) {
      timer_armed_ = false;
      if (!ec) Pump();
    });
  }

  double DrawLatency() {
    if (jitter_ <= 0) return latency_;
    std::uniform_real_distribution<double> u(-jitter_, jitter_);
    return std::max(0.0, latency_ + u(rng_));
  }

  const TimeBase& time_;
  asio::steady_timer timer_;
  bool timer_armed_ = false;
  const double seconds_per_byte_;  // 0: unlimited
  const double tau_;               // bucket depth in seconds of link time
  const double latency_;
  const double jitter_;
  size_t segment_bytes_ = kMinSegment;
  double tat_ = 0;  // the bucket's theoretical arrival time (GCRA)
  std::mt19937_64 rng_;
  DirectionCounters& counters_;
  std::deque<std::pair<std::shared_ptr<Connection>, Pipe*>> ready_;
};

// The shaper's state, all of it owned by the io thread once Start returns.
class ShaperCore {
 public:
  ShaperCore(const LinkShaperOptions& options, size_t burst_up, size_t burst_down, size_t buffer_up,
             size_t buffer_down)
      : options_(options),
        acceptor_(io_),
        accept_retry_(io_),
        up_(io_, time_, options.up, burst_up, options.seed * 2 + 1, counters_.up),
        down_(io_, time_, options.down, burst_down, options.seed * 2 + 2, counters_.down),
        burst_up_(burst_up),
        burst_down_(burst_down),
        buffer_up_(buffer_up),
        buffer_down_(buffer_down) {}

  asio::io_context& io() { return io_; }
  const TimeBase& time() const { return time_; }
  const LinkShaperOptions& options() const { return options_; }
  Counters& counters() { return counters_; }
  LinkQueue& up() { return up_; }
  LinkQueue& down() { return down_; }
  size_t buffer_up() const { return buffer_up_; }
  size_t buffer_down() const { return buffer_down_; }
  const tcp::resolver::results_type& upstream() const { return upstream_; }

  Status Open(const tcp::endpoint& listen, tcp::resolver::results_type upstream);
  void Run();
  void Stop();
  void Remove(const std::shared_ptr<Connection>& conn) {
    if (connections_.erase(conn) > 0) counters_.active.fetch_sub(1);
  }
  int port() const { return port_.load(); }
  LinkStats Stats() const;

  void AddBuffered(size_t n, size_t pipe_total) {
    counters_.buffered.fetch_add(n);
    if (pipe_total > counters_.max_buffered.load()) counters_.max_buffered.store(pipe_total);
  }
  void SubBuffered(size_t n) { counters_.buffered.fetch_sub(n); }

 private:
  void Accept();

  LinkShaperOptions options_;
  TimeBase time_;
  Counters counters_;
  asio::io_context io_;  // declared before everything that holds a reference to it
  tcp::acceptor acceptor_;
  asio::steady_timer accept_retry_;
  LinkQueue up_;
  LinkQueue down_;
  size_t burst_up_, burst_down_, buffer_up_, buffer_down_;
  tcp::resolver::results_type upstream_;
  std::unordered_set<std::shared_ptr<Connection>> connections_;
  uint64_t next_id_ = 0;
  std::atomic<int> port_{0};
  std::thread thread_;
  std::atomic<bool> stopped_{false};
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(ShaperCore& core, tcp::socket client, uint64_t id)
      : core_(core),
        id_(id),
        client_(std::move(client)),
        upstream_(core.io()),
        connect_timer_(core.io()),
        up_(core.io()),
        down_(core.io()) {
    error_code ec;
    const auto peer = client_.remote_endpoint(ec);
    peer_ = ec ? std::string("?") : fmt::format("{}:{}", peer.address().to_string(), peer.port());
    Wire(up_, &client_, &upstream_, &core.up(), core.buffer_up());
    Wire(down_, &upstream_, &client_, &core.down(), core.buffer_down());
  }

  bool closed() const { return closed_; }

  void Begin() {
    error_code ignored;
    client_.set_option(tcp::no_delay(true), ignored);
    auto self = shared_from_this();
    connect_timer_.expires_after(std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(core_.options().connect_timeout_seconds)));
    connect_timer_.async_wait([self](const error_code& ec) {
      if (ec || self->connected_ || self->closed_) return;
      self->connect_timed_out_ = true;
      error_code ignored2;
      self->upstream_.close(ignored2);  // completes the connect with operation_aborted
    });
    asio::async_connect(upstream_, core_.upstream(),
                        [self](const error_code& ec, const tcp::endpoint&) { self->OnConnect(ec); });
  }

  // The serializer moved a segment of `pipe` into its delay line.
  void OnSerialized(Pipe& pipe) { Write(pipe); }

  // Resets both sides (RST) and forgets the connection. `count` is false for a shaper shutdown.
  void Abort(const std::string& why, bool count) {
    if (closed_) return;
    closed_ = true;
    Reset(client_);
    Reset(upstream_);
    Release();
    if (count) {
      core_.counters().reset.fetch_add(1);
      spdlog::info("link: connection {} from {} reset: {} (delivered up {} B, down {} B)", id_, peer_, why,
                   delivered_up_, delivered_down_);
    } else {
      spdlog::debug("link: connection {} from {} closed: {}", id_, peer_, why);
    }
  }

 private:
  static void Wire(Pipe& p, tcp::socket* src, tcp::socket* dst, LinkQueue* link, size_t capacity) {
    p.src = src;
    p.dst = dst;
    p.link = link;
    p.capacity = capacity;
    p.read_buf.resize(std::min(kReadChunk, capacity));
  }

  static void Reset(tcp::socket& s) {
    error_code ignored;
    if (!s.is_open()) return;
    s.set_option(asio::socket_base::linger(true, 0), ignored);  // close() then sends an RST
    s.close(ignored);
  }

  // Cancels what is pending and drops the connection from the shaper; the handlers still queued hold
  // the last references and see closed_.
  void Release() {
    connect_timer_.cancel();
    up_.release_timer.cancel();
    down_.release_timer.cancel();
    core_.SubBuffered(up_.buffered + down_.buffered);
    up_.buffered = 0;
    down_.buffered = 0;
    core_.Remove(shared_from_this());
  }

  void OnConnect(const error_code& ec) {
    connect_timer_.cancel();
    if (closed_) return;
    if (ec) {
      closed_ = true;
      Reset(client_);
      Reset(upstream_);
      Release();
      core_.counters().failed.fetch_add(1);
      spdlog::warn("link: cannot connect to upstream {} ({}); resetting client {}", core_.options().upstream,
                   connect_timed_out_
                       ? fmt::format("timed out after {} s", core_.options().connect_timeout_seconds)
                       : ec.message(),
                   peer_);
      return;
    }
    connected_ = true;
    error_code ignored;
    upstream_.set_option(tcp::no_delay(true), ignored);
    spdlog::debug("link: connection {} from {} connected to {}", id_, peer_, core_.options().upstream);
    Read(up_);
    Read(down_);
  }

  void Read(Pipe& p) {
    if (closed_ || p.reading || p.eof) return;
    const size_t space = p.capacity - p.buffered;
    if (space == 0 || (p.buffered > 0 && space < std::min(kMinReadSpace, p.capacity))) return;  // paused
    const size_t want = std::min(space, p.read_buf.size());
    p.reading = true;
    p.src->async_read_some(
        asio::buffer(p.read_buf.data(), want),
        [self = shared_from_this(), &p](const error_code& ec, size_t n) { self->OnRead(p, ec, n); });
  }

  void OnRead(Pipe& p, const error_code& ec, size_t n) {
    p.reading = false;
    if (closed_) return;
    if (n > 0) {
      const double now = core_.time().Now();
      const size_t seg = p.link->segment_bytes();
      for (size_t off = 0; off < n; off += seg) {
        const size_t len = std::min(seg, n - off);
        Segment s;
        s.data.assign(p.read_buf.begin() + static_cast<std::ptrdiff_t>(off),
                      p.read_buf.begin() + static_cast<std::ptrdiff_t>(off + len));
        s.arrival = now;
        p.waiting.push_back(std::move(s));
      }
      p.buffered += n;
      core_.AddBuffered(n, p.buffered);
      p.link->Enqueue(shared_from_this(), &p);
    }
    if (ec == asio::error::eof) {
      p.eof = true;
      spdlog::debug("link: connection {} from {}: {} side finished sending", id_, peer_,
                    &p == &up_ ? "client" : "upstream");
      MaybeFinish(p);
      return;
    }
    if (ec) {
      Abort(fmt::format("{} read failed: {}", &p == &up_ ? "client" : "upstream", ec.message()), true);
      return;
    }
    Read(p);
  }

  void Write(Pipe& p) {
    if (closed_ || p.writing) return;
    if (p.delayed.empty()) {
      MaybeFinish(p);
      return;
    }
    const double now = core_.time().Now();
    if (p.delayed.front().release > now) {
      ArmRelease(p, p.delayed.front().release);
      return;
    }
    std::vector<asio::const_buffer> buffers;
    size_t bytes = 0;
    for (const Segment& s : p.delayed) {
      if (s.release > now || buffers.size() >= kMaxWriteSegments || bytes >= kMaxWriteBytes) break;
      buffers.emplace_back(asio::buffer(s.data));
      bytes += s.data.size();
    }
    p.writing = true;
    p.write_segments = buffers.size();
    asio::async_write(*p.dst, buffers, [self = shared_from_this(), &p](const error_code& ec, size_t n) {
      self->OnWrite(p, ec, n);
    });
  }

  void OnWrite(Pipe& p, const error_code& ec, size_t n) {
    p.writing = false;
    if (closed_) return;
    if (ec) {
      Abort(fmt::format("writing to the {} failed: {}", &p == &up_ ? "upstream" : "client", ec.message()),
            true);
      return;
    }
    for (size_t i = 0; i < p.write_segments; ++i) p.delayed.pop_front();
    p.write_segments = 0;
    p.buffered -= n;
    core_.SubBuffered(n);
    if (&p == &up_) {
      delivered_up_ += n;
      core_.counters().up.delivered.fetch_add(n);
    } else {
      delivered_down_ += n;
      core_.counters().down.delivered.fetch_add(n);
    }
    Read(p);  // resumes a paused sender
    Write(p);
  }

  void ArmRelease(Pipe& p, double at) {
    // Releases are monotone within a pipe, so an armed timer is never later than the new front.
    if (p.release_armed) return;
    p.release_armed = true;
    p.release_timer.expires_at(core_.time().ToTimePoint(at));
    p.release_timer.async_wait([self = shared_from_this(), &p](const error_code& ec) {
      p.release_armed = false;
      if (!ec) self->Write(p);
    });
  }

  // After the sender's EOF, once everything queued is delivered: shut down the receiver's sending
  // half; the connection is done when both directions are.
  void MaybeFinish(Pipe& p) {
    if (closed_ || !p.eof || p.shut || p.writing || !p.waiting.empty() || !p.delayed.empty()) return;
    p.shut = true;
    error_code ec;
    p.dst->shutdown(tcp::socket::shutdown_send, ec);
    if (ec) {
      Abort(fmt::format("shutting down the {}'s receiving direction failed: {}",
                        &p == &up_ ? "upstream" : "client", ec.message()),
            true);
      return;
    }
    if (up_.shut && down_.shut) {
      closed_ = true;
      spdlog::debug("link: connection {} from {} done (delivered up {} B, down {} B)", id_, peer_,
                    delivered_up_, delivered_down_);
      error_code ignored;
      client_.close(ignored);
      upstream_.close(ignored);
      Release();
    }
  }

  ShaperCore& core_;
  const uint64_t id_;
  std::string peer_;
  tcp::socket client_;
  tcp::socket upstream_;
  asio::steady_timer connect_timer_;
  Pipe up_;    // client_ -> upstream_
  Pipe down_;  // upstream_ -> client_
  bool connected_ = false;
  bool connect_timed_out_ = false;
  bool closed_ = false;
  uint64_t delivered_up_ = 0;
  uint64_t delivered_down_ = 0;
};

void LinkQueue::Pump() {
  const double now = time_.Now();
  while (!ready_.empty()) {
    auto [conn, pipe] = ready_.front();
    ready_.pop_front();
    if (conn->closed() || pipe->waiting.empty()) {
      pipe->queued = false;
      continue;
    }
    Segment& s = pipe->waiting.front();
    double depart = s.arrival;
    if (seconds_per_byte_ > 0) {
      const double tat = std::max(tat_, s.arrival) + static_cast<double>(s.data.size()) * seconds_per_byte_;
      depart = std::max(s.arrival, tat - tau_);
      if (depart > now) {
        ready_.emplace_front(std::move(conn), pipe);
        Arm(depart);
        return;
      }
      tat_ = tat;
      const auto queue_ns = static_cast<int64_t>((depart - s.arrival) * 1e9);
      if (queue_ns > counters_.max_queue_ns.load()) counters_.max_queue_ns.store(queue_ns);
    }
    s.release = std::max(depart + DrawLatency(), pipe->last_release);
    pipe->last_release = s.release;
    pipe->delayed.push_back(std::move(s));
    pipe->waiting.pop_front();
    if (pipe->waiting.empty()) {
      pipe->queued = false;
    } else {
      ready_.emplace_back(conn, pipe);  // round-robin between connections
    }
    conn->OnSerialized(*pipe);
  }
}

Status ShaperCore::Open(const tcp::endpoint& listen, tcp::resolver::results_type upstream) {
  upstream_ = std::move(upstream);
  error_code ec;
  acceptor_.open(listen.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(listen, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    const std::string resolved = fmt::format("{}:{}", listen.address().to_string(), listen.port());
    return Unavailable(fmt::format("link shaper: cannot listen on {}{}: {}", options_.listen,
                                   resolved == options_.listen ? "" : " (" + resolved + ")", ec.message()));
  }
  port_.store(acceptor_.local_endpoint(ec).port());
  Accept();
  return Status::Ok();
}

void ShaperCore::Accept() {
  acceptor_.async_accept([this](const error_code& ec, tcp::socket socket) {
    if (stopped_.load() || ec == asio::error::operation_aborted) return;
    if (ec) {
      // Out of file descriptors and the like: back off instead of spinning.
      spdlog::warn("link: accept on {} failed: {}; retrying in 100 ms", options_.listen, ec.message());
      accept_retry_.expires_after(std::chrono::milliseconds(100));
      accept_retry_.async_wait([this](const error_code& wec) {
        if (!wec && !stopped_.load()) Accept();
      });
      return;
    }
    counters_.accepted.fetch_add(1);
    counters_.active.fetch_add(1);
    auto conn = std::make_shared<Connection>(*this, std::move(socket), ++next_id_);
    connections_.insert(conn);
    conn->Begin();
    Accept();
  });
}

void ShaperCore::Run() {
  thread_ = std::thread([this] {
    try {
      io_.run();
    } catch (const std::exception& e) {
      spdlog::error("link: shaper thread stopped by an exception: {}", e.what());
    }
  });
}

void ShaperCore::Stop() {
  if (stopped_.exchange(true)) return;
  asio::post(io_, [this] {
    error_code ignored;
    acceptor_.close(ignored);
    accept_retry_.cancel();
    const std::vector<std::shared_ptr<Connection>> all(connections_.begin(), connections_.end());
    for (const auto& conn : all) conn->Abort("the shaper is stopping", false);
    up_.Shutdown();
    down_.Shutdown();
    io_.stop();
  });
  if (thread_.joinable()) thread_.join();
  // Run the cancelled handlers (they see closed connections and return) so that every connection is
  // freed here, before the members they refer to.
  io_.restart();
  io_.poll();
  connections_.clear();
}

LinkStats ShaperCore::Stats() const {
  LinkStats s;
  s.bytes_up = counters_.up.delivered.load();
  s.bytes_down = counters_.down.delivered.load();
  s.connections_accepted = counters_.accepted.load();
  s.connections_active = counters_.active.load();
  s.connections_failed = counters_.failed.load();
  s.connections_reset = counters_.reset.load();
  s.buffered_bytes = counters_.buffered.load();
  s.max_buffered_bytes = counters_.max_buffered.load();
  s.buffer_bytes_up = buffer_up_;
  s.buffer_bytes_down = buffer_down_;
  s.burst_bytes_up = burst_up_;
  s.burst_bytes_down = burst_down_;
  s.max_queue_delay_up_seconds = static_cast<double>(counters_.up.max_queue_ns.load()) * 1e-9;
  s.max_queue_delay_down_seconds = static_cast<double>(counters_.down.max_queue_ns.load()) * 1e-9;
  return s;
}

Status CheckDirection(const LinkDirection& d, const char* name) {
  auto bad = [](double v) { return !std::isfinite(v) || v < 0; };
  if (bad(d.rate_bits_per_second)) {
    return InvalidArgument(fmt::format("link shaper: {} rate must be >= 0 bits/s (0 = unlimited), got {}",
                                       name, d.rate_bits_per_second));
  }
  if (d.rate_bits_per_second > 0 && d.rate_bits_per_second < 8) {
    return InvalidArgument(fmt::format("link shaper: {} rate {} bits/s is below one byte per second", name,
                                       d.rate_bits_per_second));
  }
  if (bad(d.latency_seconds) || d.latency_seconds > 3600) {
    return InvalidArgument(
        fmt::format("link shaper: {} latency must be in [0, 3600] s, got {}", name, d.latency_seconds));
  }
  if (bad(d.jitter_seconds) || d.jitter_seconds > 3600) {
    return InvalidArgument(
        fmt::format("link shaper: {} jitter must be in [0, 3600] s, got {}", name, d.jitter_seconds));
  }
  return Status::Ok();
}

size_t AutoBurst(const LinkDirection& d) {
  if (d.rate_bits_per_second <= 0) return 0;  // unlimited: no bucket
  return std::max<size_t>(2 * kMinSegment, static_cast<size_t>(d.rate_bits_per_second / 8.0 * 1e-3));
}

// "10 Mbit/s, 20 ms +- 2 ms" for logs.
std::string Describe(const LinkDirection& d) {
  std::string out = d.rate_bits_per_second > 0 ? fmt::format("{:g} Mbit/s", d.rate_bits_per_second / 1e6)
                                               : std::string("unlimited rate");
  out += fmt::format(", {:g} ms", d.latency_seconds * 1e3);
  if (d.jitter_seconds > 0) out += fmt::format(" +- {:g} ms", d.jitter_seconds * 1e3);
  return out;
}

StatusOr<tcp::endpoint> ResolveListen(asio::io_context& io, const std::string& text) {
  std::string host;
  uint16_t port = 0;
  LOWBAND_RETURN_IF_ERROR(SplitHostPort(text, &host, &port).WithContext("link shaper: listen"));
  if (host.empty()) return tcp::endpoint(tcp::v4(), port);
  error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (!ec) return tcp::endpoint(address, port);
  tcp::resolver resolver(io);
  const auto results = resolver.resolve(host, std::to_string(port), tcp::resolver::passive, ec);
  if (ec || results.empty()) {
    return Unavailable(fmt::format("link shaper: cannot resolve listen address '{}': {}", text,
                                   ec ? ec.message() : std::string("no addresses")));
  }
  return results.begin()->endpoint();
}

}  // namespace

size_t AutoBufferBytes(const LinkDirection& d) {
  const double in_flight =
      d.rate_bits_per_second / 8.0 * (d.latency_seconds + d.jitter_seconds + kBufferExtraSeconds);
  return std::max(kMinBuffer, static_cast<size_t>(in_flight) + kBufferSlack);
}

class LinkShaper::Impl {
 public:
  template <typename... Args>
  explicit Impl(Args&&... args) : core(std::forward<Args>(args)...) {}
  ShaperCore core;
};

StatusOr<std::unique_ptr<LinkShaper>> LinkShaper::Start(const LinkShaperOptions& options) {
  LOWBAND_RETURN_IF_ERROR(CheckDirection(options.up, "up"));
  LOWBAND_RETURN_IF_ERROR(CheckDirection(options.down, "down"));
  if (options.upstream.empty()) {
    return InvalidArgument("link shaper: no upstream given: set it to the HOST:PORT the connections go to");
  }
  if (!std::isfinite(options.connect_timeout_seconds) || options.connect_timeout_seconds <= 0) {
    return InvalidArgument(
        fmt::format("link shaper: connect timeout must be > 0 s, got {}", options.connect_timeout_seconds));
  }
  std::string up_host;
  uint16_t up_port = 0;
  LOWBAND_RETURN_IF_ERROR(
      SplitHostPort(options.upstream, &up_host, &up_port).WithContext("link shaper: upstream"));
  if (up_host.empty() || up_port == 0) {
    return InvalidArgument(
        fmt::format("link shaper: upstream '{}' needs a host and a port other than 0, e.g. "
                    "127.0.0.1:50051",
                    options.upstream));
  }
  const size_t burst_up = options.burst_bytes > 0 ? options.burst_bytes : AutoBurst(options.up);
  const size_t burst_down = options.burst_bytes > 0 ? options.burst_bytes : AutoBurst(options.down);
  const size_t buffer_up = options.buffer_bytes > 0 ? options.buffer_bytes : AutoBufferBytes(options.up);
  const size_t buffer_down = options.buffer_bytes > 0 ? options.buffer_bytes : AutoBufferBytes(options.down);

  auto impl = std::make_unique<Impl>(options, burst_up, burst_down, buffer_up, buffer_down);
  ShaperCore& core = impl->core;
  LOWBAND_ASSIGN_OR_RETURN(const tcp::endpoint listen, ResolveListen(core.io(), options.listen));
  tcp::resolver resolver(core.io());
  error_code ec;
  auto upstream = resolver.resolve(up_host, std::to_string(up_port), ec);
  if (ec || upstream.empty()) {
    return Unavailable(fmt::format("link shaper: cannot resolve upstream '{}': {}", options.upstream,
                                   ec ? ec.message() : std::string("no addresses")));
  }
  LOWBAND_RETURN_IF_ERROR(core.Open(listen, std::move(upstream)));
  core.Run();
  spdlog::info(
      "link: listening on {} (port {}) -> {}; up: {}; down: {}; burst {}/{} B, buffer {}/{} B per connection",
      options.listen, core.port(), options.upstream, Describe(options.up), Describe(options.down), burst_up,
      burst_down, buffer_up, buffer_down);
  return std::unique_ptr<LinkShaper>(new LinkShaper(std::move(impl)));
}

LinkShaper::LinkShaper(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

LinkShaper::~LinkShaper() { Stop(); }

int LinkShaper::port() const { return impl_->core.port(); }

LinkStats LinkShaper::stats() const { return impl_->core.Stats(); }

void LinkShaper::Stop() { impl_->core.Stop(); }

nlohmann::json ToJson(const LinkStats& s) {
  return nlohmann::json{
      {"bytes_up", s.bytes_up},
      {"bytes_down", s.bytes_down},
      {"connections_accepted", s.connections_accepted},
      {"connections_active", s.connections_active},
      {"connections_failed", s.connections_failed},
      {"connections_reset", s.connections_reset},
      {"buffered_bytes", s.buffered_bytes},
      {"max_buffered_bytes", s.max_buffered_bytes},
      {"buffer_bytes_up", s.buffer_bytes_up},
      {"buffer_bytes_down", s.buffer_bytes_down},
      {"burst_bytes_up", s.burst_bytes_up},
      {"burst_bytes_down", s.burst_bytes_down},
      {"max_queue_delay_up_seconds", s.max_queue_delay_up_seconds},
      {"max_queue_delay_down_seconds", s.max_queue_delay_down_seconds},
  };
}

nlohmann::json ToJson(const LinkDirection& d) {
  return nlohmann::json{{"rate_bits_per_second", d.rate_bits_per_second},
                        {"latency_seconds", d.latency_seconds},
                        {"jitter_seconds", d.jitter_seconds}};
}

Status SplitHostPort(std::string_view text, std::string* host, uint16_t* port) {
  const std::string_view t = Trim(text);
  auto bad = [&](std::string_view why) {
    return InvalidArgument(fmt::format(
        "bad address '{}': {}; expected HOST:PORT, e.g. 127.0.0.1:50051 or [::1]:50051", text, why));
  };
  std::string_view h;
  std::string_view p;
  if (!t.empty() && t.front() == '[') {
    const size_t close = t.find(']');
    if (close == std::string_view::npos) return bad("no ']' after an IPv6 address");
    h = t.substr(1, close - 1);
    const std::string_view rest = t.substr(close + 1);
    if (rest.size() < 2 || rest.front() != ':') return bad("no :PORT after ']'");
    p = rest.substr(1);
  } else {
    const size_t colon = t.rfind(':');
    if (colon == std::string_view::npos) return bad("no :PORT");
    h = t.substr(0, colon);
    p = t.substr(colon + 1);
    if (h.find(':') != std::string_view::npos) return bad("an IPv6 address must be written in brackets");
  }
  unsigned value = 0;
  const auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), value);
  if (p.empty() || ec != std::errc() || ptr != p.data() + p.size() || value > 65535) {
    return bad(fmt::format("port '{}' is not a number in 0..65535", p));
  }
  *host = std::string(h);
  *port = static_cast<uint16_t>(value);
  return Status::Ok();
}

}  // namespace lowband::comm
