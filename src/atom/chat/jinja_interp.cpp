#include "atom/chat/jinja_interp.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "atom/chat/jinja_builtins.h"
#include "atom/chat/py_str.h"

namespace atom::jinja {

namespace {

// Macro recursion is bounded well below what the stack of a rendering thread can hold.
constexpr int kMaxCallDepth = 64;
// A repeated string or list (`'x' * n`) larger than this is refused rather than allocated.
constexpr int64_t kMaxRepeatBytes = int64_t{256} << 20;

std::string object_type_repr(const Value& obj) {
  if (obj.is_none()) return "None";
  return type_name(obj) + " object";
}

Value no_attribute(const Value& obj, const std::string& name) {
  return Value::undefined(
      fmt::format("'{}' has no attribute {}", object_type_repr(obj), py::str_repr(name)));
}

Value no_element(const Value& obj, const Value& key) {
  return Value::undefined(fmt::format("{} has no element {}", object_type_repr(obj), repr(key)));
}

bool is_dunder(const std::string& name) {
  return name.size() > 4 && name.starts_with("__") && name.ends_with("__");
}

Value unsafe(const Value& obj, const std::string& name) {
  return Value::undefined(fmt::format("access to attribute {} of {} object is unsafe.",
                                      py::str_repr(name), py::str_repr(type_name(obj))));
}

[[noreturn]] void overflow() { fail("integer overflow (the result does not fit in 64 bits)"); }

// Python ints are unbounded; atom's are 64-bit and overflow is an error, never a wrap.
int64_t add_checked(int64_t x, int64_t y) {
  int64_t r = 0;
  if (__builtin_add_overflow(x, y, &r)) overflow();
  return r;
}
int64_t sub_checked(int64_t x, int64_t y) {
  int64_t r = 0;
  if (__builtin_sub_overflow(x, y, &r)) overflow();
  return r;
}
int64_t mul_checked(int64_t x, int64_t y) {
  int64_t r = 0;
  if (__builtin_mul_overflow(x, y, &r)) overflow();
  return r;
}

int64_t int_pow(int64_t base, int64_t exp) {
  int64_t result = 1;
  while (exp > 0) {
    if (exp & 1) result = mul_checked(result, base);
    exp >>= 1;
    if (exp > 0) base = mul_checked(base, base);
  }
  return result;
}

Value repeat(const Value& seq, int64_t n) {
  if (seq.is_string()) {
    if (n <= 0) return Value::string("");
    const int64_t bytes = static_cast<int64_t>(seq.str().size());
    if (bytes > 0 && n > kMaxRepeatBytes / bytes) fail("string repetition result too large");
    std::string out;
    out.reserve(seq.str().size() * n);
    for (int64_t i = 0; i < n; ++i) out += seq.str();
    return Value::string(std::move(out));
  }
  List out;
  if (n > 0) {
    const int64_t bytes = static_cast<int64_t>(seq.items().size() * sizeof(Value));
    if (bytes > 0 && n > kMaxRepeatBytes / bytes) fail("list repetition result too large");
    for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.items().begin(), seq.items().end());
  }
  return seq.kind() == Kind::kTuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
}

[[noreturn]] void unsupported_operands(const std::string& op, const Value& a, const Value& b) {
  fail(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a),
                   type_name(b)));
}

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  const bool floats = a.kind() == Kind::kFloat || b.kind() == Kind::kFloat;
  if (op == "/") {
    if (b.as_float() == 0) fail(floats ? "float division by zero" : "division by zero");
    return Value::number(a.as_float() / b.as_float());
  }
  if (floats) {
    const double x = a.as_float();
    const double y = b.as_float();
    if (op == "+") return Value::number(x + y);
    if (op == "-") return Value::number(x - y);
    if (op == "*") return Value::number(x * y);
    if (op == "**") {
      if (x == 0 && y < 0) fail("0.0 cannot be raised to a negative power");
      if (x < 0 && y != std::floor(y)) {
        fail_unsupported("unsupported complex result of a negative number to a fractional power");
      }
      const double r = std::pow(x, y);
      if (std::isinf(r) && std::isfinite(x) && std::isfinite(y)) {
        fail("(34, 'Numerical result out of range')");
      }
      return Value::number(r);
    }
    // Python's float divmod: the remainder takes the divisor's sign.
    if (y == 0) fail(op == "%" ? "float modulo" : "float floor division by zero");
    double mod = std::fmod(x, y);
    double div = (x - mod) / y;
    if (mod != 0) {
      if ((y < 0) != (mod < 0)) {
        mod += y;
        div -= 1.0;
      }
    } else {
      mod = std::copysign(0.0, y);
    }
    if (op == "%") return Value::number(mod);
    double floordiv;
    if (div != 0) {
      floordiv = std::floor(div);
      if (div - floordiv > 0.5) floordiv += 1.0;
    } else {
      floordiv = std::copysign(0.0, x / y);
    }
    return Value::number(floordiv);
  }
  const int64_t x = a.as_int();
  const int64_t y = b.as_int();
  if (op == "+") return Value::integer(add_checked(x, y));
  if (op == "-") return Value::integer(sub_checked(x, y));
  if (op == "*") return Value::integer(mul_checked(x, y));
  if (op == "**") {
    if (y < 0) {
      if (x == 0) fail("0.0 cannot be raised to a negative power");
      return Value::number(std::pow(static_cast<double>(x), static_cast<double>(y)));
    }
    return Value::integer(int_pow(x, y));
  }
  if (y == 0) fail(op == "%" ? "integer modulo by zero" : "integer division or modulo by zero");
  if (x == std::numeric_limits<int64_t>::min() && y == -1) {
    if (op == "%") return Value::integer(0);
    overflow();
  }
  int64_t q = x / y;
  int64_t m = x % y;
  if (m != 0 && ((m < 0) != (y < 0))) {
    m += y;
    q -= 1;
  }
  return Value::integer(op == "%" ? m : q);
}

