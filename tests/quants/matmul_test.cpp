// matmul against a naive "dequantize the weight, then multiply-add in double" reference, over
// awkward shapes, on the SIMD and the scalar kernels; and the argument errors.
#include <gtest/gtest.h>

#include <omp.h>

#include <cmath>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "atom/backends/cpu/quants.h"
#include "atom/core/error.h"
#include "quant_test_util.h"

namespace atom::cpu {
namespace {

// y[m, N] = x[m, K] w^T from the scalar dequantization (itself checked bit-exact against
// gguf-py) with double accumulation; also the magnitude sum_k |x w| that bounds f32 rounding.
void reference(const std::vector<float>& x, int64_t m, const QMatrix& w, std::vector<double>* y,
               std::vector<double>* mag) {
  std::vector<float> wf(size_t(w.rows * w.cols));
  for (int64_t n = 0; n < w.rows; ++n) {
    dequantize_row(w.type, w.row(n), wf.data() + n * w.cols, w.cols, QuantKernels::kScalar);
  }
  y->assign(size_t(m * w.rows), 0.0);
  mag->assign(size_t(m * w.rows), 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t n = 0; n < w.rows; ++n) {
      double s = 0.0, a = 0.0;
      for (int64_t k = 0; k < w.cols; ++k) {
        const double p = double(x[size_t(i * w.cols + k)]) * double(wf[size_t(n * w.cols + k)]);
        s += p;
        a += std::fabs(p);
      }
      (*y)[size_t(i * w.rows + n)] = s;
      (*mag)[size_t(i * w.rows + n)] = a;
    }
  }
}

// Column counts per type: the block size and several multiples, including the model's 576 and
// 1536 where the block allows; the plain types also get lengths that are not a multiple of the
// 32-element SIMD chunk.
std::vector<int64_t> test_cols(GgmlType t) {
  switch (ggml_type_info(t).block_size) {
    case 1:
      return {1, 5, 32, 33, 96, 100, 576, 1536};
    case 32:
      return {32, 96, 256, 576, 1536};
    default:
      return {256, 512, 768, 1536};
  }
}

struct MatmulCase {
  GgmlType type;
  QuantKernels kernels;
};

void PrintTo(const MatmulCase& c, std::ostream* os) {
  *os << ggml_type_info(c.type).name << (c.kernels == QuantKernels::kScalar ? " scalar" : " best");
}

std::string case_name(const ::testing::TestParamInfo<MatmulCase>& info) {
  return std::string(ggml_type_info(info.param.type).name) +
         (info.param.kernels == QuantKernels::kScalar ? "_scalar" : "_best");
}

class MatmulShapes : public ::testing::TestWithParam<MatmulCase> {};

TEST_P(MatmulShapes, MatchesDoubleReference) {
  const GgmlType t = GetParam().type;
  std::mt19937 rng(1234 + uint32_t(t));
  double worst = 0.0;  // largest |error| / sum |x w| seen
  for (int64_t k : test_cols(t)) {
    for (int64_t n_rows : {1, 5, 97, 256}) {
      const auto raw = testing::random_weights(t, n_rows, k, rng);
      const QMatrix w = make_qmatrix(t, raw.data(), n_rows, k);
      for (int64_t m : {1, 2, 3, 4, 5, 7, 17, 64}) {
        SCOPED_TRACE(::testing::Message() << "m " << m << " N " << n_rows << " K " << k);
        const auto x = testing::random_floats(size_t(m * k), rng);
        std::vector<double> want, mag;
        reference(x, m, w, &want, &mag);
        std::vector<float> y(size_t(m * n_rows), NAN);
        matmul(x.data(), m, w, y.data(), GetParam().kernels);
        int bad = 0;
        for (size_t j = 0; j < y.size(); ++j) {
          const double err = std::fabs(double(y[j]) - want[j]);
          // f32 accumulation over K terms: the error is a small multiple of eps * sum |x w|.
          const double tol = 1e-5 * mag[j] + 1e-30;
          worst = std::max(worst, err / (mag[j] + 1e-30));
          if (!(err <= tol) && ++bad <= 3) {
            ADD_FAILURE() << "y[" << j / size_t(n_rows) << ", " << j % size_t(n_rows)
                          << "] = " << y[j] << ", want " << want[j] << " (tolerance " << tol << ")";
          }
        }
        ASSERT_EQ(bad, 0);
      }
    }
  }
  std::ostringstream worst_text;
  worst_text << std::scientific << worst;
  RecordProperty("worst_relative_error", worst_text.str());
  EXPECT_LT(worst, 1e-5);
}

std::vector<MatmulCase> all_cases() {
  std::vector<MatmulCase> cases;
  for (GgmlType t : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0,
                     GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ4_K, GgmlType::kQ6_K}) {
    cases.push_back({t, QuantKernels::kBest});
    cases.push_back({t, QuantKernels::kScalar});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatmulShapes, ::testing::ValuesIn(all_cases()), case_name);

// The prefill kernel blocks x rows by 128: m across that boundary, on a model shape.
TEST(Matmul, LargeMCrossesRowBlocks) {
  std::mt19937 rng(99);
  for (int64_t m : {128, 130, 300}) {
    const int64_t n_rows = 192, k = 576;
    const auto raw = testing::random_weights(GgmlType::kQ4_1, n_rows, k, rng);
    const QMatrix w = make_qmatrix(GgmlType::kQ4_1, raw.data(), n_rows, k);
    const auto x = testing::random_floats(size_t(m * k), rng);
    std::vector<double> want, mag;
    reference(x, m, w, &want, &mag);
    std::vector<float> y(size_t(m * n_rows), NAN);
    matmul(x.data(), m, w, y.data());
    for (size_t j = 0; j < y.size(); ++j) {
      ASSERT_LE(std::fabs(double(y[j]) - want[j]), 1e-5 * mag[j]) << "m " << m << " at " << j;
    }
  }
}

// Results must not depend on how many threads share the rows.
TEST(Matmul, SameResultForAnyThreadCount) {
  std::mt19937 rng(5);
  const int64_t n_rows = 256, k = 576;
  const auto raw = testing::random_weights(GgmlType::kQ8_0, n_rows, k, rng);
  const QMatrix w = make_qmatrix(GgmlType::kQ8_0, raw.data(), n_rows, k);
  for (int64_t m : {1, 3, 32}) {
    const auto x = testing::random_floats(size_t(m * k), rng);
    const int saved = omp_get_max_threads();
    std::vector<float> y1(size_t(m * n_rows)), y3(size_t(m * n_rows));
    omp_set_num_threads(1);
    matmul(x.data(), m, w, y1.data());
    omp_set_num_threads(3);
    matmul(x.data(), m, w, y3.data());
    omp_set_num_threads(saved);
    for (size_t j = 0; j < y1.size(); ++j) {
      ASSERT_EQ(testing::float_bits(y1[j]), testing::float_bits(y3[j])) << "m " << m << " " << j;
    }
  }
}

TEST(Matmul, EmptyShapes) {
  std::mt19937 rng(3);
  const auto raw = testing::random_weights(GgmlType::kQ4_1, 4, 64, rng);
  const QMatrix w = make_qmatrix(GgmlType::kQ4_1, raw.data(), 4, 64);
  std::vector<float> y(8, 7.0f);
  matmul(nullptr, 0, w, nullptr);  // m = 0: nothing to do
  const QMatrix no_cols = make_qmatrix(GgmlType::kQ4_1, raw.data(), 4, 0);
  const std::vector<float> x(2, 1.0f);
  matmul(x.data(), 2, no_cols, y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

// --- errors ------------------------------------------------------------------------------------

template <typename F>
void expect_error(F&& f, ErrorCode code, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error thrown; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(QuantErrors, UnsupportedTypesAreNamed) {
  std::vector<uint8_t> raw(4096);
  std::vector<float> out(256), x(256);
  for (GgmlType t : {GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ2_K, GgmlType::kQ5_K,
                     GgmlType::kQ8_K, GgmlType::kI8, GgmlType::kF64}) {
    const std::string name(ggml_type_info(t).name);
    expect_error([&] { dequantize_row(t, raw.data(), out.data(), 256); }, ErrorCode::kUnsupported,
                 name);
    QMatrix w;
    w.type = t;
    w.data = raw.data();
    w.rows = 1;
    w.cols = 256;
    w.row_bytes = ggml_row_bytes(t, 256);
    expect_error([&] { matmul(x.data(), 1, w, out.data()); }, ErrorCode::kUnsupported, name);
    const int32_t id = 0;
    expect_error([&] { embedding(w, &id, 1, out.data()); }, ErrorCode::kUnsupported, name);
  }
  expect_error([&] { dequantize_row(GgmlType(77), raw.data(), out.data(), 32); },
               ErrorCode::kUnsupported, "unknown type id 77");
}

TEST(QuantErrors, LengthNotAMultipleOfTheBlock) {
  std::vector<uint8_t> raw(4096);
  std::vector<float> out(600), x(600);
  expect_error([&] { dequantize_row(GgmlType::kQ4_K, raw.data(), out.data(), 300); },
               ErrorCode::kInvalidArgument, "block size 256");
  expect_error([&] { dequantize_row(GgmlType::kQ8_0, raw.data(), out.data(), 40); },
               ErrorCode::kInvalidArgument, "block size 32");
  for (auto [t, cols] : {std::pair{GgmlType::kQ4_1, int64_t(48)},
                         {GgmlType::kQ4_0, 33},
                         {GgmlType::kQ6_K, 576},
                         {GgmlType::kQ4_K, 320}}) {
    const QMatrix w = make_qmatrix(t, raw.data(), 1, cols);
    expect_error([&] { matmul(x.data(), 1, w, out.data()); }, ErrorCode::kInvalidArgument,
                 "not a multiple of its block size");
  }
}

TEST(QuantErrors, BadMatrixAndIds) {
  std::vector<uint8_t> raw(4096);
  std::vector<float> out(1024), x(1024);
  QMatrix w = make_qmatrix(GgmlType::kQ4_1, raw.data(), 4, 64);
  w.row_bytes = 41;
  expect_error([&] { matmul(x.data(), 1, w, out.data()); }, ErrorCode::kInvalidArgument,
               "row_bytes 41");
  const QMatrix null_data = make_qmatrix(GgmlType::kQ4_1, nullptr, 4, 64);
  expect_error([&] { matmul(x.data(), 1, null_data, out.data()); }, ErrorCode::kInvalidArgument,
               "null weight data");
  const QMatrix table = make_qmatrix(GgmlType::kQ8_0, raw.data(), 4, 64);
  for (int32_t id : {4, -1, 1 << 30}) {
    expect_error([&] { embedding(table, &id, 1, out.data()); }, ErrorCode::kOutOfRange,
                 "token id " + std::to_string(id));
  }
}

}  // namespace
}  // namespace atom::cpu
