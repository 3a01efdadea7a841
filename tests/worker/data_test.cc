#include "worker/data.h"

#include <cmath>
#include <cstdio>
#include <set>

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "tests/worker/test_util.h"

namespace lowband::worker {
namespace {

using testing::ScratchDir;
using testing::WriteFile;

// A token file where token i has value i: every token names its own position.
std::string PositionTokens(int n) {
  std::string bytes;
  for (int i = 0; i < n; ++i) {
    bytes += static_cast<char>(i & 0xFF);
    bytes += static_cast<char>((i >> 8) & 0xFF);
  }
  return bytes;
}

DataConfig TokensConfig(const std::string& path, const std::string& split = "contiguous") {
  DataConfig c;
  c.dataset = "tokens:" + path;
  c.split = split;
  c.batch_size = 4;
  c.seq_len = 16;
  c.heldout_fraction = 0.1;
  c.eval_batches = 3;
  return c;
}

std::unique_ptr<Dataset> Open(const DataConfig& c, int shard, int shards, uint64_t seed = 7) {
  auto d = OpenDataset(c, shard, shards, seed);
  EXPECT_TRUE(d.ok()) << d.status().message();
  return d.ok() ? std::move(d).value() : nullptr;
}

bool SameBatches(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].inputs.equal(b[i].inputs) || !a[i].targets.equal(b[i].targets)) return false;
  }
  return true;
}

TEST(WorkerDataTest, TokenShardsAreDisjointCoverTheTrainingPartAndStayInside) {
  ScratchDir dir;
  WriteFile(dir / "pos.tok", PositionTokens(5000));
  const DataConfig c = TokensConfig(dir / "pos.tok");
  constexpr int kShards = 3;
  int64_t next_begin = 0, total_size = 0;
  for (int s = 0; s < kShards; ++s) {
    auto d = Open(c, s, kShards);
    ASSERT_NE(d, nullptr);
    EXPECT_EQ(d->TrainTotal(), 4500);
    EXPECT_EQ(d->task(), TaskKind::kLanguageModel);
    EXPECT_EQ(d->NumClasses(), 5000);  // max id + 1, from the whole file
    const auto [begin, end] = d->ShardRange();
    EXPECT_EQ(begin, next_begin);
    EXPECT_EQ(end - begin, d->TrainSize());
    next_begin = end;
    total_size += d->TrainSize();
    for (int k = 0; k < 25; ++k) {
      const Batch b = d->NextTrainBatch();
      ASSERT_EQ(b.inputs.sizes(), (std::vector<int64_t>{4, 16}));
      EXPECT_TRUE(b.targets.equal(b.inputs + 1));  // contiguous windows, shifted by one
      EXPECT_GE(b.inputs.min().item<int64_t>(), begin);
      EXPECT_LT(b.targets.max().item<int64_t>(), end);
    }
  }
  EXPECT_EQ(next_begin, 4500);
  EXPECT_EQ(total_size, 4500);
}

TEST(WorkerDataTest, EvalBatchesAreHeldOutAndIdenticalForAnyShardCount) {
  ScratchDir dir;
  WriteFile(dir / "pos.tok", PositionTokens(5000));
  const DataConfig c = TokensConfig(dir / "pos.tok");
  auto one = Open(c, 0, 1);
  auto a = Open(c, 0, 4, /*seed=*/1);
  auto b = Open(c, 3, 4, /*seed=*/2);
  ASSERT_TRUE(one && a && b);
  ASSERT_EQ(one->EvalBatches().size(), 3U);
  EXPECT_TRUE(SameBatches(one->EvalBatches(), a->EvalBatches()));
  EXPECT_TRUE(SameBatches(one->EvalBatches(), b->EvalBatches()));
  for (const Batch& batch : one->EvalBatches()) {
    EXPECT_GE(batch.inputs.min().item<int64_t>(), 4500);  // never training tokens
    EXPECT_TRUE(batch.targets.equal(batch.inputs + 1));
  }
  // Consecutive, non-overlapping windows from the start of the held-out part.
  EXPECT_EQ(one->EvalBatches()[0].inputs[1][0].item<int64_t>(), 4500 + 16);
}

