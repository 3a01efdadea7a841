// LinkShaper over real sockets on 127.0.0.1: rate and latency accuracy, byte order and content under
// jitter, many connections sharing one bucket, resets and refused upstreams, backpressure.
// Upstream servers and clients are plain blocking POSIX sockets on threads of the test.
#include "comm/link_shaper.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#if defined(__SANITIZE_THREAD__)
#define LOWBAND_LINK_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LOWBAND_LINK_TEST_TSAN 1
#endif
#endif
#if defined(LOWBAND_LINK_TEST_TSAN) || defined(__SANITIZE_ADDRESS__)
#define LOWBAND_LINK_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LOWBAND_LINK_TEST_SANITIZED 1
#endif
#endif

namespace lowband::comm {
namespace {

// Under ThreadSanitizer everything runs 5-15x slower, and a CPU-starved shaper (or test thread)
// falls short of the rate; the shaper must still never exceed it, and content checks still hold.
#ifdef LOWBAND_LINK_TEST_TSAN
constexpr bool kCpuKeepsUp = false;
#else
constexpr bool kCpuKeepsUp = true;
#endif
// Under TSan or ASan the shaper's timer wake-ups come late, never early: a delay may overshoot by
// this much (measured: up to 12 ms on a loaded 2-core machine), but must never fall short.
#ifdef LOWBAND_LINK_TEST_SANITIZED
constexpr double kLateWakeups = 0.020;
#else
constexpr double kLateWakeups = 0.0;
#endif

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Fnv {
  uint64_t h = 1469598103934665603ULL;
  void Add(const char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      h ^= static_cast<uint8_t>(p[i]);
      h *= 1099511628211ULL;
    }
  }
};

std::vector<char> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<char> out(n);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t r = rng();
    std::memcpy(out.data() + i, &r, std::min<size_t>(8, n - i));
  }
  return out;
}

uint64_t Hash(const std::vector<char>& data) {
  Fnv f;
  f.Add(data.data(), data.size());
  return f.h;
}

void SetTimeout(int fd, double seconds) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(seconds);
  tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

void NoDelay(int fd) {
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int Connect(int port, double timeout = 20) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  NoDelay(fd);
  SetTimeout(fd, timeout);
  return fd;
}

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadExact(int fd, char* p, size_t n) {
  while (n > 0) {
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Receives from `fd` in chunks of up to 64 KiB until EOF or an error, calling `on_chunk(data, n)`
// for each; stops early when it returns false.
void ForEachChunk(int fd, const std::function<bool(const char*, size_t)>& on_chunk) {
  std::vector<char> buf(64 * 1024);
  for (;;) {
    const ssize_t r = ::recv(fd, buf.data(), buf.size(), 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    if (!on_chunk(buf.data(), static_cast<size_t>(r))) break;
  }
}

// Reads until EOF; returns the bytes, or what came before an error.
std::vector<char> ReadToEof(int fd) {
  std::vector<char> out;
  ForEachChunk(fd, [&](const char* p, size_t n) {
    out.insert(out.end(), p, p + n);
    return true;
  });
  return out;
}

// A listening socket on 127.0.0.1 that runs `handler(fd)` on a thread per accepted connection and
// closes the fd after it returns.
class TestServer {
 public:
  explicit TestServer(std::function<void(int)> handler) : handler_(std::move(handler)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    const int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(fd_, 256), 0);
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] {
      for (;;) {
        const int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          return;
        }
        NoDelay(c);
        SetTimeout(c, 20);
        std::lock_guard<std::mutex> lock(mu_);
        threads_.emplace_back([this, c] {
          handler_(c);
          ::close(c);
        });
      }
    });
  }
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;
  ~TestServer() {
    ::shutdown(fd_, SHUT_RDWR);  // wakes accept()
    acceptor_.join();
    ::close(fd_);
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& t : threads_) t.join();
  }
  int port() const { return port_; }

 private:
  std::function<void(int)> handler_;
  int fd_ = -1;
  int port_ = 0;
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> threads_;
};

