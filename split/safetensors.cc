#include "split/safetensors.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <numeric>

#include <nlohmann/json.hpp>

#include "comm/durable_file.h"

namespace lowband::split {
namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // the format's own limit is 100 MB

int DtypeBytes(const std::string& dtype) {
  if (dtype == "F32") return 4;
  if (dtype == "F16" || dtype == "BF16") return 2;
  if (dtype == "F64") return 8;
  return 0;
}

torch::Tensor ToFloat(const std::string& dtype, const uint8_t* data, const std::vector<int64_t>& shape) {
  torch::ScalarType type = torch::kFloat;
  if (dtype == "F16") type = torch::kHalf;
  if (dtype == "BF16") type = torch::kBFloat16;
  if (dtype == "F64") type = torch::kDouble;
  // from_blob does not copy; clone() (or to()) gives the tensor its own memory before `data` goes away.
  torch::Tensor view =
      torch::from_blob(const_cast<uint8_t*>(data), shape, torch::TensorOptions().dtype(type));
  return view.to(torch::kFloat).clone();
}

}  // namespace

StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  const auto bad = [&](const std::string& what) {
    return InvalidArgument("safetensors file '" + path + "': " + what);
  };
  LOWBAND_ASSIGN_OR_RETURN(const std::string bytes, comm::ReadWholeFile(path));
  if (bytes.size() < 8) return bad("shorter than its 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
  if (n > kMaxHeader || n > bytes.size() - 8)
    return bad("header length " + std::to_string(n) + " does not fit in the file (" +
               std::to_string(bytes.size()) + " bytes)");
  const nlohmann::json header = nlohmann::json::parse(
      bytes.begin() + 8, bytes.begin() + 8 + static_cast<int64_t>(n), nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return bad("the header is not a JSON object");
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data()) + 8 + n;
  const uint64_t data_size = bytes.size() - 8 - n;

  SafetensorsFile out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return bad("__metadata__ is not an object");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) return bad("__metadata__." + k + " is not a string");
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets") || !entry["dtype"].is_string() || !entry["shape"].is_array() ||
        !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2) {
      return bad("tensor '" + name + "' needs dtype, shape and data_offsets [begin, end]");
    }
    const std::string dtype = entry["dtype"].get<std::string>();
    const int width = DtypeBytes(dtype);
    if (width == 0)
      return bad("tensor '" + name + "' has dtype " + dtype + "; supported: F32, F16, BF16, F64");
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > (1ull << 40))
        return bad("tensor '" + name + "' has a bad shape");
      shape.push_back(d.get<int64_t>());
      numel *= d.get<uint64_t>();
      if (numel > (1ull << 40)) return bad("tensor '" + name + "' is too large");
    }
    const auto& off = entry["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      return bad("tensor '" + name + "' has bad data_offsets");
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e || e > data_size) {
      return bad("tensor '" + name + "' bytes [" + std::to_string(b) + ", " + std::to_string(e) +
                 ") lie outside the data section (" + std::to_string(data_size) +
                 " bytes): the file is truncated or damaged");
    }
    if (e - b != numel * static_cast<uint64_t>(width)) {
      return bad("tensor '" + name + "' has " + std::to_string(e - b) +
                 " bytes but its shape and dtype need " +
                 std::to_string(numel * static_cast<uint64_t>(width)));
    }
    ranges.emplace_back(b, e);
    out.tensors[name] = ToFloat(dtype, data + b, shape);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) return bad("two tensors overlap in the data section");
  }
  return out;
}

Status WriteSafetensors(const std::string& path,
                        const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string data;
  std::vector<torch::Tensor> contiguous;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__" || header.contains(name))
      return InvalidArgument("safetensors: duplicate or reserved tensor name '" + name + "'");
    torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat).contiguous();
    const uint64_t begin = data.size();
    data.append(reinterpret_cast<const char*>(c.data_ptr<float>()),
                static_cast<size_t>(c.numel()) * sizeof(float));
    header[name] = {{"dtype", "F32"},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {begin, static_cast<uint64_t>(data.size())}}};
  }
  std::string json = header.dump();
  while ((8 + json.size()) % 8 != 0) json.push_back(' ');  // the format pads the header with spaces
  std::string file(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) file[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  file += json;
  file += data;
  return comm::WriteFileAtomically(path, file);
}

}  // namespace lowband::split
