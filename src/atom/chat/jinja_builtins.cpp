#include "atom/chat/jinja_builtins.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <functional>
#include <initializer_list>
#include <unordered_map>

#include "atom/chat/jinja_interp.h"
#include "atom/chat/py_str.h"

namespace atom::jinja {

namespace {

// ---- argument binding ----

// Binds Python-style positional and keyword arguments to a function's named parameters.
class Params {
 public:
  Params(std::string_view func, CallArgs& call, std::initializer_list<std::string_view> names)
      : values_(names.size()) {
    if (call.args.size() > names.size()) {
      fail(fmt::format("{}() takes at most {} argument(s) ({} given)", func, names.size(),
                       call.args.size()));
    }
    for (size_t i = 0; i < call.args.size(); ++i) values_[i] = call.args[i];
    for (auto& [key, value] : call.kwargs) {
      const auto it = std::find(names.begin(), names.end(), key);
      if (it == names.end()) {
        fail(fmt::format("{}() got an unexpected keyword argument '{}'", func, key));
      }
      auto& slot = values_[it - names.begin()];
      if (slot) fail(fmt::format("{}() got multiple values for argument '{}'", func, key));
      slot = value;
    }
  }
  bool has(size_t i) const { return values_[i].has_value(); }
  Value get(size_t i, Value fallback = Value::none()) const {
    return values_[i] ? *values_[i] : std::move(fallback);
  }
  const Value& required(size_t i, std::string_view func, std::string_view name) const {
    if (!values_[i]) fail(fmt::format("{}() missing required argument '{}'", func, name));
    return *values_[i];
  }

 private:
  std::vector<std::optional<Value>> values_;
};

int64_t int_arg(const Value& v, std::string_view what) {
  if (!v.is_int_like()) {
    fail(fmt::format("'{}' object cannot be interpreted as an integer ({})", type_name(v), what));
  }
  return v.as_int();
}

// A width or count that sizes an allocation (padding, indentation, batches). Python would try to
// allocate whatever it is given; atom refuses sizes no chat template needs.
int64_t size_arg(const Value& v, std::string_view what) {
  constexpr int64_t kMaxSize = int64_t{1} << 24;
  const int64_t n = int_arg(v, what);
  if (n > kMaxSize) fail(fmt::format("{} {} is too large (limit {})", what, n, kMaxSize));
  return n;
}

std::optional<std::string> optional_str(const Value& v, std::string_view what) {
  if (v.is_none()) return std::nullopt;
  if (!v.is_string()) {
    fail(fmt::format("{} must be None or a string, not {}", what, type_name(v)));
  }
  return v.str();
}

const std::string& str_arg(const Value& v, std::string_view what) {
  if (!v.is_string()) fail(fmt::format("{} must be str, not {}", what, type_name(v)));
  return v.str();
}

Value string_list(std::vector<std::string> parts) {
  List out;
  out.reserve(parts.size());
  for (auto& p : parts) out.push_back(Value::string(std::move(p)));
  return Value::list(std::move(out));
}

// ---- attribute getters (jinja2's make_attrgetter) ----

std::vector<Value> attribute_parts(const Value& attribute) {
  if (attribute.is_none()) return {};
  if (!attribute.is_string()) return {attribute};
  std::vector<Value> parts;
  for (const std::string& part : py::split(attribute.str(), std::string("."), -1)) {
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(),
                                                     [](char c) { return c >= '0' && c <= '9'; });
    parts.push_back(digits ? Value::integer(*py::parse_int(part, 10)) : Value::string(part));
  }
  return parts;
}

Value lower_if_string(const Value& v) {
  return v.is_string() ? Value::string(py::lower(v.str())) : v;
}

struct AttrGetter {
  std::vector<Value> parts;
  bool ignore_case = false;
  std::optional<Value> fallback;

