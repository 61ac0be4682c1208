// Renderer of a parsed chat template: jinja2's runtime semantics (scoping, loops, macros,
// attribute and item lookup in ImmutableSandboxedEnvironment, Python operators) over Value.
#pragma once

#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "atom/chat/jinja_ast.h"
#include "atom/chat/jinja_value.h"

namespace atom::jinja {

// Variables of one frame. jinja2 gives every for-loop iteration, macro call and with/filter/set
// block body a fresh frame that sees the enclosing ones; if-blocks share their frame.
struct Scope {
  Scope* parent = nullptr;
  std::vector<std::pair<std::string, Value>> vars;
  const Value* find(std::string_view name) const;
  void set(const std::string& name, Value value);
};

class Interp {
 public:
  // context: the template's variables (a Dict of name -> value).
  explicit Interp(const Dict& context);
  Interp(const Interp&) = delete;  // frames point into this object
  Interp& operator=(const Interp&) = delete;

  std::string render(const Body& body);
  // The template line being rendered, for error messages.
  int line() const { return line_; }

  // jinja2's sandboxed lookups: a.b tries the attribute (methods) then the item; a[b] the item
  // then, for string keys, the attribute. Missing -> Undefined naming what was missing.
  Value getattr(const Value& obj, const std::string& name);
  Value getitem(const Value& obj, const Value& key);
  // Attribute only, as the attr filter looks up.
  Value attribute(const Value& obj, const std::string& name);
  Value call(const Value& fn, CallArgs& args);
  Value apply_filter(const std::string& name, const Value& input, CallArgs& args);
  bool apply_test(const std::string& name, const Value& input, CallArgs& args);

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Scope* new_scope(Scope* parent);
  Flow exec_body(const Body& body, Scope* scope, std::string& out);
  Flow exec(const Stmt& stmt, Scope* scope, std::string& out);
  Flow exec_for(const Stmt& stmt, Scope* scope, std::string& out);
  void assign(const Expr& target, Value value, Scope* scope);
  Value call_macro(const Stmt& macro, Scope* scope, CallArgs& args);

  Value eval(const Expr& e, Scope* scope);
  Value eval_name(const Expr& e, Scope* scope);
  Value eval_getitem(const Expr& e, Scope* scope);
  Value eval_call(const Expr& e, Scope* scope);
  Value eval_filter(const Expr& e, const Value& input, Scope* scope);
  // A filter chain of a filter block or block set, applied to the rendered body.
  Value filter_chain(const Expr& e, const Value& seed, Scope* scope);
  Value eval_compare(const Expr& e, Scope* scope);
  Value eval_collection(const Expr& e, Scope* scope);
  void eval_args(const Expr& e, size_t first, Scope* scope, CallArgs& args);

  Scope globals_;
  Scope* top_ = nullptr;
  std::deque<Scope> scopes_;  // every frame of this render; frames point at their parents
  int line_ = 0;
  int call_depth_ = 0;
};

// Python binary operators on values: + - * / // % ** and ~.
Value binary_op(const std::string& op, const Value& a, const Value& b);
// a <op> b for == != < <= > >= in notin.
bool compare(const std::string& op, const Value& a, const Value& b);
bool contains(const Value& container, const Value& item);

}  // namespace atom::jinja
