// RoPE: inverse-frequency tables for HF's rope_type variants and the NeoX (rotate_half) rotation.
// Each table is computed in the same f32 steps, in the same order, as HF transformers'
// modeling_rope_utils, so atom's cos/sin match a transformers run to the last bit or two.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "atom/backends/cpu/ops.h"
#include "atom/backends/cpu/row_kernels.h"
#include "atom/core/error.h"

// HF evaluates `a * b + c * d` as separate tensor ops, rounding every product; a fused
// multiply-add rounds once and moves a table entry by an ulp, which a position of 100k turns into
// a visible angle error. GCC fuses by default, so the table and rotation math opts out.
#if defined(__GNUC__) && !defined(__clang__)
#define ATOM_NO_FP_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define ATOM_NO_FP_CONTRACT
#endif

namespace atom::cpu {

namespace {

// HF: base ** (torch.arange(0, dim, 2).float() / dim), in f32 (the Python float base is cast to
// f32 by the tensor op). [dim / 2]
std::vector<float> pos_freqs(int64_t dim, double base) {
  std::vector<float> f(size_t(dim / 2));
  const float b = float(base);
  for (int64_t i = 0; i < dim / 2; ++i) f[size_t(i)] = std::pow(b, float(2 * i) / float(dim));
  return f;
}

// HF: inv_freq = 1.0 / pos_freqs
std::vector<float> default_inv_freq(int64_t dim, double base) {
  std::vector<float> inv = pos_freqs(dim, base);
  for (float& v : inv) v = 1.0f / v;
  return inv;
}

// HF _compute_llama3_parameters.
ATOM_NO_FP_CONTRACT
std::vector<float> llama3_inv_freq(int64_t dim, double base, const RopeScaling& s,
                                   int64_t old_context_len) {
  ATOM_CHECK(s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor, kInvalidArgument,
             "llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor, got {} and {}",
             s.low_freq_factor, s.high_freq_factor);
  std::vector<float> inv = default_inv_freq(dim, base);
  const float factor = float(s.factor);
  const float low_freq_wavelen = float(double(old_context_len) / s.low_freq_factor);
  const float high_freq_wavelen = float(double(old_context_len) / s.high_freq_factor);
  const float two_pi = float(2.0 * std::numbers::pi);
  const float low = float(s.low_freq_factor);
  const float span = float(s.high_freq_factor - s.low_freq_factor);
  for (float& f : inv) {
    const float wavelen = two_pi / f;
    // wavelen < high_freq_wavelen: keep; wavelen > low_freq_wavelen: divide by factor
    const float llama = wavelen > low_freq_wavelen ? f / factor : f;
    // in between: interpolate with a smooth factor
    const float smooth = (float(old_context_len) / wavelen - low) / span;
    const float smoothed = (1.0f - smooth) * llama / factor + smooth * llama;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    f = medium ? smoothed : llama;
  }
  return inv;
}

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

// HF _compute_yarn_parameters.
ATOM_NO_FP_CONTRACT
RopeTable yarn_table(int64_t dim, double base, const RopeScaling& s, int64_t original_max) {
  const double factor = s.factor;
  RopeTable table;
  if (s.attention_factor) {
    table.attention_factor = float(*s.attention_factor);
  } else if (s.mscale != 0.0 && s.mscale_all_dim != 0.0) {
    table.attention_factor =
        float(yarn_get_mscale(factor, s.mscale) / yarn_get_mscale(factor, s.mscale_all_dim));
  } else {
    table.attention_factor = float(yarn_get_mscale(factor, 1.0));
  }
  // HF: `beta_fast or 32`, `beta_slow or 1`
  const double beta_fast = s.beta_fast != 0.0 ? s.beta_fast : 32.0;
  const double beta_slow = s.beta_slow != 0.0 ? s.beta_slow : 1.0;

  // Dimension at which a pair completes `num_rotations` over the original context.
  auto correction_dim = [&](double num_rotations) {
    return (double(dim) *
            std::log(double(original_max) / (num_rotations * 2.0 * std::numbers::pi))) /
           (2.0 * std::log(base));
  };
  double low = correction_dim(beta_fast);
  double high = correction_dim(beta_slow);
  if (s.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;  // HF: prevent a singular ramp

  const std::vector<float> pf = pos_freqs(dim, base);
  const float factor_f = float(factor);
  const float low_f = float(low);
  const float range_f = float(high - low);
  table.inv_freq.resize(pf.size());
  for (size_t i = 0; i < pf.size(); ++i) {
    const float extrapolation = 1.0f / pf[i];
    const float interpolation = 1.0f / (factor_f * pf[i]);
    const float ramp = std::clamp((float(i) - low_f) / range_f, 0.0f, 1.0f);
    const float extrapolation_factor = 1.0f - ramp;
    table.inv_freq[i] =
        interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
  }
  return table;
}

}  // namespace

RopeTable make_rope_inv_freq(int64_t rotary_dim, double theta, const RopeScaling& scaling,
                             int64_t max_position, int64_t seq_len) {
  ATOM_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0, kInvalidArgument,
             "rotary dimension must be positive and even, got {}", rotary_dim);
  ATOM_CHECK(theta > 0.0, kInvalidArgument, "rope_theta must be positive, got {}", theta);
  const std::string& type = scaling.type;
  const bool scaled = type != "default";
  ATOM_CHECK(!scaled || scaling.factor > 0.0, kInvalidArgument,
             "rope_scaling factor must be positive, got {}", scaling.factor);
  const int64_t original_max = scaling.original_max_position_embeddings > 0
                                   ? scaling.original_max_position_embeddings
                                   : max_position;

