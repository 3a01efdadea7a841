// The `lowband` executable's subcommands. Each tools/cmd_*.cc file defines one Register* function
// that adds its subcommand (with --help, options and a callback) to the root CLI11 app; main.cc
// calls them all. A callback reports failure by throwing CommandError (exit code + message), which
// main prints as "lowband <cmd>: error: ..." and turns into the exit status.
#pragma once

#include <stdexcept>
#include <string>

#include <CLI/CLI.hpp>

namespace lowband::tools {

struct CommandError : std::runtime_error {
  explicit CommandError(const std::string& what, int exit_code = 1)
      : std::runtime_error(what), code(exit_code) {}
  int code;
};

void RegisterBench(CLI::App& app);
void RegisterTraining(CLI::App& app);
void RegisterData(CLI::App& app);
void RegisterReport(CLI::App& app);
void RegisterLink(CLI::App& app);
void RegisterSimulate(CLI::App& app);
void RegisterSplit(CLI::App& app);

}  // namespace lowband::tools
