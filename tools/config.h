// RunConfig: every setting of a training run, one typed struct with a documented default per field.
//
// Parsed once in main from a YAML file (--config) plus command-line flags, and passed down. Every
// field has a dotted key ("diloco.H", "model.d_model") used in the YAML file, in `--set key=value`,
// and as a flag of its own (`--diloco-H`, `--model-d-model`, plus short aliases for the common ones:
// --algo, --codec, --steps, --H, --fragments, --tau, --alpha, --seed, ...). One table (Fields)
// drives the YAML reader, the flags, the writer and the docs, so they cannot drift apart.
// Thread safety: plain values. Lifetimes: ConfigFlags must outlive the CLI parse that fills it.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "comm/tls.h"
#include "quant/codec.h"
#include "quant/status.h"
#include "split/config.h"
#include "worker/config.h"

namespace lowband::tools {

struct RunSection {
  // Name of the run (directory and labels in reports).
  std::string name = "run";
  // Run id checked by the coordinator on every call: workers of another run are refused.
  std::string id = "lowband";
  // Shared secret checked on every call (empty: none, acceptable on loopback only). Never logged.
  std::string token;
};

struct DilocoConfig {
  // H: inner steps between two syncs of the same fragment.
  int64_t H = 100;
  // P: number of fragments (1 = plain DiLoCo); a fragment is sent every H/P steps.
  int fragments = 4;
  // Where non-block parameters (embeddings, final norm) go: "own" fragment or "spread".
  std::string nonblock = "own";
  // tau: inner steps between sending a fragment and applying its outer update (overlap).
  int64_t tau = 1;
  // alpha: local share when merging, theta = alpha * theta + (1 - alpha) * global.
  double alpha = 0.5;
  // A result not there by step t + tau: "wait" (stall, counted) or "defer" (apply when it comes).
  std::string late = "wait";
  // Outer optimizer (coordinator): Nesterov SGD on the averaged outer gradient.
  double outer_lr = 0.7;
  double outer_momentum = 0.9;
  bool nesterov = true;
};

struct CodecConfig {
  // Upload codec of outer gradients (any quant format; "fp4" = fp4_e3m0).
  std::string format = "fp4_e3m0";
  int block = 64;
  // Block scale storage: bf16, fp16, fp32, pow2.
  std::string scale = "bf16";
  // "nearest" or "stochastic".
  std::string rounding = "nearest";
  // Keep the encoding residual and add it to the next outer gradient of the same fragment.
  bool error_feedback = false;
  // Download codec of outer updates: "same" as upload, or a format name.
  std::string download = "same";
};

struct CoordinatorSection {
  // A round closes as soon as every live member has contributed; at its deadline (round_timeout_s
  // after its first contribution) it closes with at least this many contributions (0 is read as 1).
  // Dead members leave the count when their heartbeats stop (heartbeat_timeout_s).
  int quorum = 1;
  // A round closes at this deadline with a quorum, even if live members are missing.
  double round_timeout_s = 600;
  // A member silent for this long is dropped.
  double heartbeat_timeout_s = 60;
  // With a checkpoint directory (coordinator --checkpoint-dir): write the coordinator's state every
  // N closed rounds (1: an update reaches workers only once it is on disk) and at SIGTERM.
  int checkpoint_every = 1;
  // Limits: live members; PushFragment streams in flight per worker.
  int max_members = 1024;
  int max_inflight_pushes = 4;
};

// TLS on the coordinator's gRPC channel (comm/tls.h). Empty: plaintext.
struct TlsSection {
  std::string ca;           // workers: the CA that signed the coordinator's certificate
  std::string server_cert;  // coordinator: its certificate chain (PEM)
  std::string server_key;   // coordinator: its private key (PEM)
  std::string client_ca;    // coordinator: require client certificates signed by this CA (mutual TLS)
  std::string client_cert;  // workers: their certificate (mutual TLS)
  std::string client_key;   // workers: their private key (mutual TLS)
  std::string server_name;  // workers: the name to check in the coordinator's certificate
  // A directory in the kubernetes.io/tls layout (deploy/make-certs.sh writes one per role): the files
  // above that are not set come from it (comm::ServerFilesFromDir / ClientFilesFromDir).
  std::string dir;
};

// A worker that is a site: several ranks training one replica data-parallel (worker/engine.h).
struct SiteSection {
  // Processes (ranks) per worker; rank 0 alone talks to the coordinator (streaming, diloco).
  int ranks = 1;
  // Compare every rank's parameters and global copy every N steps (0: only at the start and end).
  int64_t check_every = 0;
  // Timeout of every intra-site (and ddp) collective and of the rendezvous, in seconds.
  double timeout_s = 300;
};

struct RunConfig {
  // "ddp" (fp32 gradient all-reduce every step via c10d Gloo), "diloco" (P=1, tau=0, alpha=0) or
  // "streaming" (Streaming DiLoCo).
  std::string algo = "streaming";
  // Inner steps each worker runs (the token budget is steps * batch * seq_len * workers).
  int64_t steps = 600;
  uint64_t seed = 1;
  // Evaluate the global parameters on held-out data every N steps (and at the end).
  int64_t eval_every = 50;
  // Write a metrics line every N steps.
  int64_t log_every = 10;
  // LibTorch intra-op threads per worker process.
  int threads = 1;
  RunSection run;
  worker::ModelConfig model;
  worker::DataConfig data;
  worker::InnerOptimizerConfig inner;
  DilocoConfig diloco;
  CodecConfig codec;
  CoordinatorSection coordinator;
  TlsSection tls;
  SiteSection site;
  // Split learning (`lowband split-server` / `split-client`).
  split::SplitConfig split;

