// Values of the chat template engine: the Python objects a Jinja template sees (None, bool, int,
// float, str, list, tuple, dict, jinja2's Undefined and Namespace, loop, callables, generators),
// with Python's truthiness, equality, ordering, str() and repr(), and transformers' tojson.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace atom::jinja {

// A failure while rendering; the renderer adds the template line and turns it into atom::Error.
struct RenderError : std::runtime_error {
  enum class Type { kError, kRaised, kUnsupported };
  RenderError(Type t, std::string message) : std::runtime_error(std::move(message)), type(t) {}
  Type type;
};
[[noreturn]] void fail(std::string message);
[[noreturn]] void fail_unsupported(std::string message);

class Value;
class Interp;
using List = std::vector<Value>;

enum class Kind : uint8_t {
  kUndefined,
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kList,
  kTuple,
  kDict,
  kNamespace,
  kCallable,
  kLoop,
  kIterator,  // a Python generator: truthy, no len(), consumed by iterating
};

// Python dict: insertion-ordered; keys compare with Python ==. Dicts in templates are small
// (messages, tool schemas), so lookup is a linear scan.
struct Dict {
  std::vector<std::pair<Value, Value>> items;
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  void set(Value key, Value value);
};

// jinja2's namespace(): the one mutable object, assigned through {% set ns.attr = ... %}.
struct Namespace {
  Dict attrs;
};

struct CallArgs {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kwargs;
};

struct Callable {
  std::string name;
  std::function<Value(Interp&, CallArgs&)> fn;
};

// The `loop` variable of one for-loop iteration; `shared` holds what all iterations see.
struct LoopShared {
  std::shared_ptr<const List> items;
  int64_t depth0 = 0;
  std::optional<std::vector<Value>> last_changed;  // loop.changed() memory
};
struct LoopInfo {
  std::shared_ptr<LoopShared> shared;
  int64_t index0 = 0;
};

struct IterState {
  List items;
  size_t pos = 0;
};

class Value {
 public:
  Value() = default;  // Undefined without a hint
  static Value undefined(std::string message);
  static Value none();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(std::string v);
  static Value list(List items);
  static Value tuple(List items);
  static Value dict(Dict d);
  static Value namespace_object(Dict attrs);
  static Value callable(std::string name, std::function<Value(Interp&, CallArgs&)> fn);
  static Value loop(LoopInfo info);
  static Value iterator(List items);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_int_like() const { return kind_ == Kind::kInt || kind_ == Kind::kBool; }
  bool is_number() const { return is_int_like() || kind_ == Kind::kFloat; }
  bool is_sequence() const { return kind_ == Kind::kList || kind_ == Kind::kTuple; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::kBool ? (b_ ? 1 : 0) : i_; }
  double as_float() const { return kind_ == Kind::kFloat ? f_ : static_cast<double>(as_int()); }
  const std::string& str() const { return *std::static_pointer_cast<const std::string>(ptr_); }
  const List& items() const { return *std::static_pointer_cast<const List>(ptr_); }
  const Dict& dict() const { return *std::static_pointer_cast<const Dict>(ptr_); }
  Namespace& ns() const { return *std::static_pointer_cast<Namespace>(ptr_); }
  const Callable& fn() const { return *std::static_pointer_cast<const Callable>(ptr_); }
  const LoopInfo& loop_info() const { return *std::static_pointer_cast<const LoopInfo>(ptr_); }
  IterState& iter_state() const { return *std::static_pointer_cast<IterState>(ptr_); }
  // The message jinja2 raises when an Undefined is used where a value is needed.
  std::string undefined_message() const;
  const void* identity() const { return ptr_.get(); }

 private:
  Kind kind_ = Kind::kUndefined;
  union {
    bool b_;
    int64_t i_ = 0;
    double f_;
  };
  std::shared_ptr<void> ptr_;
};

// Python type(x).__name__, as error messages name it.
std::string type_name(const Value& v);
bool truthy(const Value& v);
std::string to_str(const Value& v);  // str(x); Undefined prints empty
std::string repr(const Value& v);
bool equals(const Value& a, const Value& b);
// a < b with Python's rules; raises a TypeError-like RenderError for unorderable types.
bool less(const Value& a, const Value& b);
// Python iter(x) materialized; consumes generators. Raises for non-iterables.
List iterate(const Value& v);
// len(x); raises for types without a length.
int64_t length(const Value& v);

struct JsonOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // nullopt: one line
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
};
// json.dumps(x, ...) as transformers' tojson filter calls it.
std::string to_json(const Value& v, const JsonOptions& options);

Value from_json(const nlohmann::json& j);
Value from_json(const nlohmann::ordered_json& j);

}  // namespace atom::jinja
