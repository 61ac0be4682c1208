#include "atom/runner/cuda/cuda_model_runner.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <exception>
#include <optional>
#include <random>
#include <unordered_map>

#include "atom/backends/cpu/quants.h"
#include "atom/backends/cuda/attention.h"
#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/gemm.h"
#include "atom/backends/cuda/norm.h"
#include "atom/backends/cuda/ops.h"
#include "atom/backends/cuda/sampling.h"
#include "atom/core/dtype.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/core/profiler.h"
#include "atom/models/decoder.h"
#include "atom/runner/cuda/cupti_trace.h"
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

// int32 words of a sampling row's parameters in the metadata.
constexpr size_t kSampleWords = sizeof(cuda::SampleRowParams) / sizeof(int32_t);
static_assert(sizeof(cuda::SampleRowParams) % sizeof(int32_t) == 0);
static_assert(sizeof(cuda::PenaltyRowParams) % sizeof(int32_t) == 0);
static_assert(sizeof(cuda::PenaltyEntry) % sizeof(int32_t) == 0);

// int32 words of one step's metadata at most: the block-table stride, tokens, positions, slots,
// cu_seqlens, seq_lens, logits rows, gather sources and destinations, block tables and the
// sampling rows' parameters.
size_t max_meta_entries(const Dims& d) {
  return size_t(2 + 3 * d.max_tokens + (6 + kSampleWords) * d.max_seqs +
                d.max_seqs * d.max_blocks_per_seq);
}

// Activation, logits and metadata buffers of the workspace.
struct Activations {
  bf16 *residual, *h, *qkv, *q, *attn, *attn_out, *gate_up, *act, *mlp_out, *selected;
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
  bf16 *k_cache, *v_cache;  // [num_blocks, block_size, nkv, D], views of the KV pool
};

// Elements of every weight, as uploaded (stacked qkv and gate_up).
size_t weight_elements(const ModelConfig& c, const Dims& d) {
  size_t per_layer = size_t(2 * d.H + d.H * d.qkv_size + d.qkv_size + d.q_size * d.H + d.H +
                            2 * d.I * d.H + 2 * d.I + d.I * d.H + d.H + 2 * d.D);
  size_t n = size_t(d.layers) * per_layer + size_t(d.vocab * d.H) + size_t(d.H);
  if (!c.tie_word_embeddings) n += size_t(d.vocab * d.H);
  return n;
}

// One weight row as bf16: copied when the checkpoint holds bf16 (no f32 round trip), else
// dequantized to f32 and rounded. `scratch` holds cols floats.
void row_to_bf16(const cpu::QMatrix& w, int64_t r, uint16_t* dst, std::vector<float>& scratch) {
  if (w.type == GgmlType::kBF16) {
    std::memcpy(dst, w.row(r), size_t(w.cols) * sizeof(uint16_t));
    return;
  }
  scratch.resize(size_t(w.cols));
  cpu::dequantize_row(w.type, w.row(r), scratch.data(), w.cols);
  for (int64_t c = 0; c < w.cols; ++c) dst[c] = f32_to_bf16(scratch[size_t(c)]);
}

std::vector<uint16_t> host_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = f32_to_bf16(v[i]);
  return out;
}

// Whether a request's logits need the penalty kernel: a penalty, or min_tokens masking its stop
// ids (decided per step, while the output is shorter than min_tokens).
bool has_penalties(const SamplingParams& p) {
  return p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f ||
         p.repetition_penalty != 1.0f;
}

constexpr double kGiB = double(size_t(1) << 30);

