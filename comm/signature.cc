#include "comm/signature.h"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace lowband::comm {
namespace {

constexpr uint64_t kFnvOffset = 1469598103934665603ULL;
constexpr uint64_t kFnvPrime = 1099511628211ULL;

class Fnv1a {
 public:
  void Byte(uint8_t b) {
    h_ ^= b;
    h_ *= kFnvPrime;
  }
  // Fixed-width little-endian, independent of the host's byte order.
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      Byte(static_cast<uint8_t>(v >> (8 * i)));
    }
  }
  // Length-prefixed so that ("ab","c") and ("a","bc") differ.
  void Str(const std::string& s) {
    U64(s.size());
    for (char c : s) {
      Byte(static_cast<uint8_t>(c));
    }
  }
  uint64_t value() const { return h_; }

 private:
  uint64_t h_ = kFnvOffset;
};

}  // namespace

uint64_t TensorInfo::element_count() const {
  uint64_t n = 1;
  for (int64_t d : shape) {
    n *= static_cast<uint64_t>(d < 0 ? 0 : d);
  }
  return n;
}

uint64_t ModelSignature::total_elements() const {
  uint64_t n = 0;
  for (const TensorInfo& t : tensors) {
    n += t.element_count();
  }
  return n;
}

void ModelSignature::Seal() { hash = ComputeSignatureHash(tensors); }

uint64_t ComputeSignatureHash(const std::vector<TensorInfo>& tensors) {
  Fnv1a h;
  h.Str("lowband.signature.v1");
  h.U64(tensors.size());
  for (const TensorInfo& t : tensors) {
    h.Str(t.name);
    h.Str(t.dtype);
    h.U64(t.shape.size());
    for (int64_t d : t.shape) {
      h.U64(static_cast<uint64_t>(d));
    }
  }
  return h.value();
}

std::string ShapeToString(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

Status ValidateSignature(const ModelSignature& signature) {
  if (signature.tensors.empty()) {
    return InvalidArgument("model signature has no tensors; a model must have at least one parameter");
  }
  std::set<std::string> names;
  // Every parameter must fit in one flat fp32 vector: element counts never wrap around.
  constexpr uint64_t kMaxElements = static_cast<uint64_t>(std::numeric_limits<std::ptrdiff_t>::max()) / 4;
  uint64_t total = 0;
  for (size_t i = 0; i < signature.tensors.size(); ++i) {
    const TensorInfo& t = signature.tensors[i];
    if (t.name.empty()) {
      return InvalidArgument(fmt::format("tensor {} of the signature has an empty name", i));
    }
    if (!names.insert(t.name).second) {
      return InvalidArgument(
          fmt::format("tensor name '{}' appears twice in the signature (second at index {}); "
                      "parameter names must be unique",
                      t.name, i));
    }
    uint64_t count = 1;
    for (int64_t d : t.shape) {
      if (d < 0) {
        return InvalidArgument(
            fmt::format("tensor '{}' has a negative dimension in shape {}", t.name, ShapeToString(t.shape)));
      }
      if (__builtin_mul_overflow(count, static_cast<uint64_t>(d), &count)) {
        count = kMaxElements + 1;
      }
    }
    if (__builtin_add_overflow(total, count, &total) || total > kMaxElements) {
      return InvalidArgument(
          fmt::format("tensor '{}' (shape {}) takes the model beyond {} parameters, more "
                      "than one fp32 vector can hold; the shape is corrupt",
                      t.name, ShapeToString(t.shape), kMaxElements));
    }
    if (t.dtype.empty()) {
      return InvalidArgument(fmt::format("tensor '{}' has an empty dtype", t.name));
    }
  }
  const uint64_t expected = ComputeSignatureHash(signature.tensors);
  if (signature.hash != expected) {
    return InvalidArgument(
        fmt::format("signature hash {:#018x} does not match its tensors (expected {:#018x}); "
                    "call ModelSignature::Seal() after filling the tensors",
                    signature.hash, expected));
  }
  return Status::Ok();
}

StatusOr<ModelSignature> MakeSignature(std::vector<TensorInfo> tensors) {
  ModelSignature s;
  s.tensors = std::move(tensors);
  s.Seal();
  LOWBAND_RETURN_IF_ERROR(ValidateSignature(s));
  return s;
}

Status CompareSignatures(const ModelSignature& ours, const ModelSignature& theirs) {
  constexpr const char* kAdvice =
      "every worker of a run must build the same model (same config and code version)";
  const size_t n = std::min(ours.tensors.size(), theirs.tensors.size());
  for (size_t i = 0; i < n; ++i) {
    const TensorInfo& a = ours.tensors[i];
    const TensorInfo& b = theirs.tensors[i];
    if (a.name != b.name) {
      return FailedPrecondition(
          fmt::format("model signature mismatch at tensor {}: the run expects '{}', the "
                      "worker has '{}'; {}",
                      i, a.name, b.name, kAdvice));
    }
    if (a.shape != b.shape) {
      return FailedPrecondition(
          fmt::format("model signature mismatch at tensor {} ('{}'): the run expects shape "
                      "{}, the worker has {}; {}",
                      i, a.name, ShapeToString(a.shape), ShapeToString(b.shape), kAdvice));
    }
    if (a.dtype != b.dtype) {
      return FailedPrecondition(
          fmt::format("model signature mismatch at tensor {} ('{}'): the run expects dtype "
                      "{}, the worker has {}; {}",
                      i, a.name, a.dtype, b.dtype, kAdvice));
    }
  }
  if (ours.tensors.size() != theirs.tensors.size()) {
    return FailedPrecondition(
        fmt::format("model signature mismatch: the run expects {} tensors, the worker has "
                    "{}; {}",
                    ours.tensors.size(), theirs.tensors.size(), kAdvice));
  }
  if (ours.hash != theirs.hash) {
    return FailedPrecondition(
        fmt::format("model signature hash mismatch: the run expects {:#018x}, the worker "
                    "sent {:#018x} for identical tensors; the worker must send "
                    "ComputeSignatureHash(tensors)",
                    ours.hash, theirs.hash));
  }
  return Status::Ok();
}

}  // namespace lowband::comm
