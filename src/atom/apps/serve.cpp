// `atom serve`: the OpenAI-compatible server. Loads the model and builds the engine first, then
// binds the port (so the port opens only when the engine is ready, as ATOM's server does).
// SIGINT/SIGTERM: stop accepting, let the requests in flight finish for up to
// --shutdown-timeout seconds (a second signal cuts that short), abort the rest, exit 0.
// With a data-parallel size above 1 each rank is a process of its own behind one front end:
// serve_dp.cpp.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <thread>

#include "atom/apps/commands.h"
#include "atom/apps/engine_args.h"
#include "atom/apps/serve_common.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/engine/engine_core.h"
#include "atom/io/model_path.h"
#include "atom/server/http_server.h"
#include "atom/server/openai_server.h"

namespace atom::apps {

int wait_signal(const sigset_t& set, std::chrono::milliseconds timeout, bool* from_terminal) {
  timespec ts{};
  ts.tv_sec = time_t(timeout.count() / 1000);
  ts.tv_nsec = long(timeout.count() % 1000) * 1000000L;
  siginfo_t info{};
  const int sig = sigtimedwait(&set, &info, &ts);
  if (sig <= 0) return 0;
  if (from_terminal != nullptr) *from_terminal = info.si_code == SI_KERNEL;
  return sig;
}

std::unique_ptr<ServedEngine> build_served_engine(const ServeOptions& o) {
  auto s = std::make_unique<ServedEngine>();
  s->model = load_model(o.engine.model);
  EngineConfig cfg = o.engine.engine_config();
  auto engine = std::make_unique<LLMEngine>(*s->model.model, *s->model.tokenizer, cfg);
  s->resolved = engine->config();
  s->core = std::make_unique<EngineCore>(std::move(engine));

  server::OpenAiServerConfig& sc = s->config;
  sc.model_root = o.engine.model.path.empty() ? default_model_path() : o.engine.model.path;
  sc.served_model_name = !o.served_model_name.empty() ? o.served_model_name
                         : !o.engine.model.path.empty()
                             ? o.engine.model.path
                             : std::string("SmolLM2-135M-Instruct");
  sc.api_key = o.api_key;
  sc.max_pending_requests = o.max_pending_requests;
  sc.stop_token_ids = s->model.stop_ids;
  sc.version = ATOM_VERSION;
  s->api = std::make_unique<server::OpenAiServer>(*s->core, *s->model.tokenizer, sc);
  return s;
}

Command add_serve(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  o->engine.allow_data_parallel = true;  // -dp N: one engine process per rank
  o->engine.add_to(app);
  app.add_option("--host", o->host, "Address to listen on");
  app.add_option("--server-port,--server_port", o->port, "HTTP port")
      ->check(CLI::Range(0, 65535));
  app.add_option("--served-model-name,--served_model_name", o->served_model_name,
                 "Model name in the API (default: the --model argument)");
  app.add_option("--api-key,--api_key", o->api_key,
                 "Require 'Authorization: Bearer KEY' on the /v1 routes");
  app.add_option("--max-pending-requests,--max_pending_requests", o->max_pending_requests,
                 "Unfinished requests (counting each of n choices) beyond which new ones get "
                 "503 with Retry-After")
      ->check(CLI::PositiveNumber);
  app.add_option("--shutdown-timeout,--shutdown_timeout", o->shutdown_timeout,
                 "Seconds requests in flight may take to finish after SIGINT/SIGTERM before "
                 "they are aborted")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--http-threads,--http_threads", o->http_threads,
                 "Threads serving HTTP connections (event-driven: a few serve thousands)")
      ->check(CLI::Range(1, 64));
  app.add_option("--data-parallel-rendezvous-timeout", o->rendezvous_timeout,
                 "Seconds from start-up that rank 0 waits for every data-parallel rank to "
                 "register, and a rank for rank 0's front end, before giving up")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();

  return [o]() {
    // Block the shutdown signals before any thread starts (engine, OpenMP, HTTP), so that
    // every thread inherits the mask and only sigtimedwait below receives them.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    signal(SIGPIPE, SIG_IGN);  // a vanished client is a failed write, not a dead server

    const ParallelConfig parallel = o->engine.parallel_config();
    if (parallel.data_parallel_size > 1) return serve_data_parallel(*o, parallel, signals);

    set_threads(o->engine.threads);
    const std::unique_ptr<ServedEngine> served = build_served_engine(*o);
    EngineCore& core = *served->core;
    server::OpenAiServer& api = *served->api;
    const server::OpenAiServerConfig& sc = served->config;
    const EngineConfig& resolved = served->resolved;

    server::HttpServerOptions ho;
    ho.host = o->host;
    ho.port = o->port;
    ho.threads = o->http_threads;
    ho.error_body = &server::OpenAiServer::http_error_body;
    server::HttpServer http(ho, [&api](server::HttpRequest req,
                                       std::shared_ptr<server::HttpResponder> res) {
      api.handle(std::move(req), std::move(res));
    });
    http.start();
    ATOM_LOG_INFO("serving {} on http://{}:{} (max_model_len {}, {} KV blocks of {} tokens)",
                  sc.served_model_name, o->host, http.port(), resolved.scheduler.max_model_len,
                  resolved.num_kv_blocks, resolved.block_size);

    while (wait_signal(signals, std::chrono::milliseconds(1000)) == 0) {
    }
    ATOM_LOG_INFO("shutting down: no new connections; waiting up to {} s for {} requests",
                  o->shutdown_timeout, core.num_unfinished());
    http.stop_accepting();
    api.set_draining();
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(int64_t(o->shutdown_timeout * 1000));
    bool again = false;
    while ((core.num_unfinished() > 0 || http.num_open_requests() > 0) &&
           std::chrono::steady_clock::now() < deadline) {
      if (wait_signal(signals, std::chrono::milliseconds(20)) != 0) {
        again = true;
        break;
      }
    }
    if (core.num_unfinished() > 0)
      ATOM_LOG_WARN("aborting {} requests still running{}", core.num_unfinished(),
                    again ? " (second signal)" : "");
    core.shutdown();  // aborts what is left: each gets its final output
    // Let the aborted responses reach their clients (bounded), then drop the connections.
    const auto flush_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (http.num_open_requests() > 0 && std::chrono::steady_clock::now() < flush_deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    http.stop();
    ATOM_LOG_INFO("server stopped");
    return 0;
  };
}

}  // namespace atom::apps