  Value operator()(Interp& in, Value item) const {
    for (const Value& part : parts) {
      item = in.getitem(item, part);
      if (fallback && item.is_undefined()) item = *fallback;
    }
    return ignore_case ? lower_if_string(item) : item;
  }
};

// ---- filters ----

Value f_abs(Interp&, const Value& v, CallArgs& a) {
  Params p("abs", a, {});
  if (v.kind() == Kind::kFloat) return Value::number(std::fabs(v.as_float()));
  if (v.is_int_like()) {
    if (v.as_int() == std::numeric_limits<int64_t>::min()) fail("integer overflow in abs()");
    return Value::integer(std::llabs(v.as_int()));
  }
  fail(fmt::format("bad operand type for abs(): '{}'", type_name(v)));
}

Value f_attr(Interp& in, const Value& v, CallArgs& a) {
  Params p("attr", a, {"name"});
  return in.attribute(v, to_str(p.required(0, "attr", "name")));
}

Value f_batch(Interp&, const Value& v, CallArgs& a) {
  Params p("batch", a, {"linecount", "fill_with"});
  const int64_t n = size_arg(p.required(0, "batch", "linecount"), "linecount");
  if (n <= 0) fail("batch() linecount must be positive");
  const Value fill = p.get(1);
  List batches;
  List current;
  for (Value& item : iterate(v)) {
    if (static_cast<int64_t>(current.size()) == n) {
      batches.push_back(Value::list(std::move(current)));
      current.clear();
    }
    current.push_back(std::move(item));
  }
  if (!current.empty()) {
    if (!fill.is_none()) {
      while (static_cast<int64_t>(current.size()) < n) current.push_back(fill);
    }
    batches.push_back(Value::list(std::move(current)));
  }
  return Value::iterator(std::move(batches));
}

Value f_capitalize(Interp&, const Value& v, CallArgs& a) {
  Params p("capitalize", a, {});
  return Value::string(py::capitalize(to_str(v)));
}

std::string pad_center(const std::string& s, int64_t width, char32_t fill) {
  const int64_t len = py::length(s);
  if (width <= len) return s;
  const int64_t marg = width - len;
  const int64_t left = marg / 2 + (marg & width & 1);
  std::string f;
  py::utf8_append(f, fill);
  std::string out;
  for (int64_t i = 0; i < left; ++i) out += f;
  out += s;
  for (int64_t i = 0; i < marg - left; ++i) out += f;
  return out;
}

Value f_center(Interp&, const Value& v, CallArgs& a) {
  Params p("center", a, {"width"});
  return Value::string(pad_center(to_str(v), size_arg(p.get(0, Value::integer(80)), "width"), ' '));
}

Value f_default(Interp&, const Value& v, CallArgs& a) {
  Params p("default", a, {"default_value", "boolean"});
  if (v.is_undefined() || (truthy(p.get(1, Value::boolean(false))) && !truthy(v))) {
    return p.get(0, Value::string(""));
  }
  return v;
}

Value f_dictsort(Interp&, const Value& v, CallArgs& a) {
  Params p("dictsort", a, {"case_sensitive", "by", "reverse"});
  if (v.kind() != Kind::kDict) fail("dictsort filter requires a mapping");
  const bool case_sensitive = truthy(p.get(0, Value::boolean(false)));
  const std::string by = to_str(p.get(1, Value::string("key")));
  if (by != "key" && by != "value") fail("You can only sort by either 'key' or 'value'");
  const size_t pos = by == "key" ? 0 : 1;
  std::vector<std::pair<Value, Value>> items = v.dict().items;
  const auto key = [&](const std::pair<Value, Value>& kv) {
    const Value& k = pos == 0 ? kv.first : kv.second;
    return case_sensitive ? k : lower_if_string(k);
  };
  const bool reverse = truthy(p.get(2, Value::boolean(false)));
  std::stable_sort(items.begin(), items.end(), [&](const auto& x, const auto& y) {
    return reverse ? less(key(y), key(x)) : less(key(x), key(y));
  });
  List out;
  for (auto& [k, val] : items) out.push_back(Value::tuple({k, val}));
  return Value::list(std::move(out));
}

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

Value f_escape(Interp&, const Value& v, CallArgs& a) {
  Params p("escape", a, {});
  return Value::string(html_escape(to_str(v)));
}

Value f_first(Interp&, const Value& v, CallArgs& a) {
  Params p("first", a, {});
  if (v.kind() == Kind::kIterator) {
    IterState& state = v.iter_state();
    if (state.pos < state.items.size()) return state.items[state.pos++];
  } else {
    List items = iterate(v);
    if (!items.empty()) return items.front();
  }
  return Value::undefined("No first item, sequence was empty.");
}

Value to_float(const Value& v, const Value& fallback) {
  if (v.is_undefined()) fail(v.undefined_message());
  if (v.is_number()) return Value::number(v.as_float());
  if (v.is_string()) {
    if (auto f = py::parse_float(v.str())) return Value::number(*f);
  }
  return fallback;
}

Value f_float(Interp&, const Value& v, CallArgs& a) {
  Params p("float", a, {"default"});
  return to_float(v, p.get(0, Value::number(0.0)));
}

Value f_indent(Interp&, const Value& v, CallArgs& a) {
  Params p("indent", a, {"width", "first", "blank"});
  const Value width = p.get(0, Value::integer(4));
  const std::string indention =
      width.is_string() ? width.str()
                        : std::string(std::max<int64_t>(0, size_arg(width, "width")), ' ');
  if (v.is_undefined()) fail(v.undefined_message());
  if (!v.is_string()) {
    fail(fmt::format("unsupported operand type(s) for +=: '{}' and 'str'", type_name(v)));
  }
  // jinja2 appends a newline first so that splitlines() keeps a trailing empty line.
  const std::vector<std::string> lines = py::splitlines(v.str() + "\n", false);
  std::string rv;
  if (truthy(p.get(2, Value::boolean(false)))) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (i > 0) rv += "\n" + indention;
      rv += lines[i];
    }
  } else if (!lines.empty()) {
    rv = lines[0];
    for (size_t i = 1; i < lines.size(); ++i) {
      rv += "\n";
      if (!lines[i].empty()) rv += indention;
      rv += lines[i];
    }
  }
  if (truthy(p.get(1, Value::boolean(false)))) rv = indention + rv;
  return Value::string(std::move(rv));
}

Value f_int(Interp&, const Value& v, CallArgs& a) {
  Params p("int", a, {"default", "base"});
  const Value fallback = p.get(0, Value::integer(0));
  const int64_t base = int_arg(p.get(1, Value::integer(10)), "base");
  if (v.is_undefined()) fail(v.undefined_message());
  if (v.is_int_like()) return Value::integer(v.as_int());
  if (v.is_string()) {
    if (auto i = py::parse_int(v.str(), static_cast<int>(base))) return Value::integer(*i);
  }
  // int(float(value)), as jinja2 falls back to
  const Value f = to_float(v, Value());
  if (f.is_undefined() || !std::isfinite(f.as_float()) || std::fabs(f.as_float()) >= 9.2e18) {
    return fallback;
  }
  return Value::integer(static_cast<int64_t>(f.as_float()));
}

Value f_items(Interp&, const Value& v, CallArgs& a) {
  Params p("items", a, {});
  if (v.is_undefined()) return Value::iterator({});
  if (v.kind() != Kind::kDict) fail("Can only get item pairs from a mapping.");
  List out;
  for (const auto& [k, val] : v.dict().items) out.push_back(Value::tuple({k, val}));
  return Value::iterator(std::move(out));
}

Value f_join(Interp& in, const Value& v, CallArgs& a) {
  Params p("join", a, {"d", "attribute"});
  const std::string sep = to_str(p.get(0, Value::string("")));
  const AttrGetter getter{attribute_parts(p.get(1)), false, std::nullopt};
  std::string out;
  bool first = true;
  for (const Value& item : iterate(v)) {
    if (!first) out += sep;
    first = false;
    out += to_str(getter.parts.empty() ? item : getter(in, item));
  }
  return Value::string(std::move(out));
}

Value f_last(Interp&, const Value& v, CallArgs& a) {
  Params p("last", a, {});
  if (v.kind() == Kind::kIterator) fail("'generator' object is not reversible");
  List items = iterate(v);
  if (items.empty()) return Value::undefined("No last item, sequence was empty.");
  return items.back();
}

Value f_length(Interp&, const Value& v, CallArgs& a) {
  Params p("length", a, {});
  return Value::integer(length(v));
}

Value f_list(Interp&, const Value& v, CallArgs& a) {
  Params p("list", a, {});
  return Value::list(iterate(v));
}

