#include "tools/config.h"

#include <sys/stat.h>

#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

namespace lowband::tools {
namespace {

struct Binding {
  FieldInfo info;
  std::function<Status(RunConfig&, const std::string&)> set;
  std::function<std::string(const RunConfig&)> get;
};

template <typename T>
Status Parse(const std::string& key, const std::string& text, T* out) {
  if constexpr (std::is_same_v<T, std::string>) {
    *out = text;
    return Status::Ok();
  } else if constexpr (std::is_same_v<T, bool>) {
    if (text == "true" || text == "1" || text == "yes" || text == "on") {
      *out = true;
    } else if (text == "false" || text == "0" || text == "no" || text == "off") {
      *out = false;
    } else {
      return InvalidArgument(fmt::format("{}: expected true or false, got '{}'", key, text));
    }
    return Status::Ok();
  } else if constexpr (std::is_floating_point_v<T>) {
    try {
      size_t used = 0;
      const double v = std::stod(text, &used);
      if (used != text.size()) throw std::invalid_argument("trailing");
      *out = static_cast<T>(v);
    } catch (const std::exception&) {
      return InvalidArgument(fmt::format("{}: expected a number, got '{}'", key, text));
    }
    return Status::Ok();
  } else {
    T v{};
    const auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || p != text.data() + text.size()) {
      return InvalidArgument(fmt::format("{}: expected a whole number, got '{}'", key, text));
    }
    *out = v;
    return Status::Ok();
  }
}

template <typename T>
std::string Format(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) {
    return v;
  } else if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else {
    return fmt::format("{}", v);
  }
}

template <typename T>
Binding Bind(std::string key, std::string help, T& (*field)(RunConfig&),
             std::vector<std::string> aliases = {}) {
  Binding b;
  b.info = {key, std::move(aliases), std::move(help)};
  b.set = [key, field](RunConfig& c, const std::string& text) { return Parse(key, text, &field(c)); };
  b.get = [field](const RunConfig& c) { return Format(field(const_cast<RunConfig&>(c))); };
  return b;
}

