#include "atom/apps/commands.h"

#include "atom/apps/engine_args.h"
#include "atom/engine/llm_engine.h"

#include <omp.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>

#include "atom/chat/chat_template.h"
#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "atom/core/logging.h"
#include "atom/io/gguf.h"
#include "atom/io/model_path.h"
#include "atom/models/model.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom::apps {

namespace {

using nlohmann::json;


// The chat-template context every template expects beside the caller's variables. Ordered, as
// Python dicts are: key order shows in tojson output (tool schemas).
nlohmann::ordered_json template_context(const Tokenizer& tok, nlohmann::ordered_json ctx) {
  const auto piece = [&](int32_t id) { return id >= 0 ? tok.token_bytes(id) : std::string(); };
  return chat_template_context(std::move(ctx), piece(tok.bos_id()), piece(tok.eos_id()));
}

const std::string& model_template(const Tokenizer& tok) {
  ATOM_CHECK(!tok.chat_template().empty(), kNotFound,
             "the model has no chat template (GGUF key tokenizer.chat_template); pass --template "
             "FILE or drop --chat");
  return tok.chat_template();
}

// Reads stdin line by line; blank lines are skipped. Throws with the line number on bad JSON.
template <typename F>
int for_each_json_line(F&& f) {
  std::string line;
  int64_t lineno = 0;
  while (std::getline(std::cin, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json v;
    try {
      v = json::parse(line);
    } catch (const json::parse_error& e) {
      throw_error(ErrorCode::kInvalidArgument, "stdin line {}: invalid JSON: {}", lineno,
                  e.what());
    }
    f(v, lineno);
    std::cout.flush();
  }
  return 0;
}

// One JSON string or {"prompt": string} per line; blank lines skipped.
std::vector<std::string> read_prompts_file(const std::string& path) {
  std::ifstream f(path);
  ATOM_CHECK(f.good(), kNotFound, "cannot read prompts file {}", path);
  std::vector<std::string> out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json v;
    try {
      v = json::parse(line);
    } catch (const json::parse_error& e) {
      throw_error(ErrorCode::kInvalidArgument, "{}:{}: invalid JSON: {}", path, lineno, e.what());
    }
    if (v.is_object() && v.contains("prompt")) v = v["prompt"];
    ATOM_CHECK(v.is_string() && !v.get<std::string>().empty(), kInvalidArgument,
               "{}:{}: expected a non-empty JSON string or {{\"prompt\": string}}", path, lineno);
    out.push_back(v.get<std::string>());
  }
  ATOM_CHECK(!out.empty(), kInvalidArgument, "{} has no prompts", path);
  return out;
}

// A single prompt: stream the text to stdout as it is generated, speeds to the log.
int stream_one(LLMEngine& engine, const std::vector<int32_t>& prompt,
               const SamplingParams& params) {
  engine.add_request(prompt, params);
  RequestOutput last;
  while (engine.has_unfinished()) {
    for (RequestOutput& o : engine.step()) {
      std::fwrite(o.delta_text.data(), 1, o.delta_text.size(), stdout);
      std::fflush(stdout);
      if (o.finished) last = std::move(o);
    }
  }
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const int64_t n_out = int64_t(last.output_ids.size());
  const double decode_s = last.latency_seconds - last.ttft_seconds;
  ATOM_LOG_INFO(
      "prompt: {} tokens, {:.1f} tokens/s | decode: {} tokens, {:.1f} tokens/s | finish: {} | "
      "threads: {}",
      last.num_prompt_tokens,
      last.ttft_seconds > 0 ? double(last.num_prompt_tokens) / last.ttft_seconds : 0.0, n_out,
      n_out > 1 && decode_s > 0 ? double(n_out - 1) / decode_s : 0.0, last.finish_reason,
      omp_get_max_threads());
  return 0;
}

// Many prompts as one batch: JSONL results on stdout, throughput to the log.
int run_batch(LLMEngine& engine, const std::vector<std::vector<int32_t>>& prompts,
              const SamplingParams& params) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<RequestOutput> outs = engine.generate(prompts, {params}, /*progress=*/true);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t n_in = 0, n_out = 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    const RequestOutput& o = outs[i];
    n_in += o.num_prompt_tokens;
    n_out += int64_t(o.output_ids.size());
    json line = {{"index", i},
                 {"text", o.text},
                 {"finish_reason", o.finish_reason},
                 {"prompt_tokens", o.num_prompt_tokens},
                 {"completion_tokens", o.output_ids.size()}};
    std::cout << line.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
  }
  std::cout.flush();
  ATOM_LOG_INFO("{} requests in {:.2f} s: {:.1f} prompt tokens/s, {:.1f} output tokens/s",
                outs.size(), wall, double(n_in) / wall, double(n_out) / wall);
  return 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
