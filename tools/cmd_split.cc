// `lowband split-server` and `lowband split-client`: split fine-tuning with AMAQ (DESIGN.md §5).
//
// The server holds the top of a pretrained GPT and serves any number of client sessions; each client
// runs the bottom on its own data, sends the cut activations (AMAQ) and gets their gradients back.
// Both read the same config (every key also a flag). The server takes the model, base, cut and task
// from its own config; the per-session settings (codecs, bits, LoRA, optimizer) come from each
// client's hello. The client writes metrics/split-client.jsonl, summary.json (loss/accuracy/perplexity,
// bits each way, payload bytes per example: every byte of every AMAQ payload, not gRPC framing or
// the targets) and its adapters under --out.
#include <filesystem>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "comm/metrics.h"
#include "comm/running_mean.h"
#include "tools/command.h"
#include "tools/config.h"

#if defined(LOWBAND_HAVE_SPLIT)
#include "quant/amaq.h"
#include "split/client.h"
#include "split/server.h"
#include "worker/data.h"
#endif

namespace lowband::tools {
namespace {

struct ServerFlags {
  std::string listen = "0.0.0.0:50061";
  std::string port_file;
};

struct ClientFlags {
  std::string server = "127.0.0.1:50061";
  std::string name;
  std::string out = "runs/split";
  int client_id = 0;
  int clients = 1;
  bool no_save = false;
};

}  // namespace

#if defined(LOWBAND_HAVE_SPLIT)
namespace {

void Ok(const Status& s) {
  if (!s.ok()) throw CommandError(s.ToString());
}

void RunServer(const RunConfig& c, const ServerFlags& f) {
  split::SplitServerOptions o;
  o.listen = f.listen;
  o.token = c.run.token;
  o.tls = ServerTls(c.tls);
  o.model = c.model;
  o.split = c.split;
  o.seed = c.seed;
  o.threads = c.threads;
  auto server = split::SplitServer::Start(o);
  Ok(server.status());
  spdlog::info(
      "split-server on port {} ({}): GPT d_model {} x {} blocks, cut after block {} ({} on the server), task "
      "{}, "
      "base '{}'",
      (*server)->port(), comm::Describe(o.tls), c.model.d_model, c.model.n_layers, c.split.cut - 1,
      c.model.n_layers - c.split.cut, c.split.task, c.split.base.empty() ? "(random init)" : c.split.base);
  if (!f.port_file.empty()) {
    const Status written = WritePortFile(f.port_file, (*server)->port());
    if (!written.ok()) throw CommandError("split-server: --port-file: " + written.message());
  }
  InstallStopHandlers();
  int64_t last_steps = -1;
  auto last_log = std::chrono::steady_clock::now();
  while (!StopRequested()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const auto k = (*server)->counters();
    if (k.train_steps != last_steps &&
        std::chrono::steady_clock::now() - last_log > std::chrono::seconds(10)) {
      spdlog::info(
          "sessions {} active / {} started, {} training steps, {} eval batches, in {} out {}, {} rejected",
          k.sessions_active, k.sessions_started, k.train_steps, k.eval_batches,
          comm::HumanBytes(static_cast<double>(k.bytes_received)),
          comm::HumanBytes(static_cast<double>(k.bytes_sent)), k.rejected);
      last_steps = k.train_steps;
      last_log = std::chrono::steady_clock::now();
    }
  }
  spdlog::info("split-server: stopping");
  (*server)->Shutdown();
}

nlohmann::json EvalJson(int64_t step, const split::EvalReport& e, const std::string& task) {
  nlohmann::json j = {{"event", "eval"}, {"step", step}, {"loss", e.loss}, {"examples", e.examples}};
  if (e.accuracy) j["accuracy"] = *e.accuracy;
  if (task == "lm") j["perplexity"] = std::exp(e.loss);
  return j;
}

void RunClient(const RunConfig& c, const ClientFlags& f) {
  if (f.clients < 1 || f.client_id < 0 || f.client_id >= f.clients)
    throw CommandError(fmt::format("--client-id must be in [0, --clients={})", f.clients), 2);
  auto data =
      worker::OpenDataset(c.data, f.client_id, f.clients, c.seed + static_cast<uint64_t>(f.client_id));
  Ok(data.status());
  Ok(worker::CheckModelFitsData(c.model, c.data, **data, worker::TrainingPath::kSplit));
  const bool classify = c.split.task == "classify";
  if (classify != ((*data)->task() == worker::TaskKind::kTextClassification)) {
    throw CommandError(
        fmt::format("split.task {} does not fit dataset '{}': classify needs a text classification "
                    "dataset (spam-assassin), lm a text or token dataset",
                    c.split.task, c.data.dataset),
        2);
  }
  split::SplitClientOptions o;
  o.server = f.server;
  o.token = c.run.token;
  o.tls = ClientTls(c.tls);
  o.name = f.name.empty() ? fmt::format("client-{}", f.client_id) : f.name;
  o.model = c.model;
  o.split = c.split;
  o.inner = c.inner;
  o.seed = c.seed;
  o.total_steps = c.steps;
  o.num_classes = static_cast<int>((*data)->NumClasses());
  o.threads = c.threads;
  auto client = split::SplitClient::Connect(o);
  Ok(client.status());
  split::SplitClient& cl = **client;

  auto log = comm::MetricsLog::Open(f.out + "/metrics/split-client.jsonl");
  Ok(log.status());
  comm::RunClock clock;
  int64_t bytes_up = 0, bytes_down = 0, bitmap_up = 0, bitmap_down = 0, examples = 0, values = 0;
  comm::RunningMean bits_up, bits_down, loss_window, acc_window;
  const std::string grad_codec = split::ResolveGradCodec(c.split.grad_codec, c.split.codec);  // as used
  const bool grad_gates = grad_codec == "amaq";
  double grad_noise_vs_uniform = 1;
  nlohmann::json eval_curve = nlohmann::json::array(), bits_curve = nlohmann::json::array();
  const auto& eval_batches = (*data)->EvalBatches();
  const auto evaluate = [&](int64_t step) {
    auto e = cl.Evaluate(eval_batches);
    Ok(e.status());
    nlohmann::json j = EvalJson(step, *e, c.split.task);
    j["wall_seconds"] = clock.Elapsed();
    log->Write(j);
    eval_curve.push_back(j);
    spdlog::info("eval step {}: loss {:.4f}{}", step, e->loss,
                 e->accuracy ? fmt::format("  accuracy {:.2f}%", 100 * *e->accuracy)
                             : fmt::format("  perplexity {:.3f}", std::exp(e->loss)));
    return *e;
  };
  InstallStopHandlers();  // Ctrl-C ends training early; the final evaluation and the adapters still happen
  for (int64_t step = 0; step < c.steps && !StopRequested(); ++step) {
    const worker::Batch batch = (*data)->NextTrainBatch();
    auto r = cl.Train(batch);
    Ok(r.status());
    if (r->skipped_client_update) continue;  // nothing came back for this step: nothing to count
    const int64_t b = batch.inputs.size(0);
    examples += b;
    values += batch.inputs.numel() * c.model.d_model;
    bytes_up += static_cast<int64_t>(r->up.total_bytes);
    bytes_down += static_cast<int64_t>(r->down.total_bytes);
    bitmap_up += static_cast<int64_t>(r->up.bitmap_bytes);
    bitmap_down += static_cast<int64_t>(r->down.bitmap_bytes);
    bits_up.Add(r->up.code_bits_per_value);
    bits_down.Add(r->down.code_bits_per_value);
    loss_window.Add(r->loss);
    grad_noise_vs_uniform = r->grad_noise_vs_uniform;
    if (classify && r->count > 0)
      acc_window.Add(static_cast<double>(r->correct) / static_cast<double>(r->count));
    const auto stats = cl.allocator().stats();
    if ((step + 1) % c.log_every == 0 || step + 1 == c.steps) {
      const double elapsed = clock.Elapsed();
      const double eta = elapsed / static_cast<double>(step + 1) * static_cast<double>(c.steps - step - 1);
      nlohmann::json j = {
          {"event", "train"},
          {"step", step + 1},
          {"loss", loss_window.Get()},
          {"bits_up", r->up.code_bits_per_value},
          {"bits_down", r->down.code_bits_per_value},
          {"target_bits", stats.target},
          {"lambda", stats.lambda},
          {"bits_histogram", stats.histogram},
          {"noise_vs_uniform", stats.noise_vs_uniform},
          {"grad_noise_vs_uniform", r->grad_noise_vs_uniform},
          {"bytes_up", bytes_up},
          {"bytes_down", bytes_down},
          {"bytes_per_example", static_cast<double>(bytes_up + bytes_down) / static_cast<double>(examples)},
          {"examples_per_second", static_cast<double>(examples) / elapsed},
          {"wall_seconds", elapsed}};
      if (classify) j["accuracy"] = acc_window.Get();
      log->Write(j);
      bits_curve.push_back({{"step", step + 1}, {"mean_bits", stats.mean_bits}, {"target", stats.target}});
      spdlog::info(
          "step {}/{}  loss {:.4f}{}  bits up {:.2f} (target {:.0f}{}) down {:.2f}{}  {}/example  "
          "{:.1f} ex/s  ETA {:.0f}s",
          step + 1, c.steps, loss_window.Get(),
          classify ? fmt::format("  acc {:.1f}%", 100 * acc_window.Get()) : std::string(),
          r->up.code_bits_per_value, stats.target,
          cl.allocator().codec() == split::CutCodec::kAmaq
              ? fmt::format(", noise {:.2f}x uniform", stats.noise_vs_uniform)
              : std::string(),
          r->down.code_bits_per_value,
          grad_gates ? fmt::format(" (noise {:.2f}x uniform)", r->grad_noise_vs_uniform) : std::string(),
          comm::HumanBytes(static_cast<double>(bytes_up + bytes_down) / static_cast<double>(examples)),
          static_cast<double>(examples) / elapsed, eta);
      loss_window = {};
      acc_window = {};
    }
    if ((step + 1) % c.eval_every == 0 && step + 1 < c.steps) evaluate(step + 1);
  }
  const split::EvalReport final_eval = evaluate(cl.next_step());
  auto saved = cl.Finish(!f.no_save, f.no_save ? std::string() : f.out + "/adapters");
  Ok(saved.status());
  // What the same examples' payloads would have been in fp32 (both directions, no headers).
  const double fp32_per_example =
      2.0 * static_cast<double>(values * 4) / static_cast<double>(std::max<int64_t>(examples, 1));
  const auto stats = cl.allocator().stats();
  nlohmann::json summary = {
      {"task", c.split.task},
      {"codec", c.split.codec},
      {"bits", c.split.bits},
      {"grad_codec", grad_codec},
      {"cut", c.split.cut},
      {"lora_rank", c.split.lora_rank},
      {"seed", c.seed},
      {"steps", cl.next_step()},
      {"examples", examples},
      {"final_eval_loss", final_eval.loss},
      {"eval_examples", final_eval.examples},
      {"eval_curve", eval_curve},
      {"bits_curve", bits_curve},
      {"mean_bits_up", bits_up.Get()},
      {"mean_bits_down", bits_down.Get()},
      {"final_bits_histogram", stats.histogram},
      {"final_noise_vs_uniform", stats.noise_vs_uniform},
      {"final_grad_noise_vs_uniform", grad_noise_vs_uniform},
      {"bytes_up", bytes_up},
      {"bytes_down", bytes_down},
      {"bitmap_bytes_up", bitmap_up},
      {"bitmap_bytes_down", bitmap_down},
      {"bytes_per_example",
       static_cast<double>(bytes_up + bytes_down) / static_cast<double>(std::max<int64_t>(examples, 1))},
      {"fp32_bytes_per_example", fp32_per_example},
      {"compression_vs_fp32", fp32_per_example * static_cast<double>(examples) /
                                  static_cast<double>(std::max<int64_t>(bytes_up + bytes_down, 1))},
      {"reconnects", cl.reconnects()},
      {"wall_seconds", clock.Elapsed()},
      {"server_adapters", *saved},
      {"client_adapters", f.no_save ? "" : f.out + "/adapters"}};
  if (split::GradBitsApply(grad_codec))
    summary["grad_bits"] = split::ResolveGradBits(c.split.grad_bits, c.split.bits);
  if (final_eval.accuracy) summary["final_accuracy"] = *final_eval.accuracy;
  if (c.split.task == "lm") summary["final_perplexity"] = std::exp(final_eval.loss);
  Ok(comm::WriteJsonFile(f.out + "/summary.json", summary));
  fmt::print(
      "split-client {}: {} steps, final eval loss {:.4f}{}, bits up {:.2f} / down {:.2f}, {}/example "
      "({:.1f}x less than fp32), summary in {}/summary.json\n",
      o.name, cl.next_step(), final_eval.loss,
      final_eval.accuracy ? fmt::format(", accuracy {:.2f}%", 100 * *final_eval.accuracy)
                          : fmt::format(", perplexity {:.3f}", std::exp(final_eval.loss)),
      bits_up.Get(), bits_down.Get(),
      comm::HumanBytes(static_cast<double>(bytes_up + bytes_down) /
                       static_cast<double>(std::max<int64_t>(examples, 1))),
      summary["compression_vs_fp32"].get<double>(), f.out);
}

}  // namespace
#endif

void RegisterSplit(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("split-server",
                                   "Serve the top of a split GPT to split-client sessions (AMAQ over gRPC)");
    auto flags = AddConfigFlags(cmd);
    auto f = std::make_shared<ServerFlags>();
    cmd->add_option("--listen", f->listen, "host:port to listen on (port 0: pick one)")
        ->capture_default_str();
    cmd->add_option("--port-file", f->port_file, "Write the bound port to this file once listening");
    cmd->callback([flags, f] {
#if defined(LOWBAND_HAVE_SPLIT)
      auto c = ResolveConfig(*flags);
      if (!c.ok()) throw CommandError(c.status().message(), 2);
      RunServer(*c, *f);
#else
      throw CommandError("this lowband was built without LibTorch/gRPC: split-server is not available");
#endif
    });
  }
  {
    auto* cmd = app.add_subcommand(
        "split-client", "Fine-tune the bottom of a split GPT on local data against a split-server");
    auto flags = AddConfigFlags(cmd);
    auto f = std::make_shared<ClientFlags>();
    cmd->add_option("--server", f->server, "split-server host:port")->capture_default_str();
    cmd->add_option("--name", f->name, "Client name (names its adapters on the server; default client-ID)");
    cmd->add_option("--out", f->out, "Directory for metrics/, summary.json and adapters/")
        ->capture_default_str();
    cmd->add_option("--client-id", f->client_id, "This client's data shard")->capture_default_str();
    cmd->add_option("--clients", f->clients, "Number of clients sharing the training data")
        ->capture_default_str();
    cmd->add_flag("--no-save", f->no_save, "Do not save adapters (on either side)");
    cmd->callback([flags, f] {
#if defined(LOWBAND_HAVE_SPLIT)
      auto c = ResolveConfig(*flags);
      if (!c.ok()) throw CommandError(c.status().message(), 2);
      RunClient(*c, *f);
#else
      throw CommandError("this lowband was built without LibTorch/gRPC: split-client is not available");
#endif
    });
  }
}

}  // namespace lowband::tools
