// cuBLASLt GEMM: y[m, n] = x[m, k] · W[n, k]^T (+ bias), bf16 inputs, f32 accumulation.
//
// cuBLASLt is column-major. Row-major y [m, n] is column-major y^T (n x m, ld n); row-major
// W [n, k] is column-major k x n (ld k) and x [m, k] column-major k x m (ld k). So
//   y^T = op(A) · op(B) with A = W (k x n, transposed) and B = x (k x m, as is),
// and the bias, a vector over the rows of the column-major output, is the epilogue's BIAS.
//
// Small m goes to gemv_kernel below instead (see gemm.h for when).
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <map>
#include <memory>

#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/gemm.h"
#include "atom/backends/cuda/pdl.cuh"
#include "atom/core/error.h"

#define ATOM_CUBLAS_CHECK(expr)                                                                   \
  do {                                                                                            \
    const cublasStatus_t atom_cublas_st_ = (expr);                                                \
    if (atom_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                               \
      ::atom::throw_error(::atom::ErrorCode::kInternal, "cuBLASLt error {} ({}) at {}:{}: {}",    \
                          cublasLtGetStatusName(atom_cublas_st_), int(atom_cublas_st_), __FILE__, \
                          __LINE__, cublasLtGetStatusString(atom_cublas_st_));                    \
    }                                                                                             \
  } while (0)

namespace atom::cuda {

namespace {

// The largest power of two up to 256 dividing the address: what cuBLASLt's alignment
// preferences speak of (256 is its default assumption).
uint32_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 1;
  while (align < 256 && a % (2 * align) == 0) align *= 2;
  return align;
}

const char* type_name(cudaDataType_t t) { return t == CUDA_R_32F ? "f32" : "bf16"; }

// What the heuristic's choice depends on.
struct PlanKey {
  int64_t m, n, k;
  cudaDataType_t out;
  bool bias;
  uint32_t align_x, align_w, align_y;
  auto operator<=>(const PlanKey&) const = default;
};

// The split-K reductions that keep y one rounding of the f32 result. For bf16 output the partial
// sums must meet in f32 (COMPUTE_TYPE; INPLACE and OUTPUT_TYPE add bf16 partials). With a bias
// on bf16 output, cuBLASLt's split-K kernels round the sum to bf16 before adding the bias and
// round again (all but one of 17 x 4099 outputs of a k = 576 case on an H100 matched
// bf16(bf16(acc) + bias)), so biased bf16 GEMMs do not split k at all (mask 0: no reduction).
// f32 output: any scheme sums in f32.
uint32_t reduction_schemes(const PlanKey& key) {
  if (key.out == CUDA_R_32F) return CUBLASLT_REDUCTION_SCHEME_MASK;
  return key.bias ? CUBLASLT_REDUCTION_SCHEME_NONE : CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
}

// One shape's descriptors and algorithm; destroys what it created.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr;  // W: k x n column-major, transposed by the op
  cublasLtMatrixLayout_t b = nullptr;  // x: k x m column-major
  cublasLtMatrixLayout_t c = nullptr;  // y: n x m column-major (C and D)
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// Destroys a preference descriptor on scope exit.
struct PreferenceGuard {
  cublasLtMatmulPreference_t pref = nullptr;
  ~PreferenceGuard() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
  }
};

template <typename T>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  ATOM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

template <typename T>
void set_pref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
              const T& value) {
  ATOM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
}

// --- GEMV: y[m, n] = x[m, k] · W[n, k]^T (+ bias) for m <= Gemm::kGemvRowsLimit ---
//
// Decode reads every weight byte once per step, so this kernel is a stream over W at the card's
// bandwidth. A block is kGemvWarps warps; a warp owns kGemvRowsPerWarp consecutive rows of W (a
// "row group") and walks k in 16-byte chunks (8 bf16), lane by lane, so a warp reads 512
// contiguous bytes of each row per step. `split` warps of a block may share one row group, each
// taking every split-th 512-byte step, when n is too small to give every SM enough warps; their
// sums meet in shared memory (no second kernel). Per chunk a thread loads its kGemvRowsPerWarp
// W vectors, then each x row's matching 16 bytes (x is small and read by every warp: L1 and L2
// keep it), and adds m x kGemvRowsPerWarp dot products of 8 into f32 registers. Unrolling by
// kUnroll chunks puts kUnroll * kGemvRowsPerWarp * 16 bytes per thread in flight before the
// first use: Little's law wants ~3 TB/s x ~1 us / 132 SMs ~ 24 KB per SM, and 12 to 16 resident
// warps of 4 KB (m > 4) to 8 KB (m <= 4) give two to five times that.
constexpr int kGemvWarps = 4;
constexpr int kGemvThreads = 32 * kGemvWarps;
constexpr int kGemvRowsPerWarp = 4;
// Fewer warps than this per SM (counting every row group's `split` warps) and the launcher
// splits k across the warps of a block, so small-n calls (o_proj, down: n = 4096) still keep
// every SM streaming.
constexpr int kGemvMinWarpsPerSm = 16;

