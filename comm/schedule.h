// Streaming DiLoCo fragments and their sync schedule (DESIGN.md §3), shared by workers and the
// coordinator so that both derive the same layout and the same round numbers from the same inputs.
//
// FragmentLayout splits a model's parameter tensors (a ModelSignature) into P fragments of whole
// tensors. Tensors named "blocks.<i>.<...>" belong to block i; blocks are strided over fragments
// (block i goes to fragment i mod P_b). The other tensors (embeddings, final norm, head) either
// form a fragment of their own (NonBlockPolicy::kOwn, the default: the last fragment, and the
// blocks are strided over the first P_b = P - 1) or are spread round-robin over all P fragments
// (kSpread: P_b = P, the k-th non-block tensor goes to fragment k mod P). P counts every fragment,
// so it is also the number of staggered sync slots. With P = 1 everything is one fragment (DiLoCo).
// A fragment's flat fp32 vector is the concatenation of its tensors in signature order.
//
// FragmentSchedule says when a fragment is synced: fragment p is due at steps t > 0 with
// (t - offset_p) % H == 0, offset_p = p * H / P (integer division), so the P fragments are
// staggered and, because H >= P makes the offsets distinct, at most one fragment is due per step.
// The k-th time fragment p is due (k = 0, 1, ...) is its round k; the update of that round is
// applied tau steps later. DiLoCo is P = 1, tau = 0.
//
// Thread safety: immutable after creation; const methods may be called concurrently.
// Lifetimes: nothing refers to the signature after Create returns.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "comm/signature.h"
#include "quant/status.h"

namespace lowband::comm {

enum class NonBlockPolicy : uint8_t { kOwn = 0, kSpread = 1 };
std::string_view NonBlockPolicyName(NonBlockPolicy policy);  // "own", "spread"
StatusOr<NonBlockPolicy> ParseNonBlockPolicy(std::string_view name);

struct LayoutOptions {
  // P: total number of fragments, the non-block fragment included (kOwn).
  uint32_t num_fragments = 1;
  // Where the parameters outside "blocks.<i>." go.
  NonBlockPolicy nonblock = NonBlockPolicy::kOwn;
};

// The block index of a parameter named "blocks.<i>.<rest>", or nullopt for any other name.
std::optional<uint64_t> BlockIndexOf(std::string_view tensor_name);

struct FragmentInfo {
  std::vector<uint32_t> tensors;  // indices into the signature, ascending
  uint64_t element_count = 0;     // sum of the tensors' element counts
  bool operator==(const FragmentInfo&) const = default;
};

class FragmentLayout {
 public:
  // Computes the layout. Errors: P == 0, a fragment that would be empty (fewer blocks than block
  // fragments, or kOwn with no block parameters at all), an invalid signature.
  static StatusOr<FragmentLayout> Create(const ModelSignature& signature, const LayoutOptions& options);
  // Rebuilds a layout from an explicit assignment (tensor indices per fragment, e.g. as the
  // coordinator sent it). Every tensor must appear in exactly one fragment, in ascending order.
  static StatusOr<FragmentLayout> FromAssignment(const ModelSignature& signature,
                                                 const std::vector<std::vector<uint32_t>>& fragments);

  uint32_t num_fragments() const { return static_cast<uint32_t>(fragments_.size()); }
  const std::vector<FragmentInfo>& fragments() const { return fragments_; }
  const FragmentInfo& fragment(uint32_t p) const { return fragments_.at(p); }
  uint64_t element_count(uint32_t p) const { return fragments_.at(p).element_count; }
  uint64_t total_elements() const { return total_elements_; }
  uint32_t fragment_of_tensor(uint32_t tensor) const { return tensor_fragment_.at(tensor); }
  // Offset of tensor i in the flat vector of all parameters in signature order.
  uint64_t tensor_offset(uint32_t tensor) const { return tensor_offsets_.at(tensor); }
  // Offset of tensor i inside its fragment's flat vector.
  uint64_t offset_in_fragment(uint32_t tensor) const { return offset_in_fragment_.at(tensor); }

  // Copies fragment p's values out of `all` (every parameter, signature order) into `out`
  // (length element_count(p)).
  Status Gather(uint32_t p, std::span<const float> all, std::span<float> out) const;
  // The inverse: writes fragment p's values into their places in `all`.
  Status Scatter(uint32_t p, std::span<const float> fragment, std::span<float> all) const;

  // OK when `other` assigns the same tensors to the same fragments; otherwise a
  // FailedPrecondition naming the first fragment that differs.
  Status CheckSameAs(const FragmentLayout& other) const;

  bool operator==(const FragmentLayout& other) const { return fragments_ == other.fragments_; }

 private:
  static StatusOr<FragmentLayout> Build(const ModelSignature& signature, std::vector<FragmentInfo> fragments);

  std::vector<FragmentInfo> fragments_;
  std::vector<uint64_t> tensor_offsets_;      // per tensor, in the signature-order flat vector
  std::vector<uint64_t> tensor_sizes_;        // per tensor, element count
  std::vector<uint64_t> offset_in_fragment_;  // per tensor, in its fragment's flat vector
  std::vector<uint32_t> tensor_fragment_;     // per tensor, its fragment
  uint64_t total_elements_ = 0;
};

class FragmentSchedule {
 public:
  // inner_steps H >= 1, num_fragments P >= 1, H >= P, overlap tau < H. The error names the field.
  static StatusOr<FragmentSchedule> Create(uint64_t inner_steps, uint32_t num_fragments, uint64_t overlap);

  uint64_t inner_steps() const { return h_; }
  uint32_t num_fragments() const { return p_; }
  uint64_t overlap() const { return tau_; }

  // offset_p = p * H / P.
  uint64_t Offset(uint32_t p) const;
  // True when fragment p is sent at step t: t > 0 and (t - offset_p) % H == 0.
  bool IsDue(uint32_t p, uint64_t t) const;
  // How many times fragment p was due at steps before t; at a due step, the round being sent.
  uint64_t RoundAt(uint32_t p, uint64_t t) const;
  // The first step s >= max(t, 1) at which fragment p is due.
  uint64_t NextDue(uint32_t p, uint64_t t) const;
  // The step at which fragment p sends round r (inverse of RoundAt at due steps).
  uint64_t DueStep(uint32_t p, uint64_t round) const;
  // The step at which the update of round r of fragment p is applied: DueStep + tau.
  uint64_t ApplyStep(uint32_t p, uint64_t round) const { return DueStep(p, round) + tau_; }
  // The fragments due at step t (at most one, since H >= P).
  std::vector<uint32_t> FragmentsDueAt(uint64_t t) const;

 private:
  FragmentSchedule(uint64_t h, uint32_t p, uint64_t tau) : h_(h), p_(p), tau_(tau) {}

  uint64_t h_;
  uint32_t p_;
  uint64_t tau_;
};

}  // namespace lowband::comm
