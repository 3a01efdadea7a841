// What the `lowband` subcommands share (tools/command.h).
#include "tools/command.h"

#include <csignal>

#include <nlohmann/json.hpp>

#include "comm/metrics.h"

namespace lowband::tools {

namespace {

volatile std::sig_atomic_t g_stop_requested = 0;

void OnStopSignal(int) { g_stop_requested = 1; }

}  // namespace

Status WritePortFile(const std::string& path, int port) {
  // A JSON number dumps as the plain decimal, and WriteJsonFile adds the newline: "PORT\n".
  return comm::WriteJsonFile(path, nlohmann::json(port));
}

void InstallStopHandlers() {
  std::signal(SIGINT, OnStopSignal);
  std::signal(SIGTERM, OnStopSignal);
}

bool StopRequested() { return g_stop_requested != 0; }

}  // namespace lowband::tools
