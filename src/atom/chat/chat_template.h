// Chat templates: renders a model's Jinja chat template (tokenizer.chat_template in GGUF, or
// chat_template in tokenizer_config.json) exactly as transformers' apply_chat_template does with
// Python jinja2: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with loop
// controls, raise_exception(), strftime_now(), namespace() and transformers' tojson filter.
//
// The engine implements the Jinja subset real chat templates use, with Python semantics (str(),
// repr(), ==, slicing by code point, dict order, int/float arithmetic):
//   tags: if/elif/else, for (tuple targets, `if` filter, else, loop.*), set (incl. namespace
//     attributes and block set), macro (defaults, varargs/kwargs), break/continue, with,
//     filter blocks, raw, print, transformers' {% generation %};
//   filters: abs attr batch capitalize center count d default dictsort e escape first float
//     forceescape indent int items join last length list lower map max min reject rejectattr
//     replace reverse round safe select selectattr sort string sum title tojson trim unique upper;
//   tests: jinja2's builtin tests; globals: range dict namespace joiner raise_exception
//     strftime_now; methods of str, dict, list and loop objects.
// Anything else (include/import/extends/call, recursive loops, other filters, `*args` calls) is
// rejected when the template is parsed, naming the construct and line. Integers are 64-bit:
// arithmetic that would exceed that raises instead of growing like Python's.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace atom {

class ChatTemplate {
 public:
  // Parses once. Syntax the engine does not support, or malformed templates, throw
  // atom::Error(kUnsupported) naming the construct and line, e.g.
  // "chat template: unsupported filter 'xmlattr' at line 3".
  explicit ChatTemplate(std::string source);

  // context: {"messages": [...], "add_generation_prompt": bool, "bos_token": "...",
  // "eos_token": "...", plus any extra variables (tools, date_string, enable_thinking, ...)}.
  // apply_chat_template always passes "tools" and "documents" (null when absent); a caller
  // that wants the same output does the same.
  // Rendering errors (raise_exception, type errors, undefined values used as values) throw
  // atom::Error(kInvalidArgument) carrying the template's message; a construct only found
  // unsupported while rendering (e.g. map('xmlattr')) throws kUnsupported.
  // Object keys keep their order with ordered_json, as Python dicts do (it shows in tojson and
  // in loops over dict.items()); nlohmann::json sorts keys. Pass a named json value: a braced
  // literal would match both overloads. Const and safe to call from several threads at once.
  std::string render(const nlohmann::json& context) const;
  std::string render(const nlohmann::ordered_json& context) const;

  const std::string& source() const { return source_; }

 private:
  struct Impl;
  std::string source_;
  std::shared_ptr<const Impl> impl_;  // the parsed template; immutable, shared by copies
};

// The variables transformers' apply_chat_template passes besides the caller's: bos_token and
// eos_token (the tokenizer's, as text), add_generation_prompt (false), and tools and documents
// (None). Keys already in `ctx` are kept.
nlohmann::ordered_json chat_template_context(nlohmann::ordered_json ctx,
                                             const std::string& bos_token,
                                             const std::string& eos_token);

}  // namespace atom
