// The `atom` subcommands. Each registers its flags on a CLI11 app and returns the function that
// runs it; errors are thrown as atom::Error and reported by main().
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace atom::apps {

using Command = std::function<int()>;

Command add_generate(CLI::App& app);
Command add_serve(CLI::App& app);  // `atom serve`: the OpenAI-compatible server
Command add_tokenize(CLI::App& app);
Command add_detokenize(CLI::App& app);
Command add_chat_template(CLI::App& app);
Command add_env(CLI::App& app);
Command add_bench_serve(CLI::App& app);  // `atom bench serve`
Command add_bench_throughput(CLI::App& app);
Command add_bench_latency(CLI::App& app);  // `atom bench latency` (vLLM's benchmark_latency)
Command add_bench_ceilings(CLI::App& app);  // `atom bench ceilings`: GPU copy and GEMM rates

}  // namespace atom::apps
