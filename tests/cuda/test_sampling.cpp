// CUDA sampling kernels against the CPU Sampler (the oracle): the same token for the same logits,
// seed and counter over awkward vocabularies and row counts, every filter combination, logits
// with exact ties and masked (-inf) tokens; the penalties against Sampler::apply_penalties bit for
// bit; the empirical distribution against the kept-set probabilities; and launch timings.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "atom/backends/cuda/check.h"
#include "atom/backends/cuda/sampling.h"
#include "atom/runner/sampler.h"
#include "atom/runner/sampling_math.h"
#include "cuda_test_util.h"

namespace atom::cuda {
namespace {

using test::DeviceBuffer;
using test::gpu_visible;
using test::sync;

constexpr float kInf = std::numeric_limits<float>::infinity();

class CudaSamplingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  }
};

SampleRowParams row_params(float temperature, int32_t top_k, float top_p, float min_p,
                           uint64_t seed, uint64_t counter) {
  SampleRowParams r{};
  r.temperature = temperature;
  r.top_k = top_k;
  r.top_p = top_p;
  r.min_p = min_p;
  r.seed_lo = uint32_t(seed);
  r.seed_hi = uint32_t(seed >> 32);
  r.counter_lo = uint32_t(counter);
  r.counter_hi = uint32_t(counter >> 32);
  return r;
}

uint64_t seed_of(const SampleRowParams& r) { return (uint64_t(r.seed_hi) << 32) | r.seed_lo; }
uint64_t counter_of(const SampleRowParams& r) {
  return (uint64_t(r.counter_hi) << 32) | r.counter_lo;
}

SamplingParams sampling_params(const SampleRowParams& r) {
  SamplingParams p;
  p.temperature = r.temperature;
  p.top_k = r.top_k;
  p.top_p = r.top_p;
  p.min_p = r.min_p;
  p.seed = seed_of(r);
  return p;
}

// The oracle: the CPU Sampler on one row.
int32_t cpu_sample(const float* logits, int64_t vocab, const SampleRowParams& r) {
  Sampler s(sampling_params(r));
  return s.sample(logits, vocab, counter_of(r));
}

// [rows, vocab] N(0, 3) logits with about 10% exact duplicates of other entries (ties) and 5%
// masked (-inf); never a row of nothing but -inf.
std::vector<float> awkward_logits(int64_t rows, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  std::uniform_int_distribution<int64_t> pick(0, vocab - 1);
  std::vector<float> l(static_cast<size_t>(rows * vocab));
  for (int64_t r = 0; r < rows; ++r) {
    float* row = l.data() + r * vocab;
    for (int64_t i = 0; i < vocab; ++i) row[i] = nd(rng);
    for (int64_t i = 0; i < vocab; ++i) {
      const float u = ud(rng);
      if (u < 0.10f)
        row[i] = row[pick(rng)];
      else if (u < 0.15f)
        row[i] = -kInf;
    }
    if (std::all_of(row, row + vocab, [](float v) { return v == -kInf; })) row[0] = 0.0f;
  }
  return l;
}

// A double-precision rendering of the definition, used only to tell whether a GPU/CPU
// disagreement sits at a boundary (a threshold or a CDF step within a relative `eps`), where the
// last bit of p or of a sum may decide.
bool near_boundary(const float* l, int64_t vocab, const SampleRowParams& r, double eps) {
  if (r.temperature < 1e-5f || r.top_k == 1) return false;
  const double m = *std::max_element(l, l + vocab);
  std::vector<double> p(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) p[size_t(i)] = std::exp((double(l[i]) - m) / r.temperature);
  auto close = [eps](double a, double b) { return std::fabs(a - b) <= eps * std::max(a, b); };
  std::vector<double> sorted = p;
  std::sort(sorted.begin(), sorted.end(), std::greater<double>());
  double t_k = 0.0;
  if (r.top_k > 0 && r.top_k < vocab) t_k = sorted[size_t(r.top_k - 1)];
  double t_p = 0.0;
  double mass_k = 0.0;
  for (double v : sorted)
    if (v >= t_k) mass_k += v;
  if (r.top_p < 1.0f) {
    double cum = 0.0;
    const double target = double(r.top_p) * mass_k;
    for (double v : sorted) {
      if (v < t_k) break;
      cum += v;
      if (close(cum, target)) return true;  // the crossing itself is ambiguous
      if (cum >= target) {
        t_p = v;
        break;
      }
    }
  }
  const double t = std::max({t_k, t_p, double(r.min_p)});
  for (double v : p)
    if (v > 0 && t > 0 && close(v, t)) return true;  // a token on the threshold
  double total = 0.0;
  for (double v : p)
    if (v >= t) total += v;
  const double x = sampling_uniform(seed_of(r), counter_of(r)) * total;
  double cum = 0.0;
  for (double v : p) {
    if (v < t) continue;
    cum += v;
    if (std::fabs(cum - x) <= eps * total) return true;  // the draw on a CDF step
  }
  return false;
}

