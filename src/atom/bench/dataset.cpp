#include "atom/bench/dataset.h"

#include <omp.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "atom/core/error.h"
#include "atom/tokenizer/tokenizer.h"

namespace atom::bench {

namespace {

std::string read_text_file(const std::string& path, std::string_view what) {
  ATOM_CHECK(!path.empty(), kInvalidArgument, "the {} dataset needs --dataset-path", what);
  std::ifstream in(path, std::ios::binary);
  ATOM_CHECK(in.good(), kNotFound, "{} dataset: cannot open {}", what, path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string token_piece(const Tokenizer& tok, int32_t id) {
  return id >= 0 ? tok.token_bytes(id) : std::string();
}

// Python's round(): halves go to the even neighbour (nearbyint under the default rounding).
int64_t py_round(double x) { return int64_t(std::nearbyint(x)); }

// One CSV record: comma-separated, double-quoted fields may hold commas and "" for a quote.
std::vector<std::string> split_csv_line(std::string_view line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        fields.back().push_back('"');
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        fields.back().push_back(c);
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fields.emplace_back();
    } else if (c != '\r') {
      fields.back().push_back(c);
    }
  }
  return fields;
}

double parse_csv_number(const std::string& s, const std::string& path, int64_t lineno) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  ATOM_CHECK(used > 0 && used == s.size(), kCorrupt, "burstgpt dataset {} line {}: '{}' is not a number",
             path, lineno, s);
  return v;
}

}  // namespace

ChatFormatter::ChatFormatter(const Tokenizer& tok)
    : ChatFormatter(
          [&] {
            ATOM_CHECK(!tok.chat_template().empty(), kNotFound,
                       "the tokenizer has no chat template (GGUF key tokenizer.chat_template), "
                       "which this dataset needs");
            return tok.chat_template();
          }(),
          token_piece(tok, tok.bos_id()), token_piece(tok, tok.eos_id())) {}

ChatFormatter::ChatFormatter(std::string template_source, std::string bos_token,
                             std::string eos_token)
    : template_(std::move(template_source)),
      bos_token_(std::move(bos_token)),
      eos_token_(std::move(eos_token)) {}

std::string ChatFormatter::render_user(std::string_view content) const {
  nlohmann::ordered_json ctx;
  ctx["messages"] = nlohmann::ordered_json::array(
      {nlohmann::ordered_json{{"role", "user"}, {"content", std::string(content)}}});
  ctx["add_generation_prompt"] = true;
  ctx["bos_token"] = bos_token_;
  ctx["eos_token"] = eos_token_;
  ctx["tools"] = nullptr;
  ctx["documents"] = nullptr;
  return template_.render(ctx);
}

std::vector<SampleRequest> sample_random_requests(const RandomDatasetOptions& opts,
                                                  int64_t num_prompts, const Tokenizer& tok,
                                                  Rng& rng, const ChatFormatter* chat) {
  ATOM_CHECK(opts.range_ratio >= 0.0 && opts.range_ratio <= 1.0, kInvalidArgument,
             "--random-range-ratio must be in [0, 1], got {}", opts.range_ratio);
  ATOM_CHECK(opts.prefix_len >= 0 && opts.output_len >= 0, kInvalidArgument,
             "--random-prefix-len and --random-output-len must not be negative");
  ATOM_CHECK(num_prompts >= 0, kInvalidArgument, "--num-prompts must not be negative");
  const int64_t vocab = tok.vocab_size();
  std::vector<int32_t> prefix(static_cast<size_t>(opts.prefix_len));
  for (int32_t& id : prefix) id = int32_t(rng.randint(0, vocab));

  int64_t input_len = opts.input_len;
  int64_t template_len = 0;
  if (opts.use_chat_template) {
    ATOM_ASSERT(chat != nullptr);
    template_len = int64_t(tok.encode(chat->render_user("a"), false).size()) - 1;
    input_len -= template_len;
  }
  ATOM_CHECK(input_len >= 0, kInvalidArgument,
             "--random-input-len {} is shorter than the chat template's {} tokens",
             opts.input_len, template_len);

  // All draws first, in the reference's order, so the prompts can be built in parallel.
  const auto lengths = [&](int64_t len) {
    std::vector<int64_t> v(static_cast<size_t>(num_prompts));
    const int64_t lo = int64_t(double(len) * opts.range_ratio);
    for (int64_t& x : v) x = rng.randint(lo, len + 1);
    return v;
  };
  const std::vector<int64_t> input_lens = lengths(input_len);
  const std::vector<int64_t> output_lens = lengths(opts.output_len);
  std::vector<int64_t> offsets(static_cast<size_t>(num_prompts));
  for (int64_t& x : offsets) x = rng.randint(0, vocab);

  std::vector<SampleRequest> out(static_cast<size_t>(num_prompts));
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t i = 0; i < num_prompts; ++i) {
    std::vector<int32_t> ids = prefix;
    for (int64_t j = 0; j < input_lens[size_t(i)]; ++j)
      ids.push_back(int32_t((offsets[size_t(i)] + i + j) % vocab));
    std::string prompt = tok.decode(ids);
    std::vector<int32_t> re = tok.encode(prompt, false);
    re.resize(std::min(re.size(), size_t(opts.prefix_len + input_lens[size_t(i)])));
    prompt = tok.decode(re);
    int64_t len = input_lens[size_t(i)];
    if (opts.use_chat_template) {
      prompt = chat->render_user(prompt);
      len += template_len;
    }
    out[size_t(i)] = {std::move(prompt), opts.prefix_len + len, output_lens[size_t(i)]};
  }
  return out;
}

