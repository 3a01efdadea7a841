// Model signature: the names, shapes and dtypes of a model's parameter tensors, and a hash of them.
//
// Workers and the coordinator agree on what they train by comparing signatures: a worker converts
// its model (LibTorch or anything else) into a ModelSignature, presents it at Join, and the
// coordinator refuses a worker whose signature differs from the run's, naming the first difference.
// The hash is FNV-1a (64 bit) over a canonical little-endian byte encoding of every field, so it
// is the same on every platform and build; tensor order matters (it is the flat layout order).
//
// Thread safety: plain values; const functions may be called concurrently.
// Lifetimes: nothing is retained.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/status.h"

namespace lowband::comm {

struct TensorInfo {
  std::string name;            // e.g. "blocks.3.attn.qkv.weight"
  std::vector<int64_t> shape;  // empty for a scalar
  std::string dtype = "float32";

  // Product of the dimensions (1 for a scalar).
  uint64_t element_count() const;
  bool operator==(const TensorInfo&) const = default;
};

struct ModelSignature {
  std::vector<TensorInfo> tensors;
  // ComputeSignatureHash(tensors); set it with Seal() after filling `tensors`.
  uint64_t hash = 0;

  // Sum of the tensors' element counts: the length of the flat fp32 parameter vector.
  uint64_t total_elements() const;
  // Sets `hash` from `tensors`.
  void Seal();
  bool operator==(const ModelSignature&) const = default;
};

// FNV-1a 64 over the canonical encoding of the tensor list.
uint64_t ComputeSignatureHash(const std::vector<TensorInfo>& tensors);

// Builds a sealed signature from tensors (checks names are unique and non-empty, dims >= 0).
StatusOr<ModelSignature> MakeSignature(std::vector<TensorInfo> tensors);

// OK when the signature is well formed and its hash matches its tensors.
Status ValidateSignature(const ModelSignature& signature);

// OK when `theirs` equals `ours`; otherwise a FailedPrecondition naming the first difference
// (tensor count, name, shape or dtype at index i), both values, and what to do.
Status CompareSignatures(const ModelSignature& ours, const ModelSignature& theirs);

// "[4, 16]" for messages.
std::string ShapeToString(const std::vector<int64_t>& shape);

}  // namespace lowband::comm
