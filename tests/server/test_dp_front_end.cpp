// The data-parallel front end and rendezvous over real loopback sockets, with stand-in ranks
// (small HTTP servers) instead of engines: fail-over on connect failures, dropping a rank at the
// rendezvous, the master's heartbeat, call deadlines and cancellation, registration checks.
// tests/e2e/test_dp.py runs real ranks.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <tuple>
#include <vector>

#include "atom/core/error.h"
#include "atom/server/dp_front_end.h"
#include "atom/server/dp_rendezvous.h"
#include "atom/server/dp_router.h"
#include "atom/server/http_client.h"
#include "atom/server/http_server.h"

namespace atom::server {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
using ::testing::HasSubstr;

// A stand-in rank: an HTTP server on host:<free port> answering with `handler`.
struct FakeRank {
  explicit FakeRank(HttpHandler handler, const std::string& host = "127.0.0.1")
      : server(
            [&] {
              HttpServerOptions o;
              o.host = host;
              o.port = 0;
              o.threads = 1;
              return o;
            }(),
            std::move(handler)) {
    server.start();
  }
  HttpServer server;
};

// A rank whose requests are never answered (the responders are kept until the end).
struct SilentRank {
  std::mutex mu;
  std::vector<std::shared_ptr<HttpResponder>> held;
  FakeRank rank{[this](HttpRequest, std::shared_ptr<HttpResponder> res) {
    std::lock_guard<std::mutex> lock(mu);
    held.push_back(std::move(res));
  }};
};

// The front end on a public port of its own.
struct FrontEnd {
  explicit FrontEnd(int64_t dp, DpFrontEndConfig config = {})
      : router(dp),
        fe(router, std::move(config)),
        http(
            [] {
              HttpServerOptions o;
              o.host = "127.0.0.1";
              o.port = 0;
              o.threads = 1;
              return o;
            }(),
            [this](HttpRequest req, std::shared_ptr<HttpResponder> res) {
              fe.handle(std::move(req), std::move(res));
            }) {
    http.start();
  }
  DpRouter router;
  DpFrontEnd fe;
  HttpServer http;
};

struct Reply {
  int status = 0;
  Headers headers;
  std::string body;
  UpstreamResult result;
  milliseconds took{0};
};

// One request to 127.0.0.1:port (or `host`), waited for (at most 10 s).
Reply fetch(int port, const std::string& method, const std::string& target,
            std::optional<milliseconds> deadline = std::nullopt,
            const std::string& host = "127.0.0.1") {
  HttpClient client;
  auto out = std::make_shared<Reply>();
  auto done = std::make_shared<std::promise<void>>();
  UpstreamHandlers h;
  h.on_head = [out](int status, const Headers& headers, bool) {
    out->status = status;
    out->headers = headers;
  };
  h.on_data = [out](std::string data) { out->body += data; };
  h.on_done = [out, done](const UpstreamResult& r) {
    out->result = r;
    done->set_value();
  };
  UpstreamRequest req;
  req.method = method;
  req.target = target;
  if (method == "POST") {
    req.body = "{}";
    req.headers.emplace_back("Content-Type", "application/json");
  }
  const auto t0 = Clock::now();
  client.start(host, port, std::move(req), std::move(h), milliseconds(2000), deadline);
  EXPECT_EQ(done->get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << method << " " << target << " got no answer";
  out->took = std::chrono::duration_cast<milliseconds>(Clock::now() - t0);
  client.stop();
  return *out;
}

// A loopback port nothing listens on now.
int closed_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// A listener whose accept queue is full: new connections' SYNs are dropped, so a connect to it
// times out (as to a host that drops packets) instead of being refused.
struct BlackHole {
  BlackHole() {
    listener = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(listener, 0), 0);
    socklen_t len = sizeof(a);
    ::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    for (int i = 0; i < 2; ++i) {  // never accepted: they fill the queue
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      (void)::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
      fillers.push_back(fd);
    }
    std::this_thread::sleep_for(milliseconds(100));
  }
  ~BlackHole() {
    for (const int fd : fillers) ::close(fd);
    ::close(listener);
  }
  int listener = -1, port = 0;
  std::vector<int> fillers;
};

std::string header(const Reply& r, const std::string& name) {
  return header_value(r.headers, name);
}

HttpHandler answer(int status, std::string content_type, std::string body) {
  return [=](HttpRequest, std::shared_ptr<HttpResponder> res) {
    res->send(status, content_type, body);
  };
}

TEST(DpFrontEnd, ARefusingRankIsDeclaredDeadDroppedAndTheRequestGoesToAnother) {
  FakeRank rank1(answer(200, "application/json", R"({"from":1})"));
  FrontEnd f(2);
  std::mutex mu;
  std::vector<std::pair<int64_t, RankEndpoint>> dropped;
  std::string why;
  f.fe.on_rank_unreachable([&](int64_t r, const RankEndpoint& at, const std::string& reason) {
    std::lock_guard<std::mutex> lock(mu);
    dropped.emplace_back(r, at);
    why = reason;
  });
  const RankEndpoint gone{"127.0.0.1", closed_port(), 11};
  f.router.set_up(0, gone, DpRouter::Clock::now());
  f.router.set_up(1, {"127.0.0.1", rank1.server.port(), 12}, DpRouter::Clock::now());

  const Reply r = fetch(f.http.port(), "POST", "/v1/completions");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, R"({"from":1})");
  EXPECT_EQ(header(r, "X-Atom-Dp-Rank"), "1");
  EXPECT_EQ(f.router.info(0).state, RankState::kDead);
  EXPECT_THAT(f.router.info(0).reason, HasSubstr("refused the front end"));
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0].first, 0);
  EXPECT_EQ(dropped[0].second, gone);
  EXPECT_THAT(why, HasSubstr("refused"));
  EXPECT_EQ(f.router.info(0).open, 0);
  EXPECT_EQ(f.router.info(0).failed_total, 0);  // nothing had reached it
}