Value f_lower(Interp&, const Value& v, CallArgs& a) {
  Params p("lower", a, {});
  return Value::string(py::lower(to_str(v)));
}

Value f_upper(Interp&, const Value& v, CallArgs& a) {
  Params p("upper", a, {});
  return Value::string(py::upper(to_str(v)));
}

// jinja2's title filter: upper-cases the first letter of each run between -, whitespace and
// opening brackets, lower-cases the rest (not Python's str.title).
Value f_title(Interp&, const Value& v, CallArgs& a) {
  Params p("title", a, {});
  const std::u32string s = py::decode(to_str(v));
  std::string out;
  bool word_start = true;
  for (char32_t c : s) {
    const bool boundary =
        py::is_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (boundary) {
      py::utf8_append(out, c);
      word_start = true;
    } else if (word_start) {
      std::string one;
      py::utf8_append(one, c);
      out += py::upper(one);
      word_start = false;
    } else {
      py::utf8_append(out, py::to_lower(c));
    }
  }
  return Value::string(std::move(out));
}

Value f_map(Interp& in, const Value& v, CallArgs& a) {
  if (!truthy(v)) return Value::iterator({});  // jinja2 maps nothing over a falsy value
  List out;
  if (a.args.empty() && !a.kwargs.empty() && a.kwargs.front().first == "attribute") {
    AttrGetter getter{attribute_parts(a.kwargs.front().second), false, std::nullopt};
    for (size_t i = 1; i < a.kwargs.size(); ++i) {
      if (a.kwargs[i].first != "default") {
        fail(fmt::format("Unexpected keyword argument '{}'", a.kwargs[i].first));
      }
      if (!a.kwargs[i].second.is_none()) getter.fallback = a.kwargs[i].second;
    }
    for (Value& item : iterate(v)) out.push_back(getter(in, std::move(item)));
    return Value::iterator(std::move(out));
  }
  if (a.args.empty()) fail("map requires a filter argument");
  const std::string name = to_str(a.args.front());
  for (Value& item : iterate(v)) {
    CallArgs rest{{a.args.begin() + 1, a.args.end()}, a.kwargs};
    out.push_back(in.apply_filter(name, item, rest));
  }
  return Value::iterator(std::move(out));
}

Value min_max(Interp& in, const Value& v, CallArgs& a, bool want_max, std::string_view name) {
  Params p(name, a, {"case_sensitive", "attribute"});
  const AttrGetter getter{attribute_parts(p.get(1)), !truthy(p.get(0, Value::boolean(false))),
                          std::nullopt};
  List items = iterate(v);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  size_t best = 0;
  Value best_key = getter(in, items[0]);
  for (size_t i = 1; i < items.size(); ++i) {
    Value key = getter(in, items[i]);
    if (want_max ? less(best_key, key) : less(key, best_key)) {
      best = i;
      best_key = std::move(key);
    }
  }
  return items[best];
}

Value f_max(Interp& in, const Value& v, CallArgs& a) { return min_max(in, v, a, true, "max"); }
Value f_min(Interp& in, const Value& v, CallArgs& a) { return min_max(in, v, a, false, "min"); }

// select / reject / selectattr / rejectattr
Value select_or_reject(Interp& in, const Value& v, CallArgs& a, bool lookup_attr, bool keep) {
  if (!truthy(v)) return Value::iterator({});  // as jinja2: a falsy value selects nothing
  size_t off = 0;
  AttrGetter getter;
  if (lookup_attr) {
    if (a.args.empty()) fail("Missing parameter for attribute name");
    getter.parts = attribute_parts(a.args[0]);
    off = 1;
  }
  std::optional<std::string> test;
  CallArgs test_args;
  if (a.args.size() > off) {
    test = to_str(a.args[off]);
    test_args.args.assign(a.args.begin() + off + 1, a.args.end());
    test_args.kwargs = a.kwargs;
  }
  List out;
  for (Value& item : iterate(v)) {
    const Value probe = lookup_attr ? getter(in, item) : item;
    bool result;
    if (test) {
      CallArgs args = test_args;
      result = in.apply_test(*test, probe, args);
    } else {
      result = truthy(probe);
    }
    if (result == keep) out.push_back(std::move(item));
  }
  return Value::iterator(std::move(out));
}

Value f_select(Interp& in, const Value& v, CallArgs& a) {
  return select_or_reject(in, v, a, false, true);
}
Value f_reject(Interp& in, const Value& v, CallArgs& a) {
  return select_or_reject(in, v, a, false, false);
}
Value f_selectattr(Interp& in, const Value& v, CallArgs& a) {
  return select_or_reject(in, v, a, true, true);
}
Value f_rejectattr(Interp& in, const Value& v, CallArgs& a) {
  return select_or_reject(in, v, a, true, false);
}

Value f_replace(Interp&, const Value& v, CallArgs& a) {
  Params p("replace", a, {"old", "new", "count"});
  const Value count = p.get(2);
  return Value::string(py::replace(to_str(v), to_str(p.required(0, "replace", "old")),
                                   to_str(p.required(1, "replace", "new")),
                                   count.is_none() ? -1 : int_arg(count, "count")));
}

Value f_reverse(Interp&, const Value& v, CallArgs& a) {
  Params p("reverse", a, {});
  if (v.is_string()) {
    std::u32string s = py::decode(v.str());
    std::reverse(s.begin(), s.end());
    return Value::string(py::encode(s));
  }
  List items = iterate(v);
  std::reverse(items.begin(), items.end());
  // reversed() of a list gives an iterator; a generator is listed and reversed in place.
  return v.kind() == Kind::kIterator ? Value::list(std::move(items))
                                     : Value::iterator(std::move(items));
}

double round_half_even(double x, int64_t digits) {
  if (!std::isfinite(x)) return x;
  if (digits >= 0 && digits <= 300) {
    // printf rounds the exact binary value with ties to even, as Python's round() does.
    const std::string s = fmt::format("{:.{}f}", x, digits);
    return std::strtod(s.c_str(), nullptr);
  }
  const double scale = std::pow(10.0, static_cast<double>(-digits));
  return std::nearbyint(x / scale) * scale;
}

