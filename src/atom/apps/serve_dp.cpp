// `atom serve` with data parallelism (SPEC 4.2, 11 item 12): every DP rank is a full engine
// (own scheduler and KV cache) in its own process, serving the OpenAI routes plus GET /dp/load
// on an internal endpoint; rank 0 also runs the rendezvous (dp_rendezvous.h) and the public
// front end (dp_front_end.h), which routes each request to the least-loaded rank. Ranks step
// independently (dense models); parallel_config.h's dp_step_mode is where lock-step (MoE expert
// parallelism) would plug in.
//
// Start-up of rank r: (rank 0) listen for ranks on the master address, and with `-dp N` and no
// rank given start ranks 1..N-1 as children; load the model and build the engine; connect to the
// master and bind the internal endpoint on the address of that connection (the address the
// master reaches this host at, so the same code works across hosts); register; report the load
// every 50 ms. Rank 0 then waits for every rank (--data-parallel-rendezvous-timeout) and only
// then opens the public port, so a GET /health that answers means every rank is ready.
//
// Shutdown (SIGINT/SIGTERM): rank 0 stops accepting, tells its children, and lets the requests
// in flight finish for --shutdown-timeout seconds, as every rank does with its own; a rank whose
// front end goes away exits with code 1.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "atom/apps/dp_launch.h"
#include "atom/apps/serve_common.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/server/dp_front_end.h"
#include "atom/server/dp_rendezvous.h"
#include "atom/server/dp_router.h"
#include "atom/server/http_server.h"

namespace atom::apps {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

milliseconds seconds_ms(double s) { return milliseconds(int64_t(s * 1000.0)); }

// The rank's internal endpoint: the engine's OpenAI routes plus GET /dp/load.
void handle_internal(server::OpenAiServer& api, const EngineCore& core, int64_t rank,
                     server::HttpRequest req, std::shared_ptr<server::HttpResponder> res) {
  if (req.path == "/dp/load" && req.method == "GET") {
    const nlohmann::ordered_json j = {{"dp_rank", rank},
                                      {"running", core.num_running()},
                                      {"waiting", core.num_waiting()},
                                      {"unfinished", core.num_unfinished()},
                                      {"kv_cache_usage", core.kv_cache_usage()}};
    res->send(200, "application/json", j.dump());
    return;
  }
  api.handle(std::move(req), std::move(res));
}

}  // namespace

