// cuBLASLt GEMM: y[m, n] = x[m, k] · W[n, k]^T (+ bias), bf16 inputs, f32 accumulation.
//
// cuBLASLt is column-major. Row-major y [m, n] is column-major y^T (n x m, ld n); row-major
// W [n, k] is column-major k x n (ld k) and x [m, k] column-major k x m (ld k). So
//   y^T = op(A) · op(B) with A = W (k x n, transposed) and B = x (k x m, as is),
// and the bias, a vector over the rows of the column-major output, is the epilogue's BIAS.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>

#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/gemm.h"
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

}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;

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

size_t Gemm::num_plans() const { return impl_->plans.size(); }

size_t Gemm::workspace_bytes() const { return impl_->workspace_bytes; }

}  // namespace atom::cuda