Command add_generate(CLI::App& app) {
  struct Opts {
    EngineArgs engine;
    std::string prompt, prompts_file, system;
    bool chat = false;
    SamplingParams sampling;
    std::optional<uint64_t> seed;
    CLI::Option* prompt_opt = nullptr;
  };
  auto o = std::make_shared<Opts>();
  o->sampling.max_tokens = 256;
  o->engine.add_to(app);
  o->prompt_opt = app.add_option("--prompt", o->prompt, "Prompt text");
  app.add_option("--prompts-file,--prompts_file", o->prompts_file,
                 "JSONL file: one prompt per line (a JSON string or {\"prompt\": ...}), run as "
                 "one batch; results are written as JSONL");
  app.add_flag("--chat", o->chat, "Wrap each prompt as a user message with the chat template");
  app.add_option("--system", o->system, "System message (with --chat)");
  app.add_option("--max-tokens,--max_tokens", o->sampling.max_tokens, "Tokens to generate")
      ->check(CLI::PositiveNumber);
  app.add_option("--min-tokens,--min_tokens", o->sampling.min_tokens,
                 "Generate at least this many tokens before stopping");
  app.add_option("--temperature", o->sampling.temperature, "Sampling temperature; 0 is greedy");
  app.add_option("--top-p,--top_p", o->sampling.top_p, "Nucleus sampling mass in (0, 1]");
  app.add_option("--top-k,--top_k", o->sampling.top_k, "Keep the k most likely tokens (-1: all)");
  app.add_option("--min-p,--min_p", o->sampling.min_p,
                 "Drop tokens below min_p x the top probability");
  app.add_option("--presence-penalty", o->sampling.presence_penalty, "OpenAI presence penalty");
  app.add_option("--frequency-penalty", o->sampling.frequency_penalty,
                 "OpenAI frequency penalty");
  app.add_option("--repetition-penalty", o->sampling.repetition_penalty,
                 "Multiplicative repetition penalty (1: off)");
  app.add_option("--stop", o->sampling.stop, "Stop string (repeatable); not part of the output");
  app.add_option("--seed", o->seed, "Seed for reproducible sampling");
  app.add_flag("--ignore-eos,--ignore_eos", o->sampling.ignore_eos, "Keep generating past EOS");

  return [o]() {
    const bool has_prompt = o->prompt_opt->count() > 0;
    ATOM_CHECK(has_prompt != !o->prompts_file.empty(), kInvalidArgument,
               "give exactly one of --prompt TEXT and --prompts-file FILE");
    std::vector<std::string> texts;
    if (!o->prompts_file.empty()) {
      texts = read_prompts_file(o->prompts_file);
    } else {
      ATOM_CHECK(!o->prompt.empty(), kInvalidArgument, "the prompt is empty");
      texts.push_back(o->prompt);
    }
    set_threads(o->engine.threads);
    LoadedModel m = load_model(o->engine.model);
    const Tokenizer& tok = *m.tokenizer;
    SamplingParams params = o->sampling;
    params.seed = o->seed;
    // The tokenizer's end ids plus generation_config.json's, unless --ignore-eos.
    if (!params.ignore_eos) params.stop_token_ids = m.stop_ids;

    std::vector<std::vector<int32_t>> prompts;
    for (const std::string& text : texts) {
      if (!o->chat) {
        prompts.push_back(tok.encode(text, /*add_special_tokens=*/true));
        continue;
      }
      nlohmann::ordered_json messages = nlohmann::ordered_json::array();
      if (!o->system.empty()) messages.push_back({{"role", "system"}, {"content", o->system}});
      messages.push_back({{"role", "user"}, {"content", text}});
      nlohmann::ordered_json ctx;
      ctx["messages"] = std::move(messages);
      ctx["add_generation_prompt"] = true;
      const std::string rendered =
          ChatTemplate(model_template(tok)).render(template_context(tok, std::move(ctx)));
      prompts.push_back(tok.encode(rendered, /*add_special_tokens=*/false));  // has specials
    }
    LLMEngine engine(*m.model, tok, o->engine.engine_config());
    return o->prompts_file.empty() ? stream_one(engine, prompts[0], params)
                                   : run_batch(engine, prompts, params);
  };
}

