#include "worker/data.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <string_view>

#include <fmt/format.h>
#include <torch/types.h>
#include <nlohmann/json.hpp>

#include "comm/durable_file.h"
#include "worker/torch_runtime.h"

namespace lowband::worker {
namespace {

// Shard `shard` of `num_shards` contiguous slices covering [0, total): [begin, end).
std::pair<int64_t, int64_t> ShardSlice(int64_t total, int shard, int num_shards) {
  return {total * shard / num_shards, total * (shard + 1) / num_shards};
}

// Batches of consecutive examples 0..n-1 (the last one may be smaller): evaluation sets.
template <typename MakeBatch>
std::vector<Batch> SequentialBatches(int64_t n, int batch_size, MakeBatch make) {
  std::vector<Batch> out;
  for (int64_t first = 0; first < n; first += batch_size) {
    std::vector<int64_t> idx(static_cast<size_t>(std::min<int64_t>(batch_size, n - first)));
    std::iota(idx.begin(), idx.end(), first);
    out.push_back(make(idx));
  }
  return out;
}

namespace fs = std::filesystem;

// Counter-based random stream (splitmix64): draw k of a stream is a pure function of (key, k), so a
// dataset can jump to any batch without replaying the ones before it.
uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;
uint64_t StreamKey(uint64_t seed, uint64_t a, uint64_t b) {
  return Mix64(Mix64(seed + kGamma) ^ Mix64((a + 1) * kGamma) ^ Mix64((b + 1) * kGamma * 3));
}
uint64_t Draw(uint64_t key, uint64_t k) { return Mix64(key + (k + 1) * kGamma); }

std::string Quoted(const std::string& s) { return "\"" + s + "\""; }

std::string Hex(unsigned v) {
  static constexpr char kDigits[] = "0123456789abcdef";
  return {kDigits[(v >> 4) & 15], kDigits[v & 15]};
}

// Appends advice (what to run) to a failed status.
Status WithAdvice(const Status& s, const std::string& advice) {
  return s.ok() ? s : Status(s.code(), s.message() + advice);
}

// Reads `count` bytes at `offset` of `path`.
StatusOr<std::string> ReadRange(const std::string& path, int64_t offset, int64_t count) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open " + Quoted(path) + ": " + std::strerror(errno));
  std::string out(static_cast<size_t>(count), '\0');
  in.seekg(offset);
  in.read(out.data(), count);
  if (in.gcount() != count) {
    return DataLoss("short read from " + Quoted(path) + ": wanted " + std::to_string(count) +
                    " bytes at offset " + std::to_string(offset) + ", got " + std::to_string(in.gcount()));
  }
  return out;
}

StatusOr<int64_t> FileSize(const std::string& path, const std::string& hint) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (ec || !fs::exists(status)) return NotFound(Quoted(path) + " does not exist" + hint);
  if (!fs::is_regular_file(status)) return InvalidArgument(Quoted(path) + " is not a regular file" + hint);
  const auto size = fs::file_size(path, ec);
  if (ec) return Internal("cannot get the size of " + Quoted(path) + ": " + ec.message());
  return static_cast<int64_t>(size);
}

