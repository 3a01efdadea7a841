// Child processes of the lowband tools (`launch` starts a coordinator, link shapers and workers;
// `bench load` a coordinator): started with stdout and stderr into a log file and stdin from
// /dev/null, sent SIGTERM when the thread that started them ends (PR_SET_PDEATHSIG, so even a
// SIGKILLed tool leaves nothing behind), stopped with SIGTERM then SIGKILL, and described in errors
// by how they ended and the tail of their log.
//
// Thread safety: plain functions; a Child belongs to the thread that started it (PDEATHSIG follows
// that thread).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "quant/status.h"

namespace lowband::tools {

struct Child {
  std::string name;  // for messages: "the coordinator", "worker 3"
  pid_t pid = -1;
  std::string log;
  bool done = false;
  int status = 0;  // wait status, once done
};

// Starts argv (argv[0] looked up in PATH). A failed exec (a missing executable) is an error here,
// naming it, rather than a child that exits 127.
StatusOr<Child> Spawn(std::string name, const std::vector<std::string>& argv, const std::string& log);

// Reaps `child` if it has ended; true once it is done.
bool Poll(Child& child);
// Reaps the children that ended; returns the first of them that failed (non-zero exit or signal).
std::optional<Child> Reap(std::vector<Child>& children);
// SIGTERM to children[which], up to `grace` for them to end, then SIGKILL; all reaped.
void Stop(std::vector<Child>& children, const std::vector<size_t>& which, std::chrono::milliseconds grace);

// "exit code 3", "signal 9 (Killed)".
std::string Describe(int wait_status);
// The last `lines` lines of a log file, indented, for error messages.
std::string Tail(const std::string& path, size_t lines);

// Waits up to `timeout` for `what` to write a port number into `port_file` (its --port-file). Fails
// naming the child of `children` that ended first, with its log's tail, or `what`, the timeout and
// `log`.
StatusOr<int> WaitForPortFile(const std::string& port_file, std::vector<Child>& children,
                              const std::string& what, const std::string& log,
                              std::chrono::milliseconds timeout);

// This executable (/proc/self/exe), to start its own subcommands; "lowband" when unreadable.
std::string SelfPath();

}  // namespace lowband::tools