int serve_data_parallel(const ServeOptions& o, const ParallelConfig& pc, const sigset_t& signals) {
  const int64_t dp = pc.data_parallel_size, rank = pc.data_parallel_rank;
  const Clock::time_point deadline = Clock::now() + seconds_ms(o.rendezvous_timeout);
  int pending_signal = 0;
  bool signal_from_terminal = false;
  const auto interrupted = [&] {
    if (pending_signal == 0)
      pending_signal = wait_signal(signals, milliseconds(0), &signal_from_terminal);
    return pending_signal != 0;
  };

  // Rank 0: the rendezvous first, so ranks may register while this one loads; then the
  // children, before any thread exists (dp_launch.h).
  // Declared before the master, whose thread reads it until the master stops.
  std::atomic<server::DpFrontEnd*> front_ptr{nullptr};
  std::unique_ptr<server::DpRouter> router;
  std::unique_ptr<server::DpMaster> master;
  std::unique_ptr<LocalRanks> children;
  int master_port = int(pc.master_port);
  if (rank == 0) {
    router = std::make_unique<server::DpRouter>(dp);
    const bool launch = !data_parallel_rank_given(o.engine.parallel);
    // One command on one node: any free port unless one was asked for.
    master = std::make_unique<server::DpMaster>(
        *router, pc.master_ip, launch && !master_port_given(o.engine.parallel) ? 0 : master_port);
    master_port = master->port();
    ATOM_LOG_INFO(
        "data parallelism: {} ranks; this is rank 0, the front end; ranks register at "
        "{}:{}",
        dp, pc.master_ip, master_port);
    if (launch)
      children = std::make_unique<LocalRanks>(child_rank_args(), dp, pc.master_ip, master_port);
    master->on_rank_dead([&front_ptr](int64_t r, const std::string& why) {
      if (server::DpFrontEnd* f = front_ptr.load()) f->rank_dead(r, why);
    });
    master->start();
  } else {
    ATOM_LOG_INFO(
        "data parallelism: this is rank {} of {} (local rank {}); the front end is at "
        "{}:{}",
        rank, dp, pc.data_parallel_rank_local, pc.master_ip, master_port);
  }

  set_threads(o.engine.threads);
  const std::unique_ptr<ServedEngine> served = build_served_engine(o);
  EngineCore& core = *served->core;
  server::OpenAiServer& api = *served->api;
  if (interrupted()) return 0;

  auto reporter = std::make_unique<server::DpRankReporter>(pc.master_ip, master_port);
  std::string local_address;
  try {
    local_address = reporter->connect(deadline, interrupted);
  } catch (const Error&) {
    if (interrupted()) return 0;
    throw;
  }
  server::HttpServerOptions io;
  io.host = local_address;
  io.port = 0;
  io.threads = o.http_threads;
  io.error_body = &server::OpenAiServer::http_error_body;
  server::HttpServer internal(
      io, [&api, &core, rank](server::HttpRequest req, std::shared_ptr<server::HttpResponder> res) {
        handle_internal(api, core, rank, std::move(req), std::move(res));
      });
  internal.start();
  server::RankRegistration reg;
  reg.rank = rank;
  reg.dp_size = dp;
  reg.host = local_address;
  reg.port = internal.port();
  reg.model = served->config.served_model_name;
  reg.max_model_len = served->resolved.scheduler.max_model_len;
  reg.root = served->config.model_root;
  reg.pid = int64_t(getpid());
  try {
    reporter->register_rank(reg, deadline, interrupted);
  } catch (const Error&) {
    if (interrupted()) return 0;
    throw;
  }
  const auto load = [&core] {
    return server::RankLoad{core.num_running(), core.num_waiting(), core.kv_cache_usage()};
  };
  reporter->start_reporting(load);
  ATOM_LOG_INFO(
      "dp rank {}: engine ready on http://{}:{} (internal; max_model_len {}, {} KV "
      "blocks of {} tokens)",
      rank, local_address, internal.port(), reg.max_model_len, served->resolved.num_kv_blocks,
      served->resolved.block_size);

  // Rank 0: a child that dies is a dead rank (its connection usually says so first).
  const auto reap_children = [&](bool starting) {
    if (!children) return;
    for (const LocalRanks::Exit& e : children->reap()) {
      const std::string why = fmt::format("its process {} {}", e.pid, e.how);
      if (starting)
        throw_error(ErrorCode::kNotFound,
                    "data-parallel rank {} (process {}) {} before it registered with the front "
                    "end (its output above says why)",
                    e.rank, e.pid, e.how);
      if (router->mark_dead(e.rank, why)) {
        ATOM_LOG_ERROR("dp rank {} is dead: {}; new requests go to ranks [{}]", e.rank, why,
                       fmt::join(router->ranks_in(server::RankState::kUp), ", "));
        if (server::DpFrontEnd* f = front_ptr.load()) f->rank_dead(e.rank, why);
      } else {
        ATOM_LOG_ERROR("data-parallel rank {} {}", e.rank, why);
      }
    }
  };

  std::unique_ptr<server::DpFrontEnd> front;
  std::unique_ptr<server::HttpServer> public_http;
  // However this function ends (start-up may throw after ranks registered, e.g. when the public
  // port is taken), the public port closes, then the master's thread, which calls into the
  // front end, stops, then the front end's calls (which may call into the master) end; only
  // then are the front end and, later, the master destroyed. Everything here is idempotent.
  struct Teardown {
    std::function<void()> run;
    ~Teardown() { run(); }
  } teardown{[&] {
    if (public_http) public_http->stop();
    if (master) master->stop();
    front_ptr = nullptr;
    if (front) front->stop();
  }};
  if (rank == 0) {
    while (true) {
      const std::vector<int64_t> missing =
          master->wait_for_ranks(std::min(deadline, Clock::now() + milliseconds(100)), interrupted);
      if (missing.empty()) break;
      if (interrupted()) break;
      reap_children(true);
      if (Clock::now() >= deadline)
        throw_error(ErrorCode::kNotFound,
                    "data-parallel rank(s) [{}] of {} did not register with the front end at "
                    "{}:{} within {} s (--data-parallel-rendezvous-timeout); start each missing "
                    "rank with ATOM_DP_SIZE={} ATOM_DP_RANK=<rank> ATOM_DP_MASTER_IP={} "
                    "ATOM_DP_MASTER_PORT={} and the same model",
                    fmt::join(missing, ", "), dp, pc.master_ip, master_port, o.rendezvous_timeout,
                    dp, pc.master_ip, master_port);
    }
    if (pending_signal == 0) {
      const std::optional<server::RankRegistration> ref = master->reference();
      ATOM_ASSERT(ref.has_value());
      server::DpFrontEndConfig fc;
      fc.served_model_name = ref->model;
      fc.model_root = ref->root;
      fc.max_model_len = ref->max_model_len;
      fc.api_key = o.api_key;
      fc.version = ATOM_VERSION;
      front = std::make_unique<server::DpFrontEnd>(*router, fc);
      // A rank whose endpoint refused the front end is dropped at the rendezvous too: rank 0
      // registers again, another rank exits (and is reaped here when it is a child).
      front->on_rank_unreachable(
          [m = master.get()](int64_t r, const server::RankEndpoint& at, const std::string& why) {
            m->drop(r, at, why);
          });
      front_ptr = front.get();
      server::HttpServerOptions ho;
      ho.host = o.host;
      ho.port = o.port;
      ho.threads = o.http_threads;
      ho.error_body = &server::OpenAiServer::http_error_body;
      public_http = std::make_unique<server::HttpServer>(
          ho,
          [f = front.get()](server::HttpRequest req, std::shared_ptr<server::HttpResponder> res) {
            f->handle(std::move(req), std::move(res));
          });
      public_http->start();
      ATOM_LOG_INFO(
          "serving {} on http://{}:{} with {} data-parallel ranks (least-loaded "
          "routing)",
          fc.served_model_name, o.host, public_http->port(), dp);
    }
  }

  // Serve until a signal; a rank without its front end stops (exit 1).
  int exit_code = 0;
  int sig = pending_signal;
  bool from_terminal = signal_from_terminal;
  while (sig == 0) {
    sig = wait_signal(signals, milliseconds(100), &from_terminal);
    if (sig != 0) break;
    reap_children(false);
    if (!reporter->master_lost()) continue;
    if (rank != 0) {
      ATOM_LOG_ERROR("dp rank {}: {}; shutting down", rank, reporter->lost_reason());
      exit_code = 1;
      break;
    }
    // Rank 0's own engine was dropped (its reports stalled): register it again, as a restarted
    // rank would, so that it takes requests again.
    ATOM_LOG_ERROR("dp rank 0: {}; registering its engine again", reporter->lost_reason());
    reporter->stop();
    reporter = std::make_unique<server::DpRankReporter>(pc.master_ip, master_port);
    try {
      const Clock::time_point retry = Clock::now() + std::chrono::seconds(5);
      (void)reporter->connect(retry, interrupted);  // the endpoint keeps its address
      reporter->register_rank(reg, retry, interrupted);
      reporter->start_reporting(load);
    } catch (const Error& e) {
      ATOM_LOG_ERROR("dp rank 0: registering again failed: {}; its engine takes no requests",
                     e.what());
    }
  }

  ATOM_LOG_INFO("dp rank {}: shutting down: no new requests; waiting up to {} s for {} requests",
                rank, o.shutdown_timeout, core.num_unfinished());
  if (public_http) {
    public_http->stop_accepting();
    front->set_draining();
  }
  // Ctrl-C in a terminal reached the children already; a second signal would cut their drain.
  if (children && !(sig == SIGINT && from_terminal)) children->signal_all(SIGTERM);
  reporter->draining();
  api.set_draining();
  const Clock::time_point drain_deadline = Clock::now() + seconds_ms(o.shutdown_timeout);
  const auto busy = [&] {
    return core.num_unfinished() > 0 || internal.num_open_requests() > 0 ||
           (front && front->num_open() > 0);
  };
  bool again = false;
  while (busy() && Clock::now() < drain_deadline) {
    if (wait_signal(signals, milliseconds(20)) != 0) {
      again = true;
      if (children) children->signal_all(SIGTERM);  // pass the hurry on
      break;
    }
    reap_children(false);
  }
  if (core.num_unfinished() > 0)
    ATOM_LOG_WARN("dp rank {}: aborting {} requests still running{}", rank, core.num_unfinished(),
                  again ? " (second signal)" : "");
  core.shutdown();
  const Clock::time_point flush_deadline = Clock::now() + std::chrono::seconds(2);
  while ((internal.num_open_requests() > 0 || (front && front->num_open() > 0)) &&
         Clock::now() < flush_deadline)
    std::this_thread::sleep_for(milliseconds(10));
  reporter->stop();
  if (front) {
    public_http->stop();  // first: a request arriving now must not reach a stopped front end
    front->stop();
  }
  if (children) {
    // The children drain their own requests within the same timeout.
    if (!children->stop(seconds_ms(o.shutdown_timeout) + std::chrono::seconds(5)))
      exit_code = exit_code == 0 ? 1 : exit_code;
  }
  if (master) master->stop();
  internal.stop();
  ATOM_LOG_INFO("dp rank {}: stopped", rank);
  return exit_code;
}

}  // namespace atom::apps