uint64_t random_seed() {
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ uint64_t(rd());
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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

struct CudaModelRunner::Impl {
  // A submitted step, from launch to collect.
  struct Step {
    int64_t number = 0;
    size_t num_sampled = 0;
    cudaEvent_t done = nullptr;  // events[number % kRing]: after the copy of its ids to the host
    std::exception_ptr error;
  };
  // Where a sequence's latest sampled id is: the step that sampled it and its row there.
  struct IdRecord {
    int64_t step = 0;
    int64_t row = 0;
  };
  // What the runner keeps per live sequence for sampling.
  struct SeqState {
    SamplingParams params;
    uint64_t seed = 0;  // the request's, or one drawn at its first sample
    // Penalties: the distinct tokens seen so far (prompt flag, output count), in first-seen
    // order, and how many of token_ids they cover (never the in-flight placeholder).
    std::unordered_map<int32_t, size_t> index;
    std::vector<cuda::PenaltyEntry> entries;
    size_t consumed = 0;
  };
  // The host plan of one step.
  struct Plan {
    ForwardBatch batch;
    std::vector<int32_t> gather_src, gather_dst;  // ids ring index, token row
    int64_t max_q_len = 0, max_seq_len = 0;
    int64_t graph_batch = 0;  // > 0: replay the graph of this batch size
  };
  // Where a step's metadata sits on the device, and the host facts its launches take. With a
  // graph, every offset but the sampling rows' depends only on the graph's batch size.
  struct Layout {
    const int32_t* bt_stride = nullptr;  // [1]
    int32_t* token_ids = nullptr;        // [T]
    const int32_t *positions = nullptr, *slots = nullptr;  // [T]
    const int32_t* cu_seqlens = nullptr;                   // [S + 1]
    const int32_t* seq_lens = nullptr;                     // [S]
    const int32_t* logits_rows = nullptr;                  // [R]
    const int32_t *gather_src = nullptr, *gather_dst = nullptr;  // [G]
    const int32_t* block_tables = nullptr;                       // [S, stride]
    const cuda::SampleRowParams* sample = nullptr;               // [sampled rows]
    int64_t T = 0, S = 0, R = 0, G = 0;
    int64_t max_blocks = 0;  // bound of the stride (attention's max_blocks_per_seq)
    int64_t max_q_len = 0, max_seq_len = 0;
    size_t words = 0;  // int32 words to upload
  };
  // A captured decode graph.
  struct Graph {
    int64_t batch = 0;
    cudaGraphExec_t exec = nullptr;
  };

  CudaRunnerConfig rc;
  ModelConfig cfg;
  DecoderVariant variant;
  Dims d{};
  cudaStream_t stream = nullptr;
  std::unique_ptr<cuda::Gemm> gemm;
  std::vector<void*> device_allocs;
  void* pinned = nullptr;
  size_t weight_bytes = 0, workspace_bytes = 0;
  size_t free_at_start = 0;  // device memory free before the runner allocated anything
  // What the profiler's memory counters show (ATOM_PROFILER_MORE=1).
  profiler::MemoryRecord weights_memory, workspace_memory, kv_memory;

  // Weights.
  bf16 *embed = nullptr, *lm_head = nullptr, *final_norm = nullptr;
  float* inv_freq = nullptr;  // [rotary_dim / 2]
  float attention_factor = 1.0f;
  std::vector<DeviceLayer> layers;
  // The KV pool: [layers][K, V][num_blocks, block_size, nkv, D]; kv_blocks is what the launches
  // see (1 during the warm-up's one-block pool).
  void* kv_pool = nullptr;
  int64_t kv_blocks = 0;
  // Workspace.
  Activations act{};
  // Pinned host buffers, kRing of each: step metadata and sampled ids.
  int32_t* staging[kRing] = {};
  int32_t* host_ids[kRing] = {};
  cudaEvent_t events[kRing] = {};  // the end of each ring slot's step
  // Penalty rows, entries and masked stop ids of a step: sized on demand (a step with
  // penalties may need more than the last), pinned staging per ring slot plus one device copy.
  std::vector<int32_t> extra_host;
  int32_t* extra_staging[kRing] = {};
  int32_t* extra_device = nullptr;
  size_t extra_capacity = 0;  // int32 words of each
  std::vector<Graph> graphs;  // ascending batch

  // Caller's thread only.
  std::unordered_map<int64_t, SeqState> seqs_state;
  std::unordered_map<int64_t, IdRecord> last_id;
  std::deque<Step> inflight;
  int64_t num_submitted = 0;
  int64_t graph_steps = 0, eager_steps = 0;

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
  // The parts' rows as bf16, stacked in order, into one new device matrix [sum rows, cols].
  bf16* upload_matrix(std::initializer_list<const cpu::QMatrix*> parts);
  // Pinned staging for upload_matrix: kUploadBuffers chunks, each reused once its copy is done.
  static constexpr int kUploadBuffers = 2;
  static constexpr size_t kUploadChunkBytes = size_t(64) << 20;
  void* upload_pinned = nullptr;
  cudaEvent_t upload_done[kUploadBuffers] = {};
  int64_t upload_chunks = 0;
  void free_upload_staging();

  Impl(const Model& model, const CudaRunnerConfig& config);
  ~Impl();
  void init(const DecoderParts& parts);
  void release_all();

  Plan plan(std::span<const StepSeq> seqs) const;
  // Packs the plan's metadata (and the sampling rows' parameters) into staging[slot] at the
  // layout of its graph or of an eager step, and uploads it.
  Layout upload_plan(const Plan& p, std::span<const cuda::SampleRowParams> sample, int64_t slot);
  // Enqueues the forward over an uploaded layout; logits of its R rows end in act.logits.
  void enqueue_forward(const Layout& L);
  // The forward of a planned step: a graph replay or the eager launches.
  void run_forward(const Plan& p, const Layout& L);
  void sync() { ATOM_CUDA_CHECK(cudaStreamSynchronize(stream)); }
  void submit(std::span<const StepSeq> seqs);
  std::vector<int32_t> collect();

  // Start-up phases.
  void point_layers_at_pool(int64_t blocks);
  void warm_up();
  Plan dummy_plan(int64_t num_seqs, int64_t len, int64_t graph_batch) const;
  cudaGraphExec_t capture(int64_t batch);
  void capture_graphs();
  size_t measure_graph_bytes();
  void size_and_allocate_kv();
  std::vector<int64_t> capture_sizes() const;
  // Grows the penalty buffers to hold `words`; synchronizes first (steps in flight read them).
  void reserve_extra(size_t words);
};

CudaModelRunner::Impl::Impl(const Model& model, const CudaRunnerConfig& config)
    : rc(config), cfg(model.config()) {
  const DecoderParts parts = decoder_parts(model);
  ATOM_CHECK(parts.weights != nullptr, kUnsupported,
             "device 'cuda' runs decoder models (Llama, Qwen3); {} is not one",
             cfg.architecture);
  ATOM_CHECK(rc.num_blocks >= 0 && rc.block_size > 0 && rc.max_num_batched_tokens > 0 &&
                 rc.max_num_seqs > 0 && rc.max_model_len > 0,
             kInvalidArgument,
             "CUDA runner limits must be positive: {} blocks of {}, {} batched tokens, {} seqs, "
             "max_model_len {}",
             rc.num_blocks, rc.block_size, rc.max_num_batched_tokens, rc.max_num_seqs,
             rc.max_model_len);
  ATOM_CHECK(rc.gpu_memory_utilization > 0.0 && rc.gpu_memory_utilization <= 1.0,
             kInvalidArgument, "--gpu-memory-utilization must be in (0, 1], got {}",
             rc.gpu_memory_utilization);
  for (const int64_t b : rc.cudagraph_capture_sizes)
    ATOM_CHECK(b > 0, kInvalidArgument, "CUDA graph capture sizes must be positive, got {}", b);
  ATOM_CHECK(cfg.head_dim == 64 || cfg.head_dim == 128, kUnsupported,
             "device 'cuda': head_dim {} (the attention kernels take 64 or 128)", cfg.head_dim);
  ATOM_CHECK(cfg.hidden_act == "silu", kUnsupported, "device 'cuda': activation {}",
             cfg.hidden_act);
  ATOM_CHECK(cuda_device_count() > rc.device, kUnsupported,
             "device 'cuda': no CUDA device {} is visible", rc.device);
  ATOM_CUDA_CHECK(cudaSetDevice(rc.device));
  cuda::register_cupti_tracer();  // profiler sessions from now on record this GPU's kernels
  size_t total = 0;
  ATOM_CUDA_CHECK(cudaMemGetInfo(&free_at_start, &total));  // after the context exists
  try {
    init(parts);
  } catch (...) {
    release_all();  // a failed start-up (e.g. out of memory) leaves nothing allocated
    throw;
  }
}

void CudaModelRunner::Impl::init(const DecoderParts& parts) {
  const auto t0 = std::chrono::steady_clock::now();
  variant = parts.variant;
  d = make_dims(cfg, rc.block_size, rc.max_num_batched_tokens, rc.max_num_seqs,
                rc.max_model_len);
  ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  gemm = std::make_unique<cuda::Gemm>();

  // Weights: dequantized, bf16, stacked as the CPU stacks them.
  const DecoderWeights& w = *parts.weights;
  ATOM_CUDA_CHECK(cudaMallocHost(&upload_pinned, kUploadBuffers * kUploadChunkBytes));
  for (cudaEvent_t& e : upload_done)
    ATOM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  embed = upload_matrix({&w.embed});
  lm_head = w.lm_head.data == w.embed.data ? embed : upload_matrix({&w.lm_head});
  final_norm = upload(host_bf16(w.final_norm));
  ATOM_CHECK(parts.rope != nullptr && parts.rope->inv_freq.size() == size_t(cfg.rotary_dim / 2),
             kInternal, "rotary table of {} frequencies for rotary_dim {}",
             parts.rope ? parts.rope->inv_freq.size() : 0, cfg.rotary_dim);
  inv_freq = device_alloc<float>(parts.rope->inv_freq.size());
  ATOM_CUDA_CHECK(cudaMemcpy(inv_freq, parts.rope->inv_freq.data(),
                             parts.rope->inv_freq.size() * sizeof(float),
                             cudaMemcpyHostToDevice));
  attention_factor = parts.rope->attention_factor;
  for (const DecoderLayerWeights& L : w.layers) {
    DeviceLayer dl{};
    dl.attn_norm = upload(host_bf16(L.attn_norm));
    dl.ffn_norm = upload(host_bf16(L.ffn_norm));
    dl.q_norm = upload_or_null(L.q_norm);
    dl.k_norm = upload_or_null(L.k_norm);
    dl.qkv = L.qkv.data ? upload_matrix({&L.qkv}) : upload_matrix({&L.q, &L.k, &L.v});
    dl.qkv_bias = upload_or_null(L.qkv_bias);
    dl.o = upload_matrix({&L.o});
    dl.o_bias = upload_or_null(L.o_bias);
    dl.gate_up =
        L.gate_up.data ? upload_matrix({&L.gate_up}) : upload_matrix({&L.gate, &L.up});
    dl.gate_up_bias = upload_or_null(L.gate_up_bias);
    dl.down = upload_matrix({&L.down});
    dl.down_bias = upload_or_null(L.down_bias);
    layers.push_back(dl);
  }
  free_upload_staging();
  ATOM_CHECK(!variant.qk_norm || (layers.empty() || layers[0].q_norm != nullptr), kInternal,
             "a q/k-norm model without q/k norm weights");

  // Workspace: one allocation carved into the activation, logits and metadata buffers.
  Arena measure;
  carve_activations(measure, d, rc.max_model_len);
  Arena carve(device_alloc<char>(measure.used()));
  act = carve_activations(carve, d, rc.max_model_len);
  const CudaMemoryPlan mp = cuda_memory_plan(cfg, rc.block_size, rc.max_num_batched_tokens,
                                             rc.max_num_seqs, rc.max_model_len);
  weight_bytes = mp.weight_bytes;
  workspace_bytes = mp.workspace_bytes;
  weights_memory = profiler::MemoryRecord("cuda weights", int64_t(weight_bytes), rc.device);
  workspace_memory =
      profiler::MemoryRecord("cuda workspace", int64_t(workspace_bytes), rc.device);
  const size_t meta = max_meta_entries(d);
  const size_t pinned_bytes = size_t(kRing) * (meta + size_t(d.max_seqs)) * sizeof(int32_t);
  ATOM_CUDA_CHECK(cudaMallocHost(&pinned, pinned_bytes));
  for (int64_t i = 0; i < kRing; ++i) {
    staging[i] = static_cast<int32_t*>(pinned) + size_t(i) * meta;
    host_ids[i] = static_cast<int32_t*>(pinned) + size_t(kRing) * meta + size_t(i * d.max_seqs);
  }
  for (cudaEvent_t& e : events)
    ATOM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  ATOM_CUDA_CHECK(cudaMemsetAsync(act.ids, 0, size_t(kRing * d.max_seqs) * sizeof(int32_t),
                                  stream));
  sync();
  ATOM_LOG_INFO("CUDA runner: {:.2f} GiB of weights uploaded in {:.2f} s", weight_bytes / kGiB,
                seconds_since(t0));

  warm_up();
  size_and_allocate_kv();
  capture_graphs();
}

CudaModelRunner::Impl::~Impl() { release_all(); }

void CudaModelRunner::Impl::release_all() {
  if (stream) (void)cudaStreamSynchronize(stream);
  for (Graph& g : graphs)
    if (g.exec) (void)cudaGraphExecDestroy(g.exec);
  for (cudaEvent_t e : events)
    if (e) (void)cudaEventDestroy(e);
  gemm.reset();
  for (void* p : device_allocs) (void)cudaFree(p);
  if (kv_pool) (void)cudaFree(kv_pool);
  if (extra_device) (void)cudaFree(extra_device);
  for (int32_t* p : extra_staging)
    if (p) (void)cudaFreeHost(p);
  if (pinned) (void)cudaFreeHost(pinned);
  free_upload_staging();
  if (stream) (void)cudaStreamDestroy(stream);
  graphs.clear();
  device_allocs.clear();
  kv_pool = nullptr;
  extra_device = nullptr;
  pinned = nullptr;
  stream = nullptr;
  for (cudaEvent_t& e : events) e = nullptr;
  for (int32_t*& p : extra_staging) p = nullptr;
}

bf16* CudaModelRunner::Impl::upload_matrix(std::initializer_list<const cpu::QMatrix*> parts) {
  int64_t rows = 0, cols = -1;
  for (const cpu::QMatrix* m : parts) {
    ATOM_CHECK(m->data != nullptr, kInternal, "a weight matrix to upload is missing");
    ATOM_CHECK(cols < 0 || m->cols == cols, kInternal, "stacked parts of different widths");
    cols = m->cols;
    rows += m->rows;
  }
  bf16* dst = device_alloc<bf16>(size_t(rows * cols));
  const size_t row_bytes = size_t(cols) * sizeof(uint16_t);
  const int64_t chunk_rows = std::max<int64_t>(1, int64_t(kUploadChunkBytes / row_bytes));
  ATOM_CHECK(size_t(chunk_rows) * row_bytes <= kUploadChunkBytes, kUnsupported,
             "a weight row of {} bytes exceeds the {} MiB upload chunk", row_bytes,
             kUploadChunkBytes >> 20);
  // Chunks of rows go through the pinned buffers in turn: the host fills one (bf16 rows copied,
  // others converted, in parallel) while the previous one is copied to the device, so the
  // upload runs at the host's copy rate rather than a pageable memcpy's.
  int64_t out_row = 0;
  for (const cpu::QMatrix* m : parts) {
    for (int64_t r0 = 0; r0 < m->rows; r0 += chunk_rows) {
      const int64_t n = std::min(chunk_rows, m->rows - r0);
      const int buf = int(upload_chunks++ % kUploadBuffers);
      ATOM_CUDA_CHECK(cudaEventSynchronize(upload_done[buf]));  // its last copy has finished
      uint16_t* staging = reinterpret_cast<uint16_t*>(static_cast<char*>(upload_pinned) +
                                                      size_t(buf) * kUploadChunkBytes);
#pragma omp parallel
      {
        std::vector<float> scratch;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < n; ++r)
          row_to_bf16(*m, r0 + r, staging + size_t(r * cols), scratch);
      }
      ATOM_CUDA_CHECK(cudaMemcpyAsync(dst + size_t(out_row * cols), staging, size_t(n) * row_bytes,
                                      cudaMemcpyHostToDevice, stream));
      ATOM_CUDA_CHECK(cudaEventRecord(upload_done[buf], stream));
      out_row += n;
    }
  }
  return dst;
}

