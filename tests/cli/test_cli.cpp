// End-to-end tests of the `atom` binary: real text from the default model, the tokenizer and
// chat-template commands, and clear errors (message + non-zero exit, never a crash) on bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "atom/core/envs.h"
#include "atom/io/model_path.h"
#include "common/gguf_writer.h"

namespace atom {
namespace {

namespace fs = std::filesystem;

struct RunResult {
  int exit_code = -1;
  bool crashed = false;  // killed by a signal
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string tmp(const std::string& name) {
  return (fs::temp_directory_path() / ("atom_cli_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

// Runs `atom <args>` with `input` on stdin, after `env` assignments ("NAME=value"). Arguments
// are single-quoted for the shell.
RunResult atom_run(const std::vector<std::string>& args, const std::string& input = "",
                   const std::vector<std::string>& env = {}) {
  const std::string in = tmp("in"), out = tmp("out"), err = tmp("err");
  std::ofstream(in, std::ios::binary) << input;
  std::string cmd;
  for (const std::string& e : env) cmd += "'" + e + "' ";
  cmd = (env.empty() ? std::string() : "env " + cmd) + "'" + ATOM_BINARY + "'";
  for (const std::string& a : args) {
    std::string q;
    for (char c : a) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
    cmd += " '" + q + "'";
  }
  cmd += " < '" + in + "' > '" + out + "' 2> '" + err + "'";
  const int status = std::system(cmd.c_str());
  RunResult r;
  if (WIFEXITED(status)) {
    r.exit_code = WEXITSTATUS(status);
    r.crashed = r.exit_code >= 128;  // the shell reports a signal as 128 + n
  } else {
    r.crashed = true;
  }
  r.out = slurp(out);
  r.err = slurp(err);
  fs::remove(in), fs::remove(out), fs::remove(err);
  return r;
}

void expect_clean_error(const RunResult& r, const std::string& needle) {
  EXPECT_FALSE(r.crashed) << r.err;
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr: " << r.err;
}

TEST(Cli, ChatAnswersParis) {
  const RunResult r = atom_run({"generate", "--chat", "--prompt", "What is the capital of France?",
                                "--temperature", "0", "--max-tokens", "32"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Paris"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("decode:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tokens/s"), std::string::npos) << r.err;
}

TEST(Cli, SeededSamplingIsReproducible) {
  const std::vector<std::string> args = {"generate", "--prompt", "Once upon a time",
                                         "--temperature", "0.9", "--top-p", "0.9", "--top-k",
                                         "40", "--seed", "42", "--max-tokens", "16",
                                         "--ignore-eos"};
  const RunResult a = atom_run(args), b = atom_run(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_GT(a.out.size(), 16u);
}

TEST(Cli, TokenizeDetokenizeRoundTrip) {
  const RunResult t = atom_run({"tokenize"}, "\"Hello, world!\"\n\"<|im_start|>user\"\n");
  ASSERT_EQ(t.exit_code, 0) << t.err;
  std::istringstream lines(t.out);
  std::string l1, l2;
  std::getline(lines, l1);
  std::getline(lines, l2);
  EXPECT_EQ(nlohmann::json::parse(l1), nlohmann::json::parse("[19556, 28, 905, 17]"));
  EXPECT_EQ(nlohmann::json::parse(l2)[0], 1);  // <|im_start|> is one special token
  const RunResult d = atom_run({"detokenize"}, l1 + "\n" + l2 + "\n");
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(d.out, "\"Hello, world!\"\n\"<|im_start|>user\"\n");
}

TEST(Cli, ChatTemplateRendersTheModelTemplate) {
  const RunResult r = atom_run(
      {"chat-template"},
      R"({"messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": true})");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(Cli, MissingModelPath) {
  expect_clean_error(atom_run({"generate", "--model", "/no/such/model.gguf", "--prompt", "x"}),
                     "model not found");
}

TEST(Cli, TruncatedGguf) {
  const std::string path = tmp("trunc.gguf");
  {
    std::ifstream src(default_model_path(), std::ios::binary);
    std::vector<char> head(1 << 20);
    src.read(head.data(), std::streamsize(head.size()));
    std::ofstream(path, std::ios::binary).write(head.data(), std::streamsize(head.size()));
  }
  expect_clean_error(atom_run({"generate", "--model", path, "--prompt", "x"}), "truncated");
  fs::remove(path);
}

TEST(Cli, UnsupportedTensorType) {
  // A tiny llama whose token embedding is Q5_K, a type atom does not compute with.
  testing::GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.block_count", 1);
  w.add_u32("llama.embedding_length", 256);
  w.add_u32("llama.feed_forward_length", 256);
  w.add_u32("llama.attention.head_count", 4);
  w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.add_u32("llama.context_length", 64);
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", "gpt-2");
  std::vector<std::string> tokens;
  for (int c = 33; c < 127; ++c) tokens.push_back(std::string(1, char(c)));
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  w.add_i32_array("tokenizer.ggml.token_type", std::vector<int32_t>(tokens.size(), 1));
  w.add_string_array("tokenizer.ggml.merges", {});
  w.add_u32("llama.vocab_size", uint32_t(tokens.size()));
  w.add_tensor("token_embd.weight", 13, {256, tokens.size()},
               std::vector<uint8_t>(176 * tokens.size()));
  const std::string path = tmp("q5k.gguf");
  w.write(path);
  expect_clean_error(atom_run({"generate", "--model", path, "--prompt", "x"}), "Q5_K");
  fs::remove(path);
}

TEST(Cli, EmptyPrompt) {
  expect_clean_error(atom_run({"generate", "--prompt", ""}), "prompt is empty");
}

TEST(Cli, PromptLongerThanContext) {
  std::string prompt;
  for (int i = 0; i < 200; ++i) prompt += "word ";
  expect_clean_error(atom_run({"generate", "--prompt", prompt, "--max-model-len", "64"}),
                     "context length");
}

TEST(Cli, BadFlagsAndBadInput) {
  RunResult r = atom_run({"generate", "--prompt", "x", "--temperature", "-1"});
  expect_clean_error(r, "temperature");
  r = atom_run({"generate", "--prompt", "x", "--top-p", "0"});
  expect_clean_error(r, "top_p");
  r = atom_run({"generate"});
  expect_clean_error(r, "--prompt");
  r = atom_run({"generate", "--prompts-file", "/no/such/file.jsonl"});
  expect_clean_error(r, "prompts file");
  // Beyond the model's context, --max-model-len is clamped with a warning (as ATOM does).
  r = atom_run({"generate", "--prompt", "x", "--max-model-len", "100000", "--max-tokens", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("8192"), std::string::npos) << r.err;
  r = atom_run({"tokenize"}, "not json\n");
  expect_clean_error(r, "line 1");
  r = atom_run({"detokenize"}, "[1, 99999999]\n");
  expect_clean_error(r, "token id");
  r = atom_run({"chat-template"}, "{\"messages\": 3}");
  expect_clean_error(r, "messages");
  r = atom_run({"generate", "--prompt", "x", "--cudagraph-capture-sizes", "[1, two]"});
  expect_clean_error(r, "--cudagraph-capture-sizes");
  r = atom_run({"generate", "--prompt", "x", "--cudagraph-capture-sizes", "[0,4]"});
  expect_clean_error(r, "--cudagraph-capture-sizes");
  r = atom_run({"generate", "--prompt", "x", "--max-tokens", "2", "--cudagraph-capture-sizes",
                "[1, 2]", "--enforce-eager"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = atom_run({"no-such-command"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_FALSE(r.crashed);
}

TEST(Cli, PromptsFileRunsAsOneBatch) {
  const std::string path = tmp("prompts.jsonl");
  std::ofstream(path) << "\"What is the capital of France?\"\n\n{\"prompt\": \"Say hi.\"}\n";
  const RunResult r = atom_run({"generate", "--chat", "--prompts-file", path, "--temperature",
                                "0", "--max-tokens", "24", "--max-num-seqs", "2"});
  fs::remove(path);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream lines(r.out);
  std::string l1, l2, l3;
  std::getline(lines, l1);
  std::getline(lines, l2);
  EXPECT_FALSE(std::getline(lines, l3));
  const auto a = nlohmann::json::parse(l1), b = nlohmann::json::parse(l2);
  EXPECT_EQ(a["index"], 0);
  EXPECT_NE(a["text"].get<std::string>().find("Paris"), std::string::npos) << l1;
  EXPECT_EQ(b["index"], 1);
  EXPECT_GT(b["completion_tokens"].get<int>(), 0);
  EXPECT_NE(r.err.find("output tokens/s"), std::string::npos) << r.err;
}

TEST(Cli, StopStringEndsTheText) {
  const RunResult r = atom_run({"generate", "--chat", "--prompt", "What is the capital of France?",
                                "--temperature", "0", "--stop", " of"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "The capital\n");
}

TEST(Cli, BenchThroughputCompletes64Sequences) {
  const RunResult r = atom_run({"bench", "throughput", "--num-seqs", "64", "--input-len-range",
                                "8,48", "--output-len-range", "4,12", "--seed", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("requests: 64"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("output tokens/s"), std::string::npos) << r.out;
  expect_clean_error(atom_run({"bench", "throughput", "--input-len-range", "9"}), "MIN,MAX");
}

// vLLM's benchmark_latency: every iteration generates exactly output_len tokens per sequence;
// the JSON has vLLM's keys and the prefill/decode split, with consistent values.
TEST(Cli, BenchLatencyReportsPrefillAndDecode) {
  const std::string json_path = tmp("latency.json");
  const RunResult r = atom_run({"bench", "latency", "--batch-size", "2", "--input-len", "12",
                                "--output-len", "6", "--num-iters-warmup", "1", "--num-iters",
                                "3", "--output-json", json_path});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Avg latency:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("50% percentile latency:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Median decode:"), std::string::npos) << r.out;
  const nlohmann::json j = nlohmann::json::parse(slurp(json_path));
  fs::remove(json_path);
  ASSERT_EQ(j.at("latencies").size(), 3u);
  const double avg = j.at("avg_latency").get<double>();
  EXPECT_GT(avg, 0.0);
  EXPECT_GT(j.at("median_prefill_seconds").get<double>(), 0.0);
  EXPECT_LT(j.at("median_prefill_seconds").get<double>(), 2 * avg);
  EXPECT_GT(j.at("median_decode_tokens_per_s").get<double>(), 0.0);
  EXPECT_LE(j.at("percentiles").at("10").get<double>(), j.at("percentiles").at("90").get<double>());
  EXPECT_EQ(j.at("output_len").get<int64_t>(), 6);
  // A request that cannot fit the context is a clear error.
  expect_clean_error(atom_run({"bench", "latency", "--input-len", "9000", "--output-len", "4",
                               "--max-model-len", "4096"}),
                     "--max-model-len");
}

// --profile records one more run into a trace (vLLM's benchmark_latency --profile), and
// scripts/trace_summary.py reads its decode steps back: 5 of the 6 steps of a 6-token output.
TEST(Cli, BenchLatencyProfileTraceAndSummary) {
  const std::string dir = tmp("latency_trace");
  fs::remove_all(dir);
  const RunResult r = atom_run({"bench", "latency", "--batch-size", "1", "--input-len", "8",
                                "--output-len", "6", "--num-iters-warmup", "0", "--num-iters", "1",
                                "--profile", "--torch-profiler-dir", dir});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const size_t at = r.out.find("Profiled one run: ");
  ASSERT_NE(at, std::string::npos) << r.out;
  std::string trace = r.out.substr(at + 18);
  trace = trace.substr(0, trace.find('\n'));
  ASSERT_TRUE(fs::exists(trace)) << trace;
  EXPECT_EQ(fs::path(trace).parent_path().filename(), "rank_0");
  const std::string summary = tmp("summary.txt");
  const std::string cmd = "python3 " + std::string(ATOM_SOURCE_DIR) +
                          "/scripts/trace_summary.py '" + trace + "' > '" + summary + "' 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << slurp(summary);
  const std::string text = slurp(summary);
  EXPECT_NE(text.find(": 5 decode steps"), std::string::npos) << text;
  EXPECT_NE(text.find("forward"), std::string::npos) << text;
  fs::remove_all(dir);
  fs::remove(summary);
  expect_clean_error(atom_run({"bench", "latency", "--profile"}), "--torch-profiler-dir");
}

// ATOM's remaining engine flags: accepted where atom's behaviour is the same (--level,
// --kv_cache_dtype bf16), refused with the reason where the feature is missing (fp8 KV cache,
// speculative decoding), validated like ATOM (--level 0-3, --num-speculative-tokens 1-4).
TEST(Cli, AtomsOtherEngineFlags) {
  RunResult r = atom_run({"generate", "--prompt", "x", "--max-tokens", "2", "--level", "0",
                          "--kv_cache_dtype", "bf16", "--num-speculative-tokens", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  expect_clean_error(
      atom_run({"generate", "--device", "cpu", "--prompt", "x", "--kv_cache_dtype", "fp8"}),
      "an fp8 KV cache runs on device 'cuda' only");
  expect_clean_error(atom_run({"generate", "--prompt", "x", "--method", "mtp"}),
                     "speculative decoding is not implemented yet");
  expect_clean_error(atom_run({"generate", "--prompt", "x", "--level", "4"}), "--level");
  expect_clean_error(atom_run({"generate", "--prompt", "x", "--num-speculative-tokens", "5"}),
                     "--num-speculative-tokens");
  expect_clean_error(atom_run({"generate", "--prompt", "x", "--kv_cache_dtype", "int8"}),
                     "--kv_cache_dtype");
}

// --log-level, on atom or after any subcommand: debug adds the per-step decode lines, error
// drops the INFO lines; a bad level is a clear error.
TEST(Cli, LogLevel) {
  const std::vector<std::string> gen = {"generate", "--prompt", "x", "--max-tokens", "3"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = gen;
    args.insert(args.end(), extra.begin(), extra.end());
    return atom_run(args);
  };
  RunResult r = with({"--log-level", "debug"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("Scheduled decode batch"), std::string::npos) << r.err;
  r = with({});
  EXPECT_EQ(r.err.find("Scheduled decode batch"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("Scheduled prefill batch"), std::string::npos) << r.err;
  r = with({"--log-level", "ERROR"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("Scheduled prefill batch"), std::string::npos) << r.err;
  r = atom_run({"--log-level", "debug", "generate", "--prompt", "x", "--max-tokens", "3"});
  EXPECT_NE(r.err.find("Scheduled decode batch"), std::string::npos) << r.err;
  expect_clean_error(with({"--log-level", "loud"}), "--log-level");
}

TEST(Cli, HfRepoIdResolvesFromTheHfCacheOffline) {
  // The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<commit>/...}.
  const fs::path home = tmp("hf_home");
  const std::string commit = "0123456789abcdef0123456789abcdef01234567";
  const fs::path repo = home / "hub" / "models--atom-test--llama-tiny";
  fs::create_directories(repo / "refs");
  fs::create_directories(repo / "snapshots");
  std::ofstream(repo / "refs" / "main") << commit;
  fs::copy(std::string(ATOM_TEST_DATA_DIR) + "/hf_models/llama-tiny", repo / "snapshots" / commit,
           fs::copy_options::recursive);
  const RunResult r = atom_run(
      {"generate", "--model", "atom-test/llama-tiny", "--prompt", "Hello", "--max-tokens", "4",
       "--temperature", "0", "--ignore-eos"},
      "", {"HF_HOME=" + home.string(), "HF_HUB_OFFLINE=1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("decode: 4 tokens"), std::string::npos) << r.err;
  // Offline with nothing cached: a clear error naming the repo.
  const RunResult missing = atom_run({"generate", "--model", "atom-test/absent", "--prompt", "x"},
                                     "", {"HF_HOME=" + home.string(), "HF_HUB_OFFLINE=1"});
  expect_clean_error(missing, "atom-test/absent");
  fs::remove_all(home);
}

// `atom env`: a header, then every registered variable on its own line, in the table's order,
// with its default and meaning in their columns and its value as this environment makes it.
TEST(Cli, EnvListsEveryVariable) {
  const RunResult r = atom_run({"env"}, "", {"ATOM_DP_SIZE=4", "HF_TOKEN=hf_not_shown"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines;
  std::stringstream ss(r.out);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), envs::all().size() + 1) << r.out;
  const size_t value_col = lines[0].find("VALUE"), default_col = lines[0].find("DEFAULT"),
               meaning_col = lines[0].find("MEANING");
  ASSERT_TRUE(lines[0].starts_with("NAME") && value_col < default_col && default_col < meaning_col)
      << lines[0];
  const auto column = [](const std::string& line, size_t from, size_t to) {
    std::string c = line.substr(from, to - from);
    return c.substr(0, c.find_last_not_of(' ') + 1);
  };
  for (size_t i = 0; i < envs::all().size(); ++i) {
    const envs::EnvVarInfo& e = envs::all()[i];
    const std::string& line = lines[i + 1];
    EXPECT_EQ(column(line, 0, value_col), e.name) << line;
    EXPECT_EQ(column(line, default_col, meaning_col), e.default_value) << line;
    EXPECT_EQ(line.substr(meaning_col), e.description) << line;
    if (e.name == "ATOM_DP_SIZE") {
      EXPECT_EQ(column(line, value_col, default_col), "4") << line;
    }
    if (e.name == "HF_TOKEN") {
      EXPECT_EQ(column(line, value_col, default_col), "(set, hidden)") << line;
    }
  }
  EXPECT_EQ(r.out.find("hf_not_shown"), std::string::npos);
}

// What atom's own variables do, seen from the command line.
TEST(Cli, EnvironmentVariablesTakeEffect) {
  const std::vector<std::string> gen = {"generate", "--prompt", "Hi", "--max-tokens", "1"};
  // ATOM_NUM_THREADS: the compute threads unless --threads says otherwise.
  RunResult r = atom_run(gen, "", {"ATOM_NUM_THREADS=1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("threads: 1\n"), std::string::npos) << r.err;
  std::vector<std::string> with_flag = gen;
  with_flag.insert(with_flag.end(), {"--threads", "3"});
  r = atom_run(with_flag, "", {"ATOM_NUM_THREADS=1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("threads: 3\n"), std::string::npos) << r.err;
  expect_clean_error(atom_run(gen, "", {"ATOM_NUM_THREADS=-2"}), "ATOM_NUM_THREADS");
  // ATOM_CACHE_DIR: where the default model is looked for.
  const std::string cache = tmp("no_cache");
  expect_clean_error(atom_run(gen, "", {"ATOM_CACHE_DIR=" + cache}),
                     cache + "/models/" + std::string(kDefaultModelFile));
  // ATOM_LOG_MORE: the verbose format for every line; a non-integer is an error.
  r = atom_run(gen, "", {"ATOM_LOG_MORE=1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::regex_search(
      r.err, std::regex(R"(\[atom INFO\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{1,3} - )"
                        R"(MainProcess:\d+ - \S+:\d+ - \w+\nprompt: )")))
      << r.err;
  EXPECT_EQ(r.err.find("[atom] "), std::string::npos) << r.err;
  expect_clean_error(atom_run(gen, "", {"ATOM_LOG_MORE=yes"}), "ATOM_LOG_MORE");
}

// -tp/-dp and the ATOM_DP_* variables: what a command cannot run is refused at start-up, before
// the model is looked for, naming the flag or variable: data parallelism outside `atom serve`,
// tensor parallelism on the CPU; bad values likewise. ATOM's two-letter short flags are understood
// in their argparse forms (-tp 2, -tp=2, -tp2).
TEST(Cli, MultiGpuParallelismIsAClearError) {
  const std::vector<std::string> gen = {"generate", "--model", "/no/such/model.gguf", "--device",
                                        "cpu", "--prompt", "Hi", "--max-tokens", "1"};
  const auto with = [&](std::initializer_list<std::string> extra) {
    std::vector<std::string> args = gen;
    args.insert(args.end(), extra);
    return args;
  };
  for (const RunResult& r :
       {atom_run(with({"-tp", "2"})), atom_run(with({"-tp=2"})), atom_run(with({"-tp2"})),
        atom_run(with({"--tensor-parallel-size", "2"}))}) {
    expect_clean_error(r,
                       "--tensor-parallel-size 2: tensor parallelism runs on device 'cuda' only");
    EXPECT_EQ(r.err.find("/no/such"), std::string::npos) << r.err;  // refused before loading
  }
  expect_clean_error(atom_run(with({"-dp", "2"})), "--data-parallel-size 2: data parallelism");
  expect_clean_error(atom_run(with({"-tp", "2", "--enable-dp-attention"})), "data parallelism");
  const RunResult env = atom_run(gen, "", {"ATOM_DP_SIZE=2"});
  expect_clean_error(env, "ATOM_DP_SIZE=2: data parallelism");
  EXPECT_NE(env.err.find("unset ATOM_DP_SIZE"), std::string::npos) << env.err;
  // Every command that builds an engine.
  expect_clean_error(atom_run({"serve", "--device", "cpu", "-tp", "2"}),
                     "--tensor-parallel-size 2");
  expect_clean_error(atom_run({"bench", "throughput", "-dp", "4"}), "--data-parallel-size 4");
  // Values out of range, from a flag or a variable.
  expect_clean_error(atom_run(with({"-tp", "9"})), "--tensor-parallel-size 9");
  expect_clean_error(atom_run(with({"--data-parallel-master-port", "70000"})),
                     "--data-parallel-master-port 70000");
  expect_clean_error(atom_run(gen, "", {"ATOM_DP_RANK=1"}), "ATOM_DP_RANK=1");
  expect_clean_error(atom_run(gen, "", {"ATOM_DP_MASTER_PORT=0"}), "ATOM_DP_MASTER_PORT=0");
  // --help still answers, listing the flags.
  const RunResult help = atom_run({"generate", "--help"}, "", {"ATOM_DP_SIZE=2"});
  EXPECT_EQ(help.exit_code, 0) << help.err;
  for (const char* flag :
       {"--tensor-parallel-size", "--data-parallel-size", "--data-parallel-rank",
        "--data-parallel-rank-local", "--data-parallel-master-ip", "--data-parallel-master-port",
        "--enable-expert-parallel", "--enable-dp-attention"})
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
}

// Flags beat the variables: -dp 1 runs despite ATOM_DP_SIZE=2, and a flag's port despite a bad
// ATOM_DP_MASTER_PORT. Expert parallelism on one rank is accepted and said to do nothing.
TEST(Cli, SingleRankParallelFlagsRun) {
  const RunResult r =
      atom_run({"generate", "--prompt", "Hi", "--max-tokens", "2", "-tp", "1", "-dp", "1",
                "--data-parallel-master-port", "29600", "--enable-expert-parallel"},
               "", {"ATOM_DP_SIZE=2", "ATOM_DP_MASTER_PORT=0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("--enable-expert-parallel has no effect"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("decode:"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace atom
