// core/tensor: allocation, strides, views and row slices sharing storage, and the errors.
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "atom/core/error.h"
#include "atom/core/tensor.h"

namespace atom {
namespace {

template <typename F>
void expect_error(F&& f, ErrorCode code) {
  try {
    f();
    ADD_FAILURE() << "expected atom::Error(" << error_code_name(code) << ")";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
  }
}

TEST(Tensor, EmptyAllocatesZeroedAlignedContiguous) {
  Tensor t = Tensor::empty({2, 3, 4}, DType::kF32);
  ASSERT_TRUE(t.defined());
  EXPECT_EQ(t.ndim(), 3);
  EXPECT_EQ(t.dtype(), DType::kF32);
  EXPECT_EQ(t.device(), Device::kCpu);
  EXPECT_EQ(t.size(0), 2);
  EXPECT_EQ(t.size(1), 3);
  EXPECT_EQ(t.size(2), 4);
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_EQ(t.size(-3), 2);
  // [2, 3, 4] row-major: strides [12, 4, 1] elements
  EXPECT_EQ(t.stride(0), 12);
  EXPECT_EQ(t.stride(1), 4);
  EXPECT_EQ(t.stride(2), 1);
  EXPECT_EQ(t.stride(-2), 4);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 96u);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u);
  const float* p = t.data_as<float>();
  for (int i = 0; i < 24; ++i) EXPECT_EQ(p[i], 0.0f);
  EXPECT_EQ(t.shape_str(), "[2, 3, 4]");
}

TEST(Tensor, ByteSizesFollowTheDType) {
  EXPECT_EQ(Tensor::empty({3, 5}, DType::kBF16).nbytes(), 30u);
  EXPECT_EQ(Tensor::empty({3, 5}, DType::kF8E4M3).nbytes(), 15u);
  EXPECT_EQ(Tensor::empty({3, 5}, DType::kI64).nbytes(), 120u);
}

TEST(Tensor, ZeroSizedAndScalar) {
  Tensor z = Tensor::empty({0, 8}, DType::kF32);
  EXPECT_TRUE(z.defined());  // even an empty tensor owns an allocation
  EXPECT_EQ(z.numel(), 0);
  EXPECT_EQ(z.nbytes(), 0u);
  EXPECT_EQ(z.shape_str(), "[0, 8]");
  Tensor s = Tensor::empty({}, DType::kI32);
  EXPECT_EQ(s.ndim(), 0);
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.shape_str(), "[]");
  EXPECT_FALSE(Tensor().defined());
}

TEST(Tensor, BorrowedView) {
  std::vector<uint16_t> buf(6);
  Tensor t(buf.data(), DType::kBF16, {2, 3}, Device::kCuda);
  EXPECT_EQ(t.data(), buf.data());
  EXPECT_EQ(t.device(), Device::kCuda);
  EXPECT_EQ(t.stride(0), 3);
  EXPECT_EQ(t.nbytes(), 12u);
  const int64_t shape[] = {3, 2};
  Tensor u(buf.data(), DType::kBF16, shape, 2);
  EXPECT_EQ(u.size(0), 3);
  EXPECT_EQ(u.stride(0), 2);
}

TEST(Tensor, BadShapesRejected) {
  float x = 0;
  expect_error([&] { (void)Tensor(&x, DType::kF32, {2, -1}); }, ErrorCode::kInvalidArgument);
  expect_error(
      [&] {
        (void)Tensor(&x, DType::kF32, {1, 1, 1, 1, 1, 1});
      },
      ErrorCode::kInvalidArgument);
  expect_error([] { Tensor::empty({-3}, DType::kF32); }, ErrorCode::kInvalidArgument);
  const int64_t shape[] = {1};
  expect_error([&] { (void)Tensor(&x, DType::kF32, shape, -1); }, ErrorCode::kInvalidArgument);
}

TEST(Tensor, ViewReshapesSharingStorage) {
  Tensor t = Tensor::empty({2, 3, 4}, DType::kF32);
  float* p = t.data_as<float>();
  std::iota(p, p + 24, 0.0f);
  Tensor v = t.view({6, 4});
  EXPECT_EQ(v.data(), t.data());
  EXPECT_EQ(v.ndim(), 2);
  EXPECT_EQ(v.size(0), 6);
  EXPECT_EQ(v.stride(0), 4);
  Tensor w = t.view({-1, 12});
  EXPECT_EQ(w.size(0), 2);
  EXPECT_EQ(w.size(1), 12);
  Tensor flat = t.view({-1});
  EXPECT_EQ(flat.ndim(), 1);
  EXPECT_EQ(flat.size(0), 24);
  flat.data_as<float>()[5] = 100.0f;
  EXPECT_EQ(p[5], 100.0f);
  Tensor up = t.view({2, 1, 3, 4});
  EXPECT_EQ(up.stride(1), 12);
  EXPECT_TRUE(up.is_contiguous());
}

