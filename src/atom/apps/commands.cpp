#include "atom/apps/commands.h"

#include <omp.h>

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
#include "atom/runner/generate.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom::apps {

namespace {

using nlohmann::json;

std::unique_ptr<GgufFile> open_model(const std::string& model) {
  return GgufFile::open(resolve_model_path(model), !envs::ATOM_DISABLE_MMAP());
}

void set_threads(int64_t flag) {
  const int64_t n = flag > 0 ? flag : envs::ATOM_NUM_THREADS();
  if (n > 0) omp_set_num_threads(int(n));
}

// The chat-template context every template expects beside the caller's variables. Ordered, as
// Python dicts are: key order shows in tojson output (tool schemas).
nlohmann::ordered_json template_context(const Tokenizer& tok, nlohmann::ordered_json ctx) {
  const auto piece = [&](int32_t id) { return id >= 0 ? tok.token_bytes(id) : std::string(); };
  if (!ctx.contains("bos_token")) ctx["bos_token"] = piece(tok.bos_id());
  if (!ctx.contains("eos_token")) ctx["eos_token"] = piece(tok.eos_id());
  if (!ctx.contains("add_generation_prompt")) ctx["add_generation_prompt"] = false;
  // transformers' apply_chat_template always passes these, as None when absent.
  if (!ctx.contains("tools")) ctx["tools"] = nullptr;
  if (!ctx.contains("documents")) ctx["documents"] = nullptr;
  return ctx;
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

}  // namespace

// ---------------------------------------------------------------------------------------------
Command add_generate(CLI::App& app) {
  struct Opts {
    std::string model, prompt, system;
    bool chat = false, ignore_eos = false;
    int64_t max_tokens = 256, max_model_len = 0, max_num_batched_tokens = 16384, threads = 0;
    float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f;
    int32_t top_k = -1;
    std::optional<uint64_t> seed;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--model", o->model, "GGUF file or folder (default: SmolLM2-135M-Instruct)");
  app.add_option("--prompt", o->prompt, "Prompt text")->required();
  app.add_flag("--chat", o->chat, "Wrap the prompt as a user message with the chat template");
  app.add_option("--system", o->system, "System message (with --chat)");
  app.add_option("--max-tokens,--max_tokens", o->max_tokens, "Tokens to generate")
      ->check(CLI::PositiveNumber);
  app.add_option("--temperature", o->temperature, "Sampling temperature; 0 is greedy");
  app.add_option("--top-p,--top_p", o->top_p, "Nucleus sampling mass in (0, 1]");
  app.add_option("--top-k,--top_k", o->top_k, "Keep the k most likely tokens (-1: all)");
  app.add_option("--min-p,--min_p", o->min_p, "Drop tokens below min_p x the top probability");
  app.add_option("--seed", o->seed, "Seed for reproducible sampling");
  app.add_flag("--ignore-eos,--ignore_eos", o->ignore_eos, "Keep generating past EOS");
  app.add_option("--max-model-len,--max_model_len", o->max_model_len,
                 "Context length (default: the model's)");
  app.add_option("--max-num-batched-tokens,--max_num_batched_tokens", o->max_num_batched_tokens,
                 "Prefill chunk size in tokens")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", o->threads, "CPU threads (default: ATOM_NUM_THREADS, else all)");

  return [o]() {
    set_threads(o->threads);
    ATOM_CHECK(!o->prompt.empty(), kInvalidArgument, "the prompt is empty");
    auto file = open_model(o->model);
    auto tok = Tokenizer::from_gguf(*file);
    auto model = load_model_from_gguf(*file);
    const ModelConfig& cfg = model->config();

    std::vector<int32_t> ids;
    if (o->chat) {
      nlohmann::ordered_json messages = nlohmann::ordered_json::array();
      if (!o->system.empty()) messages.push_back({{"role", "system"}, {"content", o->system}});
      messages.push_back({{"role", "user"}, {"content", o->prompt}});
      const ChatTemplate tmpl(model_template(*tok));
      nlohmann::ordered_json ctx;
      ctx["messages"] = std::move(messages);
      ctx["add_generation_prompt"] = true;
      const std::string text = tmpl.render(template_context(*tok, std::move(ctx)));
      ids = tok->encode(text, /*add_special_tokens=*/false);  // the template has the specials
    } else {
      ids = tok->encode(o->prompt, /*add_special_tokens=*/true);
    }
    ATOM_CHECK(o->max_model_len <= cfg.max_position_embeddings, kInvalidArgument,
               "--max-model-len {} exceeds the model's context length {}", o->max_model_len,
               cfg.max_position_embeddings);

    GenerateOptions g;
    g.sampling.temperature = o->temperature;
    g.sampling.top_k = o->top_k;
    g.sampling.top_p = o->top_p;
    g.sampling.min_p = o->min_p;
    g.sampling.seed = o->seed;
    g.sampling.max_tokens = o->max_tokens;
    g.sampling.ignore_eos = o->ignore_eos;
    g.sampling.stop_token_ids = tok->stop_ids();
    g.max_model_len = o->max_model_len;
    g.max_num_batched_tokens = o->max_num_batched_tokens;

    IncrementalDetokenizer detok(*tok, /*skip_special_tokens=*/true);
    const GenerateResult r = generate(*model, ids, g, [&](int32_t id) {
      const std::string piece = detok.push(id);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    const std::string rest = detok.flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);

    const int64_t n_out = int64_t(r.output_ids.size());
    const double prompt_tps = r.prefill_seconds > 0 ? double(r.prompt_tokens) / r.prefill_seconds
                                                     : 0.0;
    const double decode_tps =
        n_out > 1 && r.decode_seconds > 0 ? double(n_out - 1) / r.decode_seconds : 0.0;
    ATOM_LOG_INFO(
        "prompt: {} tokens, {:.1f} tokens/s | decode: {} tokens, {:.1f} tokens/s | finish: {} | "
        "threads: {}",
        r.prompt_tokens, prompt_tps, n_out, decode_tps, r.finish_reason, omp_get_max_threads());
    return 0;
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
    auto file = open_model(*model);
    auto tok = Tokenizer::from_gguf(*file);
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
    auto file = open_model(*model);
    auto tok = Tokenizer::from_gguf(*file);
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
      auto file = open_model(*model);
      auto tok = Tokenizer::from_gguf(*file);
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
