#include "comm/schedule.h"

#include <algorithm>
#include <charconv>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace lowband::comm {

std::string_view NonBlockPolicyName(NonBlockPolicy policy) {
  return policy == NonBlockPolicy::kOwn ? "own" : "spread";
}

StatusOr<NonBlockPolicy> ParseNonBlockPolicy(std::string_view name) {
  if (name == "own") {
    return NonBlockPolicy::kOwn;
  }
  if (name == "spread") {
    return NonBlockPolicy::kSpread;
  }
  return InvalidArgument(fmt::format("unknown non-block policy '{}'; expected 'own' or 'spread'", name));
}

std::optional<uint64_t> BlockIndexOf(std::string_view tensor_name) {
  constexpr std::string_view kPrefix = "blocks.";
  if (!tensor_name.starts_with(kPrefix)) {
    return std::nullopt;
  }
  std::string_view rest = tensor_name.substr(kPrefix.size());
  const size_t dot = rest.find('.');
  if (dot == 0 || dot == std::string_view::npos) {
    return std::nullopt;
  }
  uint64_t index = 0;
  const char* first = rest.data();
  const char* last = rest.data() + dot;
  auto [ptr, ec] = std::from_chars(first, last, index);
  if (ec != std::errc() || ptr != last) {
    return std::nullopt;
  }
  return index;
}

StatusOr<FragmentLayout> FragmentLayout::Create(const ModelSignature& signature,
                                                const LayoutOptions& options) {
  LOWBAND_RETURN_IF_ERROR(ValidateSignature(signature));
  const uint32_t p_total = options.num_fragments;
  if (p_total == 0) {
    return InvalidArgument("num_fragments must be at least 1, got 0");
  }

  std::vector<std::optional<uint64_t>> block(signature.tensors.size());
  bool any_block = false;
  bool any_nonblock = false;
  for (size_t i = 0; i < signature.tensors.size(); ++i) {
    block[i] = BlockIndexOf(signature.tensors[i].name);
    (block[i] ? any_block : any_nonblock) = true;
  }

  // kOwn reserves the last fragment for the non-block tensors, when there are some to put there.
  const bool own = options.nonblock == NonBlockPolicy::kOwn && p_total > 1 && any_nonblock;
  if (own && !any_block) {
    return InvalidArgument(
        fmt::format("cannot make {} fragments with nonblock=own: no parameter is named "
                    "'blocks.<i>.*', so everything is non-block; use nonblock=spread or "
                    "num_fragments=1",
                    p_total));
  }
  const uint32_t block_fragments = own ? p_total - 1 : p_total;

  std::vector<FragmentInfo> fragments(p_total);
  uint64_t nonblock_seen = 0;
  for (uint32_t i = 0; i < signature.tensors.size(); ++i) {
    uint32_t p = 0;
    if (block[i]) {
      p = static_cast<uint32_t>(*block[i] % block_fragments);
    } else if (own) {
      p = p_total - 1;
    } else {
      p = static_cast<uint32_t>(nonblock_seen++ % p_total);
    }
    fragments[p].tensors.push_back(i);
    fragments[p].element_count += signature.tensors[i].element_count();
  }
  for (uint32_t p = 0; p < p_total; ++p) {
    if (fragments[p].tensors.empty()) {
      return InvalidArgument(
          fmt::format("fragment {} of {} would be empty (the model has too few 'blocks.<i>.*' "
                      "groups to stride over {} fragments with nonblock={}); use fewer "
                      "fragments",
                      p, p_total, block_fragments, NonBlockPolicyName(options.nonblock)));
    }
  }
  return Build(signature, std::move(fragments));
}