Value f_round(Interp&, const Value& v, CallArgs& a) {
  Params p("round", a, {"precision", "method"});
  const int64_t precision = int_arg(p.get(0, Value::integer(0)), "precision");
  const std::string method = to_str(p.get(1, Value::string("common")));
  if (method != "common" && method != "ceil" && method != "floor") {
    fail("method must be common, ceil or floor");
  }
  if (!v.is_number()) {
    if (v.is_undefined()) fail(v.undefined_message());
    fail(fmt::format("type {} doesn't define __round__ method", type_name(v)));
  }
  if (method == "common") {
    if (v.is_int_like()) {
      if (precision >= 0) return Value::integer(v.as_int());
      return Value::integer(static_cast<int64_t>(round_half_even(v.as_float(), precision)));
    }
    return Value::number(round_half_even(v.as_float(), precision));
  }
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double scaled = v.as_float() * scale;
  return Value::number((method == "ceil" ? std::ceil(scaled) : std::floor(scaled)) / scale);
}

Value f_safe(Interp&, const Value& v, CallArgs& a) {
  Params p("safe", a, {});
  return v.is_string() ? v : Value::string(to_str(v));
}

Value f_sort(Interp& in, const Value& v, CallArgs& a) {
  Params p("sort", a, {"reverse", "case_sensitive", "attribute"});
  const bool reverse = truthy(p.get(0, Value::boolean(false)));
  const bool ignore_case = !truthy(p.get(1, Value::boolean(false)));
  // jinja2 sorts by a list of attributes ("name,age"), so keys compare as lists: equal items
  // are never ordered, which lets a list of identical dicts sort without a TypeError.
  const Value attribute = p.get(2);
  std::vector<AttrGetter> getters;
  if (attribute.is_string()) {
    for (const std::string& part : py::split(attribute.str(), std::string(","), -1)) {
      getters.push_back({attribute_parts(Value::string(part)), ignore_case, std::nullopt});
    }
  } else {
    getters.push_back({attribute_parts(attribute), ignore_case, std::nullopt});
  }
  List items = iterate(v);
  std::vector<std::pair<Value, size_t>> keyed;
  for (size_t i = 0; i < items.size(); ++i) {
    List key;
    for (const AttrGetter& getter : getters) key.push_back(getter(in, items[i]));
    keyed.emplace_back(Value::list(std::move(key)), i);
  }
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    return reverse ? less(y.first, x.first) : less(x.first, y.first);
  });
  List out;
  for (const auto& kv : keyed) out.push_back(items[kv.second]);
  return Value::list(std::move(out));
}

Value f_string(Interp&, const Value& v, CallArgs& a) {
  Params p("string", a, {});
  return v.is_string() ? v : Value::string(to_str(v));
}

Value f_sum(Interp& in, const Value& v, CallArgs& a) {
  Params p("sum", a, {"attribute", "start"});
  const AttrGetter getter{attribute_parts(p.get(0)), false, std::nullopt};
  Value total = p.get(1, Value::integer(0));
  for (Value& item : iterate(v)) {
    if (total.is_string()) fail("sum() can't sum strings [use ''.join(seq) instead]");
    total = binary_op("+", total, getter(in, std::move(item)));
  }
  return total;
}

Value f_tojson(Interp&, const Value& v, CallArgs& a) {
  Params p("tojson", a, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonOptions o;
  o.ensure_ascii = truthy(p.get(0, Value::boolean(false)));
  const Value indent = p.get(1);
  if (indent.is_string()) {
    o.indent = indent.str();
  } else if (!indent.is_none()) {
    o.indent = std::string(std::max<int64_t>(0, size_arg(indent, "indent")), ' ');
  }
  if (o.indent) o.item_separator = ",";
  const Value separators = p.get(2);
  if (!separators.is_none()) {
    if (!separators.is_sequence() || separators.items().size() != 2) {
      fail("tojson separators must be an (item_separator, key_separator) pair");
    }
    o.item_separator = str_arg(separators.items()[0], "item separator");
    o.key_separator = str_arg(separators.items()[1], "key separator");
  }
  o.sort_keys = truthy(p.get(3, Value::boolean(false)));
  return Value::string(to_json(v, o));
}

Value f_trim(Interp&, const Value& v, CallArgs& a) {
  Params p("trim", a, {"chars"});
  return Value::string(py::strip(to_str(v), optional_str(p.get(0), "trim chars"), true, true));
}

Value f_unique(Interp& in, const Value& v, CallArgs& a) {
  Params p("unique", a, {"case_sensitive", "attribute"});
  const AttrGetter getter{attribute_parts(p.get(1)), !truthy(p.get(0, Value::boolean(false))),
                          std::nullopt};
  List seen;
  List out;
  for (Value& item : iterate(v)) {
    Value key = getter(in, item);
    if (key.kind() == Kind::kList || key.kind() == Kind::kDict) {
      fail(fmt::format("unhashable type: '{}'", type_name(key)));
    }
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) {
      seen.push_back(std::move(key));
      out.push_back(std::move(item));
    }
  }
  return Value::iterator(std::move(out));
}

const std::unordered_map<std::string_view, FilterFn>& filters() {
  static const std::unordered_map<std::string_view, FilterFn> kFilters = {
      {"abs", f_abs},
      {"attr", f_attr},
      {"batch", f_batch},
      {"capitalize", f_capitalize},
      {"center", f_center},
      {"count", f_length},
      {"d", f_default},
      {"default", f_default},
      {"dictsort", f_dictsort},
      {"e", f_escape},
      {"escape", f_escape},
      {"first", f_first},
      {"float", f_float},
      {"forceescape", f_escape},
      {"indent", f_indent},
      {"int", f_int},
      {"items", f_items},
      {"join", f_join},
      {"last", f_last},
      {"length", f_length},
      {"list", f_list},
      {"lower", f_lower},
      {"map", f_map},
      {"max", f_max},
      {"min", f_min},
      {"reject", f_reject},
      {"rejectattr", f_rejectattr},
      {"replace", f_replace},
      {"reverse", f_reverse},
      {"round", f_round},
      {"safe", f_safe},
      {"select", f_select},
      {"selectattr", f_selectattr},
      {"sort", f_sort},
      {"string", f_string},
      {"sum", f_sum},
      {"title", f_title},
      {"tojson", f_tojson},
      {"trim", f_trim},
      {"unique", f_unique},
      {"upper", f_upper},
  };
  return kFilters;
}

