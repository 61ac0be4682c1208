#include "atom/engine/scheduler.h"

#include <algorithm>

#include "atom/core/error.h"

namespace atom {

int64_t SchedulerOutput::num_samples() const {
  return std::count_if(seqs.begin(), seqs.end(),
                       [](const ScheduledSeq& s) { return s.needs_sample; });
}

Scheduler::Scheduler(const SchedulerConfig& config, BlockManager& blocks)
    : config_(config), blocks_(blocks) {
  ATOM_CHECK(config_.max_num_seqs >= 1, kInvalidArgument, "max_num_seqs must be at least 1, got {}",
             config_.max_num_seqs);
  ATOM_CHECK(config_.max_num_batched_tokens >= 1, kInvalidArgument,
             "max_num_batched_tokens must be at least 1, got {}", config_.max_num_batched_tokens);
  ATOM_CHECK(config_.max_model_len >= 1, kInvalidArgument,
             "max_model_len must be at least 1, got {}", config_.max_model_len);
  // Without chunking a whole prompt must fit one step, else it could never be scheduled.
  ATOM_CHECK(config_.chunked_prefill || config_.max_num_batched_tokens >= config_.max_model_len,
             kInvalidArgument,
             "max_num_batched_tokens ({}) is smaller than max_model_len ({}): enable chunked "
             "prefill or raise max_num_batched_tokens",
             config_.max_num_batched_tokens, config_.max_model_len);
}

void Scheduler::add(SequencePtr seq) {
  ATOM_CHECK(seq != nullptr, kInvalidArgument, "cannot schedule a null sequence");
  ATOM_CHECK(seq->num_prompt_tokens > 0, kInvalidArgument, "the prompt must not be empty");
  seq->params.validate();
  ATOM_CHECK(seq->block_size() == blocks_.block_size(), kInvalidArgument,
             "sequence {} uses KV block size {} but the cache uses {}", seq->id(),
             seq->block_size(), blocks_.block_size());
  const int64_t total = seq->num_prompt_tokens + seq->params.max_tokens;
  ATOM_CHECK(total <= config_.max_model_len, kInvalidArgument,
             "this model's maximum context length is {} tokens, but the request needs {} "
             "({} in the prompt + {} max_tokens); shorten the prompt or lower max_tokens",
             config_.max_model_len, total, seq->num_prompt_tokens, seq->params.max_tokens);
  // The last sampled token finishes the sequence before its K/V is ever written.
  const int64_t max_blocks = (total - 1 + blocks_.block_size() - 1) / blocks_.block_size();
  ATOM_CHECK(max_blocks <= blocks_.num_blocks(), kInvalidArgument,
             "the request needs up to {} KV-cache blocks ({} tokens) but the cache holds only {}; "
             "shorten the prompt or lower max_tokens",
             max_blocks, total - 1, blocks_.num_blocks());
  ATOM_CHECK(seq->status == SequenceStatus::kWaiting && seq->block_table.empty() &&
                 seq->num_output_tokens() == 0,
             kInvalidArgument, "sequence {} was already scheduled", seq->id());
  ATOM_CHECK(!unfinished_.contains(seq->id()), kInvalidArgument,
             "a sequence with id {} is already in the scheduler", seq->id());
  seq->num_computed_tokens = 0;
  unfinished_.emplace(seq->id(), seq);
  waiting_.push_back(std::move(seq));
}

namespace {
// Deferred output: the token in flight is the sequence's last one (max_tokens), so there is
// nothing to compute for it; scheduling it would only produce a token to discard.
bool last_token_in_flight_is_final(const Sequence& seq) {
  return seq.num_placeholder_tokens > 0 && seq.num_output_tokens() >= seq.params.max_tokens;
}
}  // namespace

bool Scheduler::passed_delay(Sequence::Clock::time_point now) {
  if (prev_prompt_) last_prompt_latency_ = std::chrono::duration<double>(now - prev_time_).count();
  prev_time_ = now;
  prev_prompt_ = false;
  if (config_.delay_factor <= 0.0 || waiting_.empty() || running_.empty()) return true;
  Sequence::Clock::time_point earliest = waiting_.front()->arrival_time;
  for (const SequencePtr& seq : waiting_) earliest = std::min(earliest, seq->arrival_time);
  return std::chrono::duration<double>(now - earliest).count() >
         config_.delay_factor * last_prompt_latency_;
}

SchedulerOutput Scheduler::schedule() {
  const bool admit = passed_delay(clock_());
  SchedulerOutput out =
      config_.chunked_prefill ? schedule_chunked(admit) : schedule_prefill_first(admit);
  for (const ScheduledSeq& s : out.seqs)  // prompt tokens computed this step
    if (s.seq->num_scheduled_tokens() < s.seq->num_prompt_tokens) prev_prompt_ = true;
  return out;
}

void Scheduler::preempt_last(SchedulerOutput& out) {
  ATOM_ASSERT(!running_.empty());
  SequencePtr victim = std::move(running_.back());
  running_.pop_back();
  // Freed now even when a submitted step still computes the victim's in-flight token: runners
  // execute steps in submission order, so a later step that reuses these blocks writes them
  // only after that step is done with them.
  blocks_.deallocate(*victim);
  victim->status = SequenceStatus::kWaiting;
  victim->num_computed_tokens = 0;
  victim->num_inflight_tokens = 0;  // recomputed after readmission
  ++victim->num_preemptions;
  ++num_preemptions_;
  // Victims go newest first, each to the front: the waiting queue keeps admission order.
  waiting_.push_front(victim);
  out.preempted.push_back(std::move(victim));
}

bool Scheduler::make_room_for_decode(const SequencePtr& seq, SchedulerOutput& out) {
  while (!blocks_.can_append(*seq)) {
    const bool self = running_.back() == seq;
    preempt_last(out);
    if (self) return false;
  }
  blocks_.may_append(*seq);
  return true;
}

SchedulerOutput Scheduler::schedule_chunked(bool admit_prompts) {
  SchedulerOutput out;
  int64_t budget = config_.max_num_batched_tokens;
  std::vector<ScheduledSeq> prefills;
  auto num_scheduled = [&] { return int64_t(out.seqs.size() + prefills.size()); };

  // 1. Decodes (one new token each), in admission order. Preemption removes from the back of
  // running, so it never takes a sequence already scheduled this step.
  for (size_t i = 0; i < running_.size(); ++i) {
    SequencePtr seq = running_[i];
    const int64_t remaining = seq->num_tokens() - seq->num_scheduled_tokens();
    ATOM_ASSERT(remaining >= 1);
    if (remaining != 1 || last_token_in_flight_is_final(*seq)) continue;
    if (budget < 1 || num_scheduled() >= config_.max_num_seqs) break;
    if (!make_room_for_decode(seq, out)) break;  // it was the last one and went itself
    out.seqs.push_back({seq, 1, true});
    budget -= 1;
  }

  // 2. Prompt chunks of running sequences (their blocks were allocated at admission).
  for (const SequencePtr& seq : running_) {
    const int64_t remaining = seq->num_tokens() - seq->num_scheduled_tokens();
    if (remaining <= 1) continue;
    if (budget < 1 || num_scheduled() >= config_.max_num_seqs) break;
    const int64_t n = std::min(remaining, budget);
    prefills.push_back({seq, n, n == remaining});
    budget -= n;
  }

  // 3. Admission, FIFO. Not after a preemption that freed blocks for decodes (readmitting the
  // victim at once would thrash), unless nothing else runs this step.
  const bool admit =
      admit_prompts && (out.preempted.empty() || (out.seqs.empty() && prefills.empty()));
  while (admit && !waiting_.empty() && budget >= 1 && num_scheduled() < config_.max_num_seqs) {
    SequencePtr seq = waiting_.front();
    // The head waits for blocks; nobody overtakes it. Nor is a sequence readmitted while a step
    // still computes for it (that step's bookkeeping belongs to the old admission); today a
    // sequence preempted in this call could not fit again anyway, so this is only a guard.
    if (seq->num_inflight_steps > 0 || !blocks_.can_allocate(*seq)) break;
    blocks_.allocate(*seq);  // prefix hits set num_computed_tokens before the budget applies
    if (seq->num_preemptions == 0) {
      seq->num_prompt_cached_tokens = seq->num_cached_tokens;
      seq->scheduled_time = Sequence::Clock::now();
    }
    waiting_.pop_front();
    seq->status = SequenceStatus::kRunning;
    running_.push_back(seq);
    const int64_t remaining = seq->num_tokens() - seq->num_computed_tokens;
    ATOM_ASSERT(remaining >= 1);
    const int64_t n = std::min(remaining, budget);
    prefills.push_back({seq, n, n == remaining});
    budget -= n;
  }

  for (ScheduledSeq& s : prefills) out.seqs.push_back(std::move(s));
  out.num_batched_tokens = config_.max_num_batched_tokens - budget;
  return out;
}

SchedulerOutput Scheduler::schedule_prefill_first(bool admit_prompts) {
  SchedulerOutput out;
  int64_t budget = config_.max_num_batched_tokens;

  // Prefill-only step: whole prompts, FIFO, the head blocks everyone behind it.
  while (admit_prompts && !waiting_.empty() &&
         int64_t(out.seqs.size()) < config_.max_num_seqs) {
    SequencePtr seq = waiting_.front();
    if (seq->num_inflight_steps > 0) break;  // as in schedule_chunked: a guard
    const int64_t n = seq->num_tokens() - blocks_.peek_cached_tokens(*seq);
    if (n > budget || !blocks_.can_allocate(*seq)) break;
    blocks_.allocate(*seq);
    ATOM_ASSERT(seq->num_tokens() - seq->num_computed_tokens == n);
    if (seq->num_preemptions == 0) {
      seq->num_prompt_cached_tokens = seq->num_cached_tokens;
      seq->scheduled_time = Sequence::Clock::now();
    }
    waiting_.pop_front();
    seq->status = SequenceStatus::kRunning;
    running_.push_back(seq);
    out.seqs.push_back({seq, n, true});
    budget -= n;
  }
  if (!out.seqs.empty()) {
    out.num_batched_tokens = config_.max_num_batched_tokens - budget;
    return out;
  }

  // Decode-only step.
  for (size_t i = 0; i < running_.size(); ++i) {
    SequencePtr seq = running_[i];
    ATOM_ASSERT(seq->num_tokens() - seq->num_scheduled_tokens() == 1);
    if (last_token_in_flight_is_final(*seq)) continue;
    if (budget < 1 || int64_t(out.seqs.size()) >= config_.max_num_seqs) break;
    if (!make_room_for_decode(seq, out)) break;
    out.seqs.push_back({seq, 1, true});
    budget -= 1;
  }
  out.num_batched_tokens = config_.max_num_batched_tokens - budget;
  return out;
}

bool Scheduler::check_stop(Sequence& seq, int32_t token) const {
  const SamplingParams& p = seq.params;
  // ignore_eos ignores the model's EOS only: the caller's stop ids still stop (as in vLLM; the
  // callers leave the model's other end-of-turn ids out of stop_token_ids under ignore_eos).
  if (seq.num_final_output_tokens() >= p.min_tokens) {
    if (!p.ignore_eos && config_.eos_token_id >= 0 && token == config_.eos_token_id) {
      seq.finish_reason = "stop";
      seq.raw_finish_reason = "eos";
      return true;
    }
    if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) !=
        p.stop_token_ids.end()) {
      seq.finish_reason = "stop";
      seq.raw_finish_reason = "stop_" + std::to_string(token);
      return true;
    }
  }
  if (seq.num_final_output_tokens() >= p.max_tokens) {
    seq.finish_reason = "length";
    seq.raw_finish_reason = "max_tokens";
    return true;
  }
  return false;
}

