#include "atom/server/dp_rendezvous.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <utility>  // std::exchange, which boost/asio/awaitable.hpp uses unincluded

#include <boost/asio.hpp>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "atom/core/error.h"
#include "atom/core/logging.h"

namespace atom::server {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;
using nlohmann::json;

namespace {

// Lines longer than this are not a rank speaking the protocol.
constexpr size_t kMaxLineBytes = 64 * 1024;

std::string line(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

// The next line in `buf` (without its '\n'), consuming it.
std::string take_line(net::streambuf& buf, size_t n) {
  std::string s(net::buffers_begin(buf.data()), net::buffers_begin(buf.data()) + n);
  buf.consume(n);
  if (!s.empty() && s.back() == '\n') s.pop_back();
  if (!s.empty() && s.back() == '\r') s.pop_back();
  return s;
}

// A rendezvous connection notices a peer host that vanished without closing: keepalive probes
// while it is quiet, and TCP_USER_TIMEOUT on data that stays unacknowledged. Close-on-exec, as
// every socket here: a child rank must not hold the master's sockets.
void tune_socket(tcp::socket& s) {
  error_code ignored;
  s.set_option(net::socket_base::keep_alive(true), ignored);
  const int fd = s.native_handle();
  const int idle_s = 1, interval_s = 1;
  const int probes =
      int(std::chrono::duration_cast<std::chrono::seconds>(kRankSocketTimeout).count());
  const unsigned timeout_ms = unsigned(kRankSocketTimeout.count());
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
  ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout_ms, sizeof(timeout_ms));
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
}

std::string endpoint_text(const tcp::socket& s) {
  error_code ec;
  const tcp::endpoint ep = s.remote_endpoint(ec);
  if (ec) return "?";
  return fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

RankRegistration parse_registration(const json& j) {
  RankRegistration r;
  r.rank = j.at("rank").get<int64_t>();
  r.dp_size = j.at("dp_size").get<int64_t>();
  r.host = j.at("host").get<std::string>();
  r.port = j.at("port").get<int>();
  r.model = j.at("model").get<std::string>();
  r.max_model_len = j.at("max_model_len").get<int64_t>();
  r.root = j.value("root", std::string());
  r.pid = j.value("pid", int64_t(0));
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Master. Everything below runs on the master's one I/O thread, except the constructor, start(),
// stop(), wait_for_ranks() and reference(), which touch only the acceptor before start or the
// state under `mu`.

struct DpMaster::Impl : std::enable_shared_from_this<Impl> {
  struct Session {
    explicit Session(net::io_context& ioc) : socket(ioc), buf(kMaxLineBytes) {}
    tcp::socket socket;
    net::streambuf buf;
    std::string peer;
    int64_t rank = -1;      // once accepted
    RankEndpoint endpoint;  // once accepted
    bool draining = false;
    bool closed = false;
  };
  using SessionPtr = std::shared_ptr<Session>;

  explicit Impl(DpRouter& r) : router(r), acceptor(ioc), timer(ioc) {
    by_rank.resize(size_t(router.dp_size()));
  }

  DpRouter& router;
  net::io_context ioc;
  tcp::acceptor acceptor;
  net::steady_timer timer;
  std::thread thread;
  bool started = false, stopped = false;
  std::chrono::steady_clock::time_point next_heartbeat{};
  std::function<void(int64_t, const std::string&)> listener;
  std::vector<SessionPtr> by_rank;  // the live session of each registered rank
  std::vector<std::pair<SessionPtr, RankRegistration>> pending;  // waiting for rank 0's

  mutable std::mutex mu;
  std::condition_variable cv;
  std::optional<RankRegistration> reference;  // guarded by mu

  void accept() {
    auto s = std::make_shared<Session>(ioc);
    acceptor.async_accept(s->socket, [self = shared_from_this(), s](error_code ec) {
      if (ec == net::error::operation_aborted || !self->acceptor.is_open()) return;
      if (!ec) {
        s->peer = endpoint_text(s->socket);
        tune_socket(s->socket);
        // Sends never block the master's thread: a rank that stopped reading loses a message
        // (it is declared dead by its silence anyway).
        error_code ignored;
        s->socket.non_blocking(true, ignored);
        self->read(s);
      } else {
        ATOM_LOG_WARN("dp master: accept failed: {}", ec.message());
      }
      self->accept();
    });
  }

  void read(const SessionPtr& s) {
    net::async_read_until(
        s->socket, s->buf, '\n', [self = shared_from_this(), s](error_code ec, size_t n) {
          if (s->closed) return;
          if (ec) {
            const std::string why = ec == net::error::eof ? std::string("it closed the connection")
                                    : ec == net::error::not_found
                                        ? std::string("it sent a line too long")
                                        : "connection lost: " + ec.message();
            return self->session_ended(s, why);
          }
          const std::string text = take_line(s->buf, n);
          if (!self->on_message(s, text)) return;
          self->read(s);
        });
  }

  void send(const SessionPtr& s, const json& j) {
    if (s->closed) return;
    error_code ec;
    net::write(s->socket, net::buffer(line(j)), ec);  // non-blocking: would_block drops it
  }

  void close(const SessionPtr& s) {
    if (s->closed) return;
    s->closed = true;
    error_code ignored;
    s->socket.shutdown(tcp::socket::shutdown_both, ignored);
    s->socket.close(ignored);
  }

  // False when the session was closed.
  bool on_message(const SessionPtr& s, const std::string& text) {
    json j;
    try {
      j = json::parse(text);
      const std::string type = j.at("type").get<std::string>();
      if (type == "register") {
        if (s->rank >= 0) return true;  // once per connection
        RankRegistration reg = parse_registration(j);
        return on_register(s, std::move(reg));
      }
      if (s->rank < 0) return true;  // nothing else counts before registration
      if (type == "load") {
        RankLoad load;
        load.running = j.value("running", int64_t(0));
        load.waiting = j.value("waiting", int64_t(0));
        load.kv_cache_usage = j.value("kv_cache_usage", 0.0);
        router.report(s->rank, load, DpRouter::Clock::now());
      } else if (type == "draining") {
        s->draining = true;
        router.set_draining(s->rank);
        ATOM_LOG_INFO(
            "dp rank {} is shutting down: it finishes its requests and takes no new "
            "ones",
            s->rank);
      }
      return true;
    } catch (const std::exception& e) {
      ATOM_LOG_ERROR("dp master: dropping the connection from {}: not a rank's message ({}): {}",
                     s->peer, e.what(), text.substr(0, 200));
      session_ended(s, "it sent a malformed message");
      close(s);
      return false;
    }
  }

  // Why `reg` may not join, or "" when it may.
  std::string refusal(const RankRegistration& reg) const {
    const int64_t dp = router.dp_size();
    if (reg.dp_size != dp)
      return fmt::format(
          "dp rank {} runs with data-parallel size {}, but the front end (rank 0) "
          "was started with {}",
          reg.rank, reg.dp_size, dp);
    if (reg.rank < 0 || reg.rank >= dp)
      return fmt::format("dp rank {} is outside [0, {})", reg.rank, dp);
    if (reg.host.empty())
      return fmt::format("dp rank {} registered no address for its endpoint", reg.rank);
    if (reg.port < 1 || reg.port > 65535)
      return fmt::format("dp rank {} registered port {}, which is not a TCP port (1..65535)",
                         reg.rank, reg.port);
    if (by_rank[size_t(reg.rank)]) {
      const RankInfo info = router.info(reg.rank);
      return fmt::format(
          "dp rank {} is already registered (serving at {}:{}); two processes "
          "were given the same rank",
          reg.rank, info.endpoint.host, info.endpoint.port);
    }
    std::lock_guard<std::mutex> lock(mu);
    if (reg.rank == 0 || !reference) return {};
    if (reg.model != reference->model)
      return fmt::format(
          "dp rank {} serves model '{}', but rank 0 serves '{}': every "
          "data-parallel rank must serve the same model (--model, "
          "--served-model-name)",
          reg.rank, reg.model, reference->model);
    if (reg.max_model_len != reference->max_model_len)
      return fmt::format(
          "dp rank {} has max_model_len {}, but rank 0 has {}: every "
          "data-parallel rank must take the same requests (--max-model-len)",
          reg.rank, reg.max_model_len, reference->max_model_len);
    return {};
  }

  bool on_register(const SessionPtr& s, RankRegistration reg) {
    bool have_reference;
    {
      std::lock_guard<std::mutex> lock(mu);
      have_reference = reference.has_value();
    }
    if (!have_reference && reg.rank != 0 && reg.dp_size == router.dp_size()) {
      ATOM_LOG_INFO("dp rank {} ({}) is ready; it joins once rank 0 has registered", reg.rank,
                    s->peer);
      pending.emplace_back(s, std::move(reg));
      return true;
    }
    return decide(s, reg);
  }

  bool decide(const SessionPtr& s, const RankRegistration& reg) {
    const std::string why = refusal(reg);
    if (!why.empty()) {
      ATOM_LOG_ERROR("refused a data-parallel rank from {}: {}", s->peer, why);
      send(s, {{"type", "refused"}, {"error", why}});
      close(s);
      return false;
    }
    s->rank = reg.rank;
    s->endpoint = {reg.host, reg.port, reg.pid};
    by_rank[size_t(reg.rank)] = s;
    const bool again = router.info(reg.rank).state != RankState::kPending;
    router.set_up(reg.rank, s->endpoint, DpRouter::Clock::now());
    send(s, {{"type", "accepted"}});
    ATOM_LOG_INFO("dp rank {} {}: serving {} at {}:{} (pid {}, max_model_len {})", reg.rank,
                  again ? "registered again" : "registered", reg.model, reg.host, reg.port, reg.pid,
                  reg.max_model_len);
    if (reg.rank == 0) {
      {
        std::lock_guard<std::mutex> lock(mu);
        reference = reg;
      }
      auto waiting = std::move(pending);
      pending.clear();
      // Their reads are still armed (on_register kept them): decide only.
      for (auto& [ps, preg] : waiting)
        if (!ps->closed) decide(ps, preg);
    }
    cv.notify_all();
    return true;
  }

  void session_ended(const SessionPtr& s, const std::string& why) {
    std::erase_if(pending, [&](const auto& p) { return p.first == s; });
    const bool was_closed = s->closed;
    close(s);
    if (s->rank < 0 || by_rank[size_t(s->rank)] != s) return;
    by_rank[size_t(s->rank)].reset();
    if (s->draining) {
      router.set_stopped(s->rank, "it shut down");
      ATOM_LOG_INFO("dp rank {} has shut down", s->rank);
    } else if (!was_closed) {
      rank_dead(s->rank,
                fmt::format("its connection to the front end ended ({}; {})", why, s->peer));
    }
    cv.notify_all();
  }

  void rank_dead(int64_t rank, const std::string& reason) {
    if (!router.mark_dead(rank, reason)) return;
    std::vector<int64_t> up = router.ranks_in(RankState::kUp);
    ATOM_LOG_ERROR(
        "dp rank {} is dead: {}; its requests in flight fail, new requests go to "
        "ranks [{}]",
        rank, reason, fmt::join(up, ", "));
    if (listener) listener(rank, reason);
  }

  // Tells a rank declared dead so and closes its connection: rank 0 registers again, the
  // others exit, instead of reporting to a front end that ignores them.
  void drop_session(int64_t rank, const std::string& reason) {
    const SessionPtr s = by_rank[size_t(rank)];
    if (!s) return;
    send(s, {{"type", "dropped"}, {"error", "the front end declared this rank dead: " + reason}});
    by_rank[size_t(rank)].reset();
    close(s);
    cv.notify_all();
  }

  void tick() {
    timer.expires_after(kLoadReportInterval);
    timer.async_wait([self = shared_from_this()](error_code ec) {
      if (ec) return;
      const auto now = DpRouter::Clock::now();
      const auto expired = self->router.expire_silent(now, kLoadReportTimeout);
      for (const int64_t rank : expired) {
        const std::string reason =
            fmt::format("its load reports stopped for more than {} ms", kLoadReportTimeout.count());
        ATOM_LOG_ERROR(
            "dp rank {} is dead: {}; its requests in flight fail, new requests go to "
            "ranks [{}]",
            rank, reason, fmt::join(self->router.ranks_in(RankState::kUp), ", "));
        if (self->listener) self->listener(rank, reason);
        self->drop_session(rank, reason);
      }
      if (now >= self->next_heartbeat) {
        self->next_heartbeat = now + kHeartbeatInterval;
        for (const SessionPtr& s : self->by_rank)
          if (s) self->send(s, {{"type", "heartbeat"}});
      }
      self->tick();
    });
  }
};

DpMaster::DpMaster(DpRouter& router, const std::string& ip, int port)
    : impl_(std::make_shared<Impl>(router)) {
  error_code ec;
  tcp::resolver resolver(impl_->ioc);
  const auto results = resolver.resolve(ip, std::to_string(port), ec);
  ATOM_CHECK(!ec && !results.empty(), kInvalidArgument,
             "data-parallel master address {}: cannot resolve it ({})", ip,
             ec ? ec.message() : "no address");
  const tcp::endpoint endpoint = results.begin()->endpoint();
  tcp::acceptor& a = impl_->acceptor;
  a.open(endpoint.protocol(), ec);
  // Ranks started by this process (dp_launch.h) must not inherit the listening socket.
  if (!ec && ::fcntl(a.native_handle(), F_SETFD, FD_CLOEXEC) != 0)
    ec = error_code(errno, boost::system::system_category());
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  ATOM_CHECK(!ec, kInvalidArgument,
             "cannot listen for data-parallel ranks on {}:{} (--data-parallel-master-ip/-port, "
             "ATOM_DP_MASTER_IP/PORT): {}",
             ip, port, ec.message());
}

DpMaster::~DpMaster() { stop(); }

int DpMaster::port() const { return impl_->acceptor.local_endpoint().port(); }

void DpMaster::on_rank_dead(std::function<void(int64_t, const std::string&)> listener) {
  impl_->listener = std::move(listener);
}

void DpMaster::start() {
  if (impl_->started) return;
  impl_->started = true;
  impl_->accept();
  impl_->tick();
  impl_->thread = std::thread([impl = impl_] { impl->ioc.run(); });
}

void DpMaster::stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  if (impl_->started) {
    net::post(impl_->ioc, [impl = impl_] {
      error_code ignored;
      impl->acceptor.close(ignored);
      impl->timer.cancel();
      for (auto& s : impl->by_rank)
        if (s) impl->close(s);
      for (auto& p : impl->pending) impl->close(p.first);
      impl->ioc.stop();
    });
    impl_->thread.join();
  }
}

void DpMaster::drop(int64_t rank, const RankEndpoint& endpoint, const std::string& reason) {
  if (rank < 0 || rank >= impl_->router.dp_size()) return;
  net::post(impl_->ioc, [impl = impl_, rank, endpoint, reason] {
    const Impl::SessionPtr s = impl->by_rank[size_t(rank)];
    if (!s || s->endpoint != endpoint) return;  // gone already, or registered again since
    impl->rank_dead(rank, reason);              // no-op when the caller marked it dead
    impl->drop_session(rank, reason);
  });
}

std::vector<int64_t> DpMaster::wait_for_ranks(std::chrono::steady_clock::time_point deadline,
                                              const std::function<bool()>& interrupted) {
  while (true) {
    std::vector<int64_t> missing;
    for (const RankInfo& r : impl_->router.snapshot())
      if (r.state != RankState::kUp) missing.push_back(r.rank);
    if (missing.empty() || std::chrono::steady_clock::now() >= deadline ||
        (interrupted && interrupted()))
      return missing;
    std::unique_lock<std::mutex> lock(impl_->mu);
    impl_->cv.wait_for(lock, std::chrono::milliseconds(50));
  }
}

std::optional<RankRegistration> DpMaster::reference() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->reference;
}

// ---------------------------------------------------------------------------------------------
// Rank side: a blocking connect and registration on the caller's thread, then a thread of its
// own that sends the load reports and listens for the master.

struct DpRankReporter::Impl {
  std::string ip;
  int port = 0;
  net::io_context ioc;
  tcp::socket socket{ioc};
  net::steady_timer timer{ioc};
  net::streambuf buf{kMaxLineBytes};
  std::thread thread;
  std::function<RankLoad()> load;
  std::atomic<bool> lost{false};
  mutable std::mutex mu;
  std::string lost_reason;  // guarded by mu
  bool stopped = false;
  // Once reporting (on the thread): lines are written one at a time, never blocking; a load
  // report is skipped while an earlier line is still on its way (the next one is newer).
  std::deque<std::string> outbox;
  bool writing = false;
  std::chrono::steady_clock::time_point last_heard{};  // the master's last line