int64_t normalize_index(int64_t index, int64_t size) { return index < 0 ? index + size : index; }

// Python slice semantics: start/stop/step None or ints, clamped per slice.indices().
std::vector<int64_t> slice_indices(int64_t len, const Value& start_v, const Value& stop_v,
                                   const Value& step_v) {
  const auto as_index = [](const Value& v) -> std::optional<int64_t> {
    if (v.is_none()) return std::nullopt;
    if (!v.is_int_like()) {
      fail("slice indices must be integers or None or have an __index__ method");
    }
    return v.as_int();
  };
  const int64_t step = as_index(step_v).value_or(1);
  if (step == 0) fail("slice step cannot be zero");
  const int64_t lower = step < 0 ? -1 : 0;
  const int64_t upper = step < 0 ? len - 1 : len;
  const auto clamp = [&](std::optional<int64_t> v, int64_t def) {
    if (!v) return def;
    int64_t x = *v;
    if (x < 0) {
      x += len;
      if (x < lower) x = lower;
    } else if (x > upper) {
      x = upper;
    }
    return x;
  };
  const int64_t start = clamp(as_index(start_v), step < 0 ? upper : lower);
  const int64_t stop = clamp(as_index(stop_v), step < 0 ? lower : upper);
  std::vector<int64_t> out;
  if (step > 0) {
    for (int64_t i = start; i < stop; i += step) out.push_back(i);
  } else {
    for (int64_t i = start; i > stop; i += step) out.push_back(i);
  }
  return out;
}

Value loop_attribute(const Value& obj, const std::string& name) {
  const LoopInfo& info = obj.loop_info();
  const auto& items = *info.shared->items;
  const int64_t n = static_cast<int64_t>(items.size());
  const int64_t i = info.index0;
  if (name == "index") return Value::integer(i + 1);
  if (name == "index0") return Value::integer(i);
  if (name == "revindex") return Value::integer(n - i);
  if (name == "revindex0") return Value::integer(n - i - 1);
  if (name == "first") return Value::boolean(i == 0);
  if (name == "last") return Value::boolean(i == n - 1);
  if (name == "length") return Value::integer(n);
  if (name == "depth") return Value::integer(info.shared->depth0 + 1);
  if (name == "depth0") return Value::integer(info.shared->depth0);
  if (name == "previtem") {
    return i > 0 ? items[i - 1] : Value::undefined("there is no previous item");
  }
  if (name == "nextitem") {
    return i + 1 < n ? items[i + 1] : Value::undefined("there is no next item");
  }
  if (auto m = method(obj, name)) return *m;
  return no_attribute(obj, name);
}

}  // namespace

