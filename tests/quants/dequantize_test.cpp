// dequantize_row and embedding against gguf-py's reference dequantization, bit for bit, on both
// the SIMD and the scalar kernels.
#include <gtest/gtest.h>

#include <algorithm>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "atom/backends/cpu/quants.h"
#include "quant_test_util.h"

namespace atom::cpu {
namespace {

using testing::float_bits;
using testing::QuantVector;

struct KernelCase {
  std::string type_name;
  QuantKernels kernels;
};

void PrintTo(const KernelCase& c, std::ostream* os) {
  *os << c.type_name << (c.kernels == QuantKernels::kScalar ? " scalar" : " best");
}

std::string case_name(const ::testing::TestParamInfo<KernelCase>& info) {
  return info.param.type_name + (info.param.kernels == QuantKernels::kScalar ? "_scalar" : "_best");
}

class DequantizeVectors : public ::testing::TestWithParam<KernelCase> {
 protected:
  void SetUp() override {
    const std::string path =
        std::string(ATOM_TEST_DATA_DIR) + "/quants/" + GetParam().type_name + ".bin";
    ASSERT_TRUE(testing::read_quant_vector(path, &v_)) << "cannot read " << path;
    ASSERT_EQ(ggml_type_info(v_.type).name, GetParam().type_name);
    ASSERT_EQ(ggml_row_bytes(v_.type, v_.n), v_.raw.size());
  }

  // Dequantizes elements [first, first + count) from a copy of the raw bytes placed `offset`
  // bytes into a buffer (the blocks of a GGUF file need not be aligned) and compares bits.
  void check(int64_t first, int64_t count, size_t offset) {
    const int64_t be = ggml_type_info(v_.type).block_size;
    const size_t first_byte = ggml_row_bytes(v_.type, first);
    const size_t n_bytes = ggml_row_bytes(v_.type, count);
    std::vector<uint8_t> buf(n_bytes + offset);
    std::copy_n(v_.raw.begin() + ptrdiff_t(first_byte), n_bytes, buf.begin() + ptrdiff_t(offset));
    std::vector<float> out(size_t(count), -12345.0f);
    dequantize_row(v_.type, buf.data() + offset, out.data(), count, GetParam().kernels);
    int mismatches = 0;
    for (int64_t i = 0; i < count; ++i) {
      const float want = v_.expected[size_t(first + i)];
      if (float_bits(out[size_t(i)]) != float_bits(want) && ++mismatches <= 5) {
        ADD_FAILURE() << GetParam().type_name << " element " << first + i << " (block "
                      << (first + i) / be << "): got " << out[size_t(i)] << " (0x" << std::hex
                      << float_bits(out[size_t(i)]) << "), want " << want << " (0x"
                      << float_bits(want) << std::dec << ")";
      }
    }
    EXPECT_EQ(mismatches, 0) << "first " << first << " count " << count << " offset " << offset;
  }

  QuantVector v_;
};

TEST_P(DequantizeVectors, WholeVectorIsBitExact) { check(0, v_.n, 0); }

TEST_P(DequantizeVectors, UnalignedSourceIsBitExact) {
  check(0, v_.n, 1);
  check(0, v_.n, 3);
}

TEST_P(DequantizeVectors, PiecesAreBitExact) {
  // Single blocks and runs that start and end mid-vector; for the plain types also lengths that
  // are not a multiple of the SIMD chunk (32).
  const int64_t be = ggml_type_info(v_.type).block_size;
  const int64_t chunk = std::max<int64_t>(be, 32);
  check(0, be, 0);
  check(v_.n - be, be, 0);
  check(chunk, v_.n - 2 * chunk, 0);
  if (be == 1) {
    for (int64_t count : {1, 5, 31, 33, 63, 100}) check(7, count, 0);
  }
}

std::vector<KernelCase> all_cases() {
  std::vector<KernelCase> cases;
  for (const char* t : {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"}) {
    cases.push_back({t, QuantKernels::kBest});
    cases.push_back({t, QuantKernels::kScalar});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllTypes, DequantizeVectors, ::testing::ValuesIn(all_cases()), case_name);

TEST(Dequantize, DefaultOverloadMatchesScalar) {
  std::mt19937 rng(7);
  for (GgmlType t : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0,
                     GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ4_K, GgmlType::kQ6_K}) {
    const int64_t n = 1536;
    const auto raw = testing::random_weights(t, 1, n, rng);
    std::vector<float> a(n), b(n);
    dequantize_row(t, raw.data(), a.data(), n);
    dequantize_row(t, raw.data(), b.data(), n, QuantKernels::kScalar);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(float_bits(a[size_t(i)]), float_bits(b[size_t(i)]))
          << ggml_type_info(t).name << " element " << i;
    }
  }
}

TEST(Dequantize, ZeroLengthWritesNothing) {
  float out = 42.0f;
  dequantize_row(GgmlType::kQ4_1, nullptr, &out, 0);
  EXPECT_EQ(out, 42.0f);
}

TEST(Dequantize, SupportedTypes) {
  for (GgmlType t : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0,
                     GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ4_K, GgmlType::kQ6_K}) {
    EXPECT_TRUE(quant_type_supported(t)) << ggml_type_info(t).name;
  }
  for (GgmlType t : {GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_1, GgmlType::kQ2_K,
                     GgmlType::kQ3_K, GgmlType::kQ5_K, GgmlType::kQ8_K, GgmlType::kI8,
                     GgmlType::kI32, GgmlType::kF64, GgmlType(99)}) {
    EXPECT_FALSE(quant_type_supported(t)) << uint32_t(t);
  }
}

TEST(Dequantize, SimdLevelMatchesBuild) {
  const std::string level = quant_simd_level();
#if defined(__AVX512F__)
  EXPECT_EQ(level, "avx512");
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  EXPECT_EQ(level, "avx2");
#else
  EXPECT_EQ(level, "scalar");
#endif
}

class EmbeddingTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(EmbeddingTest, RowsEqualDequantizedTableRows) {
  const GgmlType t = GetParam();
  std::mt19937 rng(11);
  const int64_t rows = 50, cols = 512;
  const auto raw = testing::random_weights(t, rows, cols, rng);
  const QMatrix table = make_qmatrix(t, raw.data(), rows, cols);
  EXPECT_EQ(table.row_bytes, ggml_row_bytes(t, cols));
  const std::vector<int32_t> ids = {3, 0, 49, 3, 17, 48, 1};
  std::vector<float> out(ids.size() * cols, -1.0f);
  embedding(table, ids.data(), int64_t(ids.size()), out.data());
  std::vector<float> want(cols);
  for (size_t i = 0; i < ids.size(); ++i) {
    dequantize_row(t, table.row(ids[i]), want.data(), cols, QuantKernels::kScalar);
    for (int64_t j = 0; j < cols; ++j) {
      ASSERT_EQ(float_bits(out[i * cols + j]), float_bits(want[size_t(j)]))
          << "id " << ids[i] << " column " << j;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, EmbeddingTest,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16,
                                           GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1,
                                           GgmlType::kQ4_K, GgmlType::kQ6_K),
                         [](const ::testing::TestParamInfo<GgmlType>& info) {
                           return std::string(ggml_type_info(info.param).name);
                         });

}  // namespace
}  // namespace atom::cpu