  void send(std::string text, bool droppable) {
    if (lost) return;
    if (writing) {
      if (!droppable) outbox.push_back(std::move(text));
      return;
    }
    writing = true;
    auto data = std::make_shared<std::string>(std::move(text));
    net::async_write(socket, net::buffer(*data), [this, data](error_code ec, size_t) {
      writing = false;
      if (lost) return;
      if (ec)
        return set_lost(fmt::format("the connection to the front end at {} failed ({})", master(),
                                    ec.message()));
      if (outbox.empty()) return;
      std::string next = std::move(outbox.front());
      outbox.pop_front();
      send(std::move(next), false);
    });
  }

  std::string master() const { return fmt::format("{}:{}", ip, port); }

  void set_lost(std::string why) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (lost) return;
      lost_reason = std::move(why);
    }
    lost = true;
    error_code ignored;
    timer.cancel();
    socket.close(ignored);
  }

  // Runs the I/O context until `done` is true, `deadline` passes or `interrupted()`.
  void run_until(const bool& done, std::chrono::steady_clock::time_point deadline,
                 const std::function<bool()>& interrupted) {
    while (!done && std::chrono::steady_clock::now() < deadline &&
           !(interrupted && interrupted())) {
      ioc.restart();
      ioc.run_for(std::chrono::milliseconds(100));
    }
  }