#define LB_FIELD(key, member, help, ...) \
  Bind(                                  \
      key, help, +[](RunConfig & c) -> auto& { return c.member; }, ##__VA_ARGS__)

const std::vector<Binding>& Bindings() {
  static const std::vector<Binding> bindings = {
      LB_FIELD("algo", algo, "ddp | diloco | streaming", {"--algo"}),
      LB_FIELD("steps", steps, "inner steps per worker", {"--steps"}),
      LB_FIELD("seed", seed, "seed of model init, data order and stochastic rounding", {"--seed"}),
      LB_FIELD("eval_every", eval_every, "evaluate the global parameters every N steps", {"--eval-every"}),
      LB_FIELD("log_every", log_every, "metrics line every N steps", {"--log-every"}),
      LB_FIELD("threads", threads, "LibTorch intra-op threads per worker", {"--threads"}),
      LB_FIELD("run.name", run.name, "run name"),
      LB_FIELD("run.id", run.id, "run id checked by the coordinator", {"--run-id"}),
      LB_FIELD("run.token", run.token,
               "shared secret checked on every call (never logged; or env LOWBAND_TOKEN)", {"--token"}),
      LB_FIELD("model.kind", model.kind, "gpt | mlp | cnn", {"--model"}),
      LB_FIELD("model.vocab", model.vocab, "GPT vocabulary"),
      LB_FIELD("model.d_model", model.d_model, "GPT width", {"--d-model"}),
      LB_FIELD("model.n_layers", model.n_layers, "GPT blocks / MLP hidden layers", {"--n-layers"}),
      LB_FIELD("model.n_heads", model.n_heads, "GPT attention heads"),
      LB_FIELD("model.context", model.context, "GPT context length"),
      LB_FIELD("model.dropout", model.dropout, "dropout probability"),
      LB_FIELD("model.tie_embeddings", model.tie_embeddings, "GPT head shares the embedding"),
      LB_FIELD("model.hidden", model.hidden, "MLP/CNN hidden width"),
      LB_FIELD("model.num_classes", model.num_classes, "classifier outputs"),
      LB_FIELD("model.device", model.device, "cpu | cuda | cuda:N"),
      LB_FIELD("data.dataset", data.dataset, "brown | text:PATH | tokens:PATH | fashion-mnist",
               {"--dataset"}),
      LB_FIELD("data.data_dir", data.data_dir, "where `lowband data prepare` wrote", {"--data-dir"}),
      LB_FIELD("data.batch_size", data.batch_size, "examples per batch per worker", {"--batch-size"}),
      LB_FIELD("data.seq_len", data.seq_len, "tokens per window (= model.context)"),
      LB_FIELD("data.heldout_fraction", data.heldout_fraction, "held-out share of token data"),
      LB_FIELD("data.split", data.split,
               "token data: interleaved (i.i.d. shards, held-out chunks spread) | contiguous (slices)",
               {"--data-split"}),
      LB_FIELD("data.chunk_tokens", data.chunk_tokens, "token data, interleaved split: tokens per chunk"),
      LB_FIELD("data.eval_batches", data.eval_batches, "held-out batches per evaluation"),
      LB_FIELD("inner.lr", inner.lr, "inner AdamW peak learning rate", {"--lr"}),
      LB_FIELD("inner.beta1", inner.beta1, "AdamW beta1"),
      LB_FIELD("inner.beta2", inner.beta2, "AdamW beta2"),
      LB_FIELD("inner.eps", inner.eps, "AdamW epsilon"),
      LB_FIELD("inner.weight_decay", inner.weight_decay, "AdamW decoupled weight decay"),
      LB_FIELD("inner.warmup_steps", inner.warmup_steps, "linear warmup steps"),
      LB_FIELD("inner.total_steps", inner.total_steps, "cosine length (0: = steps)"),
      LB_FIELD("inner.min_lr_ratio", inner.min_lr_ratio, "final lr / peak lr"),
      LB_FIELD("inner.grad_clip", inner.grad_clip, "gradient norm clip (<= 0: off)"),
      LB_FIELD("diloco.H", diloco.H, "inner steps between syncs of a fragment", {"--H"}),
      LB_FIELD("diloco.fragments", diloco.fragments, "number of fragments P", {"--fragments"}),
      LB_FIELD("diloco.nonblock", diloco.nonblock, "non-block parameters: own | spread"),
      LB_FIELD("diloco.tau", diloco.tau, "overlap: steps between send and apply", {"--tau"}),
      LB_FIELD("diloco.alpha", diloco.alpha, "merge: local share", {"--alpha"}),
      LB_FIELD("diloco.late", diloco.late, "late result: wait | defer", {"--late"}),
      LB_FIELD("diloco.outer_lr", diloco.outer_lr, "outer Nesterov learning rate", {"--outer-lr"}),
      LB_FIELD("diloco.outer_momentum", diloco.outer_momentum, "outer momentum", {"--outer-momentum"}),
      LB_FIELD("diloco.nesterov", diloco.nesterov, "Nesterov (true) or heavy-ball momentum"),
      LB_FIELD("codec.format", codec.format, "upload codec (fp4 = fp4_e3m0, fp32, int8, ...)", {"--codec"}),
      LB_FIELD("codec.block", codec.block, "codec block size", {"--codec-block"}),
      LB_FIELD("codec.scale", codec.scale, "block scales: bf16 | fp16 | fp32 | pow2"),
      LB_FIELD("codec.rounding", codec.rounding, "nearest | stochastic"),
      LB_FIELD("codec.error_feedback", codec.error_feedback, "keep and resend the encoding residual",
               {"--error-feedback"}),
      LB_FIELD("codec.download", codec.download, "download codec: same | a format name"),
      LB_FIELD("coordinator.quorum", coordinator.quorum,
               "contributions that close a round at its deadline (all live members close it at once)"),
      LB_FIELD("coordinator.round_timeout_s", coordinator.round_timeout_s, "round deadline in seconds"),
      LB_FIELD("coordinator.heartbeat_timeout_s", coordinator.heartbeat_timeout_s, "member liveness timeout"),
      LB_FIELD("coordinator.checkpoint_every", coordinator.checkpoint_every,
               "with --checkpoint-dir: save the coordinator every N closed rounds (and at SIGTERM)"),
      LB_FIELD("coordinator.max_members", coordinator.max_members, "live members at most"),
      LB_FIELD("coordinator.max_inflight_pushes", coordinator.max_inflight_pushes,
               "PushFragment streams one worker may have in flight"),
      LB_FIELD("tls.ca", tls.ca, "workers, split clients: PEM CA that signed the server's certificate",
               {"--tls-ca"}),
      LB_FIELD("tls.server_cert", tls.server_cert, "coordinator, split-server: PEM certificate chain",
               {"--tls-cert"}),
      LB_FIELD("tls.server_key", tls.server_key, "coordinator, split-server: PEM private key", {"--tls-key"}),
      LB_FIELD("tls.client_ca", tls.client_ca, "servers: require client certificates signed by this PEM CA",
               {"--tls-client-ca"}),
      LB_FIELD("tls.client_cert", tls.client_cert, "workers: PEM client certificate (mutual TLS)",
               {"--tls-client-cert"}),
      LB_FIELD("tls.client_key", tls.client_key, "workers: PEM client private key (mutual TLS)",
               {"--tls-client-key"}),
      LB_FIELD("tls.server_name", tls.server_name, "clients: name to check in the server's certificate",
               {"--tls-server-name"}),
      LB_FIELD("tls.dir", tls.dir,
               "a directory with tls.crt, tls.key, ca.crt (deploy/make-certs.sh): the TLS files not set one "
               "by one "
               "(or env LOWBAND_TLS_DIR)",
               {"--tls-dir"}),
      LB_FIELD("site.ranks", site.ranks, "ranks (processes) per worker, all-reducing gradients every step",
               {"--ranks-per-worker", "--ranks"}),
      LB_FIELD("site.check_every", site.check_every,
               "compare the ranks' parameters every N steps (0: at the end)", {"--site-check-every"}),
      LB_FIELD("site.timeout_s", site.timeout_s, "timeout of every intra-site / ddp collective, seconds"),
      LB_FIELD("split.base", split.base, "base model: checkpoint directory or .safetensors", {"--base"}),
      LB_FIELD("split.cut", split.cut, "blocks on the client (the cut is after block cut-1)", {"--cut"}),
      LB_FIELD("split.task", split.task, "classify | lm", {"--task"}),
      LB_FIELD("split.lora_rank", split.lora_rank, "LoRA rank r", {"--lora-rank"}),
      LB_FIELD("split.lora_alpha", split.lora_alpha, "LoRA alpha (scaling alpha / r)"),
      LB_FIELD("split.lora_modules", split.lora_modules, "adapted layers: qkv,attn_out,fc,mlp_out"),
      LB_FIELD("split.codec", split.codec, "what crosses the cut: fp32 | fixed | amaq", {"--split-codec"}),
      LB_FIELD("split.bits", split.bits, "fixed: bits per value; amaq: the budget (mean bits)", {"--bits"}),
      LB_FIELD("split.grad_codec", split.grad_codec,
               "gradients: auto (amaq for amaq, else follow) | follow (the activations' bits) | fixed | "
               "amaq (own gates) | fp32",
               {"--grad-codec"}),
      LB_FIELD("split.grad_bits", split.grad_bits,
               "fixed gradients: bits; amaq gradients: the budget; 0 = split.bits", {"--grad-bits"}),
      LB_FIELD("split.grad_rounding", split.grad_rounding, "gradient rounding: stochastic | nearest"),
      LB_FIELD("split.start_bits", split.start_bits, "AMAQ: initial continuous bits"),
      LB_FIELD("split.gate_scale", split.gate_scale, "AMAQ: b = 2 + 6 sigmoid(gate_scale q)"),
      LB_FIELD("split.gate_lr", split.gate_lr, "AMAQ: SGD learning rate of the gates"),
      LB_FIELD("split.schedule_fraction", split.schedule_fraction,
               "AMAQ: share of steps from 8 bits to the budget"),
      LB_FIELD("split.lambda_lr", split.lambda_lr, "AMAQ: integral gain of the bit-budget controller"),
      LB_FIELD("split.lambda_kp", split.lambda_kp, "AMAQ: proportional gain of the bit-budget controller"),
      LB_FIELD("split.importance_power", split.importance_power,
               "AMAQ: channel weights 1/importance^p (0: off)"),
      LB_FIELD("split.importance_decay", split.importance_decay, "AMAQ: EMA factor of channel importance"),
      LB_FIELD("split.bit_gradient", split.bit_gradient,
               "AMAQ: gates' task gradient: expected (over the rounding noise) | sample"),
      LB_FIELD("split.exact_budget", split.exact_budget, "AMAQ: wire bits sum exactly to target x channels"),
      LB_FIELD("split.max_sessions", split.max_sessions, "server: most concurrent client sessions"),
      LB_FIELD("split.session_timeout_s", split.session_timeout_s, "server: drop sessions idle this long"),
      LB_FIELD("split.out", split.out, "server: where session adapters are saved (sessions/NAME)"),
  };
  return bindings;
}
#undef LB_FIELD

const Binding* Find(const std::string& key) {
  for (const auto& b : Bindings()) {
    if (b.info.key == key) return &b;
  }
  return nullptr;
}

std::string FlagName(const std::string& key) {
  std::string f = "--" + key;
  for (char& ch : f) {
    if (ch == '.' || ch == '_') ch = '-';
  }
  return f;
}

void Flatten(const YAML::Node& node, const std::string& prefix,
             std::vector<std::pair<std::string, YAML::Node>>* out) {
  for (const auto& kv : node) {
    const std::string key =
        prefix.empty() ? kv.first.as<std::string>() : prefix + "." + kv.first.as<std::string>();
    if (kv.second.IsMap()) {
      Flatten(kv.second, key, out);
    } else {
      out->emplace_back(key, kv.second);
    }
  }
}

}  // namespace