StatusOr<FragmentLayout> FragmentLayout::FromAssignment(
    const ModelSignature& signature, const std::vector<std::vector<uint32_t>>& assignment) {
  LOWBAND_RETURN_IF_ERROR(ValidateSignature(signature));
  if (assignment.empty()) {
    return InvalidArgument("fragment assignment is empty; expected at least one fragment");
  }
  const size_t n = signature.tensors.size();
  std::vector<int64_t> owner(n, -1);
  std::vector<FragmentInfo> fragments(assignment.size());
  for (size_t p = 0; p < assignment.size(); ++p) {
    if (assignment[p].empty()) {
      return InvalidArgument(fmt::format("fragment {} of the assignment is empty", p));
    }
    for (size_t k = 0; k < assignment[p].size(); ++k) {
      const uint32_t t = assignment[p][k];
      if (t >= n) {
        return InvalidArgument(
            fmt::format("fragment {} names tensor {}, but the signature has {} tensors", p, t, n));
      }
      if (k > 0 && t <= assignment[p][k - 1]) {
        return InvalidArgument(
            fmt::format("fragment {} lists tensors out of order ({} after {}); expected "
                        "ascending signature order",
                        p, t, assignment[p][k - 1]));
      }
      if (owner[t] >= 0) {
        return InvalidArgument(
            fmt::format("tensor {} ('{}') is in fragment {} and fragment {}; each tensor "
                        "belongs to exactly one fragment",
                        t, signature.tensors[t].name, owner[t], p));
      }
      owner[t] = static_cast<int64_t>(p);
      fragments[p].tensors.push_back(t);
      fragments[p].element_count += signature.tensors[t].element_count();
    }
  }
  for (size_t t = 0; t < n; ++t) {
    if (owner[t] < 0) {
      return InvalidArgument(
          fmt::format("tensor {} ('{}') is in no fragment of the assignment", t, signature.tensors[t].name));
    }
  }
  return Build(signature, std::move(fragments));
}

StatusOr<FragmentLayout> FragmentLayout::Build(const ModelSignature& signature,
                                               std::vector<FragmentInfo> fragments) {
  FragmentLayout layout;
  const size_t n = signature.tensors.size();
  layout.tensor_offsets_.resize(n);
  layout.tensor_sizes_.resize(n);
  layout.offset_in_fragment_.resize(n);
  layout.tensor_fragment_.resize(n);
  uint64_t offset = 0;
  for (size_t i = 0; i < n; ++i) {
    layout.tensor_offsets_[i] = offset;
    layout.tensor_sizes_[i] = signature.tensors[i].element_count();
    offset += layout.tensor_sizes_[i];
  }
  layout.total_elements_ = offset;
  for (uint32_t p = 0; p < fragments.size(); ++p) {
    uint64_t within = 0;
    for (uint32_t t : fragments[p].tensors) {
      layout.tensor_fragment_[t] = p;
      layout.offset_in_fragment_[t] = within;
      within += layout.tensor_sizes_[t];
    }
  }
  layout.fragments_ = std::move(fragments);
  return layout;
}

Status FragmentLayout::Gather(uint32_t p, std::span<const float> all, std::span<float> out) const {
  if (p >= num_fragments()) {
    return InvalidArgument(fmt::format("fragment {} does not exist; the layout has {}", p, num_fragments()));
  }
  if (all.size() != total_elements_ || out.size() != fragments_[p].element_count) {
    return InvalidArgument(
        fmt::format("Gather(fragment {}): expected {} input and {} output values, got {} and {}", p,
                    total_elements_, fragments_[p].element_count, all.size(), out.size()));
  }
  for (uint32_t t : fragments_[p].tensors) {
    const auto src = all.subspan(tensor_offsets_[t], tensor_sizes_[t]);
    std::copy(src.begin(), src.end(), out.begin() + static_cast<std::ptrdiff_t>(offset_in_fragment_[t]));
  }
  return Status::Ok();
}

