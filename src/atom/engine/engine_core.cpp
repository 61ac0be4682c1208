#include "atom/engine/engine_core.h"

#include <omp.h>

#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/core/profiler.h"

namespace atom {

namespace {

// ATOM's line for a finished request; TPOT is the mean time between its output tokens.
void log_finished(const RequestOutput& o) {
  const int64_t n = int64_t(o.output_ids.size());
  const double tpot = n > 1 ? (o.latency_seconds - o.ttft_seconds) / double(n - 1) : 0.0;
  ATOM_LOG_INFO(
      "Request {} finished with reason {}. Input tokens: {}, output tokens: {}, latency: {:.2f}s, "
      "TTFT: {:.3f}s, TPOT: {:.3f}s",
      o.request_id, o.raw_finish_reason, o.num_prompt_tokens, n, o.latency_seconds,
      o.ttft_seconds, tpot);
}

}  // namespace

EngineCore::EngineCore(std::unique_ptr<LLMEngine> engine) : engine_(std::move(engine)) {
  // omp_set_num_threads (--threads, ATOM_NUM_THREADS) binds only the thread that called it: the
  // engine thread, which runs the CPU forward, takes the creating thread's setting.
  const int threads = omp_get_max_threads();
  thread_ = std::thread([this, threads] {
    profiler::set_thread_name("engine");
    omp_set_num_threads(threads);
    loop();
  });
}

EngineCore::~EngineCore() { shutdown(); }

int64_t EngineCore::add_request(std::vector<int32_t> prompt, SamplingParams params,
                                Callback callback) {
  validate(prompt, params);
  const auto arrival = Sequence::Clock::now();
  const int64_t id = next_id_++;
  const size_t num_prompt_tokens = prompt.size();
  const int64_t max_tokens = params.max_tokens;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ATOM_CHECK(!stop_, kInvalidArgument, "the engine is shutting down");
    // Logged before the engine thread can see the request, so that it precedes its finish line.
    ATOM_LOG_INFO("Request {} arrived, input tokens: {}, pending requests: {}, max_tokens: {}", id,
                  num_prompt_tokens, num_unfinished_.load() + 1, max_tokens);
    callbacks_.emplace(id, std::move(callback));
    pending_.push_back(Pending{id, std::move(prompt), std::move(params), arrival});
    ++num_unfinished_;
  }
  cv_.notify_one();
  return id;
}

void EngineCore::abort(int64_t request_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    aborts_.push_back(request_id);
  }
  cv_.notify_one();
}

void EngineCore::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void EngineCore::queue_profile_command(bool start, ProfileCallback done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stop_) {
      profile_commands_.push_back(ProfileCommand{start, std::move(done)});
      done = nullptr;
    }
  }
  if (done) {
    done(std::make_exception_ptr(
             Error(ErrorCode::kInvalidArgument, "the engine is shutting down")),
         std::string());
    return;
  }
  cv_.notify_one();
}

void EngineCore::start_profile(ProfileCallback done) {
  queue_profile_command(true, std::move(done));
}

void EngineCore::stop_profile(ProfileCallback done) {
  queue_profile_command(false, std::move(done));
}

std::string EngineCore::last_error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_error_;
}

void EngineCore::loop() {
  for (;;) {
    std::deque<Pending> incoming;
    std::vector<int64_t> aborts;
    std::deque<ProfileCommand> profile_commands;
    bool stopping;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stop_ || !pending_.empty() || !aborts_.empty() || !profile_commands_.empty() ||
               engine_->has_unfinished();
      });
      incoming.swap(pending_);
      aborts.swap(aborts_);
      profile_commands.swap(profile_commands_);
      stopping = stop_;
    }
    std::vector<RequestOutput> outputs;
    for (Pending& p : incoming) {
      try {
        engine_->add_request(std::move(p.prompt), std::move(p.params), p.id, p.arrival);
      } catch (const Error& e) {  // validated before queuing; report rather than die
        ATOM_LOG_ERROR("request {} rejected: {}", p.id, e.what());
        RequestOutput o;
        o.request_id = p.id;
        o.finished = true;
        o.finish_reason = o.raw_finish_reason = "abort";
        outputs.push_back(std::move(o));
      }
    }
    for (int64_t id : aborts) engine_->abort(id);
    for (ProfileCommand& c : profile_commands) {  // between steps, in the order they came
      std::exception_ptr error;
      std::string path;
      try {
        // A session started now could never be stopped: the engine is on its way out.
        ATOM_CHECK(!(c.start && stopping), kInvalidArgument, "the engine is shutting down");
        if (c.start)
          engine_->start_profile();
        else
          path = engine_->stop_profile();
      } catch (...) {
        error = std::current_exception();
      }
      if (c.done) c.done(error, path);
    }
    if (stopping) {  // abort what is left: every callback gets its final output
      std::vector<int64_t> ids;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const auto& [id, cb] : callbacks_) ids.push_back(id);
      }
      for (int64_t id : ids) engine_->abort(id);
    }
    try {
      bool progressed = false;  // a token came out: the model ran (an idle step proves nothing)
      for (RequestOutput& o : engine_->step()) {
        progressed = progressed || !o.new_token_ids.empty();
        outputs.push_back(std::move(o));
      }
      if (progressed) failed_steps_ = 0;
    } catch (const std::exception& e) {
      // A failing step must not take the process down: abort everything in flight.
      ATOM_LOG_ERROR("engine step failed: {}; aborting all requests", e.what());
      ++failed_steps_;
      {
        std::lock_guard<std::mutex> lock(mu_);
        last_error_ = e.what();
      }
      std::vector<int64_t> ids;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const auto& [id, cb] : callbacks_) ids.push_back(id);
      }
      for (int64_t id : ids) engine_->abort(id);
      for (RequestOutput& o : engine_->step()) outputs.push_back(std::move(o));
    }
    kv_usage_ = engine_->block_manager().usage();
    num_running_ = engine_->scheduler().num_running();
    num_waiting_ = engine_->scheduler().num_waiting();
    for (const RequestOutput& o : outputs) {
      Callback cb;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = callbacks_.find(o.request_id);
        if (it == callbacks_.end()) continue;
        cb = o.finished ? std::move(it->second) : it->second;
        if (o.finished) callbacks_.erase(it);
      }
      if (o.finished) {
        --num_unfinished_;
        log_finished(o);
      }
      if (cb) cb(o);
    }
    if (stopping && !engine_->has_unfinished()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!pending_.empty() || !callbacks_.empty()) continue;
      }
      // A profile still recording when the engine stops is written out, not lost (and the
      // process-wide profiler is free for the next engine).
      if (profiler::active()) {
        try {
          (void)engine_->stop_profile();
        } catch (const std::exception& e) {
          ATOM_LOG_ERROR("profiler: the trace of the session open at shutdown was lost: {}",
                         e.what());
        }
      }
      return;
    }
  }
}

}  // namespace atom
