#include "atom/runner/cuda/cuda_model_runner.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <exception>
#include <optional>
#include <unordered_map>

#include "atom/backends/cpu/quants.h"
#include "atom/backends/cuda/attention.h"
#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/gemm.h"
#include "atom/backends/cuda/norm.h"
#include "atom/backends/cuda/ops.h"
#include "atom/core/dtype.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/models/decoder.h"
#include "atom/runner/cuda/gather_ids.h"
#include "atom/runner/model_runner.h"
#include "atom/runner/sampler.h"

namespace atom {

namespace {

using bf16 = __nv_bfloat16;

// Steps whose ids, staging buffer and sampled-id buffer live at once: the engine keeps at most
// two steps in flight, one more slot is the step being planned.
constexpr int64_t kRing = 4;
constexpr size_t kAlign = 256;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Carves named buffers out of one allocation: a first pass with base == nullptr only measures.
class Arena {
 public:
  explicit Arena(char* base = nullptr) : base_(base) {}
  template <typename T>
  T* take(size_t count) {
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += align_up(count * sizeof(T));
    return p;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

// Shapes that size every buffer, from the model config and the runner's limits.
struct Dims {
  int64_t H, I, D, nh, nkv, q_size, kv_size, qkv_size, vocab, layers;
  int64_t max_tokens, max_seqs, max_blocks_per_seq;
};

Dims make_dims(const ModelConfig& c, int64_t block_size, int64_t max_tokens, int64_t max_seqs,
               int64_t max_model_len) {
  Dims d{};
  d.H = c.hidden_size;
  d.I = c.intermediate_size;
  d.D = c.head_dim;
  d.nh = c.num_attention_heads;
  d.nkv = c.num_key_value_heads;
  d.q_size = d.nh * d.D;
  d.kv_size = d.nkv * d.D;
  d.qkv_size = d.q_size + 2 * d.kv_size;
  d.vocab = c.vocab_size;
  d.layers = c.num_hidden_layers;
  d.max_tokens = max_tokens;
  d.max_seqs = std::min(max_seqs, max_tokens);  // a sequence has at least one token in a step
  d.max_blocks_per_seq = (max_model_len + block_size - 1) / block_size;
  return d;
}

// int32 entries of one step's metadata at most: tokens, positions, slots, cu_seqlens, seq_lens,
// block tables, logits rows, gather sources and destinations.
size_t max_meta_entries(const Dims& d) {
  return size_t(3 * d.max_tokens + 5 * d.max_seqs + 1 + d.max_seqs * d.max_blocks_per_seq);
}

// Activation, logits and metadata buffers of the workspace.
struct Activations {
  bf16 *residual, *h, *qkv, *q, *k, *v, *attn, *attn_out, *gate_up, *act, *mlp_out, *selected;
  float* logits;       // [max_seqs, vocab]
  int32_t* ids;        // [kRing, max_seqs]: sampled ids of the last kRing steps
  int32_t* meta;       // [max_meta_entries]
  void* attn_ws;       // paged attention split-KV partials
  size_t attn_ws_bytes;
};

Activations carve_activations(Arena& a, const Dims& d, int64_t max_model_len) {
  Activations x{};
  const int64_t T = d.max_tokens;
  x.residual = a.take<bf16>(size_t(T * d.H));
  x.h = a.take<bf16>(size_t(T * d.H));
  x.qkv = a.take<bf16>(size_t(T * d.qkv_size));
  x.q = a.take<bf16>(size_t(T * d.q_size));
  x.k = a.take<bf16>(size_t(T * d.kv_size));
  x.v = a.take<bf16>(size_t(T * d.kv_size));
  x.attn = a.take<bf16>(size_t(T * d.q_size));
  x.attn_out = a.take<bf16>(size_t(T * d.H));
  x.gate_up = a.take<bf16>(size_t(T * 2 * d.I));
  x.act = a.take<bf16>(size_t(T * d.I));
  x.mlp_out = a.take<bf16>(size_t(T * d.H));
  x.selected = a.take<bf16>(size_t(d.max_seqs * d.H));
  x.logits = a.take<float>(size_t(d.max_seqs * d.vocab));
  x.ids = a.take<int32_t>(size_t(kRing * d.max_seqs));
  x.meta = a.take<int32_t>(max_meta_entries(d));
  x.attn_ws_bytes = cuda::paged_attention_max_workspace_bytes(d.max_seqs, d.nh, d.nkv, d.D,
                                                              max_model_len);
  x.attn_ws = a.take<char>(x.attn_ws_bytes);
  return x;
}

// bf16 weights of one layer on the device.
struct DeviceLayer {
  bf16 *attn_norm, *ffn_norm, *q_norm, *k_norm;
  bf16 *qkv, *qkv_bias, *o, *o_bias, *gate_up, *gate_up_bias, *down, *down_bias;
  bf16 *k_cache, *v_cache;  // [num_blocks, block_size, nkv, D]
};

// Elements of every weight, as uploaded (stacked qkv and gate_up).
size_t weight_elements(const ModelConfig& c, const Dims& d) {
  size_t per_layer = size_t(2 * d.H + d.H * d.qkv_size + d.qkv_size + d.q_size * d.H + d.H +
                            2 * d.I * d.H + 2 * d.I + d.I * d.H + d.H + 2 * d.D);
  size_t n = size_t(d.layers) * per_layer + size_t(d.vocab * d.H) + size_t(d.H);
  if (!c.tie_word_embeddings) n += size_t(d.vocab * d.H);
  return n;
}

uint16_t to_bf16_bits(float x) { return f32_to_bf16(x); }

// Rows of the parts, dequantized to f32 and rounded to bf16, stacked in order.
std::vector<uint16_t> host_bf16(std::initializer_list<const cpu::QMatrix*> parts) {
  size_t total = 0;
  int64_t cols = -1;
  for (const cpu::QMatrix* m : parts) {
    ATOM_CHECK(m->data != nullptr, kInternal, "a weight matrix to upload is missing");
    ATOM_CHECK(cols < 0 || m->cols == cols, kInternal, "stacked parts of different widths");
    cols = m->cols;
    total += size_t(m->rows * m->cols);
  }
  std::vector<uint16_t> out(total);
  size_t at = 0;
  for (const cpu::QMatrix* m : parts) {
    const cpu::QMatrix& w = *m;
#pragma omp parallel
    {
      std::vector<float> row(size_t(w.cols));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < w.rows; ++r) {
        cpu::dequantize_row(w.type, w.row(r), row.data(), w.cols);
        uint16_t* dst = out.data() + at + size_t(r * w.cols);
        for (int64_t c = 0; c < w.cols; ++c) dst[c] = to_bf16_bits(row[size_t(c)]);
      }
    }
    at += size_t(w.rows * w.cols);
  }
  return out;
}

std::vector<uint16_t> host_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = to_bf16_bits(v[i]);
  return out;
}

// The sampler path a request takes: the GPU's argmax unless something only the host does.
bool gpu_greedy(const SamplingParams& p) {
  return p.greedy() && p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f &&
         p.repetition_penalty == 1.0f && p.min_tokens == 0;
}

}  // namespace

CudaMemoryPlan cuda_memory_plan(const ModelConfig& cfg, int64_t block_size,
                                int64_t max_num_batched_tokens, int64_t max_num_seqs,
                                int64_t max_model_len) {
  const Dims d =
      make_dims(cfg, block_size, max_num_batched_tokens, max_num_seqs, max_model_len);
  CudaMemoryPlan p;
  p.weight_bytes = weight_elements(cfg, d) * sizeof(bf16);
  Arena measure;
  carve_activations(measure, d, max_model_len);
  p.workspace_bytes = measure.used() + cuda::Gemm::kDefaultWorkspaceBytes;
  p.kv_block_bytes = size_t(2 * d.layers * block_size * d.kv_size) * sizeof(bf16);
  return p;
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

int64_t cuda_num_kv_blocks(const ModelConfig& cfg, int64_t block_size,
                           int64_t max_num_batched_tokens, int64_t max_num_seqs,
                           int64_t max_model_len, double utilization, int device) {
  ATOM_CHECK(utilization > 0.0 && utilization <= 1.0, kInvalidArgument,
             "--gpu-memory-utilization must be in (0, 1], got {}", utilization);
  ATOM_CHECK(cuda_device_count() > device, kUnsupported,
             "device 'cuda': no CUDA device {} is visible", device);
  ATOM_CUDA_CHECK(cudaSetDevice(device));
  size_t free_bytes = 0, total_bytes = 0;
  ATOM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const CudaMemoryPlan p =
      cuda_memory_plan(cfg, block_size, max_num_batched_tokens, max_num_seqs, max_model_len);
  const double budget = utilization * double(total_bytes);
  const double used_before = double(total_bytes - free_bytes);  // context, other processes
  const double kv_bytes =
      budget - used_before - double(p.weight_bytes) - double(p.workspace_bytes);
  const int64_t blocks = kv_bytes > 0 ? int64_t(kv_bytes / double(p.kv_block_bytes)) : 0;
  constexpr double kGiB = double(size_t(1) << 30);
  ATOM_LOG_INFO(
      "GPU memory budget: {:.2f} GiB ({:.2f} of {:.2f} GiB): in use before {:.2f} GiB, weights "
      "{:.2f} GiB, activations {:.2f} GiB, KV {} blocks = {:.2f} GiB = {} tokens of KV",
      budget / kGiB, utilization, double(total_bytes) / kGiB, used_before / kGiB,
      double(p.weight_bytes) / kGiB, double(p.workspace_bytes) / kGiB, blocks,
      double(blocks) * double(p.kv_block_bytes) / kGiB, blocks * block_size);
  ATOM_CHECK(blocks > 0, kInvalidArgument,
             "no GPU memory left for the KV cache: {:.2f} GiB of weights and {:.2f} GiB of "
             "workspace exceed {} of the GPU's {:.2f} GiB; raise --gpu-memory-utilization or "
             "lower --max-num-batched-tokens / --max-num-seqs",
             double(p.weight_bytes) / kGiB, double(p.workspace_bytes) / kGiB, utilization,
             double(total_bytes) / kGiB);
  return blocks;
}

struct CudaModelRunner::Impl {
  // A submitted step, from launch to collect.
  struct Step {
    int64_t number = 0;
    size_t num_sampled = 0;
    cudaEvent_t done = nullptr;  // events[number % kRing]: after the copy of its ids to the host
    std::exception_ptr error;
    bool synchronous = false;  // sampled on the host: its ids are final already
  };
  // Where a sequence's latest sampled id is: the step that sampled it and its row there.
  struct IdRecord {
    int64_t step = 0;
    int64_t row = 0;
  };
  // The host plan of one step.
  struct Plan {
    ForwardBatch batch;
    std::vector<int32_t> gather_src, gather_dst;  // ids ring index, token row
    int64_t max_q_len = 0, max_seq_len = 0;
  };

  CudaRunnerConfig rc;
  ModelConfig cfg;
  DecoderVariant variant;
  Dims d{};
  cudaStream_t stream = nullptr;
  std::unique_ptr<cuda::Gemm> gemm;
  std::vector<void*> device_allocs;
  void* pinned = nullptr;

  // Weights.
  bf16 *embed = nullptr, *lm_head = nullptr, *final_norm = nullptr;
  float* inv_freq = nullptr;  // [rotary_dim / 2]
  float attention_factor = 1.0f;
  std::vector<DeviceLayer> layers;
  // Workspace.
  Activations act{};
  // Pinned host buffers, kRing of each: step metadata and sampled ids.
  int32_t* staging[kRing] = {};
  int32_t* host_ids[kRing] = {};
  cudaEvent_t events[kRing] = {};  // the end of each ring slot's step
  std::vector<float> host_logits;  // [vocab] one row at a time, host sampling path

  // Caller's thread only.
  std::unordered_map<int64_t, Sampler> samplers;
  std::unordered_map<int64_t, IdRecord> last_id;
  std::deque<Step> inflight;
  int64_t num_submitted = 0;

  template <typename T>
  T* device_alloc(size_t count) {
    void* p = nullptr;
    ATOM_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(count * sizeof(T), 1)));
    device_allocs.push_back(p);
    return static_cast<T*>(p);
  }
  bf16* upload(const std::vector<uint16_t>& host) {
    bf16* p = device_alloc<bf16>(host.size());
    ATOM_CUDA_CHECK(cudaMemcpy(p, host.data(), host.size() * sizeof(uint16_t),
                               cudaMemcpyHostToDevice));
    return p;
  }
  bf16* upload_or_null(const std::vector<float>& v) {
    return v.empty() ? nullptr : upload(host_bf16(v));
  }

