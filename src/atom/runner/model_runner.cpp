#include "atom/runner/model_runner.h"

#include <omp.h>

#include <algorithm>

#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/core/profiler.h"

namespace atom {

ModelRunner::ModelRunner(Model& model, int64_t num_blocks, int64_t block_size)
    : model_(model),
      kv_(model.config().num_hidden_layers, num_blocks, block_size,
          model.config().num_key_value_heads, model.config().head_dim) {
  const ModelConfig& c = model.config();
  ATOM_LOG_INFO("KV cache allocated: {} blocks of {} tokens ({} tokens), {:.2f} GiB f32 for {} "
                "layers x {} KV heads x {} head_dim",
                num_blocks, block_size, num_blocks * block_size,
                double(kv_.nbytes()) / double(size_t(1) << 30), c.num_hidden_layers,
                c.num_key_value_heads, c.head_dim);
}

ModelRunner::~ModelRunner() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_one();
  if (worker_.joinable()) worker_.join();
}

int64_t ModelRunner::num_blocks_for_bytes(const ModelConfig& cfg, size_t bytes,
                                          int64_t block_size) {
  const size_t per_block =
      size_t(2 * cfg.num_hidden_layers * block_size * cfg.num_key_value_heads * cfg.head_dim) *
      sizeof(float);
  return int64_t(bytes / per_block);
}

ForwardBatch ModelRunner::plan(std::span<const StepSeq> seqs) const {
  const int64_t bs = kv_.block_size();
  ForwardBatch b;
  int64_t max_blocks = 1;
  for (const StepSeq& s : seqs) max_blocks = std::max<int64_t>(max_blocks, s.block_table.size());
  b.max_blocks_per_seq = max_blocks;
  b.cu_seqlens_q.push_back(0);
  for (const StepSeq& s : seqs) {
    ATOM_ASSERT(s.count > 0 && s.start + s.count <= int64_t(s.token_ids.size()));
    ATOM_ASSERT(int64_t(s.block_table.size()) * bs >= s.start + s.count);
    for (int64_t pos = s.start; pos < s.start + s.count; ++pos) {
      b.token_ids.push_back(s.token_ids[size_t(pos)]);
      b.positions.push_back(int32_t(pos));
      b.slot_mapping.push_back(int32_t(s.block_table[size_t(pos / bs)] * bs + pos % bs));
    }
    b.cu_seqlens_q.push_back(int32_t(b.token_ids.size()));
    b.seq_lens.push_back(int32_t(s.start + s.count));
    b.block_tables.insert(b.block_tables.end(), s.block_table.begin(), s.block_table.end());
    b.block_tables.resize(b.seq_lens.size() * size_t(max_blocks), 0);  // pad: never read
    if (s.sample) b.logits_indices.push_back(int32_t(b.token_ids.size()) - 1);
  }
  return b;
}

ModelRunner::Job ModelRunner::make_job(std::span<const StepSeq> seqs) {
  Job job;
  profiler::Scope scope("plan", "runner", {{"seqs", int64_t(seqs.size())}});
  job.batch = plan(seqs);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const StepSeq& s = seqs[i];
    if (s.last_token_in_flight) {
      // The placeholder is the last token; gather it if this step reads it.
      const int64_t pos = int64_t(s.token_ids.size()) - 1;
      if (pos >= s.start && pos < s.start + s.count)
        job.gathers.emplace_back(size_t(job.batch.cu_seqlens_q[i] + (pos - s.start)), s.seq_id);
    }
    if (!s.sample) continue;
    Job::Sample& smp = job.samples.emplace_back();
    smp.seq_id = s.seq_id;
    if (known_.insert(s.seq_id).second) {
      ATOM_CHECK(s.params != nullptr, kInvalidArgument,
                 "sequence {} samples for the first time without sampling parameters", s.seq_id);
      smp.params = *s.params;
    }
    smp.tokens.assign(s.token_ids.begin(), s.token_ids.end());
    smp.num_prompt_tokens = s.num_prompt_tokens;
    smp.last_token_in_flight = s.last_token_in_flight;
  }
  return job;
}

