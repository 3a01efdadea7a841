// Crash-safe file writes for worker-side state (prepared datasets, checkpoints).
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

namespace lowband::worker {

// Replaces `path` with `bytes` atomically and durably (temp file, fsync, rename, fsync directory).
[[nodiscard]] Status WriteFileAtomically(const std::filesystem::path& path, std::string_view bytes);

// fsyncs a directory so that renames and creations inside it survive a crash.
[[nodiscard]] Status SyncDirectory(const std::filesystem::path& dir);

// Reads a whole file.
[[nodiscard]] StatusOr<std::string> ReadWholeFile(const std::filesystem::path& path);

}  // namespace lowband::worker