const Value* Scope::find(std::string_view name) const {
  for (const auto& [k, v] : vars) {
    if (k == name) return &v;
  }
  return nullptr;
}

void Scope::set(const std::string& name, Value value) {
  for (auto& [k, v] : vars) {
    if (k == name) {
      v = std::move(value);
      return;
    }
  }
  vars.emplace_back(name, std::move(value));
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") return Value::string(to_str(a) + to_str(b));
  if (a.is_undefined()) fail(a.undefined_message());
  if (b.is_undefined()) fail(b.undefined_message());
  if (a.is_number() && b.is_number()) return arithmetic(op, a, b);
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value::string(a.str() + b.str());
    if (a.is_sequence() && a.kind() == b.kind()) {
      List out = a.items();
      out.insert(out.end(), b.items().begin(), b.items().end());
      return a.kind() == Kind::kTuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
    }
    if (a.is_string() || a.is_sequence()) {
      fail(fmt::format("can only concatenate {} (not \"{}\") to {}", type_name(a), type_name(b),
                       type_name(a)));
    }
  }
  if (op == "*") {
    if ((a.is_string() || a.is_sequence()) && b.is_int_like()) return repeat(a, b.as_int());
    if ((b.is_string() || b.is_sequence()) && a.is_int_like()) return repeat(b, a.as_int());
    if (a.is_string() || a.is_sequence()) {
      fail(fmt::format("can't multiply sequence by non-int of type '{}'", type_name(b)));
    }
  }
  if (op == "%" && a.is_string()) {
    fail_unsupported("unsupported printf-style string formatting ('...' % value)");
  }
  unsupported_operands(op, a, b);
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Kind::kString:
      if (!item.is_string()) {
        fail(fmt::format("'in <string>' requires string as left operand, not {}", type_name(item)));
      }
      return container.str().find(item.str()) != std::string::npos;
    case Kind::kList:
    case Kind::kTuple:
      for (const Value& v : container.items()) {
        if (equals(v, item)) return true;
      }
      return false;
    case Kind::kDict:
      if (item.kind() == Kind::kList || item.kind() == Kind::kDict) {
        fail(fmt::format("unhashable type: '{}'", type_name(item)));
      }
      return container.dict().find(item) != nullptr;
    case Kind::kUndefined:
      return false;
    case Kind::kIterator: {
      IterState& state = container.iter_state();
      while (state.pos < state.items.size()) {
        if (equals(state.items[state.pos++], item)) return true;
      }
      return false;
    }
    default:
      fail(fmt::format("argument of type '{}' is not iterable", type_name(container)));
  }
}

bool compare(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  if (a.is_undefined()) fail(a.undefined_message());
  if (b.is_undefined()) fail(b.undefined_message());
  const auto apply = [&op](auto x, auto y) {
    if (op == "<") return x < y;
    if (op == "<=") return x <= y;
    if (op == ">") return x > y;
    return x >= y;
  };
  if (a.is_number() && b.is_number()) {
    if (a.kind() == Kind::kFloat || b.kind() == Kind::kFloat) {
      return apply(a.as_float(), b.as_float());
    }
    return apply(a.as_int(), b.as_int());
  }
  if (a.is_string() && b.is_string()) return apply(a.str(), b.str());
  if (a.is_sequence() && a.kind() == b.kind()) {
    const List& x = a.items();
    const List& y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!equals(x[i], y[i])) return compare(op, x[i], y[i]);
    }
    return apply(x.size(), y.size());
  }
  fail(fmt::format("'{}' not supported between instances of '{}' and '{}'", op, type_name(a),
                   type_name(b)));
}

Interp::Interp(const Dict& context) {
  globals_.vars = make_globals();
  top_ = new_scope(&globals_);
  for (const auto& [k, v] : context.items) {
    if (k.is_string()) top_->set(k.str(), v);
  }
}

Scope* Interp::new_scope(Scope* parent) {
  scopes_.emplace_back();
  scopes_.back().parent = parent;
  return &scopes_.back();
}

std::string Interp::render(const Body& body) {
  std::string out;
  exec_body(body, top_, out);
  return out;
}

