// The arithmetic of atom's sampling definition, shared by the CPU Sampler (runner/sampler.cpp)
// and the CUDA sampling kernels (backends/cuda/sampling.cu), so that both draw the same token for
// the same logits, seed and counter. Header-only; every function is usable on the host and, under
// nvcc, on the device.
//
// The definition (see Sampler::sample):
//   p_i   = sampling_prob(l_i, max_l, 1 / T): exp((l_i - max_l) / T) in float, the max is 1
//   t_k   = p of the k-th largest logit when 0 < top_k < vocab, else 0
//   K     = {i : p_i >= t_k}
//   t_p   = the largest p_v in K with sum_{i in K, p_i >= p_v} mass(p_i) >= top_p_target(mass(K))
//           when top_p < 1, else 0
//   t_m   = min_p (relative to the top token, whose p is 1)
//   S     = {i : p_i >= max(t_k, t_p, t_m)}; ties at the threshold are all kept
//   r     = scale_uniform(sampling_bits53(seed, counter), mass(S))
//   token = the first id (in vocabulary order) in S whose inclusive prefix mass exceeds r
// Masses are fixed-point integers: mass(p) = floor(p * 2^kMassBits). Integer sums are exact and
// independent of summation order, so the CPU's sequential sums and the GPU's parallel ones agree
// bit for bit, and r < mass(S) always leaves a token to pick. The price: tokens with
// p < 2^-kMassBits (about 2.3e-13 of the top token's) weigh nothing and are never drawn.
//
// p comes from sampling_exp, a fixed polynomial with explicit fused multiply-adds, not the
// platform's expf: CUDA's and the C library's expf differ in the last bit, ours gives the same
// float on both.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define ATOM_HOST_DEVICE __host__ __device__
#else
#define ATOM_HOST_DEVICE
#endif