// ---- tests ----

Value one_arg(CallArgs& a, std::string_view test) {
  Params p(test, a, {"other"});
  return p.required(0, test, "other");
}

bool t_defined(Interp&, const Value& v, CallArgs&) { return !v.is_undefined(); }
bool t_undefined(Interp&, const Value& v, CallArgs&) { return v.is_undefined(); }
bool t_none(Interp&, const Value& v, CallArgs&) { return v.is_none(); }
bool t_boolean(Interp&, const Value& v, CallArgs&) { return v.kind() == Kind::kBool; }
bool t_true(Interp&, const Value& v, CallArgs&) { return v.kind() == Kind::kBool && v.as_bool(); }
bool t_false(Interp&, const Value& v, CallArgs&) { return v.kind() == Kind::kBool && !v.as_bool(); }
bool t_integer(Interp&, const Value& v, CallArgs&) { return v.kind() == Kind::kInt; }
bool t_float(Interp&, const Value& v, CallArgs&) { return v.kind() == Kind::kFloat; }
bool t_number(Interp&, const Value& v, CallArgs&) { return v.is_number(); }
bool t_string(Interp&, const Value& v, CallArgs&) { return v.is_string(); }
bool t_mapping(Interp&, const Value& v, CallArgs&) { return v.kind() == Kind::kDict; }
bool t_callable(Interp&, const Value& v, CallArgs&) {
  // jinja2's Undefined defines __call__ (to raise), so callable() holds for it.
  return v.kind() == Kind::kCallable || v.is_undefined();
}
bool t_escaped(Interp&, const Value&, CallArgs&) { return false; }
bool t_iterable(Interp&, const Value& v, CallArgs&) {
  switch (v.kind()) {
    case Kind::kUndefined:
    case Kind::kString:
    case Kind::kList:
    case Kind::kTuple:
    case Kind::kDict:
    case Kind::kLoop:
    case Kind::kIterator:
      return true;
    default:
      return false;
  }
}
bool t_sequence(Interp&, const Value& v, CallArgs&) {
  switch (v.kind()) {
    case Kind::kUndefined:
    case Kind::kString:
    case Kind::kList:
    case Kind::kTuple:
    case Kind::kDict:
      return true;
    default:
      return false;
  }
}

// value % divisor == expected, with Python's numeric % and == (2.5 is neither odd nor even).
bool mod_equals(const Value& v, const Value& divisor, int64_t expected) {
  return equals(binary_op("%", v, divisor), Value::integer(expected));
}

bool t_odd(Interp&, const Value& v, CallArgs& a) {
  Params p("odd", a, {});
  return mod_equals(v, Value::integer(2), 1);
}
bool t_even(Interp&, const Value& v, CallArgs& a) {
  Params p("even", a, {});
  return mod_equals(v, Value::integer(2), 0);
}
bool t_divisibleby(Interp&, const Value& v, CallArgs& a) {
  Params p("divisibleby", a, {"num"});
  return mod_equals(v, p.required(0, "divisibleby", "num"), 0);
}
bool t_lower(Interp&, const Value& v, CallArgs&) {
  const std::u32string s = py::decode(to_str(v));
  bool cased = false;
  for (char32_t c : s) {
    if (py::is_cased_upper(c)) return false;
    cased = cased || py::is_cased_lower(c);
  }
  return cased;
}
bool t_upper(Interp&, const Value& v, CallArgs&) {
  const std::u32string s = py::decode(to_str(v));
  bool cased = false;
  for (char32_t c : s) {
    if (py::is_cased_lower(c)) return false;
    cased = cased || py::is_cased_upper(c);
  }
  return cased;
}
bool t_eq(Interp&, const Value& v, CallArgs& a) { return compare("==", v, one_arg(a, "eq")); }
bool t_ne(Interp&, const Value& v, CallArgs& a) { return compare("!=", v, one_arg(a, "ne")); }
bool t_lt(Interp&, const Value& v, CallArgs& a) { return compare("<", v, one_arg(a, "lt")); }
bool t_le(Interp&, const Value& v, CallArgs& a) { return compare("<=", v, one_arg(a, "le")); }
bool t_gt(Interp&, const Value& v, CallArgs& a) { return compare(">", v, one_arg(a, "gt")); }
bool t_ge(Interp&, const Value& v, CallArgs& a) { return compare(">=", v, one_arg(a, "ge")); }
bool t_in(Interp&, const Value& v, CallArgs& a) {
  Params p("in", a, {"seq"});
  return contains(p.required(0, "in", "seq"), v);
}
bool t_sameas(Interp&, const Value& v, CallArgs& a) {
  const Value other = one_arg(a, "sameas");
  if (v.kind() != other.kind()) return false;
  switch (v.kind()) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kBool:
    case Kind::kInt:
    case Kind::kFloat:
    case Kind::kString:
      return equals(v, other);
    default:
      return v.identity() == other.identity();
  }
}
bool t_filter(Interp&, const Value& v, CallArgs&) {
  return v.is_string() && find_filter(v.str()) != nullptr;
}
bool t_test(Interp&, const Value& v, CallArgs&) {
  return v.is_string() && find_test(v.str()) != nullptr;
}

const std::unordered_map<std::string_view, TestFn>& tests() {
  static const std::unordered_map<std::string_view, TestFn> kTests = {
      {"boolean", t_boolean}, {"callable", t_callable},
      {"defined", t_defined}, {"divisibleby", t_divisibleby},
      {"eq", t_eq},           {"equalto", t_eq},
      {"==", t_eq},           {"escaped", t_escaped},
      {"even", t_even},       {"false", t_false},
      {"filter", t_filter},   {"float", t_float},
      {"ge", t_ge},           {">=", t_ge},
      {"gt", t_gt},           {">", t_gt},
      {"greaterthan", t_gt},  {"in", t_in},
      {"integer", t_integer}, {"iterable", t_iterable},
      {"le", t_le},           {"<=", t_le},
      {"lessthan", t_lt},     {"lower", t_lower},
      {"lt", t_lt},           {"<", t_lt},
      {"mapping", t_mapping}, {"ne", t_ne},
      {"!=", t_ne},           {"none", t_none},
      {"number", t_number},   {"odd", t_odd},
      {"sameas", t_sameas},   {"sequence", t_sequence},
      {"string", t_string},   {"test", t_test},
      {"true", t_true},       {"undefined", t_undefined},
      {"upper", t_upper},
  };
  return kTests;
}