TEST(DpFrontEnd, AConnectTimeoutFailsOverWithoutKillingTheRank) {
  BlackHole hole;
  FakeRank rank1(answer(200, "application/json", R"({"from":1})"));
  DpFrontEndConfig config;
  config.connect_timeout = milliseconds(300);
  FrontEnd f(2, config);
  std::atomic<int> dropped{0};
  f.fe.on_rank_unreachable([&](int64_t, const RankEndpoint&, const std::string&) { ++dropped; });
  f.router.set_up(0, {"127.0.0.1", hole.port, 11}, DpRouter::Clock::now());
  f.router.set_up(1, {"127.0.0.1", rank1.server.port(), 12}, DpRouter::Clock::now());

  const Reply r = fetch(f.http.port(), "POST", "/v1/completions");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(header(r, "X-Atom-Dp-Rank"), "1");
  EXPECT_GE(r.took.count(), 250) << "rank 0 was not tried first";
  EXPECT_EQ(f.router.info(0).state, RankState::kUp);  // a timeout is no proof of death
  EXPECT_EQ(f.router.info(0).open, 0);
  EXPECT_EQ(dropped.load(), 0);

  // With no other rank left, the request fails with the connect error; rank 0 stays up.
  ASSERT_TRUE(f.router.mark_dead(1, "test"));
  const Reply alone = fetch(f.http.port(), "POST", "/v1/completions");
  EXPECT_EQ(alone.status, 503);
  EXPECT_THAT(alone.body, HasSubstr("data-parallel rank 0 at 127.0.0.1:"));
  EXPECT_THAT(alone.body, HasSubstr("could not be reached: connect timed out"));
  EXPECT_THAT(alone.body, HasSubstr("dp_rank_failed"));
  EXPECT_EQ(f.router.info(0).state, RankState::kUp);
  EXPECT_EQ(dropped.load(), 0);
}

