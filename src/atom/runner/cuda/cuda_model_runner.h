// CudaModelRunner: the Runner (runner.h) of the CUDA backend. It runs a DecoderModel (Llama,
// Qwen3) on one GPU: bf16 weights uploaded once from the CPU model's (any type the CPU reads,
// dequantized), a bf16 paged KV pool, and activation, metadata and logits buffers all allocated
// at construction, sized by max_num_batched_tokens and max_num_seqs, so a step allocates
// nothing. A step: the host plans the batch (ModelRunner::plan's layout), packs its metadata
// into a pinned staging buffer and uploads it with one asynchronous copy, then the forward runs
// on the runner's stream (embedding, per layer norm, QKV GEMM, Qwen3 q/k norm, RoPE fused with
// the KV write, paged attention, O GEMM, add+norm, gate_up GEMM, SiLU-and-mul, down GEMM; final
// norm and the LM head only for the rows that sample).
//
// Sampling: greedy requests (without penalties or min_tokens) are sampled on the GPU (argmax)
// and only their ids come back. Other requests copy their logits rows back and use the host
// Sampler, penalties included, which makes that step synchronous; GPU sampling will replace
// this path.
//
// Deferred output: submit() launches the step and an asynchronous copy of its ids, collect()
// waits on the step's event. The runner keeps each sequence's last sampled id on the GPU (one
// slot per live sequence), so a decode input that is a placeholder for a token still being
// computed is gathered there by the step itself, as ATOM does.
//
// This header names no CUDA type, so the engine includes it without the CUDA toolkit's headers.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "atom/models/model.h"
#include "atom/runner/runner.h"

namespace atom {

struct StepSeq;

struct CudaRunnerConfig {
  int64_t num_blocks = 0;  // KV blocks in the pool
  int64_t block_size = 16;
  int64_t max_num_batched_tokens = 16384;  // tokens of one step: the activation workspace
  int64_t max_num_seqs = 512;              // sequences of one step: metadata and logits rows
  int64_t max_model_len = 8192;            // longest context: block tables, attention workspace
  int device = 0;                          // CUDA device ordinal
};

// Device memory the runner needs besides the KV pool, for the budget of --gpu-memory-utilization.
struct CudaMemoryPlan {
  size_t weight_bytes = 0;      // bf16 weights
  size_t workspace_bytes = 0;   // activations, logits, attention and GEMM workspaces, metadata
  size_t kv_block_bytes = 0;    // one block of every layer's K and V (bf16)
};
CudaMemoryPlan cuda_memory_plan(const ModelConfig& cfg, int64_t block_size,
                                int64_t max_num_batched_tokens, int64_t max_num_seqs,
                                int64_t max_model_len);

// KV blocks of `block_size` tokens that fit in `utilization` of the GPU's memory after what the
// device already uses, the weights and the workspace; logs the budget. kInvalidArgument when
// none fit.
int64_t cuda_num_kv_blocks(const ModelConfig& cfg, int64_t block_size,
                           int64_t max_num_batched_tokens, int64_t max_num_seqs,
                           int64_t max_model_len, double utilization, int device = 0);

// CUDA devices visible (0 when the driver or the device is absent).
int cuda_device_count();

class CudaModelRunner final : public Runner {
 public:
  // `model` must be a DecoderModel (kUnsupported otherwise); its weights are read once here and
  // the model is not used after the constructor returns.
  CudaModelRunner(const Model& model, const CudaRunnerConfig& config);
  ~CudaModelRunner() override;
  CudaModelRunner(const CudaModelRunner&) = delete;
  CudaModelRunner& operator=(const CudaModelRunner&) = delete;

  std::vector<int32_t> execute(std::span<const StepSeq> seqs) override;
  void submit(std::span<const StepSeq> seqs) override;
  std::vector<int32_t> collect() override;
  int64_t num_in_flight() const override;
  void release(int64_t seq_id) override;
  int64_t num_blocks() const override;
  int64_t block_size() const override;

  // Runs the forward of a step without sampling and returns the f32 logits of its sampling rows,
  // [rows, vocab] (for tests against the CPU model). No step may be in flight.
  std::vector<float> forward_logits(std::span<const StepSeq> seqs);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace atom
