// Dequantization and quantized matmul: argument checks, dispatch, and the portable scalar kernels.
// The scalar dequantizers follow ggml's reference (dequantize_row_* in ggml-quants.c) operation by
// operation, so their output is bit-exact with it and with gguf-py's numpy implementation.
#include "atom/backends/cpu/quants.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "atom/backends/cpu/quants_simd.h"
#include "atom/core/dtype.h"
#include "atom/core/error.h"

namespace atom::cpu {
namespace internal {
namespace {

void dequantize_q4_0(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = float((qs[j] & 0xF) - 8) * d;
    y[j + 16] = float((qs[j] >> 4) - 8) * d;
  }
}

void dequantize_q4_1(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const float m = f16_to_f32(load_u16(b + 2));
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = float(qs[j] & 0xF) * d + m;
    y[j + 16] = float(qs[j] >> 4) * d + m;
  }
}

void dequantize_q8_0(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = float(qs[j]) * d;
}

// 8 sub-blocks of 32: sub-block j uses the low (j even) or high (j odd) nibbles of
// qs[32 * (j / 2) ..][0..32), with scale d * sc_j and offset -dmin * min_j.
void dequantize_q4_k(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const float dmin = f16_to_f32(load_u16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int j = 0; j < 8; j += 2) {
    int sc, mn;
    q4_k_scale_min(scales, j, &sc, &mn);
    const float d1 = d * float(sc), m1 = dmin * float(mn);
    q4_k_scale_min(scales, j + 1, &sc, &mn);
    const float d2 = d * float(sc), m2 = dmin * float(mn);
    for (int l = 0; l < 32; ++l) y[l] = d1 * float(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) y[l + 32] = d2 * float(q[l] >> 4) - m2;
    q += 32;
    y += 64;
  }
}

// Two halves of 128; in each, element 32 * g + l (g = 0..3) takes its low 4 bits from
// ql[32 * (g % 2) + l] (low nibble for g < 2, high for g >= 2) and its top 2 bits from
// qh[l] >> (2 * g); 16-element groups share an int8 scale.
void dequantize_q6_k(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b + 208));
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  for (int half = 0; half < 2; ++half) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = int((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * float(sc[is]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

// sum_k a[k] * b[k] in f32 with 8 partial sums, so the scalar path is not one long dependency
// chain.
float dot_scalar(const float* a, const float* b, int64_t n) {
  float s[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int j = 0; j < 8; ++j) s[j] += a[k + j] * b[k + j];
  }
  for (; k < n; ++k) s[0] += a[k] * b[k];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

}  // namespace

int64_t block_elems(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return 1;
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ8_0:
      return kQk;
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K:
      return kQkK;
    default:
      return 0;
  }
}

void dequantize_plain_range(GgmlType type, const uint8_t* row, int64_t first, int64_t count,
                            float* dst) {
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, row + first * 4, size_t(count) * 4);
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < count; ++i) dst[i] = f16_to_f32(load_u16(row + (first + i) * 2));
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(load_u16(row + (first + i) * 2));
      return;
    default:
      ATOM_ASSERT(false);
  }
}

void dequantize_row_scalar(GgmlType type, const uint8_t* src, float* dst, int64_t n) {
  void (*block_fn)(const uint8_t*, float*) = nullptr;
  size_t block_bytes = 0;
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      dequantize_plain_range(type, src, 0, n, dst);
      return;
    case GgmlType::kQ4_0:
      block_fn = dequantize_q4_0, block_bytes = kQ4_0Bytes;
      break;
    case GgmlType::kQ4_1:
      block_fn = dequantize_q4_1, block_bytes = kQ4_1Bytes;
      break;
    case GgmlType::kQ8_0:
      block_fn = dequantize_q8_0, block_bytes = kQ8_0Bytes;
      break;
    case GgmlType::kQ4_K:
      block_fn = dequantize_q4_k, block_bytes = kQ4_KBytes;
      break;
    case GgmlType::kQ6_K:
      block_fn = dequantize_q6_k, block_bytes = kQ6_KBytes;
      break;
    default:
      ATOM_ASSERT(false);
  }
  const int64_t be = block_elems(type);
  for (int64_t b = 0; b < n / be; ++b) block_fn(src + size_t(b) * block_bytes, dst + b * be);
}