  void send_load() {
    timer.expires_after(kLoadReportInterval);
    timer.async_wait([this](error_code ec) {
      if (ec || lost) return;
      const auto now = std::chrono::steady_clock::now();
      error_code aec;
      // Unread bytes count as heard: after a stall of this process its timer may run first.
      if (now - last_heard > kHeartbeatTimeout && socket.available(aec) == 0)
        return set_lost(fmt::format(
            "the front end (data-parallel master at {}) sent no heartbeat for {} ms", master(),
            std::chrono::duration_cast<std::chrono::milliseconds>(now - last_heard).count()));
      const RankLoad l = load();
      send(line({{"type", "load"},
                 {"running", l.running},
                 {"waiting", l.waiting},
                 {"kv_cache_usage", l.kv_cache_usage}}),
           true);
      send_load();
    });
  }

  void listen() {
    net::async_read_until(socket, buf, '\n', [this](error_code ec, size_t n) {
      if (lost) return;
      if (ec) {
        return set_lost(ec == net::error::eof
                            ? fmt::format("the front end (data-parallel master at {}) closed "
                                          "the connection",
                                          master())
                            : fmt::format("the connection to the front end at {} failed ({})",
                                          master(), ec.message()));
      }
      last_heard = std::chrono::steady_clock::now();
      const std::string text = take_line(buf, n);
      try {
        const json j = json::parse(text);
        if (j.value("type", std::string()) == "dropped")
          return set_lost(j.value("error", std::string("the front end dropped this rank")));
      } catch (const std::exception&) {
      }
      listen();
    });
  }
};