Status ValidateDataConfig(const DataConfig& c, int shard, int num_shards) {
  const auto bad = [](const std::string& m) { return InvalidArgument("data config: " + m); };
  if (num_shards < 1 || shard < 0 || shard >= num_shards) {
    return bad("shard must be in [0, num_shards), got shard " + std::to_string(shard) + " of " +
               std::to_string(num_shards));
  }
  if (c.batch_size < 1) return bad("batch_size must be >= 1, got " + std::to_string(c.batch_size));
  if (c.seq_len < 1) return bad("seq_len must be >= 1, got " + std::to_string(c.seq_len));
  if (!(c.heldout_fraction >= 0.0 && c.heldout_fraction < 1.0)) {
    return bad("heldout_fraction must be in [0, 1), got " + std::to_string(c.heldout_fraction));
  }
  if (c.eval_batches < 0) return bad("eval_batches must be >= 0, got " + std::to_string(c.eval_batches));
  if (c.split != "interleaved" && c.split != "contiguous") {
    return bad(
        "split must be \"interleaved\" (every shard samples the whole text) or \"contiguous\" "
        "(shard i is the i-th slice), got \"" +
        c.split + "\"");
  }
  if (c.chunk_tokens < 1) return bad("chunk_tokens must be >= 1, got " + std::to_string(c.chunk_tokens));
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------------
// Token data (bytes of a text file, or uint16 token ids)

// Where the tokens of a file go: the held-out segments and this shard's training segments, each a
// [begin, end) range of token positions in the file (data.h, "Splits").
struct TokenSplit {
  std::vector<std::pair<int64_t, int64_t>> heldout, shard;
  int64_t train_total = 0;  // tokens of every shard together
  int64_t chunk = 0;        // the interleaved layout's chunk length (0: contiguous)
};

TokenSplit SplitTokens(const DataConfig& c, int64_t n, int shard, int num_shards) {
  TokenSplit out;
  if (c.split == "contiguous") {
    const int64_t heldout = std::llround(static_cast<double>(n) * c.heldout_fraction);
    out.train_total = n - heldout;
    if (heldout > 0) out.heldout.push_back({out.train_total, n});
    out.shard.push_back(ShardSlice(out.train_total, shard, num_shards));
    return out;
  }
  // Interleaved: chunks of `chunk` tokens (at most 1/32 of the file, so that small files interleave
  // too; at least one window); h of them, evenly spread, are held out; training chunk j goes to
  // shard j mod num_shards.
  const int64_t window = int64_t{c.seq_len} + 1;
  out.chunk = std::max(window, std::min<int64_t>(c.chunk_tokens, n / 32));
  const int64_t chunks = (n + out.chunk - 1) / out.chunk;
  int64_t h = std::llround(static_cast<double>(chunks) * c.heldout_fraction);
  if (c.heldout_fraction > 0 && h == 0 && chunks > 1) h = 1;
  std::vector<bool> held(static_cast<size_t>(chunks), false);
  for (int64_t j = 0; j < h; ++j) held[static_cast<size_t>((2 * j + 1) * chunks / (2 * h))] = true;
  int64_t train_index = 0;
  for (int64_t i = 0; i < chunks; ++i) {
    const std::pair<int64_t, int64_t> range{i * out.chunk, std::min(n, (i + 1) * out.chunk)};
    if (held[static_cast<size_t>(i)]) {
      out.heldout.push_back(range);
      continue;
    }
    out.train_total += range.second - range.first;
    if (train_index++ % num_shards == shard) out.shard.push_back(range);
  }
  return out;
}

// The training windows of a shard whose segments lie one after another in one vector: per segment
// with at least one window, where it starts and the windows before it. A window (seq_len + 1 tokens)
// never crosses from one segment into the next, which is not the text that follows it.
struct WindowIndex {
  std::vector<int64_t> first_start, windows_before;
  int64_t total = 0;

  static WindowIndex Of(const std::vector<int64_t>& segment_starts, int64_t size, int64_t seq_len) {
    WindowIndex index;
    for (size_t s = 0; s < segment_starts.size(); ++s) {
      const int64_t end = s + 1 < segment_starts.size() ? segment_starts[s + 1] : size;
      const int64_t windows = end - segment_starts[s] - seq_len;
      if (windows <= 0) continue;
      index.first_start.push_back(segment_starts[s]);
      index.windows_before.push_back(index.total);
      index.total += windows;
    }
    return index;
  }
};

class TokenDataset final : public Dataset {
 public:
  // Everything is prepared by Open; the constructor only takes ownership.
  TokenDataset(const DataConfig& c, std::vector<int64_t> train, WindowIndex windows, std::vector<Batch> eval,
               int64_t shard_begin, int64_t train_total, int64_t vocab, uint64_t key, std::string layout)
      : Dataset(TaskKind::kLanguageModel, vocab, std::move(eval), shard_begin, train_total),
        config_(c),
        train_(std::move(train)),
        windows_(std::move(windows)),
        key_(key),
        layout_(std::move(layout)) {}

  static StatusOr<std::unique_ptr<Dataset>> Open(const DataConfig& c, const std::string& path,
                                                 int token_bytes, const std::string& hint, int shard,
                                                 int num_shards, uint64_t seed) {
    LOWBAND_ASSIGN_OR_RETURN(const int64_t file_size, FileSize(path, hint));
    if (file_size % token_bytes != 0) {
      return InvalidArgument("token file " + Quoted(path) + " has " + std::to_string(file_size) +
                             " bytes, not a multiple of " + std::to_string(token_bytes) +
                             " (expected flat little-endian uint16 token ids)");
    }
    const int64_t n = file_size / token_bytes;
    const int64_t T = c.seq_len;
    const TokenSplit split = SplitTokens(c, n, shard, num_shards);

    std::ifstream in(path, std::ios::binary);
    if (!in) return NotFound("cannot open " + Quoted(path) + ": " + std::strerror(errno));
    std::vector<int64_t> train, starts;
    for (const auto& [begin, end] : split.shard) {
      starts.push_back(static_cast<int64_t>(train.size()));
      LOWBAND_RETURN_IF_ERROR(ReadTokens(in, path, token_bytes, begin, end - begin, &train));
    }
    WindowIndex windows = WindowIndex::Of(starts, static_cast<int64_t>(train.size()), T);
    if (windows.total == 0) {
      return FailedPrecondition(Quoted(path) + ": training shard " + std::to_string(shard) + " of " +
                                std::to_string(num_shards) + " has " + std::to_string(train.size()) +
                                " tokens and no window of seq_len+1 = " + std::to_string(T + 1) +
                                "; use a larger file, fewer workers or a shorter seq_len");
    }

    // Evaluation windows: seq_len+1 tokens at a stride of seq_len inside each held-out segment.
    std::vector<int64_t> window_starts;
    for (const auto& [begin, end] : split.heldout) {
      for (int64_t w = begin; w + T + 1 <= end; w += T) window_starts.push_back(w);
    }
    const bool want_eval = c.eval_batches > 0 && !split.heldout.empty();
    if (want_eval && window_starts.empty()) {
      return FailedPrecondition(Quoted(path) +
                                ": the held-out part has no window of seq_len+1 = " + std::to_string(T + 1) +
                                " tokens; raise heldout_fraction or use a larger file");
    }
    std::vector<Batch> eval;
    if (want_eval) {
      // The first eval_batches x batch_size windows (contiguous: from the start of the held-out
      // part), or as many spread evenly over every held-out chunk (interleaved).
      const auto available = static_cast<int64_t>(window_starts.size());
      const int64_t count = std::min<int64_t>(available, int64_t{c.eval_batches} * c.batch_size);
      std::vector<int64_t> tokens;
      for (int64_t i = 0; i < count; ++i) {
        const int64_t pick = split.chunk == 0 ? i : i * available / count;
        LOWBAND_RETURN_IF_ERROR(
            ReadTokens(in, path, token_bytes, window_starts[static_cast<size_t>(pick)], T + 1, &tokens));
      }
      for (int64_t first = 0; first < count; first += c.batch_size) {
        const int64_t b = std::min<int64_t>(c.batch_size, count - first);
        std::vector<int64_t> at(static_cast<size_t>(b));
        for (int64_t i = 0; i < b; ++i) at[static_cast<size_t>(i)] = (first + i) * (T + 1);
        eval.push_back(MakeWindows(tokens, at, T));
      }
    }

    int64_t vocab = 256;
    if (token_bytes == 2) {
      // The vocabulary must be the same on every worker, so it comes from the whole file, not the shard.
      LOWBAND_ASSIGN_OR_RETURN(vocab, MaxToken(path, n));
      vocab += 1;
    }
    // Contiguous: the base class's [begin, end); interleaved: the chunks it was dealt.
    const std::string layout =
        split.chunk == 0
            ? std::string()
            : fmt::format(
                  "{} chunks of {} tokens, every {}th training chunk from number {} (interleaved; "
                  "{} held-out chunks spread over the file)",
                  split.shard.size(), split.chunk, num_shards, shard, split.heldout.size());
    const int64_t shard_begin = split.chunk == 0 ? split.shard[0].first : 0;
    return std::unique_ptr<Dataset>(
        new TokenDataset(c, std::move(train), std::move(windows), std::move(eval), shard_begin,
                         split.train_total, vocab, StreamKey(seed, static_cast<uint64_t>(shard), 0), layout));
  }

  Batch NextTrainBatch() override {
    const int64_t T = config_.seq_len;
    std::vector<int64_t> starts(static_cast<size_t>(train_batch_size_));
    for (int64_t i = 0; i < train_batch_size_; ++i) {
      const uint64_t k =
          static_cast<uint64_t>(drawn_) * static_cast<uint64_t>(train_batch_size_) + static_cast<uint64_t>(i);
      const auto u = static_cast<int64_t>(Draw(key_, k) % static_cast<uint64_t>(windows_.total));
      const auto& before = windows_.windows_before;
      const auto s =
          static_cast<size_t>(std::upper_bound(before.begin(), before.end(), u) - before.begin()) - 1;
      starts[static_cast<size_t>(i)] = windows_.first_start[s] + (u - before[s]);
    }
    ++drawn_;
    return MakeWindows(train_, starts, T);
  }

  int64_t TrainSize() const override { return static_cast<int64_t>(train_.size()); }
  std::string ShardLayout() const override { return layout_.empty() ? Dataset::ShardLayout() : layout_; }

 private:
  static Batch MakeWindows(const std::vector<int64_t>& tokens, const std::vector<int64_t>& starts,
                           int64_t T) {
    const auto b = static_cast<int64_t>(starts.size());
    torch::Tensor inputs = torch::empty({b, T}, torch::kLong);
    torch::Tensor targets = torch::empty({b, T}, torch::kLong);
    int64_t* in = inputs.data_ptr<int64_t>();
    int64_t* tg = targets.data_ptr<int64_t>();
    for (int64_t i = 0; i < b; ++i) {
      const int64_t* w = tokens.data() + starts[static_cast<size_t>(i)];
      std::memcpy(in + i * T, w, static_cast<size_t>(T) * sizeof(int64_t));
      std::memcpy(tg + i * T, w + 1, static_cast<size_t>(T) * sizeof(int64_t));
    }
    return Batch{inputs, targets, torch::Tensor()};
  }

  // Appends tokens [first, first + count) of the open file `in` to *out.
  static Status ReadTokens(std::ifstream& in, const std::string& path, int token_bytes, int64_t first,
                           int64_t count, std::vector<int64_t>* out) {
    std::string raw(static_cast<size_t>(count * token_bytes), '\0');
    in.clear();
    in.seekg(first * token_bytes);
    in.read(raw.data(), static_cast<std::streamsize>(raw.size()));
    if (in.gcount() != static_cast<std::streamsize>(raw.size())) {
      return DataLoss("short read from " + Quoted(path) + ": wanted " + std::to_string(raw.size()) +
                      " bytes at offset " + std::to_string(first * token_bytes) + ", got " +
                      std::to_string(in.gcount()));
    }
    const auto* p = reinterpret_cast<const unsigned char*>(raw.data());
    out->reserve(out->size() + static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      out->push_back(token_bytes == 1
                         ? p[i]
                         : static_cast<int64_t>(p[2 * i] | (static_cast<unsigned>(p[2 * i + 1]) << 8)));
    }
    return Status::Ok();
  }

  static StatusOr<int64_t> MaxToken(const std::string& path, int64_t n) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return NotFound("cannot open " + Quoted(path) + ": " + std::strerror(errno));
    std::vector<unsigned char> buf(1 << 20);
    int64_t max_token = 0, seen = 0;
    while (seen < n) {
      const int64_t want = std::min<int64_t>(static_cast<int64_t>(buf.size()) / 2, n - seen);
      in.read(reinterpret_cast<char*>(buf.data()), want * 2);
      if (in.gcount() != want * 2) return DataLoss("short read from " + Quoted(path));
      for (int64_t i = 0; i < want; ++i) {
        max_token = std::max<int64_t>(max_token, buf[2 * i] | (static_cast<unsigned>(buf[2 * i + 1]) << 8));
      }
      seen += want;
    }
    return max_token;
  }

  DataConfig config_;
  std::vector<int64_t> train_;  // this shard's tokens, its segments one after another
  WindowIndex windows_;         // the training windows in train_
  uint64_t key_;
  std::string layout_;  // interleaved: which chunks; empty for contiguous
};

