// The Jinja engine behind ChatTemplate: feature-by-feature parity with Python jinja2 (cases and
// expectations from scripts/gen_chat_template_goldens.py), plus what only atom decides: how
// unsupported or malformed templates are rejected, resource limits and the C++ API.
#include <ctime>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "chat/chat_test_util.h"

namespace atom {
namespace {

using chat_test::check_case;
using chat_test::kDataDir;
using chat_test::read_json;
using testing::HasSubstr;

const nlohmann::ordered_json& engine_cases() {
  static const nlohmann::ordered_json cases = read_json(kDataDir / "engine_cases.json");
  return cases;
}

const std::vector<std::string> kGroups = {"output",     "whitespace",     "expressions",
                                          "statements", "filters",        "globals",
                                          "errors",     "whitespace_fuzz"};

class JinjaParity : public testing::TestWithParam<std::string> {};

TEST_P(JinjaParity, MatchesPythonJinja2) {
  int checked = 0;
  for (const auto& c : engine_cases()) {
    if (c.at("group") != GetParam()) continue;
    const std::string name = c.at("name").get<std::string>();
    SCOPED_TRACE(name + ": " + c.at("template").get<std::string>());
    try {
      const ChatTemplate tmpl(c.at("template").get<std::string>());
      check_case(tmpl, c);
    } catch (const Error& e) {
      ADD_FAILURE() << "parse failed: " << e.what();
    }
    ++checked;
  }
  EXPECT_GE(checked, 5) << "no cases for group " << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Engine, JinjaParity, testing::ValuesIn(kGroups),
                         [](const testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST(JinjaParity, EveryCaseBelongsToATestedGroup) {
  const std::set<std::string> groups(kGroups.begin(), kGroups.end());
  ASSERT_GE(engine_cases().size(), 400u);
  for (const auto& c : engine_cases()) {
    EXPECT_TRUE(groups.count(c.at("group").get<std::string>())) << c.at("name");
  }
}

// ---- parse-time rejection: atom::Error(kUnsupported) naming the construct and the line ----

void expect_parse_error(const std::string& source, const std::string& message) {
  SCOPED_TRACE(source);
  try {
    ChatTemplate tmpl(source);
    ADD_FAILURE() << "parsed, expected: " << message;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << e.what();
    EXPECT_EQ(std::string(e.what()), message);
  }
}

TEST(JinjaErrors, UnknownFilterNamesFilterAndLine) {
  expect_parse_error("line one\n{{ x }}\n{{ x | xmlattr }}",
                     "chat template: unsupported filter 'xmlattr' at line 3");
  expect_parse_error("{% set y = x|truncate(3) %}",
                     "chat template: unsupported filter 'truncate' at line 1");
}

TEST(JinjaErrors, UnknownTestNamesTestAndLine) {
  expect_parse_error("\n\n{% if x is frobnicated %}{% endif %}",
                     "chat template: unsupported test 'frobnicated' at line 3");
}

TEST(JinjaErrors, UnknownTagNamesTagAndLine) {
  expect_parse_error("a\n{% include 'other.jinja' %}",
                     "chat template: unsupported tag 'include' at line 2");
  expect_parse_error("{% do x.append(1) %}", "chat template: unsupported tag 'do' at line 1");
  expect_parse_error("{% call m() %}x{% endcall %}",
                     "chat template: unsupported tag 'call' at line 1");
  expect_parse_error("{% extends 'base' %}", "chat template: unsupported tag 'extends' at line 1");
  expect_parse_error("{% for x in y recursive %}{% endfor %}",
                     "chat template: unsupported recursive for loop at line 1");
  expect_parse_error("{{ f(*args) }}",
                     "chat template: unsupported '*args' or '**kwargs' in a call at line 1");
}

TEST(JinjaErrors, UnterminatedConstructsNameWhereTheyOpened) {
  expect_parse_error("{% if a %}\nx\n{% for m in messages %}\n{{ m }}\n",
                     "chat template: unterminated 'for' block (expected 'endfor' or 'else' before "
                     "the end of the template) at line 3");
  expect_parse_error("{% if a %}x{% elif b %}y",
                     "chat template: unterminated 'if' block (expected 'elif' or 'else' or "
                     "'endif' before the end of the template) at line 1");
  expect_parse_error("{% macro m() %}x",
                     "chat template: unterminated 'macro' block (expected "
                     "'endmacro' before the end of the template) at line 1");
  expect_parse_error("ok\n{{ x ",
                     "chat template: unexpected end of template inside a '{{' tag at line 2");
  expect_parse_error("{% if x ",
                     "chat template: unexpected end of template inside a '{%' tag at line 1");
  expect_parse_error("a\n{# never closed", "chat template: missing end of comment tag at line 2");
  expect_parse_error("{% raw %}x", "chat template: missing end of raw directive at line 1");
  expect_parse_error("{{ 'abc }}", "chat template: unterminated string literal at line 1");
}

TEST(JinjaErrors, MisplacedTagsAndBadSyntax) {
  expect_parse_error("{% if x %}\n{% endfor %}",
                     "chat template: unexpected tag 'endfor' (the innermost open block is 'if' "
                     "from line 1) at line 2");
  expect_parse_error("{% endif %}", "chat template: unexpected tag 'endif' at line 1");
  expect_parse_error("{% break %}", "chat template: 'break' outside of a for loop at line 1");
  expect_parse_error("{% for x in y %}{% macro m() %}{% continue %}{% endmacro %}{% endfor %}",
                     "chat template: 'continue' outside of a for loop at line 1");
  expect_parse_error("{{ 1 2 }}",
                     "chat template: expected end of print statement, got '2' at line 1");
  expect_parse_error("{{ x }", "chat template: unexpected '}' at line 1");
  expect_parse_error("{{ (x] }}", "chat template: unexpected ']', expected ')' at line 1");
  expect_parse_error("{% set 1 = x %}", "chat template: can't assign to this expression at line 1");
  expect_parse_error("{% macro m(a=1, b) %}{% endmacro %}",
                     "chat template: non-default argument follows default argument at line 1");
  expect_parse_error("{{ x is defined is string }}",
                     "chat template: cannot chain multiple tests with 'is' at line 1");
  expect_parse_error(
      "{{ 99999999999999999999 }}",
      "chat template: integer literal '99999999999999999999' out of range at line 1");
}

// Adversarial nesting is refused with an error instead of exhausting the stack.
TEST(JinjaErrors, NestingDepthIsBounded) {
  const auto repeat = [](const std::string& s, int n) {
    std::string out;
    for (int i = 0; i < n; ++i) out += s;
    return out;
  };
  const std::vector<std::string> sources = {
      "{{ " + repeat("(", 20000) + "1" + repeat(")", 20000) + " }}",
      "{{ " + repeat("[", 20000) + repeat("]", 20000) + " }}",
      "{{ " + repeat("{'a': ", 20000) + "1" + repeat("}", 20000) + " }}",
      "{{ " + repeat("not ", 20000) + "x }}",
      "{{ " + repeat("-", 20000) + "1 }}",
      "{{ 1" + repeat(" + 1", 20000) + " }}",
      "{{ x" + repeat("|trim", 20000) + " }}",
      "{{ x" + repeat(".a", 20000) + " }}",
      "{{ x" + repeat("()", 20000) + " }}",
      "{{ 1" + repeat(" if x else 1", 20000) + " }}",
      repeat("{% if x %}", 20000) + repeat("{% endif %}", 20000),
      repeat("{% for x in y %}", 20000) + repeat("{% endfor %}", 20000),
  };
  for (const auto& source : sources) {
    SCOPED_TRACE(source.substr(0, 40));
    try {
      ChatTemplate tmpl(source);
      ADD_FAILURE() << "parsed";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
      EXPECT_THAT(e.what(), HasSubstr("nested too deeply"));
    }
  }
  // Nesting real templates use stays well inside the limit.
  const ChatTemplate ok("{{ " + repeat("(", 40) + "1" + repeat(")", 40) + " }}" +
                        repeat("{% if true %}", 60) + "x" + repeat("{% endif %}", 60));
  EXPECT_EQ(ok.render(nlohmann::json::object()), "1x");
}

// ---- render-time errors: atom::Error(kInvalidArgument) with the template's message ----

void expect_render_error(const std::string& source, const nlohmann::json& context, ErrorCode code,
                         const std::string& message) {
  SCOPED_TRACE(source);
  const ChatTemplate tmpl(source);
  try {
    const std::string out = tmpl.render(context);
    ADD_FAILURE() << "rendered: " << out;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_EQ(std::string(e.what()), message);
  }
}

TEST(JinjaErrors, RaiseExceptionCarriesTheTemplatesMessage) {
  expect_render_error(
      "{% if messages[0].role == 'system' %}{{ raise_exception('System role not "
      "supported') }}{% endif %}",
      {{"messages", {{{"role", "system"}, {"content", "x"}}}}}, ErrorCode::kInvalidArgument,
      "chat template: System role not supported");
}

TEST(JinjaErrors, RuntimeErrorsNameTheLine) {
  expect_render_error("a\n\n{{ 'x' + 1 }}", nlohmann::json::object(), ErrorCode::kInvalidArgument,
                      "chat template: can only concatenate str (not \"int\") to str at line 3");
  expect_render_error("{% for m in messages %}\n{{ m.content.text }}\n{% endfor %}",
                      {{"messages", {{{"role", "user"}}}}}, ErrorCode::kInvalidArgument,
                      "chat template: 'dict object' has no attribute 'content' at line 2");
  expect_render_error("{{ messages[0]['role'] }}", {{"messages", nlohmann::json::array()}},
                      ErrorCode::kInvalidArgument,
                      "chat template: list object has no element 0 at line 1");
  // Found only while rendering, but unsupported rather than wrong.
  expect_render_error("{{ x|map('xmlattr')|list }}", {{"x", {1}}}, ErrorCode::kUnsupported,
                      "chat template: unsupported filter 'xmlattr' at line 1");
  expect_render_error("{{ 2 ** 64 }}", nlohmann::json::object(), ErrorCode::kInvalidArgument,
                      "chat template: integer overflow (the result does not fit in 64 bits) at "
                      "line 1");
}

TEST(JinjaErrors, MacroRecursionIsBounded) {
  expect_render_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
                      nlohmann::json::object(), ErrorCode::kInvalidArgument,
                      "chat template: macro 'f' recursed more than 64 levels deep at line 1");
}

TEST(JinjaErrors, ContextMustBeAnObjectOfBoundedDepth) {
  const ChatTemplate tmpl("{{ x }}");
  try {
    tmpl.render(nlohmann::json::array());
    ADD_FAILURE() << "rendered";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(e.what(), HasSubstr("must be a JSON object"));
  }
  nlohmann::json deep = 1;
  for (int i = 0; i < 300; ++i) deep = nlohmann::json::array({deep});
  try {
    tmpl.render(nlohmann::json{{"x", deep}});
    ADD_FAILURE() << "rendered";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(e.what(), HasSubstr("nested more than 256 levels"));
  }
}

// ---- API ----

TEST(ChatTemplateApi, OrderedJsonKeepsPythonKeyOrder) {
  const ChatTemplate tmpl("{{ tool|tojson }}|{% for k, v in tool.items() %}{{ k }}{% endfor %}");
  const auto ordered = nlohmann::ordered_json::parse(R"({"tool": {"name": "f", "args": 1}})");
  EXPECT_EQ(tmpl.render(ordered), R"({"name": "f", "args": 1}|nameargs)");
  // nlohmann::json stores objects sorted by key, so that is the order the template sees.
  const auto sorted = nlohmann::json::parse(R"({"tool": {"name": "f", "args": 1}})");
  EXPECT_EQ(tmpl.render(sorted), R"({"args": 1, "name": "f"}|argsname)");
}

TEST(ChatTemplateApi, StrftimeNowUsesTheLocalClock) {
  const ChatTemplate tmpl("{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now('%d %b %Y') }}");
  const auto today = [] {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char buf[64];
    std::string out(buf, std::strftime(buf, sizeof(buf), "%Y-%m-%d|%d %b %Y", &local));
    return out;
  };
  const std::string before = today();
  const std::string out = tmpl.render(nlohmann::json::object());
  const std::string after = today();
  EXPECT_TRUE(out == before || out == after) << out;
  EXPECT_EQ(out.size(), std::string("2024-07-26|26 Jul 2024").size());
}

TEST(ChatTemplateApi, CopiesShareOneParseAndRenderConcurrently) {
  const ChatTemplate original(
      "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
      "{{ m.role }}:{{ m.content|trim }};{% endfor %}{{ ns.n }}");
  const ChatTemplate copy = original;  // NOLINT: the copy is the point
  EXPECT_EQ(copy.source(), original.source());
  nlohmann::json messages = nlohmann::json::array();
  std::string expected;
  for (int i = 0; i < 200; ++i) {
    messages.push_back({{"role", "user"}, {"content", " m" + std::to_string(i) + " "}});
    expected += "user:m" + std::to_string(i) + ";";
  }
  expected += "200";
  const nlohmann::json context = {{"messages", messages}};
  std::vector<std::string> results(8);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < results.size(); ++t) {
    threads.emplace_back([&, t] {
      const ChatTemplate& tmpl = t % 2 == 0 ? original : copy;
      for (int rep = 0; rep < 20; ++rep) results[t] = tmpl.render(context);
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& r : results) EXPECT_EQ(r, expected);
}

TEST(ChatTemplateApi, NamespaceStateIsPerRender) {
  const ChatTemplate tmpl(
      "{% set ns = namespace(seen=false) %}{% for m in messages %}{% if m.role == 'system' %}"
      "{% set ns.seen = true %}{% endif %}{% endfor %}{{ ns.seen }}");
  const nlohmann::json with_system = {{"messages", {{{"role", "system"}}}}};
  const nlohmann::json without = {{"messages", {{{"role", "user"}}}}};
  EXPECT_EQ(tmpl.render(with_system), "True");
  EXPECT_EQ(tmpl.render(without), "False");
}

}  // namespace
}  // namespace atom
