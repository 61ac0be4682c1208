// What `atom serve` (serve.cpp) and its data-parallel mode (serve_dp.cpp) share: the options,
// one engine behind the OpenAI API, and the signal wait.
#pragma once

#include <signal.h>

#include <chrono>
#include <memory>
#include <string>

#include "atom/apps/engine_args.h"
#include "atom/engine/engine_core.h"
#include "atom/server/openai_server.h"

namespace atom::apps {

struct ServeOptions {
  EngineArgs engine;
  std::string host = "0.0.0.0";
  int port = 8000;
  std::string served_model_name;
  std::string api_key;
  int64_t max_pending_requests = 4096;
  double shutdown_timeout = 30.0;
  int http_threads = 2;
  // Data parallelism: how long the front end waits for every rank to register, and a rank for
  // the front end, from start-up (real checkpoints load slowly).
  double rendezvous_timeout = 600.0;
};

// One engine and its API. Members are destroyed bottom-up: the API, then the engine thread,
// then the model it runs.
struct ServedEngine {
  LoadedModel model;
  std::unique_ptr<EngineCore> core;
  server::OpenAiServerConfig config;
  EngineConfig resolved;  // as the engine resolved it (max_model_len, KV blocks)
  std::unique_ptr<server::OpenAiServer> api;
};
// Loads the model and builds the engine and its API from the options.
std::unique_ptr<ServedEngine> build_served_engine(const ServeOptions& o);

// Waits up to `timeout` for one of `set` (blocked in every thread); the signal's number, or 0
// when none came. `from_terminal`, when given, says whether the kernel sent it for the terminal
// (Ctrl-C reaches the whole process group) rather than a kill() aimed at this process.
int wait_signal(const sigset_t& set, std::chrono::milliseconds timeout,
                bool* from_terminal = nullptr);

// `atom serve` with data-parallel size > 1 (serve_dp.cpp): this process is rank
// parallel.data_parallel_rank; rank 0 runs the front end. Returns the exit code.
int serve_data_parallel(const ServeOptions& o, const ParallelConfig& parallel,
                        const sigset_t& signals);

}  // namespace atom::apps