// ---------------------------------------------------------------------------------------------------
// Example datasets (images, e-mails): the shard is visited in a fresh random order every epoch.

// The order in which a shard of `n` examples is visited: position k of the stream is example
// perm_e[k % n] of epoch e = k / n, where perm_e is a Fisher-Yates permutation drawn from
// (seed, shard, e) only. So batch b is a pure function of (seed, shard, b), whatever was drawn before.
class EpochOrder {
 public:
  EpochOrder(uint64_t seed, int shard, int64_t n) : seed_(seed), shard_(shard), n_(n) {}

  // The example indices of batch number `batch` (batch_size consecutive stream positions).
  std::vector<int64_t> Indices(int64_t batch, int64_t batch_size) {
    std::vector<int64_t> idx(static_cast<size_t>(batch_size));
    for (int64_t i = 0; i < batch_size; ++i) {
      const int64_t pos = batch * batch_size + i;
      const int64_t epoch = pos / n_;
      if (epoch != perm_epoch_) Shuffle(epoch);
      idx[static_cast<size_t>(i)] = perm_[static_cast<size_t>(pos % n_)];
    }
    return idx;
  }

 private:
  void Shuffle(int64_t epoch) {
    perm_.resize(static_cast<size_t>(n_));
    std::iota(perm_.begin(), perm_.end(), 0);
    const uint64_t key = StreamKey(seed_, static_cast<uint64_t>(shard_), static_cast<uint64_t>(epoch) + 1);
    for (int64_t i = n_ - 1; i > 0; --i) {
      const auto j = static_cast<int64_t>(Draw(key, static_cast<uint64_t>(i)) % static_cast<uint64_t>(i + 1));
      std::swap(perm_[static_cast<size_t>(i)], perm_[static_cast<size_t>(j)]);
    }
    perm_epoch_ = epoch;
  }

