#include "atom/runner/cuda/cuda_model_runner.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>

#include "atom/backends/cpu/quants.h"
#include "atom/backends/cuda/attention.h"
#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/custom_allreduce.h"
#include "atom/backends/cuda/gemm.h"
#include "atom/backends/cuda/nccl_comm.h"
#include "atom/backends/cuda/norm.h"
#include "atom/backends/cuda/ops.h"
#include "atom/backends/cuda/sampling.h"
#include "atom/core/dtype.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/core/profiler.h"
#include "atom/models/decoder.h"
#include "atom/models/tp_layout.h"
#include "atom/runner/cuda/cupti_trace.h"
#include "atom/runner/cuda/gather_ids.h"
#include "atom/runner/cuda/tp_kernels.h"
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

// Shapes that size every buffer, from the model config and the runner's limits. With tensor
// parallelism, I, nh and nkv are this rank's share and vocab_local its rows of the padded
// vocabulary (embedding and LM head); vocab is always the model's (the sampled logits' width).
struct Dims {
  int64_t H, I, D, nh, nkv, q_size, kv_size, qkv_size, vocab, layers;
  int64_t max_tokens, max_seqs, max_blocks_per_seq;
  int64_t vocab_local, tp;
};

Dims make_dims(const ModelConfig& c, int64_t block_size, int64_t max_tokens, int64_t max_seqs,
               int64_t max_model_len, const TpLayout* tp = nullptr) {
  Dims d{};
  d.H = c.hidden_size;
  d.I = tp ? tp->inter_size : c.intermediate_size;
  d.D = c.head_dim;
  d.nh = tp ? tp->num_q_heads : c.num_attention_heads;
  d.nkv = tp ? tp->num_kv_heads : c.num_key_value_heads;
  d.q_size = d.nh * d.D;
  d.kv_size = d.nkv * d.D;
  d.qkv_size = d.q_size + 2 * d.kv_size;
  d.vocab = c.vocab_size;
  d.layers = c.num_hidden_layers;
  d.max_tokens = max_tokens;
  d.max_seqs = std::min(max_seqs, max_tokens);  // a sequence has at least one token in a step
  d.max_blocks_per_seq = (max_model_len + block_size - 1) / block_size;
  d.vocab_local = tp ? tp->vocab_rows : d.vocab;
  d.tp = tp ? tp->tp : 1;
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
  float* logits;  // [max_seqs, vocab]
  float* shards;  // tp > 1: [tp, max_seqs, vocab_local], the ranks' LM-head outputs
  int32_t* ids;   // [kRing, max_seqs]: sampled ids of the last kRing steps
  int32_t* meta;  // [max_meta_entries]
  void* attn_ws;  // paged attention split-KV partials
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
  x.shards = d.tp > 1 ? a.take<float>(size_t(d.tp * d.max_seqs * d.vocab_local)) : nullptr;
  x.ids = a.take<int32_t>(size_t(kRing * d.max_seqs));
  x.meta = a.take<int32_t>(max_meta_entries(d));
  x.attn_ws_bytes =
      cuda::paged_attention_max_workspace_bytes(d.max_seqs, d.nh, d.nkv, d.D, max_model_len);
  x.attn_ws = a.take<char>(x.attn_ws_bytes);
  return x;
}

// bf16 weights of one layer on the device.
struct DeviceLayer {
  bf16 *attn_norm, *ffn_norm, *q_norm, *k_norm;
  bf16 *qkv, *qkv_bias, *o, *o_bias, *gate_up, *gate_up_bias, *down, *down_bias;
  void *k_cache, *v_cache;  // [num_blocks, block_size, nkv, D] of bf16 or fp8: KV pool views
};

// Elements of every weight, as uploaded (stacked qkv and gate_up).
size_t weight_elements(const ModelConfig& c, const Dims& d) {
  size_t per_layer = size_t(2 * d.H + d.H * d.qkv_size + d.qkv_size + d.q_size * d.H + d.H +
                            2 * d.I * d.H + 2 * d.I + d.I * d.H + d.H + 2 * d.D);
  size_t n = size_t(d.layers) * per_layer + size_t(d.vocab_local * d.H) + size_t(d.H);
  if (!c.tie_word_embeddings) n += size_t(d.vocab_local * d.H);
  return n;
}

// Columns [c0, c0 + n) of one weight row as bf16: copied when the checkpoint holds bf16 (no f32
// round trip), else the row dequantized to f32 (quantized blocks span columns) and rounded.
// `scratch` holds cols floats.
void row_to_bf16(const cpu::QMatrix& w, int64_t r, int64_t c0, int64_t n, uint16_t* dst,
                 std::vector<float>& scratch) {
  if (w.type == GgmlType::kBF16) {
    std::memcpy(dst, reinterpret_cast<const uint16_t*>(w.row(r)) + c0,
                size_t(n) * sizeof(uint16_t));
    return;
  }
  scratch.resize(size_t(w.cols));
  cpu::dequantize_row(w.type, w.row(r), scratch.data(), w.cols);
  for (int64_t c = 0; c < n; ++c) dst[c] = f32_to_bf16(scratch[size_t(c0 + c)]);
}

// Rows [first, first + count) of a matrix, the unit of a tensor-parallel shard.
struct RowRange {
  const cpu::QMatrix* m;
  int64_t first, count;
};

// The listed ranges of a stacked vector (a bias), concatenated: [sum of counts].
std::vector<float> slice_vector(const std::vector<float>& v,
                                const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  std::vector<float> out;
  for (const auto& [first, count] : ranges) {
    ATOM_CHECK(first >= 0 && count >= 0 && size_t(first + count) <= v.size(), kInternal,
               "bias slice [{}, {}) of {} values", first, first + count, v.size());
    out.insert(out.end(), v.begin() + first, v.begin() + first + count);
  }
  return out;
}

std::vector<uint16_t> host_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = f32_to_bf16(v[i]);
  return out;
}

