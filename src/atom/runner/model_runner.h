// ModelRunner: the boundary between the engine and a backend. The engine says which tokens of
// which sequences to compute this step; the runner plans the batch metadata (positions, slot
// mapping, cu_seqlens, context lengths, block tables, logits rows), runs the model over the
// paged KV cache it owns, and samples one token for each sequence that needs one. The CUDA
// runner (runner/cuda/) implements the same Runner interface (runner.h) with persistent device
// buffers.
//
// Two ways to run a step. execute() is synchronous. submit()/collect() pipeline the steps for
// deferred output (ATOM's, SPEC 3.4): submit() plans step N on the caller's thread and returns
// at once, the backend runs it (the CPU runner: on one worker thread it owns, steps strictly in
// submission order; the CUDA runner: launched on a stream with an asynchronous copy of the ids),
// and collect() waits for the oldest submitted step's sampled ids. A decode input whose token
// the previous step samples is unknown to the host at submit time: the host passes a
// placeholder and the runner takes the id from its own record of what it sampled for that
// sequence, as ATOM gathers them on the GPU.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "atom/models/model.h"
#include "atom/runner/runner.h"
#include "atom/runner/sampler.h"

namespace atom {

// One sequence's share of a step.
struct StepSeq {
  int64_t seq_id = 0;
  std::span<const int32_t> token_ids;  // prompt + output so far
  int64_t num_prompt_tokens = 0;
  int64_t start = 0;  // first token to compute (tokens before it are cached)
  int64_t count = 0;  // tokens to compute: [start, start + count)
  std::span<const int32_t> block_table;
  bool sample = false;                     // sample the token after start + count - 1
  const SamplingParams* params = nullptr;  // the sequence's sampler is made from it once
  // token_ids.back() is a placeholder for the id a submitted, not yet collected step samples
  // for this sequence (submit() only): the runner reads its own record of that id instead.
  bool last_token_in_flight = false;
};

// The CPU runner: the model runs on the host over an f32 KvCache.
class ModelRunner final : public Runner {
 public:
  ModelRunner(Model& model, int64_t num_blocks, int64_t block_size);
  // Waits for the step the worker is running, drops the queued ones, joins the worker.
  ~ModelRunner() override;
  ModelRunner(const ModelRunner&) = delete;
  ModelRunner& operator=(const ModelRunner&) = delete;

  // Runs a step in the caller's thread and returns one sampled id per StepSeq with
  // sample = true, in order. No step may be in flight.
  std::vector<int32_t> execute(std::span<const StepSeq> seqs) override;

  // Starts a step and returns at once: everything the step needs is copied out of `seqs`, so
  // the caller may change its sequences right away. Steps run one at a time in submission
  // order, so a step sees the KV cache and the sampled ids of every step submitted before it.
  void submit(std::span<const StepSeq> seqs) override;
  // Waits for the oldest uncollected step and returns its sampled ids (as execute would), or
  // rethrows the exception that step failed with. Steps after a failed one still run; their
  // inputs may depend on it, so a caller drains and discards them.
  std::vector<int32_t> collect() override;
  int64_t num_in_flight() const override { return num_submitted_ - num_collected_; }

  // Forgets a finished sequence's sampler (and its RNG state) once every step submitted so far
  // has run: a sequence found finished late may still sample in a step in flight.
  void release(int64_t seq_id) override;

  // The plan of one step (exposed for tests).
  ForwardBatch plan(std::span<const StepSeq> seqs) const;

  // KV blocks that fit in `bytes` for this model (f32 K and V, every layer).
  static int64_t num_blocks_for_bytes(const ModelConfig& cfg, size_t bytes, int64_t block_size);

  Model& model() { return model_; }
  int64_t num_blocks() const override { return kv_.num_blocks(); }
  int64_t block_size() const override { return kv_.block_size(); }

 private:
  // A step as the backend runs it, owning copies of everything it reads from the host.
  struct Job {
    ForwardBatch batch;  // token_ids holds -1 at the gathered rows until the step runs
    std::vector<std::pair<size_t, int64_t>> gathers;  // (token row, seq id): its last sampled id
    struct Sample {
      int64_t seq_id = 0;
      std::optional<SamplingParams> params;  // the sequence's first sample: make its sampler
      std::vector<int32_t> tokens;           // prompt + output, for the penalties
      int64_t num_prompt_tokens = 0;
      bool last_token_in_flight = false;  // tokens.back() is the seq's last sampled id
    };
    std::vector<Sample> samples;
    int num_threads = 0;  // OpenMP threads of the submitting thread (0: leave as is)
  };
  struct Result {
    std::vector<int32_t> sampled;
    std::exception_ptr error;
  };

  Job make_job(std::span<const StepSeq> seqs);
  std::vector<int32_t> run(Job& job);  // forward + sample; on the worker or in execute()
  void worker_loop();
  void forget(int64_t seq_id);  // drop sampler and record; the worker must be idle

  Model& model_;
  KvCache kv_;
  // Owned by whoever runs steps (the worker while any submitted step has not run, else the
  // caller's thread): per-sequence samplers and the last id each sequence sampled.
  std::unordered_map<int64_t, Sampler> samplers_;
  std::unordered_map<int64_t, int32_t> last_sampled_;
  std::vector<float> logits_;  // [num sampled seqs, vocab]
  // Caller's thread only: sequences whose sampler exists or is made by a submitted step.
  std::unordered_set<int64_t> known_;
  int64_t num_submitted_ = 0;  // caller's thread only (written under mu_)
  int64_t num_collected_ = 0;  // caller's thread only

  std::mutex mu_;
  std::condition_variable work_cv_;  // worker: a job was queued, or stop
  std::condition_variable done_cv_;  // caller: a result is ready
  std::deque<Job> queue_;            // guarded by mu_
  std::deque<Result> results_;       // guarded by mu_
  int64_t num_run_ = 0;              // guarded by mu_: steps the worker finished
  // guarded by mu_: (step number, seq id): forget the sequence once that step has run
  std::vector<std::pair<int64_t, int64_t>> pending_releases_;
  bool stop_ = false;   // guarded by mu_
  std::thread worker_;  // started by the first submit()
};

}  // namespace atom