std::vector<int32_t> gpu_sample(const std::vector<float>& logits, int64_t rows, int64_t vocab,
                                const std::vector<SampleRowParams>& params) {
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<SampleRowParams> d_params(params);
  DeviceBuffer<int32_t> d_out(static_cast<size_t>(rows));
  d_out.fill_bytes(0xff);  // -1: a row the kernel never writes shows up
  launch_sample(d_logits.get(), rows, vocab, d_params.get(), d_out.get(), nullptr);
  sync();
  return d_out.download();
}

// Every vocab x rows case: the GPU's tokens against the CPU Sampler's.
void expect_matches_cpu(const std::vector<int64_t>& vocabs, const std::vector<int64_t>& row_counts,
                        uint64_t seed) {
  const std::vector<float> temps = {0.0f, 0.3f, 1.0f, 2.0f};
  const std::vector<float> top_ps = {0.1f, 0.9f, 1.0f};
  const std::vector<float> min_ps = {0.0f, 0.05f};
  int64_t samples = 0, mismatches = 0, unexplained = 0;
  std::mt19937_64 rng(seed);
  uint32_t case_seed = uint32_t(seed);
  for (int64_t vocab : vocabs) {
    for (int64_t rows : row_counts) {
      const std::vector<int32_t> top_ks = {-1, 1, 5, int32_t(vocab - 1), int32_t(vocab + 3)};
      const std::vector<float> logits = awkward_logits(rows, vocab, case_seed++);
      std::vector<SampleRowParams> params(static_cast<size_t>(rows));
      // Every combination of the grid over consecutive rows (from a random start).
      const size_t start = size_t(rng() % 120);
      for (int64_t r = 0; r < rows; ++r) {
        const size_t c = (start + size_t(r)) % 120;
        params[size_t(r)] = row_params(temps[c % 4], top_ks[(c / 4) % 5], top_ps[(c / 20) % 3],
                                       min_ps[(c / 60) % 2], rng(), rng() >> (rng() % 64));
      }
      const std::vector<int32_t> got = gpu_sample(logits, rows, vocab, params);
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = logits.data() + r * vocab;
        const int32_t want = cpu_sample(row, vocab, params[size_t(r)]);
        ++samples;
        ASSERT_GE(got[size_t(r)], 0) << "row " << r << " not written";
        ASSERT_LT(got[size_t(r)], vocab);
        if (got[size_t(r)] == want) continue;
        ++mismatches;
        const SampleRowParams& p = params[size_t(r)];
        if (!near_boundary(row, vocab, p, 1e-5) && unexplained++ < 5) {
          ADD_FAILURE() << "vocab " << vocab << " row " << r << ": gpu " << got[size_t(r)]
                        << " cpu " << want << " (T " << p.temperature << " top_k " << p.top_k
                        << " top_p " << p.top_p << " min_p " << p.min_p << ")";
        }
      }
    }
  }
  std::printf("[sampling] %lld rows, %lld differ from the CPU Sampler (%lld not at a boundary)\n",
              (long long)samples, (long long)mismatches, (long long)unexplained);
  EXPECT_EQ(unexplained, 0);
  // Both backends share the arithmetic (sampling_math.h): even boundary cases should agree.
  EXPECT_LE(mismatches * 1000, samples);
}

TEST_F(CudaSamplingTest, MatchesTheCpuSamplerOnAwkwardShapes) {
  expect_matches_cpu({1, 2, 17, 1000, 32000, 151936}, {1, 3, 64, 300}, 2024);
}

// A quick subset (also the one to run under compute-sanitizer).
TEST_F(CudaSamplingTest, MatchesTheCpuSamplerSmall) {
  expect_matches_cpu({2, 1000, 1029}, {3, 120}, 7);
}