// Interleaved split of a 20000-token file (token value = position) into chunks of 500: 40 chunks, 4
// of them held out (numbers 5, 15, 25, 35), the other 36 dealt to 3 shards in turn.
TEST(WorkerDataTest, InterleavedShardsTakeEveryNthChunkAndWindowsStayInsideOneChunk) {
  ScratchDir dir;
  WriteFile(dir / "pos.tok", PositionTokens(20000));
  DataConfig c = TokensConfig(dir / "pos.tok", "interleaved");
  c.chunk_tokens = 500;
  constexpr int kShards = 3;
  const std::set<int64_t> heldout_chunks = {5, 15, 25, 35};
  std::vector<int64_t> training_chunks;
  for (int64_t i = 0; i < 40; ++i)
    if (!heldout_chunks.count(i)) training_chunks.push_back(i);
  int64_t total = 0;
  for (int s = 0; s < kShards; ++s) {
    auto d = Open(c, s, kShards);
    ASSERT_NE(d, nullptr);
    EXPECT_EQ(d->TrainTotal(), 18000);
    EXPECT_EQ(d->TrainSize(), 6000);  // 12 chunks each
    total += d->TrainSize();
    std::set<int64_t> own;
    for (size_t j = s; j < training_chunks.size(); j += kShards) own.insert(training_chunks[j]);
    std::set<int64_t> seen;
    for (int k = 0; k < 200; ++k) {
      const Batch b = d->NextTrainBatch();
      ASSERT_TRUE(b.targets.equal(b.inputs + 1)) << "a window crossed a chunk boundary";
      for (int64_t row = 0; row < b.inputs.size(0); ++row) {
        const int64_t first = b.inputs[row][0].item<int64_t>(), last = b.targets[row][15].item<int64_t>();
        ASSERT_EQ(first / 500, last / 500) << "window " << first << ".." << last;
        ASSERT_TRUE(own.count(first / 500)) << "shard " << s << " drew from chunk " << first / 500;
        seen.insert(first / 500);
      }
    }
    // The shard samples the whole file: its first and last chunks both come up.
    EXPECT_TRUE(seen.count(*own.begin()) && seen.count(*own.rbegin())) << "shard " << s;
  }
  EXPECT_EQ(total, 18000);
}

TEST(WorkerDataTest, InterleavedEvalWindowsAreSpreadOverTheHeldOutChunks) {
  ScratchDir dir;
  WriteFile(dir / "pos.tok", PositionTokens(20000));
  DataConfig c = TokensConfig(dir / "pos.tok", "interleaved");
  c.chunk_tokens = 500;
  c.eval_batches = 2;  // 8 windows of the 4 x 31 available
  auto one = Open(c, 0, 1), other = Open(c, 2, 3, /*seed=*/9);
  ASSERT_TRUE(one && other);
  EXPECT_TRUE(SameBatches(one->EvalBatches(), other->EvalBatches()));
  std::set<int64_t> chunks;
  for (const Batch& b : one->EvalBatches()) {
    EXPECT_TRUE(b.targets.equal(b.inputs + 1));
    for (int64_t row = 0; row < b.inputs.size(0); ++row) {
      const int64_t first = b.inputs[row][0].item<int64_t>();
      EXPECT_EQ(first / 500, b.targets[row][15].item<int64_t>() / 500);
      EXPECT_EQ((first - (first / 500) * 500) % 16, 0) << "windows at a stride of seq_len in a chunk";
      chunks.insert(first / 500);
    }
  }
  EXPECT_EQ(chunks, (std::set<int64_t>{5, 15, 25, 35}));  // every held-out chunk, none of training
  // A small file still interleaves: chunks shrink to 1/32 of it.
  WriteFile(dir / "small.tok", PositionTokens(3200));
  DataConfig small = TokensConfig(dir / "small.tok", "interleaved");
  auto d = Open(small, 1, 2);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->TrainTotal(), 3200 - 3 * 100);  // 32 chunks of 100, 3 held out
  EXPECT_NE(d->ShardLayout().find("chunks of 100 tokens"), std::string::npos) << d->ShardLayout();
}

