// One request inside the engine: its tokens (prompt + output), sampling and stopping parameters,
// scheduling state (how many tokens have K/V in the cache) and its KV block table.
// The engine layer is host-only: no CUDA header here or below.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "atom/runner/sampler.h"

namespace atom {

enum class SequenceStatus { kWaiting, kRunning, kFinished };

const char* sequence_status_name(SequenceStatus status);

class Sequence {
 public:
  using Clock = std::chrono::steady_clock;
  // Host-side value of a token an in-flight step samples: never a valid id, so one that leaked
  // into a forward or a report would be caught.
  static constexpr int32_t kPlaceholderToken = -1;

  // id < 0: take the next id of a process-wide counter (reset_id_counter() for tests).
  Sequence(std::vector<int32_t> prompt, SamplingParams params, int64_t block_size, int64_t id = -1);

  // Restarts the process-wide id counter at 0 (tests only: ids must stay unique in an engine).
  static void reset_id_counter();

  int64_t id() const { return id_; }
  int64_t block_size() const { return block_size_; }

  SequenceStatus status = SequenceStatus::kWaiting;
  std::vector<int32_t> token_ids;  // prompt + output
  int64_t num_prompt_tokens = 0;
  int64_t num_computed_tokens = 0;  // tokens whose K/V are in the cache (cached + computed)
  int64_t num_cached_tokens = 0;    // prefix-cache hit at the last allocate (multiple of bs)
  // Prefix-cache hit of the first admission; unlike num_cached_tokens it survives deallocate,
  // so the usage report (cached prompt tokens) can read it after the request finished.
  int64_t num_prompt_cached_tokens = 0;
  int64_t num_preemptions = 0;         // times it was sent back to waiting (recompute)
  // Deferred output (EngineConfig::async_output): the runner works one step ahead of the host.
  // Tokens whose K/V a submitted, not yet postprocessed step computes; the scheduler plans from
  // num_computed_tokens + num_inflight_tokens. 0 in the synchronous path.
  int64_t num_inflight_tokens = 0;
  // Trailing entries of token_ids that hold kPlaceholderToken for tokens in-flight steps sample;
  // postprocess overwrites them in step order. Counting them keeps block allocation and
  // positions right while the real ids are still on the backend.
  int64_t num_placeholder_tokens = 0;
  // Submitted steps that include this sequence and are not yet postprocessed (at most 2). Its
  // blocks outlive a finish until it is 0, and it is not readmitted after a preemption before.
  int64_t num_inflight_steps = 0;
  std::vector<int32_t> block_table;    // physical block ids, one per logical block
  std::vector<uint64_t> block_hashes;  // chained hashes of the full, computed leading blocks
  SamplingParams params;
  std::string finish_reason;      // OpenAI: "stop" | "length" | "abort"
  std::string raw_finish_reason;  // ATOM: "eos" | "stop_<id>" | "stop_sequence" | "max_tokens" |
                                  // "abort"
  Clock::time_point arrival_time;
  Clock::time_point scheduled_time;    // time_point{} until first admitted to running
  Clock::time_point first_token_time;  // time_point{} until the first output token
  Clock::time_point finish_time;       // time_point{} until finished

  int64_t num_tokens() const { return int64_t(token_ids.size()); }
  int64_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  // Generated tokens already known on the host: output minus the placeholders.
  int64_t num_final_output_tokens() const { return num_output_tokens() - num_placeholder_tokens; }
  // Tokens whose K/V are computed or being computed: where the next step starts.
  int64_t num_scheduled_tokens() const { return num_computed_tokens + num_inflight_tokens; }
  std::span<const int32_t> prompt_ids() const;
  std::span<const int32_t> output_ids() const;  // ends with the placeholders, if any
  int32_t last_token() const;
  int64_t num_blocks() const;             // ceil(num_tokens / bs)
  int64_t last_block_num_tokens() const;  // tokens in the last logical block, in [1, bs]
  // Tokens of logical block i (a view into token_ids: invalidated by append_token).
  std::span<const int32_t> block_tokens(int64_t i) const;
  void append_token(int32_t id);
  bool is_finished() const { return status == SequenceStatus::kFinished; }
  bool has_first_token() const { return first_token_time != Clock::time_point{}; }

 private:
  int64_t id_;
  int64_t block_size_;
};

using SequencePtr = std::shared_ptr<Sequence>;

}  // namespace atom
