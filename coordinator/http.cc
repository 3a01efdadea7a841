#include "coordinator/http.h"

#include <atomic>
#include <chrono>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "coordinator/checkpoint.h"

namespace lowband::coordinator {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr size_t kMaxRequestBytes = 8 * 1024;
constexpr auto kIdleTimeout = std::chrono::seconds(10);

double SecondsBetween(SteadyTime earlier, SteadyTime later) {
  return std::chrono::duration<double>(later - earlier).count();
}

// A Prometheus label value: backslash, double quote and newline escaped.
std::string LabelValue(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// HTML text: the five characters that matter escaped.
std::string Html(const std::string& v) {
  std::string out;
  for (char c : v) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace

nlohmann::json StatusJson(const CoordinatorCore& core) {
  const CoordinatorOptions& o = core.options();
  const SteadyTime now = o.clock != nullptr ? o.clock->Now() : std::chrono::steady_clock::now();
  const CoordinatorCounters c = core.counters();
  nlohmann::json j;
  j["run_id"] = o.run_id;  // the token is never shown
  j["seeded"] = core.seeded();
  j["live_members"] = core.live_members();
  j["settings"] = {{"H", o.inner_steps},
                   {"fragments", o.layout.num_fragments},
                   {"tau", o.overlap_steps},
                   {"alpha", o.mixing_alpha},
                   {"quorum", o.quorum},
                   {"upload_codec", quant::FormatName(o.upload_codec.format)},
                   {"download_codec", quant::FormatName(o.download_codec.format)}};
  j["counters"] = CountersToJson(c);
  nlohmann::json rounds = nlohmann::json::array();
  if (auto layout = core.layout()) {
    for (uint32_t p = 0; p < layout->num_fragments(); ++p) {
      auto r = core.round_status(p);
      if (!r.ok()) continue;
      rounds.push_back({{"fragment", p},
                        {"open_round", r->open_round},
                        {"contributions", r->contributions},
                        {"expected", r->expected},
                        {"overdue", r->overdue},
                        {"elements", layout->element_count(p)}});
    }
  }
  j["rounds"] = rounds;
  nlohmann::json workers = nlohmann::json::array();
  for (const WorkerStats& w : core.workers()) {
    workers.push_back({{"worker_id", w.worker_id},
                       {"name", w.name},
                       {"host", w.host},
                       {"live", w.live},
                       {"step", w.step},
                       {"loss", w.last_loss},
                       {"tokens", w.tokens},
                       {"seconds_since_heard", SecondsBetween(w.last_seen, now)},
                       {"seconds_since_join", SecondsBetween(w.joined_at, now)},
                       {"reported_bytes_sent", w.reported_bytes_sent},
                       {"reported_bytes_received", w.reported_bytes_received},
                       {"contributions", w.contributions},
                       {"late_pushes", w.late_pushes},
                       {"refusals", w.refusals},
                       {"sync_bytes_in", w.sync_bytes_in},
                       {"sync_bytes_out", w.sync_bytes_out}});
  }
  j["workers"] = workers;
  return j;
}

std::string PrometheusText(const nlohmann::json& s) {
  std::string out;
  auto metric = [&](const std::string& name, const char* type, const std::string& help) {
    out += fmt::format("# HELP lowband_{} {}\n# TYPE lowband_{} {}\n", name, help, name, type);
  };
  auto value = [](const nlohmann::json& v) {
    if (v.is_boolean()) return std::string(v.get<bool>() ? "1" : "0");
    if (v.is_number_float()) return fmt::format("{}", v.get<double>());
    return v.dump();
  };
  metric("seeded", "gauge", "1 once the global state is seeded");
  out += fmt::format("lowband_seeded {}\n", value(s["seeded"]));
  metric("live_members", "gauge", "workers whose heartbeats arrive");
  out += fmt::format("lowband_live_members {}\n", value(s["live_members"]));
  for (const CounterField& c : CounterFields()) {
    metric(std::string(c.name) + "_total", "counter", c.help);
    out += fmt::format("lowband_{}_total {}\n", c.name, value(s["counters"][c.name]));
  }
  metric("fragment_open_round", "gauge", "the round now open, per fragment");
  for (const auto& r : s["rounds"])
    out += fmt::format("lowband_fragment_open_round{{fragment=\"{}\"}} {}\n", value(r["fragment"]),
                       value(r["open_round"]));
  metric("fragment_contributions", "gauge", "contributions in the open round, per fragment");
  for (const auto& r : s["rounds"])
    out += fmt::format("lowband_fragment_contributions{{fragment=\"{}\"}} {}\n", value(r["fragment"]),
                       value(r["contributions"]));
  metric("fragment_expected", "gauge", "live members expected in the open round, per fragment");
  for (const auto& r : s["rounds"])
    out += fmt::format("lowband_fragment_expected{{fragment=\"{}\"}} {}\n", value(r["fragment"]),
                       value(r["expected"]));
  // Per worker: what its heartbeats report and what the coordinator counted for it.
  static const std::tuple<const char*, const char*, const char*, const char*> kWorker[] = {
      {"worker_live", "live", "gauge", "1 while the worker's heartbeats arrive"},
      {"worker_step", "step", "gauge", "inner step the worker last reported"},
      {"worker_loss", "loss", "gauge", "training loss the worker last reported"},
      {"worker_tokens_total", "tokens", "counter", "tokens the worker reported trained"},
      {"worker_seconds_since_heard", "seconds_since_heard", "gauge", "seconds since the worker's last call"},
      {"worker_reported_bytes_sent_total", "reported_bytes_sent", "counter",
       "payload bytes the worker reported sent"},
      {"worker_reported_bytes_received_total", "reported_bytes_received", "counter",
       "payload bytes the worker reported received"},
      {"worker_contributions_total", "contributions", "counter", "contributions accepted from the worker"},
      {"worker_refusals_total", "refusals", "counter", "calls of the worker refused"},
      {"worker_sync_bytes_in_total", "sync_bytes_in", "counter",
       "contribution bytes received from the worker"},
      {"worker_sync_bytes_out_total", "sync_bytes_out", "counter", "update bytes sent to the worker"},
  };
  for (const auto& [name, key, type, help] : kWorker) {
    metric(name, type, help);
    for (const auto& w : s["workers"]) {
      out += fmt::format("lowband_{}{{worker=\"{}\",name=\"{}\"}} {}\n", name, value(w["worker_id"]),
                         LabelValue(w["name"].get<std::string>()), value(w[key]));
    }
  }
  return out;
}

std::string StatusPage(const nlohmann::json& s) {
  std::string out =
      "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">"
      "<title>lowband coordinator</title><style>body{font-family:sans-serif;margin:2em}"
      "table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
      "text-align:right}th{background:#eee}</style></head><body>";
  const auto& st = s["settings"];
  out += fmt::format(
      "<h1>lowband coordinator: run {}</h1><p>{} live members; state {}; H={} P={} tau={} alpha={} "
      "quorum={}; "
      "codec {} up / {} down. <a href=\"/metrics\">/metrics</a> <a "
      "href=\"/status.json\">/status.json</a></p>",
      Html(s["run_id"].get<std::string>()), s["live_members"].dump(),
      s["seeded"].get<bool>() ? "seeded" : "not seeded", st["H"].dump(), st["fragments"].dump(),
      st["tau"].dump(), st["alpha"].dump(), st["quorum"].dump(), Html(st["upload_codec"].get<std::string>()),
      Html(st["download_codec"].get<std::string>()));
  out +=
      "<h2>Members</h2><table><tr><th>id</th><th>name</th><th>host</th><th>live</th><th>step</th><th>loss</"
      "th>"
      "<th>tokens</th><th>heard (s ago)</th><th>contributions</th><th>bytes in</th><th>bytes out</th>"
      "<th>refusals</th></tr>";
  for (const auto& w : s["workers"]) {
    out += fmt::format(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4f}</td><td>{}</td><td>{:.1f}</td>"
        "<td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        w["worker_id"].dump(), Html(w["name"].get<std::string>()), Html(w["host"].get<std::string>()),
        w["live"].get<bool>() ? "yes" : "no", w["step"].dump(), w["loss"].get<double>(), w["tokens"].dump(),
        w["seconds_since_heard"].get<double>(), w["contributions"].dump(), w["sync_bytes_in"].dump(),
        w["sync_bytes_out"].dump(), w["refusals"].dump());
  }
  out +=
      "</table><h2>Rounds</h2><table><tr><th>fragment</th><th>values</th><th>open "
      "round</th><th>contributions</th>"
      "<th>expected</th><th>overdue</th></tr>";
  for (const auto& r : s["rounds"]) {
    out +=
        fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    r["fragment"].dump(), r["elements"].dump(), r["open_round"].dump(),
                    r["contributions"].dump(), r["expected"].dump(), r["overdue"].get<bool>() ? "yes" : "no");
  }
  out += "</table><h2>Counters</h2><table>";
  for (const auto& [k, v] : s["counters"].items())
    out += fmt::format("<tr><th>{}</th><td>{}</td></tr>", k, v.dump());
  out += "</table></body></html>\n";
  return out;
}

// ---------------------------------------------------------------------------------------------------

struct HttpStatusServer::Impl {
  explicit Impl(const CoordinatorCore& c) : core(c), acceptor(io) {}