TEST(Tensor, ViewErrors) {
  Tensor t = Tensor::empty({2, 3, 4}, DType::kF32);
  expect_error([&] { t.view({5, 5}); }, ErrorCode::kInvalidArgument);
  expect_error([&] { t.view({7, -1}); }, ErrorCode::kInvalidArgument);  // 24 / 7 is not whole
  expect_error([&] { t.view({1, 1, 1, 1, 1, 24}); }, ErrorCode::kInvalidArgument);
}

TEST(Tensor, SliceRows) {
  Tensor t = Tensor::empty({5, 3}, DType::kF32);
  float* p = t.data_as<float>();
  std::iota(p, p + 15, 0.0f);
  Tensor s = t.slice_rows(1, 4);
  EXPECT_EQ(s.size(0), 3);
  EXPECT_EQ(s.size(1), 3);
  EXPECT_EQ(s.data_as<float>(), p + 3);
  EXPECT_EQ(s.data_as<float>()[0], 3.0f);
  EXPECT_TRUE(s.is_contiguous());
  Tensor e = t.slice_rows(5, 5);
  EXPECT_EQ(e.numel(), 0);
  Tensor all = t.slice_rows(0, 5);
  EXPECT_EQ(all.data(), t.data());
  EXPECT_EQ(all.numel(), 15);
  // Offsets are in bytes of the element type.
  Tensor h = Tensor::empty({4, 6}, DType::kBF16);
  EXPECT_EQ(static_cast<char*>(h.slice_rows(2, 3).data()) - static_cast<char*>(h.data()), 24);
}

TEST(Tensor, SliceRowsErrors) {
  Tensor t = Tensor::empty({5, 3}, DType::kF32);
  expect_error([&] { t.slice_rows(3, 2); }, ErrorCode::kOutOfRange);
  expect_error([&] { t.slice_rows(0, 6); }, ErrorCode::kOutOfRange);
  expect_error([&] { t.slice_rows(-1, 2); }, ErrorCode::kOutOfRange);
  expect_error([&] { t.row(5); }, ErrorCode::kOutOfRange);
  expect_error([&] { t.row(-1); }, ErrorCode::kOutOfRange);
  Tensor scalar = Tensor::empty({}, DType::kF32);
  expect_error([&] { scalar.slice_rows(0, 1); }, ErrorCode::kOutOfRange);
}

TEST(Tensor, RowDropsTheFirstDim) {
  Tensor t = Tensor::empty({2, 3, 4}, DType::kF32);
  float* p = t.data_as<float>();
  std::iota(p, p + 24, 0.0f);
  Tensor r = t.row(1);  // [3, 4]
  EXPECT_EQ(r.ndim(), 2);
  EXPECT_EQ(r.size(0), 3);
  EXPECT_EQ(r.size(1), 4);
  EXPECT_EQ(r.stride(0), 4);
  EXPECT_EQ(r.stride(1), 1);
  EXPECT_EQ(r.data_as<float>()[0], 12.0f);
  Tensor rr = r.row(2);  // [4]
  EXPECT_EQ(rr.ndim(), 1);
  EXPECT_EQ(rr.data_as<float>()[3], 23.0f);
  Tensor x = rr.row(3);  // a scalar
  EXPECT_EQ(x.ndim(), 0);
  EXPECT_EQ(x.numel(), 1);
  EXPECT_EQ(*x.data_as<float>(), 23.0f);
}

TEST(Tensor, ViewsKeepStorageAlive) {
  Tensor v;
  {
    Tensor t = Tensor::empty({4, 4}, DType::kF32);
    t.data_as<float>()[13] = 7.0f;
    v = t.row(3);
  }
  EXPECT_EQ(v.data_as<float>()[1], 7.0f);
  v.data_as<float>()[0] = 1.0f;  // still writable: the allocation outlived the original
  EXPECT_EQ(v.data_as<float>()[0], 1.0f);
}

}  // namespace
}  // namespace atom
