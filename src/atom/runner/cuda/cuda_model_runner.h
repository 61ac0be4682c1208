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
// Start-up (SPEC 3.7, 3.8): weights and workspace, then a worst-case warm-up (a prefill of
// max_num_batched_tokens over max_model_len sequences and a full decode batch, on a one-block
// KV pool) that loads every kernel and cuBLASLt plan; then, unless num_blocks is given, the KV
// pool takes what is left of gpu_memory_utilization after what the device uses by then and the
// CUDA graphs' measured memory; then the decode graphs are captured (one per capture size,
// largest first). The budget is logged.
//
// CUDA graphs: a step whose sequences all decode one token and sample, and whose batch fits a
// captured size, is padded to the smallest captured size >= its batch (padded rows: position 0,
// no KV write, empty context) and replayed; anything else runs eagerly. Its metadata sits at
// offsets that depend only on the captured size (the block tables last, their row stride read
// by the attention kernels from the device), so a replay needs only the one upload.
//
// Sampling runs on the GPU for every request (cuda/sampling.h: greedy, temperature, top-k,
// top-p, min-p, per-request seeds, repetition/frequency/presence penalties, min_tokens) and only
// the sampled ids come back. Penalties use the distinct tokens each sequence has seen, kept on
// the host and uploaded with the step; an in-flight token is read on the device.
//
// Deferred output: submit() launches the step and an asynchronous copy of its ids, collect()
// waits on the step's event. The runner keeps each sequence's last sampled id on the GPU (one
// slot per live sequence), so a decode input that is a placeholder for a token still being
// computed is gathered there by the step itself, as ATOM does.
//
// Tensor parallelism (SPEC 4.1, CudaRunnerConfig::tp_size > 1): one runner spans tp GPUs,
// devices device .. device + tp - 1, in this process. Each rank has a worker thread with its
// device current, its own stream, its shard of the weights (models/tp_layout.h: column-parallel
// QKV and gate_up, row-parallel O and down, vocabulary-parallel embedding and LM head with the
// vocabulary padded, KV heads replicated when there are fewer than ranks), its KV pool of its
// own KV heads and its own CUDA graphs, the NCCL collectives captured inside them. The ranks
// all-reduce the [T, H] outputs of the row-parallel GEMMs and of the embedding (bf16), then
// all-gather the LM head's logits; every rank samples the same gathered logits with the same
// parameters and seeds, so every rank holds the same ids for the next step's inputs without a
// broadcast in the step (collect() checks that the ranks agree). Host work (planning, sampling
// parameters, penalties, in-flight ids) is done once, by rank 0; the ranks only launch. The
// KV pool holds the same number of blocks on every rank: the fewest any rank's memory affords.
// With tp_size == 1 none of this exists: no NCCL, no threads, one stream, the same launches.
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
  int64_t num_blocks = 0;  // KV blocks in the pool; 0: from gpu_memory_utilization
  int64_t block_size = 16;
  int64_t max_num_batched_tokens = 16384;  // tokens of one step: the activation workspace
  int64_t max_num_seqs = 512;              // sequences of one step: metadata and logits rows
  int64_t max_model_len = 8192;            // longest context: block tables, attention workspace
  double gpu_memory_utilization = 0.9;     // with num_blocks == 0: share of the GPU's memory
  bool enforce_eager = false;              // no CUDA graphs
  // Decode batch sizes to capture (ATOM's default list); sizes above max_num_seqs are dropped.
  std::vector<int64_t> cudagraph_capture_sizes = {1, 2, 4, 8, 16, 32, 48, 64, 128, 256};
  int device = 0;  // CUDA device ordinal of tensor-parallel rank 0 (a DP replica's base device)
  // GPUs the model is split over (tensor parallelism): devices device .. device + tp_size - 1.
  // > 1 needs a build with NCCL.
  int64_t tp_size = 1;
  // ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION (SPEC 4.5): with tp_size > 1, run each all-reduce of a
  // row-parallel output and the residual add + RMSNorm after it as one fused kernel where one
  // exists (CudaModelRunner's allreduce_add_rms_norm), else as the NCCL all-reduce and then the
  // add + RMSNorm kernel.
  bool allreduce_rms_norm_fusion = true;
  // --kv_cache_dtype fp8: K and V stored as float8 e4m3 with per-tensor scales of 1.0 (vLLM's
  // and ATOM's default when a checkpoint carries none): half the bytes a token, twice the tokens.
  bool kv_cache_fp8 = false;
};

// Device memory the runner needs besides the KV pool and the graphs.
struct CudaMemoryPlan {
  size_t weight_bytes = 0;      // bf16 weights
  size_t workspace_bytes = 0;   // activations, logits, attention and GEMM workspaces, metadata
  size_t kv_block_bytes = 0;    // one block of every layer's K and V (bf16, or fp8)
};
CudaMemoryPlan cuda_memory_plan(const ModelConfig& cfg, int64_t block_size,
                                int64_t max_num_batched_tokens, int64_t max_num_seqs,
                                int64_t max_model_len, bool kv_cache_fp8 = false);

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
  // [rows, vocab] (for tests against the CPU model), through a CUDA graph when a step would
  // use one. No step may be in flight.
  std::vector<float> forward_logits(std::span<const StepSeq> seqs);

  // The decode batch sizes captured as CUDA graphs, ascending (empty when eager).
  std::vector<int64_t> graph_sizes() const;
  // Steps run so far through a graph replay and eagerly (forward_logits included).
  int64_t num_graph_steps() const;
  int64_t num_eager_steps() const;

  // Tensor parallelism: the ranks, the KV blocks each rank's memory afforded at start-up (the
  // pool of every rank holds num_blocks(), the least of them), and the ids each rank sampled in
  // the last step collect() returned, rank by rank (tests check that they agree).
  int64_t tp_size() const;
  std::vector<int64_t> kv_blocks_by_rank() const;
  std::vector<std::vector<int32_t>> last_ids_by_rank() const;

 private:
  struct Impl;     // one rank: its device, stream, weights, KV pool, graphs
  struct TpGroup;  // the ranks, their threads and communicators (tp_size > 1 only)
  std::unique_ptr<Impl> impl_;   // rank 0, which also keeps the host state of the steps
  std::unique_ptr<TpGroup> tp_;  // null with one GPU
};

}  // namespace atom
