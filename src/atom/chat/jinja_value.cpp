#include "atom/chat/jinja_value.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "atom/chat/py_str.h"

namespace atom::jinja {

void fail(std::string message) { throw RenderError(RenderError::Type::kError, std::move(message)); }

void fail_unsupported(std::string message) {
  throw RenderError(RenderError::Type::kUnsupported, std::move(message));
}

const Value* Dict::find(const Value& key) const {
  for (const auto& [k, v] : items) {
    if (equals(k, key)) return &v;
  }
  return nullptr;
}

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : items) {
    if (k.is_string() && k.str() == key) return &v;
  }
  return nullptr;
}

void Dict::set(Value key, Value value) {
  for (auto& [k, v] : items) {
    if (equals(k, key)) {
      v = std::move(value);
      return;
    }
  }
  items.emplace_back(std::move(key), std::move(value));
}

Value Value::undefined(std::string message) {
  Value v;
  v.ptr_ = std::make_shared<std::string>(std::move(message));
  return v;
}

Value Value::none() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}

Value Value::boolean(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.b_ = b;
  return v;
}

Value Value::integer(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.i_ = i;
  return v;
}

Value Value::number(double f) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.f_ = f;
  return v;
}

Value Value::string(std::string s) {
  Value v;
  v.kind_ = Kind::kString;
  v.ptr_ = std::make_shared<std::string>(std::move(s));
  return v;
}

Value Value::list(List items) {
  Value v;
  v.kind_ = Kind::kList;
  v.ptr_ = std::make_shared<List>(std::move(items));
  return v;
}

Value Value::tuple(List items) {
  Value v;
  v.kind_ = Kind::kTuple;
  v.ptr_ = std::make_shared<List>(std::move(items));
  return v;
}

Value Value::dict(Dict d) {
  Value v;
  v.kind_ = Kind::kDict;
  v.ptr_ = std::make_shared<Dict>(std::move(d));
  return v;
}

Value Value::namespace_object(Dict attrs) {
  Value v;
  v.kind_ = Kind::kNamespace;
  v.ptr_ = std::make_shared<Namespace>(Namespace{std::move(attrs)});
  return v;
}

Value Value::callable(std::string name, std::function<Value(Interp&, CallArgs&)> fn) {
  Value v;
  v.kind_ = Kind::kCallable;
  v.ptr_ = std::make_shared<Callable>(Callable{std::move(name), std::move(fn)});
  return v;
}

Value Value::loop(LoopInfo info) {
  Value v;
  v.kind_ = Kind::kLoop;
  v.ptr_ = std::make_shared<LoopInfo>(std::move(info));
  return v;
}

Value Value::iterator(List items) {
  Value v;
  v.kind_ = Kind::kIterator;
  v.ptr_ = std::make_shared<IterState>(IterState{std::move(items), 0});
  return v;
}

std::string Value::undefined_message() const {
  if (ptr_ == nullptr) return "undefined value";
  return *std::static_pointer_cast<const std::string>(ptr_);
}

std::string type_name(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return "list";
    case Kind::kTuple:
      return "tuple";
    case Kind::kDict:
      return "dict";
    case Kind::kNamespace:
      return "TemplateNamespace";
    case Kind::kCallable:
      return "function";
    case Kind::kLoop:
      return "LoopContext";
    case Kind::kIterator:
      return "generator";
  }
  return "object";
}

bool truthy(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return v.as_bool();
    case Kind::kInt:
      return v.as_int() != 0;
    case Kind::kFloat:
      return v.as_float() != 0.0;
    case Kind::kString:
      return !v.str().empty();
    case Kind::kList:
    case Kind::kTuple:
      return !v.items().empty();
    case Kind::kDict:
      return !v.dict().items.empty();
    case Kind::kNamespace:
    case Kind::kCallable:
    case Kind::kLoop:
    case Kind::kIterator:
      return true;
  }
  return false;
}

namespace {

std::string sequence_repr(const Value& v) {
  const List& items = v.items();
  const bool tuple = v.kind() == Kind::kTuple;
  std::string out = tuple ? "(" : "[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ", ";
    out += repr(items[i]);
  }
  if (tuple && items.size() == 1) out += ",";
  out += tuple ? ")" : "]";
  return out;
}

