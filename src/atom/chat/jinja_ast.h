// Syntax tree of a parsed chat template. Expressions and statements are plain tagged structs:
// the tree is built once by the parser and only read while rendering.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "atom/chat/jinja_value.h"

namespace atom::jinja {

using FilterFn = Value (*)(Interp& interp, const Value& input, CallArgs& args);
using TestFn = bool (*)(Interp& interp, const Value& input, CallArgs& args);

enum class ExprKind : uint8_t {
  kConst,    // value
  kName,     // name
  kNSRef,    // name.attr as an assignment target
  kGetattr,  // children[0].name
  kGetitem,  // children[0][children[1]]
  kSlice,    // children: start, stop, step (each may be null); only inside kGetitem
  kCall,     // children[0](children[1..], kwargs)
  kFilter,   // children[0] | name(children[1..], kwargs); children[0] is null in filter blocks
  kTest,     // children[0] is name(children[1..], kwargs)
  kNot,
  kNeg,
  kPos,
  kBinary,  // children[0] op children[1]; op in name: + - * / // % ** ~
  kAnd,
  kOr,
  kCompare,   // children[0] ops[0] children[1] ops[1] children[2] ...
  kCondExpr,  // children: value, condition, else-value (may be null)
  kList,
  kTuple,
  kDict,  // children alternate key, value
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprKind kind = ExprKind::kConst;
  int line = 0;
  int depth = 1;  // height of this subtree, bounded so evaluation cannot overflow the stack
  Value value;
  std::string name;
  std::string attr;  // kNSRef
  std::vector<ExprPtr> children;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  FilterFn filter = nullptr;
  TestFn test = nullptr;
};

enum class StmtKind : uint8_t {
  kData,      // text
  kOutput,    // {{ expr }}
  kIf,        // branches; a null condition is the else branch
  kFor,       // for target in expr [if cond]: body, else_body
  kSet,       // set target = expr
  kSetBlock,  // set target [| filter chain in expr]: body
  kMacro,     // macro name(params = defaults): body
  kBreak,
  kContinue,
  kWith,         // with targets = values: body
  kFilterBlock,  // filter chain in expr: body
  kScope,        // a body in its own scope ({% generation %})
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  StmtKind kind = StmtKind::kData;
  int line = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr target;
  ExprPtr cond;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // defaults for the last defaults.size() params
  bool catch_varargs = false;     // the macro body reads `varargs` / `kwargs`, so extra
  bool catch_kwargs = false;      // arguments are collected there instead of rejected
  std::vector<ExprPtr> targets;
  std::vector<ExprPtr> values;
};

}  // namespace atom::jinja
