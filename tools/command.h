// The `lowband` executable's subcommands. Each tools/cmd_*.cc file defines one Register* function
// that adds its subcommand (with --help, options and a callback) to the root CLI11 app; main.cc
// calls them all. A callback reports failure by throwing CommandError (exit code + message), which
// main prints as "lowband <cmd>: error: ..." and turns into the exit status.
#pragma once

#include <stdexcept>
#include <string>

#include <CLI/CLI.hpp>

#include "quant/status.h"

namespace lowband::tools {

struct CommandError : std::runtime_error {
  explicit CommandError(const std::string& what, int exit_code = 1)
      : std::runtime_error(what), code(exit_code) {}
  int code;
};

// What the subcommands share (tools/command.cc).

// Writes `port` and a newline to `path` atomically (temp file, fsync, rename), so a process that
// waits for the file reads the whole number (`in >> port`) or finds no file. Unavailable when the
// file cannot be written.
Status WritePortFile(const std::string& path, int port);

// Makes SIGINT and SIGTERM set a process-wide flag instead of ending the process, so a server loop
// can stop cleanly; StopRequested() reads it (async-signal-safe flag, any thread).
void InstallStopHandlers();
bool StopRequested();

void RegisterBench(CLI::App& app);
void RegisterTraining(CLI::App& app);
void RegisterData(CLI::App& app);
void RegisterReport(CLI::App& app);
void RegisterLink(CLI::App& app);
void RegisterSimulate(CLI::App& app);
void RegisterSplit(CLI::App& app);

}  // namespace lowband::tools