// W chunks in flight per thread: 16 per thread at m <= 4, 8 at m > 4, where x's slices and the
// m x 4 sums take the registers.
constexpr int gemv_unroll(int m) { return m <= 4 ? 4 : 2; }

// A 16-byte load of W, which is read exactly once: L1::no_allocate keeps it from evicting x.
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// 8 bf16 (one 16-byte chunk, element 0 in the low half of v.x) as f32: a bf16 is the high half
// of its f32.
__device__ __forceinline__ void unpack_bf16x8(const uint4& v, float (&f)[8]) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}

// acc[i][r] += x[i, chunk c] · W[row r, chunk c] for every x row i.
// x: [kM, chunks] 16-byte chunks; wv: [kR] this thread's chunk c of each of its W rows.
template <int kM, int kR>
__device__ __forceinline__ void gemv_chunk(float (&acc)[kM][kR], const uint4* __restrict__ x,
                                           int chunks, int c, const uint4 (&wv)[kR]) {
  float wf[kR][8];
#pragma unroll
  for (int r = 0; r < kR; ++r) unpack_bf16x8(wv[r], wf[r]);
#pragma unroll
  for (int i = 0; i < kM; ++i) {
    float xf[8];
    unpack_bf16x8(__ldg(x + int64_t(i) * chunks + c), xf);
#pragma unroll
    for (int r = 0; r < kR; ++r) {
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[i][r] = fmaf(xf[e], wf[r][e], acc[i][r]);
    }
  }
}

__device__ __forceinline__ float bias_value(const __nv_bfloat16* b, int64_t j) {
  return __bfloat162float(b[j]);
}
__device__ __forceinline__ float bias_value(const float* b, int64_t j) { return b[j]; }
__device__ __forceinline__ void store_out(__nv_bfloat16* y, int64_t o, float v) {
  y[o] = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void store_out(float* y, int64_t o, float v) { y[o] = v; }

// x: [kM, k] bf16; w: [n, k] bf16; bias: [n] OutT or null; y: [kM, n] OutT. k % 8 == 0, x and w
// 16-byte aligned. split in {1, 2, 4} warps per row group; the grid covers
// ceil(n / kGemvRowsPerWarp) row groups, kGemvWarps / split per block.
template <int kM, typename OutT>
__global__ void __launch_bounds__(kGemvThreads)
    gemv_kernel(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                const OutT* __restrict__ bias, OutT* __restrict__ y, int n, int k, int split) {
  pdl_wait();  // PDL contract (pdl.cuh): before any global access
  pdl_launch_dependents();
  constexpr int kR = kGemvRowsPerWarp;
  constexpr int kUnroll = gemv_unroll(kM);
  __shared__ float partial[kGemvWarps][kM * kR];  // each warp's sums, [warp][x row][W row]

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int groups = kGemvWarps / split;  // row groups per block
  const int group = warp / split, part = warp % split;
  const int64_t first_row = (int64_t(blockIdx.x) * groups + group) * kR;
  const int chunks = k / 8;  // 16-byte chunks per row
  // Rows past n (the last group of an n not a multiple of kR) read row n - 1 again, so the hot
  // loop has no row predicate; their sums are never written.
  const uint4* wrow[kR];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    wrow[r] = reinterpret_cast<const uint4*>(w) + std::min(first_row + r, int64_t(n) - 1) * chunks;
  }
  const uint4* xv = reinterpret_cast<const uint4*>(x);

  float acc[kM][kR];
#pragma unroll
  for (int i = 0; i < kM; ++i) {
#pragma unroll
    for (int r = 0; r < kR; ++r) acc[i][r] = 0.0f;
  }
  const int stride = 32 * split;  // chunks between this thread's consecutive chunks
  int c = part * 32 + lane;
  for (; c + (kUnroll - 1) * stride < chunks; c += kUnroll * stride) {
    uint4 wv[kUnroll][kR];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int r = 0; r < kR; ++r) wv[u][r] = load_streaming(wrow[r] + c + u * stride);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) gemv_chunk<kM, kR>(acc, xv, chunks, c + u * stride, wv[u]);
  }
  for (; c < chunks; c += stride) {  // fewer than kUnroll chunks left for this thread
    uint4 wv[kR];
#pragma unroll
    for (int r = 0; r < kR; ++r) wv[r] = load_streaming(wrow[r] + c);
    gemv_chunk<kM, kR>(acc, xv, chunks, c, wv);
  }

  // The warp's 32 lanes hold interleaved slices of each dot product: sum them.
