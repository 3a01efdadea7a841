// Safetensors files (the Hugging Face format, https://huggingface.co/docs/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets": [b, e]},
// "__metadata__": {string: string}}, then the raw little-endian tensor bytes. Split learning reads base
// weights from it and writes LoRA adapters to it (the file PEFT-style tools load).
//
// Reading validates everything before returning a tensor: header length within the file, valid JSON,
// known dtype (F32, F16, BF16, F64), shape x dtype size == the byte range, ranges inside the data
// section and not overlapping. Writing is atomic (temporary file, fsync, rename).
//
// Thread safety: free functions; concurrent calls on different files are safe. Lifetimes: returned
// tensors own their memory (CPU, float32).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "quant/status.h"

namespace lowband::split {

struct SafetensorsFile {
  // Every tensor, converted to float32 on the CPU.
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

[[nodiscard]] StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);

// Writes `tensors` (any floating dtype, any device; stored as F32) in the given order, with metadata.
[[nodiscard]] Status WriteSafetensors(const std::string& path,
                                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                      const std::map<std::string, std::string>& metadata = {});

}  // namespace lowband::split