void CudaModelRunner::Impl::free_upload_staging() {
  if (stream) (void)cudaStreamSynchronize(stream);  // copies may still read the buffers
  for (cudaEvent_t& e : upload_done) {
    if (e) (void)cudaEventDestroy(e);
    e = nullptr;
  }
  if (upload_pinned) (void)cudaFreeHost(upload_pinned);
  upload_pinned = nullptr;
}

void CudaModelRunner::Impl::point_layers_at_pool(int64_t blocks) {
  const size_t per_cache = size_t(blocks * rc.block_size * d.kv_size);
  bf16* base = static_cast<bf16*>(kv_pool);
  for (size_t l = 0; l < layers.size(); ++l) {
    layers[l].k_cache = base + (2 * l) * per_cache;
    layers[l].v_cache = base + (2 * l + 1) * per_cache;
  }
  kv_blocks = blocks;
}

std::vector<int64_t> CudaModelRunner::Impl::capture_sizes() const {
  if (rc.enforce_eager) return {};
  std::vector<int64_t> sizes;
  for (const int64_t b : rc.cudagraph_capture_sizes)
    if (b <= d.max_seqs) sizes.push_back(b);
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  return sizes;
}

// `num_seqs` sequences of `len` tokens each (graph_batch 0), or a decode batch of graph_batch
// padded rows (num_seqs == 0): the warm-up's and the captures' shapes, over KV block 0 only.
CudaModelRunner::Impl::Plan CudaModelRunner::Impl::dummy_plan(int64_t num_seqs, int64_t len,
                                                               int64_t graph_batch) const {
  Plan p;
  p.graph_batch = graph_batch;
  ForwardBatch& b = p.batch;
  const int64_t blocks = (len + rc.block_size - 1) / rc.block_size;
  b.max_blocks_per_seq = std::max<int64_t>(blocks, 1);
  b.cu_seqlens_q.push_back(0);
  for (int64_t s = 0; s < num_seqs; ++s) {
    for (int64_t pos = 0; pos < len; ++pos) {
      b.token_ids.push_back(int32_t(pos % d.vocab));
      b.positions.push_back(int32_t(pos));
      b.slot_mapping.push_back(int32_t(pos % rc.block_size));
    }
    b.cu_seqlens_q.push_back(int32_t(b.token_ids.size()));
    b.seq_lens.push_back(int32_t(len));
    b.block_tables.resize(b.block_tables.size() + size_t(b.max_blocks_per_seq), 0);
    b.logits_indices.push_back(int32_t(b.token_ids.size()) - 1);
  }
  p.max_q_len = len;
  p.max_seq_len = len;
  return p;
}