// Whether a request's logits need the penalty kernel: a penalty, or min_tokens masking its stop
// ids (decided per step, while the output is shorter than min_tokens).
bool has_penalties(const SamplingParams& p) {
  return p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f || p.repetition_penalty != 1.0f;
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

namespace {

// Bytes of one K or V element in the pool.
size_t kv_element_bytes(bool fp8) { return fp8 ? 1 : sizeof(bf16); }

CudaMemoryPlan memory_plan(const ModelConfig& cfg, const Dims& d, int64_t block_size,
                           int64_t max_model_len, bool kv_cache_fp8) {
  CudaMemoryPlan p;
  p.weight_bytes = weight_elements(cfg, d) * sizeof(bf16);
  Arena measure;
  carve_activations(measure, d, max_model_len);
  p.workspace_bytes = measure.used() + cuda::Gemm::kDefaultWorkspaceBytes;
  p.kv_block_bytes = size_t(2 * d.layers * block_size * d.kv_size) * kv_element_bytes(kv_cache_fp8);
  return p;
}

}  // namespace

CudaMemoryPlan cuda_memory_plan(const ModelConfig& cfg, int64_t block_size,
                                int64_t max_num_batched_tokens, int64_t max_num_seqs,
                                int64_t max_model_len, bool kv_cache_fp8) {
  const Dims d = make_dims(cfg, block_size, max_num_batched_tokens, max_num_seqs, max_model_len);
  return memory_plan(cfg, d, block_size, max_model_len, kv_cache_fp8);
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
    const int32_t* bt_stride = nullptr;                          // [1]
    int32_t* token_ids = nullptr;                                // [T]
    const int32_t *positions = nullptr, *slots = nullptr;        // [T]
    const int32_t* cu_seqlens = nullptr;                         // [S + 1]
    const int32_t* seq_lens = nullptr;                           // [S]
    const int32_t* logits_rows = nullptr;                        // [R]
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
  // What the host prepares for a step, once (by rank 0 when there are several ranks): the plan,
  // the sampling rows' parameters, the penalty rows, their entries and the masked stop ids.
  struct HostStep {
    int64_t number = 0, slot = 0;
    Plan plan;
    std::vector<int64_t> sampled_seqs;  // seq_id of each sampling row
    std::vector<cuda::SampleRowParams> sample;
    bool all_greedy = true;
    std::vector<cuda::PenaltyRowParams> pen_rows;
    std::vector<cuda::PenaltyEntry> pen_entries;
    std::vector<int32_t> stop_ids;
  };

  CudaRunnerConfig rc;  // rc.device: this rank's device
  ModelConfig cfg;
  DecoderVariant variant;
  // Tensor parallelism: this rank's layout and communicator (owned by the group; null and unused
  // when tp_size == 1).
  int64_t rank = 0;
  TpLayout layout;
  cuda::NcclComm* comm = nullptr;
  // The group's peer-to-peer all-reduce for small messages (owned by the group; null: NCCL only).
  cuda::CustomAllReduce* car = nullptr;
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
    ATOM_CUDA_CHECK(
        cudaMemcpy(p, host.data(), host.size() * sizeof(uint16_t), cudaMemcpyHostToDevice));
    return p;
  }
  bf16* upload_or_null(const std::vector<float>& v) {
    return v.empty() ? nullptr : upload(host_bf16(v));
  }
  // A device layer holding only L's norms (attention, MLP, q/k), which every rank keeps whole.
  DeviceLayer layer_with_norms(const DecoderLayerWeights& L) {
    DeviceLayer dl{};
    dl.attn_norm = upload(host_bf16(L.attn_norm));
    dl.ffn_norm = upload(host_bf16(L.ffn_norm));
    dl.q_norm = upload_or_null(L.q_norm);
    dl.k_norm = upload_or_null(L.k_norm);
    return dl;
  }
  // The parts' rows as bf16, stacked in order, into one new device matrix [sum rows, cols].
  bf16* upload_matrix(std::initializer_list<const cpu::QMatrix*> parts);
  // The ranges' rows, columns [col_first, col_first + col_count) of each, stacked in order, then
  // zero rows up to total_rows: one new device matrix [total_rows, col_count]. col_count < 0:
  // every column; total_rows < 0: just the ranges' rows.
  bf16* upload_rows(const std::vector<RowRange>& parts, int64_t col_first = 0,
                    int64_t col_count = -1, int64_t total_rows = -1);
  // This rank's shard of every weight (tp_size > 1), from models/tp_layout.h's layout.
  void upload_shards(const DecoderWeights& w);
  // Pinned staging for upload_matrix: kUploadBuffers chunks, each reused once its copy is done.
  static constexpr int kUploadBuffers = 2;
  static constexpr size_t kUploadChunkBytes = size_t(64) << 20;
  void* upload_pinned = nullptr;
  cudaEvent_t upload_done[kUploadBuffers] = {};
  int64_t upload_chunks = 0;
  void free_upload_staging();

  // Rank `rank` of config.tp_size on device config.device + rank, through `comm` when
  // tp_size > 1: weights, workspace and the warm-up. The KV pool and the graphs come after, from
  // finish_start_up(kv_blocks_affordable()), since with several ranks the pool's size is the
  // least any rank affords.
  // `car`: the group's custom all-reduce (null: NCCL only). `free_before`: device memory free
  // before the group made this rank's communicator and all-reduce buffers, so that they count
  // against this rank's budget (unset: measured here).
  Impl(const Model& model, const CudaRunnerConfig& config, int64_t rank = 0,
       cuda::NcclComm* comm = nullptr, cuda::CustomAllReduce* car = nullptr,
       std::optional<size_t> free_before = std::nullopt);
  ~Impl();
  void init(const DecoderParts& parts);
  void release_all();
  bool sharded() const { return rc.tp_size > 1; }
  // "" with one rank, else which rank and device a log line is about.
  std::string who() const;

  Plan plan(std::span<const StepSeq> seqs) const;
  // Packs the plan's metadata (and the sampling rows' parameters) into staging[slot] at the
  // layout of its graph or of an eager step, and uploads it.
  Layout upload_plan(const Plan& p, std::span<const cuda::SampleRowParams> sample, int64_t slot);
  // Enqueues the forward over an uploaded layout; logits of its R rows end in act.logits.
  void enqueue_forward(const Layout& L);
  // After a row-parallel GEMM (O, down): x holds this rank's partial sums; the ranks' sum is
  // added to the residual and RMS-normed into out. One rank: the add + norm alone.
  void allreduce_add_rms_norm(bf16* x, bf16* residual, const bf16* weight, bf16* out, int64_t T);
  // The forward of a planned step: a graph replay or the eager launches.
  void run_forward(const Plan& p, const Layout& L);
  void sync() { ATOM_CUDA_CHECK(cudaStreamSynchronize(stream)); }
  // submit() = prepare() (host, once) + launch() (device work, on every rank) + the records.
  void submit(std::span<const StepSeq> seqs);
  HostStep prepare(std::span<const StepSeq> seqs);
  // This rank's launches of a prepared step, ending with events[slot]; throws on failure.
  void launch(const HostStep& hs);
  // Records a launched (or failed) step: the sequences' in-flight ids and the queue entry.
  void record(const HostStep& hs, std::exception_ptr error);
  std::vector<int32_t> collect();

  // Start-up phases.
  void point_layers_at_pool(int64_t blocks);
  void warm_up();
  Plan dummy_plan(int64_t num_seqs, int64_t len, int64_t graph_batch) const;
  cudaGraphExec_t capture(int64_t batch);
  void capture_graphs();
  size_t measure_graph_bytes();
  // KV blocks this rank's memory affords (rc.num_blocks when given); then the pool of `blocks`
  // blocks and the graphs.
  int64_t kv_blocks_affordable();
  void finish_start_up(int64_t blocks);
  int64_t affordable_blocks = 0;  // kv_blocks_affordable()'s answer, for the tests
  std::vector<int64_t> capture_sizes() const;
  // Grows the penalty buffers to hold `words`; synchronizes first (steps in flight read them).
  void reserve_extra(size_t words);
};