TEST(DpFrontEnd, ADeadRankEndsItsMetricScrapeAtOnce) {
  SilentRank silent;
  FrontEnd f(1);
  f.router.set_up(0, {"127.0.0.1", silent.rank.server.port(), 11}, DpRouter::Clock::now());
  std::thread killer([&] {
    std::this_thread::sleep_for(milliseconds(200));
    ASSERT_TRUE(f.router.mark_dead(0, "its load reports stopped"));
    f.fe.rank_dead(0, "its load reports stopped");
  });
  const Reply r = fetch(f.http.port(), "GET", "/metrics");
  killer.join();
  EXPECT_EQ(r.status, 200);
  EXPECT_LT(r.took.count(), 1500) << "the scrape waited for its deadline, not for the death";
  EXPECT_THAT(r.body, HasSubstr("atom:dp_rank_up{model_name=\"\",dp_rank=\"0\"} 0"));
}

TEST(DpFrontEnd, AProfileAnswerThatIsNotJsonIsRelayedAsText) {
  FakeRank rank0(answer(200, "text/plain", "profiling started"));
  FrontEnd f(1);
  f.router.set_up(0, {"127.0.0.1", rank0.server.port(), 11}, DpRouter::Clock::now());
  const Reply r = fetch(f.http.port(), "POST", "/start_profile");
  ASSERT_EQ(r.status, 200) << r.body;
  const nlohmann::json j = nlohmann::json::parse(r.body);  // throws on "<discarded>"
  ASSERT_EQ(j.at("ranks").size(), 1u);
  EXPECT_EQ(j["ranks"][0]["dp_rank"], 0);
  EXPECT_EQ(j["ranks"][0]["response"], "profiling started");
}

TEST(DpFrontEnd, ModelsListTheReferenceModel) {
  DpFrontEndConfig config;
  config.served_model_name = "m";
  config.model_root = "/models/m";
  config.max_model_len = 512;
  FrontEnd f(1, config);
  const Reply r = fetch(f.http.port(), "GET", "/v1/models");
  ASSERT_EQ(r.status, 200);
  const nlohmann::json j = nlohmann::json::parse(r.body);
  EXPECT_EQ(j["object"], "list");
  EXPECT_EQ(j["data"][0]["id"], "m");
  EXPECT_EQ(j["data"][0]["root"], "/models/m");
  EXPECT_EQ(j["data"][0]["max_model_len"], 512);
  EXPECT_EQ(j["data"][0]["owned_by"], "atom");
}

TEST(HttpClientCalls, ADeadlineEndsACallThatGetsNoAnswer) {
  SilentRank silent;
  const Reply r = fetch(silent.rank.server.port(), "GET", "/metrics", milliseconds(200));
  EXPECT_FALSE(r.result.ok);
  EXPECT_TRUE(r.result.cancelled);
  EXPECT_FALSE(r.result.connect_failed);
  EXPECT_EQ(r.result.error, "no complete answer within 200 ms");
  EXPECT_GE(r.took.count(), 150);
  EXPECT_LT(r.took.count(), 2000);
}

TEST(HttpClientCalls, ARefusedConnectSaysThePeerIsDown) {
  const Reply r = fetch(closed_port(), "GET", "/");
  EXPECT_TRUE(r.result.connect_failed);
  EXPECT_TRUE(r.result.peer_down);
}

TEST(HttpClientCalls, AnIpv6HostHeaderIsBracketed) {
  FakeRank v6(
      [](HttpRequest req, std::shared_ptr<HttpResponder> res) {
        res->send(200, "text/plain", req.header("host"));
      },
      "::1");
  const Reply r = fetch(v6.server.port(), "GET", "/", std::nullopt, "::1");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "[::1]:" + std::to_string(v6.server.port()));
}