std::vector<FieldInfo> ConfigFields() {
  std::vector<FieldInfo> out;
  for (const auto& b : Bindings()) out.push_back(b.info);
  return out;
}

Status SetField(RunConfig* config, const std::string& key, const std::string& value) {
  const Binding* b = Find(key);
  if (!b)
    return InvalidArgument("unknown config key '" + key + "' (see `lowband launch --help` for the keys)");
  return b->set(*config, value);
}

std::string GetField(const RunConfig& config, const std::string& key) {
  const Binding* b = Find(key);
  return b ? b->get(config) : "";
}

Status LoadYaml(const std::string& path, RunConfig* config) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return NotFound("config file '" + path +
                    "' cannot be read: check the path (e.g. configs/brown-gpt.yaml)");
  } catch (const YAML::Exception& e) {
    return InvalidArgument(fmt::format("{}: not valid YAML: {}", path, e.what()));
  }
  if (root.IsNull()) return Status::Ok();
  if (!root.IsMap()) return InvalidArgument(path + ": expected a mapping of config keys at the top level");
  std::vector<std::pair<std::string, YAML::Node>> items;
  try {
    Flatten(root, "", &items);
  } catch (const YAML::Exception& e) {
    return InvalidArgument(fmt::format("{}: {}", path, e.what()));
  }
  for (const auto& [key, node] : items) {
    if (!node.IsScalar()) return InvalidArgument(fmt::format("{}: {}: expected a single value", path, key));
    LOWBAND_RETURN_IF_ERROR(SetField(config, key, node.Scalar()).WithContext(path));
  }
  return Status::Ok();
}

