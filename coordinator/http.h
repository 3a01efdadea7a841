// The coordinator's read-only HTTP endpoint (Boost.Beast): what a person or a Prometheus server
// looks at while a run goes on (DESIGN.md §4).
//
//   GET /          a status page: members (live, step, loss, tokens, bytes, last heard), rounds per
//                  fragment (open round, contributions of the expected), counters
//   GET /metrics   the same as Prometheus text (format 0.0.4): lowband_* counters and gauges, one
//                  series per worker (labels worker, name) with what its heartbeats report
//   GET /status.json   the same as JSON
//
// Read-only by construction: it serves GET and HEAD and answers 405 to anything else; it reads the
// core only through its observability accessors. It never shows the run token. Requests larger
// than 8 KiB get 413, a connection silent for 10 s is closed, and one slow client cannot stall the
// others (each connection is its own chain of asynchronous operations on one I/O thread).
// Thread safety: Start/Stop from one thread; the I/O thread reads the core, which is thread-safe.
// Lifetimes: the core must outlive the server.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "coordinator/core.h"
#include "quant/status.h"

namespace lowband::coordinator {

// The views the endpoint serves, from one reading of the core (pure functions: tested alone).
nlohmann::json StatusJson(const CoordinatorCore& core);
std::string PrometheusText(const nlohmann::json& status);
std::string StatusPage(const nlohmann::json& status);

class HttpStatusServer {
 public:
  // Listens on "host:port" (port 0: any free port; see port()).
  static StatusOr<std::unique_ptr<HttpStatusServer>> Start(const CoordinatorCore& core,
                                                           const std::string& address);
  ~HttpStatusServer();  // stops
  HttpStatusServer(const HttpStatusServer&) = delete;
  HttpStatusServer& operator=(const HttpStatusServer&) = delete;

  int port() const;
  void Stop();

 private:
  struct Impl;
  explicit HttpStatusServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lowband::coordinator