std::vector<int32_t> ModelRunner::run(Job& job) {
  if (job.num_threads > 0 && omp_get_max_threads() != job.num_threads)
    omp_set_num_threads(job.num_threads);
  // Samplers first, so a step failing below leaves them as the host's known_ set says.
  for (const Job::Sample& s : job.samples)
    if (s.params) samplers_.try_emplace(s.seq_id, *s.params);
  auto last_sampled = [this](int64_t seq_id) {
    auto it = last_sampled_.find(seq_id);
    ATOM_CHECK(it != last_sampled_.end(), kInternal,
               "sequence {} has a token in flight but no step sampled one for it", seq_id);
    return it->second;
  };
  // The device-side gather: inputs the host only knew as placeholders.
  for (const auto& [row, seq_id] : job.gathers) job.batch.token_ids[row] = last_sampled(seq_id);
  const int64_t vocab = model_.config().vocab_size;
  for (int32_t id : job.batch.token_ids)
    ATOM_CHECK(id >= 0 && id < vocab, kInternal, "input token id {} outside the vocabulary ({})",
               id, vocab);
  {
    profiler::Scope scope("forward", "runner",
                          {{"tokens", job.batch.num_tokens()}, {"seqs", job.batch.num_seqs()}});
    model_.forward(job.batch, kv_, logits_);
  }
  profiler::Scope sample_scope("sample", "runner", {{"rows", int64_t(job.samples.size())}});
  std::vector<int32_t> sampled;
  sampled.reserve(job.samples.size());
  for (size_t row = 0; row < job.samples.size(); ++row) {
    Job::Sample& s = job.samples[row];
    auto it = samplers_.find(s.seq_id);
    ATOM_ASSERT(it != samplers_.end());
    if (s.last_token_in_flight) s.tokens.back() = last_sampled(s.seq_id);
    float* logits = logits_.data() + row * size_t(vocab);
    const std::span<const int32_t> all(s.tokens);
    const auto prompt = all.first(size_t(s.num_prompt_tokens));
    const auto output = all.subspan(size_t(s.num_prompt_tokens));
    it->second.apply_penalties(logits, vocab, prompt, output);
    // The draw of the token's position in the output (the in-flight token counts).
    sampled.push_back(it->second.sample(logits, vocab, uint64_t(output.size())));
  }
  // After every row: a row's input above must read the previous step's id, not this one's.
  for (size_t row = 0; row < job.samples.size(); ++row)
    last_sampled_[job.samples[row].seq_id] = sampled[row];
  return sampled;
}

void Runner::check_execute(std::span<const StepSeq> seqs) const {
  ATOM_CHECK(num_in_flight() == 0, kInternal,
             "execute() with {} submitted steps not collected: collect them first",
             num_in_flight());
  for (const StepSeq& s : seqs)
    ATOM_CHECK(!s.last_token_in_flight, kInvalidArgument,
               "sequence {} has a token in flight: only submit() can run it", s.seq_id);
}

std::vector<int32_t> ModelRunner::execute(std::span<const StepSeq> seqs) {
  check_execute(seqs);
  if (seqs.empty()) return {};
  Job job = make_job(seqs);
  return run(job);
}

void ModelRunner::submit(std::span<const StepSeq> seqs) {
  Job job = make_job(seqs);
  job.num_threads = omp_get_max_threads();  // the worker runs with the caller's setting
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(job));
    ++num_submitted_;
  }
  if (!worker_.joinable()) worker_ = std::thread([this] { worker_loop(); });
  work_cv_.notify_one();
}

std::vector<int32_t> ModelRunner::collect() {
  ATOM_CHECK(num_in_flight() > 0, kInternal, "collect() with no step in flight");
  Result r;
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return !results_.empty(); });
    r = std::move(results_.front());
    results_.pop_front();
  }
  ++num_collected_;
  if (r.error) std::rethrow_exception(r.error);
  return std::move(r.sampled);
}

void ModelRunner::worker_loop() {
  profiler::set_thread_name("runner");
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    Job job = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    Result r;
    try {
      r.sampled = run(job);
    } catch (...) {
      r.error = std::current_exception();
    }
    lock.lock();
    ++num_run_;
    std::erase_if(pending_releases_, [this](const std::pair<int64_t, int64_t>& p) {
      if (p.first > num_run_) return false;
      forget(p.second);
      return true;
    });
    results_.push_back(std::move(r));
    done_cv_.notify_one();
  }
}

void ModelRunner::forget(int64_t seq_id) {
  samplers_.erase(seq_id);
  last_sampled_.erase(seq_id);
}

void ModelRunner::release(int64_t seq_id) {
  known_.erase(seq_id);
  std::lock_guard<std::mutex> lock(mu_);
  if (num_run_ < num_submitted_)
    pending_releases_.emplace_back(num_submitted_, seq_id);  // after the last submitted step
  else
    forget(seq_id);  // the worker is idle: nothing runs that could use it
}

}  // namespace atom