std::string dict_repr(const Dict& d) {
  std::string out = "{";
  bool first = true;
  for (const auto& [k, val] : d.items) {
    if (!first) out += ", ";
    first = false;
    out += repr(k) + ": " + repr(val);
  }
  return out + "}";
}

}  // namespace

std::string to_str(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
      return "";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return v.as_bool() ? "True" : "False";
    case Kind::kInt:
      return std::to_string(v.as_int());
    case Kind::kFloat:
      return py::float_repr(v.as_float());
    case Kind::kString:
      return v.str();
    case Kind::kList:
    case Kind::kTuple:
      return sequence_repr(v);
    case Kind::kDict:
      return dict_repr(v.dict());
    case Kind::kNamespace:
      return "<Namespace " + dict_repr(v.ns().attrs) + ">";
    case Kind::kCallable:
      return "<function " + v.fn().name + ">";
    case Kind::kLoop: {
      const LoopInfo& info = v.loop_info();
      return fmt::format("<LoopContext {}/{}>", info.index0 + 1, info.shared->items->size());
    }
    case Kind::kIterator:
      return "<generator object>";
  }
  return "";
}

std::string repr(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kString:
      return py::str_repr(v.str());
    default:
      return to_str(v);
  }
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind() == Kind::kFloat || b.kind() == Kind::kFloat) return a.as_float() == b.as_float();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kString:
      return a.str() == b.str();
    case Kind::kList:
    case Kind::kTuple: {
      const List& x = a.items();
      const List& y = b.items();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i) {
        if (!equals(x[i], y[i])) return false;
      }
      return true;
    }
    case Kind::kDict: {
      const Dict& x = a.dict();
      const Dict& y = b.dict();
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, val] : x.items) {
        const Value* other = y.find(k);
        if (other == nullptr || !equals(val, *other)) return false;
      }
      return true;
    }
    default:
      return a.identity() == b.identity();
  }
}

bool less(const Value& a, const Value& b) {
  if (a.is_undefined()) fail(a.undefined_message());
  if (b.is_undefined()) fail(b.undefined_message());
  if (a.is_number() && b.is_number()) {
    if (a.kind() == Kind::kFloat || b.kind() == Kind::kFloat) return a.as_float() < b.as_float();
    return a.as_int() < b.as_int();
  }
  if (a.is_string() && b.is_string()) return a.str() < b.str();  // UTF-8 order = code point order
  if (a.is_sequence() && a.kind() == b.kind()) {
    const List& x = a.items();
    const List& y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!equals(x[i], y[i])) return less(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  fail(fmt::format("'<' not supported between instances of '{}' and '{}'", type_name(a),
                   type_name(b)));
}

List iterate(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
      return {};
    case Kind::kString: {
      List out;
      for (char32_t c : py::decode(v.str())) {
        std::string s;
        py::utf8_append(s, c);
        out.push_back(Value::string(std::move(s)));
      }
      return out;
    }
    case Kind::kList:
    case Kind::kTuple:
      return v.items();
    case Kind::kDict: {
      List out;
      out.reserve(v.dict().items.size());
      for (const auto& kv : v.dict().items) out.push_back(kv.first);
      return out;
    }
    case Kind::kIterator: {
      IterState& state = v.iter_state();
      List out(state.items.begin() + static_cast<std::ptrdiff_t>(state.pos), state.items.end());
      state.pos = state.items.size();
      return out;
    }
    default:
      fail(fmt::format("'{}' object is not iterable", type_name(v)));
  }
}

int64_t length(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
      return 0;
    case Kind::kString:
      return py::length(v.str());
    case Kind::kList:
    case Kind::kTuple:
      return static_cast<int64_t>(v.items().size());
    case Kind::kDict:
      return static_cast<int64_t>(v.dict().items.size());
    case Kind::kLoop:
      return static_cast<int64_t>(v.loop_info().shared->items->size());
    default:
      fail(fmt::format("object of type '{}' has no len()", type_name(v)));
  }
}

namespace {

void json_string(std::string& out, std::string_view s, bool ensure_ascii) {
  out += '"';
  for (char32_t c : py::decode(s)) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20 || (ensure_ascii && c > 0x7E)) {
          if (c >= 0x10000) {
            const char32_t u = c - 0x10000;
            out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (u >> 10), 0xDC00 + (u & 0x3FF));
          } else {
            out += fmt::format("\\u{:04x}", static_cast<uint32_t>(c));
          }
        } else {
          py::utf8_append(out, c);
        }
    }
  }
  out += '"';
}