void CudaModelRunner::Impl::warm_up() {
  // SPEC 3.7: as many max_model_len sequences as max_num_batched_tokens holds (at most
  // max_num_seqs), else one sequence of what fits; then a decode of every row. Both write and
  // read KV block 0 of a one-block pool: the values are garbage, the launches are the point.
  const auto t0 = std::chrono::steady_clock::now();
  const size_t pool = size_t(2 * d.layers * rc.block_size * d.kv_size) * sizeof(bf16);
  ATOM_CUDA_CHECK(cudaMalloc(&kv_pool, pool));
  ATOM_CUDA_CHECK(cudaMemsetAsync(kv_pool, 0, pool, stream));
  point_layers_at_pool(1);
  const int64_t n = std::min(d.max_tokens / rc.max_model_len, d.max_seqs);
  const Plan prefill = n > 0 ? dummy_plan(n, rc.max_model_len, 0)
                             : dummy_plan(1, std::min(d.max_tokens, rc.max_model_len), 0);
  const Plan decode = dummy_plan(d.max_seqs, 1, 0);
  // Every sampling path once: greedy rows, sampled rows with top-k/top-p, penalties.
  std::vector<cuda::SampleRowParams> sample(size_t(d.max_seqs));
  for (size_t i = 0; i < sample.size(); ++i) {
    cuda::SampleRowParams& s = sample[i];
    s = {};
    s.temperature = i % 2 ? 1.0f : 0.0f;
    s.top_k = i % 4 == 1 ? 20 : -1;
    s.top_p = i % 4 == 3 ? 0.9f : 1.0f;
    s.min_p = 0.0f;
  }
  // The penalty buffers, at a size that serves a full batch of rows with a few hundred distinct
  // tokens each, exist before the KV pool is sized (a longer history grows them later), and one
  // penalty row (a repetition penalty, a masked stop id) loads the penalty kernel.
  reserve_extra(size_t(d.max_seqs) * (sizeof(cuda::PenaltyRowParams) / sizeof(int32_t) + 3 * 256));
  cuda::PenaltyRowParams pen{};
  pen.logits_row = 0;
  pen.repetition = 1.1f;
  pen.inflight_index = -1;
  pen.stop_begin = 0;
  pen.stop_end = 1;
  const int32_t pen_words = int32_t(sizeof(pen) / sizeof(int32_t));
  std::memcpy(extra_staging[0], &pen, sizeof(pen));
  extra_staging[0][pen_words] = 0;  // the masked stop id
  ATOM_CUDA_CHECK(cudaMemcpyAsync(extra_device, extra_staging[0],
                                  size_t(pen_words + 1) * sizeof(int32_t),
                                  cudaMemcpyHostToDevice, stream));
  int64_t slot = 0;
  for (const Plan* p : {&prefill, &decode}) {
    const int64_t rows = int64_t(p->batch.logits_indices.size());
    const Layout L = upload_plan(*p, std::span(sample).first(size_t(rows)), slot);
    enqueue_forward(L);
    int32_t* ids_d = act.ids + slot * d.max_seqs;
    cuda::launch_apply_penalties(act.logits, d.vocab,
                                 reinterpret_cast<const cuda::PenaltyRowParams*>(extra_device), 1,
                                 nullptr, act.ids, extra_device + pen_words, stream);
    cuda::launch_argmax(act.logits, ids_d, rows, d.vocab, stream);
    cuda::launch_sample(act.logits, rows, d.vocab, L.sample, ids_d, stream);
    slot = (slot + 1) % kRing;
  }
  sync();
  ATOM_CUDA_CHECK(cudaFree(kv_pool));
  kv_pool = nullptr;
  ATOM_LOG_INFO("warm-up: a prefill of {} x {} tokens and a decode of {} sequences in {:.2f} s",
                prefill.batch.num_seqs(), prefill.max_q_len, decode.batch.num_seqs(),
                seconds_since(t0));
}