// ---- methods ----

// [start, end) of a str method's optional start/end arguments, in code points.
std::u32string str_window(const std::u32string& s, const Value& start, const Value& end) {
  const int64_t n = static_cast<int64_t>(s.size());
  const auto clamp = [n](const Value& v, int64_t def) {
    if (v.is_none()) return def;
    int64_t x = int_arg(v, "slice index");
    if (x < 0) x = std::max<int64_t>(0, x + n);
    return std::min(x, n);
  };
  const int64_t b = clamp(start, 0);
  const int64_t e = clamp(end, n);
  return b < e ? s.substr(b, e - b) : std::u32string();
}

bool all_chars(const std::string& s, bool (*pred)(char32_t)) {
  const std::u32string cps = py::decode(s);
  return !cps.empty() && std::all_of(cps.begin(), cps.end(), pred);
}

std::string str_format(Interp&, const std::string& fmt_str, CallArgs& a) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < fmt_str.size(); ++i) {
    const char c = fmt_str[i];
    if (c == '}') {
      if (i + 1 < fmt_str.size() && fmt_str[i + 1] == '}')
        ++i;
      else
        fail("Single '}' encountered in format string");
      out += '}';
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    if (i + 1 < fmt_str.size() && fmt_str[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    const size_t close = fmt_str.find('}', i);
    if (close == std::string::npos) fail("Single '{' encountered in format string");
    std::string field = fmt_str.substr(i + 1, close - i - 1);
    i = close;
    char conversion = 's';
    if (const size_t bang = field.find('!'); bang != std::string::npos) {
      if (bang + 2 != field.size()) fail_unsupported("str.format conversion or format spec");
      conversion = field[bang + 1];
      field.resize(bang);
    }
    if (field.find_first_of(":.[") != std::string::npos) {
      fail_unsupported("str.format field '" + field + "' (format specs and attribute access)");
    }
    Value v;
    if (field.empty() ||
        std::all_of(field.begin(), field.end(), [](char d) { return d >= '0' && d <= '9'; })) {
      const size_t index = field.empty() ? auto_index++ : std::stoul(field);
      if (index >= a.args.size()) {
        fail(fmt::format("Replacement index {} out of range for positional args tuple", index));
      }
      v = a.args[index];
    } else {
      const auto it = std::find_if(a.kwargs.begin(), a.kwargs.end(),
                                   [&](const auto& kv) { return kv.first == field; });
      if (it == a.kwargs.end()) fail(fmt::format("KeyError: '{}'", field));
      v = it->second;
    }
    if (conversion == 'r') {
      out += repr(v);
    } else if (conversion == 's') {
      out += to_str(v);
    } else {
      fail_unsupported("str.format conversion");
    }
  }
  return out;
}

Value call_str_method(Interp& in, const Value& obj, const std::string& name, CallArgs& a) {
  const std::string& s = obj.str();
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    Params p(name, a, {"chars"});
    return Value::string(
        py::strip(s, optional_str(p.get(0), "strip arg"), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    Params p(name, a, {"sep", "maxsplit"});
    const auto sep = optional_str(p.get(0), "sep");
    if (sep && sep->empty()) fail("empty separator");
    const int64_t maxsplit = int_arg(p.get(1, Value::integer(-1)), "maxsplit");
    return string_list(name == "split" ? py::split(s, sep, maxsplit)
                                       : py::rsplit(s, sep, maxsplit));
  }
  if (name == "splitlines") {
    Params p(name, a, {"keepends"});
    return string_list(py::splitlines(s, truthy(p.get(0, Value::boolean(false)))));
  }
  if (name == "startswith" || name == "endswith") {
    Params p(name, a, {"prefix", "start", "end"});
    const Value& affix = p.required(0, name, "prefix");
    const std::string window = py::encode(str_window(py::decode(s), p.get(1), p.get(2)));
    List options = affix.kind() == Kind::kTuple ? affix.items() : List{affix};
    for (const Value& o : options) {
      const std::string& x = str_arg(o, name + " arg");
      if (name == "startswith" ? window.starts_with(x) : window.ends_with(x)) {
        return Value::boolean(true);
      }
    }
    return Value::boolean(false);
  }
  if (name == "upper" || name == "lower" || name == "casefold" || name == "title" ||
      name == "capitalize" || name == "swapcase") {
    Params p(name, a, {});
    if (name == "upper") return Value::string(py::upper(s));
    if (name == "title") return Value::string(py::title(s));
    if (name == "capitalize") return Value::string(py::capitalize(s));
    if (name == "swapcase") return Value::string(py::swapcase(s));
    return Value::string(py::lower(s));
  }
  if (name == "replace") {
    Params p(name, a, {"old", "new", "count"});
    return Value::string(py::replace(s, str_arg(p.required(0, name, "old"), "replace arg"),
                                     str_arg(p.required(1, name, "new"), "replace arg"),
                                     int_arg(p.get(2, Value::integer(-1)), "count")));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    Params p(name, a, {"sub", "start", "end"});
    const std::string& sub = str_arg(p.required(0, name, "sub"), name + " arg");
    const std::u32string all = py::decode(s);
    const std::string window = py::encode(str_window(all, p.get(1), p.get(2)));
    if (name == "count") return Value::integer(py::count(window, sub));
    int64_t pos = py::find(window, sub, name[0] == 'r');
    if (pos >= 0 && !p.get(1).is_none()) {
      // Report the position in the whole string, not the window.
      const int64_t n = static_cast<int64_t>(all.size());
      int64_t start = int_arg(p.get(1), "start");
      if (start < 0) start = std::max<int64_t>(0, start + n);
      pos += std::min(start, n);
    }
    if (pos < 0 && (name == "index" || name == "rindex")) fail("substring not found");
    return Value::integer(pos);
  }
  if (name == "join") {
    Params p(name, a, {"iterable"});
    std::string out;
    const List items = iterate(p.required(0, name, "iterable"));
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_string()) {
        fail(fmt::format("sequence item {}: expected str instance, {} found", i,
                         type_name(items[i])));
      }
      if (i > 0) out += s;
      out += items[i].str();
    }
    return Value::string(std::move(out));
  }
  if (name == "format") return Value::string(str_format(in, s, a));
  if (name == "isdigit" || name == "isdecimal" || name == "isnumeric") {
    Params p(name, a, {});
    return Value::boolean(all_chars(s, py::is_digit));
  }
  if (name == "isalpha") {
    Params p(name, a, {});
    return Value::boolean(all_chars(s, py::is_alpha));
  }
  if (name == "isalnum") {
    Params p(name, a, {});
    return Value::boolean(
        all_chars(s, [](char32_t c) { return py::is_alpha(c) || py::is_digit(c); }));
  }
  if (name == "isspace") {
    Params p(name, a, {});
    return Value::boolean(all_chars(s, py::is_space));
  }
  if (name == "islower" || name == "isupper") {
    Params p(name, a, {});
    CallArgs none;
    return Value::boolean(name == "islower" ? t_lower(in, obj, none) : t_upper(in, obj, none));
  }
  if (name == "center" || name == "ljust" || name == "rjust") {
    Params p(name, a, {"width", "fillchar"});
    const int64_t width = size_arg(p.required(0, name, "width"), "width");
    char32_t fill = ' ';
    if (p.has(1)) {
      const std::u32string f = py::decode(str_arg(p.get(1), "fillchar"));
      if (f.size() != 1) fail("The fill character must be exactly one character long");
      fill = f[0];
    }
    if (name == "center") return Value::string(pad_center(s, width, fill));
    const int64_t pad = width - py::length(s);
    std::string padding;
    for (int64_t i = 0; i < pad; ++i) py::utf8_append(padding, fill);
    return Value::string(name == "ljust" ? s + padding : padding + s);
  }
  if (name == "zfill") {
    Params p(name, a, {"width"});
    const int64_t pad = size_arg(p.required(0, name, "width"), "width") - py::length(s);
    if (pad <= 0) return obj;
    const bool sign = !s.empty() && (s[0] == '+' || s[0] == '-');
    return Value::string((sign ? s.substr(0, 1) : "") + std::string(pad, '0') +
                         s.substr(sign ? 1 : 0));
  }
  if (name == "partition" || name == "rpartition") {
    Params p(name, a, {"sep"});
    const std::string& sep = str_arg(p.required(0, name, "sep"), "sep");
    if (sep.empty()) fail("empty separator");
    const size_t pos = name == "partition" ? s.find(sep) : s.rfind(sep);
    if (pos == std::string::npos) {
      return name == "partition" ? Value::tuple({obj, Value::string(""), Value::string("")})
                                 : Value::tuple({Value::string(""), Value::string(""), obj});
    }
    return Value::tuple({Value::string(s.substr(0, pos)), Value::string(sep),
                         Value::string(s.substr(pos + sep.size()))});
  }
  if (name == "removeprefix" || name == "removesuffix") {
    Params p(name, a, {"affix"});
    const std::string& x = str_arg(p.required(0, name, "affix"), name + " arg");
    if (name == "removeprefix" && s.starts_with(x)) return Value::string(s.substr(x.size()));
    if (name == "removesuffix" && !x.empty() && s.ends_with(x)) {
      return Value::string(s.substr(0, s.size() - x.size()));
    }
    return obj;
  }
  fail_unsupported(fmt::format("unsupported string method '{}'", name));
}

Value call_dict_method(const Value& obj, const std::string& name, CallArgs& a) {
  const Dict& d = obj.dict();
  if (name == "get") {
    Params p(name, a, {"key", "default"});
    const Value* v = d.find(p.required(0, name, "key"));
    return v != nullptr ? *v : p.get(1);
  }
  Params p(name, a, {});
  List out;
  if (name == "copy") return Value::dict(d);
  for (const auto& [k, v] : d.items) {
    if (name == "items") {
      out.push_back(Value::tuple({k, v}));
    } else {
      out.push_back(name == "keys" ? k : v);
    }
  }
  return Value::list(std::move(out));
}

Value call_list_method(const Value& obj, const std::string& name, CallArgs& a) {
  Params p(name, a, {"value"});
  const Value& x = p.required(0, name, "value");
  const List& items = obj.items();
  if (name == "count") {
    return Value::integer(
        std::count_if(items.begin(), items.end(), [&](const Value& v) { return equals(v, x); }));
  }
  for (size_t i = 0; i < items.size(); ++i) {
    if (equals(items[i], x)) return Value::integer(static_cast<int64_t>(i));
  }
  fail(fmt::format("{} is not in list", repr(x)));
}

Value call_loop_method(const Value& obj, const std::string& name, CallArgs& a) {
  const LoopInfo& info = obj.loop_info();
  if (name == "cycle") {
    if (a.args.empty()) fail("no items for cycling given");
    return a.args[info.index0 % static_cast<int64_t>(a.args.size())];
  }
  std::optional<std::vector<Value>>& last = info.shared->last_changed;
  const bool changed = !last || last->size() != a.args.size() ||
                       !std::equal(a.args.begin(), a.args.end(), last->begin(), equals);
  if (changed) last = a.args;
  return Value::boolean(changed);
}

bool is_str_method(const std::string& name) {
  static constexpr std::string_view kNames[] = {
      "strip",        "lstrip",      "rstrip",  "split",   "rsplit",    "splitlines",
      "startswith",   "endswith",    "upper",   "lower",   "casefold",  "title",
      "capitalize",   "swapcase",    "replace", "find",    "rfind",     "index",
      "rindex",       "count",       "join",    "format",  "isdigit",   "isdecimal",
      "isnumeric",    "isalpha",     "isalnum", "isspace", "islower",   "isupper",
      "center",       "ljust",       "rjust",   "zfill",   "partition", "rpartition",
      "removeprefix", "removesuffix"};
  return std::find(std::begin(kNames), std::end(kNames), name) != std::end(kNames);
}

Value unsafe_method(const Value& obj, const std::string& name) {
  return Value::undefined(fmt::format("access to attribute {} of {} object is unsafe.",
                                      py::str_repr(name), py::str_repr(type_name(obj))));
}

Value bind(const Value& obj, const std::string& name,
           Value (*fn)(const Value&, const std::string&, CallArgs&)) {
  return Value::callable(name, [obj, name, fn](Interp&, CallArgs& a) { return fn(obj, name, a); });
}

// ---- globals ----

Value g_range(Interp&, CallArgs& a) {
  if (!a.kwargs.empty()) fail("range() takes no keyword arguments");
  if (a.args.empty() || a.args.size() > 3) fail("range expected 1 to 3 arguments");
  int64_t start = 0;
  int64_t stop = 0;
  int64_t step = 1;
  if (a.args.size() == 1) {
    stop = int_arg(a.args[0], "range");
  } else {
    start = int_arg(a.args[0], "range");
    stop = int_arg(a.args[1], "range");
    if (a.args.size() == 3) step = int_arg(a.args[2], "range");
  }
  if (step == 0) fail("range() arg 3 must not be zero");
  List out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    // The sandbox refuses ranges over 100000 items.
    if (out.size() >= 100000) {
      fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    }
    out.push_back(Value::integer(i));
  }
  return Value::list(std::move(out));
}