void Scheduler::finish_sequence(Sequence& seq, std::string reason, std::string raw_reason) {
  seq.status = SequenceStatus::kFinished;
  seq.finish_reason = std::move(reason);
  seq.raw_finish_reason = std::move(raw_reason);
  seq.finish_time = Sequence::Clock::now();
  // Tokens still in flight are never reported: their placeholders go now, their ids later.
  seq.token_ids.resize(seq.token_ids.size() - size_t(seq.num_placeholder_tokens));
  seq.num_placeholder_tokens = 0;
  seq.num_inflight_tokens = 0;
  free_if_idle(seq);
  auto is_it = [&seq](const SequencePtr& p) { return p.get() == &seq; };
  if (auto it = std::find_if(running_.begin(), running_.end(), is_it); it != running_.end())
    running_.erase(it);
  else if (auto wit = std::find_if(waiting_.begin(), waiting_.end(), is_it); wit != waiting_.end())
    waiting_.erase(wit);
  unfinished_.erase(seq.id());
}

void Scheduler::free_if_idle(Sequence& seq) {
  if (seq.num_inflight_steps == 0 && !seq.block_table.empty()) blocks_.deallocate(seq);
}

void Scheduler::mark_in_flight(SchedulerOutput& out) {
  ATOM_ASSERT(!out.in_flight);
  out.in_flight = true;
  for (const ScheduledSeq& s : out.seqs) {
    Sequence& seq = *s.seq;
    ATOM_ASSERT(seq.status == SequenceStatus::kRunning);
    seq.num_inflight_tokens += s.num_new_tokens;
    ++seq.num_inflight_steps;
    if (s.needs_sample) {
      ATOM_ASSERT(seq.num_scheduled_tokens() == seq.num_tokens());
      seq.append_token(Sequence::kPlaceholderToken);
      ++seq.num_placeholder_tokens;
    }
  }
}

