// Continuous-batching scheduler: decides, each step, which sequences run and how many of their
// tokens are computed, under a token budget, a sequence cap and the KV block pool.
//
// Default policy (chunked prefill): one token budget per step shared by decodes (1 token each,
// first), continuing prompt chunks of running sequences, then newly admitted waiting sequences in
// FIFO order; a prompt longer than the budget is computed over several steps. When decode needs a
// block and none is free, the most recently admitted running sequence is preempted (its blocks
// freed, recomputed later from the front of the waiting queue). With chunked_prefill = false the
// scheduler reproduces ATOM's policy: a step is either whole-prompt prefills only or decodes only.
//
// Deferred output (ATOM's, SPEC 3.4): the engine may submit step N to the runner and schedule
// N+1 before N's sampled ids are back. mark_in_flight(N) counts N's tokens as being computed and
// appends a placeholder for each token N samples, so N+1 is planned (positions, blocks) as if N
// were done; postprocess(N) later writes the real ids over the placeholders, in step order. A
// sequence found finished by postprocess(N-1) may already be in N: N's token for it is dropped,
// and its blocks are freed once no submitted step uses them. Prefix-cache hashes cover computed
// tokens only, which are final by the time their step is postprocessed.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "atom/engine/block_manager.h"
#include "atom/engine/sequence.h"

namespace atom {

struct SchedulerConfig {
  int64_t max_num_seqs = 512;
  int64_t max_num_batched_tokens = 16384;
  int64_t max_model_len = 8192;
  bool chunked_prefill = true;  // false: ATOM's strict prefill-first policy (no mixing, no chunks)
  // ATOM's/vLLM's --scheduler-delay-factor (> 0: on): while sequences run, new prompts are
  // admitted only once the oldest waiting one has waited longer than delay_factor x the last
  // prompt step's latency, so prompts arriving close together share one prefill step.
  double delay_factor = 0.0;
  // The tokenizer's EOS: always a stop token (unless ignore_eos), reported as raw reason "eos";
  // the other params.stop_token_ids report "stop_<id>". -1: none, every stop id is "stop_<id>".
  int32_t eos_token_id = -1;
};

struct ScheduledSeq {
  SequencePtr seq;
  int64_t num_new_tokens;  // compute tokens [seq->num_scheduled_tokens(), + num_new_tokens)
  bool needs_sample;       // this step reaches the end of the sequence's known tokens -> sample one
};

struct SchedulerOutput {
  std::vector<ScheduledSeq> seqs;  // decodes first, then prefills (chunked)
  int64_t num_batched_tokens = 0;
  std::vector<SequencePtr> preempted;  // sent back to waiting this step (recompute)
  bool in_flight = false;              // set by Scheduler::mark_in_flight (deferred output)
  bool empty() const { return seqs.empty(); }
  int64_t num_samples() const;  // entries with needs_sample: the size postprocess expects
};

class Scheduler {
 public:
  // Throws atom::Error(kInvalidArgument) for a config that cannot make progress.
  Scheduler(const SchedulerConfig& config, BlockManager& blocks);