TEST(WorkerDataTest, TrainingOrderIsDeterministicAndSeekable) {
  ScratchDir dir;
  WriteFile(dir / "pos.tok", PositionTokens(5000));
  const DataConfig c = TokensConfig(dir / "pos.tok");
  auto a = Open(c, 1, 2, 11);
  auto b = Open(c, 1, 2, 11);
  auto other = Open(c, 1, 2, 12);
  ASSERT_TRUE(a && b && other);
  std::vector<Batch> first;
  for (int k = 0; k < 6; ++k) first.push_back(a->NextTrainBatch());
  EXPECT_EQ(a->TrainBatchesDrawn(), 6);
  for (int k = 0; k < 6; ++k) EXPECT_TRUE(first[k].inputs.equal(b->NextTrainBatch().inputs));
  EXPECT_FALSE(first[0].inputs.equal(other->NextTrainBatch().inputs));
  ASSERT_TRUE(b->SeekTrain(3).ok());
  EXPECT_TRUE(first[3].inputs.equal(b->NextTrainBatch().inputs));
  EXPECT_EQ(b->TrainBatchesDrawn(), 4);
  EXPECT_FALSE(b->SeekTrain(-1).ok());
}

TEST(WorkerDataTest, TextFileIsReadAsBytes) {
  ScratchDir dir;
  const std::string text = testing::RepetitiveText(2000);
  WriteFile(dir / "t.txt", text);
  DataConfig c;
  c.dataset = "text:" + (dir / "t.txt");
  c.split = "contiguous";
  c.seq_len = 8;
  c.batch_size = 2;
  auto d = Open(c, 0, 1);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->NumClasses(), 256);
  EXPECT_EQ(d->TrainTotal(), 1900);
  // Any window of the training part: its bytes appear in the text.
  const Batch b = d->NextTrainBatch();
  std::string window;
  for (int i = 0; i < 8; ++i) window += static_cast<char>(b.inputs[0][i].item<int64_t>());
  EXPECT_NE(text.substr(0, 1900).find(window), std::string::npos) << window;
}

TEST(WorkerDataTest, MissingFilesGiveClearErrors) {
  ScratchDir dir;
  DataConfig c;
  c.dataset = "text:" + (dir / "nope.txt");
  auto d = OpenDataset(c, 0, 1, 0);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kNotFound);
  EXPECT_NE(d.status().message().find("nope.txt"), std::string::npos) << d.status().message();

  c.dataset = "brown";
  c.data_dir = dir.path().string();
  d = OpenDataset(c, 0, 1, 0);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("lowband data prepare brown"), std::string::npos)
      << d.status().message();

  c.dataset = "fashion-mnist";
  d = OpenDataset(c, 0, 1, 0);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("lowband data prepare fashion-mnist"), std::string::npos)
      << d.status().message();

  c.dataset = "imagenet";
  EXPECT_EQ(OpenDataset(c, 0, 1, 0).status().code(), StatusCode::kInvalidArgument);
}

TEST(WorkerDataTest, MalformedTokenDataAndTooManyShardsAreRejected) {
  ScratchDir dir;
  WriteFile(dir / "odd.tok", std::string(101, '\x01'));
  auto d = OpenDataset(TokensConfig(dir / "odd.tok"), 0, 1, 0);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("multiple of 2"), std::string::npos) << d.status().message();

  WriteFile(dir / "small.tok", PositionTokens(400));
  for (const char* split : {"contiguous", "interleaved"}) {
    d = OpenDataset(TokensConfig(dir / "small.tok", split), 39, 40, 0);
    ASSERT_FALSE(d.ok()) << split;
    EXPECT_EQ(d.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(d.status().message().find("fewer workers"), std::string::npos) << d.status().message();
  }
  DataConfig bad = TokensConfig(dir / "small.tok", "by-genre");
  EXPECT_NE(OpenDataset(bad, 0, 1, 0).status().message().find("split must be"), std::string::npos);
  bad = TokensConfig(dir / "small.tok", "interleaved");
  bad.chunk_tokens = 0;
  EXPECT_EQ(OpenDataset(bad, 0, 1, 0).status().code(), StatusCode::kInvalidArgument);

  EXPECT_EQ(OpenDataset(TokensConfig(dir / "small.tok"), 2, 2, 0).status().code(),
            StatusCode::kInvalidArgument);
}

