// Built-ins of the chat template engine: jinja2's filters and tests, the globals transformers
// installs (raise_exception, strftime_now, namespace, dict, range, joiner) and the Python methods
// templates call on str, dict, list and loop objects.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "atom/chat/jinja_ast.h"
#include "atom/chat/jinja_value.h"

namespace atom::jinja {

// nullptr when the engine does not implement the filter / test.
FilterFn find_filter(std::string_view name);
TestFn find_test(std::string_view name);

// The method `name` of obj bound to it (e.g. "abc".split), nullopt when obj has no such method.
// Methods that mutate (list.append, dict.update, ...) yield the Undefined the sandbox gives.
std::optional<Value> method(const Value& obj, const std::string& name);

// transformers' namespace() refuses attribute names starting with "_" (sandbox escapes).
std::string namespace_underscore_message(const std::string& name);

// The global functions every template sees, by name.
std::vector<std::pair<std::string, Value>> make_globals();

}  // namespace atom::jinja