#pragma unroll
  for (int i = 0; i < kM; ++i) {
#pragma unroll
    for (int r = 0; r < kR; ++r) {
#pragma unroll
      for (int off = 16; off > 0; off /= 2) {
        acc[i][r] += __shfl_xor_sync(0xffffffffu, acc[i][r], off);
      }
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < kM; ++i) {
#pragma unroll
      for (int r = 0; r < kR; ++r) partial[warp][i * kR + r] = acc[i][r];
    }
  }
  __syncthreads();
  // One thread per output of the block: the split warps' sums in a fixed order, then the bias
  // in f32, then the one rounding to OutT (as cuBLASLt's BIAS epilogue does).
  for (int t = int(threadIdx.x); t < groups * kM * kR; t += kGemvThreads) {
    const int g = t / (kM * kR), ir = t % (kM * kR);
    const int i = ir / kR, r = ir % kR;
    const int64_t row = (int64_t(blockIdx.x) * groups + g) * kR + r;
    if (row >= n) continue;
    float sum = 0.0f;
    for (int p = 0; p < split; ++p) sum += partial[g * split + p][ir];
    if (bias != nullptr) sum += bias_value(bias, row);
    store_out(y, int64_t(i) * n + row, sum);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Warps per row group for m x rows and n W rows on num_sms SMs: the fewest that give every SM
// kGemvMinWarpsPerSm warps. At m = 1 the kernel is lightest on registers (8 resident blocks per
// SM), and the most split measured fastest at every 8B shape on an H100 (3 to 13% over 1 warp
// per row group): many short blocks even out the SMs' shares at the end of the stream.
int gemv_split(int64_t m, int64_t n, int num_sms) {
  if (m == 1) return kGemvWarps;
  const int64_t row_groups = (n + kGemvRowsPerWarp - 1) / kGemvRowsPerWarp;
  int split = 1;
  while (split < kGemvWarps && row_groups * split < int64_t(kGemvMinWarpsPerSm) * num_sms) {
    split *= 2;
  }
  return split;
}

template <int kM, typename OutT>
void launch_gemv_m(const __nv_bfloat16* x, const __nv_bfloat16* w, const OutT* bias, OutT* y, int n,
                   int k, int split, cudaStream_t stream) {
  const int64_t row_groups = (int64_t(n) + kGemvRowsPerWarp - 1) / kGemvRowsPerWarp;
  const int groups_per_block = kGemvWarps / split;
  const int64_t blocks = (row_groups + groups_per_block - 1) / groups_per_block;
  launch_pdl(gemv_kernel<kM, OutT>, unsigned(blocks), kGemvThreads, 0, stream, x, w, bias, y, n, k,
             split);
}

// x: [m, k]; w: [n, k]; bias: [n] or null; y: [m, n]. 1 <= m <= kGemvRowsLimit, k % 8 == 0,
// n and k below 2^31, x and w 16-byte aligned (the caller checked). split 0 picks it from n.
template <typename OutT>
void launch_gemv(const __nv_bfloat16* x, const __nv_bfloat16* w, const OutT* bias, OutT* y,
                 int64_t m, int64_t n, int64_t k, int num_sms, cudaStream_t stream, int split = 0) {
  ATOM_ASSERT(m >= 1 && m <= Gemm::kGemvRowsLimit && k % 8 == 0 && n <= INT_MAX && k <= INT_MAX);
  if (split == 0) split = gemv_split(m, n, num_sms);
  ATOM_ASSERT(split == 1 || split == 2 || split == 4);
  const int ni = int(n), ki = int(k);
  switch (m) {
    case 1:
      return launch_gemv_m<1>(x, w, bias, y, ni, ki, split, stream);
    case 2:
      return launch_gemv_m<2>(x, w, bias, y, ni, ki, split, stream);
    case 3:
      return launch_gemv_m<3>(x, w, bias, y, ni, ki, split, stream);
    case 4:
      return launch_gemv_m<4>(x, w, bias, y, ni, ki, split, stream);
    case 5:
      return launch_gemv_m<5>(x, w, bias, y, ni, ki, split, stream);
    case 6:
      return launch_gemv_m<6>(x, w, bias, y, ni, ki, split, stream);
    case 7:
      return launch_gemv_m<7>(x, w, bias, y, ni, ki, split, stream);
    default:
      return launch_gemv_m<8>(x, w, bias, y, ni, ki, split, stream);
  }
}

static_assert(Gemm::kGemvRowsLimit == 8, "launch_gemv instantiates m = 1..8");
static_assert(Gemm::kDefaultGemvMaxRows >= 0 && Gemm::kDefaultGemvMaxRows <= Gemm::kGemvRowsLimit);

}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
  int num_sms = 0;  // of the device current at construction
  int gemv_max_rows = kDefaultGemvMaxRows;

  ~Impl() {
    plans.clear();
    if (workspace) cudaFree(workspace);
    if (handle) cublasLtDestroy(handle);
  }

  const Plan& plan(const PlanKey& key) {
    const auto it = plans.find(key);
    if (it != plans.end()) return *it->second;
    auto p = std::make_unique<Plan>();
    ATOM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    set_desc(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
    set_desc(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
    if (key.bias) {
      set_desc(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
      set_desc(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, int32_t(key.out));
    }
    ATOM_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, uint64_t(key.k), uint64_t(key.n), key.k));
    ATOM_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, uint64_t(key.k), uint64_t(key.m), key.k));
    ATOM_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p->c, key.out, uint64_t(key.n), uint64_t(key.m), key.n));

    PreferenceGuard pg;
    ATOM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pg.pref));
    set_pref(pg.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(workspace_bytes));
    set_pref(pg.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_w);
    set_pref(pg.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_x);
    set_pref(pg.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_y);
    set_pref(pg.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_y);
    set_pref(pg.pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, reduction_schemes(key));

    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, p->desc, p->a, p->b, p->c,
                                                             p->c, pg.pref, 1, &result, &found);
    ATOM_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, kUnsupported,
               "gemm: cuBLASLt has no algorithm for x [{}, {}] bf16 · W [{}, {}]^T bf16 -> {}{} "
               "(pointer alignments x {} W {} y {} bytes): {}",
               key.m, key.k, key.n, key.k, type_name(key.out), key.bias ? " + bias" : "",
               key.align_x, key.align_w, key.align_y,
               st == CUBLAS_STATUS_SUCCESS ? "no candidate" : cublasLtGetStatusString(st));
    p->algo = result.algo;
    p->workspace = result.workspaceSize;
    ATOM_ASSERT(p->workspace <= workspace_bytes);
    return *plans.emplace(key, std::move(p)).first->second;
  }

  void run(const void* x, const void* w, const void* bias, void* y, int64_t m, int64_t n, int64_t k,
           cudaDataType_t out, cudaStream_t stream) {
    ATOM_CHECK(m >= 0 && n > 0 && k > 0, kInvalidArgument, "gemm: bad shape m {} n {} k {}", m, n,
               k);
    ATOM_CHECK(x != nullptr && w != nullptr && y != nullptr, kInvalidArgument,
               "gemm: null x, W or y");
    if (m == 0) return;
    if (m <= gemv_max_rows && k % 8 == 0 && n <= INT_MAX && k <= INT_MAX && aligned16(x) &&
        aligned16(w)) {
      const auto* xb = static_cast<const __nv_bfloat16*>(x);
      const auto* wb = static_cast<const __nv_bfloat16*>(w);
      if (out == CUDA_R_32F) {
        launch_gemv(xb, wb, static_cast<const float*>(bias), static_cast<float*>(y), m, n, k,
                    num_sms, stream);
      } else {
        launch_gemv(xb, wb, static_cast<const __nv_bfloat16*>(bias), static_cast<__nv_bfloat16*>(y),
                    m, n, k, num_sms, stream);
      }
      return;
    }
    const PlanKey key{
        m, n, k, out, bias != nullptr, alignment_of(x), alignment_of(w), alignment_of(y)};
    const Plan& p = plan(key);
    if (bias != nullptr) set_desc(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
    const float alpha = 1.0f, beta = 0.0f;
    ATOM_CUBLAS_CHECK(cublasLtMatmul(handle, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c,
                                     &p.algo, workspace, p.workspace, stream));
  }
};

