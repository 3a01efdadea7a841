// The coordinator's read-only HTTP endpoint over a real socket: the status page, Prometheus text and
// JSON show members, rounds and counters (never the token); anything but GET/HEAD, unknown paths and
// oversized requests are refused, and the endpoint keeps serving afterwards.
#include "coordinator/http.h"

#include <regex>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <boost/asio.hpp>

#include "coordinator/checkpoint.h"
#include "coordinator/clock.h"
#include "coordinator/core.h"
#include "tests/coordinator/fake_worker.h"

namespace lowband::coordinator {
namespace {

using testing::InitialParameters;
using testing::TestSignature;

// Sends `request` to 127.0.0.1:port and returns everything the server answers until it closes.
std::string Exchange(int port, const std::string& request) {
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket(io);
  socket.connect({boost::asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)});
  boost::asio::write(socket, boost::asio::buffer(request));
  std::string out;
  boost::system::error_code ec;
  char buf[4096];
  for (;;) {
    const size_t n = socket.read_some(boost::asio::buffer(buf), ec);
    out.append(buf, n);
    if (ec) break;
  }
  return out;
}

std::string Get(int port, const std::string& path) {
  return Exchange(port, "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n");
}

std::string Body(const std::string& response) {
  const auto at = response.find("\r\n\r\n");
  return at == std::string::npos ? "" : response.substr(at + 4);
}

class HttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CoordinatorOptions o;
    o.run_id = "run-h";
    o.token = "tok-5ecret-never-shown";
    o.layout.num_fragments = 3;
    o.inner_steps = 30;
    o.clock = &clock_;
    auto core = CoordinatorCore::Create(std::move(o));
    ASSERT_TRUE(core.ok()) << core.status().ToString();
    core_ = std::move(*core);
    JoinRequest r;
    r.run_id = "run-h";
    r.token = "tok-5ecret-never-shown";
    r.signature = TestSignature();
    r.worker_name = "w\"0\\";  // a quote and a backslash: escaped in labels and HTML
    r.host = "siteA<b>";
    auto j = core_->Join(r);
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    ASSERT_TRUE(core_->SeedState(j->key, InitialParameters(TestSignature().total_elements())).ok());
    HeartbeatInfo hb;
    hb.key = j->key;
    hb.step = 7;
    hb.last_loss = 2.5f;
    hb.tokens = 1234;
    ASSERT_TRUE(core_->Heartbeat(hb).ok());
    auto server = HttpStatusServer::Start(*core_, "127.0.0.1:0");
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
    port_ = server_->port();
    ASSERT_GT(port_, 0);
  }

  ManualClock clock_;
  std::unique_ptr<CoordinatorCore> core_;
  std::unique_ptr<HttpStatusServer> server_;
  int port_ = 0;
};

TEST_F(HttpTest, MetricsAreValidPrometheusTextWithMembersRoundsAndCounters) {
  const std::string response = Get(port_, "/metrics");
  ASSERT_NE(response.find("HTTP/1.1 200"), std::string::npos) << response;
  EXPECT_NE(response.find("text/plain; version=0.0.4"), std::string::npos);
  const std::string text = Body(response);
  EXPECT_NE(text.find("\nlowband_live_members 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nlowband_joins_total 1\n"), std::string::npos);
  // Every counter of the core is exported, rejoins included (it was missing from the old list).
  for (const coordinator::CounterField& c : coordinator::CounterFields()) {
    EXPECT_NE(text.find(fmt::format("\nlowband_{}_total ", c.name)), std::string::npos) << c.name;
  }
  EXPECT_NE(text.find("\nlowband_seeded 1\n"), std::string::npos);
  EXPECT_NE(text.find("lowband_fragment_open_round{fragment=\"2\"} 0\n"), std::string::npos);
  EXPECT_NE(text.find("lowband_worker_step{worker=\"1\",name=\"w\\\"0\\\\\"} 7\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("lowband_worker_loss{worker=\"1\",name=\"w\\\"0\\\\\"} 2.5\n"), std::string::npos);
  EXPECT_NE(text.find("lowband_worker_tokens_total{worker=\"1\",name=\"w\\\"0\\\\\"} 1234\n"),
            std::string::npos);
  // Every line is a comment or `name{labels} number` (the text format's grammar, as far as we use it).
  const std::regex sample(R"(^lowband_[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)+\})? -?[0-9.e+-]+$)");
  std::istringstream lines(text);
  std::string line;
  int samples = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("# HELP lowband_", 0) == 0 || line.rfind("# TYPE lowband_", 0) == 0) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << "not a sample: " << line;
    ++samples;
  }
  EXPECT_GT(samples, 25);
}

TEST_F(HttpTest, StatusPageAndJsonShowTheRunButNeverTheToken) {
  const std::string page = Get(port_, "/");
  ASSERT_NE(page.find("HTTP/1.1 200"), std::string::npos) << page;
  EXPECT_NE(page.find("<h1>lowband coordinator: run run-h</h1>"), std::string::npos);
  EXPECT_NE(page.find("siteA&lt;b&gt;"), std::string::npos) << "host names are HTML-escaped";
  const auto json = nlohmann::json::parse(Body(Get(port_, "/status.json")));
  EXPECT_EQ(json["live_members"], 1);
  EXPECT_EQ(json["workers"][0]["step"], 7);
  EXPECT_EQ(json["rounds"].size(), 3u);
  for (const char* path : {"/", "/metrics", "/status.json"}) {
    EXPECT_EQ(Get(port_, path).find("5ecret"), std::string::npos) << path << " shows the token";
  }
}

TEST_F(HttpTest, OnlyReadsAndRefusesBadRequestsYetKeepsServing) {
  EXPECT_NE(Exchange(port_, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
                .find("HTTP/1.1 405"),
            std::string::npos);
  EXPECT_NE(Exchange(port_, "DELETE / HTTP/1.1\r\nHost: x\r\n\r\n").find("HTTP/1.1 405"), std::string::npos);
  EXPECT_NE(Get(port_, "/admin").find("HTTP/1.1 404"), std::string::npos);
  const std::string huge = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + std::string(16 * 1024, 'a') + "\r\n\r\n";
  EXPECT_NE(Exchange(port_, huge).find("HTTP/1.1 413"), std::string::npos);
  EXPECT_EQ(Exchange(port_, "not http at all\r\n\r\n").find("HTTP/1.1 200"), std::string::npos);
  const std::string head = Exchange(port_, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_NE(head.find("HTTP/1.1 200"), std::string::npos);
  EXPECT_TRUE(Body(head).empty());
  // Still serving, and nothing about the run changed.
  EXPECT_NE(Get(port_, "/metrics").find("\nlowband_live_members 1\n"), std::string::npos);
  EXPECT_EQ(core_->counters().refusals, 0u);
}

TEST(HttpStartTest, BadAddressesAreRefusedWithTheFlagInTheMessage) {
  CoordinatorOptions o;
  auto core = CoordinatorCore::Create(o);
  ASSERT_TRUE(core.ok());
  for (const char* bad : {"nocolon", "127.0.0.1:99999", "127.0.0.1:http", "256.1.1.1:0"}) {
    auto s = HttpStatusServer::Start(**core, bad);
    EXPECT_FALSE(s.ok()) << bad;
    if (!s.ok()) {
      EXPECT_NE(s.status().message().find(bad), std::string::npos) << s.status().message();
    }
  }
}

}  // namespace
}  // namespace lowband::coordinator