void Scheduler::cancel_in_flight(const SchedulerOutput& out) {
  ATOM_ASSERT(out.in_flight);
  for (const ScheduledSeq& s : out.seqs) {
    Sequence& seq = *s.seq;
    ATOM_ASSERT(seq.num_inflight_steps > 0);
    --seq.num_inflight_steps;
    if (seq.is_finished()) {  // its placeholders went at the finish
      free_if_idle(seq);
      continue;
    }
    // A preempted sequence had its in-flight count reset then.
    if (seq.status == SequenceStatus::kRunning) seq.num_inflight_tokens -= s.num_new_tokens;
    ATOM_ASSERT(seq.num_inflight_tokens >= 0);
    if (s.needs_sample) {
      ATOM_ASSERT(seq.num_placeholder_tokens > 0 &&
                  seq.token_ids.back() == Sequence::kPlaceholderToken);
      seq.token_ids.pop_back();
      --seq.num_placeholder_tokens;
    }
  }
}

std::vector<SequencePtr> Scheduler::postprocess(const SchedulerOutput& out,
                                                std::span<const int32_t> sampled) {
  ATOM_CHECK(int64_t(sampled.size()) == out.num_samples(), kInvalidArgument,
             "postprocess got {} sampled tokens for a step that samples {} sequences",
             sampled.size(), out.num_samples());
  std::vector<SequencePtr> finished;
  size_t k = 0;
  for (const ScheduledSeq& s : out.seqs) {
    const int32_t token = s.needs_sample ? sampled[k++] : -1;
    Sequence& seq = *s.seq;
    if (out.in_flight) {
      ATOM_ASSERT(seq.num_inflight_steps > 0);
      --seq.num_inflight_steps;
      if (seq.is_finished()) {  // found finished after this step was submitted: drop its token
        free_if_idle(seq);
        continue;
      }
      // A sequence preempted since the submission recomputes these tokens after readmission,
      // but the token the step sampled for it is real and stays.
      const bool running = seq.status == SequenceStatus::kRunning;
      if (running) {
        seq.num_inflight_tokens -= s.num_new_tokens;
        seq.num_computed_tokens += s.num_new_tokens;
        ATOM_ASSERT(seq.num_inflight_tokens >= 0);
      }
      if (s.needs_sample) {
        ATOM_ASSERT(seq.num_placeholder_tokens > 0);
        const int64_t at = seq.num_tokens() - seq.num_placeholder_tokens;
        ATOM_ASSERT(seq.token_ids[size_t(at)] == Sequence::kPlaceholderToken);
        ATOM_ASSERT(!running || seq.num_computed_tokens == at);
        seq.token_ids[size_t(at)] = token;
        --seq.num_placeholder_tokens;
      }
      // Every computed token is final now: its id came back with an earlier step.
      ATOM_ASSERT(seq.num_computed_tokens <= seq.num_tokens() - seq.num_placeholder_tokens);
      if (running) blocks_.cache_full_blocks(seq);
      if (!s.needs_sample) continue;
    } else {
      if (seq.status != SequenceStatus::kRunning) continue;  // finished from outside meanwhile
      seq.num_computed_tokens += s.num_new_tokens;
      ATOM_ASSERT(seq.num_computed_tokens <= seq.num_tokens());
      blocks_.cache_full_blocks(seq);
      if (!s.needs_sample) continue;
      ATOM_ASSERT(seq.num_computed_tokens == seq.num_tokens());
      seq.append_token(token);
    }
    if (!seq.has_first_token()) seq.first_token_time = Sequence::Clock::now();
    if (check_stop(seq, token)) {
      finish_sequence(seq, seq.finish_reason, seq.raw_finish_reason);
      finished.push_back(s.seq);
    }
  }
  return finished;
}

bool Scheduler::finish(int64_t seq_id, std::string finish_reason, std::string raw_reason) {
  auto it = unfinished_.find(seq_id);
  if (it == unfinished_.end()) return false;
  SequencePtr seq = it->second;  // keep it alive: finish_sequence erases the map entry
  finish_sequence(*seq, std::move(finish_reason), std::move(raw_reason));
  return true;
}

}  // namespace atom