// --- IDX --------------------------------------------------------------------------------------------

std::string IdxBytes(const std::vector<uint32_t>& dims, const std::string& data, unsigned char type = 0x08) {
  std::string out = {'\0', '\0', static_cast<char>(type), static_cast<char>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((d >> shift) & 0xFF);
  }
  return out + data;
}

TEST(WorkerIdxTest, ValidFileIsParsed) {
  ScratchDir dir;
  WriteFile(dir / "ok", IdxBytes({2, 28, 28}, std::string(2 * 784, '\x07')));
  auto h = ReadIdxHeader(dir / "ok", 3);
  ASSERT_TRUE(h.ok()) << h.status().message();
  EXPECT_EQ(h->dims, (std::vector<int64_t>{2, 28, 28}));
  EXPECT_EQ(h->data_offset, 16);
  EXPECT_EQ(h->num_elements, 2 * 784);
}

TEST(WorkerIdxTest, BadMagicTruncationAndWrongRankAreRejected) {
  ScratchDir dir;
  std::string bad_magic = IdxBytes({3}, "abc");
  bad_magic[0] = '\x1f';  // what a still-gzipped file starts with
  WriteFile(dir / "magic", bad_magic);
  auto h = ReadIdxHeader(dir / "magic", 1);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(h.status().message().find("not an IDX file"), std::string::npos) << h.status().message();

  WriteFile(dir / "type", IdxBytes({3}, "abcdefghijkl", 0x0D));  // float32 elements
  h = ReadIdxHeader(dir / "type", 1);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("0x0d"), std::string::npos) << h.status().message();

  WriteFile(dir / "short", IdxBytes({4, 28, 28}, std::string(4 * 784 - 1, '\0')));
  h = ReadIdxHeader(dir / "short", 3);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("truncated"), std::string::npos) << h.status().message();

  WriteFile(dir / "long", IdxBytes({3}, "abcd"));
  h = ReadIdxHeader(dir / "long", 1);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("trailing"), std::string::npos) << h.status().message();

  WriteFile(dir / "header", IdxBytes({4, 28, 28}, "").substr(0, 9));
  h = ReadIdxHeader(dir / "header", 3);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("truncated"), std::string::npos) << h.status().message();

  WriteFile(dir / "rank", IdxBytes({3}, "abc"));
  h = ReadIdxHeader(dir / "rank", 3);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("expected 3"), std::string::npos) << h.status().message();
}

// A fake Fashion-MNIST where the first pixel of image i is i and its label is i % 10.
void WriteFakeFashion(const std::string& data_dir, int train, int test) {
  for (const auto& [split, n] : {std::pair<std::string, int>{"train", train}, {"t10k", test}}) {
    std::string pixels(static_cast<size_t>(n) * 784, '\0'), labels;
    for (int i = 0; i < n; ++i) {
      pixels[static_cast<size_t>(i) * 784] = static_cast<char>(i);
      labels += static_cast<char>(i % 10);
    }
    const std::string base = data_dir + "/fashion-mnist/" + split;
    WriteFile(base + "-images-idx3-ubyte", IdxBytes({static_cast<uint32_t>(n), 28, 28}, pixels));
    WriteFile(base + "-labels-idx1-ubyte", IdxBytes({static_cast<uint32_t>(n)}, labels));
  }
}

int64_t ImageId(const torch::Tensor& image) {  // undo the normalization of the first pixel
  return std::lround((image[0][0][0].item<float>() * 0.3530F + 0.2860F) * 255.0F);
}

