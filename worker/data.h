// Datasets a worker trains on: byte-level text (the Brown corpus or any file), flat uint16 token
// files, Fashion-MNIST, and the SpamAssassin e-mails (spam/ham classification of byte sequences), each
// split into a fixed held-out set and per-worker training shards.
//
// Splits. The held-out set never depends on the number of workers: for token data it is
// `heldout_fraction` of the tokens (data.split "interleaved", the default: that share of fixed-size
// chunks spread evenly over the file; "contiguous": the last tokens), for Fashion-MNIST the official
// t10k test set, for spam-assassin the e-mails `lowband data prepare` put in heldout.jsonl (by
// checksum); every worker builds the same evaluation batches from it. The training part is split into
// `num_shards` disjoint shards that cover it exactly: token data by chunks dealt round-robin
// (interleaved) or in contiguous slices; the 60k training images and the lines of train.jsonl in
// contiguous slices.
//
// Sampling. Token data: each training example is a random window of seq_len+1 tokens inside one
// chunk of the shard (inputs = the first seq_len, targets = the last seq_len). Images and e-mails: the shard
// is visited in a fresh random order every epoch. All are a pure function of (seed, shard, batch index), so a
// worker can resume at batch k with SeekTrain(k) and draw exactly the batches it would have drawn.
//
// Text classification (spam-assassin): an example is the first seq_len bytes of an e-mail's cleaned
// text as token ids 1..255 (a 0 byte becomes a space, so that 0 is only padding), padded at the end
// with 0 to seq_len; Batch::lengths holds the real bytes of each row (>= 1: an empty text is one
// space) and targets the labels (1 spam, 0 ham). Evaluation batches are the first
// eval_batches * batch_size held-out e-mails in file order (ordered by checksum, so labels are mixed;
// the last batch may be smaller).
//
// Files (written by `lowband data prepare`, see data_prep.h):
//   <data_dir>/brown/brown.txt                   UTF-8 text, read as bytes (vocabulary 256)
//   <data_dir>/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte   uncompressed IDX
//   <data_dir>/spam-assassin/{train,heldout}.jsonl   one {"label": 0|1, "text": ...} object per line
//
// Thread safety: a Dataset is used by one thread at a time. Lifetimes: batches are fresh CPU tensors
// owned by the caller; EvalBatches() stays valid as long as the Dataset.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "quant/status.h"
#include "worker/config.h"
#include "worker/model.h"

namespace lowband::worker {

// What the dataset's batches are for, so a caller can check it against the model.
enum class TaskKind { kLanguageModel, kImageClassification, kTextClassification };

class Dataset {
 public:
  virtual ~Dataset();
  Dataset(const Dataset&) = delete;
  Dataset& operator=(const Dataset&) = delete;

  // The next training batch from this worker's shard; deterministic from (seed, shard, batch index).
  virtual Batch NextTrainBatch() = 0;
  // Tokens (token data) or examples (images, e-mails) in this worker's training shard.
  virtual int64_t TrainSize() const = 0;

  // The fixed held-out batches: identical on every worker, whatever the shard count.
  const std::vector<Batch>& EvalBatches() const { return eval_; }
  // This shard's slice [begin, end) of the training part, in tokens or examples (for interleaved
  // token data, [0, TrainSize()): its chunks come from all over the file; see ShardLayout).
  std::pair<int64_t, int64_t> ShardRange() const { return {shard_begin_, shard_begin_ + TrainSize()}; }
  // Where this shard's examples come from, in words (for `lowband data info` and logs).
  virtual std::string ShardLayout() const {
    return "[" + std::to_string(shard_begin_) + ", " + std::to_string(shard_begin_ + TrainSize()) +
           ") of the training part";
  }
  // Size of the training part (all shards together), in tokens or examples.
  int64_t TrainTotal() const { return train_total_; }
  // Number of distinct targets: token ids (256 for bytes) or classes (10 for Fashion-MNIST, 2 for
  // spam-assassin).
  int64_t NumClasses() const { return num_classes_; }
  TaskKind task() const { return task_; }
  // Training batches drawn so far (a resumable position; store it in checkpoints).
  int64_t TrainBatchesDrawn() const { return drawn_; }
  // Positions the training stream so that the next batch is batch number `batches_drawn`, exactly as
  // if that many batches had been drawn since opening.
  [[nodiscard]] Status SeekTrain(int64_t batches_drawn);
  // Examples (windows, images, e-mails) per training batch: data.batch_size unless changed. A site of R
  // ranks draws R x batch_size and each rank trains on its slice (engine.h); evaluation batches keep
  // batch_size. Call before drawing: the stream is a function of the batch size.
  int64_t TrainBatchSize() const { return train_batch_size_; }
  [[nodiscard]] Status SetTrainBatchSize(int64_t n);

 protected:
  Dataset(TaskKind task, int64_t num_classes, std::vector<Batch> eval, int64_t shard_begin,
          int64_t train_total)
      : task_(task),
        num_classes_(num_classes),
        eval_(std::move(eval)),
        shard_begin_(shard_begin),
        train_total_(train_total) {}

  // The position NextTrainBatch draws from; it advances it by one per batch.
  int64_t drawn_ = 0;
  // Set by OpenDataset (data.batch_size) or SetTrainBatchSize.
  int64_t train_batch_size_ = 1;

 private:
  TaskKind task_;
  int64_t num_classes_;
  std::vector<Batch> eval_;
  int64_t shard_begin_;
  int64_t train_total_;
};

// Opens `config.dataset` and returns the training shard `shard` of `num_shards` (0 <= shard <
// num_shards). The seed drives the training order only; the split does not depend on it.
[[nodiscard]] StatusOr<std::unique_ptr<Dataset>> OpenDataset(const DataConfig& config, int shard,
                                                             int num_shards, uint64_t seed);

// Checks that `model` can train on `data`: a GPT for token data with vocab >= NumClasses, a classifier
// with num_classes >= NumClasses for images, a byte-level GPT (vocab >= 256, context >= seq_len) for
// text classification (the split-learning path puts its own classification head on it).
// Which training path will use the data: the Streaming DiLoCo / ddp engine (launch, worker) trains
// language models and image classifiers; split learning (split-client) also trains text classifiers.
enum class TrainingPath { kEngine, kSplit };

[[nodiscard]] Status CheckModelFitsData(const ModelConfig& model, const DataConfig& data_config,
                                        const Dataset& data, TrainingPath path = TrainingPath::kEngine);

// ---------------------------------------------------------------------------------------------------
// IDX files (the format of MNIST and Fashion-MNIST): 2 zero bytes, a type byte (0x08 = unsigned byte,
// the only type supported here), a dimension count, that many big-endian uint32 sizes, then the data.

struct IdxHeader {
  std::vector<int64_t> dims;  // e.g. {60000, 28, 28}
  int64_t data_offset = 0;    // bytes before the first element (4 + 4 * dims.size())
  int64_t num_elements = 0;   // product of dims
};

// Reads and validates the header of an uncompressed unsigned-byte IDX file: magic, dimension count
// `expected_rank`, and a file size that matches the dimensions exactly.
[[nodiscard]] StatusOr<IdxHeader> ReadIdxHeader(const std::string& path, int expected_rank);

// Validates a whole IDX file held in memory (same checks as ReadIdxHeader); `what` names it in errors.
[[nodiscard]] StatusOr<IdxHeader> ParseIdxHeader(std::string_view bytes, int expected_rank,
                                                 const std::string& what);

}  // namespace lowband::worker