std::vector<SampleRequest> sample_sharegpt_requests(const std::string& path, int64_t num_requests,
                                                    const Tokenizer& tok, Rng& rng,
                                                    std::optional<int64_t> fixed_output_len) {
  const std::string text = read_text_file(path, "sharegpt");
  nlohmann::json data;
  try {
    data = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw_error(ErrorCode::kCorrupt, "sharegpt dataset {}: invalid JSON: {}", path, e.what());
  }
  ATOM_CHECK(data.is_array(), kCorrupt, "sharegpt dataset {}: expected a JSON list", path);
  std::vector<std::pair<std::string, std::string>> pairs;
  for (size_t k = 0; k < data.size(); ++k) {
    const auto& item = data[k];
    ATOM_CHECK(item.is_object() && item.contains("conversations") &&
                   item["conversations"].is_array(),
               kCorrupt, "sharegpt dataset {}: item {} has no \"conversations\" list", path, k);
    const auto& conv = item["conversations"];
    if (conv.size() < 2) continue;
    const auto value = [&](size_t t) {
      ATOM_CHECK(conv[t].is_object() && conv[t].contains("value") && conv[t]["value"].is_string(),
                 kCorrupt, "sharegpt dataset {}: item {} turn {} has no string \"value\"", path,
                 k, t);
      return conv[t]["value"].get<std::string>();
    };
    pairs.emplace_back(value(0), value(1));
  }
  rng.shuffle(pairs);

  std::vector<SampleRequest> out;
  for (const auto& [prompt, completion] : pairs) {
    if (int64_t(out.size()) == num_requests) break;
    const int64_t prompt_len = int64_t(tok.encode(prompt, true).size());
    const int64_t output_len = fixed_output_len ? *fixed_output_len
                                                : int64_t(tok.encode(completion, true).size());
    if (prompt_len < 4 || (!fixed_output_len && output_len < 4)) continue;
    if (prompt_len > 1024 || prompt_len + output_len > 2048) continue;
    out.push_back({prompt, prompt_len, output_len});
  }
  return out;
}