void Echo(int fd) {
  ForEachChunk(fd, [fd](const char* p, size_t n) { return WriteAll(fd, p, n); });
  ::shutdown(fd, SHUT_WR);
}

std::unique_ptr<LinkShaper> StartShaper(const LinkShaperOptions& options) {
  auto s = LinkShaper::Start(options);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

LinkShaperOptions Link(int upstream_port, double rate_bps, double latency = 0, double jitter = 0) {
  LinkShaperOptions o;
  o.upstream = "127.0.0.1:" + std::to_string(upstream_port);
  o.up = LinkDirection{rate_bps, latency, jitter};
  o.down = LinkDirection{rate_bps, latency, jitter};
  return o;
}

// Polls `pred` until it holds or `seconds` pass.
bool WaitFor(const std::function<bool()>& pred, double seconds) {
  const auto end =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  while (Clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

// What a receiving end saw: total bytes, and when the first and the last byte came.
struct Arrivals {
  std::mutex mu;
  uint64_t bytes = 0;
  bool any = false;
  Clock::time_point first, last;
  void Add(size_t n) {
    const auto now = Clock::now();
    std::lock_guard<std::mutex> lock(mu);
    if (!any) first = now;
    any = true;
    last = now;
    bytes += n;
  }
  uint64_t Bytes() {
    std::lock_guard<std::mutex> lock(mu);
    return bytes;
  }
  // Goodput in bits/s over [first byte, last byte]. With the bucket full at the start, the first
  // `burst` bytes leave at once and the rest at the rate, so N bytes take (N - burst) / rate.
  double Goodput(uint64_t burst) {
    std::lock_guard<std::mutex> lock(mu);
    return static_cast<double>(bytes - std::min<uint64_t>(burst, bytes)) * 8 / Seconds(first, last);
  }
};

void CountToEof(int fd, Arrivals& arrivals) {
  ForEachChunk(fd, [&](const char*, size_t n) {
    arrivals.Add(n);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------
// Parsing

TEST(SplitHostPort, ParsesAndRejects) {
  std::string host;
  uint16_t port = 0;
  ASSERT_TRUE(SplitHostPort("127.0.0.1:50051", &host, &port).ok());
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 50051);
  ASSERT_TRUE(SplitHostPort("[::1]:0", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 0);
  ASSERT_TRUE(SplitHostPort(":6000", &host, &port).ok());
  EXPECT_EQ(host, "");
  for (const char* bad : {"127.0.0.1", "host:", "host:65536", "host:x1", "::1:80", "[::1]80", "[::1"}) {
    const Status st = SplitHostPort(bad, &host, &port);
    EXPECT_FALSE(st.ok()) << bad;
    EXPECT_NE(st.message().find(bad), std::string::npos) << st.message();
  }
}

TEST(LinkShaper, StartRejectsBadOptions) {
  LinkShaperOptions o;
  auto missing = LinkShaper::Start(o);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("upstream"), std::string::npos);

  o.upstream = "127.0.0.1:1";
  o.up.rate_bits_per_second = -5;
  auto negative = LinkShaper::Start(o);
  ASSERT_FALSE(negative.ok());
  EXPECT_NE(negative.status().message().find("rate"), std::string::npos);

  o.up.rate_bits_per_second = 0;
  o.listen = "nonsense";
  auto listen = LinkShaper::Start(o);
  ASSERT_FALSE(listen.ok());
  EXPECT_NE(listen.status().message().find("nonsense"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Rate

struct GoodputResult {
  double up_bps = 0;
  uint64_t delivered = 0;
};

// Sends `bytes` client -> upstream through a link of `rate` and measures the goodput at the upstream.
GoodputResult MeasureGoodput(double rate, size_t bytes) {
  Arrivals arrivals;
  TestServer sink([&](int fd) { CountToEof(fd, arrivals); });
  auto shaper = StartShaper(Link(sink.port(), rate));
  if (!shaper) return {};
  const int fd = Connect(shaper->port());
  EXPECT_GE(fd, 0);
  const std::vector<char> data = RandomBytes(bytes, 7);
  EXPECT_TRUE(WriteAll(fd, data.data(), data.size()));
  ::shutdown(fd, SHUT_WR);
  ReadToEof(fd);  // the sink closes after our EOF; the shaper passes that on
  ::close(fd);
  EXPECT_EQ(arrivals.Bytes(), bytes);
  GoodputResult r;
  r.up_bps = arrivals.Goodput(shaper->stats().burst_bytes_up);
  r.delivered = shaper->stats().bytes_up;
  return r;
}

class GoodputTest : public ::testing::TestWithParam<double> {};

TEST_P(GoodputTest, WithinFivePercentOfTheRate) {
  const double rate = GetParam();
  const auto bytes = static_cast<size_t>(rate / 8 * 1.5);  // about 1.5 s
  // Best of two: a loaded CI machine can stall the receiving thread for tens of ms; the property
  // (the shaper's long-run rate is the configured one) must show in at least one clean try.
  double best_error = 1e9;
  double best = 0;
  for (int attempt = 0; attempt < 2 && std::fabs(best_error) > 0.02; ++attempt) {
    const GoodputResult r = MeasureGoodput(rate, bytes);
    EXPECT_EQ(r.delivered, bytes);
    const double error = r.up_bps / rate - 1;
    std::printf("[ goodput ] rate %.0f Mbit/s: measured %.3f Mbit/s (%+.2f%%), try %d\n", rate / 1e6,
                r.up_bps / 1e6, error * 100, attempt + 1);
    if (std::fabs(error) < std::fabs(best_error)) {
      best_error = error;
      best = r.up_bps;
    }
  }
  EXPECT_LT(best / rate, 1.05) << "goodput " << best / 1e6 << " Mbit/s at a rate of " << rate / 1e6;
  if (kCpuKeepsUp) {
    EXPECT_GT(best / rate, 0.95) << "goodput " << best / 1e6 << " Mbit/s at a rate of " << rate / 1e6;
  }
}

INSTANTIATE_TEST_SUITE_P(Rates, GoodputTest, ::testing::Values(1e6, 10e6, 100e6),
                         [](const ::testing::TestParamInfo<double>& p) {
                           return std::to_string(static_cast<int>(p.param / 1e6)) + "mbit";
                         });

TEST(LinkShaper, WorksAtOneGigabit) {
  const double rate = 1e9;
  // One io thread copying 125 MB/s competes for the CPU with the test's own sender and receiver: on
  // a loaded 2-core machine a try can fall well short, so the better of two counts.
  double best = 0;
  for (int attempt = 0; attempt < 2 && best < rate * 0.9; ++attempt) {
    const GoodputResult r = MeasureGoodput(rate, 64u << 20);
    std::printf("[ goodput ] rate 1000 Mbit/s: measured %.1f Mbit/s (%+.1f%%), try %d\n", r.up_bps / 1e6,
                (r.up_bps / rate - 1) * 100, attempt + 1);
    EXPECT_EQ(r.delivered, 64u << 20);
    EXPECT_LT(r.up_bps, rate * 1.05);
    best = std::max(best, r.up_bps);
  }
  if (kCpuKeepsUp) {
    EXPECT_GT(best, rate * 0.5);
  }
}

// ---------------------------------------------------------------------------------------------
// Latency

double MedianRtt(int fd, int pings) {
  std::vector<double> rtts;
  char msg[64] = {};
  char back[64];
  for (int i = 0; i < pings; ++i) {
    msg[0] = static_cast<char>(i);
    const auto t0 = Clock::now();
    if (!WriteAll(fd, msg, sizeof msg) || !ReadExact(fd, back, sizeof back)) return -1;
    rtts.push_back(Seconds(t0, Clock::now()));
    EXPECT_EQ(back[0], msg[0]);
  }
  std::sort(rtts.begin(), rtts.end());
  return rtts[rtts.size() / 2];
}

// How much a link of `options` adds to the median round trip of a 64-byte ping against an echo
// server, next to a direct connection measured in the same call.
struct RttResult {
  double base = -1, shaped = -1;
};

RttResult MeasureRtt(const LinkShaperOptions& options, int echo_port) {
  RttResult r;
  const int direct = Connect(echo_port);
  if (direct < 0) return r;
  MedianRtt(direct, 3);  // warm up
  r.base = MedianRtt(direct, 15);
  ::close(direct);
  auto shaper = StartShaper(options);
  if (!shaper) return r;
  const int fd = Connect(shaper->port());
  if (fd < 0) return r;
  MedianRtt(fd, 1);
  r.shaped = MedianRtt(fd, 15);
  ::close(fd);
  return r;
}

// Timer wake-ups on a loaded 2-core machine only ever add delay, and a bad moment can add 2 ms to
// a whole try; the better of two tries must show the configured latency.
double BestAddedRtt(const LinkShaperOptions& options, int echo_port, double expected, double tolerance,
                    const char* what) {
  double best = 1e9;
  for (int attempt = 0; attempt < 2 && std::fabs(best - expected) > tolerance / 2; ++attempt) {
    const RttResult r = MeasureRtt(options, echo_port);
    EXPECT_GT(r.base, 0);
    EXPECT_GT(r.shaped, 0);
    const double added = r.shaped - r.base;
    std::printf("[ latency ] %s: base RTT %.3f ms, shaped RTT %.3f ms, added %.3f ms (%+.3f ms), try %d\n",
                what, r.base * 1e3, r.shaped * 1e3, added * 1e3, (added - expected) * 1e3, attempt + 1);
    if (std::fabs(added - expected) < std::fabs(best - expected)) best = added;
  }
  return best;
}

class LatencyTest : public ::testing::TestWithParam<double> {};

TEST_P(LatencyTest, AddedOneWayLatencyWithinTwoMilliseconds) {
  const double latency = GetParam();
  TestServer echo(Echo);
  const std::string what =
      "one-way " + std::to_string(static_cast<int>(latency * 1e3 + 0.5)) + " ms, round trip";
  const double added_rtt =
      BestAddedRtt(Link(echo.port(), 0, latency), echo.port(), 2 * latency, 0.004, what.c_str());
  // One-way = added round trip / 2.
  EXPECT_GE(added_rtt / 2, latency - 0.002);
  EXPECT_LE(added_rtt / 2, latency + 0.002 + kLateWakeups);
}

INSTANTIATE_TEST_SUITE_P(Latencies, LatencyTest, ::testing::Values(0.020, 0.040),
                         [](const ::testing::TestParamInfo<double>& p) {
                           return std::to_string(static_cast<int>(p.param * 1e3 + 0.5)) + "ms";
                         });

TEST(LinkShaper, DirectionsHaveTheirOwnLatency) {
  TestServer echo(Echo);
  LinkShaperOptions o = Link(echo.port(), 0);
  o.up.latency_seconds = 0.005;
  o.down.latency_seconds = 0.025;
  const double added_rtt = BestAddedRtt(o, echo.port(), 0.030, 0.004, "5 ms up + 25 ms down, round trip");
  EXPECT_GE(added_rtt, 0.030 - 0.004);
  EXPECT_LE(added_rtt, 0.030 + 0.004 + kLateWakeups);
}

// ---------------------------------------------------------------------------------------------
// Order and content

// Writes `data` in chunks of random size (1 B .. 20 KiB), so the link sees many small segments.
void WriteChunked(int fd, const std::vector<char>& data, uint64_t seed) {
  std::mt19937_64 rng(seed);
  size_t off = 0;
  while (off < data.size()) {
    const size_t n = std::min<size_t>(data.size() - off, 1 + rng() % (20 * 1024));
    if (!WriteAll(fd, data.data() + off, n)) return;
    off += n;
  }
}

TEST(LinkShaper, PreservesOrderAndContentBothWaysUnderJitter) {
  const size_t up_bytes = 2 << 20;
  const size_t down_bytes = 3 << 19;
  const std::vector<char> up = RandomBytes(up_bytes, 11);
  const std::vector<char> down = RandomBytes(down_bytes, 12);
  std::atomic<uint64_t> upstream_hash{0};
  std::atomic<uint64_t> upstream_count{0};
  TestServer server([&](int fd) {
    std::thread writer([&] {
      WriteChunked(fd, down, 3);
      ::shutdown(fd, SHUT_WR);
    });
    const std::vector<char> got = ReadToEof(fd);
    upstream_hash = Hash(got);
    upstream_count = got.size();  // after the hash: the test waits on the count
    writer.join();
  });
  // Segments leave every ~0.1-1 ms while the jitter is +-4 ms: without the ordered delay queue bytes
  // would be reordered many times over.
  LinkShaperOptions o = Link(server.port(), 50e6, 0.005, 0.004);
  o.seed = 42;
  auto shaper = StartShaper(o);
  ASSERT_TRUE(shaper);
  const int fd = Connect(shaper->port());
  ASSERT_GE(fd, 0);
  std::thread writer([&] {
    WriteChunked(fd, up, 4);
    ::shutdown(fd, SHUT_WR);
  });
  const std::vector<char> got = ReadToEof(fd);
  writer.join();
  ::close(fd);
  EXPECT_EQ(got.size(), down.size());
  EXPECT_EQ(Hash(got), Hash(down)) << "upstream -> client bytes differ";
  ASSERT_TRUE(WaitFor([&] { return upstream_count.load() == up.size(); }, 5));
  EXPECT_EQ(upstream_hash.load(), Hash(up)) << "client -> upstream bytes differ";
  EXPECT_TRUE(WaitFor([&] { return shaper->stats().connections_active == 0; }, 5));
  const LinkStats s = shaper->stats();
  EXPECT_EQ(s.bytes_up, up_bytes);
  EXPECT_EQ(s.bytes_down, down_bytes);
  EXPECT_EQ(s.connections_reset, 0u);
  EXPECT_EQ(s.buffered_bytes, 0u);
}

// ---------------------------------------------------------------------------------------------
// Many connections, one link

TEST(LinkShaper, ManyConnectionsShareOneBucket) {
  constexpr int kConnections = 32;
  constexpr size_t kBytes = 96 * 1024;
  const double rate = 20e6;
  Arrivals up_arrivals;
  TestServer echo([&](int fd) {
    ForEachChunk(fd, [&](const char* p, size_t n) {
      up_arrivals.Add(n);
      return WriteAll(fd, p, n);
    });
    ::shutdown(fd, SHUT_WR);
  });
  auto shaper = StartShaper(Link(echo.port(), rate));
  ASSERT_TRUE(shaper);
  Arrivals down_arrivals;
  std::atomic<int> correct{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kConnections; ++i) {
    clients.emplace_back([&, i] {
      const int fd = Connect(shaper->port());
      if (fd < 0) return;
      const std::vector<char> data = RandomBytes(kBytes, 100 + static_cast<uint64_t>(i));
      std::thread writer([&] {
        WriteAll(fd, data.data(), data.size());
        ::shutdown(fd, SHUT_WR);
      });
      std::vector<char> got;
      ForEachChunk(fd, [&](const char* p, size_t n) {
        down_arrivals.Add(n);
        got.insert(got.end(), p, p + n);
        return true;
      });
      writer.join();
      ::close(fd);
      if (got == data) ++correct;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(correct.load(), kConnections);
  const LinkStats s = shaper->stats();
  EXPECT_EQ(s.connections_accepted, static_cast<uint64_t>(kConnections));
  EXPECT_EQ(s.bytes_up, kConnections * kBytes);
  const double up = up_arrivals.Goodput(s.burst_bytes_up);
  const double down = down_arrivals.Goodput(s.burst_bytes_down);
  std::printf(
      "[ goodput ] %d connections on one %.0f Mbit/s link: up %.3f Mbit/s (%+.2f%%), down %.3f Mbit/s\n",
      kConnections, rate / 1e6, up / 1e6, (up / rate - 1) * 100, down / 1e6);
  // The link is backlogged from the first byte to the last, so the aggregate is the rate, not 32x it.
  EXPECT_LT(up / rate, 1.05);
  if (kCpuKeepsUp) {
    EXPECT_GT(up / rate, 0.95);
  }
  EXPECT_LT(down, rate * 1.05);
  EXPECT_TRUE(WaitFor([&] { return shaper->stats().connections_active == 0; }, 5));
}

// ---------------------------------------------------------------------------------------------
// Failures

TEST(LinkShaper, ClientDisconnectMidStreamClosesUpstreamAndKeepsServing) {
  std::atomic<int> upstream_ended{0};
  TestServer streamer([&](int fd) {
    const std::vector<char> chunk = RandomBytes(16 * 1024, 5);
    while (WriteAll(fd, chunk.data(), chunk.size())) {
    }
    ++upstream_ended;
  });
  auto shaper = StartShaper(Link(streamer.port(), 10e6));
  ASSERT_TRUE(shaper);
  {
    const int fd = Connect(shaper->port());
    ASSERT_GE(fd, 0);
    std::vector<char> buf(50 * 1000);
    ASSERT_TRUE(ReadExact(fd, buf.data(), buf.size()));
    ::close(fd);  // mid-stream, with data unread: the kernel resets the connection
  }
  // The streamer writes until its connection breaks: only the shaper closing it ends the loop.
  EXPECT_TRUE(WaitFor([&] { return upstream_ended.load() == 1; }, 3)) << "the upstream side was not closed";
  EXPECT_TRUE(WaitFor([&] { return shaper->stats().connections_active == 0; }, 3));
  EXPECT_EQ(shaper->stats().connections_reset, 1u);

  const int again = Connect(shaper->port());
  ASSERT_GE(again, 0);
  std::vector<char> buf(10 * 1000);
  EXPECT_TRUE(ReadExact(again, buf.data(), buf.size())) << "the shaper stopped serving after a reset";
  ::close(again);
  EXPECT_TRUE(WaitFor([&] { return upstream_ended.load() == 2; }, 3));
  EXPECT_EQ(shaper->stats().connections_accepted, 2u);
}

TEST(LinkShaper, UpstreamResetMidStreamResetsTheClient) {
  TestServer crasher([](int fd) {
    std::vector<char> buf(20 * 1000);
    ReadExact(fd, buf.data(), buf.size());
    const linger hard{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof hard);  // close() sends an RST, like a crash
  });
  auto shaper = StartShaper(Link(crasher.port(), 10e6));
  ASSERT_TRUE(shaper);
  const int fd = Connect(shaper->port(), 5);
  ASSERT_GE(fd, 0);
  // 40 kB into the shaper (it buffers them at once), of which the upstream reads 20 kB before it
  // crashes. The client then only reads, so the reset reaches recv() (a concurrent send would
  // consume the socket error instead).
  const std::vector<char> data(40 * 1000, 'x');
  ASSERT_TRUE(WriteAll(fd, data.data(), data.size()));
  const auto t0 = Clock::now();
  char c;
  const ssize_t r = ::recv(fd, &c, 1, 0);
  const int err = errno;
  const double waited = Seconds(t0, Clock::now());
  ::close(fd);
  EXPECT_EQ(r, -1) << "the client should see a reset, not a clean end of stream";
  EXPECT_EQ(err, ECONNRESET);
  EXPECT_LT(waited, 3.0);
  EXPECT_TRUE(WaitFor([&] { return shaper->stats().connections_active == 0; }, 3));
  EXPECT_EQ(shaper->stats().connections_reset, 1u);
}

TEST(LinkShaper, RefusedUpstreamClosesTheClientAndCounts) {
  int free_port = 0;
  {
    TestServer gone([](int) {});
    free_port = gone.port();
  }
  auto shaper = StartShaper(Link(free_port, 10e6));
  ASSERT_TRUE(shaper);
  for (int i = 0; i < 2; ++i) {
    const int fd = Connect(shaper->port(), 5);
    ASSERT_GE(fd, 0);
    const auto t0 = Clock::now();
    char c;
    const ssize_t r = ::recv(fd, &c, 1, 0);
    EXPECT_LE(r, 0);
    EXPECT_LT(Seconds(t0, Clock::now()), 2.0);
    ::close(fd);
  }
  EXPECT_TRUE(WaitFor(
      [&] { return shaper->stats().connections_failed == 2 && shaper->stats().connections_active == 0; }, 3));
  EXPECT_EQ(shaper->stats().connections_accepted, 2u);
}

// ---------------------------------------------------------------------------------------------
// Backpressure

struct PushResult {
  uint64_t sent_mid = 0, sent_end = 0;
  uint64_t delivered_mid = 0, delivered_end = 0;
  LinkStats stats;
};

// A client that writes as fast as the kernel lets it for `seconds`, into a link of `rate` (and
// `latency`, one way).
PushResult Push(double rate, size_t buffer_bytes, double seconds, double latency = 0) {
  std::atomic<uint64_t> delivered{0};
  TestServer sink([&](int fd) {
    ForEachChunk(fd, [&](const char*, size_t n) {
      delivered += static_cast<uint64_t>(n);
      return true;
    });
  });
  LinkShaperOptions o = Link(sink.port(), rate, latency);
  o.buffer_bytes = buffer_bytes;
  auto shaper = StartShaper(o);
  PushResult out;
  if (!shaper) return out;
  const int fd = Connect(shaper->port());
  EXPECT_GE(fd, 0);
  // A small, fixed send buffer (no autotuning) keeps the kernel's share of the backlog small.
  const int sndbuf = 64 * 1024;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  const std::vector<char> chunk(64 * 1024, 'b');
  uint64_t sent = 0;
  const auto t0 = Clock::now();
  bool mid_taken = false;
  for (;;) {
    const double t = Seconds(t0, Clock::now());
    if (!mid_taken && t >= seconds / 2) {
      out.sent_mid = sent;
      out.delivered_mid = delivered;
      mid_taken = true;
    }
    if (t >= seconds) break;
    const ssize_t w = ::send(fd, chunk.data(), chunk.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w > 0) {
      sent += static_cast<uint64_t>(w);
    } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 10);
    } else {
      ADD_FAILURE() << "send failed: " << std::strerror(errno);
      break;
    }
  }
  out.sent_end = sent;
  out.delivered_end = delivered;
  out.stats = shaper->stats();
  ::close(fd);
  return out;
}

TEST(LinkShaper, BackpressureBoundsWhatTheSenderGetsAhead) {
  const double rate = 1e6;  // 125 kB/s
  const PushResult r = Push(rate, 0, 2.0);
  const uint64_t bound = r.stats.buffer_bytes_up;
  const uint64_t ahead = r.sent_end - r.delivered_end;
  const uint64_t advance = r.sent_end - r.sent_mid;  // what the sender got through in the second second
  std::printf(
      "[ backpressure ] bound %llu B; sender ahead by %llu B after 2 s; max buffered %llu B; sent %llu B in "
      "the 2nd second (link: %.0f B)\n",
      static_cast<unsigned long long>(bound), static_cast<unsigned long long>(ahead),
      static_cast<unsigned long long>(r.stats.max_buffered_bytes), static_cast<unsigned long long>(advance),
      rate / 8);
  EXPECT_LE(r.stats.max_buffered_bytes, bound);
  EXPECT_GE(r.stats.max_buffered_bytes, bound * 9 / 10)
      << "the shaper should fill its buffer before pushing back";
  // What the sender is ahead of the receiver: the shaper's bound plus the kernel's socket buffers
  // (the client's 64 KiB send buffer, the shaper's receive buffer: a few hundred kB measured).
  // Without backpressure a loopback sender gets ~1 GB ahead in 2 s.
  EXPECT_LT(ahead, bound + (2u << 20));
  // Once everything is full the sender advances at the link's rate (125 kB/s), not at loopback speed.
  EXPECT_LT(static_cast<double>(advance), rate / 8 + 256 * 1024);
}

TEST(LinkShaper, ExplicitBufferBoundIsHonoured) {
  const PushResult r = Push(2e6, 100 * 1000, 0.6);
  EXPECT_EQ(r.stats.buffer_bytes_up, 100u * 1000);
  EXPECT_LE(r.stats.max_buffered_bytes, 100u * 1000);
  EXPECT_GT(r.stats.max_buffered_bytes, 0u);
}

// The buffer is the connection's window: a shaper that adds latency and no rate (the bandwidth
// lab's, in front of a tc tbf link) carries at most one buffer per latency, whatever the path's
// rate; `lowband launch --netns-rate` sizes it with AutoBufferBytes for the tbf rate.
TEST(LinkShaper, ALatencyOnlyShaperCarriesAtMostItsBufferPerLatency) {
  EXPECT_EQ(AutoBufferBytes(LinkDirection{1e9, 0.02, 0}), 125'000'000u * 7 / 100 + 256 * 1024);
  EXPECT_EQ(AutoBufferBytes(LinkDirection{0, 0.02, 0}), 256u * 1024);
  const double latency = 0.05, seconds = 1.0;
  const size_t small = 64 * 1024;
  const PushResult capped = Push(0, small, seconds, latency);
  const double bound = static_cast<double>(small) * (seconds / latency + 1);
  EXPECT_LE(static_cast<double>(capped.delivered_end), bound);
  EXPECT_GT(capped.delivered_end, 0u);
  // Sized for 40 Mbit/s (762 kB): several times what the 64 KiB window lets through.
  const PushResult sized = Push(0, AutoBufferBytes(LinkDirection{40e6, latency, 0}), seconds, latency);
  std::printf(
      "[ window ] %.0f ms latency, no rate: %llu B delivered in %.0f s with a 64 KiB buffer "
      "(bound %.0f B), %llu B with %llu B\n",
      latency * 1e3, static_cast<unsigned long long>(capped.delivered_end), seconds, bound,
      static_cast<unsigned long long>(sized.delivered_end),
      static_cast<unsigned long long>(sized.stats.buffer_bytes_up));
  EXPECT_GT(static_cast<double>(sized.delivered_end), 2 * bound);
}

TEST(LinkShaper, StopIsIdempotentAndResetsOpenConnections) {
  TestServer echo(Echo);
  auto shaper = StartShaper(Link(echo.port(), 0));
  ASSERT_TRUE(shaper);
  const int fd = Connect(shaper->port(), 5);
  ASSERT_GE(fd, 0);
  char msg[8] = "ping";
  char back[8];
  ASSERT_TRUE(WriteAll(fd, msg, sizeof msg));
  ASSERT_TRUE(ReadExact(fd, back, sizeof back));
  shaper->Stop();
  shaper->Stop();
  char c;
  EXPECT_LE(::recv(fd, &c, 1, 0), 0);
  ::close(fd);
  EXPECT_LT(Connect(shaper->port(), 1), 0) << "the listener should be closed";
}

}  // namespace
}  // namespace lowband::comm