  Impl(const Model& model, const CudaRunnerConfig& config);
  ~Impl();

  Plan plan(std::span<const StepSeq> seqs) const;
  // Uploads the plan through staging[slot] and enqueues the forward; logits of the sampling rows
  // end in act.logits.
  void launch_forward(const Plan& p, int64_t slot);
  void sync() { ATOM_CUDA_CHECK(cudaStreamSynchronize(stream)); }
  void submit(std::span<const StepSeq> seqs);
  std::vector<int32_t> collect();
  int32_t host_id_of(const IdRecord& r) const {
    return host_ids[r.step % kRing][r.row];
  }
};

CudaModelRunner::Impl::Impl(const Model& model, const CudaRunnerConfig& config)
    : rc(config), cfg(model.config()) {
  const DecoderParts parts = decoder_parts(model);
  ATOM_CHECK(parts.weights != nullptr, kUnsupported,
             "device 'cuda' runs decoder models (Llama, Qwen3); {} is not one",
             cfg.architecture);
  ATOM_CHECK(rc.num_blocks > 0 && rc.block_size > 0 && rc.max_num_batched_tokens > 0 &&
                 rc.max_num_seqs > 0 && rc.max_model_len > 0,
             kInvalidArgument,
             "CUDA runner limits must be positive: {} blocks of {}, {} batched tokens, {} seqs, "
             "max_model_len {}",
             rc.num_blocks, rc.block_size, rc.max_num_batched_tokens, rc.max_num_seqs,
             rc.max_model_len);
  ATOM_CHECK(cfg.head_dim == 64 || cfg.head_dim == 128, kUnsupported,
             "device 'cuda': head_dim {} (the attention kernels take 64 or 128)", cfg.head_dim);
  ATOM_CHECK(cfg.hidden_act == "silu", kUnsupported, "device 'cuda': activation {}",
             cfg.hidden_act);
  ATOM_CHECK(cuda_device_count() > rc.device, kUnsupported,
             "device 'cuda': no CUDA device {} is visible", rc.device);
  ATOM_CUDA_CHECK(cudaSetDevice(rc.device));
  variant = parts.variant;
  d = make_dims(cfg, rc.block_size, rc.max_num_batched_tokens, rc.max_num_seqs,
                rc.max_model_len);
  ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  gemm = std::make_unique<cuda::Gemm>();

  // Weights: dequantized, bf16, stacked as the CPU stacks them.
  const DecoderWeights& w = *parts.weights;
  embed = upload(host_bf16({&w.embed}));
  lm_head = w.lm_head.data == w.embed.data ? embed : upload(host_bf16({&w.lm_head}));
  final_norm = upload(host_bf16(w.final_norm));
  ATOM_CHECK(parts.rope != nullptr && parts.rope->inv_freq.size() == size_t(cfg.rotary_dim / 2),
             kInternal, "rotary table of {} frequencies for rotary_dim {}",
             parts.rope ? parts.rope->inv_freq.size() : 0, cfg.rotary_dim);
  inv_freq = device_alloc<float>(parts.rope->inv_freq.size());
  ATOM_CUDA_CHECK(cudaMemcpy(inv_freq, parts.rope->inv_freq.data(),
                             parts.rope->inv_freq.size() * sizeof(float),
                             cudaMemcpyHostToDevice));
  attention_factor = parts.rope->attention_factor;
  const size_t cache_elems = size_t(rc.num_blocks * rc.block_size * d.kv_size);
  for (const DecoderLayerWeights& L : w.layers) {
    DeviceLayer dl{};
    dl.attn_norm = upload(host_bf16(L.attn_norm));
    dl.ffn_norm = upload(host_bf16(L.ffn_norm));
    dl.q_norm = upload_or_null(L.q_norm);
    dl.k_norm = upload_or_null(L.k_norm);
    dl.qkv = L.qkv.data ? upload(host_bf16({&L.qkv})) : upload(host_bf16({&L.q, &L.k, &L.v}));
    dl.qkv_bias = upload_or_null(L.qkv_bias);
    dl.o = upload(host_bf16({&L.o}));
    dl.o_bias = upload_or_null(L.o_bias);
    dl.gate_up =
        L.gate_up.data ? upload(host_bf16({&L.gate_up})) : upload(host_bf16({&L.gate, &L.up}));
    dl.gate_up_bias = upload_or_null(L.gate_up_bias);
    dl.down = upload(host_bf16({&L.down}));
    dl.down_bias = upload_or_null(L.down_bias);
    dl.k_cache = device_alloc<bf16>(cache_elems);
    dl.v_cache = device_alloc<bf16>(cache_elems);
    layers.push_back(dl);
  }
  ATOM_CHECK(!variant.qk_norm || (layers.empty() || layers[0].q_norm != nullptr), kInternal,
             "a q/k-norm model without q/k norm weights");

  // Workspace: one allocation carved into the activation, logits and metadata buffers.
  Arena measure;
  carve_activations(measure, d, rc.max_model_len);
  Arena carve(device_alloc<char>(measure.used()));
  act = carve_activations(carve, d, rc.max_model_len);
  const size_t meta = max_meta_entries(d);
  const size_t pinned_bytes = size_t(kRing) * (meta + size_t(d.max_seqs)) * sizeof(int32_t);
  ATOM_CUDA_CHECK(cudaMallocHost(&pinned, pinned_bytes));
  for (int64_t i = 0; i < kRing; ++i) {
    staging[i] = static_cast<int32_t*>(pinned) + size_t(i) * meta;
    host_ids[i] = static_cast<int32_t*>(pinned) + size_t(kRing) * meta + size_t(i * d.max_seqs);
  }
  for (cudaEvent_t& e : events)
    ATOM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  host_logits.resize(size_t(d.vocab));
  ATOM_CUDA_CHECK(cudaMemsetAsync(act.ids, 0, size_t(kRing * d.max_seqs) * sizeof(int32_t),
                                  stream));
  sync();
}

