// Errors: one exception type, atom::Error, carrying a category and a message a user can act on.
// Libraries throw it for bad input (a corrupt file, an unsupported tensor type, a prompt too
// long); the boundaries (CLI mains, HTTP handlers) catch it and turn it into a message and a
// non-zero exit, or an OpenAI-style error body. Internal invariants use ATOM_ASSERT.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace atom {

enum class ErrorCode {
  kInvalidArgument,  // the caller passed something wrong (CLI flag, request field)
  kNotFound,         // a file, model or key that does not exist
  kCorrupt,          // a file that exists but is malformed or truncated
  kUnsupported,      // valid input that atom does not implement (tensor type, rope scaling, ...)
  kOutOfRange,       // a length or index past a limit (context length, vocab)
  kIo,               // the OS refused (open, mmap, read)
  kInternal,         // a bug in atom
};

const char* error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, std::string message)
      : std::runtime_error(std::move(message)), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

template <typename... Args>
[[noreturn]] void throw_error(ErrorCode code, fmt::format_string<Args...> f, Args&&... args) {
  throw Error(code, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace atom

// ATOM_CHECK(cond, code, "fmt", args...): user-facing validation.
#define ATOM_CHECK(cond, code, ...)                            \
  do {                                                         \
    if (!(cond)) ::atom::throw_error(::atom::ErrorCode::code, __VA_ARGS__); \
  } while (0)

// ATOM_ASSERT(cond): an internal invariant; failing it is a bug in atom.
#define ATOM_ASSERT(cond)                                                                  \
  do {                                                                                     \
    if (!(cond))                                                                           \
      ::atom::throw_error(::atom::ErrorCode::kInternal, "internal error: {} failed at {}:{}", \
                          #cond, __FILE__, __LINE__);                                      \
  } while (0)