  uint64_t seed_;
  int shard_;
  int64_t n_;
  std::vector<int64_t> perm_;
  int64_t perm_epoch_ = -1;
};

// ---------------------------------------------------------------------------------------------------
// Fashion-MNIST

constexpr int64_t kSide = 28;
constexpr int64_t kPixels = kSide * kSide;
constexpr int64_t kFashionClasses = 10;
// Mean and standard deviation of the Fashion-MNIST training pixels (scaled to [0, 1]).
constexpr float kPixelMean = 0.2860F;
constexpr float kPixelStd = 0.3530F;

struct ImageSet {
  std::string pixels;  // n * 784 bytes
  std::string labels;  // n bytes
  int64_t total = 0;   // images in the whole file
};

// Reads images and labels [first, first + count) of one split ("train" or "t10k"); count < 0 = to the end.
StatusOr<ImageSet> ReadFashionSplit(const std::string& data_dir, const std::string& split, int64_t first,
                                    int64_t count) {
  const std::string hint = "; run `lowband data prepare fashion-mnist --data-dir " + data_dir + "`";
  const fs::path dir = fs::path(data_dir) / "fashion-mnist";
  const std::string images_path = (dir / (split + "-images-idx3-ubyte")).string();
  const std::string labels_path = (dir / (split + "-labels-idx1-ubyte")).string();
  StatusOr<IdxHeader> images = ReadIdxHeader(images_path, 3);
  if (!images.ok()) return WithAdvice(images.status(), hint);
  StatusOr<IdxHeader> labels = ReadIdxHeader(labels_path, 1);
  if (!labels.ok()) return WithAdvice(labels.status(), hint);
  if (images->dims[1] != kSide || images->dims[2] != kSide) {
    return DataLoss(Quoted(images_path) + ": expected 28x28 images, got " + std::to_string(images->dims[1]) +
                    "x" + std::to_string(images->dims[2]) + hint);
  }
  if (images->dims[0] != labels->dims[0]) {
    return DataLoss(Quoted(images_path) + " has " + std::to_string(images->dims[0]) + " images but " +
                    Quoted(labels_path) + " has " + std::to_string(labels->dims[0]) + " labels" + hint);
  }
  ImageSet set;
  set.total = images->dims[0];
  if (count < 0) count = set.total - first;
  count = std::min(count, set.total - first);
  LOWBAND_ASSIGN_OR_RETURN(set.pixels,
                           ReadRange(images_path, images->data_offset + first * kPixels, count * kPixels));
  LOWBAND_ASSIGN_OR_RETURN(set.labels, ReadRange(labels_path, labels->data_offset + first, count));
  for (int64_t i = 0; i < count; ++i) {
    const auto label = static_cast<unsigned char>(set.labels[static_cast<size_t>(i)]);
    if (label >= kFashionClasses) {
      return DataLoss(Quoted(labels_path) + ": label " + std::to_string(label) + " at index " +
                      std::to_string(first + i) + " is outside [0, 10)" + hint);
    }
  }
  return set;
}