std::vector<SampleRequest> sample_burstgpt_requests(const std::string& path, int64_t num_requests,
                                                    uint64_t seed, const Tokenizer& tok) {
  const std::string text = read_text_file(path, "burstgpt");
  std::istringstream lines(text);
  std::string line;
  ATOM_CHECK(std::getline(lines, line), kCorrupt, "burstgpt dataset {} is empty", path);
  const std::vector<std::string> header = split_csv_line(line);
  const auto column = [&](std::string_view name) {
    for (size_t c = 0; c < header.size(); ++c)
      if (header[c] == name) return c;
    throw_error(ErrorCode::kCorrupt, "burstgpt dataset {}: no column \"{}\" in the header", path,
                name);
  };
  const size_t model_col = column("Model");
  const size_t req_col = column("Request tokens");
  const size_t resp_col = column("Response tokens");
  std::vector<std::pair<int64_t, int64_t>> rows;  // (request tokens, response tokens)
  int64_t lineno = 1;
  while (std::getline(lines, line)) {
    ++lineno;
    if (line.empty() || line == "\r") continue;
    const std::vector<std::string> f = split_csv_line(line);
    ATOM_CHECK(f.size() == header.size(), kCorrupt,
               "burstgpt dataset {} line {}: {} fields, the header has {}", path, lineno,
               f.size(), header.size());
    if (f[model_col] != "GPT-4") continue;
    const double resp = parse_csv_number(f[resp_col], path, lineno);
    if (!(resp > 0)) continue;
    rows.emplace_back(int64_t(parse_csv_number(f[req_col], path, lineno)), int64_t(resp));
  }
  ATOM_CHECK(!rows.empty() || num_requests == 0, kCorrupt,
             "burstgpt dataset {}: no GPT-4 rows with a non-zero response", path);

  // pandas' DataFrame.sample(random_state=seed): its own generator, without replacement when
  // there are enough rows.
  Rng rng(seed);
  std::vector<size_t> picks;
  const size_t n = size_t(num_requests);
  if (n <= rows.size()) {
    std::vector<size_t> idx(rows.size());
    for (size_t k = 0; k < idx.size(); ++k) idx[k] = k;
    for (size_t k = 0; k < n; ++k) std::swap(idx[k], idx[k + size_t(rng.randint(0, int64_t(idx.size() - k)))]);
    picks.assign(idx.begin(), idx.begin() + int64_t(n));
  } else {
    for (size_t k = 0; k < n; ++k) picks.push_back(size_t(rng.randint(0, int64_t(rows.size()))));
  }
  const int64_t vocab = tok.vocab_size();
  std::vector<SampleRequest> out(n);
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t i = 0; i < int64_t(n); ++i) {
    const auto [input_len, output_len] = rows[picks[size_t(i)]];
    std::vector<int32_t> ids(size_t(std::max<int64_t>(input_len, 0)));
    for (int64_t j = 0; j < int64_t(ids.size()); ++j) ids[size_t(j)] = int32_t((i + j) % vocab);
    out[size_t(i)] = {tok.decode(ids), input_len, output_len};
  }
  return out;
}

std::vector<SampleRequest> sample_sonnet_requests(const std::string& path, int64_t num_requests,
                                                  const SonnetOptions& opts, const Tokenizer& tok,
                                                  const ChatFormatter& chat, Rng& rng,
                                                  bool raw_prompt) {
  ATOM_CHECK(opts.input_len > opts.prefix_len, kInvalidArgument,
             "'args.sonnet-input-len' must be greater than 'args.prefix-input-len'.");
  const std::string text = read_text_file(path, "sonnet");
  std::vector<std::string> poem_lines;  // as readlines(): each keeps its newline
  for (size_t pos = 0; pos < text.size();) {
    const size_t nl = text.find('\n', pos);
    const size_t end = nl == std::string::npos ? text.size() : nl + 1;
    poem_lines.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  ATOM_CHECK(!poem_lines.empty(), kCorrupt, "sonnet dataset {} is empty", path);
  double total = 0;
  for (const std::string& l : poem_lines) total += double(tok.encode(l, true).size());
  const double average_poem_len = total / double(poem_lines.size());

  const std::string base_prompt = "Pick as many lines as you can from these poem lines:\n";
  const int64_t base_prompt_offset = int64_t(tok.encode(chat.render_user(base_prompt), true).size());
  ATOM_CHECK(opts.input_len > base_prompt_offset, kInvalidArgument,
             "Please set 'args.sonnet-input-len' higher than {}.", base_prompt_offset);
  const int64_t num_input_lines =
      py_round(double(opts.input_len - base_prompt_offset) / average_poem_len);
  ATOM_CHECK(opts.prefix_len > base_prompt_offset, kInvalidArgument,
             "Please set 'args.sonnet-prefix-len' higher than {}.", base_prompt_offset);
  const int64_t num_prefix_lines =
      py_round(double(opts.prefix_len - base_prompt_offset) / average_poem_len);
  std::string prefix;
  for (int64_t k = 0; k < std::min<int64_t>(num_prefix_lines, int64_t(poem_lines.size())); ++k)
    prefix += poem_lines[size_t(k)];

  std::vector<SampleRequest> out;
  for (int64_t r = 0; r < num_requests; ++r) {
    std::string sampled = prefix;
    for (int64_t k = 0; k < num_input_lines - num_prefix_lines; ++k)  // random.choices
      sampled += poem_lines[size_t(rng.uniform() * double(poem_lines.size()))];
    std::string prompt = base_prompt + sampled;
    std::string formatted = chat.render_user(prompt);
    const int64_t prompt_len = int64_t(tok.encode(formatted, true).size());
    out.push_back({raw_prompt ? std::move(prompt) : std::move(formatted), prompt_len,
                   opts.output_len});
  }
  return out;
}

}  // namespace atom::bench
