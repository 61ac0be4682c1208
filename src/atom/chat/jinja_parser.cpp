#include "atom/chat/jinja_parser.h"

#include <fmt/format.h>

#include <algorithm>
#include <initializer_list>
#include <string_view>

#include "atom/chat/jinja_builtins.h"

namespace atom::jinja {

namespace {

std::string describe(const Token& t) {
  switch (t.type) {
    case Tok::kData:
      return "template data";
    case Tok::kVarBegin:
      return "begin of print statement";
    case Tok::kVarEnd:
      return "end of print statement";
    case Tok::kBlockBegin:
      return "begin of statement block";
    case Tok::kBlockEnd:
      return "end of statement block";
    case Tok::kName:
    case Tok::kInt:
    case Tok::kFloat:
    case Tok::kOp:
      return "'" + t.text + "'";
    case Tok::kString:
      return "string";
    case Tok::kEof:
      return "end of template";
  }
  return "token";
}

std::string quote_list(const std::vector<std::string_view>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += " or ";
    out += fmt::format("'{}'", names[i]);
  }
  return out;
}

bool uses_name(const Expr* e, std::string_view name) {
  if (e == nullptr) return false;
  if (e->kind == ExprKind::kName && e->name == name) return true;
  for (const auto& c : e->children) {
    if (uses_name(c.get(), name)) return true;
  }
  for (const auto& kv : e->kwargs) {
    if (uses_name(kv.second.get(), name)) return true;
  }
  return false;
}

bool uses_name(const Body& body, std::string_view name) {
  for (const auto& s : body) {
    if (uses_name(s->expr.get(), name) || uses_name(s->cond.get(), name) ||
        uses_name(s->body, name) || uses_name(s->else_body, name)) {
      return true;
    }
    for (const auto& [cond, b] : s->branches) {
      if (uses_name(cond.get(), name) || uses_name(b, name)) return true;
    }
    for (const auto& v : s->values) {
      if (uses_name(v.get(), name)) return true;
    }
    for (const auto& d : s->defaults) {
      if (uses_name(d.get(), name)) return true;
    }
  }
  return false;
}

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : toks_(tokens) {}

  Body parse_template() {
    Body body = subparse({});
    if (cur().type != Tok::kEof) fail(cur().line, "unexpected " + describe(cur()));
    return body;
  }

 private:
  struct Guard {
    Guard(int& depth, int line) : depth_(depth) {
      if (++depth_ > kMaxNestingDepth) {
        syntax_error(line, fmt::format("template nested too deeply (limit {})", kMaxNestingDepth));
      }
    }
    ~Guard() { --depth_; }
    int& depth_;
  };

  struct OpenBlock {
    std::string_view tag;
    int line;
  };

  [[noreturn]] void fail(int line, const std::string& message) const {
    syntax_error(line, message);
  }

  const Token& cur() const { return toks_[pos_]; }
  const Token& look() const { return toks_[std::min(pos_ + 1, toks_.size() - 1)]; }
  const Token& next() {
    const Token& t = toks_[pos_];
    if (pos_ + 1 < toks_.size()) ++pos_;
    return t;
  }
  bool is_op(std::string_view op) const { return cur().type == Tok::kOp && cur().text == op; }
  bool is_name(std::string_view name) const {
    return cur().type == Tok::kName && cur().text == name;
  }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(std::string_view name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }
  void expect_op(std::string_view op) {
    if (!is_op(op)) fail(cur().line, fmt::format("expected '{}', got {}", op, describe(cur())));
    next();
  }
  void expect_name(std::string_view name) {
    if (!is_name(name))
      fail(cur().line, fmt::format("expected '{}', got {}", name, describe(cur())));
    next();
  }
  const Token& expect_type(Tok type, std::string_view what) {
    if (cur().type != type)
      fail(cur().line, fmt::format("expected {}, got {}", what, describe(cur())));
    return next();
  }