std::string ToYaml(const RunConfig& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::string section;
  bool open = false;
  for (const auto& b : Bindings()) {
    const auto dot = b.info.key.find('.');
    const std::string s = dot == std::string::npos ? "" : b.info.key.substr(0, dot);
    const std::string leaf = dot == std::string::npos ? b.info.key : b.info.key.substr(dot + 1);
    if (s != section) {
      if (open) out << YAML::EndMap;
      open = !s.empty();
      if (open) out << YAML::Key << s << YAML::Value << YAML::BeginMap;
      section = s;
    }
    out << YAML::Key << leaf << YAML::Value << b.get(config);
  }
  if (open) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

Status WriteYaml(const RunConfig& config, const std::string& path) {
  {
    std::ofstream f(path, std::ios::trunc);
    if (!f) return Unavailable("cannot write '" + path + "'");
    f << "# lowband run config (resolved: file + flags). Contains the run token: keep it private.\n"
      << ToYaml(config);
    if (!f) return Unavailable("writing '" + path + "' failed");
  }
  ::chmod(path.c_str(), 0600);
  return Status::Ok();
}

Status Finalize(RunConfig* c) {
  if (c->algo != "ddp" && c->algo != "diloco" && c->algo != "streaming") {
    return InvalidArgument("algo: expected ddp, diloco or streaming, got '" + c->algo + "'");
  }
  if (c->algo == "diloco") {
    c->diloco.fragments = 1;
    c->diloco.tau = 0;
    c->diloco.alpha = 0.0;
  }
  if (c->steps <= 0) return InvalidArgument("steps: must be positive");
  if (c->eval_every <= 0 || c->log_every <= 0)
    return InvalidArgument("eval_every and log_every must be positive");
  if (c->inner.total_steps <= 0) c->inner.total_steps = c->steps;
  if (c->site.ranks < 1) return InvalidArgument("site.ranks: must be at least 1");
  if (c->site.ranks > 1 && c->algo == "ddp") {
    return InvalidArgument(
        "site.ranks: algo ddp is already data-parallel over all its workers; run --workers M x R instead of "
        "sites of R ranks (sites are for streaming and diloco)");
  }
  if (c->site.check_every < 0) return InvalidArgument("site.check_every: must be >= 0");
  if (c->coordinator.checkpoint_every < 0)
    return InvalidArgument("coordinator.checkpoint_every: must be >= 0");
  if (c->coordinator.max_members < 1) return InvalidArgument("coordinator.max_members: must be at least 1");
  if (c->coordinator.max_inflight_pushes < 1)
    return InvalidArgument("coordinator.max_inflight_pushes: must be at least 1");
  if (!(c->site.timeout_s > 0)) return InvalidArgument("site.timeout_s: must be positive");
  if (std::error_code ec; !c->tls.dir.empty() && !std::filesystem::is_directory(c->tls.dir, ec)) {
    return InvalidArgument("tls.dir: '" + c->tls.dir +
                           "' is not a directory (deploy/make-certs.sh makes one for each role)");
  }
  // Short runs (tests, smoke runs) keep a warmup of a tenth of the run rather than failing.
  if (c->inner.warmup_steps >= c->inner.total_steps) c->inner.warmup_steps = c->inner.total_steps / 10;
  if (c->algo != "ddp") {
    if (c->diloco.H < 1) return InvalidArgument("diloco.H: must be at least 1");
    if (c->diloco.fragments < 1) return InvalidArgument("diloco.fragments: must be at least 1");
    if (c->diloco.H < c->diloco.fragments) {
      return InvalidArgument(
          fmt::format("diloco.H ({}) must be at least diloco.fragments ({}): one fragment per step at most",
                      c->diloco.H, c->diloco.fragments));
    }
    if (c->diloco.tau < 0 || c->diloco.tau >= c->diloco.H)
      return InvalidArgument("diloco.tau: must be in [0, H)");
    if (c->diloco.alpha < 0 || c->diloco.alpha > 1) return InvalidArgument("diloco.alpha: must be in [0, 1]");
    if (c->diloco.late != "wait" && c->diloco.late != "defer") {
      return InvalidArgument("diloco.late: expected wait or defer, got '" + c->diloco.late + "'");
    }
    if (c->diloco.nonblock != "own" && c->diloco.nonblock != "spread") {
      return InvalidArgument("diloco.nonblock: expected own or spread, got '" + c->diloco.nonblock + "'");
    }
    LOWBAND_RETURN_IF_ERROR(UploadCodec(*c).status());
    LOWBAND_RETURN_IF_ERROR(DownloadCodec(*c).status());
  }
  return Status::Ok();
}

namespace {
StatusOr<quant::CodecSpec> MakeSpec(const RunConfig& c, const std::string& format, const char* field) {
  quant::CodecSpec spec;
  auto f = quant::ParseFormat(format);
  if (!f.ok()) return f.status().WithContext(field);
  spec.format = *f;
  spec.block_size = static_cast<uint32_t>(c.codec.block);
  auto s = quant::ParseScaleType(c.codec.scale);
  if (!s.ok()) return s.status().WithContext("codec.scale");
  spec.scale_type = *s;
  if (c.codec.rounding == "stochastic") {
    spec.rounding = quant::Rounding::kStochastic;
  } else if (c.codec.rounding != "nearest") {
    return InvalidArgument("codec.rounding: expected nearest or stochastic, got '" + c.codec.rounding + "'");
  }
  if (quant::IsBlockwise(spec.format)) LOWBAND_RETURN_IF_ERROR(quant::Validate(spec).WithContext(field));
  if (!quant::IsBlockwise(spec.format) && spec.rounding == quant::Rounding::kStochastic &&
      spec.format != quant::Format::kBf16) {
    spec.rounding = quant::Rounding::kNearest;
  }
  return spec;
}
}  // namespace

StatusOr<quant::CodecSpec> UploadCodec(const RunConfig& c) {
  return MakeSpec(c, c.codec.format, "codec.format");
}

StatusOr<quant::CodecSpec> DownloadCodec(const RunConfig& c) {
  auto spec = MakeSpec(c, c.codec.download == "same" ? c.codec.format : c.codec.download, "codec.download");
  if (spec.ok()) spec->rounding = quant::Rounding::kNearest;  // every copy must decode the same update
  return spec;
}

std::shared_ptr<ConfigFlags> AddConfigFlags(CLI::App* app) {
  auto flags = std::make_shared<ConfigFlags>();
  app->add_option("--config", flags->config_file, "YAML config file (every key below can go there)");
  app->add_option("--set", flags->sets, "Override any config key: --set diloco.H=50 (repeatable)");
  const RunConfig defaults;
  for (const auto& b : Bindings()) {
    std::string names = FlagName(b.info.key);
    for (const auto& a : b.info.aliases) {
      if (a != names) names += "," + a;
    }
    auto* opt = app->add_option(names, flags->values[b.info.key],
                                b.info.help + " [" + b.info.key + ", default " + b.get(defaults) + "]");
    opt->group("Config (any key, also in the YAML file)");
    opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a later flag overrides an earlier one
    flags->options.emplace_back(b.info.key, opt);
  }
  return flags;
}

StatusOr<RunConfig> ResolveConfig(const ConfigFlags& flags) {
  RunConfig c;
  if (!flags.config_file.empty()) LOWBAND_RETURN_IF_ERROR(LoadYaml(flags.config_file, &c));
  for (const auto& [key, opt] : flags.options) {
    if (opt->count() > 0)
      LOWBAND_RETURN_IF_ERROR(SetField(&c, key, flags.values.at(key)).WithContext("command line"));
  }
  for (const auto& s : flags.sets) {
    const auto eq = s.find('=');
    if (eq == std::string::npos) return InvalidArgument("--set expects key=value, got '" + s + "'");
    LOWBAND_RETURN_IF_ERROR(SetField(&c, s.substr(0, eq), s.substr(eq + 1)).WithContext("--set"));
  }
  // The token may come from the environment instead, where other users' `ps` cannot see it.
  if (const char* token = std::getenv("LOWBAND_TOKEN"); c.run.token.empty() && token != nullptr)
    c.run.token = token;
  if (const char* dir = std::getenv("LOWBAND_TLS_DIR"); c.tls.dir.empty() && dir != nullptr) c.tls.dir = dir;
  LOWBAND_RETURN_IF_ERROR(Finalize(&c));
  return c;
}

comm::TlsServerFiles ServerTls(const TlsSection& tls) {
  comm::TlsServerFiles files{tls.server_cert, tls.server_key, tls.client_ca};
  if (tls.dir.empty()) return files;
  const comm::TlsServerFiles from_dir = comm::ServerFilesFromDir(tls.dir);
  if (files.cert.empty()) files.cert = from_dir.cert;
  if (files.key.empty()) files.key = from_dir.key;
  if (files.client_ca.empty()) files.client_ca = from_dir.client_ca;
  return files;
}

comm::TlsClientFiles ClientTls(const TlsSection& tls) {
  comm::TlsClientFiles files{tls.ca, tls.client_cert, tls.client_key, tls.server_name};
  if (tls.dir.empty()) return files;
  const comm::TlsClientFiles from_dir = comm::ClientFilesFromDir(tls.dir);
  if (files.ca.empty()) files.ca = from_dir.ca;
  if (files.cert.empty() && files.key.empty()) {
    files.cert = from_dir.cert;
    files.key = from_dir.key;
  }
  return files;
}

}  // namespace lowband::tools