TEST(HttpHeaders, LookupIgnoresCase) {
  const Headers h = {{"Content-Type", "a"}, {"X-Thing", "b"}, {"x-thing", "c"}};
  EXPECT_EQ(header_value(h, "content-type"), "a");
  EXPECT_EQ(header_value(h, "X-THING"), "b");  // the first one
  EXPECT_EQ(header_value(h, "Accept"), "");
  EXPECT_TRUE(iequals("Host", "hOST"));
  EXPECT_FALSE(iequals("Host", "Hosts"));
}

// ---------------------------------------------------------------------------------------------
// Rendezvous.

RankRegistration registration(int64_t rank, int port, int64_t pid) {
  RankRegistration r;
  r.rank = rank;
  r.dp_size = 1;
  r.host = "127.0.0.1";
  r.port = port;
  r.model = "m";
  r.max_model_len = 64;
  r.pid = pid;
  return r;
}

std::unique_ptr<DpRankReporter> join(int master_port, const RankRegistration& reg) {
  auto reporter = std::make_unique<DpRankReporter>("127.0.0.1", master_port);
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  reporter->connect(deadline, {});
  reporter->register_rank(reg, deadline, {});
  return reporter;
}

bool wait_for(const std::function<bool()>& cond, milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (!cond()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return true;
}

TEST(DpRendezvous, DropTellsTheRankWhichMayRegisterAgain) {
  DpRouter router(1);
  DpMaster master(router, "127.0.0.1", 0);
  std::atomic<int> dead_calls{0};
  master.on_rank_dead([&](int64_t, const std::string&) { ++dead_calls; });
  master.start();
  auto reporter = join(master.port(), registration(0, 4000, 7));
  reporter->start_reporting([] { return RankLoad{}; });
  ASSERT_EQ(router.info(0).state, RankState::kUp);

  // Another endpoint (a process that registered since): nothing happens.
  master.drop(0, {"127.0.0.1", 4001, 7}, "stale");
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_FALSE(reporter->master_lost());
  EXPECT_EQ(router.info(0).state, RankState::kUp);

  master.drop(0, {"127.0.0.1", 4000, 7}, "its endpoint refused the front end");
  ASSERT_TRUE(wait_for([&] { return reporter->master_lost(); }, milliseconds(2000)));
  EXPECT_THAT(reporter->lost_reason(), HasSubstr("its endpoint refused the front end"));
  EXPECT_EQ(router.info(0).state, RankState::kDead);
  EXPECT_EQ(dead_calls.load(), 1);
  reporter->stop();

  // The session is gone: the same rank registers again (as rank 0 does after a drop).
  auto again = join(master.port(), registration(0, 4002, 7));
  EXPECT_EQ(router.info(0).state, RankState::kUp);
  EXPECT_EQ(router.info(0).endpoint.port, 4002);
  again->stop();
  master.stop();
}

// This process's TCP sockets whose local or peer port is `port`, by (local port, peer port).
std::vector<std::tuple<int, int, int>> sockets_on(int port) {
  std::vector<std::tuple<int, int, int>> out;  // (fd, local port, peer port)
  for (int fd = 0; fd < 4096; ++fd) {
    sockaddr_in local{}, peer{};
    socklen_t a = sizeof(local), b = sizeof(peer);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &a) != 0 ||
        local.sin_family != AF_INET)
      continue;
    const int lp = ntohs(local.sin_port);
    const int pp =
        ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &b) == 0 ? ntohs(peer.sin_port) : 0;
    if (lp == port || pp == port) out.emplace_back(fd, lp, pp);
  }
  return out;
}

