#include "worker/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <tuple>

#include <torch/serialize.h>
#include <torch/utils.h>

#include "comm/durable_file.h"
#include "worker/torch_runtime.h"

namespace lowband::worker {
namespace {

namespace fs = std::filesystem;

constexpr const char* kFormat = "lowband-worker-checkpoint";
constexpr int kVersion = 1;

std::string Quoted(const std::string& s) { return "\"" + s + "\""; }

std::string Serialize(torch::serialize::OutputArchive& archive) {
  std::ostringstream out;
  archive.save_to(out);
  return std::move(out).str();
}

// Archive keys are positional ("p0", "e3"); names live in meta.json, where they are checked on load.
std::string Key(char prefix, size_t i) { return std::string(1, prefix) + std::to_string(i); }

// "ckpt-0000000123" or "ckpt-0000000123.2" -> (123, 2); false for other names.
bool ParseCheckpointName(const std::string& name, int64_t* step, int64_t* k) {
  if (name.rfind("ckpt-", 0) != 0) return false;
  const std::string rest = name.substr(5);
  const size_t dot = rest.find('.');
  const std::string step_part = rest.substr(0, dot);
  const std::string k_part = dot == std::string::npos ? "0" : rest.substr(dot + 1);
  if (step_part.empty() || k_part.empty()) return false;
  if (!std::all_of(step_part.begin(), step_part.end(), ::isdigit) ||
      !std::all_of(k_part.begin(), k_part.end(), ::isdigit)) {
    return false;
  }
  *step = std::stoll(step_part);
  *k = std::stoll(k_part);
  return true;
}

std::string CheckpointName(int64_t step, int64_t k) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "ckpt-%010lld", static_cast<long long>(step));
  return k == 0 ? std::string(buf) : std::string(buf) + "." + std::to_string(k);
}

// Removes complete checkpoints beyond the newest `keep_last` (never `current`), and temporary
// directories left by interrupted saves.
void Prune(const fs::path& dir, const std::string& current, int keep_last) {
  std::vector<std::tuple<int64_t, int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    int64_t step = 0, k = 0;
    if (name.rfind(".ckpt-", 0) == 0 && name.find(".tmp-") != std::string::npos) {
      fs::remove_all(entry.path(), ec);
    } else if (entry.is_directory() && ParseCheckpointName(name, &step, &k)) {
      found.emplace_back(step, k, entry.path());
    }
  }
  std::sort(found.begin(), found.end());
  const auto keep = static_cast<size_t>(std::max(keep_last, 1));
  for (size_t i = 0; i + keep < found.size(); ++i) {
    if (std::get<2>(found[i]).filename() != current) fs::remove_all(std::get<2>(found[i]), ec);
  }
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