CudaModelRunner::Impl::Impl(const Model& model, const CudaRunnerConfig& config, int64_t tp_rank,
                            cuda::NcclComm* tp_comm, cuda::CustomAllReduce* tp_car,
                            std::optional<size_t> free_before)
    : rc(config), cfg(model.config()), rank(tp_rank), comm(tp_comm), car(tp_car) {
  rc.device = config.device + int(rank);
  ATOM_ASSERT(rank >= 0 && rank < std::max<int64_t>(rc.tp_size, 1));
  ATOM_ASSERT(!sharded() || comm != nullptr);
  if (sharded()) layout = make_tp_layout(cfg, rc.tp_size, rank);
  const DecoderParts parts = decoder_parts(model);
  ATOM_CHECK(parts.weights != nullptr, kUnsupported,
             "device 'cuda' runs decoder models (Llama, Qwen3); {} is not one", cfg.architecture);
  ATOM_CHECK(rc.num_blocks >= 0 && rc.block_size > 0 && rc.max_num_batched_tokens > 0 &&
                 rc.max_num_seqs > 0 && rc.max_model_len > 0,
             kInvalidArgument,
             "CUDA runner limits must be positive: {} blocks of {}, {} batched tokens, {} seqs, "
             "max_model_len {}",
             rc.num_blocks, rc.block_size, rc.max_num_batched_tokens, rc.max_num_seqs,
             rc.max_model_len);
  ATOM_CHECK(rc.gpu_memory_utilization > 0.0 && rc.gpu_memory_utilization <= 1.0, kInvalidArgument,
             "--gpu-memory-utilization must be in (0, 1], got {}", rc.gpu_memory_utilization);
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
  if (free_before) free_at_start = *free_before;
  try {
    init(parts);
  } catch (...) {
    release_all();  // a failed start-up (e.g. out of memory) leaves nothing allocated
    throw;
  }
}

std::string CudaModelRunner::Impl::who() const {
  return sharded() ? fmt::format("tensor-parallel rank {} of {} (device {}): ", rank, rc.tp_size,
                                 rc.device)
                   : std::string();
}

void CudaModelRunner::Impl::init(const DecoderParts& parts) {
  const auto t0 = std::chrono::steady_clock::now();
  variant = parts.variant;
  d = make_dims(cfg, rc.block_size, rc.max_num_batched_tokens, rc.max_num_seqs, rc.max_model_len,
                sharded() ? &layout : nullptr);
  ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  gemm = std::make_unique<cuda::Gemm>();

  // Weights: dequantized, bf16, stacked as the CPU stacks them.
  const DecoderWeights& w = *parts.weights;
  ATOM_CUDA_CHECK(cudaMallocHost(&upload_pinned, kUploadBuffers * kUploadChunkBytes));
  for (cudaEvent_t& e : upload_done)
    ATOM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  if (sharded()) {
    upload_shards(w);
  } else {
    embed = upload_matrix({&w.embed});
    lm_head = w.lm_head.data == w.embed.data ? embed : upload_matrix({&w.lm_head});
    for (const DecoderLayerWeights& L : w.layers) {
      DeviceLayer dl = layer_with_norms(L);
      dl.qkv = L.qkv.data ? upload_matrix({&L.qkv}) : upload_matrix({&L.q, &L.k, &L.v});
      dl.qkv_bias = upload_or_null(L.qkv_bias);
      dl.o = upload_matrix({&L.o});
      dl.o_bias = upload_or_null(L.o_bias);
      dl.gate_up = L.gate_up.data ? upload_matrix({&L.gate_up}) : upload_matrix({&L.gate, &L.up});
      dl.gate_up_bias = upload_or_null(L.gate_up_bias);
      dl.down = upload_matrix({&L.down});
      dl.down_bias = upload_or_null(L.down_bias);
      layers.push_back(dl);
    }
  }
  final_norm = upload(host_bf16(w.final_norm));
  ATOM_CHECK(parts.rope != nullptr && parts.rope->inv_freq.size() == size_t(cfg.rotary_dim / 2),
             kInternal, "rotary table of {} frequencies for rotary_dim {}",
             parts.rope ? parts.rope->inv_freq.size() : 0, cfg.rotary_dim);
  inv_freq = device_alloc<float>(parts.rope->inv_freq.size());
  ATOM_CUDA_CHECK(cudaMemcpy(inv_freq, parts.rope->inv_freq.data(),
                             parts.rope->inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice));
  attention_factor = parts.rope->attention_factor;
  free_upload_staging();
  ATOM_CHECK(!variant.qk_norm || (layers.empty() || layers[0].q_norm != nullptr), kInternal,
             "a q/k-norm model without q/k norm weights");

  // Workspace: one allocation carved into the activation, logits and metadata buffers.
  Arena measure;
  carve_activations(measure, d, rc.max_model_len);
  Arena carve(device_alloc<char>(measure.used()));
  act = carve_activations(carve, d, rc.max_model_len);
  const CudaMemoryPlan mp = memory_plan(cfg, d, rc.block_size, rc.max_model_len, rc.kv_cache_fp8);
  weight_bytes = mp.weight_bytes;
  workspace_bytes = mp.workspace_bytes;
  weights_memory = profiler::MemoryRecord("cuda weights", int64_t(weight_bytes), rc.device);
  workspace_memory = profiler::MemoryRecord("cuda workspace", int64_t(workspace_bytes), rc.device);
  const size_t meta = max_meta_entries(d);
  const size_t pinned_bytes = size_t(kRing) * (meta + size_t(d.max_seqs)) * sizeof(int32_t);
  ATOM_CUDA_CHECK(cudaMallocHost(&pinned, pinned_bytes));
  for (int64_t i = 0; i < kRing; ++i) {
    staging[i] = static_cast<int32_t*>(pinned) + size_t(i) * meta;
    host_ids[i] = static_cast<int32_t*>(pinned) + size_t(kRing) * meta + size_t(i * d.max_seqs);
  }
  for (cudaEvent_t& e : events)
    ATOM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  ATOM_CUDA_CHECK(
      cudaMemsetAsync(act.ids, 0, size_t(kRing * d.max_seqs) * sizeof(int32_t), stream));
  sync();
  ATOM_LOG_INFO("{}CUDA runner: {:.2f} GiB of weights uploaded in {:.2f} s", who(),
                weight_bytes / kGiB, seconds_since(t0));

  warm_up();
}