cudaGraphExec_t CudaModelRunner::Impl::capture(int64_t batch) {
  const Plan p = dummy_plan(0, 1, batch);
  const Layout L = upload_plan(p, {}, num_submitted % kRing);
  enqueue_forward(L);  // the launch before the capture, as ATOM does: plans and modules ready
  sync();
  cudaGraph_t graph = nullptr;
  ATOM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    enqueue_forward(L);
  } catch (...) {
    (void)cudaStreamEndCapture(stream, &graph);
    if (graph) (void)cudaGraphDestroy(graph);
    throw;
  }
  ATOM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  ATOM_CUDA_CHECK(e);
  ATOM_CUDA_CHECK(cudaGraphUpload(exec, stream));
  sync();
  return exec;
}

size_t CudaModelRunner::Impl::measure_graph_bytes() {
  // One graph of the largest size, captured on the one-block pool and thrown away: what the
  // graphs will take, so the KV pool leaves room for them. Every size has the same nodes.
  const std::vector<int64_t> sizes = capture_sizes();
  if (sizes.empty()) return 0;
  size_t free_before = 0, free_after = 0, total = 0;
  ATOM_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
  cudaGraphExec_t exec = capture(sizes.back());
  ATOM_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
  ATOM_CUDA_CHECK(cudaGraphExecDestroy(exec));
  const size_t one = free_before > free_after ? free_before - free_after : 0;
  // cudaMemGetInfo moves in 2 MiB pages: count at least one page per graph.
  return std::max<size_t>(one, size_t(2) << 20) * sizes.size();
}

void CudaModelRunner::Impl::size_and_allocate_kv() {
  const size_t block_bytes = size_t(2 * d.layers * rc.block_size * d.kv_size) * sizeof(bf16);
  int64_t blocks = rc.num_blocks;
  if (blocks == 0) {
    // The graphs' memory is measured on a one-block pool before the real one exists.
    const size_t pool = block_bytes;
    ATOM_CUDA_CHECK(cudaMalloc(&kv_pool, pool));
    point_layers_at_pool(1);
    const size_t graph_bytes = measure_graph_bytes();
    ATOM_CUDA_CHECK(cudaFree(kv_pool));
    kv_pool = nullptr;
    size_t free_bytes = 0, total_bytes = 0;
    ATOM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    // As vLLM and ATOM: the budget is this instance's share of the card, so what other
    // processes hold does not count against it (two servers at 0.4 share one GPU); only what is
    // actually free caps it.
    const double budget = rc.gpu_memory_utilization * double(total_bytes);
    const double used = double(free_at_start) - double(free_bytes);  // this runner's memory
    const double kv_bytes = std::min(budget - used - double(graph_bytes),
                                     double(free_bytes) - double(graph_bytes));
    blocks = kv_bytes > 0 ? int64_t(kv_bytes / double(block_bytes)) : 0;
    const double other = used - double(weight_bytes) - double(workspace_bytes);
    ATOM_LOG_INFO(
        "GPU memory budget: {:.2f} GiB ({} of {:.2f} GiB): weights {:.2f} GiB, activations "
        "{:.2f} GiB, kernels and libraries {:.2f} GiB, CUDA graphs {:.2f} GiB, KV cache {} "
        "blocks = {:.2f} GiB = {} tokens",
        budget / kGiB, rc.gpu_memory_utilization, double(total_bytes) / kGiB,
        double(weight_bytes) / kGiB, double(workspace_bytes) / kGiB, std::max(other, 0.0) / kGiB,
        double(graph_bytes) / kGiB, blocks, double(blocks) * double(block_bytes) / kGiB,
        blocks * rc.block_size);
    ATOM_CHECK(blocks > 0, kInvalidArgument,
               "no GPU memory left for the KV cache: {:.2f} GiB of weights, {:.2f} GiB of "
               "activations and {:.2f} GiB of kernels and libraries exceed {} of the GPU's "
               "{:.2f} GiB, or the {:.2f} GiB still free; raise --gpu-memory-utilization or "
               "lower --max-num-batched-tokens / --max-num-seqs",
               double(weight_bytes) / kGiB, double(workspace_bytes) / kGiB,
               std::max(other, 0.0) / kGiB, rc.gpu_memory_utilization,
               double(total_bytes) / kGiB, double(free_bytes) / kGiB);
  }
  ATOM_CUDA_CHECK(cudaMalloc(&kv_pool, size_t(blocks) * block_bytes));
  kv_memory = profiler::MemoryRecord("cuda kv cache", int64_t(size_t(blocks) * block_bytes),
                                     rc.device);
  ATOM_CUDA_CHECK(cudaMemsetAsync(kv_pool, 0, size_t(blocks) * block_bytes, stream));
  point_layers_at_pool(blocks);
  sync();
  rc.num_blocks = blocks;
}