TEST_F(CudaSamplingTest, GreedyRowsAreTheFirstMaximum) {
  // Ties for the maximum everywhere: the lowest id wins, as atom::argmax.
  const int64_t rows = 5, vocab = 4099;
  std::vector<float> l(size_t(rows * vocab), 1.0f);
  const std::vector<int64_t> first = {0, 1, 2048, 4097, 4098};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = first[size_t(r)]; i < vocab; i += 7) l[size_t(r * vocab + i)] = 2.0f;
  std::vector<SampleRowParams> params;
  for (int64_t r = 0; r < rows; ++r)
    params.push_back(row_params(r % 2 ? 0.0f : 1.0f, r % 2 ? -1 : 1, 1.0f, 0.0f, 9, 9));
  const std::vector<int32_t> got = gpu_sample(l, rows, vocab, params);
  for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(got[size_t(r)], first[size_t(r)]) << r;
}

TEST_F(CudaSamplingTest, SameSeedAndCounterSameTokenAcrossRows) {
  // One logits row copied into every row: rows with the same (seed, counter) agree wherever they
  // sit in the batch, and launching again gives the same tokens (determinism).
  const int64_t rows = 256, vocab = 32000;
  const std::vector<float> one = awkward_logits(1, vocab, 77);
  std::vector<float> l;
  for (int64_t r = 0; r < rows; ++r) l.insert(l.end(), one.begin(), one.end());
  std::vector<SampleRowParams> params;
  for (int64_t r = 0; r < rows; ++r)
    params.push_back(row_params(1.0f, 40, 0.95f, 0.0f, 1234, uint64_t(r % 16)));
  const std::vector<int32_t> a = gpu_sample(l, rows, vocab, params);
  const std::vector<int32_t> b = gpu_sample(l, rows, vocab, params);
  EXPECT_EQ(a, b);
  for (int64_t r = 16; r < rows; ++r) EXPECT_EQ(a[size_t(r)], a[size_t(r % 16)]) << r;
  std::map<int32_t, int> distinct;
  for (int64_t r = 0; r < 16; ++r) ++distinct[a[size_t(r)]];
  EXPECT_GT(distinct.size(), 1u) << "16 counters drew one token";
}

TEST_F(CudaSamplingTest, FrequenciesMatchTheKeptSetProbabilities) {
  // One row, many counters: the empirical frequencies against p / sum over the kept set, by
  // chi-square; and nothing outside the kept set.
  const int64_t vocab = 1000, rows = 1024, launches = 64;
  std::vector<float> one = awkward_logits(1, vocab, 5);
  for (int64_t i = 0; i < vocab; ++i) one[size_t(i)] *= 0.5f;  // a flatter distribution
  const float temperature = 0.8f, top_p = 0.9f, min_p = 0.01f;
  const int32_t top_k = 60;
  std::vector<float> l;
  for (int64_t r = 0; r < rows; ++r) l.insert(l.end(), one.begin(), one.end());
  DeviceBuffer<float> d_logits(l);
  DeviceBuffer<int32_t> d_out(static_cast<size_t>(rows));
  std::vector<int64_t> counts(size_t(vocab), 0);
  for (int64_t k = 0; k < launches; ++k) {
    std::vector<SampleRowParams> params;
    for (int64_t r = 0; r < rows; ++r)
      params.push_back(row_params(temperature, top_k, top_p, min_p, 31337, uint64_t(k * rows + r)));
    DeviceBuffer<SampleRowParams> d_params(params);
    launch_sample(d_logits.get(), rows, vocab, d_params.get(), d_out.get(), nullptr);
    sync();
    for (int32_t t : d_out.download()) ++counts[size_t(t)];
  }
  // The kept set by the definition (sampling_math.h), probabilities in double.
  const float m = *std::max_element(one.begin(), one.end());
  const float inv_t = 1.0f / temperature;
  std::vector<float> p(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) p[size_t(i)] = sampling_prob(one[size_t(i)], m, inv_t);
  std::vector<float> sorted_l = one;
  std::sort(sorted_l.begin(), sorted_l.end(), std::greater<float>());
  const float t_k = sampling_prob(sorted_l[size_t(top_k - 1)], m, inv_t);
  std::vector<float> kept_k;
  uint64_t mass_k = 0;
  for (float v : p)
    if (v >= t_k && sampling_mass(v) > 0) {
      kept_k.push_back(v);
      mass_k += sampling_mass(v);
    }
  std::sort(kept_k.begin(), kept_k.end(), std::greater<float>());
  const uint64_t target = top_p_target(mass_k, top_p);
  float t_p = 0.0f;
  uint64_t cum = 0;
  for (size_t j = 0; j < kept_k.size();) {
    const float v = kept_k[j];
    for (; j < kept_k.size() && kept_k[j] == v; ++j) cum += sampling_mass(kept_k[j]);
    if (cum >= target) {
      t_p = v;
      break;
    }
  }
  const float t = std::max({t_k, t_p, min_p});
  double z = 0.0;
  int kept = 0;
  for (float v : p)
    if (v >= t) {
      z += v;
      ++kept;
    }
  const double n = double(rows * launches);
  double chi2 = 0.0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (p[size_t(i)] < t) {
      EXPECT_EQ(counts[size_t(i)], 0) << "token " << i << " is outside the kept set";
      continue;
    }
    const double want = n * p[size_t(i)] / z;
    chi2 += (double(counts[size_t(i)]) - want) * (double(counts[size_t(i)]) - want) / want;
  }
  const double df = kept - 1;
  std::printf("[sampling] %d kept tokens, chi-square %.1f (df %.0f)\n", kept, chi2, df);
  ASSERT_GT(kept, 5);  // a real distribution, not one token
  // Chi-square's mean is df, its sd sqrt(2 df): 6 sd above the mean.
  EXPECT_LT(chi2, df + 6.0 * std::sqrt(2.0 * df));
}