Dict dict_from_args(CallArgs& a, std::string_view func) {
  if (a.args.size() > 1) fail(fmt::format("{} expected at most 1 argument", func));
  Dict d;
  if (!a.args.empty()) {
    const Value& src = a.args[0];
    if (src.kind() == Kind::kDict) {
      d = src.dict();
    } else if (src.kind() == Kind::kNamespace) {
      d = src.ns().attrs;
    } else {
      for (const Value& pair : iterate(src)) {
        const List kv = iterate(pair);
        if (kv.size() != 2) fail("dictionary update sequence element has the wrong length");
        d.set(kv[0], kv[1]);
      }
    }
  }
  for (auto& [k, v] : a.kwargs) d.set(Value::string(k), v);
  return d;
}

Value g_dict(Interp&, CallArgs& a) { return Value::dict(dict_from_args(a, "dict")); }

Value g_namespace(Interp&, CallArgs& a) {
  Dict attrs = dict_from_args(a, "namespace");
  for (const auto& [k, v] : attrs.items) {
    if (k.is_string() && k.str().starts_with("_")) fail(namespace_underscore_message(k.str()));
  }
  return Value::namespace_object(std::move(attrs));
}

Value g_raise_exception(Interp&, CallArgs& a) {
  Params p("raise_exception", a, {"message"});
  throw RenderError(RenderError::Type::kRaised,
                    to_str(p.required(0, "raise_exception", "message")));
}

