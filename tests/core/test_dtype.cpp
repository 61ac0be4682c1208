// core/dtype: sizes and names, and the scalar conversions (bf16, f16, fp8 e4m3) against IEEE
// round-to-nearest-even, including subnormals, ties, overflow, infinities and NaN.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "atom/core/dtype.h"

namespace atom {
namespace {

float f32(uint32_t bits) { return std::bit_cast<float>(bits); }
uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kF16), 2u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF8E4M3), 1u);
  EXPECT_EQ(dtype_size(DType::kI8), 1u);
  EXPECT_EQ(dtype_size(DType::kU8), 1u);
  EXPECT_EQ(dtype_size(DType::kI32), 4u);
  EXPECT_EQ(dtype_size(DType::kI64), 8u);
  EXPECT_EQ(dtype_name(DType::kF32), "f32");
  EXPECT_EQ(dtype_name(DType::kF16), "f16");
  EXPECT_EQ(dtype_name(DType::kBF16), "bf16");
  EXPECT_EQ(dtype_name(DType::kF8E4M3), "fp8_e4m3");
  EXPECT_EQ(dtype_name(DType::kI8), "i8");
  EXPECT_EQ(dtype_name(DType::kU8), "u8");
  EXPECT_EQ(dtype_name(DType::kI32), "i32");
  EXPECT_EQ(dtype_name(DType::kI64), "i64");
}

// --- bf16 ---

TEST(Bf16, EveryValueRoundTrips) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = bf16_to_f32(uint16_t(h));
    EXPECT_EQ(bits(f), h << 16);  // bf16 is the top half of an f32
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f)))) << std::hex << h;
    } else {
      EXPECT_EQ(f32_to_bf16(f), h) << std::hex << h;
    }
  }
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(f32(0x3f808000)), 0x3f80);  // tie, 0x3f80 is even
  EXPECT_EQ(f32_to_bf16(f32(0x3f818000)), 0x3f82);  // tie, 0x3f82 is even
  EXPECT_EQ(f32_to_bf16(f32(0x3f808001)), 0x3f81);  // just above the tie
  EXPECT_EQ(f32_to_bf16(f32(0x3f807fff)), 0x3f80);  // just below it
  EXPECT_EQ(f32_to_bf16(f32(0xbf818000)), 0xbf82);  // sign does not change the rule
  EXPECT_EQ(f32_to_bf16(f32(0x3fffffff)), 0x4000);  // mantissa carry into the exponent
}

TEST(Bf16, SubnormalsInfinitiesAndNaN) {
  EXPECT_EQ(f32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(f32(0x00010000)), 0x0001);  // smallest bf16 subnormal, exact
  EXPECT_EQ(f32_to_bf16(f32(0x00000001)), 0x0000);  // far below half of it
  EXPECT_EQ(f32_to_bf16(f32(0x00008000)), 0x0000);  // tie between 0 and 1: even
  EXPECT_EQ(f32_to_bf16(f32(0x00018000)), 0x0002);  // tie between 1 and 2: even
  EXPECT_EQ(f32_to_bf16(f32(0x007fffff)), 0x0080);  // largest f32 subnormal -> min normal
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(f32_to_bf16(inf), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-inf), 0xff80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to inf
  EXPECT_EQ(f32_to_bf16(f32(0x7f7f7fff)), 0x7f7f);  // largest value that stays finite
  EXPECT_TRUE(std::isinf(bf16_to_f32(0x7f80)));
  // A NaN whose payload lives only in the low 16 bits must stay NaN, not become inf.
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f32(0x7f800001)))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f32(0xff800001)))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  EXPECT_EQ(f32_to_bf16(f32(0xff800001)) & 0x8000, 0x8000);  // sign kept
}

// --- f16 ---

TEST(F16, EveryValueRoundTrips) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_EQ(h & 0x7c00u, 0x7c00u);
      EXPECT_NE(h & 0x3ffu, 0u);
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f)))) << std::hex << h;
    } else {
      EXPECT_EQ(f32_to_f16(f), h) << std::hex << h;
    }
  }
}

TEST(F16, KnownValues) {
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_TRUE(std::signbit(f16_to_f32(0x8000)));
  EXPECT_EQ(f16_to_f32(0x8000), 0.0f);
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
  EXPECT_LT(f16_to_f32(0xfc00), 0.0f);
  EXPECT_TRUE(std::isinf(f16_to_f32(0xfc00)));
}

TEST(F16, RoundsToNearestEven) {
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3c01);
  EXPECT_EQ(f32_to_f16(1.0f - std::ldexp(1.0f, -12)), 0x3c00);  // tie with carry into exponent
  EXPECT_EQ(f32_to_f16(-(1.0f + 3 * std::ldexp(1.0f, -11))), 0xbc02);
  EXPECT_EQ(f32_to_f16(0.1f), 0x2e66);
}

