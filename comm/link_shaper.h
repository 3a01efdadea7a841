// LinkShaper: a TCP proxy that behaves like one slow, far-away network link (DESIGN.md §6). It
// listens on `listen`, connects every accepted client to `upstream`, and forwards the bytes of each
// direction through a model of a link: a token-bucket rate, then a one-way propagation latency with
// optional jitter. `lowband link` runs one; `lowband launch` puts one between every worker and the
// coordinator, so a run on one machine sees the bandwidth and latency of a wide-area link.
//
// The model, per direction (up = client -> upstream, down = upstream -> client; independent):
//   - ONE token bucket per direction, shared by every connection through this shaper, as on a real
//     link: 32 connections together get the configured rate, not 32 times it. Bytes are cut into
//     segments (about rate x 1 ms, 1500 B .. 64 KiB) that are serialized one after another, the
//     connections with data waiting served round-robin. A segment of n bytes leaves the serializer
//     at d = max(arrival, TAT + n/rate - burst/rate) (the GCRA form of a token bucket: TAT is the
//     bucket's theoretical arrival time, TAT = max(TAT, arrival) + n/rate), so the long-run goodput
//     is exactly the rate and at most `burst` bytes go out above it after an idle period. Times
//     are virtual: a pacing wake-up that comes late (a loaded machine) does not lose link capacity
//     while data is queued; it releases the overdue segments with their on-time departure times.
//   - then propagation: the segment reaches the other end at
//     release = max(d + latency + U(-jitter, +jitter) clamped to >= d, previous release of the same
//     connection and direction), so jitter never reorders bytes within a connection (an ordered
//     delay queue; a segment can be held back behind a later-drawn predecessor).
//   - rate 0 means unlimited (no serialization delay); latency and jitter still apply.
// Backpressure: each connection buffers at most `buffer_bytes` per direction (queued for the
// serializer plus in flight in the delay line; default rate x (latency + jitter + 50 ms) + 256 KiB,
// at least 64 KiB). While a side's buffer is full the shaper does not read from it, so TCP flow
// control pushes back on the sender; memory does not grow with the transfer size.
// Connection life: TCP_NODELAY on both sides (Nagle would distort the shaped delays). When one side
// finishes sending (EOF), what is queued is delivered to the other side and then its sending half is
// shut down; the connection is closed when both directions are done. A side that resets, or whose
// writes fail, aborts the connection: the other side is reset too (an RST, not a FIN, so a peer
// never mistakes a broken stream for a complete one), counted in connections_reset. An upstream that
// cannot be connected to resets the client, counted in connections_failed, with a warning naming it.
//
// Thread safety: one io_context run by one thread owns every socket, timer and queue, so the
// forwarding state needs no locks; stats() and port() may be called from any thread (atomics), Stop()
// from any thread but the shaper's own.
// Lifetimes: Start() returns a running shaper; Stop() (idempotent) closes the listener and every
// connection and joins the thread; the destructor calls Stop().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

#include "quant/status.h"

namespace lowband::comm {

// One direction of the link.
struct LinkDirection {
  // Serialization rate in bits per second (payload bytes x 8; TCP/IP headers are not counted).
  // 0 = unlimited.
  double rate_bits_per_second = 0;
  // One-way propagation latency added to every segment, in seconds.
  double latency_seconds = 0;
  // Each segment's latency is latency + U(-jitter, +jitter), clamped at 0; in seconds.
  double jitter_seconds = 0;
};

// The automatic buffer_bytes for a direction: max(64 KiB, rate x (latency + jitter + 50 ms) +
// 256 KiB). The in-flight part is the bandwidth-delay product: a smaller buffer caps a connection at
// buffer / latency whatever the rate (256 KiB over 20 ms is 105 Mbit/s).
size_t AutoBufferBytes(const LinkDirection& d);

struct LinkShaperOptions {
  // Address to listen on, "HOST:PORT" ("[v6]:PORT" for IPv6 literals); port 0 picks a free port
  // (read it with port()).
  std::string listen = "127.0.0.1:0";
  // Where each accepted connection is forwarded, "HOST:PORT"; resolved once at Start. Required.
  std::string upstream;
  // client -> upstream.
  LinkDirection up;
  // upstream -> client.
  LinkDirection down;
  // Seed of the jitter draws (each direction has its own generator).
  uint64_t seed = 1;
  // Token-bucket depth in bytes, each direction; 0 = automatic: max(2 x 1500, rate x 1 ms) (no
  // bucket at an unlimited rate). Segments are never larger than the bucket.
  size_t burst_bytes = 0;
  // Bytes one connection may hold per direction before the shaper stops reading from the sender;
  // 0 = automatic: max(64 KiB, rate x (latency + jitter + 50 ms) + 256 KiB).
  size_t buffer_bytes = 0;
  // Seconds an upstream connect may take before the client is reset and connections_failed counted.
  double connect_timeout_seconds = 10;
};

struct LinkStats {
  // Payload bytes delivered (written to the receiving side), client -> upstream and back.
  uint64_t bytes_up = 0;
  uint64_t bytes_down = 0;
  uint64_t connections_accepted = 0;
  // Accepted, not yet closed (includes ones still connecting upstream).
  uint64_t connections_active = 0;
  // The upstream connect failed or timed out; the client was reset.
  uint64_t connections_failed = 0;
  // A side reset or disconnected mid-stream (a read or write failed); the other side was reset.
  uint64_t connections_reset = 0;
  // Bytes held in the shaper now, over every connection and direction.
  uint64_t buffered_bytes = 0;
  // The most one connection ever held in one direction (never above buffer_bytes_*).
  uint64_t max_buffered_bytes = 0;
  // The effective per-connection, per-direction bounds and token-bucket depths.
  uint64_t buffer_bytes_up = 0;
  uint64_t buffer_bytes_down = 0;
  uint64_t burst_bytes_up = 0;
  uint64_t burst_bytes_down = 0;
  // The longest a segment waited for the serializer (its queueing delay, rate only), each direction.
  double max_queue_delay_up_seconds = 0;
  double max_queue_delay_down_seconds = 0;
};

nlohmann::json ToJson(const LinkStats& stats);
nlohmann::json ToJson(const LinkDirection& direction);

class LinkShaper {
 public:
  // Validates the options, resolves the upstream, binds the listener and starts forwarding on a
  // thread of its own. Errors: InvalidArgument (bad option or address), Unavailable (cannot resolve
  // or bind).
  static StatusOr<std::unique_ptr<LinkShaper>> Start(const LinkShaperOptions& options);

  LinkShaper(const LinkShaper&) = delete;
  LinkShaper& operator=(const LinkShaper&) = delete;
  ~LinkShaper();

  // The port the listener is bound to (the chosen one when listen's port was 0).
  int port() const;
  // A consistent-enough snapshot (each counter is read atomically; they are not read together).
  LinkStats stats() const;
  // Closes the listener and every connection (reset), then joins the thread. Idempotent.
  void Stop();

 private:
  class Impl;
  explicit LinkShaper(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// (Rates and durations as text, "100mbit", "40ms": sim/units.h, shared by every subcommand.)
// "HOST:PORT" or "[V6]:PORT" into host and port (port 0..65535). HOST may be empty (any address).
Status SplitHostPort(std::string_view text, std::string* host, uint16_t* port);

}  // namespace lowband::comm
