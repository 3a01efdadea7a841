// The coordinator's gRPC service: a thin adapter from lowband.v1.Coordinator (proto/lowband.proto)
// to CoordinatorCore, on gRPC's callback API, and CoordinatorServer, which listens on an address
// and drives the core's clock-based work (round deadlines, heartbeat expiry) from a ticker thread.
//
// The adapter translates messages, reassembles chunked streams with size limits (a chunk over
// max_chunk_bytes, a stream longer or shorter than its header declared, a declared size other than
// the fragment's exact contribution size: INVALID_ARGUMENT, before the bytes are kept; a transport
// CRC mismatch: DATA_LOSS) and maps lowband::Status to grpc::Status (same canonical codes, same
// message). Each streaming call is one reactor object that owns its state and deletes itself in
// OnDone. GetUpdate and Bootstrap wait without holding a thread: the reactor registers a callback
// with the core (AwaitUpdate / AwaitSeeded) and starts writing when the core completes it; if the
// client's deadline passes or it cancels first, OnCancel withdraws the wait (CancelWait) and
// finishes the call.
//
// Thread safety: gRPC runs reactions on its own threads; all shared state lives in the core.
// Lifetimes: the core must outlive the server. Stop() (also run by the destructor) completes
// every pending wait with UNAVAILABLE, shuts the server down (cancelling calls still running after
// shutdown_grace) and joins the ticker; after it returns no reactor refers to the core.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "comm/tls.h"
#include "coordinator/core.h"
#include "quant/status.h"

namespace lowband::coordinator {

struct ServiceOptions {
  // Largest accepted chunk of a client stream (SeedState, PushFragment) and size of the chunks
  // the server sends (Bootstrap, GetUpdate). The protocol's limit is 1 MiB.
  uint32_t max_chunk_bytes = 1u << 20;
  // PushFragment streams one worker may have in flight at once (each holds a contribution-sized
  // buffer); more are refused with RESOURCE_EXHAUSTED. A worker's uploads go one at a time.
  uint32_t max_inflight_pushes = 4;
};

struct ServerOptions {
  // "host:port"; port 0 picks a free port (see CoordinatorServer::port()).
  std::string address = "0.0.0.0:50051";
  ServiceOptions service;
  // How often the ticker calls CoordinatorCore::Tick (round deadlines, heartbeat expiry).
  std::chrono::milliseconds tick_interval{100};
  // At Stop, calls still running after this long are cancelled.
  std::chrono::milliseconds shutdown_grace{2'000};
  // TLS (server certificate; with client_ca, mutual TLS). Empty: plaintext.
  comm::TlsServerFiles tls;
};

// The gRPC service object, for embedding in a grpc::Server built elsewhere. The core must outlive
// that server.
std::unique_ptr<grpc::Service> NewCoordinatorService(CoordinatorCore& core, const ServiceOptions& options);

class CoordinatorServer {
 public:
  // Listens on options.address and starts the ticker. UNAVAILABLE names the address when it
  // cannot be bound.
  static StatusOr<std::unique_ptr<CoordinatorServer>> Start(CoordinatorCore& core,
                                                            const ServerOptions& options);

  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;
  ~CoordinatorServer();

  // The bound port (the chosen one when the address asked for port 0).
  int port() const { return port_; }
  // "127.0.0.1:<port>" style target for clients on this machine (host part of the listen address,
  // with 0.0.0.0 / [::] replaced by the loopback address).
  std::string target() const;

  // Idempotent; see the header comment.
  void Stop();

 private:
  CoordinatorServer(CoordinatorCore& core, ServerOptions options);
  void TickLoop();

  CoordinatorCore& core_;
  const ServerOptions options_;
  std::unique_ptr<grpc::Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  bool stopped_ = false;   // guarded by mu_
  std::thread ticker_;
};

}  // namespace lowband::coordinator
