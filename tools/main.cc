// lowband: one executable, one subcommand per job. See `lowband --help`.
#include <cstdio>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "tools/command.h"

int main(int argc, char** argv) {
  CLI::App app{"lowband: training across sites joined by slow links (Streaming DiLoCo, AMAQ split learning)",
               "lowband"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "lowband 0.1.0");
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  app.parse_complete_callback([&] { spdlog::set_level(spdlog::level::from_str(log_level)); });

  lowband::tools::RegisterBench(app);
  lowband::tools::RegisterTraining(app);
  lowband::tools::RegisterData(app);
  lowband::tools::RegisterReport(app);
  lowband::tools::RegisterLink(app);
  lowband::tools::RegisterSimulate(app);
  lowband::tools::RegisterSplit(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every bad flag or value exits 2, like the errors lowband finds.
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const lowband::tools::CommandError& e) {
    std::fprintf(stderr, "lowband: error: %s\n", e.what());
    return e.code;
  }
  return 0;
}