Batch MakeImageBatch(const ImageSet& set, const std::vector<int64_t>& indices) {
  const auto b = static_cast<int64_t>(indices.size());
  torch::Tensor inputs = torch::empty({b, 1, kSide, kSide}, torch::kFloat);
  torch::Tensor targets = torch::empty({b}, torch::kLong);
  float* in = inputs.data_ptr<float>();
  int64_t* tg = targets.data_ptr<int64_t>();
  for (int64_t i = 0; i < b; ++i) {
    const auto idx = static_cast<size_t>(indices[static_cast<size_t>(i)]);
    const auto* px = reinterpret_cast<const unsigned char*>(set.pixels.data()) + idx * kPixels;
    for (int64_t j = 0; j < kPixels; ++j) in[i * kPixels + j] = (px[j] / 255.0F - kPixelMean) / kPixelStd;
    tg[i] = static_cast<unsigned char>(set.labels[idx]);
  }
  return Batch{inputs, targets, torch::Tensor()};
}

class FashionMnistDataset final : public Dataset {
 public:
  FashionMnistDataset(const DataConfig& c, ImageSet train, std::vector<Batch> eval, int64_t shard_begin,
                      int64_t train_total, uint64_t seed, int shard)
      : Dataset(TaskKind::kImageClassification, kFashionClasses, std::move(eval), shard_begin, train_total),
        config_(c),
        train_(std::move(train)),
        order_(seed, shard, static_cast<int64_t>(train_.labels.size())) {}

  static StatusOr<std::unique_ptr<Dataset>> Open(const DataConfig& c, int shard, int num_shards,
                                                 uint64_t seed) {
    // The header gives the training-set size; the shard is read alone.
    const std::string& dir = c.data_dir;
    LOWBAND_ASSIGN_OR_RETURN(ImageSet head, ReadFashionSplit(dir, "train", 0, 0));
    const int64_t total = head.total;
    const auto [begin, end] = ShardSlice(total, shard, num_shards);
    if (end - begin < 1) {
      return FailedPrecondition("fashion-mnist: training shard " + std::to_string(shard) + " of " +
                                std::to_string(num_shards) + " is empty (" + std::to_string(total) +
                                " images)");
    }
    LOWBAND_ASSIGN_OR_RETURN(ImageSet train, ReadFashionSplit(dir, "train", begin, end - begin));
    std::vector<Batch> eval;
    if (c.eval_batches > 0) {
      LOWBAND_ASSIGN_OR_RETURN(ImageSet test,
                               ReadFashionSplit(dir, "t10k", 0, int64_t{c.eval_batches} * c.batch_size));
      eval = SequentialBatches(static_cast<int64_t>(test.labels.size()), c.batch_size,
                               [&](const std::vector<int64_t>& idx) { return MakeImageBatch(test, idx); });
    }
    return std::unique_ptr<Dataset>(
        new FashionMnistDataset(c, std::move(train), std::move(eval), begin, total, seed, shard));
  }

  Batch NextTrainBatch() override {
    return MakeImageBatch(train_, order_.Indices(drawn_++, train_batch_size_));
  }

  int64_t TrainSize() const override { return static_cast<int64_t>(train_.labels.size()); }

