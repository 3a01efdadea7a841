#include "tools/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>

namespace lowband::tools {

StatusOr<Child> Spawn(std::string name, const std::vector<std::string>& argv, const std::string& log) {
  std::vector<std::string> args = argv;
  std::vector<char*> c_argv;
  for (auto& a : args) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);
  const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int status_pipe[2] = {-1, -1};
  if (log_fd < 0 || null_fd < 0 || ::pipe2(status_pipe, O_CLOEXEC) != 0) {
    const int e = errno;
    for (int fd : {log_fd, null_fd}) {
      if (fd >= 0) ::close(fd);
    }
    return Unavailable(
        fmt::format("cannot start {}: cannot open its log {}: {}", name, log, std::strerror(e)));
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {  // the child: async-signal-safe calls only
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);  // the parent ended before prctl
    ::dup2(null_fd, STDIN_FILENO);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    ::execvp(c_argv[0], c_argv.data());
    const int e = errno;
    (void)!::write(status_pipe[1], &e, sizeof e);
    ::_exit(127);
  }
  // A close-on-exec pipe carries exec's errno back; EOF means the exec succeeded.
  int exec_errno = pid < 0 ? errno : 0;
  ::close(status_pipe[1]);
  ::close(log_fd);
  ::close(null_fd);
  if (pid > 0) {
    ssize_t n;
    do {
      n = ::read(status_pipe[0], &exec_errno, sizeof exec_errno);
    } while (n < 0 && errno == EINTR);
    if (n != static_cast<ssize_t>(sizeof exec_errno)) exec_errno = 0;
    if (exec_errno != 0) ::waitpid(pid, nullptr, 0);
  }
  ::close(status_pipe[0]);
  if (exec_errno != 0) {
    return Unavailable(
        fmt::format("cannot start {} ({}): {}", name, argv.front(), std::strerror(exec_errno)));
  }
  return Child{std::move(name), pid, log};
}

bool Poll(Child& c) {
  if (!c.done && c.pid > 0 && ::waitpid(c.pid, &c.status, WNOHANG) == c.pid) c.done = true;
  return c.done;
}

std::optional<Child> Reap(std::vector<Child>& children) {
  std::optional<Child> failed;
  for (auto& c : children) {
    if (c.done || !Poll(c)) continue;
    const bool ok = WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0;
    if (!ok && !failed) failed = c;
  }
  return failed;
}

void Stop(std::vector<Child>& children, const std::vector<size_t>& which, std::chrono::milliseconds grace) {
  for (size_t i : which) {
    if (!children[i].done) ::kill(children[i].pid, SIGTERM);
  }
  const auto end = std::chrono::steady_clock::now() + grace;
  for (;;) {
    bool all = true;
    for (size_t i : which) all = Poll(children[i]) && all;
    if (all || std::chrono::steady_clock::now() >= end) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (size_t i : which) {
    Child& c = children[i];
    if (!c.done) {
      ::kill(c.pid, SIGKILL);
      ::waitpid(c.pid, &c.status, 0);
      c.done = true;
    }
  }
}

std::string Describe(int st) {
  if (WIFEXITED(st)) return fmt::format("exit code {}", WEXITSTATUS(st));
  if (WIFSIGNALED(st)) return fmt::format("signal {} ({})", WTERMSIG(st), strsignal(WTERMSIG(st)));
  return "unknown status";
}

std::string Tail(const std::string& path, size_t lines) {
  std::ifstream f(path);
  std::deque<std::string> last;
  std::string line;
  while (std::getline(f, line)) {
    last.push_back(line);
    if (last.size() > lines) last.pop_front();
  }
  std::string out;
  for (auto& l : last) out += "    " + l + "\n";
  return out;
}

StatusOr<int> WaitForPortFile(const std::string& port_file, std::vector<Child>& children,
                              const std::string& what, const std::string& log,
                              std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::ifstream in(port_file);
    int port = 0;
    if (in >> port && port > 0) return port;
    if (auto failed = Reap(children)) {
      return Unavailable(fmt::format("{} exited at start ({}); its log:\n{}", failed->name,
                                     Describe(failed->status), Tail(failed->log, 20)));
    }
    if (std::chrono::steady_clock::now() >= end) {
      return Unavailable(fmt::format("{} did not report its port within {:.0f} s (see {})", what,
                                     std::chrono::duration<double>(timeout).count(), log));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string SelfPath() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("lowband") : p.string();
}

}  // namespace lowband::tools