  // One connection: read one request (bounded size and time), answer, close.
  class Session : public std::enable_shared_from_this<Session> {
   public:
    Session(tcp::socket socket, Impl* owner) : stream_(std::move(socket)), owner_(owner) {
      parser_.header_limit(kMaxRequestBytes);
      parser_.body_limit(kMaxRequestBytes);
    }
    void Start() {
      stream_.expires_after(kIdleTimeout);
      http::async_read(stream_, buffer_, parser_,
                       [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
    }

   private:
    void OnRead(beast::error_code ec) {
      if (ec == http::error::header_limit || ec == http::error::body_limit ||
          ec == http::error::buffer_overflow) {
        return Reply(http::status::payload_too_large, "text/plain", "request larger than 8 KiB\n", false);
      }
      if (ec) return;  // closed, timed out or not HTTP: nothing to answer
      const auto& req = parser_.get();
      const bool head = req.method() == http::verb::head;
      if (req.method() != http::verb::get && !head) {
        return Reply(http::status::method_not_allowed, "text/plain", "read-only endpoint: GET or HEAD\n",
                     false);
      }
      const std::string target(req.target());
      const std::string path = target.substr(0, target.find('?'));
      const bool page = path == "/" || path == "/index.html";
      if (!page && path != "/metrics" && path != "/status.json") {
        return Reply(http::status::not_found, "text/plain", "not found: try /, /metrics or /status.json\n",
                     head);
      }
      // Read the core only for a page that shows it.
      const nlohmann::json status = StatusJson(owner_->core);
      if (path == "/metrics") {
        return Reply(http::status::ok, "text/plain; version=0.0.4; charset=utf-8", PrometheusText(status),
                     head);
      }
      if (page) return Reply(http::status::ok, "text/html; charset=utf-8", StatusPage(status), head);
      Reply(http::status::ok, "application/json", status.dump(2) + "\n", head);
    }

    void Reply(http::status code, const char* type, std::string body, bool head) {
      response_.result(code);
      response_.version(11);
      response_.set(http::field::server, "lowband");
      response_.set(http::field::content_type, type);
      response_.set(http::field::cache_control, "no-store");
      response_.keep_alive(false);
      response_.body() = head ? std::string() : std::move(body);
      response_.prepare_payload();
      if (head) response_.content_length(0);
      http::async_write(stream_, response_, [self = shared_from_this()](beast::error_code, size_t) {
        beast::error_code ignored;
        self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
      });
    }

    beast::tcp_stream stream_;
    Impl* owner_;
    beast::flat_buffer buffer_{kMaxRequestBytes};
    http::request_parser<http::string_body> parser_;
    http::response<http::string_body> response_;
  };

  void Accept() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
      if (!ec) std::make_shared<Session>(std::move(socket), this)->Start();
      Accept();
    });
  }