// ---------------------------------------------------------------------------------------------
Command add_tokenize(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  auto add_special = std::make_shared<bool>(false);
  app.add_option("--model", *model, "GGUF file or folder (default: SmolLM2-135M-Instruct)");
  app.add_flag("--add-special-tokens,--add_special_tokens", *add_special,
               "Add BOS/EOS as the model's tokenizer does");
  return [model, add_special]() {
    const LoadedTokenizer loaded = load_tokenizer(*model);
    const auto& tok = loaded.tokenizer;
    return for_each_json_line([&](const json& v, int64_t lineno) {
      ATOM_CHECK(v.is_string(), kInvalidArgument, "stdin line {}: expected a JSON string",
                 lineno);
      std::cout << json(tok->encode(v.get<std::string>(), *add_special)).dump() << '\n';
    });
  };
}

Command add_detokenize(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  auto skip = std::make_shared<bool>(false);
  app.add_option("--model", *model, "GGUF file or folder (default: SmolLM2-135M-Instruct)");
  app.add_flag("--skip-special-tokens,--skip_special_tokens", *skip,
               "Leave special tokens out of the text");
  return [model, skip]() {
    const LoadedTokenizer loaded = load_tokenizer(*model);
    const auto& tok = loaded.tokenizer;
    return for_each_json_line([&](const json& v, int64_t lineno) {
      ATOM_CHECK(v.is_array(), kInvalidArgument, "stdin line {}: expected a JSON array of ids",
                 lineno);
      std::vector<int32_t> ids;
      for (const json& x : v) {
        ATOM_CHECK(x.is_number_integer() && x.get<int64_t>() >= 0 &&
                       x.get<int64_t>() < tok->vocab_size(),
                   kInvalidArgument, "stdin line {}: {} is not a token id in [0, {})", lineno,
                   x.dump(), tok->vocab_size());
        ids.push_back(x.get<int32_t>());
      }
      // dump with replacement: a decoded byte sequence may be invalid UTF-8 (half a character).
      std::cout << json(tok->decode(ids, *skip)).dump(-1, ' ', false,
                                                     json::error_handler_t::replace)
                << '\n';
    });
  };
}

Command add_chat_template(CLI::App& app) {
  auto model = std::make_shared<std::string>();
  auto file_path = std::make_shared<std::string>();
  app.add_option("--model", *model, "Model whose template (and BOS/EOS) to use");
  app.add_option("--template", *file_path, "Template file instead of the model's");
  return [model, file_path]() {
    std::stringstream in;
    in << std::cin.rdbuf();
    nlohmann::ordered_json ctx;
    try {
      ctx = nlohmann::ordered_json::parse(in.str());
    } catch (const json::parse_error& e) {
      throw_error(ErrorCode::kInvalidArgument, "stdin: invalid JSON: {}", e.what());
    }
    ATOM_CHECK(ctx.is_object() && ctx.contains("messages") && ctx["messages"].is_array(),
               kInvalidArgument, "stdin: expected a JSON object with a \"messages\" array");
    std::string source;
    if (!file_path->empty()) {
      std::ifstream f(*file_path, std::ios::binary);
      ATOM_CHECK(f.good(), kNotFound, "cannot read template file {}", *file_path);
      std::stringstream ss;
      ss << f.rdbuf();
      source = ss.str();
    }
    if (source.empty() || !model->empty()) {
      const LoadedTokenizer loaded = load_tokenizer(*model);
      const auto& tok = loaded.tokenizer;
      if (source.empty()) source = model_template(*tok);
      ctx = template_context(*tok, std::move(ctx));
    } else if (!ctx.contains("add_generation_prompt")) {
      ctx["add_generation_prompt"] = false;
    }
    std::cout << ChatTemplate(source).render(ctx);
    return 0;
  };
}

Command add_env(CLI::App& app) {
  return []() {
    std::cout << envs::format_env_table();
    return 0;
  };
}

}  // namespace atom::apps