// --- penalties ---

struct PenaltyCase {
  float repetition, frequency, presence;
  int inflight;  // 0: none, 1: equal to an entry, 2: a new token
  bool stops;
};

TEST_F(CudaSamplingTest, PenaltiesMatchTheCpuExactly) {
  std::vector<PenaltyCase> cases;
  for (float rep : {1.0f, 1.3f})
    for (float freq : {0.0f, 0.5f})
      for (float pres : {0.0f, -0.7f})
        for (int inflight : {0, 1, 2})
          for (bool stops : {false, true}) cases.push_back({rep, freq, pres, inflight, stops});
  for (int64_t vocab : {17, 1000, 32000}) {
    const int64_t rows = int64_t(cases.size()) + 3;  // three rows without penalties
    std::vector<float> logits = awkward_logits(rows, vocab, uint32_t(vocab));
    std::vector<float> want = logits;
    std::mt19937 rng(uint32_t(vocab) + 1);
    std::vector<PenaltyRowParams> prows;
    std::vector<PenaltyEntry> entries;
    std::vector<int32_t> inflight_ids, stop_ids;
    for (size_t c = 0; c < cases.size(); ++c) {
      const PenaltyCase& pc = cases[c];
      // Penalty rows in scrambled logits-row order (7 and the row count are coprime: distinct).
      const int32_t lrow = int32_t((c * 7 + 2) % size_t(rows));
      // Distinct tokens with prompt flags and output counts, plus an out-of-vocabulary one.
      std::vector<int32_t> ids(static_cast<size_t>(vocab));
      for (int64_t i = 0; i < vocab; ++i) ids[size_t(i)] = int32_t(i);
      std::shuffle(ids.begin(), ids.end(), rng);
      const int64_t n = std::min<int64_t>(vocab - 1, 1 + int64_t(rng() % 40));
      PenaltyRowParams pr{};
      pr.logits_row = lrow;
      pr.repetition = pc.repetition;
      pr.frequency = pc.frequency;
      pr.presence = pc.presence;
      pr.entries_begin = int32_t(entries.size());
      std::vector<int32_t> prompt, output;
      for (int64_t e = 0; e < n; ++e) {
        PenaltyEntry en{ids[size_t(e)], int32_t(rng() % 2), int32_t(rng() % 4)};
        if (!en.in_prompt && en.output_count == 0) en.output_count = 1;
        entries.push_back(en);
        if (en.in_prompt) prompt.push_back(en.token);
        for (int32_t k = 0; k < en.output_count; ++k) output.push_back(en.token);
      }
      entries.push_back(PenaltyEntry{int32_t(vocab + 5), 1, 2});  // ignored on both sides
      prompt.push_back(int32_t(vocab + 5));
      pr.entries_end = int32_t(entries.size());
      pr.inflight_index = -1;
      if (pc.inflight != 0) {
        // 1: an entry's token (its count + 1); 2: a token no entry lists (a new output token).
        const int32_t id =
            pc.inflight == 1 ? entries[size_t(pr.entries_begin)].token : ids[size_t(vocab - 1)];
        pr.inflight_index = int32_t(inflight_ids.size());
        inflight_ids.push_back(id);
        output.push_back(id);
      }
      std::shuffle(output.begin(), output.end(), rng);
      SamplingParams sp;
      sp.repetition_penalty = pc.repetition;
      sp.frequency_penalty = pc.frequency;
      sp.presence_penalty = pc.presence;
      sp.max_tokens = 1000;
      pr.stop_begin = int32_t(stop_ids.size());
      if (pc.stops) {
        sp.min_tokens = int64_t(output.size()) + 1;
        sp.stop_token_ids = {ids[0], ids[size_t(vocab / 2)], int32_t(vocab), -1};
        stop_ids.insert(stop_ids.end(), sp.stop_token_ids.begin(), sp.stop_token_ids.end());
      }
      pr.stop_end = int32_t(stop_ids.size());
      prows.push_back(pr);
      Sampler(sp).apply_penalties(want.data() + lrow * vocab, vocab, prompt, output);
    }
    DeviceBuffer<float> d_logits(logits);
    DeviceBuffer<PenaltyRowParams> d_rows(prows);
    DeviceBuffer<PenaltyEntry> d_entries(entries);
    DeviceBuffer<int32_t> d_inflight(inflight_ids);
    DeviceBuffer<int32_t> d_stops(stop_ids);
    launch_apply_penalties(d_logits.get(), vocab, d_rows.get(), int64_t(prows.size()),
                           d_entries.get(), d_inflight.get(), d_stops.get(), nullptr);
    sync();
    const std::vector<float> got = d_logits.download();
    int bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const bool same = got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i]));
      if (!same && bad++ < 5)
        ADD_FAILURE() << "vocab " << vocab << " row " << i / size_t(vocab) << " token "
                      << i % size_t(vocab) << ": gpu " << got[i] << " cpu " << want[i] << " (was "
                      << logits[i] << ")";
    }
    EXPECT_EQ(bad, 0) << "vocab " << vocab;
    // The case grid changed something in every penalised row (no vacuous comparison).
    EXPECT_NE(got, logits);
  }
}