  ExprPtr make(ExprKind kind, int line, std::vector<ExprPtr> children = {}) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    e->children = std::move(children);
    fix_depth(*e);
    return e;
  }

  void fix_depth(Expr& e) {
    int d = 0;
    for (const auto& c : e.children) d = std::max(d, c ? c->depth : 0);
    for (const auto& kv : e.kwargs) d = std::max(d, kv.second->depth);
    e.depth = d + 1;
    if (e.depth > kMaxNestingDepth) {
      fail(e.line, fmt::format("expression nested too deeply (limit {})", kMaxNestingDepth));
    }
  }

  // ---- statements ----

  Body subparse(const std::vector<std::string_view>& end_tags) {
    Body body;
    while (cur().type != Tok::kEof) {
      const Token& t = cur();
      if (t.type == Tok::kData) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kData;
        s->line = t.line;
        s->text = t.text;
        body.push_back(std::move(s));
        next();
      } else if (t.type == Tok::kVarBegin) {
        next();
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kOutput;
        s->line = t.line;
        s->expr = parse_tuple(false, true, {}, false);
        expect_type(Tok::kVarEnd, "end of print statement");
        body.push_back(std::move(s));
      } else if (t.type == Tok::kBlockBegin) {
        next();
        if (cur().type == Tok::kName &&
            std::find(end_tags.begin(), end_tags.end(), cur().text) != end_tags.end()) {
          return body;
        }
        Body stmts = parse_statement();
        for (auto& s : stmts) body.push_back(std::move(s));
        expect_type(Tok::kBlockEnd, "end of statement block");
      } else {
        fail(t.line, "unexpected " + describe(t));
      }
    }
    if (!end_tags.empty()) {
      const OpenBlock& open = blocks_.back();
      fail(open.line, fmt::format("unterminated '{}' block (expected {} before the end of the "
                                  "template)",
                                  open.tag, quote_list(end_tags)));
    }
    return body;
  }

  Body parse_statements(const std::vector<std::string_view>& end_tags, bool drop_needle) {
    Guard guard(depth_, cur().line);
    skip_op(":");
    expect_type(Tok::kBlockEnd, "end of statement block");
    Body body = subparse(end_tags);
    if (drop_needle) next();
    return body;
  }

  StmtPtr new_stmt(StmtKind kind, int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = kind;
    s->line = line;
    return s;
  }

  Body parse_statement() {
    const Token& t = cur();
    if (t.type != Tok::kName) fail(t.line, "tag name expected, got " + describe(t));
    const std::string tag = t.text;
    Body out;
    if (tag == "for") {
      out.push_back(parse_for());
    } else if (tag == "if") {
      out.push_back(parse_if());
    } else if (tag == "set") {
      out.push_back(parse_set());
    } else if (tag == "macro") {
      out.push_back(parse_macro());
    } else if (tag == "with") {
      out.push_back(parse_with());
    } else if (tag == "filter") {
      out.push_back(parse_filter_block());
    } else if (tag == "generation") {
      const int line = next().line;
      blocks_.push_back({"generation", line});
      auto s = new_stmt(StmtKind::kScope, line);
      // The body renders as a separate function (a call block), out of reach of loop controls.
      const int saved_loops = loop_depth_;
      loop_depth_ = 0;
      s->body = parse_statements({"endgeneration"}, true);
      loop_depth_ = saved_loops;
      blocks_.pop_back();
      out.push_back(std::move(s));
    } else if (tag == "print") {
      next();
      while (cur().type != Tok::kBlockEnd) {
        if (!out.empty()) expect_op(",");
        auto s = new_stmt(StmtKind::kOutput, cur().line);
        s->expr = parse_expression(true);
        out.push_back(std::move(s));
      }
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) fail(t.line, fmt::format("'{}' outside of a for loop", tag));
      out.push_back(new_stmt(tag == "break" ? StmtKind::kBreak : StmtKind::kContinue, next().line));
    } else {
      static constexpr std::string_view kEndTags[] = {
          "elif",      "else",    "endif",         "endfor", "endset",   "endmacro",     "endwith",
          "endfilter", "endcall", "endgeneration", "endraw", "endblock", "endautoescape"};
      const bool is_end =
          std::find(std::begin(kEndTags), std::end(kEndTags), tag) != std::end(kEndTags);
      if (is_end && !blocks_.empty()) {
        fail(t.line, fmt::format("unexpected tag '{}' (the innermost open block is '{}' from "
                                 "line {})",
                                 tag, blocks_.back().tag, blocks_.back().line));
      }
      if (is_end) fail(t.line, fmt::format("unexpected tag '{}'", tag));
      fail(t.line, fmt::format("unsupported tag '{}'", tag));
    }
    return out;
  }

  StmtPtr parse_for() {
    const int line = next().line;
    blocks_.push_back({"for", line});
    auto s = new_stmt(StmtKind::kFor, line);
    s->target = parse_assign_target(true, false, {"in"}, false);
    expect_name("in");
    s->expr = parse_tuple(false, false, {"recursive"}, false);
    if (skip_name("if")) s->cond = parse_expression(true);
    if (is_name("recursive")) fail(cur().line, "unsupported recursive for loop");
    ++loop_depth_;
    s->body = parse_statements({"endfor", "else"}, false);
    --loop_depth_;
    if (next().text == "else") s->else_body = parse_statements({"endfor"}, true);
    blocks_.pop_back();
    return s;
  }

  StmtPtr parse_if() {
    const int line = next().line;
    blocks_.push_back({"if", line});
    auto s = new_stmt(StmtKind::kIf, line);
    while (true) {
      ExprPtr cond = parse_tuple(false, false, {}, false);
      Body body = parse_statements({"elif", "else", "endif"}, false);
      s->branches.emplace_back(std::move(cond), std::move(body));
      const std::string tag = next().text;
      if (tag == "elif") continue;
      if (tag == "else") s->branches.emplace_back(nullptr, parse_statements({"endif"}, true));
      break;
    }
    blocks_.pop_back();
    return s;
  }

  StmtPtr parse_set() {
    const int line = next().line;
    auto target = parse_assign_target(true, false, {}, true);
    if (skip_op("=")) {
      auto s = new_stmt(StmtKind::kSet, line);
      s->target = std::move(target);
      s->expr = parse_tuple(false, true, {}, false);
      return s;
    }
    blocks_.push_back({"set", line});
    auto s = new_stmt(StmtKind::kSetBlock, line);
    s->target = std::move(target);
    if (is_op("|")) s->expr = parse_filter(nullptr, false);
    s->body = parse_statements({"endset"}, true);
    blocks_.pop_back();
    return s;
  }

  StmtPtr parse_macro() {
    const int line = next().line;
    blocks_.push_back({"macro", line});
    auto s = new_stmt(StmtKind::kMacro, line);
    s->name = expect_type(Tok::kName, "macro name").text;
    expect_op("(");
    while (!is_op(")")) {
      if (!s->params.empty()) expect_op(",");
      s->params.push_back(expect_type(Tok::kName, "parameter name").text);
      if (skip_op("=")) {
        s->defaults.push_back(parse_expression(true));
      } else if (!s->defaults.empty()) {
        fail(cur().line, "non-default argument follows default argument");
      }
    }
    expect_op(")");
    // A macro body is its own function: loop controls there cannot reach an enclosing loop.
    const int saved_loops = loop_depth_;
    loop_depth_ = 0;
    s->body = parse_statements({"endmacro"}, true);
    loop_depth_ = saved_loops;
    s->catch_varargs = uses_name(s->body, "varargs");
    s->catch_kwargs = uses_name(s->body, "kwargs");
    blocks_.pop_back();
    return s;
  }

  StmtPtr parse_with() {
    const int line = next().line;
    blocks_.push_back({"with", line});
    auto s = new_stmt(StmtKind::kWith, line);
    while (cur().type != Tok::kBlockEnd) {
      if (!s->targets.empty()) expect_op(",");
      s->targets.push_back(parse_assign_target(true, false, {}, false));
      expect_op("=");
      s->values.push_back(parse_expression(true));
    }
    s->body = parse_statements({"endwith"}, true);
    blocks_.pop_back();
    return s;
  }

  StmtPtr parse_filter_block() {
    const int line = next().line;
    blocks_.push_back({"filter", line});
    auto s = new_stmt(StmtKind::kFilterBlock, line);
    s->expr = parse_filter(nullptr, true);
    s->body = parse_statements({"endfilter"}, true);
    blocks_.pop_back();
    return s;
  }

  static bool can_assign(const Expr& e) {
    if (e.kind == ExprKind::kName || e.kind == ExprKind::kNSRef) return true;
    if (e.kind != ExprKind::kTuple) return false;
    return std::all_of(e.children.begin(), e.children.end(),
                       [](const ExprPtr& c) { return can_assign(*c); });
  }

  ExprPtr parse_assign_target(bool with_tuple, bool name_only,
                              const std::vector<std::string_view>& extra_end, bool with_namespace) {
    ExprPtr target;
    if (name_only) {
      const Token& t = expect_type(Tok::kName, "name");
      target = make(ExprKind::kName, t.line);
      target->name = t.text;
    } else if (with_tuple) {
      target = parse_tuple(true, true, extra_end, false, with_namespace);
    } else {
      target = parse_primary(with_namespace);
    }
    if (!can_assign(*target)) fail(target->line, "can't assign to this expression");
    return target;
  }

  // ---- expressions ----

  bool is_tuple_end(const std::vector<std::string_view>& extra_end) const {
    const Token& t = cur();
    if (t.type == Tok::kVarEnd || t.type == Tok::kBlockEnd ||
        (t.type == Tok::kOp && t.text == ")")) {
      return true;
    }
    return t.type == Tok::kName &&
           std::find(extra_end.begin(), extra_end.end(), t.text) != extra_end.end();
  }

  ExprPtr parse_tuple(bool simplified, bool with_condexpr,
                      const std::vector<std::string_view>& extra_end, bool explicit_parens,
                      bool with_namespace = false) {
    const int line = cur().line;
    std::vector<ExprPtr> args;
    bool is_tuple = false;
    while (true) {
      if (!args.empty()) expect_op(",");
      if (is_tuple_end(extra_end)) break;
      if (simplified) {
        args.push_back(parse_primary(with_namespace));
      } else {
        args.push_back(parse_expression(with_condexpr));
      }
      if (is_op(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!args.empty()) return std::move(args[0]);
      if (!explicit_parens) fail(cur().line, "expected an expression, got " + describe(cur()));
    }
    return make(ExprKind::kTuple, line, std::move(args));
  }

  ExprPtr parse_expression(bool with_condexpr) {
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    Guard guard(depth_, cur().line);
    ExprPtr expr1 = parse_or();
    while (is_name("if")) {
      const int line = next().line;
      ExprPtr expr2 = parse_or();
      ExprPtr expr3 = skip_name("else") ? parse_condexpr() : nullptr;
      std::vector<ExprPtr> c;
      c.push_back(std::move(expr1));
      c.push_back(std::move(expr2));
      c.push_back(std::move(expr3));
      expr1 = make(ExprKind::kCondExpr, line, std::move(c));
    }
    return expr1;
  }

  ExprPtr binary(ExprKind kind, int line, ExprPtr left, ExprPtr right, std::string op = {}) {
    std::vector<ExprPtr> c;
    c.push_back(std::move(left));
    c.push_back(std::move(right));
    auto e = make(kind, line, std::move(c));
    e->name = std::move(op);
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const int line = next().line;
      left = binary(ExprKind::kOr, line, std::move(left), parse_and());
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const int line = next().line;
      left = binary(ExprKind::kAnd, line, std::move(left), parse_not());
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      Guard guard(depth_, cur().line);
      const int line = next().line;
      std::vector<ExprPtr> c;
      c.push_back(parse_not());
      return make(ExprKind::kNot, line, std::move(c));
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const int line = cur().line;
    ExprPtr expr = parse_math1();
    std::vector<ExprPtr> operands;
    std::vector<std::string> ops;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::kOp && (t.text == "==" || t.text == "!=" || t.text == "<" ||
                                 t.text == "<=" || t.text == ">" || t.text == ">=")) {
        ops.push_back(next().text);
      } else if (is_name("in")) {
        next();
        ops.push_back("in");
      } else if (is_name("not") && look().type == Tok::kName && look().text == "in") {
        next();
        next();
        ops.push_back("notin");
      } else {
        break;
      }
      operands.push_back(parse_math1());
    }
    if (ops.empty()) return expr;
    operands.insert(operands.begin(), std::move(expr));
    auto e = make(ExprKind::kCompare, line, std::move(operands));
    e->ops = std::move(ops);
    return e;
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      left = binary(ExprKind::kBinary, t.line, std::move(left), parse_concat(), t.text);
    }
    return left;
  }

  ExprPtr parse_concat() {
    const int line = cur().line;
    ExprPtr left = parse_math2();
    while (is_op("~")) {
      next();
      left = binary(ExprKind::kBinary, line, std::move(left), parse_math2(), "~");
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      left = binary(ExprKind::kBinary, t.line, std::move(left), parse_pow(), t.text);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      const int line = next().line;
      left = binary(ExprKind::kBinary, line, std::move(left), parse_unary(true), "**");
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    Guard guard(depth_, cur().line);
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      const Token& t = next();
      std::vector<ExprPtr> c;
      c.push_back(parse_unary(false));
      node = make(t.text == "-" ? ExprKind::kNeg : ExprKind::kPos, t.line, std::move(c));
    } else {
      node = parse_primary(false);
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary(bool with_namespace) {
    const Token& t = cur();
    if (t.type == Tok::kName) {
      next();
      if (t.text == "true" || t.text == "false" || t.text == "True" || t.text == "False") {
        auto e = make(ExprKind::kConst, t.line);
        e->value = Value::boolean(t.text == "true" || t.text == "True");
        return e;
      }
      if (t.text == "none" || t.text == "None") {
        auto e = make(ExprKind::kConst, t.line);
        e->value = Value::none();
        return e;
      }
      if (with_namespace && is_op(".")) {
        next();
        auto e = make(ExprKind::kNSRef, t.line);
        e->name = t.text;
        e->attr = expect_type(Tok::kName, "attribute name").text;
        return e;
      }
      auto e = make(ExprKind::kName, t.line);
      e->name = t.text;
      return e;
    }
    if (t.type == Tok::kString) {
      std::string s;
      const int line = t.line;
      while (cur().type == Tok::kString) s += next().text;
      auto e = make(ExprKind::kConst, line);
      e->value = Value::string(std::move(s));
      return e;
    }
    if (t.type == Tok::kInt || t.type == Tok::kFloat) {
      next();
      auto e = make(ExprKind::kConst, t.line);
      e->value = t.type == Tok::kInt ? Value::integer(t.int_value) : Value::number(t.float_value);
      return e;
    }
    if (is_op("(")) {
      next();
      ExprPtr e = parse_tuple(false, true, {}, true);
      expect_op(")");
      return e;
    }
    if (is_op("[")) return parse_list();
    if (is_op("{")) return parse_dict();
    fail(t.line, "unexpected " + describe(t));
  }

  ExprPtr parse_list() {
    const int line = next().line;
    std::vector<ExprPtr> items;
    while (!is_op("]")) {
      if (!items.empty()) expect_op(",");
      if (is_op("]")) break;
      items.push_back(parse_expression(true));
    }
    expect_op("]");
    return make(ExprKind::kList, line, std::move(items));
  }

  ExprPtr parse_dict() {
    const int line = next().line;
    std::vector<ExprPtr> items;
    while (!is_op("}")) {
      if (!items.empty()) expect_op(",");
      if (is_op("}")) break;
      items.push_back(parse_expression(true));
      expect_op(":");
      items.push_back(parse_expression(true));
    }
    expect_op("}");
    return make(ExprKind::kDict, line, std::move(items));
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        node = parse_subscript(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) {
        node = parse_filter(std::move(node), false);
      } else if (is_name("is")) {
        node = parse_test(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr node) {
    const Token& t = next();
    if (t.text == ".") {
      const Token& attr = cur();
      if (attr.type == Tok::kName) {
        next();
        std::vector<ExprPtr> c;
        c.push_back(std::move(node));
        auto e = make(ExprKind::kGetattr, attr.line, std::move(c));
        e->name = attr.text;
        return e;
      }
      if (attr.type != Tok::kInt) fail(attr.line, "expected name or number after '.'");
      next();
      auto key = make(ExprKind::kConst, attr.line);
      key->value = Value::integer(attr.int_value);
      return binary(ExprKind::kGetitem, attr.line, std::move(node), std::move(key));
    }
    std::vector<ExprPtr> args;
    while (!is_op("]")) {
      if (!args.empty()) expect_op(",");
      args.push_back(parse_subscribed());
    }
    expect_op("]");
    ExprPtr key;
    if (args.size() == 1) {
      key = std::move(args[0]);
    } else {
      key = make(ExprKind::kTuple, t.line, std::move(args));
    }
    return binary(ExprKind::kGetitem, t.line, std::move(node), std::move(key));
  }

  ExprPtr parse_subscribed() {
    const int line = cur().line;
    std::vector<ExprPtr> args;
    if (is_op(":")) {
      next();
      args.push_back(nullptr);
    } else {
      ExprPtr node = parse_expression(true);
      if (!is_op(":")) return node;
      next();
      args.push_back(std::move(node));
    }
    if (is_op(":")) {
      args.push_back(nullptr);
    } else if (!is_op("]") && !is_op(",")) {
      args.push_back(parse_expression(true));
    } else {
      args.push_back(nullptr);
    }
    if (is_op(":")) {
      next();
      if (!is_op("]") && !is_op(",")) {
        args.push_back(parse_expression(true));
      } else {
        args.push_back(nullptr);
      }
    } else {
      args.push_back(nullptr);
    }
    return make(ExprKind::kSlice, line, std::move(args));
  }

  // Parses "(args, key=value)" into e's children (after any already there) and kwargs.
  void parse_call_args(Expr& e) {
    expect_op("(");
    bool require_comma = false;
    while (!is_op(")")) {
      if (require_comma) {
        expect_op(",");
        if (is_op(")")) break;
      }
      if (is_op("*") || is_op("**"))
        fail(cur().line, "unsupported '*args' or '**kwargs' in a call");
      if (cur().type == Tok::kName && look().type == Tok::kOp && look().text == "=") {
        std::string key = next().text;
        next();
        e.kwargs.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!e.kwargs.empty()) fail(cur().line, "positional argument follows keyword argument");
        e.children.push_back(parse_expression(true));
      }
      require_comma = true;
    }
    expect_op(")");
    fix_depth(e);
  }

  ExprPtr parse_call(ExprPtr node) {
    const int line = cur().line;
    std::vector<ExprPtr> c;
    c.push_back(std::move(node));
    auto e = make(ExprKind::kCall, line, std::move(c));
    parse_call_args(*e);
    return e;
  }

  std::string dotted_name() {
    std::string name = expect_type(Tok::kName, "name").text;
    while (is_op(".")) {
      next();
      name += "." + expect_type(Tok::kName, "name").text;
    }
    return name;
  }

  ExprPtr parse_filter(ExprPtr node, bool start_inline) {
    while (is_op("|") || start_inline) {
      if (!start_inline) next();
      start_inline = false;
      const int line = cur().line;
      std::string name = dotted_name();
      std::vector<ExprPtr> c;
      c.push_back(std::move(node));
      auto e = make(ExprKind::kFilter, line, std::move(c));
      e->filter = find_filter(name);
      if (e->filter == nullptr) fail(line, fmt::format("unsupported filter '{}'", name));
      e->name = std::move(name);
      if (is_op("(")) parse_call_args(*e);
      node = std::move(e);
    }
    return node;
  }

  ExprPtr parse_test(ExprPtr node) {
    const int line = next().line;  // 'is'
    const bool negated = skip_name("not");
    std::string name = dotted_name();
    std::vector<ExprPtr> c;
    c.push_back(std::move(node));
    auto e = make(ExprKind::kTest, line, std::move(c));
    e->test = find_test(name);
    if (e->test == nullptr) fail(line, fmt::format("unsupported test '{}'", name));
    e->name = std::move(name);
    const Token& t = cur();
    const bool arg_start = t.type == Tok::kName || t.type == Tok::kString || t.type == Tok::kInt ||
                           t.type == Tok::kFloat ||
                           (t.type == Tok::kOp && (t.text == "[" || t.text == "{"));
    if (is_op("(")) {
      parse_call_args(*e);
    } else if (arg_start && !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail(t.line, "cannot chain multiple tests with 'is'");
      Guard guard(depth_, t.line);
      e->children.push_back(parse_postfix(parse_primary(false)));
      fix_depth(*e);
    }
    if (!negated) return e;
    std::vector<ExprPtr> n;
    n.push_back(std::move(e));
    return make(ExprKind::kNot, line, std::move(n));
  }

  const std::vector<Token>& toks_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  std::vector<OpenBlock> blocks_;
};

}  // namespace

Body parse(const std::vector<Token>& tokens) { return Parser(tokens).parse_template(); }

}  // namespace atom::jinja
