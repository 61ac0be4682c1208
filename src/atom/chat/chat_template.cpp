#include "atom/chat/chat_template.h"

#include <fmt/format.h>

#include <string>

#include "atom/chat/jinja_ast.h"
#include "atom/chat/jinja_interp.h"
#include "atom/chat/jinja_lexer.h"
#include "atom/chat/jinja_parser.h"
#include "atom/core/error.h"

namespace atom {

struct ChatTemplate::Impl {
  jinja::Body body;
};

ChatTemplate::ChatTemplate(std::string source) : source_(std::move(source)) {
  auto impl = std::make_shared<Impl>();
  impl->body = jinja::parse(jinja::tokenize(source_));
  impl_ = std::move(impl);
}

namespace {

// line 0: the failure is in the context, before any template line ran.
[[noreturn]] void rethrow(const jinja::RenderError& e, int line) {
  const std::string where = line > 0 ? fmt::format(" at line {}", line) : "";
  switch (e.type) {
    case jinja::RenderError::Type::kRaised:
      // raise_exception(): the template's own message, meant for the user.
      throw_error(ErrorCode::kInvalidArgument, "chat template: {}", e.what());
    case jinja::RenderError::Type::kUnsupported:
      throw_error(ErrorCode::kUnsupported, "chat template: {}{}", e.what(), where);
    case jinja::RenderError::Type::kError:
      break;
  }
  throw_error(ErrorCode::kInvalidArgument, "chat template: {}{}", e.what(), where);
}

template <typename Json>
std::string render_impl(const jinja::Body& body, const Json& context) {
  ATOM_CHECK(context.is_object(), kInvalidArgument,
             "chat template: the context must be a JSON object, got {}", context.type_name());
  jinja::Value vars;
  try {
    vars = jinja::from_json(context);
  } catch (const jinja::RenderError& e) {
    rethrow(e, 0);
  }
  jinja::Interp interp(vars.dict());
  try {
    return interp.render(body);
  } catch (const jinja::RenderError& e) {
    rethrow(e, interp.line());
  }
}

}  // namespace

std::string ChatTemplate::render(const nlohmann::json& context) const {
  return render_impl(impl_->body, context);
}

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  return render_impl(impl_->body, context);
}

nlohmann::ordered_json chat_template_context(nlohmann::ordered_json ctx,
                                             const std::string& bos_token,
                                             const std::string& eos_token) {
  if (!ctx.contains("bos_token")) ctx["bos_token"] = bos_token;
  if (!ctx.contains("eos_token")) ctx["eos_token"] = eos_token;
  if (!ctx.contains("add_generation_prompt")) ctx["add_generation_prompt"] = false;
  if (!ctx.contains("tools")) ctx["tools"] = nullptr;
  if (!ctx.contains("documents")) ctx["documents"] = nullptr;
  return ctx;
}

}  // namespace atom
