#include "comm/durable_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace lowband::comm {
namespace {

std::string Errno() { return std::strerror(errno); }

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  // Closes now and reports the error close() may carry (delayed write errors on some filesystems).
  bool Close() {
    const int fd = fd_;
    fd_ = -1;
    return ::close(fd) == 0;
  }

 private:
  int fd_;
};

}  // namespace

Status SyncDirectory(const std::filesystem::path& dir) {
  FileDescriptor fd(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return Internal("cannot open directory \"" + dir.string() + "\" to sync it: " + Errno());
  if (::fsync(fd.get()) != 0)
    return Internal("fsync of directory \"" + dir.string() + "\" failed: " + Errno());
  return Status::Ok();
}

Status WriteFileAtomically(const std::filesystem::path& path, std::string_view bytes, unsigned mode) {
  const std::filesystem::path dir = path.parent_path();
  std::string tmp_name = (dir / ("." + path.filename().string() + ".tmp-XXXXXX")).string();
  FileDescriptor fd(::mkostemp(tmp_name.data(), O_CLOEXEC));
  if (fd.get() < 0)
    return Internal("cannot create a temporary file next to \"" + path.string() + "\": " + Errno());
  const auto fail = [&](const std::string& what) {
    const std::string message = what + " \"" + tmp_name + "\": " + Errno();
    ::unlink(tmp_name.c_str());
    return Internal(message);
  };
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd.get(), bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write failed for");
    }
    written += static_cast<size_t>(n);
  }
  if (::fchmod(fd.get(), static_cast<mode_t>(mode)) != 0) return fail("chmod failed for");
  if (::fsync(fd.get()) != 0) return fail("fsync failed for");
  if (!fd.Close()) return fail("close failed for");
  if (::rename(tmp_name.c_str(), path.c_str()) != 0)
    return fail("rename to \"" + path.string() + "\" failed for");
  return SyncDirectory(dir);
}

StatusOr<std::string> ReadWholeFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open \"" + path.string() + "\": " + Errno());
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) return DataLoss("read error on \"" + path.string() + "\"");
  return std::move(out).str();
}

}  // namespace lowband::comm