  // Throws atom::Error(kInvalidArgument) when prompt + max_tokens > max_model_len, the prompt is
  // empty, or the sequence could never fit the KV cache, with a clear message (the server turns
  // it into HTTP 400).
  void add(SequencePtr seq);
  // May return an empty output while has_unfinished() (every running sequence was preempted and
  // nothing could be admitted in the same step, or, with deferred output, every running sequence
  // waits for its in-flight last token): postprocess what is in flight and call it again.
  SchedulerOutput schedule();
  // Deferred output: `out` was submitted to the runner and its sampled ids come later. Each
  // scheduled sequence counts its new tokens as in flight, and one that samples gets a
  // placeholder token (Sequence::kPlaceholderToken), so the next schedule() plans past it.
  void mark_in_flight(SchedulerOutput& out);
  // Deferred output: the runner failed, so the results of every in-flight step are lost; call it
  // for each of them (any order). Undoes mark_in_flight: placeholders and in-flight counts go,
  // and finished sequences waiting for these steps free their blocks.
  void cancel_in_flight(const SchedulerOutput& out);
  // After the step ran: num_computed_tokens += num_new_tokens for each scheduled seq, then
  // cache_full_blocks; for each seq with needs_sample (in order), append sampled[i] (in flight:
  // write it over the oldest placeholder), set first token time, and check stop conditions in
  // ATOM's order but with OpenAI reasons: EOS (config.eos_token_id, skipped with ignore_eos)
  // or one of params.stop_token_ids (always), not before min_tokens -> "stop",
  // max_tokens -> "length". Finished sequences free their blocks (once no in-flight step uses
  // them) and leave running. A sequence finished from outside since schedule() is skipped (its
  // sampled entry still counts); one preempted since an in-flight step was submitted keeps the
  // token that step sampled. Steps marked in flight must be postprocessed in submission order.
  // Returns the sequences that finished in this step.
  std::vector<SequencePtr> postprocess(const SchedulerOutput& out,
                                       std::span<const int32_t> sampled);
  // Stop a sequence from outside (stop string matched by the engine, client abort): frees its
  // blocks wherever it is (waiting or running; after its in-flight steps if it has any) and
  // drops its placeholders. Returns false for an unknown/finished id.
  bool finish(int64_t seq_id, std::string finish_reason, std::string raw_reason);
  bool abort(int64_t seq_id) { return finish(seq_id, "abort", "abort"); }

  bool has_unfinished() const { return !waiting_.empty() || !running_.empty(); }
  int64_t num_waiting() const { return int64_t(waiting_.size()); }
  int64_t num_running() const { return int64_t(running_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }  // total since construction
  const std::deque<SequencePtr>& waiting() const { return waiting_; }
  const std::vector<SequencePtr>& running() const { return running_; }  // admission order
  const SchedulerConfig& config() const { return config_; }
  BlockManager& block_manager() { return blocks_; }
  // The clock of the delay gate (steady_clock by default; tests and simulations drive their own).
  void set_clock(std::function<Sequence::Clock::time_point()> clock) { clock_ = std::move(clock); }

 private:
  SchedulerOutput schedule_chunked(bool admit_prompts);
  SchedulerOutput schedule_prefill_first(bool admit_prompts);
  // The delay gate (SchedulerConfig::delay_factor), evaluated once per schedule() at `now`.
  bool passed_delay(Sequence::Clock::time_point now);
  // Frees running_.back()'s blocks and puts it at the front of waiting (recompute later).
  void preempt_last(SchedulerOutput& out);
  // Preempts from the back of running until seq can grow by its new token; false when seq
  // itself had to go.
  bool make_room_for_decode(const SequencePtr& seq, SchedulerOutput& out);
  // Applies the stop conditions to a sequence that just got a token; sets the reasons.
  bool check_stop(Sequence& seq, int32_t token) const;
  void finish_sequence(Sequence& seq, std::string reason, std::string raw_reason);
  // A finished sequence's blocks go back once no in-flight step uses them.
  void free_if_idle(Sequence& seq);

  SchedulerConfig config_;
  BlockManager& blocks_;
  std::deque<SequencePtr> waiting_;
  std::vector<SequencePtr> running_;  // admission order: the back is the preemption victim
  std::unordered_map<int64_t, SequencePtr> unfinished_;  // id -> sequence, waiting or running
  int64_t num_preemptions_ = 0;
  // Delay gate: when the last schedule() ran, whether it scheduled prompt tokens, and the
  // latency of the last step that did (seconds).
  std::function<Sequence::Clock::time_point()> clock_ = [] { return Sequence::Clock::now(); };
  Sequence::Clock::time_point prev_time_{};
  bool prev_prompt_ = false;
  double last_prompt_latency_ = 0.0;
};

}  // namespace atom