// --- timings (printed, not asserted) ---

TEST_F(CudaSamplingTest, LaunchTimings) {
  const int64_t vocab = 151936;
  const int64_t max_rows = 256;
  const std::vector<float> l = awkward_logits(max_rows, vocab, 3);
  DeviceBuffer<float> d_logits(l);
  DeviceBuffer<int32_t> d_out(static_cast<size_t>(max_rows));
  cudaEvent_t start, stop;
  ATOM_CUDA_CHECK(cudaEventCreate(&start));
  ATOM_CUDA_CHECK(cudaEventCreate(&stop));
  struct Mode {
    const char* name;
    float temperature;
    int32_t top_k;
    float top_p;
    float min_p;
  };
  for (const Mode& mode :
       {Mode{"greedy", 0.0f, -1, 1.0f, 0.0f}, Mode{"T=1", 1.0f, -1, 1.0f, 0.0f},
        Mode{"min_p=0.05", 1.0f, -1, 1.0f, 0.05f}, Mode{"top_k=50", 1.0f, 50, 1.0f, 0.0f},
        Mode{"top_k=2000", 1.0f, 2000, 1.0f, 0.0f}, Mode{"top_p=0.9", 1.0f, -1, 0.9f, 0.0f},
        Mode{"top_k=50,top_p=0.9", 1.0f, 50, 0.9f, 0.0f},
        Mode{"T=0.6,top_k=20,top_p=0.95", 0.6f, 20, 0.95f, 0.0f}}) {
    for (int64_t rows : {1, 64, 256}) {
      std::vector<SampleRowParams> params;
      for (int64_t r = 0; r < rows; ++r)
        params.push_back(row_params(mode.temperature, mode.top_k, mode.top_p, mode.min_p, 1, r));
      DeviceBuffer<SampleRowParams> d_params(params);
      std::vector<float> ms;
      for (int it = 0; it < 25; ++it) {
        ATOM_CUDA_CHECK(cudaEventRecord(start));
        launch_sample(d_logits.get(), rows, vocab, d_params.get(), d_out.get(), nullptr);
        ATOM_CUDA_CHECK(cudaEventRecord(stop));
        ATOM_CUDA_CHECK(cudaEventSynchronize(stop));
        float t = 0;
        ATOM_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
        if (it >= 5) ms.push_back(t);  // after warm-up
      }
      std::sort(ms.begin(), ms.end());
      std::printf("[sampling timing] vocab %lld rows %3lld %-26s median %7.1f us\n",
                  (long long)vocab, (long long)rows, mode.name, 1000.0 * ms[ms.size() / 2]);
    }
  }
  ATOM_CUDA_CHECK(cudaEventDestroy(start));
  ATOM_CUDA_CHECK(cudaEventDestroy(stop));
}

}  // namespace
}  // namespace atom::cuda