std::string json_float(double f) {
  if (std::isnan(f)) return "NaN";
  if (std::isinf(f)) return f > 0 ? "Infinity" : "-Infinity";
  return py::float_repr(f);
}

std::string json_key(const Value& k) {
  switch (k.kind()) {
    case Kind::kString:
      return k.str();
    case Kind::kBool:
      return k.as_bool() ? "true" : "false";
    case Kind::kInt:
      return std::to_string(k.as_int());
    case Kind::kFloat:
      return json_float(k.as_float());
    case Kind::kNone:
      return "null";
    default:
      fail(fmt::format("keys must be str, int, float, bool or None, not {}", type_name(k)));
  }
}

// "\n" plus `level` copies of the indent, as json.dumps puts before each nested item.
std::string newline_indent(const JsonOptions& o, int level) {
  std::string s = "\n";
  for (int i = 0; i < level; ++i) s += *o.indent;
  return s;
}

void json_value(std::string& out, const Value& v, const JsonOptions& o, int level) {
  const auto open_nested = [&](char bracket) {
    out += bracket;
    if (o.indent) out += newline_indent(o, level + 1);
  };
  const auto item_separator = [&] {
    return o.indent ? o.item_separator + newline_indent(o, level + 1) : o.item_separator;
  };
  const auto close_nested = [&](char bracket) {
    if (o.indent) out += newline_indent(o, level);
    out += bracket;
  };
  switch (v.kind()) {
    case Kind::kNone:
      out += "null";
      return;
    case Kind::kBool:
      out += v.as_bool() ? "true" : "false";
      return;
    case Kind::kInt:
      out += std::to_string(v.as_int());
      return;
    case Kind::kFloat:
      out += json_float(v.as_float());
      return;
    case Kind::kString:
      json_string(out, v.str(), o.ensure_ascii);
      return;
    case Kind::kList:
    case Kind::kTuple: {
      const List& items = v.items();
      if (items.empty()) {
        out += "[]";
        return;
      }
      open_nested('[');
      const std::string sep = item_separator();
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out += sep;
        json_value(out, items[i], o, level + 1);
      }
      close_nested(']');
      return;
    }
    case Kind::kDict: {
      std::vector<const std::pair<Value, Value>*> entries;
      for (const auto& kv : v.dict().items) entries.push_back(&kv);
      if (entries.empty()) {
        out += "{}";
        return;
      }
      if (o.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(),
                         [](const auto* a, const auto* b) { return less(a->first, b->first); });
      }
      open_nested('{');
      const std::string sep = item_separator();
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i > 0) out += sep;
        json_string(out, json_key(entries[i]->first), o.ensure_ascii);
        out += o.key_separator;
        json_value(out, entries[i]->second, o, level + 1);
      }
      close_nested('}');
      return;
    }
    default:
      fail(fmt::format("Object of type {} is not JSON serializable", type_name(v)));
  }
}

// Deeper JSON than this is refused, so converting (and later printing) cannot exhaust the stack.
constexpr int kMaxJsonDepth = 256;

template <typename Json>
Value convert_json(const Json& j, int depth) {
  if (depth > kMaxJsonDepth) {
    fail(fmt::format("the context is nested more than {} levels deep", kMaxJsonDepth));
  }
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value::none();
    case nlohmann::json::value_t::boolean:
      return Value::boolean(j.template get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value::integer(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      const auto u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::number(static_cast<double>(u));
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::json::value_t::number_float:
      return Value::number(j.template get<double>());
    case nlohmann::json::value_t::string:
      return Value::string(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      List items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(convert_json(e, depth + 1));
      return Value::list(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      d.items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) {
        d.items.emplace_back(Value::string(it.key()), convert_json(it.value(), depth + 1));
      }
      return Value::dict(std::move(d));
    }
    case nlohmann::json::value_t::discarded:
      return Value();
    case nlohmann::json::value_t::binary:
      fail("binary JSON values cannot be passed to a chat template");
  }
  return Value();
}

}  // namespace

std::string to_json(const Value& v, const JsonOptions& options) {
  std::string out;
  json_value(out, v, options, 0);
  return out;
}

Value from_json(const nlohmann::json& j) { return convert_json(j, 0); }
Value from_json(const nlohmann::ordered_json& j) { return convert_json(j, 0); }

}  // namespace atom::jinja