CudaModelRunner::Impl::~Impl() {
  if (stream) (void)cudaStreamSynchronize(stream);
  for (cudaEvent_t e : events)
    if (e) (void)cudaEventDestroy(e);
  gemm.reset();
  for (void* p : device_allocs) (void)cudaFree(p);
  if (pinned) (void)cudaFreeHost(pinned);
  if (stream) (void)cudaStreamDestroy(stream);
}

CudaModelRunner::Impl::Plan CudaModelRunner::Impl::plan(std::span<const StepSeq> seqs) const {
  Plan p;
  const int64_t bs = rc.block_size;
  ATOM_CHECK(!seqs.empty() && int64_t(seqs.size()) <= d.max_seqs, kInvalidArgument,
             "a step of {} sequences (the CUDA runner holds 1 to {})", seqs.size(), d.max_seqs);
  ForwardBatch& b = p.batch;
  int64_t max_blocks = 1;
  for (const StepSeq& s : seqs) max_blocks = std::max<int64_t>(max_blocks, s.block_table.size());
  ATOM_CHECK(max_blocks <= d.max_blocks_per_seq, kInvalidArgument,
             "a block table of {} blocks (max_model_len allows {})", max_blocks,
             d.max_blocks_per_seq);
  b.max_blocks_per_seq = max_blocks;
  b.cu_seqlens_q.push_back(0);
  for (const StepSeq& s : seqs) {
    ATOM_ASSERT(s.count > 0 && s.start + s.count <= int64_t(s.token_ids.size()));
    ATOM_ASSERT(int64_t(s.block_table.size()) * bs >= s.start + s.count);
    const int64_t placeholder = s.last_token_in_flight ? int64_t(s.token_ids.size()) - 1 : -1;
    for (int64_t pos = s.start; pos < s.start + s.count; ++pos) {
      const int32_t block = s.block_table[size_t(pos / bs)];
      ATOM_CHECK(block >= 0 && block < rc.num_blocks, kInternal,
                 "sequence {} uses KV block {} of {}", s.seq_id, block, rc.num_blocks);
      int32_t id = s.token_ids[size_t(pos)];
      if (pos == placeholder) {
        auto it = last_id.find(s.seq_id);
        ATOM_CHECK(it != last_id.end(), kInternal,
                   "sequence {} has a token in flight but no step sampled one for it", s.seq_id);
        ATOM_CHECK(it->second.step > num_submitted - kRing, kInternal,
                   "sequence {}: its in-flight token is from a step too old to gather",
                   s.seq_id);
        p.gather_src.push_back(int32_t((it->second.step % kRing) * d.max_seqs + it->second.row));
        p.gather_dst.push_back(int32_t(b.token_ids.size()));
        id = 0;  // replaced on the device before the embedding reads it
      }
      ATOM_CHECK(id >= 0 && id < d.vocab, kInternal,
                 "input token id {} outside the vocabulary ({})", id, d.vocab);
      b.token_ids.push_back(id);
      b.positions.push_back(int32_t(pos));
      b.slot_mapping.push_back(int32_t(int64_t(block) * bs + pos % bs));
    }
    b.cu_seqlens_q.push_back(int32_t(b.token_ids.size()));
    b.seq_lens.push_back(int32_t(s.start + s.count));
    b.block_tables.insert(b.block_tables.end(), s.block_table.begin(), s.block_table.end());
    b.block_tables.resize(b.seq_lens.size() * size_t(max_blocks), 0);  // pad: never read
    if (s.sample) b.logits_indices.push_back(int32_t(b.token_ids.size()) - 1);
    p.max_q_len = std::max(p.max_q_len, s.count);
    p.max_seq_len = std::max(p.max_seq_len, s.start + s.count);
  }
  ATOM_CHECK(b.num_tokens() <= d.max_tokens, kInvalidArgument,
             "a step of {} tokens (the CUDA runner holds {}: max_num_batched_tokens)",
             b.num_tokens(), d.max_tokens);
  ATOM_CHECK(p.max_seq_len <= rc.max_model_len, kInvalidArgument,
             "a context of {} tokens beyond max_model_len {}", p.max_seq_len, rc.max_model_len);
  return p;
}