 private:
  DataConfig config_;
  ImageSet train_;  // this shard's images and labels
  EpochOrder order_;
};

// ---------------------------------------------------------------------------------------------------
// Text classification (spam-assassin)

constexpr int64_t kSpamClasses = 2;
constexpr int64_t kByteVocab = 256;

struct TextExamples {
  std::vector<std::string> texts;  // each cut to at most seq_len bytes
  std::vector<int64_t> labels;
  int64_t total = 0;  // examples (lines) in the whole file
  int64_t begin = 0;  // line index of texts[0]
};

// Reads shard `shard` of `num_shards` contiguous slices of a JSON-lines file of {"label": 0|1,
// "text": ...} objects, at most `limit` examples from the slice's start, keeping the first
// `max_bytes` bytes of each text; the file is read once. `hint` is appended to the error when the
// file is missing, `redo` when it is malformed.
StatusOr<TextExamples> ReadTextExamples(const std::string& path, int shard, int num_shards, int64_t limit,
                                        int64_t max_bytes, const std::string& hint, const std::string& redo) {
  LOWBAND_RETURN_IF_ERROR(FileSize(path, hint).status());
  LOWBAND_ASSIGN_OR_RETURN(const std::string bytes, comm::ReadWholeFile(path));
  const std::string_view all(bytes);
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos < all.size();) {
    size_t nl = all.find('\n', pos);
    if (nl == std::string_view::npos) nl = all.size();
    lines.push_back(all.substr(pos, nl - pos));
    pos = nl + 1;
  }
  TextExamples out;
  out.total = static_cast<int64_t>(lines.size());
  const auto [begin, end] = ShardSlice(out.total, shard, num_shards);
  out.begin = begin;
  const int64_t stop = begin + std::min(end - begin, limit);
  for (int64_t i = begin; i < stop; ++i) {
    const auto where = [&] { return Quoted(path) + " line " + std::to_string(i + 1); };
    const auto j = nlohmann::json::parse(lines[static_cast<size_t>(i)], nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return DataLoss(where() + " is not a JSON object" + redo);
    const auto label = j.find("label");
    const auto text = j.find("text");
    if (label == j.end() || !label->is_number_integer() || text == j.end() || !text->is_string()) {
      return DataLoss(where() + " lacks an integer \"label\" or a string \"text\"" + redo);
    }
    const auto value = label->get<int64_t>();
    if (value < 0 || value >= kSpamClasses) {
      return DataLoss(where() + ": label " + std::to_string(value) + " is outside [0, 2)" + redo);
    }
    const auto& s = text->get_ref<const std::string&>();
    out.texts.push_back(s.substr(0, static_cast<size_t>(std::min<int64_t>(max_bytes, std::ssize(s)))));
    out.labels.push_back(value);
  }
  return out;
}

// inputs int64 [B, T] (bytes as ids, 0 -> space, padded with 0), targets int64 [B], lengths int64 [B].
Batch MakeTextBatch(const TextExamples& set, const std::vector<int64_t>& indices, int64_t T) {
  const auto b = static_cast<int64_t>(indices.size());
  torch::Tensor inputs = torch::zeros({b, T}, torch::kLong);
  torch::Tensor targets = torch::empty({b}, torch::kLong);
  torch::Tensor lengths = torch::empty({b}, torch::kLong);
  int64_t* in = inputs.data_ptr<int64_t>();
  int64_t* tg = targets.data_ptr<int64_t>();
  int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t i = 0; i < b; ++i) {
    const auto idx = static_cast<size_t>(indices[static_cast<size_t>(i)]);
    const std::string_view text = set.texts[idx].empty() ? std::string_view(" ") : set.texts[idx];
    const int64_t n = std::min<int64_t>(T, std::ssize(text));
    for (int64_t k = 0; k < n; ++k) {
      const auto byte = static_cast<unsigned char>(text[static_cast<size_t>(k)]);
      in[i * T + k] = byte == 0 ? int64_t{' '} : int64_t{byte};
    }
    tg[i] = set.labels[idx];
    len[i] = n;
  }
  return Batch{inputs, targets, lengths};
}

class TextClassificationDataset final : public Dataset {
 public:
  TextClassificationDataset(const DataConfig& c, TextExamples train, std::vector<Batch> eval,
                            int64_t shard_begin, int64_t train_total, uint64_t seed, int shard)
      : Dataset(TaskKind::kTextClassification, kSpamClasses, std::move(eval), shard_begin, train_total),
        config_(c),
        train_(std::move(train)),
        order_(seed, shard, static_cast<int64_t>(train_.labels.size())) {}