  const CoordinatorCore& core;
  asio::io_context io;
  tcp::acceptor acceptor;
  std::thread thread;
  std::atomic<int> port{0};
};

HttpStatusServer::HttpStatusServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpStatusServer::~HttpStatusServer() { Stop(); }

StatusOr<std::unique_ptr<HttpStatusServer>> HttpStatusServer::Start(const CoordinatorCore& core,
                                                                    const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) return InvalidArgument("--http must be host:port, got '" + address + "'");
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = -1;
  try {
    port = std::stoi(address.substr(colon + 1));
  } catch (const std::exception&) {
  }
  if (port < 0 || port > 65535) return InvalidArgument("--http port is not a port: '" + address + "'");
  auto impl = std::make_unique<Impl>(core);
  try {
    const tcp::endpoint ep(asio::ip::make_address(host.empty() ? "0.0.0.0" : host),
                           static_cast<uint16_t>(port));
    impl->acceptor.open(ep.protocol());
    impl->acceptor.set_option(asio::socket_base::reuse_address(true));
    impl->acceptor.bind(ep);
    impl->acceptor.listen();
    impl->port = impl->acceptor.local_endpoint().port();
  } catch (const std::exception& e) {
    return Unavailable(fmt::format("cannot serve HTTP on {}: {}", address, e.what()));
  }
  impl->Accept();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->io.run(); });
  spdlog::info("coordinator: status page on http://{}:{}/ (metrics at /metrics)", host, impl->port.load());
  return std::unique_ptr<HttpStatusServer>(new HttpStatusServer(std::move(impl)));
}

int HttpStatusServer::port() const { return impl_->port.load(); }

void HttpStatusServer::Stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  asio::post(impl_->io, [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
  });
  impl_->io.stop();
  impl_->thread.join();
}

}  // namespace lowband::coordinator
