// Tensor parallelism on CUDA (SPEC 4.1): the NCCL communicator's collectives against host sums;
// the two TP kernels (vocabulary-shard embedding, merge of the LM head's shards) against host
// loops; and the CUDA runner split over 2 and 4 GPUs against the same runner on one GPU, on tiny
// random-weight Llama and Qwen3 models whose shapes exercise the awkward cases (fewer KV heads
// than ranks, so KV heads are replicated; a vocabulary that no rank count divides, so it is
// padded): logits of prefill and decode steps, eager and from CUDA graphs; greedy tokens over 32
// steps; the same sampled ids on every rank; one KV block count for all ranks; clear errors.
// Multi-GPU tests skip (with the reason) when fewer GPUs are visible or the build has no NCCL.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "atom/backends/cuda/nccl_comm.h"
#include "atom/core/dtype.h"
#include "atom/core/error.h"
#include "atom/models/tp_layout.h"
#include "atom/runner/cuda/cuda_model_runner.h"
#include "atom/runner/cuda/tp_kernels.h"
#include "atom/runner/model_runner.h"
#include "atom/runner/sampler.h"
#include "cuda_test_util.h"
#include "tiny_decoder.h"

namespace atom {
namespace {

using cuda::test::as_bf16;
using cuda::test::cpu_last_logits;
using cuda::test::DeviceBuffer;
using cuda::test::gpu_visible;
using cuda::test::make_tiny;
using cuda::test::random_tokens;
using cuda::test::row_rms;
using cuda::test::TinyShape;
using cuda::test::top2_gap;

// --- helpers ---

// fn(rank) on one thread per rank, each with device `rank` current; rethrows the first error.
void on_ranks(int n, const std::function<void(int)>& fn) {
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        ATOM_CUDA_CHECK(cudaSetDevice(r));
        fn(r);
      } catch (...) {
        errors[size_t(r)] = std::current_exception();
      }
    });
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

// The message of the atom::Error `fn` throws, with its code; fails the test if it throws none.
std::pair<ErrorCode, std::string> error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return {e.code(), e.what()};
  }
  ADD_FAILURE() << "no atom::Error thrown";
  return {ErrorCode::kInternal, ""};
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// --- the TP kernels, on one GPU ---