void CudaModelRunner::Impl::upload_shards(const DecoderWeights& w) {
  const TpLayout& t = layout;
  const int64_t D = d.D, H = d.H;
  // Vocabulary rows [vocab_begin, vocab_begin + vocab_rows) of the padded vocabulary: the real
  // ones, then zero rows (their logits are cut off before sampling).
  auto vocab_rows = [&](const cpu::QMatrix& m) {
    const int64_t real = std::clamp<int64_t>(t.vocab - t.vocab_begin, 0, t.vocab_rows);
    return upload_rows({RowRange{&m, real > 0 ? t.vocab_begin : 0, real}}, 0, -1, t.vocab_rows);
  };
  embed = vocab_rows(w.embed);
  lm_head = w.lm_head.data == w.embed.data ? embed : vocab_rows(w.lm_head);
  const std::vector<std::pair<int64_t, int64_t>> qkv_rows = t.qkv_rows();
  const std::vector<std::pair<int64_t, int64_t>> gate_up_rows = t.gate_up_rows();
  for (const DecoderLayerWeights& L : w.layers) {
    DeviceLayer dl = layer_with_norms(L);  // replicated: the norms
    // Column-parallel: this rank's q heads, then its kv heads' k and v rows.
    if (L.qkv.data) {
      std::vector<RowRange> parts;
      for (const auto& [first, count] : qkv_rows) parts.push_back(RowRange{&L.qkv, first, count});
      dl.qkv = upload_rows(parts);
    } else {
      dl.qkv = upload_rows({RowRange{&L.q, t.q_head_begin * D, t.num_q_heads * D},
                            RowRange{&L.k, t.kv_head_begin * D, t.num_kv_heads * D},
                            RowRange{&L.v, t.kv_head_begin * D, t.num_kv_heads * D}});
    }
    dl.qkv_bias =
        L.qkv_bias.empty() ? nullptr : upload(host_bf16(slice_vector(L.qkv_bias, qkv_rows)));
    if (L.gate_up.data) {
      std::vector<RowRange> parts;
      for (const auto& [first, count] : gate_up_rows)
        parts.push_back(RowRange{&L.gate_up, first, count});
      dl.gate_up = upload_rows(parts);
    } else {
      dl.gate_up = upload_rows({RowRange{&L.gate, t.inter_begin, t.inter_size},
                                RowRange{&L.up, t.inter_begin, t.inter_size}});
    }
    dl.gate_up_bias = L.gate_up_bias.empty()
                          ? nullptr
                          : upload(host_bf16(slice_vector(L.gate_up_bias, gate_up_rows)));
    // Row-parallel: this rank's input columns; the bias is added once, by rank 0, since the
    // ranks' outputs are summed.
    const auto [o_first, o_count] = t.o_cols();
    dl.o = upload_rows({RowRange{&L.o, 0, H}}, o_first, o_count);
    dl.o_bias = rank == 0 ? upload_or_null(L.o_bias) : nullptr;
    const auto [down_first, down_count] = t.down_cols();
    dl.down = upload_rows({RowRange{&L.down, 0, H}}, down_first, down_count);
    dl.down_bias = rank == 0 ? upload_or_null(L.down_bias) : nullptr;
    layers.push_back(dl);
  }
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
  std::vector<RowRange> ranges;
  for (const cpu::QMatrix* m : parts) ranges.push_back(RowRange{m, 0, m->rows});
  return upload_rows(ranges);
}

bf16* CudaModelRunner::Impl::upload_rows(const std::vector<RowRange>& parts, int64_t col_first,
                                         int64_t col_count, int64_t total_rows) {
  int64_t rows = 0, cols = -1;
  for (const RowRange& p : parts) {
    ATOM_CHECK(p.m->data != nullptr, kInternal, "a weight matrix to upload is missing");
    ATOM_CHECK(cols < 0 || p.m->cols == cols, kInternal, "stacked parts of different widths");
    ATOM_CHECK(p.first >= 0 && p.count >= 0 && p.first + p.count <= p.m->rows, kInternal,
               "rows [{}, {}) of a {}-row weight", p.first, p.first + p.count, p.m->rows);
    cols = p.m->cols;
    rows += p.count;
  }
  if (col_count < 0) col_count = cols - col_first;
  ATOM_CHECK(col_first >= 0 && col_count > 0 && col_first + col_count <= cols, kInternal,
             "columns [{}, {}) of a {}-column weight", col_first, col_first + col_count, cols);
  if (total_rows < 0) total_rows = rows;
  ATOM_CHECK(total_rows >= rows, kInternal, "{} rows into a {}-row matrix", rows, total_rows);
  bf16* dst = device_alloc<bf16>(size_t(total_rows * col_count));
  const size_t row_bytes = size_t(col_count) * sizeof(uint16_t);
  const int64_t chunk_rows = std::max<int64_t>(1, int64_t(kUploadChunkBytes / row_bytes));
  ATOM_CHECK(size_t(chunk_rows) * row_bytes <= kUploadChunkBytes, kUnsupported,
             "a weight row of {} bytes exceeds the {} MiB upload chunk", row_bytes,
             kUploadChunkBytes >> 20);
  // Chunks of rows go through the pinned buffers in turn: the host fills one (bf16 rows copied,
  // others converted, in parallel) while the previous one is copied to the device, so the
  // upload runs at the host's copy rate rather than a pageable memcpy's.
  int64_t out_row = 0;
  for (const RowRange& p : parts) {
    for (int64_t r0 = 0; r0 < p.count; r0 += chunk_rows) {
      const int64_t n = std::min(chunk_rows, p.count - r0);
      const int buf = int(upload_chunks++ % kUploadBuffers);
      ATOM_CUDA_CHECK(cudaEventSynchronize(upload_done[buf]));  // its last copy has finished
      uint16_t* staging = reinterpret_cast<uint16_t*>(static_cast<char*>(upload_pinned) +
                                                      size_t(buf) * kUploadChunkBytes);
#pragma omp parallel
      {
        std::vector<float> scratch;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < n; ++r)
          row_to_bf16(*p.m, p.first + r0 + r, col_first, col_count, staging + size_t(r * col_count),
                      scratch);
      }
      ATOM_CUDA_CHECK(cudaMemcpyAsync(dst + size_t(out_row * col_count), staging,
                                      size_t(n) * row_bytes, cudaMemcpyHostToDevice, stream));
      ATOM_CUDA_CHECK(cudaEventRecord(upload_done[buf], stream));
      out_row += n;
    }
  }
  if (total_rows > rows)  // padding rows (a vocabulary shard past the real vocabulary)
    ATOM_CUDA_CHECK(cudaMemsetAsync(dst + size_t(rows * col_count), 0,
                                    size_t(total_rows - rows) * row_bytes, stream));
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
  const size_t per_cache =
      size_t(blocks * rc.block_size * d.kv_size) * kv_element_bytes(rc.kv_cache_fp8);
  uint8_t* base = static_cast<uint8_t*>(kv_pool);
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
  const size_t pool =
      size_t(2 * d.layers * rc.block_size * d.kv_size) * kv_element_bytes(rc.kv_cache_fp8);
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
                                  size_t(pen_words + 1) * sizeof(int32_t), cudaMemcpyHostToDevice,
                                  stream));
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
  ATOM_LOG_INFO("{}warm-up: a prefill of {} x {} tokens and a decode of {} sequences in {:.2f} s",
                who(), prefill.batch.num_seqs(), prefill.max_q_len, decode.batch.num_seqs(),
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

int64_t CudaModelRunner::Impl::kv_blocks_affordable() {
  const size_t block_bytes =
      size_t(2 * d.layers * rc.block_size * d.kv_size) * kv_element_bytes(rc.kv_cache_fp8);
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
    const double kv_bytes =
        std::min(budget - used - double(graph_bytes), double(free_bytes) - double(graph_bytes));
    blocks = kv_bytes > 0 ? int64_t(kv_bytes / double(block_bytes)) : 0;
    const double other = used - double(weight_bytes) - double(workspace_bytes);
    ATOM_LOG_INFO(
        "{}GPU memory budget: {:.2f} GiB ({} of {:.2f} GiB): weights {:.2f} GiB, activations "
        "{:.2f} GiB, kernels and libraries {:.2f} GiB, CUDA graphs {:.2f} GiB, KV cache {} "
        "blocks = {:.2f} GiB = {} tokens",
        who(), budget / kGiB, rc.gpu_memory_utilization, double(total_bytes) / kGiB,
        double(weight_bytes) / kGiB, double(workspace_bytes) / kGiB, std::max(other, 0.0) / kGiB,
        double(graph_bytes) / kGiB, blocks, double(blocks) * double(block_bytes) / kGiB,
        blocks * rc.block_size);
    ATOM_CHECK(blocks > 0, kInvalidArgument,
               "{}no GPU memory left for the KV cache: {:.2f} GiB of weights, {:.2f} GiB of "
               "activations and {:.2f} GiB of kernels and libraries exceed {} of the GPU's "
               "{:.2f} GiB, or the {:.2f} GiB still free; raise --gpu-memory-utilization or "
               "lower --max-num-batched-tokens / --max-num-seqs",
               who(), double(weight_bytes) / kGiB, double(workspace_bytes) / kGiB,
               std::max(other, 0.0) / kGiB, rc.gpu_memory_utilization, double(total_bytes) / kGiB,
               double(free_bytes) / kGiB);
  }
  affordable_blocks = blocks;
  return blocks;
}