  static StatusOr<std::unique_ptr<Dataset>> Open(const DataConfig& c, int shard, int num_shards,
                                                 uint64_t seed) {
    const std::string hint = "; run `lowband data prepare spam-assassin --data-dir " + c.data_dir + "`";
    const std::string redo =
        "; rerun `lowband data prepare spam-assassin --force --data-dir " + c.data_dir + "`";
    const fs::path dir = fs::path(c.data_dir) / "spam-assassin";
    const std::string train_path = (dir / "train.jsonl").string();
    const std::string heldout_path = (dir / "heldout.jsonl").string();
    // Both files must be there, even when no evaluation batches are asked for.
    LOWBAND_RETURN_IF_ERROR(FileSize(heldout_path, hint).status());
    LOWBAND_ASSIGN_OR_RETURN(TextExamples train,
                             ReadTextExamples(train_path, shard, num_shards,
                                              std::numeric_limits<int64_t>::max(), c.seq_len, hint, redo));
    if (train.labels.empty()) {
      return FailedPrecondition("spam-assassin: training shard " + std::to_string(shard) + " of " +
                                std::to_string(num_shards) + " is empty (" + std::to_string(train.total) +
                                " e-mails in " + Quoted(train_path) + "); use fewer workers");
    }
    std::vector<Batch> eval;
    if (c.eval_batches > 0) {
      LOWBAND_ASSIGN_OR_RETURN(const TextExamples held,
                               ReadTextExamples(heldout_path, 0, 1, int64_t{c.eval_batches} * c.batch_size,
                                                c.seq_len, hint, redo));
      eval = SequentialBatches(
          static_cast<int64_t>(held.labels.size()), c.batch_size,
          [&](const std::vector<int64_t>& idx) { return MakeTextBatch(held, idx, c.seq_len); });
    }
    const int64_t begin = train.begin, total = train.total;
    return std::unique_ptr<Dataset>(
        new TextClassificationDataset(c, std::move(train), std::move(eval), begin, total, seed, shard));
  }

  Batch NextTrainBatch() override {
    return MakeTextBatch(train_, order_.Indices(drawn_++, train_batch_size_), config_.seq_len);
  }

  int64_t TrainSize() const override { return static_cast<int64_t>(train_.labels.size()); }

 private:
  DataConfig config_;
  TextExamples train_;  // this shard's e-mails
  EpochOrder order_;
};

}  // namespace

Dataset::~Dataset() = default;

Status Dataset::SeekTrain(int64_t batches_drawn) {
  if (batches_drawn < 0)
    return InvalidArgument("SeekTrain: batch index must be >= 0, got " + std::to_string(batches_drawn));
  drawn_ = batches_drawn;
  return Status::Ok();
}

Status Dataset::SetTrainBatchSize(int64_t n) {
  if (n < 1) return InvalidArgument("training batch size must be >= 1, got " + std::to_string(n));
  train_batch_size_ = n;
  return Status::Ok();
}