DpRankReporter::DpRankReporter(std::string master_ip, int master_port)
    : impl_(std::make_unique<Impl>()) {
  impl_->ip = std::move(master_ip);
  impl_->port = master_port;
}

DpRankReporter::~DpRankReporter() { stop(); }

std::string DpRankReporter::connect(std::chrono::steady_clock::time_point deadline,
                                    const std::function<bool()>& interrupted) {
  Impl& m = *impl_;
  std::string last_error = "not tried";
  while (std::chrono::steady_clock::now() < deadline && !(interrupted && interrupted())) {
    error_code ec;
    tcp::resolver resolver(m.ioc);
    const auto results = resolver.resolve(m.ip, std::to_string(m.port), ec);
    if (!ec && !results.empty()) {
      bool done = false;
      error_code cec;
      m.socket.async_connect(results.begin()->endpoint(), [&](error_code e) {
        cec = e;
        done = true;
      });
      // At most 2 s per attempt: an address that drops packets must not eat the whole wait.
      m.run_until(done,
                  std::min(deadline, std::chrono::steady_clock::now() + std::chrono::seconds(2)),
                  interrupted);
      if (!done) {
        error_code ignored;
        m.socket.close(ignored);
        m.ioc.restart();
        m.ioc.run();  // the cancelled connect's handler
        cec = net::error::timed_out;
      }
      if (!cec) {
        const tcp::endpoint local = m.socket.local_endpoint(ec);
        if (!ec) {
          tune_socket(m.socket);
          return local.address().to_string();
        }
        cec = ec;
      }
      last_error = cec.message();
      error_code ignored;
      m.socket.close(ignored);
    } else {
      last_error = ec ? ec.message() : "no address";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  throw_error(ErrorCode::kNotFound,
              "could not reach the data-parallel master (rank 0's front end) at {} ({}) within "
              "the rendezvous timeout (--data-parallel-rendezvous-timeout): is rank 0 running "
              "with the same --data-parallel-master-ip/-port (ATOM_DP_MASTER_IP/PORT)?",
              m.master(), last_error);
}

void DpRankReporter::register_rank(const RankRegistration& r,
                                   std::chrono::steady_clock::time_point deadline,
                                   const std::function<bool()>& interrupted) {
  Impl& m = *impl_;
  const json j = {{"type", "register"},
                  {"rank", r.rank},
                  {"dp_size", r.dp_size},
                  {"host", r.host},
                  {"port", r.port},
                  {"model", r.model},
                  {"max_model_len", r.max_model_len},
                  {"root", r.root},
                  {"pid", r.pid}};
  error_code ec;
  net::write(m.socket, net::buffer(line(j)), ec);
  ATOM_CHECK(!ec, kNotFound, "registering with the data-parallel master at {} failed: {}",
             m.master(), ec.message());
  bool done = false;
  error_code rec;
  size_t n = 0;
  net::async_read_until(m.socket, m.buf, '\n', [&](error_code e, size_t len) {
    rec = e;
    n = len;
    done = true;
  });
  m.run_until(done, deadline, interrupted);
  if (!done) {
    error_code ignored;
    m.socket.close(ignored);
    m.ioc.restart();
    m.ioc.run();
    throw_error(ErrorCode::kNotFound,
                "the data-parallel master at {} did not accept dp rank {} within the "
                "rendezvous timeout (--data-parallel-rendezvous-timeout); rank 0 never "
                "registered",
                m.master(), r.rank);
  }
  ATOM_CHECK(!rec, kNotFound,
             "the data-parallel master at {} closed the connection before answering dp rank "
             "{}'s registration ({})",
             m.master(), r.rank, rec.message());
  const std::string text = take_line(m.buf, n);
  json reply;
  try {
    reply = json::parse(text);
  } catch (const std::exception& e) {
    throw_error(ErrorCode::kInvalidArgument,
                "{} is not a data-parallel master of atom (it answered: {})", m.master(),
                text.substr(0, 200));
  }
  const std::string type = reply.value("type", std::string());
  if (type == "refused")
    throw_error(ErrorCode::kInvalidArgument, "the data-parallel front end refused this rank: {}",
                reply.value("error", std::string("no reason given")));
  ATOM_CHECK(type == "accepted", kInvalidArgument,
             "{} is not a data-parallel master of atom (it answered: {})", m.master(),
             text.substr(0, 200));
}

void DpRankReporter::start_reporting(std::function<RankLoad()> load) {
  Impl& m = *impl_;
  m.load = std::move(load);
  m.last_heard = std::chrono::steady_clock::now();
  m.ioc.restart();
  m.send_load();
  m.listen();
  m.thread = std::thread([impl = impl_.get()] { impl->ioc.run(); });
}

void DpRankReporter::draining() {
  net::post(impl_->ioc, [impl = impl_.get()] { impl->send(line({{"type", "draining"}}), false); });
}

bool DpRankReporter::master_lost() const { return impl_->lost; }

std::string DpRankReporter::lost_reason() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->lost_reason;
}

void DpRankReporter::stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  if (impl_->thread.joinable()) {
    net::post(impl_->ioc, [impl = impl_.get()] {
      impl->lost = true;  // our own close is not a lost master
      error_code ignored;
      impl->timer.cancel();
      impl->socket.close(ignored);
      impl->ioc.stop();
    });
    impl_->thread.join();
  } else {
    error_code ignored;
    impl_->socket.close(ignored);
  }
}

}  // namespace atom::server