StatusOr<std::string> SaveCheckpoint(const std::string& dir_name, Model& model,
                                     const InnerOptimizer& optimizer, const CheckpointExtras& extras,
                                     const CheckpointOptions& options) {
  if (!extras.metadata.is_object())
    return InvalidArgument("SaveCheckpoint: extras.metadata must be a JSON object");
  const fs::path dir(dir_name);
  return GuardTorch("SaveCheckpoint " + Quoted(dir_name), [&]() -> StatusOr<std::string> {
    fs::create_directories(dir);
    const int64_t step = optimizer.step();
    int64_t k = 0;
    while (fs::exists(dir / CheckpointName(step, k))) ++k;
    const std::string name = CheckpointName(step, k);

    std::string tmp_pattern = (dir / ("." + name + ".tmp-XXXXXX")).string();
    if (::mkdtemp(tmp_pattern.data()) == nullptr) {
      return Internal("cannot create a temporary directory in " + Quoted(dir_name) + ": " +
                      std::strerror(errno));
    }
    const fs::path tmp(tmp_pattern);

    nlohmann::json params = nlohmann::json::array();
    torch::serialize::OutputArchive model_archive;
    {
      torch::NoGradGuard no_grad;
      const auto named = model.NamedParameters();
      for (size_t i = 0; i < named.size(); ++i) {
        const auto& [pname, p] = named[i];
        model_archive.write(Key('p', i), p.detach().to(torch::kCPU));
        params.push_back({{"name", pname}, {"shape", p.sizes().vec()}});
      }
    }
    torch::serialize::OutputArchive optimizer_archive;
    LOWBAND_RETURN_IF_ERROR(optimizer.Save(optimizer_archive));
    nlohmann::json vectors = nlohmann::json::array();
    torch::serialize::OutputArchive extra_archive;
    size_t e = 0;
    for (const auto& [vname, values] : extras.vectors) {
      torch::Tensor t = torch::empty({static_cast<int64_t>(values.size())}, torch::kFloat);
      std::memcpy(t.data_ptr<float>(), values.data(), values.size() * sizeof(float));
      extra_archive.write(Key('e', e++), t);
      vectors.push_back({{"name", vname}, {"size", values.size()}});
    }
    const nlohmann::json meta = {{"format", kFormat},
                                 {"version", kVersion},
                                 {"step", step},
                                 {"lr", optimizer.current_lr()},
                                 {"params", params},
                                 {"vectors", vectors},
                                 {"metadata", extras.metadata}};

    LOWBAND_RETURN_IF_ERROR(comm::WriteFileAtomically(tmp / "model.pt", Serialize(model_archive)));
    LOWBAND_RETURN_IF_ERROR(comm::WriteFileAtomically(tmp / "optimizer.pt", Serialize(optimizer_archive)));
    LOWBAND_RETURN_IF_ERROR(comm::WriteFileAtomically(tmp / "extra.pt", Serialize(extra_archive)));
    LOWBAND_RETURN_IF_ERROR(comm::WriteFileAtomically(tmp / "meta.json", meta.dump(1) + "\n"));
    fs::rename(tmp, dir / name);
    LOWBAND_RETURN_IF_ERROR(comm::SyncDirectory(dir));
    LOWBAND_RETURN_IF_ERROR(comm::WriteFileAtomically(dir / "LATEST", name + "\n"));
    Prune(dir, name, options.keep_last);
    return (dir / name).string();
  });
}

StatusOr<std::string> LatestCheckpoint(const std::string& dir) {
  const fs::path latest = fs::path(dir) / "LATEST";
  std::error_code ec;
  if (!fs::exists(latest, ec)) return NotFound("no checkpoint in " + Quoted(dir) + " (no LATEST file)");
  LOWBAND_ASSIGN_OR_RETURN(std::string name, comm::ReadWholeFile(latest));
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  int64_t step = 0, k = 0;
  if (!ParseCheckpointName(name, &step, &k)) {
    return DataLoss(Quoted(latest.string()) + " names " + Quoted(name) + ", not a checkpoint (ckpt-<step>)");
  }
  const fs::path path = fs::path(dir) / name;
  if (!fs::is_directory(path, ec)) {
    return DataLoss(Quoted(latest.string()) + " names " + Quoted(name) + " but that directory is missing");
  }
  return path.string();
}