TEST(F16, SubnormalsOverflowAndNaN) {
  const float tiny = std::ldexp(1.0f, -24);
  EXPECT_EQ(f32_to_f16(tiny), 0x0001);
  EXPECT_EQ(f32_to_f16(tiny / 2), 0x0000);         // tie between 0 and 1: even
  EXPECT_EQ(f32_to_f16(tiny * 1.5f), 0x0002);      // tie between 1 and 2: even
  EXPECT_EQ(f32_to_f16(tiny * 2.5f), 0x0002);      // tie between 2 and 3: even
  EXPECT_EQ(f32_to_f16(tiny * 0.50001f), 0x0001);  // just above half
  EXPECT_EQ(f32_to_f16(tiny / 4), 0x0000);
  EXPECT_EQ(f32_to_f16(-tiny / 4), 0x8000);                 // signed zero
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.5f, -24)), 0x0400);  // subnormal rounds up to normal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);
  EXPECT_EQ(f32_to_f16(f32(0x00000001)), 0x0000);  // f32 subnormal
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.99f), 0x7bff);  // below the tie with 65536
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);   // the tie rounds to inf (even)
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-1e6f), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  const uint16_t nan = f32_to_f16(std::nanf(""));
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  EXPECT_EQ(f32_to_f16(-std::nanf("")) & 0x8000, 0x8000);
  // A NaN with only low payload bits must not collapse into inf.
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f32(0x7f800001)))));
}

// --- fp8 e4m3 (the "fn" variant: no infinities, NaN = S.1111.111, max 448) ---

TEST(Fp8E4M3, EveryCodeRoundTrips) {
  int nans = 0;
  for (uint32_t c = 0; c <= 0xff; ++c) {
    const float f = fp8e4m3_to_f32(uint8_t(c));
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(f)) << std::hex << c;
      ++nans;
      continue;
    }
    EXPECT_TRUE(std::isfinite(f)) << std::hex << c;
    EXPECT_EQ(f32_to_fp8e4m3(f), c) << std::hex << c << " = " << f;
  }
  EXPECT_EQ(nans, 2);
}

TEST(Fp8E4M3, KnownValues) {
  EXPECT_EQ(fp8e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0x39), 1.125f);
  EXPECT_EQ(fp8e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0xfe), -448.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(fp8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(fp8e4m3_to_f32(0x07), std::ldexp(7.0f, -9));
  EXPECT_TRUE(std::signbit(fp8e4m3_to_f32(0x80)));
  EXPECT_EQ(fp8e4m3_to_f32(0x80), 0.0f);
  EXPECT_EQ(f32_to_fp8e4m3(-0.0f), 0x80);
}

TEST(Fp8E4M3, RoundsToNearestEven) {
  EXPECT_EQ(f32_to_fp8e4m3(1.0625f), 0x38);  // tie between 1 and 1.125: even code
  EXPECT_EQ(f32_to_fp8e4m3(1.1875f), 0x3a);  // tie between 1.125 and 1.25: even code
  EXPECT_EQ(f32_to_fp8e4m3(1.07f), 0x39);    // above the tie
  EXPECT_EQ(f32_to_fp8e4m3(-1.1875f), 0xba);
  EXPECT_EQ(f32_to_fp8e4m3(0.3f), 0x2a);    // 0.3 -> 0.3125
  EXPECT_EQ(f32_to_fp8e4m3(400.0f), 0x7c);  // tie between 384 (0x7c) and 416 (0x7d)
  EXPECT_EQ(f32_to_fp8e4m3(410.0f), 0x7d);  // nearer 416
  EXPECT_EQ(f32_to_fp8e4m3(432.0f), 0x7e);  // tie between 416 (0x7d) and 448 (0x7e)
  const float sub = std::ldexp(1.0f, -9);
  EXPECT_EQ(f32_to_fp8e4m3(sub / 2), 0x00);  // tie between 0 and the smallest subnormal
  EXPECT_EQ(f32_to_fp8e4m3(sub * 0.6f), 0x01);
  EXPECT_EQ(f32_to_fp8e4m3(sub * 1.5f), 0x02);
  EXPECT_EQ(f32_to_fp8e4m3(sub * 7.5f), 0x08);  // subnormal tie rounding up to the min normal
  EXPECT_EQ(f32_to_fp8e4m3(sub / 4), 0x00);
  EXPECT_EQ(f32_to_fp8e4m3(-sub / 4), 0x80);
}

TEST(Fp8E4M3, SaturatesAndKeepsNaN) {
  EXPECT_EQ(f32_to_fp8e4m3(448.0f), 0x7e);
  EXPECT_EQ(f32_to_fp8e4m3(449.0f), 0x7e);
  EXPECT_EQ(f32_to_fp8e4m3(1e9f), 0x7e);
  EXPECT_EQ(f32_to_fp8e4m3(-1e9f), 0xfe);
  EXPECT_EQ(f32_to_fp8e4m3(std::numeric_limits<float>::infinity()), 0x7e);
  EXPECT_EQ(f32_to_fp8e4m3(-std::numeric_limits<float>::infinity()), 0xfe);
  EXPECT_TRUE(std::isnan(fp8e4m3_to_f32(f32_to_fp8e4m3(std::nanf("")))));
}

}  // namespace
}  // namespace atom
