#include "atom/engine/engine_core.h"

#include <omp.h>

#include "atom/core/error.h"
#include "atom/core/logging.h"

namespace atom {

EngineCore::EngineCore(std::unique_ptr<LLMEngine> engine) : engine_(std::move(engine)) {
  // omp_set_num_threads (--threads, ATOM_NUM_THREADS) binds only the thread that called it: the
  // engine thread, which runs the CPU forward, takes the creating thread's setting.
  const int threads = omp_get_max_threads();
  thread_ = std::thread([this, threads] {
    omp_set_num_threads(threads);
    loop();
  });
}

EngineCore::~EngineCore() { shutdown(); }

int64_t EngineCore::add_request(std::vector<int32_t> prompt, SamplingParams params,
                                Callback callback) {
  validate(prompt, params);
  const int64_t id = next_id_++;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ATOM_CHECK(!stop_, kInvalidArgument, "the engine is shutting down");
    callbacks_.emplace(id, std::move(callback));
    pending_.push_back(Pending{id, std::move(prompt), std::move(params)});
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

void EngineCore::loop() {
  for (;;) {
    std::deque<Pending> incoming;
    std::vector<int64_t> aborts;
    bool stopping;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stop_ || !pending_.empty() || !aborts_.empty() || engine_->has_unfinished();
      });
      incoming.swap(pending_);
      aborts.swap(aborts_);
      stopping = stop_;
    }
    std::vector<RequestOutput> outputs;
    for (Pending& p : incoming) {
      try {
        engine_->add_request(std::move(p.prompt), std::move(p.params), p.id);
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
    if (stopping) {  // abort what is left: every callback gets its final output
      std::vector<int64_t> ids;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const auto& [id, cb] : callbacks_) ids.push_back(id);
      }
      for (int64_t id : ids) engine_->abort(id);
    }
    try {
      for (RequestOutput& o : engine_->step()) outputs.push_back(std::move(o));
    } catch (const std::exception& e) {
      // A failing step must not take the process down: abort everything in flight.
      ATOM_LOG_ERROR("engine step failed: {}; aborting all requests", e.what());
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
      if (o.finished) --num_unfinished_;
      if (cb) cb(o);
    }
    if (stopping && !engine_->has_unfinished()) {
      std::lock_guard<std::mutex> lock(mu_);
      if (pending_.empty() && callbacks_.empty()) return;
    }
  }
}

}  // namespace atom
