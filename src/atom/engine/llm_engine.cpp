#include "atom/engine/llm_engine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "atom/core/profiler.h"
#include "atom/io/hf_config.h"
#ifdef ATOM_HAVE_CUDA
#include "atom/runner/cuda/cuda_model_runner.h"
#endif

namespace atom {

namespace {
double seconds_between(std::chrono::steady_clock::time_point a,
                       std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

EngineConfig resolve_engine_config(EngineConfig c, const ModelConfig& m, const Tokenizer& tok) {
  // The tokenizer's EOS is reported as ATOM's raw reason "eos", other stop ids as "stop_<id>".
  if (c.scheduler.eos_token_id < 0) c.scheduler.eos_token_id = tok.eos_id();
  // As ATOM: unset means max_position_embeddings (8192 if absent), a larger value is clamped.
  int64_t& len = c.scheduler.max_model_len;
  len = resolve_max_model_len(len > 0 ? std::optional<int64_t>(len) : std::nullopt, m);
  ATOM_CHECK(c.block_size > 0, kInvalidArgument, "block size must be positive, got {}",
             c.block_size);
  ATOM_CHECK(c.device == "cpu" || c.device == "cuda", kInvalidArgument,
             "unknown device '{}': choose cpu or cuda", c.device);
  // "cuda" with 0 blocks: the runner sizes its pool after its warm-up. Either way the count is
  // checked once the runner exists (LLMEngine::adopt_runner_blocks).
  if (c.num_kv_blocks <= 0 && c.device == "cpu")
    c.num_kv_blocks = ModelRunner::num_blocks_for_bytes(m, c.kv_cache_bytes, c.block_size);
  return c;
}

std::unique_ptr<Runner> make_runner(Model& model, const EngineConfig& c) {
  ATOM_CHECK(c.kv_cache_dtype == "bf16" || c.kv_cache_dtype == "fp8", kInvalidArgument,
             "--kv_cache_dtype {}: choose bf16 or fp8", c.kv_cache_dtype);
  if (c.device == "cpu") {
    ATOM_CHECK(c.kv_cache_dtype == "bf16", kUnsupported,
               "--kv_cache_dtype fp8: an fp8 KV cache runs on device 'cuda' only");
    ATOM_CHECK(c.parallel.tensor_parallel_size == 1, kUnsupported,
               "--tensor-parallel-size {}: tensor parallelism runs on device 'cuda' only",
               c.parallel.tensor_parallel_size);
    return std::make_unique<ModelRunner>(model, c.num_kv_blocks, c.block_size);
  }
  ATOM_CHECK(c.device == "cuda", kInvalidArgument, "unknown device '{}': choose cpu or cuda",
             c.device);
#ifdef ATOM_HAVE_CUDA
  CudaRunnerConfig rc;
  rc.num_blocks = c.num_kv_blocks;
  rc.device = int(c.parallel.cuda_device());  // a DP replica's GPU: rank_local * tp (SPEC 4.2)
  rc.block_size = c.block_size;
  rc.max_num_batched_tokens = c.scheduler.max_num_batched_tokens;
  rc.max_num_seqs = c.scheduler.max_num_seqs;
  rc.max_model_len = c.scheduler.max_model_len;
  rc.gpu_memory_utilization = c.gpu_memory_utilization;
  rc.enforce_eager = c.enforce_eager || envs::ATOM_ENFORCE_EAGER();
  rc.cudagraph_capture_sizes = c.cudagraph_capture_sizes;
  rc.tp_size = c.parallel.tensor_parallel_size;
  rc.allreduce_rms_norm_fusion = envs::ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION();
  rc.kv_cache_fp8 = c.kv_cache_dtype == "fp8";
  return std::make_unique<CudaModelRunner>(model, rc);
#else
  throw_error(ErrorCode::kUnsupported, "device 'cuda': this build of atom has no CUDA backend");
#endif
}

LLMEngine::LLMEngine(Model& model, const Tokenizer& tokenizer, EngineConfig config)
    : model_(model),
      tok_(tokenizer),
      config_(resolve_engine_config(std::move(config), model.config(), tokenizer)),
      runner_(make_runner(model, config_)),
      blocks_(adopt_runner_blocks(), config_.block_size, config_.enable_prefix_caching),
      scheduler_(config_.scheduler, blocks_) {}

int64_t LLMEngine::adopt_runner_blocks() {
  config_.num_kv_blocks = runner_->num_blocks();  // the CUDA runner sizes its own pool
  const int64_t len = config_.scheduler.max_model_len, bs = config_.block_size;
  const int64_t needed = (len + bs - 1) / bs;
  ATOM_CHECK(config_.num_kv_blocks >= needed, kInvalidArgument,
             "the KV cache holds {} blocks of {} tokens, too few for one sequence of "
             "max_model_len {} tokens ({} blocks): raise the KV cache size (--gpu-memory-"
             "utilization, --cpu-kv-cache-space) or lower --max-model-len",
             config_.num_kv_blocks, bs, len, needed);
  return config_.num_kv_blocks;
}

void LLMEngine::validate(const std::vector<int32_t>& prompt, const SamplingParams& params) const {
  params.validate();
  ATOM_CHECK(!prompt.empty(), kInvalidArgument, "the prompt is empty (0 tokens)");
  const int64_t vocab = model_.config().vocab_size;
  for (int32_t id : prompt)
    ATOM_CHECK(id >= 0 && id < vocab, kInvalidArgument,
               "prompt token id {} is out of range for the vocabulary (size {})", id, vocab);
  const int64_t len = config_.scheduler.max_model_len;
  ATOM_CHECK(int64_t(prompt.size()) + params.max_tokens <= len, kInvalidArgument,
             "this model's maximum context length is {} tokens, but the request has {} prompt "
             "tokens and max_tokens {} ({} in total); shorten the prompt or lower max_tokens",
             len, prompt.size(), params.max_tokens, int64_t(prompt.size()) + params.max_tokens);
}

int64_t LLMEngine::add_request(std::vector<int32_t> prompt, SamplingParams params, int64_t id,
                               Sequence::Clock::time_point arrival_time) {
  validate(prompt, params);
  auto seq = std::make_shared<Sequence>(std::move(prompt), std::move(params), config_.block_size,
                                        id);
  if (arrival_time != Sequence::Clock::time_point{}) seq->arrival_time = arrival_time;
  Request r{seq, std::make_unique<RequestText>(tok_, seq->params)};
  scheduler_.add(seq);
  const int64_t rid = seq->id();
  requests_.emplace(rid, std::move(r));
  profiler::instant("request added", "request",
                    {{"id", rid}, {"prompt_tokens", seq->num_prompt_tokens}});
  return rid;
}

bool LLMEngine::has_unfinished() const {
  return !requests_.empty() || !aborted_.empty() || !inflight_.empty();
}

bool LLMEngine::abort(int64_t request_id) {
  auto it = requests_.find(request_id);
  if (it == requests_.end()) return false;
  scheduler_.abort(request_id);
  runner_->release(request_id);
  aborted_.push_back(finish_output(it->second));
  requests_.erase(it);
  return true;
}

RequestOutput LLMEngine::finish_output(Request& r) {
  const Sequence& s = *r.seq;
  r.text->finish();
  RequestOutput o;
  o.request_id = s.id();
  o.finished = true;
  o.finish_reason = s.finish_reason.empty() ? "abort" : s.finish_reason;
  o.raw_finish_reason = s.raw_finish_reason.empty() ? "abort" : s.raw_finish_reason;
  o.delta_text = r.text->take_delta();
  const auto out = s.output_ids();
  o.output_ids.assign(out.begin(), out.end());
  o.text = r.text->text();
  o.stop_string = r.text->matched_stop();
  o.num_prompt_tokens = s.num_prompt_tokens;
  o.num_cached_tokens = s.num_prompt_cached_tokens;
  profiler::instant("request finished", "request",
                    {{"id", o.request_id}, {"output_tokens", int64_t(o.output_ids.size())}});
  const auto now = std::chrono::steady_clock::now();
  o.latency_seconds = seconds_between(s.arrival_time, now);
  if (s.num_output_tokens() > 0) o.ttft_seconds = seconds_between(s.arrival_time, s.first_token_time);
  const bool scheduled = s.scheduled_time != Sequence::Clock::time_point{};
  stats_.record_finished(o.finish_reason, s.num_prompt_tokens, int64_t(o.output_ids.size()),
                         o.latency_seconds,
                         scheduled ? seconds_between(s.arrival_time, s.scheduled_time) : -1.0);
  return o;
}

std::vector<StepSeq> LLMEngine::make_steps(const SchedulerOutput& sched) const {
  std::vector<StepSeq> steps;
  steps.reserve(sched.seqs.size());
  for (const ScheduledSeq& ss : sched.seqs) {
    const Sequence& s = *ss.seq;
    // At schedule time only the previous step can still be computing a token of s: its last.
    ATOM_ASSERT(s.num_placeholder_tokens <= 1);
    steps.push_back(StepSeq{s.id(), s.token_ids, s.num_prompt_tokens, s.num_scheduled_tokens(),
                            ss.num_new_tokens, s.block_table, ss.needs_sample, &s.params,
                            s.num_placeholder_tokens > 0});
  }
  return steps;
}

void LLMEngine::emit_outputs(const SchedulerOutput& sched, std::span<const int32_t> sampled,
                             std::vector<RequestOutput>& outputs) {
  const auto now = Sequence::Clock::now();  // one clock read per step for the statistics
  size_t k = 0;
  for (const ScheduledSeq& ss : sched.seqs) {
    if (!ss.needs_sample) continue;
    const int32_t token = sampled[k++];
    Sequence& s = *ss.seq;
    auto it = requests_.find(s.id());
    // Gone: aborted, or (deferred output) finished by the step before, so this token is dropped.
    if (it == requests_.end()) continue;
    Request& r = it->second;
    if (r.last_token_time == Sequence::Clock::time_point{})
      stats_.record_first_token(s.num_prompt_tokens,
                                seconds_between(s.arrival_time, s.first_token_time));
    else
      stats_.record_next_token(seconds_between(r.last_token_time, now));
    r.last_token_time = now;
    const bool check_stop = s.num_final_output_tokens() >= s.params.min_tokens;
    // A stop token (EOS or a stop id) ends the output without adding its text, as in vLLM; it
    // still counts as a generated token.
    const bool by_stop_token = s.is_finished() && s.finish_reason == "stop" &&
                               s.raw_finish_reason != "stop_sequence";
    if (!by_stop_token && r.text->push(token, check_stop) && !s.is_finished())
      scheduler_.finish(s.id(), "stop", "stop_sequence");
    if (s.is_finished()) {
      RequestOutput o = finish_output(r);
      o.new_token_ids = {token};
      outputs.push_back(std::move(o));
      runner_->release(s.id());
      requests_.erase(it);
    } else {
      RequestOutput o;
      o.request_id = s.id();
      o.new_token_ids = {token};
      o.delta_text = r.text->take_delta();
      outputs.push_back(std::move(o));
    }
  }
}

void LLMEngine::step_sync(std::vector<RequestOutput>& outputs) {
  const SchedulerOutput sched = [&] {
    profiler::Scope scope("schedule", "engine");
    return scheduler_.schedule();
  }();
  if (sched.empty()) return;
  log_scheduled_batch(sched);
  const std::vector<int32_t> sampled = runner_->execute(make_steps(sched));
  {
    profiler::Scope scope("postprocess", "engine");
    scheduler_.postprocess(sched, sampled);
  }
  profiler::Scope scope("outputs", "engine");  // tokens, detokenization, stop strings
  emit_outputs(sched, sampled, outputs);
}

void LLMEngine::step_async(std::vector<RequestOutput>& outputs) {
  // Plan and start step N; the runner takes the ids of N-1 (still running) from its record.
  SchedulerOutput sched = [&] {
    profiler::Scope scope("schedule", "engine");
    return scheduler_.schedule();
  }();
  const bool submitted = !sched.empty();
  if (submitted) {
    log_scheduled_batch(sched);
    profiler::Scope scope("submit", "engine");
    runner_->submit(make_steps(sched));
    scheduler_.mark_in_flight(sched);
    inflight_.push_back(std::move(sched));
  }
  // Postprocess N-1 while N runs; when nothing new could start (idle, or every running
  // sequence waits for its in-flight last token), drain the step in flight.
  if (inflight_.empty() || (submitted && inflight_.size() < 2)) return;
  std::vector<int32_t> sampled;
  try {
    profiler::Scope scope("collect", "engine");  // waits for the step in flight
    sampled = runner_->collect();
  } catch (...) {
    drain_after_failure();
    throw;
  }
  const SchedulerOutput done = std::move(inflight_.front());
  inflight_.pop_front();
  {
    profiler::Scope scope("postprocess", "engine");
    scheduler_.postprocess(done, sampled);
  }
  profiler::Scope scope("outputs", "engine");  // tokens, detokenization, stop strings
  emit_outputs(done, sampled, outputs);
}

void LLMEngine::drain_after_failure() {
  // The failed step was the oldest; later ones may have read its ids, so none of them counts.
  for (size_t i = 1; i < inflight_.size(); ++i) {
    try {
      runner_->collect();
    } catch (...) {  // the first failure is the one reported
    }
  }
  for (const SchedulerOutput& out : inflight_) scheduler_.cancel_in_flight(out);
  inflight_.clear();
}

std::vector<RequestOutput> LLMEngine::step() {
  // Abort reports are taken only after the step succeeded: a failing step loses none of them.
  std::vector<RequestOutput> stepped;
  {
    profiler::Scope scope("step", "engine", {{"requests", int64_t(requests_.size())}});
    if (config_.async_output)
      step_async(stepped);
    else
      step_sync(stepped);
  }
  // Totals the scheduler and block manager keep, published for readers on other threads.
  stats_.num_preemptions.store(scheduler_.num_preemptions(), std::memory_order_relaxed);
  stats_.prefix_cache_queries.store(blocks_.num_prefix_queries(), std::memory_order_relaxed);
  stats_.prefix_cache_hits.store(blocks_.num_prefix_hits(), std::memory_order_relaxed);
  std::vector<RequestOutput> outputs = std::move(aborted_);
  aborted_.clear();
  outputs.insert(outputs.end(), std::make_move_iterator(stepped.begin()),
                 std::make_move_iterator(stepped.end()));
  return outputs;
}

std::vector<RequestOutput> LLMEngine::generate(const std::vector<std::vector<int32_t>>& prompts,
                                               const std::vector<SamplingParams>& params,
                                               bool progress) {
  ATOM_CHECK(params.size() == 1 || params.size() == prompts.size(), kInvalidArgument,
             "generate: {} sampling params for {} prompts", params.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i)
    validate(prompts[i], params.size() == 1 ? params[0] : params[i]);
  std::unordered_map<int64_t, size_t> index;
  for (size_t i = 0; i < prompts.size(); ++i)
    index[add_request(prompts[i], params.size() == 1 ? params[0] : params[i])] = i;
  std::vector<RequestOutput> results(prompts.size());
  size_t done = 0;
  while (done < prompts.size()) {
    for (RequestOutput& o : step()) {
      if (!o.finished) continue;
      auto it = index.find(o.request_id);
      if (it == index.end()) continue;
      results[it->second] = std::move(o);
      ++done;
      if (progress) std::fprintf(stderr, "\r[atom] generate: %zu/%zu requests", done, prompts.size());
    }
  }
  // Deferred output: the last step may still compute a token for a request that finished; with
  // nothing else to do, collect it so the engine is idle (blocks free) when generate returns.
  while (requests_.empty() && aborted_.empty() && !inflight_.empty()) step();
  if (progress) std::fprintf(stderr, "\n");
  return results;
}

}  // namespace atom
