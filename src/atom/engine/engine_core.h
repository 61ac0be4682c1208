// EngineCore: runs an LLMEngine in its own thread. Requests come in from any thread (the HTTP
// workers) with a callback that receives the request's outputs step by step; the loop sleeps on
// a condition variable when there is nothing to do (no busy spin, unlike ATOM's busy_loop).
// With deferred output (EngineConfig::async_output) each step() hands the outputs of the step
// before to the callbacks while the backend runs the next one; the loop keeps stepping until
// no step is in flight, so shutdown and a failing step (drained by LLMEngine) never hang.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "atom/engine/llm_engine.h"

namespace atom {

class EngineCore {
 public:
  using Callback = std::function<void(const RequestOutput&)>;

  explicit EngineCore(std::unique_ptr<LLMEngine> engine);
  ~EngineCore();  // shutdown(): aborts what is left and joins the thread
  EngineCore(const EngineCore&) = delete;
  EngineCore& operator=(const EngineCore&) = delete;

  // Validates now (throws atom::Error on bad input, in the caller's thread), then queues the
  // request. The callback runs on the engine thread for each step's output, the last one with
  // finished = true. Returns the request id.
  int64_t add_request(std::vector<int32_t> prompt, SamplingParams params, Callback callback);
  // Aborts a request wherever it is; its callback gets a final output with reason "abort".
  void abort(int64_t request_id);
  // Stops accepting work, aborts everything in flight, joins the loop.
  void shutdown();

  // Profiling: LLMEngine::start_profile / stop_profile, run on the engine thread between steps.
  // `done` runs there with the error (null on success) and, for stop, the trace file's path once
  // it is complete; after shutdown it runs at once, in the caller's thread, with an error.
  using ProfileCallback = std::function<void(std::exception_ptr error, const std::string& path)>;
  void start_profile(ProfileCallback done);
  void stop_profile(ProfileCallback done);

  // Throws atom::Error as add_request would, without queuing anything: a request that expands
  // into several engine requests (n > 1, a batch of prompts) is checked whole before any starts.
  void validate(const std::vector<int32_t>& prompt, const SamplingParams& params) const {
    engine_->validate(prompt, params);  // reads only the immutable config
  }
  const EngineConfig& config() const { return engine_->config(); }  // immutable after start

  // Gauges for /metrics, updated after every step (and when requests arrive).
  int64_t num_unfinished() const { return num_unfinished_.load(); }
  int64_t num_running() const { return num_running_.load(); }
  int64_t num_waiting() const { return num_waiting_.load(); }
  double kv_cache_usage() const { return kv_usage_.load(); }
  // Counters and histograms (all atomics: safe to read while the engine thread steps).
  const EngineStats& stats() const { return engine_->stats(); }

  // Unhealthy once kFailedStepsUnhealthy engine steps in a row have failed (a device that keeps
  // failing, e.g. a sticky CUDA error), healthy again after a step succeeds; /health answers 503
  // meanwhile with the last error. One failing step (its requests aborted) is not a degraded
  // engine.
  static constexpr int64_t kFailedStepsUnhealthy = 3;
  bool healthy() const { return failed_steps_.load() < kFailedStepsUnhealthy; }
  std::string last_error() const;
 private:
  void loop();

  std::unique_ptr<LLMEngine> engine_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  struct Pending {
    int64_t id;
    std::vector<int32_t> prompt;
    SamplingParams params;
    Sequence::Clock::time_point arrival;  // when add_request took it: TTFT counts from here
  };
  std::deque<Pending> pending_;           // guarded by mu_
  std::vector<int64_t> aborts_;           // guarded by mu_
  struct ProfileCommand {
    bool start;
    ProfileCallback done;
  };
  std::deque<ProfileCommand> profile_commands_;  // guarded by mu_
  void queue_profile_command(bool start, ProfileCallback done);
  std::unordered_map<int64_t, Callback> callbacks_;  // guarded by mu_
  bool stop_ = false;                     // guarded by mu_
  std::atomic<int64_t> next_id_{0};
  std::atomic<int64_t> num_unfinished_{0};
  std::atomic<int64_t> num_running_{0};
  std::atomic<int64_t> num_waiting_{0};
  std::atomic<double> kv_usage_{0.0};
  std::atomic<int64_t> failed_steps_{0};  // consecutive failed engine steps
  std::string last_error_;                // guarded by mu_
  std::thread thread_;
};

}  // namespace atom
