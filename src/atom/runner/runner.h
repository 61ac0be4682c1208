// Runner: the backend-neutral boundary between the engine and a backend (ModelRunner on the
// CPU, CudaModelRunner on the GPU). The engine says which tokens of which sequences to compute
// this step (StepSeq, model_runner.h); the runner plans the batch, runs the model over the paged
// KV cache it owns and samples one token for each sequence that needs one.
//
// Contract (every implementation): execute() is synchronous; submit()/collect() pipeline the
// steps for deferred output (SPEC 3.4) in submission order, a decode input whose token a
// submitted, not yet collected step samples being a placeholder the runner replaces with its own
// record of that id (StepSeq::last_token_in_flight); release() forgets a finished sequence once
// every step submitted so far has run. This header names no backend type, so the engine builds
// without any GPU toolkit.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace atom {

struct StepSeq;

class Runner {
 public:
  virtual ~Runner() = default;

  // One sampled id per StepSeq with sample = true, in order. No step may be in flight.
  virtual std::vector<int32_t> execute(std::span<const StepSeq> seqs) = 0;
  // Starts a step and returns; everything it needs is copied out of `seqs`.
  virtual void submit(std::span<const StepSeq> seqs) = 0;
  // The oldest uncollected step's ids (as execute would), or the exception it failed with.
  virtual std::vector<int32_t> collect() = 0;
  virtual int64_t num_in_flight() const = 0;
  virtual void release(int64_t seq_id) = 0;

  virtual int64_t num_blocks() const = 0;
  virtual int64_t block_size() const = 0;

 protected:
  // execute()'s preconditions, for every backend: nothing in flight, no placeholder inputs.
  void check_execute(std::span<const StepSeq> seqs) const;
};

}  // namespace atom