// Rows of the shard [first, first + rows) come from the table; every other id (below, above,
// negative, in the padding of the last shard) gives zeros. Both the 16-byte path (hidden % 8 == 0)
// and the scalar path (hidden 36) are checked bit for bit.
TEST(TpKernels, VocabShardEmbeddingTakesItsRowsAndZerosTheRest) {
  if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  struct Case {
    int64_t first, rows, hidden;
  };
  for (const Case c : {Case{0, 64, 256}, Case{64, 64, 256}, Case{128, 192, 36}, Case{5, 1, 8}}) {
    std::vector<float> table_f = cuda::test::random_floats(size_t(c.rows * c.hidden), 7, -2, 2);
    const std::vector<uint16_t> table = cuda::test::to_bf16(table_f);
    std::vector<int32_t> ids = {int32_t(c.first),          int32_t(c.first + c.rows - 1), -1,
                                int32_t(c.first + c.rows), int32_t(c.first) - 1,          100000};
    for (int32_t i = 0; i < 31; ++i) ids.push_back(int32_t((i * 37) % (c.first + c.rows + 50)));
    const int64_t n = int64_t(ids.size());
    DeviceBuffer<uint16_t> d_table(table);
    DeviceBuffer<int32_t> d_ids(ids);
    DeviceBuffer<uint16_t> d_out(size_t(n * c.hidden));
    d_out.fill_bytes(0xff);
    cuda::launch_vocab_shard_embedding(as_bf16(d_table), c.first, c.rows, c.hidden, d_ids.get(),
                                       as_bf16(d_out), n, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<uint16_t> out = d_out.download();
    for (int64_t t = 0; t < n; ++t) {
      const int64_t row = int64_t(ids[size_t(t)]) - c.first;
      const bool mine = row >= 0 && row < c.rows;
      for (int64_t h = 0; h < c.hidden; ++h) {
        const uint16_t want = mine ? table[size_t(row * c.hidden + h)] : uint16_t(0);
        ASSERT_EQ(out[size_t(t * c.hidden + h)], want)
            << "shard [" << c.first << ", +" << c.rows << ") hidden " << c.hidden << " id "
            << ids[size_t(t)] << " element " << h;
      }
    }
  }
  EXPECT_THROW(cuda::launch_vocab_shard_embedding(nullptr, 0, 0, 8, nullptr, nullptr, 1, nullptr),
               Error);
}

// [tp, n, rows] shards become dense [n, vocab] rows, the padding columns of the last shards cut.
TEST(TpKernels, MergeVocabShardsDropsThePadding) {
  if (!gpu_visible()) GTEST_SKIP() << "no CUDA device visible";
  struct Case {
    int64_t tp, n, rows, vocab;
  };
  for (const Case c : {Case{2, 5, 320, 501}, Case{4, 3, 128, 509}, Case{3, 1, 64, 130},
                       Case{1, 7, 64, 64}, Case{4, 2, 64, 193}}) {
    const std::vector<float> shards =
        cuda::test::random_floats(size_t(c.tp * c.n * c.rows), 11, -5, 5);
    DeviceBuffer<float> d_shards(shards);
    DeviceBuffer<float> d_out(size_t(c.n * c.vocab));
    d_out.fill_bytes(0xff);
    cuda::launch_merge_vocab_shards(d_shards.get(), c.tp, c.n, c.rows, c.vocab, d_out.get(),
                                    nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> out = d_out.download();
    for (int64_t r = 0; r < c.n; ++r)
      for (int64_t v = 0; v < c.vocab; ++v) {
        const float want = shards[size_t(((v / c.rows) * c.n + r) * c.rows + v % c.rows)];
        ASSERT_EQ(out[size_t(r * c.vocab + v)], want)
            << "tp " << c.tp << " row " << r << " col " << v;
      }
  }
  // A vocabulary wider than the shards hold is refused.
  EXPECT_THROW(cuda::launch_merge_vocab_shards(nullptr, 2, 1, 64, 129, nullptr, nullptr), Error);
}

// --- the communicator ---

int gpus_for_comm() { return std::min(cuda_device_count(), 4); }

TEST(NcclComm, RejectsBadArgumentsOrSaysThereIsNoNccl) {
  const std::vector<uint8_t> id(128, 0);
  if (!cuda::nccl_available()) {
    const auto [code, msg] = error_of([&] { cuda::NcclComm c(id, 2, 0); });
    EXPECT_EQ(code, ErrorCode::kUnsupported);
    EXPECT_TRUE(contains(msg, "NCCL")) << msg;
    return;
  }
  EXPECT_EQ(error_of([&] { cuda::NcclComm c(id, 2, 2); }).first, ErrorCode::kInvalidArgument);
  EXPECT_EQ(error_of([&] { cuda::NcclComm c(id, 0, 0); }).first, ErrorCode::kInvalidArgument);
  const std::vector<uint8_t> short_id(16, 0);
  const auto [code, msg] = error_of([&] { cuda::NcclComm c(short_id, 2, 0); });
  EXPECT_EQ(code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(contains(msg, "16 bytes")) << msg;
}

// Every collective at awkward sizes, on 2 to 4 GPUs, against the host: exact where the sums are
// exact (small integers in bf16 and f32; gathers and broadcasts are copies), and within NCCL's
// rounding for random bf16 values.
TEST(NcclComm, CollectivesMatchTheHost) {
  const int n = gpus_for_comm();
  if (n < 2) GTEST_SKIP() << "needs 2 GPUs, " << cuda_device_count() << " visible";
  if (!cuda::nccl_available()) GTEST_SKIP() << "this build has no NCCL";
  const std::vector<uint8_t> id = cuda::nccl_unique_id();
  ASSERT_EQ(id.size(), 128u);
  const std::vector<size_t> sizes = {1, 17, 4099, (size_t(1) << 20) + 3};
  // Rank r's value i: exact integers (their bf16 sums stay exact below 256), and random values.
  auto int_value = [](int r, size_t i) { return float((r + 1) * (int(i % 7) - 3)); };
  auto random_values = [](int r, size_t count) {
    return cuda::test::random_floats(count, 100 + uint32_t(r), -1, 1);
  };
  std::vector<std::string> failures(static_cast<size_t>(n));
  on_ranks(n, [&](int r) {
    cuda::NcclComm comm(id, n, r);
    EXPECT_EQ(comm.rank(), r);
    EXPECT_EQ(comm.size(), n);
    cudaStream_t stream = nullptr;
    ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::string& fail = failures[size_t(r)];
    for (const size_t count : sizes) {
      // bf16 sums of integers: exact.
      std::vector<float> mine(count);
      for (size_t i = 0; i < count; ++i) mine[i] = int_value(r, i);
      DeviceBuffer<uint16_t> b(cuda::test::to_bf16(mine));
      // Uploads and fills run on the legacy stream, which `stream` does not wait for.
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      comm.all_reduce_sum(b.get(), count, DType::kBF16, stream);
      ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
      const std::vector<uint16_t> got = b.download();
      for (size_t i = 0; i < count && fail.empty(); ++i) {
        float want = 0;
        for (int k = 0; k < n; ++k) want += int_value(k, i);
        if (bf16_to_f32(got[i]) != want)
          fail = fmt::format("bf16 all-reduce of {}: element {} is {}, want {}", count, i,
                             bf16_to_f32(got[i]), want);
      }
      // f32 sums of integers: exact.
      DeviceBuffer<float> f(mine);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      comm.all_reduce_sum(f.get(), count, DType::kF32, stream);
      ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
      const std::vector<float> fgot = f.download();
      for (size_t i = 0; i < count && fail.empty(); ++i) {
        float want = 0;
        for (int k = 0; k < n; ++k) want += int_value(k, i);
        if (fgot[i] != want)
          fail = fmt::format("f32 all-reduce of {}: element {} is {}, want {}", count, i, fgot[i],
                             want);
      }
      // bf16 sums of random values: each of NCCL's n - 1 additions rounds to bf16 (2^-9
      // relative), so the error is at most n * 2^-8 of the sum of magnitudes.
      const std::vector<uint16_t> rnd = cuda::test::to_bf16(random_values(r, count));
      DeviceBuffer<uint16_t> rb(rnd);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      comm.all_reduce_sum(rb.get(), count, DType::kBF16, stream);
      ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
      const std::vector<uint16_t> rgot = rb.download();
      std::vector<std::vector<uint16_t>> all;
      for (int k = 0; k < n; ++k) all.push_back(cuda::test::to_bf16(random_values(k, count)));
      double worst = 0;
      for (size_t i = 0; i < count; ++i) {
        double want = 0, mag = 0;
        for (int k = 0; k < n; ++k) {
          want += bf16_to_f32(all[size_t(k)][i]);
          mag += std::abs(bf16_to_f32(all[size_t(k)][i]));
        }
        const double err = std::abs(double(bf16_to_f32(rgot[i])) - want);
        worst = std::max(worst, err / (mag + 1e-30));
        if (err > n * std::ldexp(1.0, -8) * mag + 1e-30 && fail.empty())
          fail = fmt::format(
              "bf16 all-reduce of random values, {}: element {} off by {} "
              "(sum of magnitudes {})",
              count, i, err, mag);
      }
      // All-gather, out of place (f32) and in place (bf16): copies, exact.
      DeviceBuffer<float> send(mine);
      DeviceBuffer<float> recv(count * size_t(n));
      recv.fill_bytes(0xff);
      DeviceBuffer<uint16_t> inplace(count * size_t(n));
      inplace.fill_bytes(0xff);
      ATOM_CUDA_CHECK(cudaMemcpy(inplace.get() + size_t(r) * count, rnd.data(),
                                 count * sizeof(uint16_t), cudaMemcpyHostToDevice));
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      comm.all_gather(send.get(), recv.get(), count, DType::kF32, stream);
      comm.all_gather(inplace.get() + size_t(r) * count, inplace.get(), count, DType::kBF16,
                      stream);
      ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
      const std::vector<float> gathered = recv.download();
      const std::vector<uint16_t> gathered16 = inplace.download();
      for (int k = 0; k < n && fail.empty(); ++k)
        for (size_t i = 0; i < count && fail.empty(); ++i) {
          if (gathered[size_t(k) * count + i] != int_value(k, i))
            fail = fmt::format("f32 all-gather of {}: rank {} element {}", count, k, i);
          else if (gathered16[size_t(k) * count + i] != all[size_t(k)][i])
            fail = fmt::format("in-place bf16 all-gather of {}: rank {} element {}", count, k, i);
        }
      // Broadcast from the last rank (int32): a copy.
      std::vector<int32_t> ints(count);
      for (size_t i = 0; i < count; ++i) ints[i] = int32_t(i * 2654435761u) ^ (r << 20);
      DeviceBuffer<int32_t> bc(ints);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      comm.broadcast(bc.get(), count, DType::kI32, n - 1, stream);
      ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
      const std::vector<int32_t> bgot = bc.download();
      for (size_t i = 0; i < count && fail.empty(); ++i)
        if (bgot[i] != (int32_t(i * 2654435761u) ^ ((n - 1) << 20)))
          fail = fmt::format("int32 broadcast of {}: element {}", count, i);
      if (r == 0)
        std::printf("[nccl %d ranks] %zu elements: bf16 random sums worst %.2e x magnitude\n", n,
                    count, worst);
    }
    EXPECT_THROW(comm.broadcast(nullptr, 1, DType::kI32, n, stream), Error);
    ATOM_CUDA_CHECK(cudaStreamDestroy(stream));
  });
  for (int r = 0; r < n; ++r)
    EXPECT_TRUE(failures[size_t(r)].empty()) << "rank " << r << ": " << failures[size_t(r)];
}

// An all-reduce captured in a CUDA graph (as the runner's decode graphs hold them) sums whatever
// the buffer holds at each replay.
TEST(NcclComm, AllReduceReplaysFromACudaGraph) {
  const int n = gpus_for_comm();
  if (n < 2) GTEST_SKIP() << "needs 2 GPUs, " << cuda_device_count() << " visible";
  if (!cuda::nccl_available()) GTEST_SKIP() << "this build has no NCCL";
  const std::vector<uint8_t> id = cuda::nccl_unique_id();
  constexpr size_t kCount = 4099;
  std::vector<std::string> failures(static_cast<size_t>(n));
  on_ranks(n, [&](int r) {
    cuda::NcclComm comm(id, n, r);
    cudaStream_t stream = nullptr;
    ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    DeviceBuffer<uint16_t> buf(kCount);
    // One eager call first, as the runner warms up before it captures.
    buf.upload(std::vector<uint16_t>(kCount, f32_to_bf16(1.0f)));
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());  // the upload ran on the legacy stream
    comm.all_reduce_sum(buf.get(), kCount, DType::kBF16, stream);
    ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaGraph_t graph = nullptr;
    ATOM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    comm.all_reduce_sum(buf.get(), kCount, DType::kBF16, stream);
    ATOM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    ATOM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int replay = 0; replay < 3; ++replay) {
      std::vector<uint16_t> mine(kCount);
      for (size_t i = 0; i < kCount; ++i) mine[i] = f32_to_bf16(float((r + 1) * (replay + 1)));
      buf.upload(mine);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      ATOM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
      const float want = float(n * (n + 1) / 2 * (replay + 1));
      const std::vector<uint16_t> got = buf.download();
      for (size_t i = 0; i < kCount && failures[size_t(r)].empty(); ++i)
        if (bf16_to_f32(got[i]) != want)
          failures[size_t(r)] = fmt::format("replay {}: element {} is {}, want {}", replay, i,
                                            bf16_to_f32(got[i]), want);
    }
    ATOM_CUDA_CHECK(cudaGraphExecDestroy(exec));
    ATOM_CUDA_CHECK(cudaGraphDestroy(graph));
    ATOM_CUDA_CHECK(cudaStreamDestroy(stream));
  });
  for (int r = 0; r < n; ++r)
    EXPECT_TRUE(failures[size_t(r)].empty()) << "rank " << r << ": " << failures[size_t(r)];
}

// --- the runner over several GPUs ---

// The tolerance between tp ranks and one GPU, per logit, in units of the row's RMS. One GPU
// rounds the O and down projections' [T, H] outputs to bf16 once; with tp ranks each rank rounds
// its partial sum, and NCCL rounds again after each of its additions: a few more bf16 roundings
// (2^-9 relative) among the ~10 per layer that the GPU/CPU comparison already allows for. So the
// two differ by bf16 noise of the same size as GPU vs CPU (test_cuda_runner.cpp's 6%), while a
// wrong shard, a missing or doubled all-reduce, a lost bias or a misplaced vocabulary column
// moves logits by the size of the logits themselves.
constexpr double kTpTol = 0.06;
// Graph replay against eager steps of the same runner: the graphs' attention splits the keys for
// max_model_len instead of the step's longest context (as test_cuda_runner.cpp's 2%).
constexpr double kGraphTol = 0.02;

// Shapes with fewer KV heads than ranks (KV heads replicated) and a vocabulary that neither 2
// nor 4 divides (padded shards): Qwen3 with one KV head (tied embeddings, QKV bias, q/k norm) and
// Llama with two (split over 2 ranks, replicated over 4), vocabularies 501 and 509.
TinyShape tp_shape(bool qwen3) {
  TinyShape s;
  s.heads = 8;
  s.kv_heads = qwen3 ? 1 : 2;
  s.vocab = qwen3 ? 501 : 509;
  s.intermediate = 512;
  return s;
}

class TpRunner : public ::testing::TestWithParam<std::tuple<bool, int64_t>> {
 protected:
  void SetUp() override {
    qwen3_ = std::get<0>(GetParam());
    tp_ = std::get<1>(GetParam());
    const int visible = cuda_device_count();
    if (visible < tp_) GTEST_SKIP() << "needs " << tp_ << " GPUs, " << visible << " visible";
    if (!cuda::nccl_available()) GTEST_SKIP() << "this build has no NCCL";
    model_ = make_tiny(qwen3_, tp_shape(qwen3_));
    const ModelConfig& c = model_->config();
    // The shapes must exercise what they claim to.
    ASSERT_NE(c.vocab_size % tp_, 0);
    ASSERT_LE(c.num_key_value_heads, tp_);
  }
  CudaRunnerConfig config(int64_t tp, int64_t num_blocks, bool eager) const {
    CudaRunnerConfig rc;
    rc.num_blocks = num_blocks;
    rc.block_size = 16;
    rc.max_num_batched_tokens = 512;
    rc.max_num_seqs = 16;
    rc.max_model_len = 512;
    rc.enforce_eager = eager;
    rc.cudagraph_capture_sizes = {1, 2, 4, 8};
    rc.tp_size = tp;
    rc.device = 0;
    return rc;
  }
  const char* name() const { return qwen3_ ? "qwen3" : "llama"; }
  bool qwen3_ = false;
  int64_t tp_ = 2;
  std::unique_ptr<Model> model_;
};

// Three sequences prefilled together (lengths across block boundaries, scattered block tables),
// then decode steps fed with one GPU's greedy tokens: every logit of every step of the tp runner,
// eager and replayed from graphs, within tolerance of one GPU's; the graphs actually replayed.
TEST_P(TpRunner, LogitsMatchOneGpuEagerAndGraph) {
  const int64_t vocab = model_->config().vocab_size, kBlocks = 48;
  CudaModelRunner one(*model_, config(1, kBlocks, true));
  CudaModelRunner eager(*model_, config(tp_, kBlocks, true));
  CudaModelRunner graphs(*model_, config(tp_, kBlocks, false));
  EXPECT_EQ(eager.tp_size(), tp_);
  EXPECT_EQ(one.tp_size(), 1);
  EXPECT_EQ(graphs.graph_sizes(), (std::vector<int64_t>{1, 2, 4, 8}));
  const std::vector<size_t> lens = {37, 5, 70};
  std::vector<std::vector<int32_t>> tokens, tables;
  for (size_t i = 0; i < lens.size(); ++i) {
    tokens.push_back(random_tokens(lens[i], vocab, 10 + i));
    std::vector<int32_t> t;
    for (int32_t j = 0; j < 12; ++j) t.push_back(int32_t(i) + 3 * (11 - j));  // scattered
    tables.push_back(t);
  }
  double worst_eager = 0, worst_graph = 0, worst_graph_vs_eager = 0;
  constexpr int kSteps = 7;
  for (int step = 0; step < kSteps; ++step) {
    std::vector<StepSeq> seqs;
    for (size_t i = 0; i < lens.size(); ++i) {
      const int64_t n = int64_t(tokens[i].size());
      const int64_t start = step == 0 ? 0 : n - 1;
      seqs.push_back(
          StepSeq{int64_t(i), tokens[i], int64_t(lens[i]), start, n - start, tables[i], true});
    }
    const std::vector<float> ref = one.forward_logits(seqs);
    const std::vector<float> e = eager.forward_logits(seqs);
    const std::vector<float> g = graphs.forward_logits(seqs);
    ASSERT_EQ(ref.size(), lens.size() * size_t(vocab));
    ASSERT_EQ(e.size(), ref.size());
    ASSERT_EQ(g.size(), ref.size());
    for (size_t i = 0; i < lens.size(); ++i) {
      const size_t at = i * size_t(vocab);
      const double rms = row_rms(ref.data() + at, vocab);
      ASSERT_GT(rms, 0.1) << "degenerate logits";
      for (int64_t v = 0; v < vocab; ++v) {
        ASSERT_TRUE(std::isfinite(e[at + size_t(v)]) && std::isfinite(g[at + size_t(v)]))
            << "step " << step << " seq " << i << " logit " << v;
        const size_t k = at + size_t(v);
        worst_eager = std::max(worst_eager, std::abs(double(e[k]) - ref[k]) / rms);
        worst_graph = std::max(worst_graph, std::abs(double(g[k]) - ref[k]) / rms);
        worst_graph_vs_eager = std::max(worst_graph_vs_eager, std::abs(double(g[k]) - e[k]) / rms);
      }
      tokens[i].push_back(argmax(ref.data() + at, vocab));
    }
  }
  EXPECT_EQ(graphs.num_graph_steps(), kSteps - 1) << "every decode step replays a graph";
  EXPECT_EQ(eager.num_graph_steps(), 0);
  std::printf(
      "[tp %lld %s] worst |tp - 1 GPU| x row RMS: eager %.4f, graphs %.4f (tol %.2f); "
      "graphs vs eager %.4f (tol %.2f)\n",
      (long long)tp_, name(), worst_eager, worst_graph, kTpTol, worst_graph_vs_eager, kGraphTol);
  EXPECT_LE(worst_eager, kTpTol);
  EXPECT_LE(worst_graph, kTpTol);
  EXPECT_LE(worst_graph_vs_eager, kGraphTol);
}

// Greedy decoding of four sequences for 32 steps through execute() (graphs for the decode
// steps) on tp ranks and on one GPU: the same tokens, except after a first difference where the
// CPU oracle's top two logits are a near-tie; every rank holds the same ids at every step; and
// the deferred path (submit before collect, placeholders gathered on the device) gives
// execute()'s tokens exactly.
TEST_P(TpRunner, GreedyTokensMatchOneGpuOver32Steps) {
  const int64_t vocab = model_->config().vocab_size, kBlocks = 64;
  constexpr int kSteps = 32;
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  const std::vector<size_t> lens = {12, 29, 3, 50};
  std::vector<std::vector<int32_t>> tables(lens.size());
  for (size_t i = 0; i < lens.size(); ++i)
    for (int32_t j = 0; j < 6; ++j) tables[i].push_back(int32_t(j * lens.size() + i));
  auto prompts = [&] {
    std::vector<std::vector<int32_t>> p;
    for (size_t i = 0; i < lens.size(); ++i) p.push_back(random_tokens(lens[i], vocab, 900 + i));
    return p;
  };
  auto run_execute = [&](CudaModelRunner& r) {
    std::vector<std::vector<int32_t>> tok = prompts();
    for (int step = 0; step <= kSteps; ++step) {
      std::vector<StepSeq> seqs;
      for (size_t i = 0; i < lens.size(); ++i) {
        const int64_t n = int64_t(tok[i].size()), start = step == 0 ? 0 : n - 1;
        seqs.push_back(StepSeq{int64_t(i), tok[i], int64_t(lens[i]), start, n - start, tables[i],
                               true, &greedy});
      }
      const std::vector<int32_t> ids = r.execute(seqs);
      EXPECT_EQ(ids.size(), lens.size());
      if (r.tp_size() > 1) {
        const std::vector<std::vector<int32_t>> by_rank = r.last_ids_by_rank();
        EXPECT_EQ(by_rank.size(), size_t(r.tp_size()));
        for (size_t k = 0; k < by_rank.size(); ++k)
          EXPECT_EQ(by_rank[k], ids) << "rank " << k << " step " << step;
      }
      for (size_t i = 0; i < lens.size(); ++i) tok[i].push_back(ids[i]);
    }
    return tok;
  };
  CudaModelRunner one(*model_, config(1, kBlocks, false));
  const std::vector<std::vector<int32_t>> want = run_execute(one);
  CudaModelRunner tp(*model_, config(tp_, kBlocks, false));
  const std::vector<std::vector<int32_t>> got = run_execute(tp);
  EXPECT_GE(tp.num_graph_steps(), kSteps) << "decode steps should replay graphs";

  int64_t matched = 0, total = 0, near_ties = 0;
  for (size_t i = 0; i < lens.size(); ++i) {
    ASSERT_EQ(got[i].size(), want[i].size());
    size_t k = lens[i];
    while (k < want[i].size() && got[i][k] == want[i][k]) ++k;
    matched += int64_t(k - lens[i]);
    total += int64_t(want[i].size() - lens[i]);
    if (k == want[i].size()) continue;
    // First difference: accepted only at a near-tie of the CPU oracle's top two logits there.
    const std::vector<int32_t> ctx(want[i].begin(), want[i].begin() + ptrdiff_t(k));
    const std::vector<float> logits = cpu_last_logits(*model_, ctx);
    const double gap = top2_gap(logits.data(), vocab);
    const double tol = 2 * kTpTol * row_rms(logits.data(), vocab);
    EXPECT_LT(gap, tol) << "sequence " << i << " differs at output token " << k - lens[i]
                        << " without a near-tie (top-2 gap " << gap << ")";
    ++near_ties;
  }
  std::printf(
      "[tp %lld %s] greedy tokens equal to one GPU's: %lld of %lld (%lld sequences "
      "stopped at a near-tie)\n",
      (long long)tp_, name(), (long long)matched, (long long)total, (long long)near_ties);
  EXPECT_GE(matched, total / 2) << "most tokens must match before any near-tie";

  // Deferred output on the same tp runner's model: step N + 1 submitted before N is collected.
  CudaModelRunner deferred(*model_, config(tp_, kBlocks, false));
  std::vector<std::vector<int32_t>> host = prompts();
  auto submit = [&](int step) {
    std::vector<StepSeq> seqs;
    for (size_t i = 0; i < lens.size(); ++i) {
      const int64_t n = int64_t(host[i].size()), start = step == 0 ? 0 : n - 1;
      seqs.push_back(StepSeq{int64_t(i), host[i], int64_t(lens[i]), start, n - start, tables[i],
                             true, &greedy, step > 0});
    }
    deferred.submit(seqs);
    for (size_t i = 0; i < lens.size(); ++i) host[i].push_back(-1);  // placeholder
  };
  auto collect = [&](int step) {
    const std::vector<int32_t> ids = deferred.collect();
    ASSERT_EQ(ids.size(), lens.size());
    for (const std::vector<int32_t>& rank_ids : deferred.last_ids_by_rank())
      EXPECT_EQ(rank_ids, ids) << "step " << step;
    for (size_t i = 0; i < lens.size(); ++i) host[i][lens[i] + size_t(step)] = ids[i];
  };
  submit(0);
  for (int step = 1; step <= kSteps; ++step) {
    submit(step);
    EXPECT_EQ(deferred.num_in_flight(), 2);
    collect(step - 1);
  }
  collect(kSteps);
  EXPECT_EQ(deferred.num_in_flight(), 0);
  for (size_t i = 0; i < lens.size(); ++i) EXPECT_EQ(host[i], got[i]) << "sequence " << i;
}

// Seeded, penalised sampling (the GPU sampler and the penalty kernel on every rank): every rank
// draws the same ids at every step, a second runner reproduces them, and they follow one GPU's
// draws until bf16 noise first moves a draw (as the CPU/GPU comparison of test_cuda_runner.cpp).
TEST_P(TpRunner, SampledIdsAgreeOnEveryRankAndReproduce) {
  const int64_t vocab = model_->config().vocab_size, kBlocks = 48;
  constexpr int kSteps = 16;
  std::vector<SamplingParams> params(5);
  for (size_t i = 0; i < params.size(); ++i) {
    SamplingParams& p = params[i];
    p.temperature = 1.2f + 0.1f * float(i);
    p.top_k = i % 2 ? 40 : -1;
    p.top_p = i % 3 ? 0.9f : 1.0f;
    p.seed = 77 + i;
    if (i == 3) {
      p.repetition_penalty = 1.4f;
      p.frequency_penalty = 0.6f;
      p.presence_penalty = 0.3f;
    }
  }
  const std::vector<size_t> lens = {8, 21, 40, 3, 17};
  std::vector<std::vector<int32_t>> tables(lens.size());
  for (size_t i = 0; i < lens.size(); ++i)
    for (int32_t j = 0; j < 4; ++j) tables[i].push_back(int32_t(j * lens.size() + i));
  auto run = [&](int64_t tp) {
    CudaModelRunner r(*model_, config(tp, kBlocks, false));
    std::vector<std::vector<int32_t>> tok;
    for (size_t i = 0; i < lens.size(); ++i) tok.push_back(random_tokens(lens[i], vocab, 40 + i));
    auto submit = [&](int step) {
      std::vector<StepSeq> seqs;
      for (size_t i = 0; i < lens.size(); ++i) {
        const int64_t n = int64_t(tok[i].size()), start = step == 0 ? 0 : n - 1;
        seqs.push_back(StepSeq{int64_t(i), tok[i], int64_t(lens[i]), start, n - start, tables[i],
                               true, &params[i], step > 0});
      }
      r.submit(seqs);
      for (size_t i = 0; i < lens.size(); ++i) tok[i].push_back(-1);
    };
    auto collect = [&](int step) {
      const std::vector<int32_t> ids = r.collect();
      EXPECT_EQ(ids.size(), lens.size());
      if (tp > 1) {
        const std::vector<std::vector<int32_t>> by_rank = r.last_ids_by_rank();
        EXPECT_EQ(by_rank.size(), size_t(tp));
        for (size_t k = 0; k < by_rank.size(); ++k)
          EXPECT_EQ(by_rank[k], ids) << "rank " << k << " step " << step;
      }
      for (size_t i = 0; i < lens.size(); ++i) tok[i][lens[i] + size_t(step)] = ids[i];
    };
    submit(0);
    for (int step = 1; step < kSteps; ++step) {
      submit(step);
      collect(step - 1);
    }
    collect(kSteps - 1);
    return tok;
  };
  const auto first = run(tp_);
  EXPECT_EQ(run(tp_), first) << "seeded sampling on tp ranks is not reproducible";
  const auto one = run(1);
  int64_t same = 0, total = 0;
  for (size_t i = 0; i < lens.size(); ++i) {
    size_t k = lens[i];
    while (k < one[i].size() && one[i][k] == first[i][k]) ++k;
    same += int64_t(k - lens[i]);
    total += int64_t(one[i].size() - lens[i]);
  }
  std::printf(
      "[tp %lld %s] seeded samples equal to one GPU's before the first difference: %lld "
      "of %lld\n",
      (long long)tp_, name(), (long long)same, (long long)total);
  EXPECT_GE(same, total / 5) << "tp ranks and one GPU implement one sampling definition";
}

// The KV pool: sized from each rank's memory, every rank holds the least of them, which is what
// the engine sees; every rank's pool fits its budget; a given block count is used on every rank;
// a budget no rank can meet is one clear error from the group, not a hang.
TEST_P(TpRunner, KvBlocksAreOneCountForAllRanks) {
  CudaRunnerConfig rc = config(tp_, 0, false);
  rc.gpu_memory_utilization = 0.05;
  {
    const CudaModelRunner r(*model_, rc);
    const std::vector<int64_t> per_rank = r.kv_blocks_by_rank();
    ASSERT_EQ(per_rank.size(), size_t(tp_));
    EXPECT_EQ(r.num_blocks(), *std::min_element(per_rank.begin(), per_rank.end()));
    EXPECT_GT(r.num_blocks(), 0);
    const ModelConfig& c = model_->config();
    for (int64_t k = 0; k < tp_; ++k) {
      // Each rank's KV block holds its own KV heads only (one when they are replicated).
      const TpLayout l = make_tp_layout(c, tp_, k);
      const double block_bytes =
          2.0 * double(c.num_hidden_layers * 16 * l.num_kv_heads * c.head_dim) * 2.0;
      size_t free_bytes = 0, total = 0;
      ATOM_CUDA_CHECK(cudaSetDevice(int(k)));
      ATOM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
      EXPECT_LE(double(per_rank[size_t(k)]) * block_bytes, 0.05 * double(total)) << "rank " << k;
    }
    ATOM_CUDA_CHECK(cudaSetDevice(0));
    std::string list;
    for (const int64_t b : per_rank) list += " " + std::to_string(b);
    std::printf("[tp %lld %s] KV blocks each rank affords:%s; pool: %lld\n", (long long)tp_, name(),
                list.c_str(), (long long)r.num_blocks());
  }
  {
    const CudaModelRunner r(*model_, config(tp_, 40, true));
    EXPECT_EQ(r.num_blocks(), 40);
    EXPECT_EQ(r.kv_blocks_by_rank(), std::vector<int64_t>(size_t(tp_), 40));
  }
  rc.gpu_memory_utilization = 1e-4;
  const auto [code, msg] = error_of([&] { CudaModelRunner r(*model_, rc); });
  EXPECT_EQ(code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(contains(msg, "KV cache")) << msg;
  // The failed group left the devices usable: a new one starts and runs.
  CudaModelRunner again(*model_, config(tp_, 16, true));
  const std::vector<int32_t> prompt = random_tokens(9, model_->config().vocab_size, 3);
  const std::vector<int32_t> table = {0};
  const StepSeq s{0, prompt, 9, 0, 9, table, true};
  EXPECT_EQ(again.forward_logits(std::span<const StepSeq>(&s, 1)).size(),
            size_t(model_->config().vocab_size));
}

INSTANTIATE_TEST_SUITE_P(Models, TpRunner,
                         ::testing::Combine(::testing::Values(false, true),
                                            ::testing::Values(int64_t(2), int64_t(4))),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "Qwen3" : "Llama") + "_tp" +
                                  std::to_string(std::get<1>(info.param));
                         });