Value g_strftime_now(Interp&, CallArgs& a) {
  Params p("strftime_now", a, {"format"});
  const std::string& format = str_arg(p.required(0, "strftime_now", "format"), "format");
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  std::string buf(format.size() * 4 + 64, '\0');
  const size_t n = std::strftime(buf.data(), buf.size(), format.c_str(), &local);
  if (n == 0 && !format.empty()) fail("strftime_now: formatted date too long");
  buf.resize(n);
  return Value::string(std::move(buf));
}

Value g_joiner(Interp&, CallArgs& a) {
  Params p("joiner", a, {"sep"});
  const std::string sep = to_str(p.get(0, Value::string(", ")));
  auto used = std::make_shared<bool>(false);
  return Value::callable("joiner", [sep, used](Interp&, CallArgs&) {
    if (!*used) {
      *used = true;
      return Value::string("");
    }
    return Value::string(sep);
  });
}

}  // namespace

std::string namespace_underscore_message(const std::string& name) {
  return fmt::format(
      "Chat templates cannot store underscore-prefixed attributes on a namespace, but got {}. "
      "Please rename the attribute.",
      py::str_repr(name));
}

FilterFn find_filter(std::string_view name) {
  const auto it = filters().find(name);
  return it == filters().end() ? nullptr : it->second;
}

TestFn find_test(std::string_view name) {
  const auto it = tests().find(name);
  return it == tests().end() ? nullptr : it->second;
}

std::optional<Value> method(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Kind::kString:
      if (!is_str_method(name)) return std::nullopt;
      return Value::callable(
          name, [obj, name](Interp& in, CallArgs& a) { return call_str_method(in, obj, name, a); });
    case Kind::kDict:
      if (name == "get" || name == "items" || name == "keys" || name == "values" ||
          name == "copy") {
        return bind(obj, name, call_dict_method);
      }
      if (name == "clear" || name == "pop" || name == "popitem" || name == "setdefault" ||
          name == "update") {
        return unsafe_method(obj, name);
      }
      return std::nullopt;
    case Kind::kList:
    case Kind::kTuple:
      if (name == "index" || name == "count") return bind(obj, name, call_list_method);
      if (obj.kind() == Kind::kList &&
          (name == "append" || name == "clear" || name == "extend" || name == "insert" ||
           name == "pop" || name == "remove" || name == "reverse" || name == "sort")) {
        return unsafe_method(obj, name);
      }
      return std::nullopt;
    case Kind::kLoop:
      if (name == "cycle" || name == "changed") return bind(obj, name, call_loop_method);
      return std::nullopt;
    default:
      return std::nullopt;
  }
}

std::vector<std::pair<std::string, Value>> make_globals() {
  std::vector<std::pair<std::string, Value>> g;
  g.emplace_back("range", Value::callable("range", g_range));
  g.emplace_back("dict", Value::callable("dict", g_dict));
  g.emplace_back("namespace", Value::callable("namespace", g_namespace));
  g.emplace_back("raise_exception", Value::callable("raise_exception", g_raise_exception));
  g.emplace_back("strftime_now", Value::callable("strftime_now", g_strftime_now));
  g.emplace_back("joiner", Value::callable("joiner", g_joiner));
  for (const char* name : {"cycler", "lipsum"}) {
    g.emplace_back(name,
                   Value::callable(name, [name = std::string(name)](Interp&, CallArgs&) -> Value {
                     fail_unsupported(fmt::format("unsupported global function '{}'", name));
                   }));
  }
  return g;
}

}  // namespace atom::jinja
