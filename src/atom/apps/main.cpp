// atom: one binary for every entry point (serve, generate, tokenize, detokenize, chat-template,
// env, bench).
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "atom/apps/commands.h"
#include "atom/apps/engine_args.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"

int main(int argc, char** argv) {
  CLI::App app{"atom: an LLM inference engine (CPU and CUDA)", "atom"};
  app.set_version_flag("--version", std::string("atom ") + ATOM_VERSION);
  app.require_subcommand(1);
  // Every subcommand takes it too (fallthrough): `atom serve --log-level debug`.
  app.fallthrough();
  std::string log_level = "info";
  app.add_option("--log-level", log_level,
                 "Messages shown: debug (adds per-step decode batches), info, warning, error")
      ->check(CLI::IsMember({"debug", "info", "warning", "warn", "error"}, CLI::ignore_case))
      ->capture_default_str();
  std::map<CLI::App*, atom::apps::Command> commands;
  const auto add = [&](const char* name, const char* help, auto adder) {
    CLI::App* sub = app.add_subcommand(name, help);
    commands[sub] = adder(*sub);
  };
  add("serve", "Serve the model over an OpenAI-compatible HTTP API", atom::apps::add_serve);
  add("generate", "Generate text from a prompt, streaming it to stdout", atom::apps::add_generate);
  add("tokenize", "Read JSON strings (one per line) on stdin, write token id arrays",
      atom::apps::add_tokenize);
  add("detokenize", "Read JSON arrays of token ids (one per line) on stdin, write JSON strings",
      atom::apps::add_detokenize);
  add("chat-template", "Render a chat template for a JSON object read on stdin",
      atom::apps::add_chat_template);
  add("env", "Print every environment variable atom reads, with its value and meaning",
      atom::apps::add_env);
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  {
    CLI::App* sub = bench->add_subcommand(
        "throughput", "Offline throughput: random prompts, all at once (nano-vllm's benchmark)");
    commands[sub] = atom::apps::add_bench_throughput(*sub);
  }
  {
    CLI::App* sub = bench->add_subcommand(
        "latency", "Latency of one batch: prefill and decode (vLLM's benchmark_latency)");
    commands[sub] = atom::apps::add_bench_latency(*sub);
  }
  {
    CLI::App* sub = bench->add_subcommand(
        "ceilings", "The GPU's measured copy bandwidth and bf16 GEMM rate (roofline ceilings)");
    commands[sub] = atom::apps::add_bench_ceilings(*sub);
  }
  {
    CLI::App* sub = bench->add_subcommand(
        "serve", "Online serving benchmark of an OpenAI-compatible server (benchmark_serving)");
    commands[sub] = atom::apps::add_bench_serve(*sub);
  }

  try {
    std::vector<std::string> args = atom::apps::cli_args(argc, argv);  // -tp, -dp: long names
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const atom::Error& e) {  // EngineArgs' parse-time check (parallel settings)
    std::fprintf(stderr, "atom: error: %s\n", e.what());
    return 1;
  }
  try {
    atom::logging::configure();  // reads ATOM_LOG_MORE: a bad value is reported here
    atom::logging::set_level(atom::logging::parse_level(log_level));
    for (auto& [sub, run] : commands)
      if (sub->parsed()) return run();
  } catch (const atom::Error& e) {
    std::fprintf(stderr, "atom: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "atom: error: %s\n", e.what());
    return 1;
  }
  return 1;
}