void CudaModelRunner::Impl::finish_start_up(int64_t blocks) {
  ATOM_ASSERT(blocks > 0 && kv_pool == nullptr);
  const size_t block_bytes =
      size_t(2 * d.layers * rc.block_size * d.kv_size) * kv_element_bytes(rc.kv_cache_fp8);
  ATOM_CUDA_CHECK(cudaMalloc(&kv_pool, size_t(blocks) * block_bytes));
  kv_memory =
      profiler::MemoryRecord("cuda kv cache", int64_t(size_t(blocks) * block_bytes), rc.device);
  ATOM_CUDA_CHECK(cudaMemsetAsync(kv_pool, 0, size_t(blocks) * block_bytes, stream));
  point_layers_at_pool(blocks);
  sync();
  rc.num_blocks = blocks;
  capture_graphs();
}

void CudaModelRunner::Impl::capture_graphs() {
  const std::vector<int64_t> sizes = capture_sizes();
  if (sizes.empty()) {
    ATOM_LOG_INFO("{}CUDA graphs: off ({})", who(),
                  rc.enforce_eager ? "enforce-eager" : "no size fits");
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
  ATOM_LOG_INFO("{}cudagraph capture[{}] cost: {:.2f} seconds, {:.1f} MiB", who(), list,
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
                   "sequence {}: its in-flight token is from a step too old to gather", s.seq_id);
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
  ATOM_CUDA_CHECK(
      cudaMemcpyAsync(act.meta, host, at * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
  return L;
}

void CudaModelRunner::Impl::enqueue_forward(const Layout& L) {
  const int64_t T = L.T, S = L.S, R = L.R;
  cuda::launch_gather_ids(act.ids, kRing * d.max_seqs, L.gather_src, L.gather_dst, L.G, L.token_ids,
                          T, stream);

  const float eps = float(cfg.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(float(d.D));
  const int64_t H = d.H, I = d.I;
  const cuda::RopeArgs rope{L.positions, inv_freq, attention_factor, cfg.rotary_dim};
  cuda::PagedAttentionBatch attn{L.cu_seqlens, L.seq_lens,  L.block_tables, L.bt_stride, S, T,
                                 L.max_blocks, L.max_q_len, L.max_seq_len};
  const size_t ws_bytes =
      cuda::paged_attention_workspace_bytes(S, d.nh, d.nkv, d.D, L.max_q_len, L.max_seq_len);
  ATOM_ASSERT(ws_bytes <= act.attn_ws_bytes);

  if (sharded()) {  // vocabulary-parallel: this rank's rows, zeros for the others', summed
    cuda::launch_vocab_shard_embedding(embed, layout.vocab_begin, d.vocab_local, H, L.token_ids,
                                       act.residual, T, stream);  // [T, H]
    comm->all_reduce_sum(act.residual, size_t(T * H), DType::kBF16, stream);
  } else {
    cuda::launch_embedding(embed, d.vocab, H, L.token_ids, act.residual, T, stream);  // [T, H]
  }
  for (int64_t l = 0; l < d.layers; ++l) {
    const DeviceLayer& Ly = layers[size_t(l)];
    // Host time launching the layer's kernels; their GPU time is on the GPU rows.
    profiler::Scope layer_scope(profiler::kMoreOnly, "layer", l, "model",
                                {{"tokens", T}, {"hidden", H}, {"seqs", S}});
    // --- attention block ---
    if (l == 0)
      cuda::launch_rms_norm(act.residual, Ly.attn_norm, act.h, T, H, eps, stream);
    else  // residual += mlp_out (summed over the ranks); h = norm(residual)
      allreduce_add_rms_norm(act.mlp_out, act.residual, Ly.attn_norm, act.h, T);
    gemm->launch(act.h, Ly.qkv, Ly.qkv_bias, act.qkv, T, d.qkv_size, H, stream);  // [T, q|k|v]
    // One launch: split, per-head q/k norm (Qwen3), RoPE, k and v into the cache; q [T, nh, D].
    cuda::KvCacheWrite write{L.slots, Ly.k_cache, Ly.v_cache, kv_blocks * rc.block_size};
    if (rc.kv_cache_fp8) write.dtype = DType::kF8E4M3;  // scales 1.0 (the defaults)
    cuda::launch_qkv_rope_and_cache(act.qkv, variant.qk_norm ? Ly.q_norm : nullptr,
                                    variant.qk_norm ? Ly.k_norm : nullptr, eps, rope, write, act.q,
                                    T, d.nh, d.nkv, d.D, stream);
    cuda::PagedKvCache cache{Ly.k_cache, Ly.v_cache, kv_blocks, rc.block_size, d.nkv, d.D};
    if (rc.kv_cache_fp8) cache.dtype = DType::kF8E4M3;
    cuda::paged_attention(act.q, d.nh, cache, attn, scale, act.attn, act.attn_ws, ws_bytes,
                          stream);                                                  // [T, nh, D]
    gemm->launch(act.attn, Ly.o, Ly.o_bias, act.attn_out, T, H, d.q_size, stream);  // [T, H]
    // --- MLP block ---
    allreduce_add_rms_norm(act.attn_out, act.residual, Ly.ffn_norm, act.h, T);
    gemm->launch(act.h, Ly.gate_up, Ly.gate_up_bias, act.gate_up, T, 2 * I, H, stream);
    cuda::launch_silu_and_mul(act.gate_up, act.act, T, I, stream);               // [T, I]
    gemm->launch(act.act, Ly.down, Ly.down_bias, act.mlp_out, T, H, I, stream);  // [T, H]
  }
  // Final norm, then the LM head only for the rows that need logits.
  allreduce_add_rms_norm(act.mlp_out, act.residual, final_norm, act.h, T);
  cuda::launch_embedding(act.h, T, H, L.logits_rows, act.selected, R, stream);  // [R, H]
  if (!sharded()) {
    gemm->launch(act.selected, lm_head, static_cast<const float*>(nullptr), act.logits, R, d.vocab,
                 H, stream);  // [R, vocab] f32
  } else if (R > 0) {         // every rank has the same R: all skip the collective or none does
    // Vocabulary-parallel: this rank's logits [R, vocab_local] go to its slot of the shards
    // [tp, R, vocab_local], which the all-gather fills in place; then dense rows [R, vocab].
    float* mine = act.shards + size_t(rank * R * d.vocab_local);
    gemm->launch(act.selected, lm_head, static_cast<const float*>(nullptr), mine, R, d.vocab_local,
                 H, stream);
    comm->all_gather(mine, act.shards, size_t(R * d.vocab_local), DType::kF32, stream);
    cuda::launch_merge_vocab_shards(act.shards, d.tp, R, d.vocab_local, d.vocab, act.logits,
                                    stream);
  }
}

void CudaModelRunner::Impl::allreduce_add_rms_norm(bf16* x, bf16* residual, const bf16* weight,
                                                   bf16* out, int64_t T) {
  // x: [T, H], this rank's partial sums of a row-parallel GEMM; residual: [T, H] (updated);
  // out: [T, H] = rms_norm(residual + sum over ranks of x) * weight.
  // Decode-sized messages go through the custom all-reduce (peer-to-peer, one launch); with
  // ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION (rc.allreduce_rms_norm_fusion) that launch also does the
  // residual add and the norm. Larger ones, or no peer access: NCCL's in-place all-reduce, then
  // the add + norm kernel of the single-GPU path. Every rank takes the same branch (same T).
  const float eps = float(cfg.rms_norm_eps);
  if (sharded() && car != nullptr && car->should_use(T * d.H * int64_t(sizeof(bf16)))) {
    if (rc.allreduce_rms_norm_fusion) {
      car->all_reduce_add_rms_norm(x, residual, weight, out, T, d.H, eps, stream);
      return;
    }
    car->all_reduce(x, x, T * d.H, stream);
  } else if (sharded()) {
    comm->all_reduce_sum(x, size_t(T * d.H), DType::kBF16, stream);
  }
  cuda::launch_add_rms_norm(x, residual, weight, out, T, d.H, eps, stream);
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
  const HostStep hs = prepare(seqs);  // a bad plan throws here, before anything is recorded
  std::exception_ptr error;
  try {
    launch(hs);
  } catch (...) {
    error = std::current_exception();
  }
  record(hs, error);
}

CudaModelRunner::Impl::HostStep CudaModelRunner::Impl::prepare(std::span<const StepSeq> seqs) {
  ATOM_CHECK(int64_t(inflight.size()) < kRing - 1, kInternal,
             "{} steps in flight: the CUDA runner keeps at most {}", inflight.size(), kRing - 1);
  HostStep hs;
  hs.number = num_submitted;
  hs.slot = hs.number % kRing;
  hs.plan = [&] {
    profiler::Scope scope("plan", "runner", {{"seqs", int64_t(seqs.size())}});
    return plan(seqs);
  }();
  // Sampling rows: parameters, penalty rows (distinct tokens seen, the in-flight one read on the
  // device) and min_tokens masks.
  std::vector<cuda::SampleRowParams>& sample = hs.sample;
  std::vector<cuda::PenaltyRowParams>& pen_rows = hs.pen_rows;
  std::vector<cuda::PenaltyEntry>& pen_entries = hs.pen_entries;
  std::vector<int32_t>& stop_ids = hs.stop_ids;
  bool& all_greedy = hs.all_greedy;
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
    const int64_t row = int64_t(hs.sampled_seqs.size());
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
    hs.sampled_seqs.push_back(s.seq_id);
  }
  return hs;
}

void CudaModelRunner::Impl::launch(const HostStep& hs) {
  // The calling thread is not necessarily the one that built the runner: make its device current.
  ATOM_CUDA_CHECK(cudaSetDevice(rc.device));
  const Plan& p = hs.plan;
  const int64_t slot = hs.slot;
  const Layout L = upload_plan(p,
                               hs.all_greedy ? std::span<const cuda::SampleRowParams>{}
                                             : std::span<const cuda::SampleRowParams>(hs.sample),
                               slot);
  {
    profiler::Scope scope("forward", "runner",
                          {{"tokens", p.batch.num_tokens()}, {"seqs", p.batch.num_seqs()}});
    run_forward(p, L);
  }
  int32_t* ids_d = act.ids + slot * d.max_seqs;
  const int64_t R = int64_t(hs.sampled_seqs.size());
  profiler::Scope sample_scope("sample", "runner", {{"rows", R}});
  const std::vector<cuda::PenaltyRowParams>& pen_rows = hs.pen_rows;
  const std::vector<cuda::PenaltyEntry>& pen_entries = hs.pen_entries;
  const std::vector<int32_t>& stop_ids = hs.stop_ids;
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
    ATOM_CUDA_CHECK(
        cudaMemcpyAsync(extra_device, h, words * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    cuda::launch_apply_penalties(
        act.logits, d.vocab, reinterpret_cast<const cuda::PenaltyRowParams*>(extra_device),
        int64_t(pen_rows.size()),
        reinterpret_cast<const cuda::PenaltyEntry*>(extra_device + entries_at), act.ids,
        extra_device + stops_at, stream);
  }
  if (R > 0) {
    if (hs.all_greedy)
      cuda::launch_argmax(act.logits, ids_d, R, d.vocab, stream);
    else
      cuda::launch_sample(act.logits, R, d.vocab, L.sample, ids_d, stream);
    ATOM_CUDA_CHECK(cudaMemcpyAsync(host_ids[slot], ids_d, size_t(R) * sizeof(int32_t),
                                    cudaMemcpyDeviceToHost, stream));
  }
  ATOM_CUDA_CHECK(cudaEventRecord(events[slot], stream));
}

void CudaModelRunner::Impl::record(const HostStep& hs, std::exception_ptr error) {
  Step step;
  step.number = hs.number;
  step.num_sampled = hs.sampled_seqs.size();
  step.error = error;
  if (!error) step.done = events[hs.slot];
  for (size_t row = 0; row < hs.sampled_seqs.size(); ++row)
    last_id[hs.sampled_seqs[row]] = IdRecord{hs.number, int64_t(row)};
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

// --- tensor parallelism: the ranks' threads and the group ---

namespace {

// A thread that runs one job at a time for one rank, with that rank's device current.
class RankWorker {
 public:
  explicit RankWorker(int device) : device_(device), thread_([this] { loop(); }) {}
  ~RankWorker() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  RankWorker(const RankWorker&) = delete;
  RankWorker& operator=(const RankWorker&) = delete;

  void post(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(m_);
      ATOM_ASSERT(done_ && !job_);
      job_ = std::move(job);
      done_ = false;
      error_ = nullptr;
    }
    cv_.notify_all();
  }
  // Whether the posted job has run, waiting up to `timeout` for it.
  bool wait_for(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(m_);
    return cv_.wait_for(lock, timeout, [&] { return done_; });
  }
  // What the finished job threw, if anything.
  std::exception_ptr error() {
    std::lock_guard<std::mutex> lock(m_);
    return error_;
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || job_; });
      if (!job_) return;  // stopping, nothing left to run
      std::function<void()> job = std::move(job_);
      job_ = nullptr;
      lock.unlock();
      std::exception_ptr error;
      try {
        ATOM_CUDA_CHECK(cudaSetDevice(device_));
        job();
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      error_ = error;
      done_ = true;
      cv_.notify_all();
    }
  }

  const int device_;
  std::mutex m_;
  std::condition_variable cv_;
  std::function<void()> job_;
  bool done_ = true, stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: it starts once the members above exist
};

// After one rank has failed, how long the others get to finish on their own before the group's
// communicators are aborted (a rank blocked on a collective the failed one never joins would
// wait forever).
constexpr std::chrono::milliseconds kAbortGrace{2000};

}  // namespace

struct CudaModelRunner::TpGroup {
  int64_t tp = 0;
  std::vector<Impl*> impls;                            // [tp]: rank 0 is CudaModelRunner::impl_
  std::vector<std::unique_ptr<Impl>> others;           // [tp]: ranks 1 .. tp - 1 own theirs here
  std::vector<std::unique_ptr<cuda::NcclComm>> comms;  // [tp]
  // The custom all-reduce, when every pair of the group's GPUs has peer access: [tp] or empty.
  std::shared_ptr<cuda::CustomAllReduceGroup> car_group;
  std::vector<std::unique_ptr<cuda::CustomAllReduce>> cars;
  std::string car_note;  // how the group all-reduces, for the start-up line
  std::vector<std::unique_ptr<RankWorker>> workers;  // [tp]
  std::vector<int64_t> kv_blocks;                    // [tp]: what each rank's memory affords
  std::vector<std::vector<int32_t>> last_ids;        // [tp]: the last collected step's ids
  std::mutex comms_mutex;  // comms: each rank stores its own while abort_all may read them
  bool broken = false;     // a rank failed: the ranks may disagree on what ran; no more steps

  // fn(r) on every rank's thread at once; returns when all have run. When a rank throws, the
  // group is broken, and the ranks still running after kAbortGrace get their communicators
  // aborted so they return; the lowest rank's error is rethrown. A communicator still being
  // made cannot be aborted: what can be refused (devices, shapes, NCCL) is refused before.
  void run(const std::function<void(int64_t)>& fn) {
    ATOM_CHECK(!broken, kInternal,
               "tensor-parallel runner: a rank failed in an earlier step, so the ranks may no "
               "longer agree; the runner runs no more steps");
    for (int64_t r = 0; r < tp; ++r) workers[size_t(r)]->post([&fn, r] { fn(r); });
    std::vector<std::exception_ptr> errors(static_cast<size_t>(tp));
    std::vector<bool> done(static_cast<size_t>(tp), false);
    std::optional<std::chrono::steady_clock::time_point> failed_at;
    bool aborted = false;
    for (int64_t left = tp; left > 0;) {
      for (int64_t r = 0; r < tp; ++r) {
        if (done[size_t(r)] || !workers[size_t(r)]->wait_for(std::chrono::milliseconds(10)))
          continue;
        done[size_t(r)] = true;
        --left;
        errors[size_t(r)] = workers[size_t(r)]->error();
        if (errors[size_t(r)] && !failed_at) failed_at = std::chrono::steady_clock::now();
      }
      if (failed_at && !aborted && left > 0 &&
          std::chrono::steady_clock::now() - *failed_at > kAbortGrace) {
        abort_all();
        aborted = true;
      }
    }
    if (failed_at) broken = true;
    for (const std::exception_ptr& e : errors)
      if (e) std::rethrow_exception(e);
  }

  void abort_all() {
    std::lock_guard<std::mutex> lock(comms_mutex);
    for (const std::unique_ptr<cuda::NcclComm>& c : comms)
      if (c) c->abort();
  }

  // Every rank's runner, then the communicators (destroying them is collective among a node's
  // ranks), each on its rank's thread; then the threads. Errors are dropped: nothing is left to
  // report them to.
  void destroy(std::unique_ptr<Impl>& rank0) {
    // After a failed rank the others may wait in a collective for ever: abort them first, so the
    // runners' stream synchronizations return.
    if (broken) abort_all();
    auto each = [&](const std::function<void(int64_t)>& fn) {
      for (int64_t r = 0; r < tp; ++r)
        if (workers[size_t(r)]) workers[size_t(r)]->post([&fn, r] { fn(r); });
      for (int64_t r = 0; r < tp; ++r)
        if (workers[size_t(r)])
          while (!workers[size_t(r)]->wait_for(std::chrono::milliseconds(100))) {
          }
    };
    each([&](int64_t r) {
      if (r == 0)
        rank0.reset();
      else
        others[size_t(r)].reset();
    });
    each([&](int64_t r) {
      if (size_t(r) < cars.size()) cars[size_t(r)].reset();
    });
    each([&](int64_t r) {
      std::unique_ptr<cuda::NcclComm> c;
      {
        std::lock_guard<std::mutex> lock(comms_mutex);
        c = std::move(comms[size_t(r)]);
      }
      c.reset();
    });
    workers.clear();
  }
};

CudaModelRunner::CudaModelRunner(const Model& model, const CudaRunnerConfig& config) {
  ATOM_CHECK(config.tp_size >= 1, kInvalidArgument,
             "--tensor-parallel-size must be at least 1, got {}", config.tp_size);
  if (config.tp_size == 1) {  // one GPU: no NCCL, no threads
    impl_ = std::make_unique<Impl>(model, config);
    impl_->finish_start_up(impl_->kv_blocks_affordable());
    return;
  }
  const int64_t tp = config.tp_size;
  // Everything that can be refused is refused before any rank starts (see TpGroup::run).
  (void)make_tp_layout(model.config(), tp, 0);  // heads, kv heads and MLP split over tp ranks
  const int visible = cuda_device_count();
  ATOM_CHECK(config.device >= 0 && config.device + tp <= visible, kInvalidArgument,
             "--tensor-parallel-size {} needs {} GPUs (devices {} to {}), but {} CUDA devices "
             "are visible",
             tp, tp, config.device, config.device + tp - 1, visible);
  ATOM_CHECK(cuda::nccl_available(), kUnsupported,
             "--tensor-parallel-size {}: tensor parallelism needs NCCL, and this build of atom "
             "has none: install NCCL (nccl.h, libnccl) and configure again (-DNCCL_ROOT=<prefix> "
             "if it is not in a system path)",
             tp);
  const auto t0 = std::chrono::steady_clock::now();
  tp_ = std::make_unique<TpGroup>();
  TpGroup& g = *tp_;
  g.tp = tp;
  g.impls.assign(size_t(tp), nullptr);
  g.others.resize(size_t(tp));
  g.comms.resize(size_t(tp));
  g.kv_blocks.assign(size_t(tp), 0);
  g.workers.resize(size_t(tp));
  try {
    for (int64_t r = 0; r < tp; ++r)
      g.workers[size_t(r)] = std::make_unique<RankWorker>(config.device + int(r));
    // Rank 0 makes the group's id; every rank joins with it, then loads its shard and warms up
    // (the warm-up runs the collectives, so all ranks at once).
    const std::vector<uint8_t> id = cuda::nccl_unique_id();
    std::vector<int> devices;
    for (int64_t r = 0; r < tp; ++r) devices.push_back(config.device + int(r));
    const std::string no_peer = cuda::CustomAllReduce::peer_access_problem(devices);
    cuda::CustomAllReduceConfig car_config;
    car_config.quant = cuda::quick_reduce_quantization_from_env();
    // A rank that failed leaves the others in the all-reduce's barrier: after a minute the
    // kernel traps, the stream reports an error and the group can shut down instead of hanging.
    car_config.barrier_timeout_ms = 60000;
    if (no_peer.empty()) {
      g.car_group = std::make_shared<cuda::CustomAllReduceGroup>(int(tp));
      g.cars.resize(size_t(tp));
    }
    g.car_note =
        no_peer.empty()
            ? fmt::format("small all-reduces peer-to-peer ({} transfer){}",
                          cuda::all_reduce_quant_name(car_config.quant),
                          config.allreduce_rms_norm_fusion ? ", fused with add + RMSNorm" : "")
            : "NCCL only (" + no_peer + ")";
    g.run([&](int64_t r) {
      size_t free_before = 0, total = 0;   // the worker made its device current
      ATOM_CUDA_CHECK(cudaFree(nullptr));  // the context, whose memory is not the runner's
      ATOM_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
      auto comm = std::make_unique<cuda::NcclComm>(id, int(tp), int(r));
      cuda::NcclComm* c = comm.get();
      {
        std::lock_guard<std::mutex> lock(g.comms_mutex);
        g.comms[size_t(r)] = std::move(comm);
      }
      // Before the rank's weights and KV: its buffers (~32 MiB) count against the budget.
      if (g.car_group)
        g.cars[size_t(r)] =
            std::make_unique<cuda::CustomAllReduce>(g.car_group, int(r), devices, car_config);
      auto impl = std::make_unique<Impl>(
          model, config, r, c, g.car_group ? g.cars[size_t(r)].get() : nullptr, free_before);
      g.impls[size_t(r)] = impl.get();
      if (r == 0)
        impl_ = std::move(impl);
      else
        g.others[size_t(r)] = std::move(impl);
    });
    // One block count for the engine: the least any rank affords.
    g.run([&](int64_t r) { g.kv_blocks[size_t(r)] = g.impls[size_t(r)]->kv_blocks_affordable(); });
    const int64_t blocks = *std::min_element(g.kv_blocks.begin(), g.kv_blocks.end());
    g.run([&](int64_t r) { g.impls[size_t(r)]->finish_start_up(blocks); });
    std::string per_rank;
    for (const int64_t b : g.kv_blocks)
      per_rank += (per_rank.empty() ? "" : ", ") + std::to_string(b);
    ATOM_LOG_INFO(
        "tensor parallelism: {} ranks on devices {} to {}, ready in {:.2f} s; KV blocks each "
        "rank affords: {}; every rank's pool holds {}; {}",
        tp, config.device, config.device + tp - 1, seconds_since(t0), per_rank, blocks, g.car_note);
  } catch (...) {
    g.destroy(impl_);  // a constructor that throws runs no destructor
    throw;
  }
}

CudaModelRunner::~CudaModelRunner() {
  if (tp_) tp_->destroy(impl_);
}

std::vector<int32_t> CudaModelRunner::execute(std::span<const StepSeq> seqs) {
  check_execute(seqs);
  if (seqs.empty()) return {};
  submit(seqs);
  return collect();
}

void CudaModelRunner::submit(std::span<const StepSeq> seqs) {
  if (!tp_) {
    impl_->submit(seqs);
    return;
  }
  // The host work once (rank 0 keeps the sequences' state), the launches on every rank.
  const Impl::HostStep hs = impl_->prepare(seqs);
  std::exception_ptr error;
  try {
    tp_->run([&](int64_t r) { tp_->impls[size_t(r)]->launch(hs); });
  } catch (...) {
    error = std::current_exception();
  }
  impl_->record(hs, error);
}

std::vector<int32_t> CudaModelRunner::collect() {
  if (!tp_) return impl_->collect();
  ATOM_CHECK(!impl_->inflight.empty(), kInternal, "collect() with no step in flight");
  const int64_t number = impl_->inflight.front().number;
  std::vector<int32_t> ids = impl_->collect();  // rank 0's; rethrows a step that failed
  // Launched on every rank: each rank's step is done once its own event is, and each must have
  // sampled the same ids (the same gathered logits, parameters and seeds).
  const int64_t slot = number % kRing;
  tp_->last_ids.resize(size_t(tp_->tp));  // kept across steps: assign() reuses their capacity
  tp_->last_ids[0].assign(ids.begin(), ids.end());
  for (int64_t r = 1; r < tp_->tp; ++r) {
    const Impl& k = *tp_->impls[size_t(r)];
    ATOM_CUDA_CHECK(cudaEventSynchronize(k.events[slot]));
    const int32_t* theirs = k.host_ids[slot];
    tp_->last_ids[size_t(r)].assign(theirs, theirs + ids.size());
    ATOM_CHECK(tp_->last_ids[size_t(r)] == ids, kInternal,
               "tensor-parallel rank {} sampled other ids than rank 0 in step {}", r, number);
  }
  return ids;
}

int64_t CudaModelRunner::num_in_flight() const { return int64_t(impl_->inflight.size()); }

void CudaModelRunner::release(int64_t seq_id) {
  // Sampling state is read on this thread at submit, so nothing in flight still needs it; a
  // step in flight gathers on the device, from ids it does not look up here. With several
  // ranks, rank 0 keeps the only copy.
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
  const size_t n = p.batch.logits_indices.size() * size_t(impl_->d.vocab);
  if (!tp_) {
    const Impl::Layout L = impl_->upload_plan(p, {}, slot);
    impl_->run_forward(p, L);
    std::vector<float> logits(n);
    ATOM_CUDA_CHECK(cudaMemcpyAsync(logits.data(), impl_->act.logits, n * sizeof(float),
                                    cudaMemcpyDeviceToHost, impl_->stream));
    impl_->sync();
    return logits;
  }
  // Every rank runs the step; all must end with the same gathered logits.
  std::vector<std::vector<float>> logits(size_t(tp_->tp), std::vector<float>(n));
  tp_->run([&](int64_t r) {
    Impl& k = *tp_->impls[size_t(r)];
    const Impl::Layout L = k.upload_plan(p, {}, slot);
    k.run_forward(p, L);
    ATOM_CUDA_CHECK(cudaMemcpyAsync(logits[size_t(r)].data(), k.act.logits, n * sizeof(float),
                                    cudaMemcpyDeviceToHost, k.stream));
    k.sync();
  });
  for (int64_t r = 1; r < tp_->tp; ++r)
    ATOM_CHECK(
        n == 0 || std::memcmp(logits[size_t(r)].data(), logits[0].data(), n * sizeof(float)) == 0,
        kInternal, "tensor-parallel rank {} ended a step with other logits than rank 0", r);
  return std::move(logits[0]);
}

std::vector<int64_t> CudaModelRunner::graph_sizes() const {
  std::vector<int64_t> sizes;
  for (const Impl::Graph& g : impl_->graphs) sizes.push_back(g.batch);
  return sizes;
}

int64_t CudaModelRunner::num_graph_steps() const { return impl_->graph_steps; }

int64_t CudaModelRunner::num_eager_steps() const { return impl_->eager_steps; }

int64_t CudaModelRunner::tp_size() const { return tp_ ? tp_->tp : 1; }

std::vector<int64_t> CudaModelRunner::kv_blocks_by_rank() const {
  return tp_ ? tp_->kv_blocks : std::vector<int64_t>{impl_->affordable_blocks};
}

std::vector<std::vector<int32_t>> CudaModelRunner::last_ids_by_rank() const {
  return tp_ ? tp_->last_ids : std::vector<std::vector<int32_t>>{};
}

}  // namespace atom
