// Sampling on the GPU: the penalties and min_tokens mask, then greedy / temperature / top-k /
// top-p / min-p sampling with per-request seeds, copying back only token ids. The definition is
// the CPU Sampler's (runner/sampler.h, runner/sampling_math.h), implemented exactly: for the same
// logits, seed and counter both pick the same token.
//
// Parameters are plain structs of 4-byte fields (int32_t, uint32_t, float) so a runner can pack
// them into its int32 metadata staging buffer with memcpy. Launchers take raw device pointers and
// a stream; they never allocate or synchronize, so they can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace atom::cuda {

struct SampleRowParams {            // one per logits row
  float temperature;                // < 1e-5: greedy
  int32_t top_k;                    // <= 0 or >= vocab: off; 1: greedy
  float top_p;                      // 1: off
  float min_p;                      // 0: off
  uint32_t seed_lo, seed_hi;        // 64-bit seed
  uint32_t counter_lo, counter_hi;  // 64-bit counter: the token's position in the output
};
static_assert(sizeof(SampleRowParams) == 8 * 4);

// out[r] = the token sampled from logits[r, :] with params[r].
// logits: [rows, vocab] f32 (read only); params: [rows] device; out: [rows] int32 device.
// One block of 1024 threads per row; vocab up to kMaxSamplingVocab (2^21).
void launch_sample(const float* logits, int64_t rows, int64_t vocab, const SampleRowParams* params,
                   int32_t* out, cudaStream_t stream);

struct PenaltyRowParams {              // one per row that has penalties or a min_tokens mask
  int32_t logits_row;                  // row of logits to modify
  float repetition;                    // 1: off (HF/vLLM: each distinct prompt|output token once)
  float frequency, presence;           // 0: off (output tokens only; count-weighted / once)
  int32_t entries_begin, entries_end;  // range in `entries` (PenaltyEntry)
  int32_t inflight_index;        // -1, or index into `inflight_ids` of this row's in-flight output
                                 // token (an output token the host does not know yet; count +1)
  int32_t stop_begin, stop_end;  // range in `stop_ids` set to -inf (min_tokens active)
};
static_assert(sizeof(PenaltyRowParams) == 9 * 4);

struct PenaltyEntry {  // one distinct token seen by the sequence (distinct within a row)
  int32_t token;
  int32_t in_prompt;     // 0/1
  int32_t output_count;  // occurrences in the output (not counting the in-flight one)
};
static_assert(sizeof(PenaltyEntry) == 3 * 4);

// The CPU Sampler::apply_penalties with output = the host-known output + the in-flight token:
// repetition for every entry (and the in-flight token), frequency * count + presence for tokens
// with an output count > 0 (the in-flight one counted), then the stop ids set to -inf.
// Ids outside [0, vocab) are ignored, as on the CPU.
// logits: [*, vocab] f32 modified in place; rows: [num_rows]; entries: [*] indexed by the rows'
// ranges; inflight_ids: [*] indexed by inflight_index (may be null when no row has one);
// stop_ids: [*] indexed by the rows' stop ranges. One block per row; each distinct token is
// modified by one thread.
void launch_apply_penalties(float* logits, int64_t vocab, const PenaltyRowParams* rows,
                            int64_t num_rows, const PenaltyEntry* entries,
                            const int32_t* inflight_ids, const int32_t* stop_ids,
                            cudaStream_t stream);

}  // namespace atom::cuda