TEST(WorkerDataTest, FashionMnistShardsEpochsAndEvalSet) {
  ScratchDir dir;
  WriteFakeFashion(dir.path().string(), 30, 12);
  DataConfig c;
  c.dataset = "fashion-mnist";
  c.data_dir = dir.path().string();
  c.batch_size = 5;
  c.eval_batches = 2;
  std::vector<Batch> eval0;
  for (int s = 0; s < 3; ++s) {
    auto d = Open(c, s, 3);
    ASSERT_NE(d, nullptr);
    EXPECT_EQ(d->task(), TaskKind::kImageClassification);
    EXPECT_EQ(d->NumClasses(), 10);
    EXPECT_EQ(d->TrainTotal(), 30);
    EXPECT_EQ(d->ShardRange(), (std::pair<int64_t, int64_t>{10 * s, 10 * s + 10}));
    // Two batches are one epoch: every image of the shard exactly once.
    std::multiset<int64_t> seen;
    for (int k = 0; k < 2; ++k) {
      const Batch b = d->NextTrainBatch();
      ASSERT_EQ(b.inputs.sizes(), (std::vector<int64_t>{5, 1, 28, 28}));
      ASSERT_EQ(b.targets.sizes(), (std::vector<int64_t>{5}));
      for (int i = 0; i < 5; ++i) {
        const int64_t id = ImageId(b.inputs[i]);
        EXPECT_EQ(b.targets[i].item<int64_t>(), id % 10);
        seen.insert(id);
      }
    }
    std::multiset<int64_t> expected;
    for (int i = 10 * s; i < 10 * s + 10; ++i) expected.insert(i);
    EXPECT_EQ(seen, expected);
    // The held-out set: the first eval_batches * batch_size test images, the same for every shard.
    ASSERT_EQ(d->EvalBatches().size(), 2U);
    EXPECT_EQ(ImageId(d->EvalBatches()[1].inputs[0]), 5);
    if (s == 0) eval0 = d->EvalBatches();
    EXPECT_TRUE(SameBatches(eval0, d->EvalBatches()));
  }
}

TEST(WorkerDataTest, FashionMnistRejectsMismatchedFilesAndBadLabels) {
  ScratchDir dir;
  WriteFakeFashion(dir.path().string(), 30, 12);
  WriteFile(dir / "fashion-mnist/train-labels-idx1-ubyte", IdxBytes({29}, std::string(29, '\0')));
  DataConfig c;
  c.dataset = "fashion-mnist";
  c.data_dir = dir.path().string();
  auto d = OpenDataset(c, 0, 1, 0);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("29 labels"), std::string::npos) << d.status().message();

  WriteFile(dir / "fashion-mnist/train-labels-idx1-ubyte", IdxBytes({30}, std::string(30, '\x0b')));
  d = OpenDataset(c, 0, 1, 0);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("outside [0, 10)"), std::string::npos) << d.status().message();
}

TEST(WorkerDataTest, ModelMustFitTheData) {
  ScratchDir dir;
  WriteFile(dir / "t.txt", testing::RepetitiveText(3000));
  DataConfig c;
  c.dataset = "text:" + (dir / "t.txt");
  c.seq_len = 16;
  auto d = Open(c, 0, 1);
  ASSERT_NE(d, nullptr);
  ModelConfig m;
  m.context = 16;
  EXPECT_TRUE(CheckModelFitsData(m, c, *d).ok());
  m.vocab = 128;
  EXPECT_FALSE(CheckModelFitsData(m, c, *d).ok());
  m.vocab = 256;
  m.context = 8;
  EXPECT_FALSE(CheckModelFitsData(m, c, *d).ok());
  m.kind = "mlp";
  EXPECT_FALSE(CheckModelFitsData(m, c, *d).ok());
}

// --- spam-assassin (text classification) -------------------------------------------------------------

// Writes <data_dir>/spam-assassin/{train,heldout}.jsonl as `lowband data prepare` would.
void WriteSpamFile(const std::string& path, const std::vector<std::pair<int, std::string>>& examples) {
  std::string lines;
  for (const auto& [label, text] : examples) {
    lines += nlohmann::json({{"label", label}, {"group", label ? "spam-1" : "easy-ham-1"}, {"text", text}})
                 .dump() +
             "\n";
  }
  WriteFile(path, lines);
}