namespace {

// A checkpoint's meta.json and parameter values, checked against `model`'s names and shapes; nothing
// of the model is changed.
struct LoadedParams {
  nlohmann::json meta;
  std::vector<torch::Tensor> values;
};

StatusOr<LoadedParams> ReadParams(const std::string& path_name, Model& model) {
  const fs::path path(path_name);
  const auto damaged = [&](const std::string& what) {
    return DataLoss("checkpoint " + Quoted(path_name) + ": " + what);
  };
  LOWBAND_ASSIGN_OR_RETURN(const std::string meta_text, comm::ReadWholeFile(path / "meta.json"));
  LoadedParams out;
  out.meta = nlohmann::json::parse(meta_text, nullptr, /*allow_exceptions=*/false);
  const nlohmann::json& meta = out.meta;
  if (meta.is_discarded() || !meta.is_object()) return damaged("meta.json is not valid JSON");
  if (meta.value("format", "") != kFormat || meta.value("version", 0) != kVersion) {
    return damaged("meta.json has format " + meta.value("format", std::string("?")) + " version " +
                   std::to_string(meta.value("version", 0)) + ", expected " + kFormat + " version " +
                   std::to_string(kVersion));
  }
  return GuardTorch("LoadCheckpoint " + Quoted(path_name), [&]() -> StatusOr<LoadedParams> {
    // Check the signature before touching anything.
    const auto named = model.NamedParameters();
    const nlohmann::json& params = meta.at("params");
    if (params.size() != named.size()) {
      return InvalidArgument("checkpoint " + Quoted(path_name) + " holds " + std::to_string(params.size()) +
                             " parameters but the model has " + std::to_string(named.size()) +
                             "; it was written for a different model configuration");
    }
    for (size_t i = 0; i < named.size(); ++i) {
      const std::string saved_name = params[i].at("name").get<std::string>();
      const auto saved_shape = params[i].at("shape").get<std::vector<int64_t>>();
      if (saved_name != named[i].first || saved_shape != named[i].second.sizes().vec()) {
        return InvalidArgument("checkpoint " + Quoted(path_name) + " parameter " + std::to_string(i) +
                               " is " + saved_name + " " + ShapeString(saved_shape) + " but the model has " +
                               named[i].first + " " + ShapeString(named[i].second.sizes().vec()) +
                               "; it was written for a different model configuration");
      }
    }
    torch::serialize::InputArchive model_archive;
    model_archive.load_from((path / "model.pt").string());
    out.values.resize(named.size());
    for (size_t i = 0; i < named.size(); ++i) {
      model_archive.read(Key('p', i), out.values[i]);
      if (out.values[i].sizes() != named[i].second.sizes())
        return damaged("model.pt does not match meta.json");
    }
    return std::move(out);
  });
}

void WriteParams(Model& model, const std::vector<torch::Tensor>& values) {
  torch::NoGradGuard no_grad;
  const auto named = model.NamedParameters();
  for (size_t i = 0; i < named.size(); ++i) named[i].second.copy_(values[i]);
}

}  // namespace

StatusOr<CheckpointExtras> LoadCheckpoint(const std::string& dir, Model& model, InnerOptimizer& optimizer) {
  LOWBAND_ASSIGN_OR_RETURN(const std::string path_name, LatestCheckpoint(dir));
  LOWBAND_ASSIGN_OR_RETURN(LoadedParams loaded, ReadParams(path_name, model));
  const fs::path path(path_name);
  const nlohmann::json& meta = loaded.meta;
  return GuardTorch("LoadCheckpoint " + Quoted(path_name), [&]() -> StatusOr<CheckpointExtras> {
    CheckpointExtras extras;
    extras.metadata = meta.value("metadata", nlohmann::json::object());
    torch::serialize::InputArchive extra_archive;
    extra_archive.load_from((path / "extra.pt").string());
    const nlohmann::json& vectors = meta.at("vectors");
    for (size_t e = 0; e < vectors.size(); ++e) {
      torch::Tensor t;
      extra_archive.read(Key('e', e), t);
      t = t.to(torch::kFloat).contiguous();
      const auto size = vectors[e].at("size").get<int64_t>();
      if (t.numel() != size)
        return DataLoss("checkpoint " + Quoted(path_name) + ": extra.pt does not match meta.json");
      std::vector<float>& out = extras.vectors[vectors[e].at("name").get<std::string>()];
      out.assign(t.data_ptr<float>(), t.data_ptr<float>() + size);
    }

    torch::serialize::InputArchive optimizer_archive;
    // AdamW's moments are saved from the parameters' device; they are loaded onto the device the
    // parameters live on now (a run may resume on another GPU, or on the CPU).
    optimizer_archive.load_from((path / "optimizer.pt").string(), optimizer.device());
    LOWBAND_RETURN_IF_ERROR(optimizer.Load(optimizer_archive));
    WriteParams(model, loaded.values);
    return extras;
  });
}

StatusOr<std::string> LoadCheckpointParameters(const std::string& dir, Model& model) {
  std::error_code ec;
  std::string path_name;
  if (fs::exists(fs::path(dir) / "meta.json", ec)) {
    path_name = dir;  // one ckpt-* directory
  } else {
    LOWBAND_ASSIGN_OR_RETURN(path_name, LatestCheckpoint(dir));
  }
  LOWBAND_ASSIGN_OR_RETURN(LoadedParams loaded, ReadParams(path_name, model));
  WriteParams(model, loaded.values);
  return path_name;
}

}  // namespace lowband::worker
