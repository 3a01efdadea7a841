// Crash-safe file writes (prepared datasets, worker and coordinator checkpoints).
//
// WriteFileAtomically writes a temporary file next to the target, fsyncs it, renames it over the
// target and fsyncs the directory: after a crash at any point the target holds either its old
// contents or the new ones, never a mix. Thread safety: free functions, safe to call concurrently for
// different paths.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "quant/status.h"

namespace lowband::comm {

// Replaces `path` with `bytes` atomically and durably (temp file, fsync, rename, fsync directory).
// The file gets permission bits `mode` (0600 for files holding secrets).
[[nodiscard]] Status WriteFileAtomically(const std::filesystem::path& path, std::string_view bytes,
                                         unsigned mode = 0644);

// fsyncs a directory so that renames and creations inside it survive a crash.
[[nodiscard]] Status SyncDirectory(const std::filesystem::path& dir);

// Reads a whole file.
[[nodiscard]] StatusOr<std::string> ReadWholeFile(const std::filesystem::path& path);

}  // namespace lowband::comm