void CudaModelRunner::Impl::launch_forward(const Plan& p, int64_t slot) {
  const ForwardBatch& b = p.batch;
  const int64_t T = b.num_tokens(), S = b.num_seqs(), R = int64_t(b.logits_indices.size());
  const int64_t G = int64_t(p.gather_src.size());
  // Pack the metadata into this step's staging buffer; one copy uploads it.
  int32_t* host = staging[slot];
  size_t at = 0;
  auto pack = [&](const std::vector<int32_t>& v) {
    const size_t offset = at;
    std::memcpy(host + at, v.data(), v.size() * sizeof(int32_t));
    at += v.size();
    return act.meta + offset;
  };
  int32_t* token_ids = pack(b.token_ids);
  const int32_t* positions = pack(b.positions);
  const int32_t* slots = pack(b.slot_mapping);
  const int32_t* cu_seqlens = pack(b.cu_seqlens_q);
  const int32_t* seq_lens = pack(b.seq_lens);
  const int32_t* block_tables = pack(b.block_tables);
  const int32_t* logits_rows = pack(b.logits_indices);
  const int32_t* gather_src = pack(p.gather_src);
  const int32_t* gather_dst = pack(p.gather_dst);
  ATOM_ASSERT(at <= max_meta_entries(d));
  ATOM_CUDA_CHECK(cudaMemcpyAsync(act.meta, host, at * sizeof(int32_t), cudaMemcpyHostToDevice,
                                  stream));
  cuda::launch_gather_ids(act.ids, kRing * d.max_seqs, gather_src, gather_dst, G, token_ids, T,
                          stream);

  const float eps = float(cfg.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(float(d.D));
  const int64_t H = d.H, I = d.I;
  const cuda::RopeArgs rope{positions, inv_freq, attention_factor, cfg.rotary_dim};
  cuda::PagedAttentionBatch attn{cu_seqlens, seq_lens, block_tables, S, T, b.max_blocks_per_seq,
                                 p.max_q_len, p.max_seq_len};
  const size_t ws_bytes = cuda::paged_attention_workspace_bytes(S, d.nh, d.nkv, d.D, p.max_q_len,
                                                                p.max_seq_len);
  ATOM_ASSERT(ws_bytes <= act.attn_ws_bytes);

  cuda::launch_embedding(embed, d.vocab, H, token_ids, act.residual, T, stream);  // [T, H]
  for (int64_t l = 0; l < d.layers; ++l) {
    const DeviceLayer& L = layers[size_t(l)];
    // --- attention block ---
    if (l == 0)
      cuda::launch_rms_norm(act.residual, L.attn_norm, act.h, T, H, eps, stream);
    else  // residual += mlp_out; h = norm(residual)
      cuda::launch_add_rms_norm(act.mlp_out, act.residual, L.attn_norm, act.h, T, H, eps, stream);
    gemm->launch(act.h, L.qkv, L.qkv_bias, act.qkv, T, d.qkv_size, H, stream);  // [T, q|k|v]
    cuda::launch_split_qkv(act.qkv, act.q, act.k, act.v, T, d.q_size, d.kv_size, stream);
    if (variant.qk_norm) {  // per head: rows of D values
      cuda::launch_rms_norm(act.q, L.q_norm, act.q, T * d.nh, d.D, eps, stream);
      cuda::launch_rms_norm(act.k, L.k_norm, act.k, T * d.nkv, d.D, eps, stream);
    }
    const cuda::KvCacheWrite write{slots, L.k_cache, L.v_cache, rc.num_blocks * rc.block_size};
    cuda::launch_rope_and_cache(act.q, act.k, act.v, rope, write, T, d.nh, d.nkv, d.D, stream);
    const cuda::PagedKvCache cache{L.k_cache, L.v_cache, rc.num_blocks, rc.block_size, d.nkv,
                                   d.D};
    cuda::paged_attention(act.q, d.nh, cache, attn, scale, act.attn, act.attn_ws, ws_bytes,
                          stream);  // [T, nh, D]
    gemm->launch(act.attn, L.o, L.o_bias, act.attn_out, T, H, d.q_size, stream);  // [T, H]
    // --- MLP block ---
    cuda::launch_add_rms_norm(act.attn_out, act.residual, L.ffn_norm, act.h, T, H, eps, stream);
    gemm->launch(act.h, L.gate_up, L.gate_up_bias, act.gate_up, T, 2 * I, H, stream);  // [T, 2I]
    cuda::launch_silu_and_mul(act.gate_up, act.act, T, I, stream);                    // [T, I]
    gemm->launch(act.act, L.down, L.down_bias, act.mlp_out, T, H, I, stream);         // [T, H]
  }
  // Final norm, then the LM head only for the rows that need logits.
  cuda::launch_add_rms_norm(act.mlp_out, act.residual, final_norm, act.h, T, H, eps, stream);
  cuda::launch_embedding(act.h, T, H, logits_rows, act.selected, R, stream);  // [R, H]
  gemm->launch(act.selected, lm_head, static_cast<const float*>(nullptr), act.logits, R, d.vocab,
               H, stream);  // [R, vocab] f32
}

void CudaModelRunner::Impl::submit(std::span<const StepSeq> seqs) {
  ATOM_CHECK(int64_t(inflight.size()) < kRing - 1, kInternal,
             "{} steps in flight: the CUDA runner keeps at most {}", inflight.size(), kRing - 1);
  const int64_t number = num_submitted;
  const int64_t slot = number % kRing;
  Plan p = plan(seqs);  // a bad plan throws here, before anything is recorded
  // Samplers for the first sample of each sequence, and which rows the host samples.
  std::vector<size_t> host_rows;  // index into the sampling rows
  std::vector<const StepSeq*> sampling;
  for (const StepSeq& s : seqs) {
    if (!s.sample) continue;
    if (!samplers.contains(s.seq_id)) {
      ATOM_CHECK(s.params != nullptr, kInvalidArgument,
                 "sequence {} samples for the first time without sampling parameters", s.seq_id);
      samplers.emplace(s.seq_id, Sampler(*s.params));
    }
    if (!gpu_greedy(samplers.at(s.seq_id).params())) host_rows.push_back(sampling.size());
    sampling.push_back(&s);
  }
  Step step;
  step.number = number;
  step.num_sampled = sampling.size();
  try {
    launch_forward(p, slot);
    int32_t* ids_d = act.ids + slot * d.max_seqs;
    const int64_t R = int64_t(sampling.size());
    cuda::launch_argmax(act.logits, ids_d, R, d.vocab, stream);
    if (!host_rows.empty()) {
      // The host sampler path (GPU sampling will replace it): the step runs to its end here,
      // so every earlier step's ids are final and the penalties see the in-flight token.
      ATOM_CUDA_CHECK(cudaMemcpyAsync(host_ids[slot], ids_d, size_t(R) * sizeof(int32_t),
                                      cudaMemcpyDeviceToHost, stream));
      sync();
      for (size_t row : host_rows) {
        const StepSeq& s = *sampling[row];
        ATOM_CUDA_CHECK(cudaMemcpy(host_logits.data(), act.logits + row * size_t(d.vocab),
                                   size_t(d.vocab) * sizeof(float), cudaMemcpyDeviceToHost));
        std::vector<int32_t> tokens(s.token_ids.begin(), s.token_ids.end());
        if (s.last_token_in_flight) tokens.back() = host_id_of(last_id.at(s.seq_id));
        const std::span<const int32_t> all(tokens);
        Sampler& sampler = samplers.at(s.seq_id);
        sampler.apply_penalties(host_logits.data(), d.vocab,
                                all.first(size_t(s.num_prompt_tokens)),
                                all.subspan(size_t(s.num_prompt_tokens)));
        host_ids[slot][row] = sampler.sample(host_logits.data(), d.vocab);
      }
      // Later steps gather these ids on the device.
      ATOM_CUDA_CHECK(cudaMemcpyAsync(ids_d, host_ids[slot], size_t(R) * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, stream));
      step.synchronous = true;
    } else if (R > 0) {
      ATOM_CUDA_CHECK(cudaMemcpyAsync(host_ids[slot], ids_d, size_t(R) * sizeof(int32_t),
                                      cudaMemcpyDeviceToHost, stream));
    }
    ATOM_CUDA_CHECK(cudaEventRecord(events[slot], stream));
    step.done = events[slot];
  } catch (...) {
    step.error = std::current_exception();
  }
  for (size_t row = 0; row < sampling.size(); ++row)
    last_id[sampling[row]->seq_id] = IdRecord{number, int64_t(row)};
  inflight.push_back(step);
  ++num_submitted;
}

std::vector<int32_t> CudaModelRunner::Impl::collect() {
  ATOM_CHECK(!inflight.empty(), kInternal, "collect() with no step in flight");
  Step step = inflight.front();
  inflight.pop_front();
  std::exception_ptr error = step.error;
  if (step.done) {
    const cudaError_t e = cudaEventSynchronize(step.done);
    if (!error && e != cudaSuccess) {
      try {
        ATOM_CUDA_CHECK(e);
      } catch (...) {
        error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
  const int32_t* ids = host_ids[step.number % kRing];
  return std::vector<int32_t>(ids, ids + step.num_sampled);
}

CudaModelRunner::CudaModelRunner(const Model& model, const CudaRunnerConfig& config)
    : impl_(std::make_unique<Impl>(model, config)) {}

CudaModelRunner::~CudaModelRunner() = default;

std::vector<int32_t> CudaModelRunner::execute(std::span<const StepSeq> seqs) {
  check_execute(seqs);
  if (seqs.empty()) return {};
  impl_->submit(seqs);
  return impl_->collect();
}

void CudaModelRunner::submit(std::span<const StepSeq> seqs) { impl_->submit(seqs); }

std::vector<int32_t> CudaModelRunner::collect() { return impl_->collect(); }

int64_t CudaModelRunner::num_in_flight() const { return int64_t(impl_->inflight.size()); }

void CudaModelRunner::release(int64_t seq_id) {
  // Samplers run on this thread at submit, so nothing in flight still needs them; a step in
  // flight gathers on the device, from ids it does not look up here.
  impl_->samplers.erase(seq_id);
  impl_->last_id.erase(seq_id);
}

int64_t CudaModelRunner::num_blocks() const { return impl_->rc.num_blocks; }

int64_t CudaModelRunner::block_size() const { return impl_->rc.block_size; }

std::vector<float> CudaModelRunner::forward_logits(std::span<const StepSeq> seqs) {
  ATOM_CHECK(num_in_flight() == 0, kInternal, "forward_logits() with steps in flight");
  for (const StepSeq& s : seqs)
    ATOM_CHECK(!s.last_token_in_flight, kInvalidArgument,
               "sequence {} has a token in flight: only submit() can run it", s.seq_id);
  const Impl::Plan p = impl_->plan(seqs);
  const int64_t slot = impl_->num_submitted % kRing;
  impl_->launch_forward(p, slot);
  const size_t n = p.batch.logits_indices.size() * size_t(impl_->d.vocab);
  std::vector<float> logits(n);
  ATOM_CUDA_CHECK(cudaMemcpyAsync(logits.data(), impl_->act.logits, n * sizeof(float),
                                  cudaMemcpyDeviceToHost, impl_->stream));
  impl_->sync();
  return logits;
}

}  // namespace atom