Status FragmentLayout::Scatter(uint32_t p, std::span<const float> fragment, std::span<float> all) const {
  if (p >= num_fragments()) {
    return InvalidArgument(fmt::format("fragment {} does not exist; the layout has {}", p, num_fragments()));
  }
  if (all.size() != total_elements_ || fragment.size() != fragments_[p].element_count) {
    return InvalidArgument(
        fmt::format("Scatter(fragment {}): expected {} input and {} output values, got {} and {}", p,
                    fragments_[p].element_count, total_elements_, fragment.size(), all.size()));
  }
  for (uint32_t t : fragments_[p].tensors) {
    const auto src = fragment.subspan(offset_in_fragment_[t], tensor_sizes_[t]);
    std::copy(src.begin(), src.end(), all.begin() + static_cast<std::ptrdiff_t>(tensor_offsets_[t]));
  }
  return Status::Ok();
}

Status FragmentLayout::CheckSameAs(const FragmentLayout& other) const {
  if (num_fragments() != other.num_fragments()) {
    return FailedPrecondition(
        fmt::format("fragment layouts differ: {} fragments here, {} there; both sides must "
                    "use the same num_fragments and nonblock policy",
                    num_fragments(), other.num_fragments()));
  }
  for (uint32_t p = 0; p < num_fragments(); ++p) {
    if (fragments_[p].tensors != other.fragments_[p].tensors) {
      return FailedPrecondition(fmt::format(
          "fragment layouts differ at fragment {}: tensors [{}] here, [{}] there; "
          "both sides must use the same num_fragments and nonblock policy",
          p, fmt::join(fragments_[p].tensors, ", "), fmt::join(other.fragments_[p].tensors, ", ")));
    }
  }
  return Status::Ok();
}

StatusOr<FragmentSchedule> FragmentSchedule::Create(uint64_t inner_steps, uint32_t num_fragments,
                                                    uint64_t overlap) {
  if (inner_steps == 0) {
    return InvalidArgument("inner_steps H must be at least 1, got 0");
  }
  if (num_fragments == 0) {
    return InvalidArgument("num_fragments P must be at least 1, got 0");
  }
  if (inner_steps < num_fragments) {
    return InvalidArgument(
        fmt::format("inner_steps H={} is smaller than num_fragments P={}: the P fragments are "
                    "synced at staggered offsets p*H/P, which need H >= P to be distinct; "
                    "raise H or lower P",
                    inner_steps, num_fragments));
  }
  if (overlap >= inner_steps) {
    return InvalidArgument(
        fmt::format("overlap tau={} must be smaller than inner_steps H={}: the update of a "
                    "fragment must be applied before that fragment is sent again",
                    overlap, inner_steps));
  }
  return FragmentSchedule(inner_steps, num_fragments, overlap);
}

uint64_t FragmentSchedule::Offset(uint32_t p) const { return static_cast<uint64_t>(p) * h_ / p_; }

bool FragmentSchedule::IsDue(uint32_t p, uint64_t t) const {
  const uint64_t o = Offset(p);
  return t > 0 && t >= o && (t - o) % h_ == 0;
}

uint64_t FragmentSchedule::RoundAt(uint32_t p, uint64_t t) const {
  const uint64_t o = Offset(p);
  if (o == 0) {
    return t == 0 ? 0 : (t - 1) / h_;  // due at H, 2H, ...
  }
  return t <= o ? 0 : (t - 1 - o) / h_ + 1;  // due at o, o + H, ...
}

uint64_t FragmentSchedule::DueStep(uint32_t p, uint64_t round) const {
  const uint64_t o = Offset(p);
  return o == 0 ? (round + 1) * h_ : o + round * h_;
}

uint64_t FragmentSchedule::NextDue(uint32_t p, uint64_t t) const {
  const uint64_t s = t == 0 ? 1 : t;
  return DueStep(p, RoundAt(p, s));
}

std::vector<uint32_t> FragmentSchedule::FragmentsDueAt(uint64_t t) const {
  std::vector<uint32_t> due;
  for (uint32_t p = 0; p < p_; ++p) {
    if (IsDue(p, t)) {
      due.push_back(p);
    }
  }
  return due;
}

}  // namespace lowband::comm
