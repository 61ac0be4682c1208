// Helpers shared by the chat template tests: reading goldens and checking one rendered case
// against what Python jinja2 produced (scripts/gen_chat_template_goldens.py).
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "atom/chat/chat_template.h"
#include "atom/core/error.h"

namespace atom::chat_test {

inline const std::filesystem::path kDataDir =
    std::filesystem::path(ATOM_TEST_DATA_DIR) / "chat_templates";
inline const std::filesystem::path kSharedDir =
    std::filesystem::path(ATOM_SHARED_TESTDATA_DIR) / "chat_templates";

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ordered_json: the goldens' object keys keep their order, as the Python dicts they came from.
inline nlohmann::ordered_json read_json(const std::filesystem::path& path) {
  return nlohmann::ordered_json::parse(read_text(path));
}

// One golden case: {"context", "expected"} or {"context", "error", "error_type"}. Where Python
// raised, atom must raise kInvalidArgument and carry Python's message.
inline void check_case(const ChatTemplate& tmpl, const nlohmann::ordered_json& c) {
  const auto& context = c.at("context");
  if (c.contains("expected")) {
    try {
      EXPECT_EQ(tmpl.render(context), c.at("expected").get<std::string>());
    } catch (const Error& e) {
      ADD_FAILURE() << "render threw: " << e.what();
    }
    return;
  }
  const std::string message = c.at("error").get<std::string>();
  try {
    const std::string out = tmpl.render(context);
    ADD_FAILURE() << "expected the error \"" << message << "\" but rendered: " << out;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    EXPECT_THAT(e.what(), testing::HasSubstr(message)) << c.at("error_type").get<std::string>();
  }
}

}  // namespace atom::chat_test