// "m07 xxxxxxx": a letter, the two-digit index, a space, `xs` x's.
std::string MailText(char letter, int i, int xs) {
  char head[8];
  std::snprintf(head, sizeof head, "%c%02d ", letter, i);
  return head + std::string(static_cast<size_t>(xs), 'x');
}

// Train e-mail i is MailText('m', i, i) with label i % 2; held-out e-mail i is MailText('h', i, 9)
// with label 1 when i % 3 == 0.
void WriteFakeSpam(const std::string& data_dir, int train, int heldout) {
  std::vector<std::pair<int, std::string>> t, h;
  for (int i = 0; i < train; ++i) t.emplace_back(i % 2, MailText('m', i, i));
  for (int i = 0; i < heldout; ++i) h.emplace_back(i % 3 == 0, MailText('h', i, 9));
  WriteSpamFile(data_dir + "/spam-assassin/train.jsonl", t);
  WriteSpamFile(data_dir + "/spam-assassin/heldout.jsonl", h);
}

DataConfig SpamConfig(const std::string& data_dir) {
  DataConfig c;
  c.dataset = "spam-assassin";
  c.data_dir = data_dir;
  c.batch_size = 2;
  c.seq_len = 12;
  c.eval_batches = 2;
  return c;
}

// The bytes of row i up to its length; checks that the rest is padding.
std::string RowText(const Batch& b, int64_t i) {
  const int64_t n = b.lengths[i].item<int64_t>();
  std::string text;
  for (int64_t k = 0; k < b.inputs.size(1); ++k) {
    const int64_t id = b.inputs[i][k].item<int64_t>();
    if (k < n) {
      EXPECT_GE(id, 1);
      EXPECT_LE(id, 255);
      text += static_cast<char>(id);
    } else {
      EXPECT_EQ(id, 0) << "padding at " << k;
    }
  }
  return text;
}

TEST(WorkerDataTest, SpamAssassinBatchesArePaddedBytesWithLengthsAndLabels) {
  ScratchDir dir;
  WriteFakeSpam(dir.path().string(), 12, 7);
  const DataConfig c = SpamConfig(dir.path().string());
  auto d = Open(c, 0, 1);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->task(), TaskKind::kTextClassification);
  EXPECT_EQ(d->NumClasses(), 2);
  EXPECT_EQ(d->TrainTotal(), 12);
  EXPECT_EQ(d->TrainSize(), 12);
  // Six batches are one epoch: every e-mail exactly once.
  std::multiset<int> seen;
  for (int k = 0; k < 6; ++k) {
    const Batch b = d->NextTrainBatch();
    ASSERT_EQ(b.inputs.sizes(), (std::vector<int64_t>{2, 12}));
    ASSERT_EQ(b.targets.sizes(), (std::vector<int64_t>{2}));
    ASSERT_EQ(b.lengths.sizes(), (std::vector<int64_t>{2}));
    EXPECT_EQ(b.inputs.scalar_type(), torch::kLong);
    EXPECT_EQ(b.lengths.scalar_type(), torch::kLong);
    for (int64_t i = 0; i < 2; ++i) {
      const std::string text = RowText(b, i);
      ASSERT_GE(text.size(), 3U);
      const int id = std::stoi(text.substr(1, 2));
      EXPECT_EQ(text, MailText('m', id, id).substr(0, 12));
      EXPECT_EQ(b.lengths[i].item<int64_t>(), std::min(12, 4 + id));  // cut to seq_len
      EXPECT_EQ(b.targets[i].item<int64_t>(), id % 2);
      seen.insert(id);
    }
  }
  std::multiset<int> all;
  for (int i = 0; i < 12; ++i) all.insert(i);
  EXPECT_EQ(seen, all);
}