// One weight row at a time: dequantize it into a per-thread buffer [K], then dot it with every
// x row, so each weight byte is read once whatever m is.
void matmul_scalar(const float* x, int64_t m, const QMatrix& w, float* y) {
  const int64_t n_rows = w.rows, k = w.cols;
#pragma omp parallel if (worth_threading(m * n_rows * k))
  {
    std::vector<float> row(size_t(std::max<int64_t>(k, 1)));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < n_rows; ++n) {
      dequantize_row_scalar(w.type, w.row(n), row.data(), k);
      for (int64_t i = 0; i < m; ++i) y[i * n_rows + n] = dot_scalar(x + i * k, row.data(), k);
    }
  }
}

}  // namespace internal

namespace {

std::string type_name(GgmlType t) {
  const GgmlTypeInfo* info = ggml_type_info(uint32_t(t));
  return info ? std::string(info->name) : fmt::format("unknown type id {}", uint32_t(t));
}

void check_type(GgmlType t, const char* what) {
  ATOM_CHECK(quant_type_supported(t), kUnsupported,
             "{}: tensor type {} is not supported by the CPU backend (supported: F32, F16, BF16, "
             "Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)",
             what, type_name(t));
}

void check_length(GgmlType t, int64_t n, const char* what) {
  const int64_t be = internal::block_elems(t);
  ATOM_CHECK(n >= 0 && n % be == 0, kInvalidArgument,
             "{}: {} elements of type {} is not a multiple of its block size {}", what, n,
             type_name(t), be);
}

void check_matrix(const QMatrix& w, const char* what) {
  check_type(w.type, what);
  ATOM_CHECK(w.rows >= 0 && w.cols >= 0, kInvalidArgument, "{}: negative shape [{}, {}]", what,
             w.rows, w.cols);
  check_length(w.type, w.cols, what);
  ATOM_CHECK(w.row_bytes == ggml_row_bytes(w.type, w.cols), kInvalidArgument,
             "{}: row_bytes {} does not match {} columns of {} ({} bytes)", what, w.row_bytes,
             w.cols, type_name(w.type), ggml_row_bytes(w.type, w.cols));
  ATOM_CHECK(w.data != nullptr || w.rows * w.cols == 0, kInvalidArgument, "{}: null weight data",
             what);
}

}  // namespace

bool quant_type_supported(GgmlType t) { return internal::block_elems(t) != 0; }

const char* quant_simd_level() { return internal::simd_level(); }

QMatrix make_qmatrix(GgmlType type, const void* data, int64_t rows, int64_t cols) {
  QMatrix w;
  w.type = type;
  w.data = data;
  w.rows = rows;
  w.cols = cols;
  const int64_t be = internal::block_elems(type);
  // Left 0 for a bad type or length: matmul's checks then name the real problem.
  w.row_bytes = (be != 0 && cols >= 0 && cols % be == 0) ? ggml_row_bytes(type, cols) : 0;
  return w;
}

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n, QuantKernels kernels) {
  check_type(type, "dequantize_row");
  check_length(type, n, "dequantize_row");
  if (n == 0) return;
  const auto* s = static_cast<const uint8_t*>(src);
  if (kernels == QuantKernels::kScalar) {
    internal::dequantize_row_scalar(type, s, dst, n);
  } else {
    internal::dequantize_row_simd(type, s, dst, n);
  }
}

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
  dequantize_row(type, src, dst, n, QuantKernels::kBest);
}

void matmul(const float* x, int64_t m, const QMatrix& w, float* y, QuantKernels kernels) {
  check_matrix(w, "matmul");
  ATOM_CHECK(m >= 0, kInvalidArgument, "matmul: negative row count m = {}", m);
  if (m == 0 || w.rows == 0) return;
  ATOM_CHECK(x != nullptr && y != nullptr, kInvalidArgument, "matmul: null x or y");
  if (w.cols == 0) {
    std::fill(y, y + m * w.rows, 0.0f);
    return;
  }
  if (kernels == QuantKernels::kScalar) {
    internal::matmul_scalar(x, m, w, y);
  } else {
    internal::matmul_simd(x, m, w, y);
  }
}

void matmul(const float* x, int64_t m, const QMatrix& w, float* y) {
  matmul(x, m, w, y, QuantKernels::kBest);
}

void embedding(const QMatrix& table, const int32_t* ids, int64_t n, float* out) {
  check_matrix(table, "embedding");
  for (int64_t i = 0; i < n; ++i) {
    ATOM_CHECK(ids[i] >= 0 && ids[i] < table.rows, kOutOfRange,
               "embedding: token id {} out of range [0, {})", ids[i], table.rows);
  }
  const int64_t k = table.cols;
#pragma omp parallel for schedule(static) if (internal::worth_threading(n * k))
  for (int64_t i = 0; i < n; ++i) {
    internal::dequantize_row_simd(table.type, table.row(ids[i]), out + i * k, k);
  }
}

}  // namespace atom::cpu
