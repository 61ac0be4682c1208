// `atom serve`: the OpenAI-compatible server. Loads the model and builds the engine first, then
// binds the port (so the port opens only when the engine is ready, as ATOM's server does).
// SIGINT/SIGTERM: stop accepting, let the requests in flight finish for up to
// --shutdown-timeout seconds (a second signal cuts that short), abort the rest, exit 0.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <thread>

#include "atom/apps/commands.h"
#include "atom/apps/engine_args.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/engine/engine_core.h"
#include "atom/io/model_path.h"
#include "atom/server/http_server.h"
#include "atom/server/openai_server.h"

namespace atom::apps {

namespace {

// Waits up to `timeout` for SIGINT or SIGTERM (blocked in every thread); true if one came.
bool wait_signal(const sigset_t& set, std::chrono::milliseconds timeout) {
  timespec ts{};
  ts.tv_sec = time_t(timeout.count() / 1000);
  ts.tv_nsec = long(timeout.count() % 1000) * 1000000L;
  return sigtimedwait(&set, nullptr, &ts) > 0;
}

}  // namespace

Command add_serve(CLI::App& app) {
  struct Opts {
    EngineArgs engine;
    std::string host = "0.0.0.0";
    int port = 8000;
    std::string served_model_name;
    std::string api_key;
    int64_t max_pending_requests = 4096;
    double shutdown_timeout = 30.0;
    int http_threads = 2;
  };
  auto o = std::make_shared<Opts>();
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

  return [o]() {
    // Block the shutdown signals before any thread starts (engine, OpenMP, HTTP), so that
    // every thread inherits the mask and only sigtimedwait below receives them.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    signal(SIGPIPE, SIG_IGN);  // a vanished client is a failed write, not a dead server

    set_threads(o->engine.threads);
    LoadedModel m = load_model(o->engine.model);
    EngineConfig cfg = o->engine.engine_config();
    auto engine = std::make_unique<LLMEngine>(*m.model, *m.tokenizer, cfg);
    const EngineConfig resolved = engine->config();
    EngineCore core(std::move(engine));

    server::OpenAiServerConfig sc;
    sc.model_root = o->engine.model.path.empty() ? default_model_path() : o->engine.model.path;
    sc.served_model_name = !o->served_model_name.empty() ? o->served_model_name
                           : !o->engine.model.path.empty()
                               ? o->engine.model.path
                               : std::string("SmolLM2-135M-Instruct");
    sc.api_key = o->api_key;
    sc.max_pending_requests = o->max_pending_requests;
    sc.stop_token_ids = m.stop_ids;
    sc.version = ATOM_VERSION;
    server::OpenAiServer api(core, *m.tokenizer, sc);

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

    while (!wait_signal(signals, std::chrono::milliseconds(1000))) {
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
      if (wait_signal(signals, std::chrono::milliseconds(20))) {
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