TEST(WorkerDataTest, SpamAssassinEmptyTextsAndZeroBytes) {
  ScratchDir dir;
  WriteSpamFile(dir / "spam-assassin/train.jsonl", {{0, ""}, {1, std::string("a\0b", 3)}, {0, "abc"}});
  WriteSpamFile(dir / "spam-assassin/heldout.jsonl", {{1, "x"}});
  DataConfig c = SpamConfig(dir.path().string());
  c.batch_size = 3;
  c.seq_len = 4;
  auto d = Open(c, 0, 1);
  ASSERT_NE(d, nullptr);
  const Batch b = d->NextTrainBatch();
  std::multiset<std::string> texts;
  for (int64_t i = 0; i < 3; ++i) texts.insert(RowText(b, i));
  EXPECT_EQ(texts, (std::multiset<std::string>{" ", "a b", "abc"}));  // 0 is only padding
}

TEST(WorkerDataTest, SpamAssassinShardsAreDisjointAndCoverTheTrainingSet) {
  ScratchDir dir;
  WriteFakeSpam(dir.path().string(), 13, 7);
  const DataConfig c = SpamConfig(dir.path().string());
  int64_t next_begin = 0;
  std::set<int> all;
  for (int s = 0; s < 3; ++s) {
    auto d = Open(c, s, 3);
    ASSERT_NE(d, nullptr);
    const auto [begin, end] = d->ShardRange();
    EXPECT_EQ(begin, next_begin);
    EXPECT_EQ(d->TrainTotal(), 13);
    next_begin = end;
    // Contiguous slices of train.jsonl: shard s holds e-mails [begin, end).
    std::set<int> ids;
    for (int k = 0; k < 10; ++k) {
      const Batch b = d->NextTrainBatch();
      for (int64_t i = 0; i < 2; ++i) ids.insert(std::stoi(RowText(b, i).substr(1, 2)));
    }
    EXPECT_EQ(static_cast<int64_t>(ids.size()), end - begin);
    EXPECT_EQ(*ids.begin(), begin);
    EXPECT_EQ(*ids.rbegin(), end - 1);
    all.insert(ids.begin(), ids.end());
  }
  EXPECT_EQ(next_begin, 13);
  EXPECT_EQ(all.size(), 13U);

  // More shards than e-mails: an empty shard is refused with advice.
  auto d = OpenDataset(c, 0, 14, 0);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(d.status().message().find("fewer workers"), std::string::npos) << d.status().message();
}

TEST(WorkerDataTest, SpamAssassinOrderIsDeterministicAndSeekable) {
  ScratchDir dir;
  WriteFakeSpam(dir.path().string(), 12, 7);
  const DataConfig c = SpamConfig(dir.path().string());
  auto a = Open(c, 0, 1, 11);
  auto b = Open(c, 0, 1, 11);
  auto other = Open(c, 0, 1, 12);
  ASSERT_TRUE(a && b && other);
  std::vector<Batch> first;
  for (int k = 0; k < 15; ++k) first.push_back(a->NextTrainBatch());  // two and a half epochs
  bool differs = false;
  for (int k = 0; k < 15; ++k) {
    const Batch x = b->NextTrainBatch();
    EXPECT_TRUE(first[k].inputs.equal(x.inputs) && first[k].targets.equal(x.targets) &&
                first[k].lengths.equal(x.lengths))
        << "batch " << k;
    differs = differs || !first[k].inputs.equal(other->NextTrainBatch().inputs);
  }
  EXPECT_TRUE(differs);
  // A new epoch is a new order.
  bool new_order = false;
  for (int k = 0; k < 6; ++k) new_order = new_order || !first[k].inputs.equal(first[k + 6].inputs);
  EXPECT_TRUE(new_order);
  // Resuming at batch k draws exactly batch k, also in a later epoch.
  for (const int k : {13, 3, 7}) {
    ASSERT_TRUE(b->SeekTrain(k).ok());
    EXPECT_TRUE(first[k].inputs.equal(b->NextTrainBatch().inputs)) << k;
    EXPECT_EQ(b->TrainBatchesDrawn(), k + 1);
  }
}