StatusOr<IdxHeader> ParseIdxHeader(std::string_view bytes, int expected_rank, const std::string& what) {
  const auto size = static_cast<int64_t>(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (size < 4) {
    return DataLoss(what + ": truncated IDX file (" + std::to_string(size) +
                    " bytes, shorter than the 4-byte magic)");
  }
  if (p[0] != 0 || p[1] != 0) {
    return DataLoss(what + ": not an IDX file (magic starts with bytes " + std::to_string(p[0]) + " " +
                    std::to_string(p[1]) + ", expected 0 0); is it still gzip-compressed?");
  }
  if (p[2] != 0x08) {
    return DataLoss(what + ": IDX element type 0x" + Hex(p[2]) +
                    " is not supported (expected 0x08, unsigned byte)");
  }
  if (p[3] != expected_rank) {
    return DataLoss(what + ": IDX file has " + std::to_string(p[3]) + " dimensions, expected " +
                    std::to_string(expected_rank));
  }
  IdxHeader h;
  h.data_offset = 4 + 4 * int64_t{p[3]};
  if (size < h.data_offset) {
    return DataLoss(what + ": truncated IDX header (" + std::to_string(size) + " bytes, need " +
                    std::to_string(h.data_offset) + ")");
  }
  h.num_elements = 1;
  for (int d = 0; d < p[3]; ++d) {
    const unsigned char* q = p + 4 + 4 * d;
    const int64_t dim = (int64_t{q[0]} << 24) | (int64_t{q[1]} << 16) | (int64_t{q[2]} << 8) | int64_t{q[3]};
    h.dims.push_back(dim);
    h.num_elements *= dim;
  }
  return h;
}

StatusOr<IdxHeader> ReadIdxHeader(const std::string& path, int expected_rank) {
  LOWBAND_ASSIGN_OR_RETURN(const int64_t file_size, FileSize(path, ""));
  LOWBAND_ASSIGN_OR_RETURN(const std::string head,
                           ReadRange(path, 0, std::min<int64_t>(file_size, 4 + 4 * int64_t{expected_rank})));
  LOWBAND_ASSIGN_OR_RETURN(IdxHeader h, ParseIdxHeader(head, expected_rank, Quoted(path)));
  if (file_size != h.data_offset + h.num_elements) {
    return DataLoss(Quoted(path) + ": IDX dimensions promise " + std::to_string(h.num_elements) +
                    " bytes of data but the file holds " + std::to_string(file_size - h.data_offset) +
                    (file_size < h.data_offset + h.num_elements ? " (truncated)" : " (trailing bytes)"));
  }
  return h;
}

namespace {

// OpenDataset after validation: the dataset of config.dataset.
StatusOr<std::unique_ptr<Dataset>> OpenValidated(const DataConfig& config, int shard, int num_shards,
                                                 uint64_t seed) {
  return GuardTorch("OpenDataset", [&]() -> StatusOr<std::unique_ptr<Dataset>> {
    const std::string& name = config.dataset;
    if (name == "brown") {
      const std::string path = (fs::path(config.data_dir) / "brown" / "brown.txt").string();
      return TokenDataset::Open(config, path, 1,
                                "; run `lowband data prepare brown --data-dir " + config.data_dir + "`",
                                shard, num_shards, seed);
    }
    if (name.starts_with("text:")) {
      return TokenDataset::Open(config, name.substr(5), 1, " (dataset " + Quoted(name) + ")", shard,
                                num_shards, seed);
    }
    if (name.starts_with("tokens:")) {
      return TokenDataset::Open(config, name.substr(7), 2, " (dataset " + Quoted(name) + ")", shard,
                                num_shards, seed);
    }
    if (name == "fashion-mnist") return FashionMnistDataset::Open(config, shard, num_shards, seed);
    if (name == "spam-assassin") return TextClassificationDataset::Open(config, shard, num_shards, seed);
    return InvalidArgument("data config: unknown dataset " + Quoted(name) +
                           "; expected \"brown\", \"text:PATH\", \"tokens:PATH\", \"fashion-mnist\" or "
                           "\"spam-assassin\"");
  });
}

}  // namespace

StatusOr<std::unique_ptr<Dataset>> OpenDataset(const DataConfig& config, int shard, int num_shards,
                                               uint64_t seed) {
  LOWBAND_RETURN_IF_ERROR(ValidateDataConfig(config, shard, num_shards));
  auto opened = OpenValidated(config, shard, num_shards, seed);
  if (opened.ok()) LOWBAND_RETURN_IF_ERROR((*opened)->SetTrainBatchSize(config.batch_size));
  return opened;
}

Status CheckModelFitsData(const ModelConfig& model, const DataConfig& data_config, const Dataset& data,
                          TrainingPath path) {
  if (data.task() == TaskKind::kTextClassification) {
    if (path != TrainingPath::kSplit) {
      return InvalidArgument("dataset " + Quoted(data_config.dataset) +
                             " is text classification: it trains with `lowband split-client` (split.task "
                             "classify, which adds the classification head), not with launch/worker");
    }
    if (model.kind != "gpt" || model.vocab < kByteVocab) {
      return InvalidArgument("dataset " + Quoted(data_config.dataset) +
                             " is text classification over bytes (token ids 1..255, 0 = padding) and needs "
                             "a byte-level GPT, model kind \"gpt\" with vocab >= 256 (the split-learning "
                             "path adds its own " +
                             std::to_string(data.NumClasses()) + "-class classification head); got kind " +
                             Quoted(model.kind) +
                             (model.kind == "gpt" ? " with vocab " + std::to_string(model.vocab) : ""));
    }
    if (data_config.seq_len > model.context) {
      return InvalidArgument("data seq_len " + std::to_string(data_config.seq_len) +
                             " (bytes kept per example) exceeds the model context " +
                             std::to_string(model.context) + "; set seq_len <= context");
    }
    return Status::Ok();
  }
  if (data.task() == TaskKind::kLanguageModel) {
    if (model.kind != "gpt") {
      return InvalidArgument("dataset " + Quoted(data_config.dataset) +
                             " is token data and needs model kind \"gpt\", got " + Quoted(model.kind));
    }
    if (model.vocab < data.NumClasses()) {
      return InvalidArgument("dataset " + Quoted(data_config.dataset) + " has token ids up to " +
                             std::to_string(data.NumClasses() - 1) + " but the model's vocab is " +
                             std::to_string(model.vocab) +
                             "; set model vocab >= " + std::to_string(data.NumClasses()));
    }
    if (data_config.seq_len > model.context) {
      return InvalidArgument("data seq_len " + std::to_string(data_config.seq_len) +
                             " exceeds the model context " + std::to_string(model.context) +
                             "; set them equal");
    }
    return Status::Ok();
  }
  if (model.kind != "mlp" && model.kind != "cnn") {
    return InvalidArgument("dataset " + Quoted(data_config.dataset) +
                           " is image classification and needs model kind \"mlp\" or \"cnn\", got " +
                           Quoted(model.kind));
  }
  if (model.num_classes < data.NumClasses()) {
    return InvalidArgument("dataset " + Quoted(data_config.dataset) + " has " +
                           std::to_string(data.NumClasses()) + " classes but the model has num_classes " +
                           std::to_string(model.num_classes));
  }
  return Status::Ok();
}

}  // namespace lowband::worker