void CudaModelRunner::Impl::capture_graphs() {
  const std::vector<int64_t> sizes = capture_sizes();
  if (sizes.empty()) {
    ATOM_LOG_INFO("CUDA graphs: off ({})", rc.enforce_eager ? "enforce-eager" : "no size fits");
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  size_t free_before = 0, free_after = 0, total = 0;
  ATOM_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
  for (auto it = sizes.rbegin(); it != sizes.rend(); ++it)  // largest first, as ATOM
    graphs.push_back(Graph{*it, capture(*it)});
  std::reverse(graphs.begin(), graphs.end());
  ATOM_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
  std::string list;
  for (const int64_t b : sizes) list += (list.empty() ? "" : ",") + std::to_string(b);
  ATOM_LOG_INFO("cudagraph capture[{}] cost: {:.2f} seconds, {:.1f} MiB", list,
                seconds_since(t0),
                double(free_before > free_after ? free_before - free_after : 0) / (1 << 20));
}

CudaModelRunner::Impl::Plan CudaModelRunner::Impl::plan(std::span<const StepSeq> seqs) const {
  Plan p;
  const int64_t bs = rc.block_size;
  ATOM_CHECK(!seqs.empty() && int64_t(seqs.size()) <= d.max_seqs, kInvalidArgument,
             "a step of {} sequences (the CUDA runner holds 1 to {})", seqs.size(), d.max_seqs);
  ForwardBatch& b = p.batch;
  int64_t max_blocks = 1;
  bool decode_only = true;
  for (const StepSeq& s : seqs) {
    max_blocks = std::max<int64_t>(max_blocks, s.block_table.size());
    decode_only = decode_only && s.count == 1 && s.sample;
  }
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
  if (decode_only) {  // the smallest captured size that holds the batch
    for (const Graph& g : graphs)
      if (g.batch >= b.num_seqs()) {
        p.graph_batch = g.batch;
        break;
      }
  }
  return p;
}

CudaModelRunner::Impl::Layout CudaModelRunner::Impl::upload_plan(
    const Plan& p, std::span<const cuda::SampleRowParams> sample, int64_t slot) {
  const ForwardBatch& b = p.batch;
  const int64_t S = b.num_seqs(), W = b.max_blocks_per_seq;
  const int64_t R = int64_t(b.logits_indices.size()), G = int64_t(p.gather_src.size());
  Layout L;
  const bool graph = p.graph_batch > 0;
  if (graph) {  // every row decodes one token and samples; padded up to the graph's batch
    ATOM_ASSERT(S <= p.graph_batch && b.num_tokens() == S && R == S);
    L.T = L.S = L.R = L.G = p.graph_batch;
    L.max_blocks = d.max_blocks_per_seq;
    L.max_q_len = 1;
    L.max_seq_len = rc.max_model_len;  // the split plan baked into the graph covers any context
  } else {
    L.T = b.num_tokens();
    L.S = S;
    L.R = R;
    L.G = G;
    L.max_blocks = W;
    L.max_q_len = p.max_q_len;
    L.max_seq_len = p.max_seq_len;
  }
  int32_t* host = staging[slot];
  size_t at = 0;
  // Copies v, pads to n words with `fill`, returns the device address.
  auto put = [&](const int32_t* v, size_t count, size_t n, int32_t fill) {
    ATOM_ASSERT(count <= n);
    const size_t offset = at;
    if (count) std::memcpy(host + at, v, count * sizeof(int32_t));
    std::fill(host + at + count, host + at + n, fill);
    at += n;
    return act.meta + offset;
  };
  auto put_vec = [&](const std::vector<int32_t>& v, int64_t n, int32_t fill) {
    return put(v.data(), v.size(), size_t(n), fill);
  };
  const int32_t stride = int32_t(W);
  L.bt_stride = put(&stride, 1, 1, 0);
  L.token_ids = put_vec(b.token_ids, L.T, 0);
  L.positions = put_vec(b.positions, L.T, 0);
  L.slots = put_vec(b.slot_mapping, L.T, -1);  // padded rows write no KV
  // Padded sequences: one query row each, an empty context.
  int32_t* cu = host + at;
  L.cu_seqlens = put_vec(b.cu_seqlens_q, L.S + 1, 0);
  for (int64_t s = S + 1; s <= L.S; ++s) cu[s] = cu[s - 1] + 1;
  L.seq_lens = put_vec(b.seq_lens, L.S, 0);
  int32_t* rows = host + at;
  L.logits_rows = put_vec(b.logits_indices, L.R, 0);
  for (int64_t r = R; r < L.R; ++r) rows[r] = int32_t(r);
  L.gather_src = put_vec(p.gather_src, L.G, -1);
  L.gather_dst = put_vec(p.gather_dst, L.G, -1);
  // Last: the tables of the real rows (padded rows have empty contexts and read none).
  L.block_tables = put(b.block_tables.data(), b.block_tables.size(), size_t(S * W), 0);
  if (!sample.empty()) {
    const size_t words = sample.size() * kSampleWords;
    L.sample = reinterpret_cast<const cuda::SampleRowParams*>(
        put(reinterpret_cast<const int32_t*>(sample.data()), words, words, 0));
  }
  L.words = at;
  ATOM_ASSERT(at <= max_meta_entries(d));
  ATOM_CUDA_CHECK(cudaMemcpyAsync(act.meta, host, at * sizeof(int32_t), cudaMemcpyHostToDevice,
                                  stream));
  return L;
}

void CudaModelRunner::Impl::enqueue_forward(const Layout& L) {
  const int64_t T = L.T, S = L.S, R = L.R;
  cuda::launch_gather_ids(act.ids, kRing * d.max_seqs, L.gather_src, L.gather_dst, L.G,
                          L.token_ids, T, stream);

  const float eps = float(cfg.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(float(d.D));
  const int64_t H = d.H, I = d.I;
  const cuda::RopeArgs rope{L.positions, inv_freq, attention_factor, cfg.rotary_dim};
  cuda::PagedAttentionBatch attn{L.cu_seqlens, L.seq_lens, L.block_tables, L.bt_stride, S, T,
                                 L.max_blocks, L.max_q_len, L.max_seq_len};
  const size_t ws_bytes = cuda::paged_attention_workspace_bytes(S, d.nh, d.nkv, d.D, L.max_q_len,
                                                                L.max_seq_len);
  ATOM_ASSERT(ws_bytes <= act.attn_ws_bytes);

  cuda::launch_embedding(embed, d.vocab, H, L.token_ids, act.residual, T, stream);  // [T, H]
  for (int64_t l = 0; l < d.layers; ++l) {
    const DeviceLayer& Ly = layers[size_t(l)];
    // Host time launching the layer's kernels; their GPU time is on the GPU rows.
    profiler::Scope layer_scope(profiler::kMoreOnly, "layer", l, "model",
                                {{"tokens", T}, {"hidden", H}, {"seqs", S}});
    // --- attention block ---
    if (l == 0)
      cuda::launch_rms_norm(act.residual, Ly.attn_norm, act.h, T, H, eps, stream);
    else  // residual += mlp_out; h = norm(residual)
      cuda::launch_add_rms_norm(act.mlp_out, act.residual, Ly.attn_norm, act.h, T, H, eps,
                                stream);
    gemm->launch(act.h, Ly.qkv, Ly.qkv_bias, act.qkv, T, d.qkv_size, H, stream);  // [T, q|k|v]
    // One launch: split, per-head q/k norm (Qwen3), RoPE, k and v into the cache; q [T, nh, D].
    const cuda::KvCacheWrite write{L.slots, Ly.k_cache, Ly.v_cache, kv_blocks * rc.block_size};
    cuda::launch_qkv_rope_and_cache(act.qkv, variant.qk_norm ? Ly.q_norm : nullptr,
                                    variant.qk_norm ? Ly.k_norm : nullptr, eps, rope, write, act.q,
                                    T, d.nh, d.nkv, d.D, stream);
    const cuda::PagedKvCache cache{Ly.k_cache, Ly.v_cache, kv_blocks, rc.block_size, d.nkv, d.D};
    cuda::paged_attention(act.q, d.nh, cache, attn, scale, act.attn, act.attn_ws, ws_bytes,
                          stream);  // [T, nh, D]
    gemm->launch(act.attn, Ly.o, Ly.o_bias, act.attn_out, T, H, d.q_size, stream);  // [T, H]
    // --- MLP block ---
    cuda::launch_add_rms_norm(act.attn_out, act.residual, Ly.ffn_norm, act.h, T, H, eps, stream);
    gemm->launch(act.h, Ly.gate_up, Ly.gate_up_bias, act.gate_up, T, 2 * I, H, stream);
    cuda::launch_silu_and_mul(act.gate_up, act.act, T, I, stream);             // [T, I]
    gemm->launch(act.act, Ly.down, Ly.down_bias, act.mlp_out, T, H, I, stream);  // [T, H]
  }
  // Final norm, then the LM head only for the rows that need logits.
  cuda::launch_add_rms_norm(act.mlp_out, act.residual, final_norm, act.h, T, H, eps, stream);
  cuda::launch_embedding(act.h, T, H, L.logits_rows, act.selected, R, stream);  // [R, H]
  gemm->launch(act.selected, lm_head, static_cast<const float*>(nullptr), act.logits, R, d.vocab,
               H, stream);  // [R, vocab] f32
}

void CudaModelRunner::Impl::run_forward(const Plan& p, const Layout& L) {
  if (p.graph_batch > 0) {
    auto it = std::find_if(graphs.begin(), graphs.end(),
                           [&](const Graph& g) { return g.batch == p.graph_batch; });
    ATOM_ASSERT(it != graphs.end());
    ATOM_CUDA_CHECK(cudaGraphLaunch(it->exec, stream));
    ++graph_steps;
  } else {
    enqueue_forward(L);
    ++eager_steps;
  }
}

void CudaModelRunner::Impl::reserve_extra(size_t words) {
  if (words <= extra_capacity) return;
  sync();  // steps in flight may still read the old buffers
  const size_t cap = std::max(words, 2 * extra_capacity);
  if (extra_device) ATOM_CUDA_CHECK(cudaFree(extra_device));
  extra_device = nullptr;
  for (int32_t*& p : extra_staging) {
    if (p) ATOM_CUDA_CHECK(cudaFreeHost(p));
    p = nullptr;
  }
  extra_capacity = 0;
  void* mem = nullptr;
  ATOM_CUDA_CHECK(cudaMalloc(&mem, cap * sizeof(int32_t)));
  extra_device = static_cast<int32_t*>(mem);
  for (int32_t*& p : extra_staging) {
    ATOM_CUDA_CHECK(cudaMallocHost(&mem, cap * sizeof(int32_t)));
    p = static_cast<int32_t*>(mem);
  }
  extra_capacity = cap;
}

void CudaModelRunner::Impl::submit(std::span<const StepSeq> seqs) {
  // The engine thread is not the one that built the runner: make its device current.
  ATOM_CUDA_CHECK(cudaSetDevice(rc.device));
  ATOM_CHECK(int64_t(inflight.size()) < kRing - 1, kInternal,
             "{} steps in flight: the CUDA runner keeps at most {}", inflight.size(), kRing - 1);
  const int64_t number = num_submitted;
  const int64_t slot = number % kRing;
  const Plan p = [&] {  // a bad plan throws here, before anything is recorded
    profiler::Scope scope("plan", "runner", {{"seqs", int64_t(seqs.size())}});
    return plan(seqs);
  }();
  // Sampling rows: parameters, penalty rows (distinct tokens seen, the in-flight one read on the
  // device) and min_tokens masks.
  std::vector<const StepSeq*> sampling;
  std::vector<cuda::SampleRowParams> sample;
  std::vector<cuda::PenaltyRowParams> pen_rows;
  std::vector<cuda::PenaltyEntry> pen_entries;
  std::vector<int32_t> stop_ids;
  bool all_greedy = true;
  for (const StepSeq& s : seqs) {
    if (!s.sample) continue;
    auto it = seqs_state.find(s.seq_id);
    if (it == seqs_state.end()) {
      ATOM_CHECK(s.params != nullptr, kInvalidArgument,
                 "sequence {} samples for the first time without sampling parameters", s.seq_id);
      s.params->validate();
      SeqState st;
      st.params = *s.params;
      st.seed = s.params->seed ? *s.params->seed : random_seed();
      it = seqs_state.emplace(s.seq_id, std::move(st)).first;
    }
    SeqState& st = it->second;
    const SamplingParams& sp = st.params;
    const int64_t row = int64_t(sampling.size());
    const int64_t num_output = int64_t(s.token_ids.size()) - s.num_prompt_tokens;
    cuda::SampleRowParams r{};
    r.temperature = sp.greedy() ? 0.0f : sp.temperature;
    r.top_k = sp.top_k;
    r.top_p = sp.top_p;
    r.min_p = sp.min_p;
    r.seed_lo = uint32_t(st.seed);
    r.seed_hi = uint32_t(st.seed >> 32);
    r.counter_lo = uint32_t(uint64_t(num_output));
    r.counter_hi = uint32_t(uint64_t(num_output) >> 32);
    all_greedy = all_greedy && sp.greedy();
    const bool penalize = has_penalties(sp);
    const bool mask = num_output < sp.min_tokens && !sp.stop_token_ids.empty();
    if (penalize || mask) {
      cuda::PenaltyRowParams pr{};
      pr.logits_row = int32_t(row);
      pr.repetition = sp.repetition_penalty;
      pr.frequency = sp.frequency_penalty;
      pr.presence = sp.presence_penalty;
      pr.inflight_index = -1;
      if (penalize) {
        // Fold in the tokens the host knows (every one but an in-flight placeholder).
        const size_t known = s.token_ids.size() - (s.last_token_in_flight ? 1 : 0);
        for (size_t i = st.consumed; i < known; ++i) {
          const int32_t t = s.token_ids[i];
          const bool prompt = int64_t(i) < s.num_prompt_tokens;
          auto [e, added] = st.index.emplace(t, st.entries.size());
          if (added) st.entries.push_back(cuda::PenaltyEntry{t, 0, 0});
          cuda::PenaltyEntry& entry = st.entries[e->second];
          if (prompt)
            entry.in_prompt = 1;
          else
            ++entry.output_count;
        }
        st.consumed = std::max(st.consumed, known);
        pr.entries_begin = int32_t(pen_entries.size());
        pen_entries.insert(pen_entries.end(), st.entries.begin(), st.entries.end());
        pr.entries_end = int32_t(pen_entries.size());
        if (s.last_token_in_flight) {
          const IdRecord& rec = last_id.at(s.seq_id);
          pr.inflight_index = int32_t((rec.step % kRing) * d.max_seqs + rec.row);
        }
      }
      pr.stop_begin = pr.stop_end = int32_t(stop_ids.size());
      if (mask) {
        stop_ids.insert(stop_ids.end(), sp.stop_token_ids.begin(), sp.stop_token_ids.end());
        pr.stop_end = int32_t(stop_ids.size());
      }
      pen_rows.push_back(pr);
    }
    sample.push_back(r);
    sampling.push_back(&s);
  }
  Step step;
  step.number = number;
  step.num_sampled = sampling.size();
  try {
    const Layout L = upload_plan(p, all_greedy ? std::span<const cuda::SampleRowParams>{}
                                               : std::span<const cuda::SampleRowParams>(sample),
                                 slot);
    {
      profiler::Scope scope("forward", "runner",
                            {{"tokens", p.batch.num_tokens()}, {"seqs", p.batch.num_seqs()}});
      run_forward(p, L);
    }
    int32_t* ids_d = act.ids + slot * d.max_seqs;
    const int64_t R = int64_t(sampling.size());
    profiler::Scope sample_scope("sample", "runner", {{"rows", R}});
    if (!pen_rows.empty()) {
      // [rows][entries][stop ids], one upload.
      constexpr size_t kRowWords = sizeof(cuda::PenaltyRowParams) / sizeof(int32_t);
      constexpr size_t kEntryWords = sizeof(cuda::PenaltyEntry) / sizeof(int32_t);
      const size_t words =
          pen_rows.size() * kRowWords + pen_entries.size() * kEntryWords + stop_ids.size();
      reserve_extra(words);
      int32_t* h = extra_staging[slot];
      std::memcpy(h, pen_rows.data(), pen_rows.size() * sizeof(cuda::PenaltyRowParams));
      size_t at = pen_rows.size() * kRowWords;
      const size_t entries_at = at;
      if (!pen_entries.empty())
        std::memcpy(h + at, pen_entries.data(), pen_entries.size() * sizeof(cuda::PenaltyEntry));
      at += pen_entries.size() * kEntryWords;
      const size_t stops_at = at;
      if (!stop_ids.empty()) std::memcpy(h + at, stop_ids.data(), stop_ids.size() * 4);
      ATOM_CUDA_CHECK(cudaMemcpyAsync(extra_device, h, words * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, stream));
      cuda::launch_apply_penalties(
          act.logits, d.vocab, reinterpret_cast<const cuda::PenaltyRowParams*>(extra_device),
          int64_t(pen_rows.size()),
          reinterpret_cast<const cuda::PenaltyEntry*>(extra_device + entries_at), act.ids,
          extra_device + stops_at, stream);
    }
    if (R > 0) {
      if (all_greedy)
        cuda::launch_argmax(act.logits, ids_d, R, d.vocab, stream);
      else
        cuda::launch_sample(act.logits, R, d.vocab, L.sample, ids_d, stream);
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
    profiler::Scope scope("wait", "runner");  // until the step's ids are on the host
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
  // Sampling state is read on this thread at submit, so nothing in flight still needs it; a
  // step in flight gathers on the device, from ids it does not look up here.
  impl_->seqs_state.erase(seq_id);
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
  const Impl::Layout L = impl_->upload_plan(p, {}, slot);
  impl_->run_forward(p, L);
  const size_t n = p.batch.logits_indices.size() * size_t(impl_->d.vocab);
  std::vector<float> logits(n);
  ATOM_CUDA_CHECK(cudaMemcpyAsync(logits.data(), impl_->act.logits, n * sizeof(float),
                                  cudaMemcpyDeviceToHost, impl_->stream));
  impl_->sync();
  return logits;
}

std::vector<int64_t> CudaModelRunner::graph_sizes() const {
  std::vector<int64_t> sizes;
  for (const Impl::Graph& g : impl_->graphs) sizes.push_back(g.batch);
  return sizes;
}

int64_t CudaModelRunner::num_graph_steps() const { return impl_->graph_steps; }

int64_t CudaModelRunner::num_eager_steps() const { return impl_->eager_steps; }

}  // namespace atom