Interp::Flow Interp::exec_body(const Body& body, Scope* scope, std::string& out) {
  for (const auto& stmt : body) {
    const Flow flow = exec(*stmt, scope, out);
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

Interp::Flow Interp::exec(const Stmt& stmt, Scope* scope, std::string& out) {
  line_ = stmt.line;
  switch (stmt.kind) {
    case StmtKind::kData:
      out += stmt.text;
      return Flow::kNormal;
    case StmtKind::kOutput:
      out += to_str(eval(*stmt.expr, scope));
      return Flow::kNormal;
    case StmtKind::kIf:
      for (const auto& [cond, body] : stmt.branches) {
        if (cond == nullptr || truthy(eval(*cond, scope))) return exec_body(body, scope, out);
      }
      return Flow::kNormal;
    case StmtKind::kFor:
      return exec_for(stmt, scope, out);
    case StmtKind::kSet:
      assign(*stmt.target, eval(*stmt.expr, scope), scope);
      return Flow::kNormal;
    case StmtKind::kSetBlock: {
      std::string buf;
      exec_body(stmt.body, new_scope(scope), buf);
      Value value = Value::string(std::move(buf));
      if (stmt.expr) value = filter_chain(*stmt.expr, value, scope);
      line_ = stmt.line;
      assign(*stmt.target, std::move(value), scope);
      return Flow::kNormal;
    }
    case StmtKind::kMacro: {
      const Stmt* macro = &stmt;
      scope->set(stmt.name, Value::callable(stmt.name, [macro, scope](Interp& in, CallArgs& a) {
                   return in.call_macro(*macro, scope, a);
                 }));
      return Flow::kNormal;
    }
    case StmtKind::kBreak:
      return Flow::kBreak;
    case StmtKind::kContinue:
      return Flow::kContinue;
    case StmtKind::kWith: {
      std::vector<Value> values;
      for (const auto& v : stmt.values) values.push_back(eval(*v, scope));
      Scope* inner = new_scope(scope);
      for (size_t i = 0; i < values.size(); ++i) assign(*stmt.targets[i], values[i], inner);
      return exec_body(stmt.body, inner, out);
    }
    case StmtKind::kFilterBlock: {
      std::string buf;
      const Flow flow = exec_body(stmt.body, new_scope(scope), buf);
      out += to_str(filter_chain(*stmt.expr, Value::string(std::move(buf)), scope));
      return flow;
    }
    case StmtKind::kScope:
      return exec_body(stmt.body, new_scope(scope), out);
  }
  return Flow::kNormal;
}

Interp::Flow Interp::exec_for(const Stmt& stmt, Scope* scope, std::string& out) {
  List items = iterate(eval(*stmt.expr, scope));
  if (stmt.cond) {
    // `for x in xs if cond` filters before iterating, so loop.length/last count kept items only.
    List kept;
    for (Value& item : items) {
      Scope* s = new_scope(scope);
      assign(*stmt.target, item, s);
      if (truthy(eval(*stmt.cond, s))) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    // The else body runs outside this loop: its break/continue belong to an enclosing loop.
    return exec_body(stmt.else_body, new_scope(scope), out);
  }
  auto shared = std::make_shared<LoopShared>();
  shared->items = std::make_shared<const List>(std::move(items));
  const int64_t n = static_cast<int64_t>(shared->items->size());
  for (int64_t i = 0; i < n; ++i) {
    Scope* s = new_scope(scope);
    assign(*stmt.target, (*shared->items)[i], s);
    s->set("loop", Value::loop(LoopInfo{shared, i}));
    if (exec_body(stmt.body, s, out) == Flow::kBreak) break;
  }
  return Flow::kNormal;
}

void Interp::assign(const Expr& target, Value value, Scope* scope) {
  switch (target.kind) {
    case ExprKind::kName:
      scope->set(target.name, std::move(value));
      return;
    case ExprKind::kNSRef: {
      const Value* ns = nullptr;
      for (Scope* s = scope; s != nullptr && ns == nullptr; s = s->parent)
        ns = s->find(target.name);
      if (ns == nullptr || ns->kind() != Kind::kNamespace) {
        fail("cannot assign attribute on non-namespace object");
      }
      if (target.attr.starts_with("_")) fail(namespace_underscore_message(target.attr));
      ns->ns().attrs.set(Value::string(target.attr), std::move(value));
      return;
    }
    case ExprKind::kTuple: {
      const List values = iterate(value);
      const size_t n = target.children.size();
      if (values.size() > n) fail(fmt::format("too many values to unpack (expected {})", n));
      if (values.size() < n) {
        fail(fmt::format("not enough values to unpack (expected {}, got {})", n, values.size()));
      }
      for (size_t i = 0; i < n; ++i) assign(*target.children[i], values[i], scope);
      return;
    }
    default:
      fail("cannot assign to this expression");
  }
}

Value Interp::call_macro(const Stmt& macro, Scope* scope, CallArgs& args) {
  if (call_depth_ >= kMaxCallDepth) {
    fail(fmt::format("macro '{}' recursed more than {} levels deep", macro.name, kMaxCallDepth));
  }
  struct DepthGuard {
    explicit DepthGuard(int& d) : d_(d) { ++d_; }
    ~DepthGuard() { --d_; }
    int& d_;
  } guard(call_depth_);

  const size_t n = macro.params.size();
  const size_t first_default = n - macro.defaults.size();
  if (args.args.size() > n && !macro.catch_varargs) {
    fail(fmt::format("macro '{}' takes not more than {} argument(s)", macro.name, n));
  }
  Scope* s = new_scope(scope);
  for (size_t i = 0; i < n; ++i) {
    const std::string& param = macro.params[i];
    if (i < args.args.size()) {
      s->set(param, args.args[i]);
      continue;
    }
    auto it = std::find_if(args.kwargs.begin(), args.kwargs.end(),
                           [&](const auto& kv) { return kv.first == param; });
    if (it != args.kwargs.end()) {
      s->set(param, std::move(it->second));
      args.kwargs.erase(it);
    } else if (i >= first_default) {
      s->set(param, eval(*macro.defaults[i - first_default], s));
    } else {
      s->set(param, Value::undefined(fmt::format("parameter '{}' was not provided", param)));
    }
  }
  if (macro.catch_kwargs) {
    Dict kw;
    for (auto& [k, v] : args.kwargs) kw.set(Value::string(k), std::move(v));
    s->set("kwargs", Value::dict(std::move(kw)));
  } else if (!args.kwargs.empty()) {
    fail(fmt::format("macro '{}' takes no keyword argument '{}'", macro.name,
                     args.kwargs.front().first));
  }
  if (macro.catch_varargs) {
    List rest;
    for (size_t i = n; i < args.args.size(); ++i) rest.push_back(args.args[i]);
    s->set("varargs", Value::tuple(std::move(rest)));
  }
  std::string out;
  exec_body(macro.body, s, out);
  return Value::string(std::move(out));
}

Value Interp::eval(const Expr& e, Scope* scope) {
  line_ = e.line;
  switch (e.kind) {
    case ExprKind::kConst:
      return e.value;
    case ExprKind::kName:
      return eval_name(e, scope);
    case ExprKind::kGetattr:
      return getattr(eval(*e.children[0], scope), e.name);
    case ExprKind::kGetitem:
      return eval_getitem(e, scope);
    case ExprKind::kCall:
      return eval_call(e, scope);
    case ExprKind::kFilter:
      return eval_filter(e, eval(*e.children[0], scope), scope);
    case ExprKind::kTest: {
      const Value input = eval(*e.children[0], scope);
      CallArgs args;
      eval_args(e, 1, scope, args);
      line_ = e.line;
      return Value::boolean(e.test(*this, input, args));
    }
    case ExprKind::kNot:
      return Value::boolean(!truthy(eval(*e.children[0], scope)));
    case ExprKind::kNeg:
    case ExprKind::kPos: {
      const Value v = eval(*e.children[0], scope);
      if (v.is_undefined()) fail(v.undefined_message());
      const bool neg = e.kind == ExprKind::kNeg;
      if (v.kind() == Kind::kFloat) return Value::number(neg ? -v.as_float() : v.as_float());
      if (v.is_int_like()) {
        return Value::integer(neg ? sub_checked(0, v.as_int()) : v.as_int());
      }
      fail(fmt::format("bad operand type for unary {}: '{}'", neg ? '-' : '+', type_name(v)));
    }
    case ExprKind::kBinary: {
      const Value a = eval(*e.children[0], scope);
      const Value b = eval(*e.children[1], scope);
      line_ = e.line;
      return binary_op(e.name, a, b);
    }
    case ExprKind::kAnd: {
      Value left = eval(*e.children[0], scope);
      return truthy(left) ? eval(*e.children[1], scope) : left;
    }
    case ExprKind::kOr: {
      Value left = eval(*e.children[0], scope);
      return truthy(left) ? left : eval(*e.children[1], scope);
    }
    case ExprKind::kCompare:
      return eval_compare(e, scope);
    case ExprKind::kCondExpr:
      if (truthy(eval(*e.children[1], scope))) return eval(*e.children[0], scope);
      if (e.children[2]) return eval(*e.children[2], scope);
      return Value::undefined(fmt::format(
          "the inline if-expression on line {} evaluated to false and no else section was "
          "defined.",
          e.line));
    case ExprKind::kList:
    case ExprKind::kTuple:
    case ExprKind::kDict:
      return eval_collection(e, scope);
    case ExprKind::kNSRef:
    case ExprKind::kSlice:
      break;
  }
  fail("internal error: expression cannot be evaluated here");
}

Value Interp::eval_name(const Expr& e, Scope* scope) {
  for (Scope* s = scope; s != nullptr; s = s->parent) {
    if (const Value* v = s->find(e.name)) return *v;
  }
  return Value::undefined(fmt::format("{} is undefined", py::str_repr(e.name)));
}

Value Interp::eval_getitem(const Expr& e, Scope* scope) {
  const Value obj = eval(*e.children[0], scope);
  const Expr& key = *e.children[1];
  if (key.kind != ExprKind::kSlice) {
    const Value k = eval(key, scope);
    line_ = e.line;
    return getitem(obj, k);
  }
  Value bounds[3];
  for (int i = 0; i < 3; ++i) {
    bounds[i] = key.children[i] ? eval(*key.children[i], scope) : Value::none();
  }
  line_ = e.line;
  if (obj.is_undefined()) fail(obj.undefined_message());
  if (obj.is_string()) {
    const std::u32string cps = py::decode(obj.str());
    std::u32string out;
    for (int64_t i :
         slice_indices(static_cast<int64_t>(cps.size()), bounds[0], bounds[1], bounds[2])) {
      out.push_back(cps[i]);
    }
    return Value::string(py::encode(out));
  }
  if (obj.is_sequence()) {
    const List& items = obj.items();
    List out;
    for (int64_t i :
         slice_indices(static_cast<int64_t>(items.size()), bounds[0], bounds[1], bounds[2])) {
      out.push_back(items[i]);
    }
    return obj.kind() == Kind::kTuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
  }
  // jinja2 slices with Python's own subscript, not the sandbox's forgiving getitem.
  if (obj.kind() == Kind::kDict) fail("unhashable type: 'slice'");
  fail(fmt::format("'{}' object is not subscriptable", type_name(obj)));
}

void Interp::eval_args(const Expr& e, size_t first, Scope* scope, CallArgs& args) {
  for (size_t i = first; i < e.children.size(); ++i) {
    args.args.push_back(eval(*e.children[i], scope));
  }
  for (const auto& [k, v] : e.kwargs) args.kwargs.emplace_back(k, eval(*v, scope));
}

Value Interp::eval_call(const Expr& e, Scope* scope) {
  const Value fn = eval(*e.children[0], scope);
  CallArgs args;
  eval_args(e, 1, scope, args);
  line_ = e.line;
  return call(fn, args);
}

Value Interp::eval_filter(const Expr& e, const Value& input, Scope* scope) {
  CallArgs args;
  eval_args(e, 1, scope, args);
  line_ = e.line;
  return e.filter(*this, input, args);
}

Value Interp::filter_chain(const Expr& e, const Value& seed, Scope* scope) {
  const Value input = e.children[0] ? filter_chain(*e.children[0], seed, scope) : seed;
  return eval_filter(e, input, scope);
}

Value Interp::eval_compare(const Expr& e, Scope* scope) {
  Value left = eval(*e.children[0], scope);
  for (size_t i = 0; i < e.ops.size(); ++i) {
    Value right = eval(*e.children[i + 1], scope);
    line_ = e.line;
    if (!compare(e.ops[i], left, right)) return Value::boolean(false);
    left = std::move(right);
  }
  return Value::boolean(true);
}

Value Interp::eval_collection(const Expr& e, Scope* scope) {
  if (e.kind == ExprKind::kDict) {
    Dict d;
    for (size_t i = 0; i + 1 < e.children.size(); i += 2) {
      Value k = eval(*e.children[i], scope);
      if (k.kind() == Kind::kList || k.kind() == Kind::kDict || k.kind() == Kind::kNamespace) {
        fail(fmt::format("unhashable type: '{}'", type_name(k)));
      }
      d.set(std::move(k), eval(*e.children[i + 1], scope));
    }
    return Value::dict(std::move(d));
  }
  List items;
  items.reserve(e.children.size());
  for (const auto& c : e.children) items.push_back(eval(*c, scope));
  return e.kind == ExprKind::kTuple ? Value::tuple(std::move(items))
                                    : Value::list(std::move(items));
}

Value Interp::getattr(const Value& obj, const std::string& name) {
  // Dunder attributes exist on every Python object, Undefined included; the sandbox hides them.
  if (is_dunder(name)) return unsafe(obj, name);
  if (obj.is_undefined()) fail(obj.undefined_message());
  switch (obj.kind()) {
    case Kind::kDict:
      if (auto m = method(obj, name)) return *m;
      if (const Value* v = obj.dict().find(name)) return *v;
      return no_attribute(obj, name);
    case Kind::kNamespace:
      if (const Value* v = obj.ns().attrs.find(name)) return *v;
      return no_attribute(obj, name);
    case Kind::kLoop:
      return loop_attribute(obj, name);
    default:
      if (auto m = method(obj, name)) return *m;
      return no_attribute(obj, name);
  }
}

Value Interp::attribute(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) fail(obj.undefined_message());
  if (is_dunder(name)) return unsafe(obj, name);
  if (obj.kind() == Kind::kDict) {
    if (auto m = method(obj, name)) return *m;
    return no_attribute(obj, name);
  }
  return getattr(obj, name);
}

Value Interp::getitem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) fail(obj.undefined_message());
  switch (obj.kind()) {
    case Kind::kDict:
      if (const Value* v = obj.dict().find(key)) return *v;
      break;
    case Kind::kList:
    case Kind::kTuple:
      if (key.is_int_like()) {
        const int64_t size = static_cast<int64_t>(obj.items().size());
        const int64_t i = normalize_index(key.as_int(), size);
        if (i >= 0 && i < size) return obj.items()[i];
        return no_element(obj, key);
      }
      break;
    case Kind::kString:
      if (key.is_int_like()) {
        const std::u32string cps = py::decode(obj.str());
        const int64_t size = static_cast<int64_t>(cps.size());
        const int64_t i = normalize_index(key.as_int(), size);
        if (i < 0 || i >= size) return no_element(obj, key);
        std::string out;
        py::utf8_append(out, cps[i]);
        return Value::string(std::move(out));
      }
      break;
    default:
      break;
  }
  if (key.is_string()) {
    if (is_dunder(key.str())) return unsafe(obj, key.str());
    if (obj.kind() == Kind::kDict) {
      if (auto m = method(obj, key.str())) return *m;
      return no_attribute(obj, key.str());
    }
    return getattr(obj, key.str());
  }
  return no_element(obj, key);
}

Value Interp::call(const Value& fn, CallArgs& args) {
  if (fn.kind() == Kind::kCallable) return fn.fn().fn(*this, args);
  if (fn.is_undefined()) fail(fn.undefined_message());
  fail(fmt::format("'{}' object is not callable", type_name(fn)));
}

Value Interp::apply_filter(const std::string& name, const Value& input, CallArgs& args) {
  const FilterFn f = find_filter(name);
  if (f == nullptr) fail_unsupported(fmt::format("unsupported filter '{}'", name));
  return f(*this, input, args);
}

bool Interp::apply_test(const std::string& name, const Value& input, CallArgs& args) {
  const TestFn t = find_test(name);
  if (t == nullptr) fail_unsupported(fmt::format("unsupported test '{}'", name));
  return t(*this, input, args);
}

}  // namespace atom::jinja