TEST(DpRendezvous, SocketsKeepAliveTimeOutAndCloseOnExec) {
  DpRouter router(1);
  DpMaster master(router, "127.0.0.1", 0);
  master.start();
  auto reporter = join(master.port(), registration(0, 4000, 7));
  reporter->start_reporting([] { return RankLoad{}; });
  // The listener, the master's end and the rank's end of the one connection.
  const auto fds = sockets_on(master.port());
  ASSERT_EQ(fds.size(), 3u);
  int connected = 0;
  for (const auto& [fd, local, peer] : fds) {
    EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0) << "fd " << fd << " " << local << "-" << peer;
    if (peer == 0) continue;  // the listener
    ++connected;
    int keepalive = 0;
    unsigned user_timeout = 0;
    socklen_t n = sizeof(keepalive), m = sizeof(user_timeout);
    ASSERT_EQ(::getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &keepalive, &n), 0);
    ASSERT_EQ(::getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, &m), 0);
    EXPECT_EQ(keepalive, 1);
    EXPECT_EQ(user_timeout, unsigned(kRankSocketTimeout.count()));
  }
  EXPECT_EQ(connected, 2);
  reporter->stop();
  master.stop();
}

TEST(DpRendezvous, RegistrationsWithoutAUsableEndpointAreRefused) {
  DpRouter router(1);
  DpMaster master(router, "127.0.0.1", 0);
  master.start();
  const auto refusal = [&](const RankRegistration& reg) -> std::string {
    try {
      join(master.port(), reg);
    } catch (const Error& e) {
      return e.what();
    }
    return "accepted";
  };
  EXPECT_THAT(refusal(registration(0, 0, 7)), HasSubstr("registered port 0, which is not a TCP"));
  EXPECT_THAT(refusal(registration(0, 70000, 7)), HasSubstr("registered port 70000"));
  RankRegistration no_host = registration(0, 4000, 7);
  no_host.host.clear();
  EXPECT_THAT(refusal(no_host), HasSubstr("registered no address"));
  EXPECT_EQ(router.info(0).state, RankState::kPending);
  master.stop();
}

// A master that accepts one rank and then says nothing (as a front end whose process is
// stopped: its kernel keeps the connection open).
struct MuteMaster {
  MuteMaster() {
    listener = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(listener, 4), 0);
    socklen_t len = sizeof(a);
    ::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    thread = std::thread([this] {
      conn = ::accept(listener, nullptr, nullptr);
      char c = 0;
      while (::read(conn, &c, 1) == 1 && c != '\n') {
      }
      const std::string accepted = "{\"type\":\"accepted\"}\n";
      (void)::write(conn, accepted.data(), accepted.size());
    });
  }
  ~MuteMaster() {
    thread.join();
    ::close(conn);
    ::close(listener);
  }
  int listener = -1, conn = -1, port = 0;
  std::thread thread;
};

TEST(DpRendezvous, ARankTakesASilentMasterForLostButNotAHealthyOne) {
  DpRouter router(1);
  DpMaster master(router, "127.0.0.1", 0);
  master.start();
  auto healthy = join(master.port(), registration(0, 4000, 7));
  healthy->start_reporting([] { return RankLoad{}; });

  MuteMaster mute;
  auto orphan = join(mute.port, registration(0, 4000, 8));
  const auto t0 = Clock::now();
  orphan->start_reporting([] { return RankLoad{}; });
  ASSERT_TRUE(
      wait_for([&] { return orphan->master_lost(); }, kHeartbeatTimeout + milliseconds(2000)));
  EXPECT_GE(Clock::now() - t0, kHeartbeatTimeout - milliseconds(100));
  EXPECT_THAT(orphan->lost_reason(), HasSubstr("sent no heartbeat"));
  const auto stop0 = Clock::now();
  orphan->stop();
  EXPECT_LT(Clock::now() - stop0, milliseconds(500));

  // The real master's heartbeats kept the other rank (which started earlier) connected.
  EXPECT_FALSE(healthy->master_lost()) << healthy->lost_reason();
  EXPECT_EQ(router.info(0).state, RankState::kUp);
  healthy->stop();
  master.stop();
}

}  // namespace
}  // namespace atom::server