  // inner.total_steps 0 means "= steps" (the cosine ends with the run).
  RunConfig() { inner.total_steps = 0; }
};

// One configurable field.
struct FieldInfo {
  std::string key;                   // "diloco.H"
  std::vector<std::string> aliases;  // extra flag names: "--H"
  std::string help;
};
std::vector<FieldInfo> ConfigFields();

// Sets one field from its text form; the error names the key, the value and the expected type.
Status SetField(RunConfig* config, const std::string& key, const std::string& value);
std::string GetField(const RunConfig& config, const std::string& key);

// Reads a YAML file over the defaults. Unknown keys and wrong types are errors naming file and key.
Status LoadYaml(const std::string& path, RunConfig* config);
// The whole config as YAML (token included: the file is written with mode 0600).
std::string ToYaml(const RunConfig& config);
Status WriteYaml(const RunConfig& config, const std::string& path);

// Checks cross-field rules and applies the algo presets (diloco: fragments=1, tau=0, alpha=0;
// inner.total_steps defaults to steps). Errors name the field.
Status Finalize(RunConfig* config);

// The quant specs the config asks for.
StatusOr<quant::CodecSpec> UploadCodec(const RunConfig& config);
StatusOr<quant::CodecSpec> DownloadCodec(const RunConfig& config);

// The TLS files of a server (coordinator, split-server) or a client (worker, split client): the
// files set one by one, then, for those not set, the ones tls.dir holds.
comm::TlsServerFiles ServerTls(const TlsSection& tls);
comm::TlsClientFiles ClientTls(const TlsSection& tls);

// CLI glue: --config FILE, --set key=value (repeatable), and one flag per field.
struct ConfigFlags {
  std::string config_file;
  std::vector<std::string> sets;
  std::map<std::string, std::string> values;  // key -> text, filled by CLI11
  std::vector<std::pair<std::string, CLI::Option*>> options;
};
std::shared_ptr<ConfigFlags> AddConfigFlags(CLI::App* app);
// File, then flags in the order: per-field flags, then --set. Then Finalize.
StatusOr<RunConfig> ResolveConfig(const ConfigFlags& flags);

}  // namespace lowband::tools