Gemm::Gemm(size_t workspace_bytes) : impl_(std::make_unique<Impl>()) {
  ATOM_CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  if (workspace_bytes > 0) ATOM_CUDA_CHECK(cudaMalloc(&impl_->workspace, workspace_bytes));
  impl_->workspace_bytes = workspace_bytes;
  int device = 0;
  ATOM_CUDA_CHECK(cudaGetDevice(&device));
  ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&impl_->num_sms, cudaDevAttrMultiProcessorCount, device));
}

Gemm::~Gemm() = default;

void Gemm::launch(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias,
                  __nv_bfloat16* y, int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
  impl_->run(x, w, bias, y, m, n, k, CUDA_R_16BF, stream);
}

void Gemm::launch(const __nv_bfloat16* x, const __nv_bfloat16* w, const float* bias, float* y,
                  int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
  impl_->run(x, w, bias, y, m, n, k, CUDA_R_32F, stream);
}

void Gemm::linear(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                  cudaStream_t stream) {
  for (const Tensor* t : {&x, &w, &y}) {
    ATOM_CHECK(t->defined() && t->device() == Device::kCuda && t->is_contiguous(), kInvalidArgument,
               "gemm: x, W and y must be contiguous tensors on the GPU");
  }
  ATOM_CHECK(x.dtype() == DType::kBF16 && w.dtype() == DType::kBF16, kUnsupported,
             "gemm: x {} and W {} must be bf16", dtype_name(x.dtype()), dtype_name(w.dtype()));
  ATOM_CHECK(y.dtype() == DType::kBF16 || y.dtype() == DType::kF32, kUnsupported,
             "gemm: y must be bf16 or f32, got {}", dtype_name(y.dtype()));
  ATOM_CHECK(x.ndim() == 2 && w.ndim() == 2 && y.ndim() == 2 && x.size(1) == w.size(1) &&
                 y.size(0) == x.size(0) && y.size(1) == w.size(0),
             kInvalidArgument, "gemm: shapes x {} W {} y {} do not make y = x W^T", x.shape_str(),
             w.shape_str(), y.shape_str());
  if (bias.defined()) {
    ATOM_CHECK(bias.device() == Device::kCuda && bias.dtype() == y.dtype() && bias.ndim() == 1 &&
                   bias.size(0) == w.size(0) && bias.is_contiguous(),
               kInvalidArgument, "gemm: bias {} {} must be [{}] {} on the GPU", bias.shape_str(),
               dtype_name(bias.dtype()), w.size(0), dtype_name(y.dtype()));
  }
  const int64_t m = x.size(0), n = w.size(0), k = x.size(1);
  if (y.dtype() == DType::kBF16) {
    launch(x.data_as<__nv_bfloat16>(), w.data_as<__nv_bfloat16>(),
           bias.defined() ? bias.data_as<__nv_bfloat16>() : nullptr, y.data_as<__nv_bfloat16>(), m,
           n, k, stream);
  } else {
    launch(x.data_as<__nv_bfloat16>(), w.data_as<__nv_bfloat16>(),
           bias.defined() ? bias.data_as<float>() : nullptr, y.data_as<float>(), m, n, k, stream);
  }
}

void Gemm::set_gemv_max_rows(int rows) {
  ATOM_CHECK(rows >= 0 && rows <= kGemvRowsLimit, kInvalidArgument,
             "gemm: GEMV row limit {} is outside [0, {}]", rows, kGemvRowsLimit);
  impl_->gemv_max_rows = rows;
}

int Gemm::gemv_max_rows() const { return impl_->gemv_max_rows; }

size_t Gemm::num_plans() const { return impl_->plans.size(); }

size_t Gemm::workspace_bytes() const { return impl_->workspace_bytes; }

}  // namespace atom::cuda