  RopeTable table;
  if (type == "default") {
    table.inv_freq = default_inv_freq(rotary_dim, theta);
  } else if (type == "linear") {
    // HF divides inv_freq (rather than the positions) by the factor: the same angles.
    table.inv_freq = default_inv_freq(rotary_dim, theta);
    for (float& f : table.inv_freq) f /= float(scaling.factor);
  } else if (type == "dynamic") {
    ATOM_CHECK(max_position > 0, kInvalidArgument,
               "dynamic rope scaling needs max_position_embeddings, got {}", max_position);
    ATOM_CHECK(rotary_dim > 2, kInvalidArgument,
               "dynamic rope scaling needs a rotary dimension above 2, got {}", rotary_dim);
    const double len = double(std::max(seq_len, max_position));
    const double f = scaling.factor;
    const double base = theta * std::pow(f * len / double(max_position) - (f - 1.0),
                                         double(rotary_dim) / double(rotary_dim - 2));
    table.inv_freq = default_inv_freq(rotary_dim, base);
  } else if (type == "llama3") {
    ATOM_CHECK(original_max > 0, kInvalidArgument,
               "llama3 rope scaling needs original_max_position_embeddings");
    table.inv_freq = llama3_inv_freq(rotary_dim, theta, scaling, original_max);
  } else if (type == "yarn") {
    ATOM_CHECK(original_max > 0, kInvalidArgument,
               "yarn rope scaling needs original_max_position_embeddings");
    table = yarn_table(rotary_dim, theta, scaling, original_max);
  } else {
    throw_error(ErrorCode::kUnsupported,
                "rope_scaling type '{}' is not supported (atom supports default, linear, dynamic, "
                "llama3 and yarn)",
                type);
  }
  return table;
}

RopeTable make_rope_inv_freq(int64_t rotary_dim, double theta, const RopeScaling& scaling,
                             int64_t max_position) {
  return make_rope_inv_freq(rotary_dim, theta, scaling, max_position, max_position);
}

namespace detail {

void check_rope(int64_t head_dim, int64_t rotary_dim, const RopeTable& table) {
  ATOM_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0 && rotary_dim <= head_dim, kInvalidArgument,
             "rotary dimension {} must be even and within head_dim {}", rotary_dim, head_dim);
  ATOM_CHECK(int64_t(table.inv_freq.size()) == rotary_dim / 2, kInvalidArgument,
             "rope table has {} frequencies, rotary dimension {} needs {}", table.inv_freq.size(),
             rotary_dim, rotary_dim / 2);
}

ATOM_NO_FP_CONTRACT
void rope_cos_sin(int32_t position, const RopeTable& table, float* c, float* s) {
  // HF: freqs = position_ids.float() * inv_freq; cos = freqs.cos() * attention_scaling
  const float pos = float(position);
  const float af = table.attention_factor;
  const int64_t half = int64_t(table.inv_freq.size());
  for (int64_t i = 0; i < half; ++i) {
    const float f = pos * table.inv_freq[size_t(i)];
    c[i] = std::cos(f) * af;
    s[i] = std::sin(f) * af;
  }
}

ATOM_NO_FP_CONTRACT
void rope_rotate_head(float* v, int64_t half, const float* c, const float* s) {
  // x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1)
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float a = v[i];
    const float b = v[i + half];
    v[i] = a * c[i] - b * s[i];
    v[i + half] = b * c[i] + a * s[i];
  }
}

}  // namespace detail

// Same attribute as the kernels above, so GCC may inline them here.
ATOM_NO_FP_CONTRACT
void rope_neox(float* x, const int32_t* positions, int64_t n_tokens, int64_t n_heads,
               int64_t head_dim, int64_t rotary_dim, const RopeTable& table) {
  detail::check_rope(head_dim, rotary_dim, table);
  const int64_t half = rotary_dim / 2;
  // Decode rotates a few kilobytes: threads would cost more than they save.
  const bool parallel = n_tokens > 1 && n_tokens * n_heads * rotary_dim >= (int64_t(1) << 15);
#pragma omp parallel if (parallel)
  {
    // cos and sin of one token, shared by its heads. [half] each
    thread_local std::vector<float> cs;
    if (int64_t(cs.size()) < 2 * half) cs.resize(size_t(2 * half));
    float* c = cs.data();
    float* s = c + half;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n_tokens; ++t) {
      detail::rope_cos_sin(positions[t], table, c, s);
      for (int64_t h = 0; h < n_heads; ++h)
        detail::rope_rotate_head(x + (t * n_heads + h) * head_dim, half, c, s);
    }
  }
}

}  // namespace atom::cpu
