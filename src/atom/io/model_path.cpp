#include "atom/io/model_path.h"

#include <filesystem>
#include <vector>

#include "atom/core/envs.h"
#include "atom/core/error.h"

namespace atom {

namespace fs = std::filesystem;

std::string default_model_path() {
  return (fs::path(envs::models_dir()) / std::string(kDefaultModelFile)).string();
}

std::string resolve_model_path(std::string_view model) {
  if (model.empty()) {
    const std::string path = default_model_path();
    ATOM_CHECK(fs::is_regular_file(path), kNotFound,
               "the default model is not in the cache ({}); fetch it with scripts/fetch-model.sh "
               "or pass --model PATH",
               path);
    return path;
  }
  const fs::path p = envs::expand_user(model);
  std::error_code ec;
  if (fs::is_directory(p, ec)) {
    std::vector<fs::path> ggufs;
    for (const auto& e : fs::directory_iterator(p, ec))
      if (e.is_regular_file() && e.path().extension() == ".gguf") ggufs.push_back(e.path());
    ATOM_CHECK(ggufs.size() == 1, kNotFound,
               "model directory {} holds {} .gguf files; atom needs exactly one (or pass the "
               "file itself)",
               p.string(), ggufs.size());
    return ggufs[0].string();
  }
  ATOM_CHECK(fs::exists(p, ec), kNotFound, "model not found: {} (no such file or directory)",
             p.string());
  ATOM_CHECK(fs::is_regular_file(p, ec), kInvalidArgument, "model path {} is not a regular file",
             p.string());
  return p.string();
}

}  // namespace atom