namespace atom {

// Fixed-point scale of the masses (sampling_mass uses 2^42): p in [0, 1] becomes an integer in
// [0, 2^42]; a row of up to 2^21 tokens sums to less than 2^63.
inline constexpr int kMassBits = 42;
inline constexpr int64_t kMaxSamplingVocab = int64_t(1) << 21;

// splitmix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
ATOM_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// 53 random bits for draw number `counter` of the stream `seed`: a pure function of both, so a
// request's draws depend neither on batching nor on how many draws came before.
ATOM_HOST_DEVICE inline uint64_t sampling_bits53(uint64_t seed, uint64_t counter) {
  return splitmix64(splitmix64(seed) ^ splitmix64(counter ^ 0x5851f42d4c957f2dull)) >> 11;
}

// The same draw as a double uniform in [0, 1).
ATOM_HOST_DEVICE inline double sampling_uniform(uint64_t seed, uint64_t counter) {
  return double(sampling_bits53(seed, counter)) * 0x1.0p-53;
}

// floor(bits53 * total / 2^53): the draw scaled to [0, total), exact (128-bit product).
ATOM_HOST_DEVICE inline uint64_t scale_uniform(uint64_t bits53, uint64_t total) {
#if defined(__CUDA_ARCH__)
  const uint64_t hi = __umul64hi(bits53, total);
  const uint64_t lo = bits53 * total;
  return (hi << 11) | (lo >> 53);
#else
  return uint64_t((static_cast<unsigned __int128>(bits53) * total) >> 53);
#endif
}

ATOM_HOST_DEVICE inline uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

ATOM_HOST_DEVICE inline float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// exp(x) for x <= 0, identical on host and device: x rounded to a multiple of 2^-20, range
// reduction x = n ln2 + r, |r| <= ln2 / 2, then the degree-7 Taylor polynomial of exp(r) by fused
// multiply-adds (within 1 ulp of exp of the rounded x). The rounding of x makes the function
// non-decreasing: neighbouring inputs differ by at least 2^-20, so their results by ~8 ulp, more
// than the polynomial's error (without it, neighbouring floats near 0 would come out in the
// wrong order now and then). Its price, a relative error up to 5e-7, does not matter to
// sampling. Results below e^-86 (not normal floats after scaling) are 0.
ATOM_HOST_DEVICE inline float sampling_exp(float x) {
  if (!(x > -86.0f)) return 0.0f;         // also -inf (masked tokens) and NaN
  x = rintf(x * 0x1.0p20f) * 0x1.0p-20f;  // exact scalings: only the rounding to the grid
  if (x >= 0.0f) return 1.0f;
  const float n = rintf(x * 1.44269504f);
  float r = fmaf(n, -0.693145752f, x);  // ln2 split in two so n * ln2 is nearly exact
  r = fmaf(n, -1.42860677e-6f, r);
  float q = 1.98412698e-4f;  // 1/5040
  q = fmaf(q, r, 1.38888889e-3f);
  q = fmaf(q, r, 8.33333333e-3f);
  q = fmaf(q, r, 4.16666667e-2f);
  q = fmaf(q, r, 1.66666667e-1f);
  q = fmaf(q, r, 0.5f);
  q = fmaf(q, r, 1.0f);
  q = fmaf(q, r, 1.0f);
  // q * 2^n with n in [-125, 0] and q in [0.7, 1.5): the result stays a normal float.
  return bits_float(float_bits(q) + (uint32_t(int32_t(n)) << 23));
}

// p of a logit: exp((logit - max_logit) * inv_temperature), 1 for the max itself (also when the
// max is infinite), 0 for -inf.
ATOM_HOST_DEVICE inline float sampling_prob(float logit, float max_logit, float inv_temperature) {
  return logit == max_logit ? 1.0f : sampling_exp((logit - max_logit) * inv_temperature);
}

// floor(p * 2^kMassBits) for p in [0, 1] from the float's bits: integer ops only.
ATOM_HOST_DEVICE inline uint64_t sampling_mass_from_bits(float p) {
  const uint32_t b = float_bits(p);
  const int e = int(b >> 23);  // p >= 0: no sign bit
  if (e == 0) return 0;        // zero or subnormal: far below 2^-kMassBits
  const uint64_t m = (b & 0x7fffffu) | 0x800000u;
  // p = m * 2^(e - 150); times 2^kMassBits: m * 2^(e - 150 + kMassBits)
  const int shift = e - 150 + kMassBits;
  if (shift >= 0) return m << shift;
  return shift > -64 ? m >> -shift : 0;
}

// floor(p * 2^kMassBits) for p in [0, 1]: exact either way, so the two agree bit for bit. The
// device shifts the mantissa (f64 conversions are slow there); the host converts through double
// (p * 2^kMassBits is exact in double), which vectorizes.
ATOM_HOST_DEVICE inline uint64_t sampling_mass(float p) {
#if defined(__CUDA_ARCH__)
  return sampling_mass_from_bits(p);
#else
  return uint64_t(double(p) * double(uint64_t(1) << kMassBits));
#endif
}

// The mass the top-p prefix must reach: ceil(top_p * total), computed in double identically on
// both backends; <= total for top_p < 1.
ATOM_HOST_DEVICE inline uint64_t top_p_target(uint64_t total, float top_p) {
  return uint64_t(ceil(double(top_p) * double(total)));
}

// Order-preserving key of a float (larger float, larger key; -0 just below +0).
ATOM_HOST_DEVICE inline uint32_t float_order_key(float f) {
  const uint32_t b = float_bits(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The repetition, frequency and presence penalties of one token, in the CPU Sampler's order:
// repetition when the token was seen in prompt or output, then frequency * count + presence when
// it occurs `output_count` > 0 times in the output. Explicit fma: both backends round alike.
ATOM_HOST_DEVICE inline float penalize_logit(float logit, bool seen, int32_t output_count,
                                             float repetition, float frequency, float presence,
                                             bool apply_repetition, bool apply_counts) {
  if (apply_repetition && seen) logit = logit > 0 ? logit / repetition : logit * repetition;
  if (apply_counts && output_count > 0) logit -= fmaf(frequency, float(output_count), presence);
  return logit;
}

}  // namespace atom
