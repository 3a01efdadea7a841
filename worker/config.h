// The configuration structs of worker/: what model to build, what data to train on, how the inner
// optimizer runs. Plain values without LibTorch, so that code which only reads or writes a run's
// configuration (the CLI, the coordinator) does not need LibTorch's headers.
#pragma once

#include <cstdint>
#include <string>

namespace lowband::worker {

// Which model to build and how big. Defaults are a GPT small enough to train on a 2-core CPU demo
// (about 0.84M parameters: 4 blocks of width 128 over 256 byte tokens, context 128).
struct ModelConfig {
  // "gpt": decoder-only transformer language model (pre-LayerNorm, learned positions, GELU MLP).
  // "mlp": Fashion-MNIST classifier, n_layers hidden ReLU layers of width `hidden`.
  // "cnn": Fashion-MNIST classifier, two conv blocks (3x3 conv + ReLU + 2x2 max-pool) with
  //        max(8, hidden/16) and twice that many channels, one ReLU layer of width `hidden`, head.
  std::string kind = "gpt";
  // GPT: token vocabulary size; every token id in the data must be < vocab (256 covers bytes).
  int vocab = 256;
  // GPT: residual stream width; must be divisible by n_heads.
  int d_model = 128;
  // GPT: number of transformer blocks; MLP: number of hidden layers (CNN ignores it).
  int n_layers = 4;
  // GPT: attention heads per block.
  int n_heads = 4;
  // GPT: longest sequence the model accepts (size of the learned position table); set the data's
  // seq_len to this.
  int context = 128;
  // Dropout probability on attention weights and residual branches in training mode (GPT) or after
  // hidden layers (MLP/CNN). 0 keeps training deterministic and is right for short runs.
  double dropout = 0.0;
  // GPT: the output head reuses the token embedding matrix (no separate "head.weight").
  bool tie_embeddings = true;
  // MLP: width of each hidden layer; CNN: width of the fully connected layer (channels derived).
  int hidden = 256;
  // MLP/CNN: number of output classes (10 for Fashion-MNIST).
  int num_classes = 10;
  // Where the parameters live: "cpu", "cuda" or "cuda:N" (needs a CUDA build of LibTorch). Batches
  // may come from the CPU; the model moves them. In training, plain "cuda" gives every process its own
  // GPU by local rank (worker/collectives.h, SelectRankDevice).
  std::string device = "cpu";
};

struct DataConfig {
  // What to train on:
  //   "brown"            <data_dir>/brown/brown.txt as bytes (run `lowband data prepare brown`)
  //   "text:PATH"        any file, read as bytes (UTF-8 text works as is; vocabulary 256)
  //   "tokens:PATH"      a flat file of little-endian uint16 token ids (vocabulary = max id + 1)
  //   "fashion-mnist"    <data_dir>/fashion-mnist (run `lowband data prepare fashion-mnist`)
  //   "spam-assassin"    <data_dir>/spam-assassin/{train,heldout}.jsonl: spam/ham classification of
  //                      e-mails as byte sequences (run `lowband data prepare spam-assassin`); the
  //                      held-out split is fixed by the preparation, heldout_fraction does not apply
  std::string dataset = "brown";
  // Directory `lowband data prepare` wrote into.
  std::string data_dir = "data";
  // Examples (windows or images) per batch, for training and evaluation alike.
  int batch_size = 16;
  // Tokens per training window (language data), or bytes kept of each e-mail (text classification,
  // padded to this length); should equal the model's context.
  int seq_len = 128;
  // Token data: fraction of the tokens held out for evaluation.
  double heldout_fraction = 0.05;
  // Token data: how the tokens are split into the held-out set and the workers' shards.
  //   "interleaved"  the file is cut into chunks of chunk_tokens; heldout_fraction of them, spread
  //                  evenly over the file, are held out, and training chunk j belongs to shard
  //                  j mod workers, so every shard and the held-out set sample the whole text (the
  //                  i.i.d. shards of one data-parallel job: what a multi-site run is compared with)
  //   "contiguous"   the last heldout_fraction of the tokens is held out and shard i is the i-th
  //                  contiguous slice of the rest: in a file ordered by topic (the Brown corpus is
  //                  ordered by genre) every worker trains on other text (non-i.i.d. sites)
  std::string split = "interleaved";
  // Token data, interleaved split: tokens per chunk (at most 1/32 of the file is used, and at least
  // seq_len + 1). Training windows never cross a chunk boundary.
  int64_t chunk_tokens = 4096;
  // Number of evaluation batches built from the held-out set (fewer if it is too small). Token data:
  // non-overlapping windows, from the start of the held-out part (contiguous) or spread evenly over
  // the held-out chunks (interleaved); images and e-mails: the first eval_batches * batch_size
  // held-out examples.
  int eval_batches = 16;
};

struct InnerOptimizerConfig {
  // Peak learning rate, reached at the end of warmup (1e-3 suits the small default GPT).
  double lr = 1e-3;
  // AdamW moment decay rates; beta2 0.95 is the usual choice for transformer LMs (steadier than 0.999).
  double beta1 = 0.9;
  double beta2 = 0.95;
  // AdamW denominator epsilon.
  double eps = 1e-8;
  // Decoupled weight decay (per unit of lr), on matrices and embeddings only.
  double weight_decay = 0.1;
  // Updates of linear warmup from lr/warmup_steps to lr; 0 starts at the peak.
  int64_t warmup_steps = 50;
  // Update at which the cosine reaches min_lr (the planned length of training); the rate stays at
  // min_lr after it.
  int64_t total_steps = 1000;
  // min_lr = lr * min_lr_ratio.
  double min_lr_ratio = 0.1;
  // Largest global L2 norm of the gradients; larger gradients are scaled down to it. <= 0 disables.
  double grad_clip = 1.0;
};

}  // namespace lowband::worker