TEST(WorkerDataTest, SpamAssassinEvalBatchesAreTheHeldOutFileInOrderForAnyShardCount) {
  ScratchDir dir;
  WriteFakeSpam(dir.path().string(), 12, 7);
  DataConfig c = SpamConfig(dir.path().string());
  c.batch_size = 3;
  c.eval_batches = 5;  // more than the 7 held-out e-mails fill
  auto one = Open(c, 0, 1, 1);
  auto a = Open(c, 0, 4, 2);
  auto b = Open(c, 3, 4, 3);
  ASSERT_TRUE(one && a && b);
  const auto& eval = one->EvalBatches();
  ASSERT_EQ(eval.size(), 3U);  // 3 + 3 + 1
  EXPECT_EQ(eval[2].inputs.size(0), 1);
  EXPECT_TRUE(SameBatches(eval, a->EvalBatches()));
  EXPECT_TRUE(SameBatches(eval, b->EvalBatches()));
  for (size_t k = 0; k < eval.size(); ++k) {
    EXPECT_TRUE(eval[k].lengths.equal(a->EvalBatches()[k].lengths));
    for (int64_t i = 0; i < eval[k].inputs.size(0); ++i) {
      const int id = static_cast<int>(k) * 3 + static_cast<int>(i);
      EXPECT_EQ(RowText(eval[k], i), MailText('h', id, 9).substr(0, 12));
      EXPECT_EQ(eval[k].targets[i].item<int64_t>(), id % 3 == 0 ? 1 : 0);
    }
  }
  // eval_batches caps the set: the first eval_batches * batch_size e-mails.
  c.eval_batches = 1;
  auto capped = Open(c, 0, 1);
  ASSERT_NE(capped, nullptr);
  ASSERT_EQ(capped->EvalBatches().size(), 1U);
  EXPECT_TRUE(capped->EvalBatches()[0].inputs.equal(eval[0].inputs));
}

TEST(WorkerDataTest, SpamAssassinNotPreparedOrMalformedGivesClearErrors) {
  ScratchDir dir;
  DataConfig c = SpamConfig(dir.path().string());
  auto d = OpenDataset(c, 0, 1, 0);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kNotFound);
  EXPECT_NE(d.status().message().find("lowband data prepare spam-assassin --data-dir " + dir.path().string()),
            std::string::npos)
      << d.status().message();

  WriteFakeSpam(dir.path().string(), 4, 2);
  WriteFile(dir / "spam-assassin/train.jsonl",
            "{\"label\": 0, \"text\": \"ok\"}\n{\"label\": 2, \"text\": \"x\"}\n");
  d = OpenDataset(c, 0, 1, 0);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(d.status().message().find("line 2"), std::string::npos) << d.status().message();
  EXPECT_NE(d.status().message().find("--force"), std::string::npos) << d.status().message();

  WriteFile(dir / "spam-assassin/train.jsonl", "{\"label\": 0, \"text\": \"ok\"}\nnot json\n");
  d = OpenDataset(c, 0, 1, 0);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("not a JSON object"), std::string::npos) << d.status().message();
}

TEST(WorkerDataTest, SpamAssassinNeedsAByteLevelGpt) {
  ScratchDir dir;
  WriteFakeSpam(dir.path().string(), 4, 2);
  const DataConfig c = SpamConfig(dir.path().string());
  auto d = Open(c, 0, 1);
  ASSERT_NE(d, nullptr);
  ModelConfig m;
  m.context = 12;
  EXPECT_TRUE(CheckModelFitsData(m, c, *d, TrainingPath::kSplit).ok());
  // launch/worker cannot train it (the GPT's loss wants [B, T] targets): refused up front, with the way.
  Status engine = CheckModelFitsData(m, c, *d);
  ASSERT_FALSE(engine.ok());
  EXPECT_NE(engine.message().find("split-client"), std::string::npos) << engine.message();
  m.vocab = 128;
  Status s = CheckModelFitsData(m, c, *d, TrainingPath::kSplit);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("vocab >= 256"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("classification head"), std::string::npos) << s.message();
  m.vocab = 256;
  m.context = 8;
  s = CheckModelFitsData(m, c, *d, TrainingPath::kSplit);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("context"), std::string::npos) << s.message();
  m.kind = "mlp";
  m.context = 12;
  EXPECT_FALSE(CheckModelFitsData(m, c, *d, TrainingPath::kSplit).ok());
}

}  // namespace
}  // namespace lowband::worker