// --- errors (no GPU needed: they come before any device is touched) ---

// More ranks than visible GPUs: an error naming both numbers, also from a base device (a DP
// replica's) that leaves too few above it.
TEST(TpRunnerErrors, MoreGpusThanVisibleNamesBothNumbers) {
  const int visible = cuda_device_count();
  if (visible >= 16) GTEST_SKIP() << "the model splits over at most 16 ranks";
  int64_t tp = 2;
  while (tp <= visible) tp *= 2;
  TinyShape shape;
  shape.heads = 16;
  shape.kv_heads = 1;
  const auto model = make_tiny(false, shape);
  CudaRunnerConfig rc;
  rc.tp_size = tp;
  rc.num_blocks = 16;
  const auto [code, msg] = error_of([&] { CudaModelRunner r(*model, rc); });
  EXPECT_EQ(code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(contains(msg, "--tensor-parallel-size " + std::to_string(tp))) << msg;
  EXPECT_TRUE(contains(msg, std::to_string(visible) + " CUDA devices are visible")) << msg;
  if (visible >= 1) {
    rc.tp_size = 2;
    rc.device = visible - 1;  // devices visible - 1 and visible: one too many
    const auto [code2, msg2] = error_of([&] { CudaModelRunner r(*model, rc); });
    EXPECT_EQ(code2, ErrorCode::kInvalidArgument);
    EXPECT_TRUE(
        contains(msg2, "devices " + std::to_string(visible - 1) + " to " + std::to_string(visible)))
        << msg2;
  }
}

TEST(TpRunnerErrors, ShapesThatDoNotSplitAreNamed) {
  TinyShape shape;
  shape.heads = 8;
  shape.kv_heads = 2;
  const auto model = make_tiny(true, shape);
  CudaRunnerConfig rc;
  rc.num_blocks = 16;
  rc.tp_size = 3;  // 8 heads over 3 ranks
  auto [code, msg] = error_of([&] { CudaModelRunner r(*model, rc); });
  EXPECT_EQ(code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(contains(msg, "8 attention heads")) << msg;
  shape.heads = 12;
  shape.kv_heads = 4;  // 12 heads split over 3, 4 kv heads do not
  const auto model2 = make_tiny(true, shape);
  std::tie(code, msg) = error_of([&] { CudaModelRunner r(*model2, rc); });
  EXPECT_EQ(code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(contains(msg, "4 key-value heads")) << msg;
  rc.tp_size = 0;
  std::tie(code, msg) = error_of([&] { CudaModelRunner r(*model, rc); });
  EXPECT_EQ(code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(contains(msg, "--tensor-parallel-size")) << msg;
}

// A build without NCCL refuses tp > 1 at start-up, naming NCCL (on a host with the GPUs, so that
// the device check passes first).
TEST(TpRunnerErrors, WithoutNcclTensorParallelismIsRefused) {
  if (cuda::nccl_available()) GTEST_SKIP() << "this build has NCCL";
  if (cuda_device_count() < 2)
    GTEST_SKIP() << "needs 2 GPUs, " << cuda_device_count() << " visible";
  const auto model = make_tiny(false, tp_shape(false));
  CudaRunnerConfig rc;
  rc.num_blocks = 16;
  rc.tp_size = 2;
  const auto [code, msg] = error_of([&] { CudaModelRunner r(*model, rc); });
  EXPECT_EQ(code, ErrorCode::kUnsupported);
  EXPECT_TRUE(contains(msg, "NCCL")) << msg;
}

}  // namespace
}  // namespace atom
