#include "atom/io/model_path.h"

#include <filesystem>
#include <vector>

#include "atom/core/envs.h"
#include "atom/core/error.h"
#include "atom/io/hf_hub.h"

namespace atom {

namespace fs = std::filesystem;

std::string default_model_path() {
  return (fs::path(envs::models_dir()) / std::string(kDefaultModelFile)).string();
}

ModelLocation locate_model(std::string_view model) {
  if (model.empty()) {
    const std::string path = default_model_path();
    ATOM_CHECK(fs::is_regular_file(path), kNotFound,
               "the default model is not in the cache ({}); fetch it with scripts/fetch-model.sh "
               "or pass --model PATH",
               path);
    return {ModelFormat::kGguf, path};
  }
  const fs::path p = envs::expand_user(model);
  std::error_code ec;
  if (fs::is_directory(p, ec)) {
    std::vector<fs::path> ggufs;
    bool has_safetensors = false;
    for (const auto& e : fs::directory_iterator(p, ec)) {
      if (!e.is_regular_file()) continue;
      if (e.path().extension() == ".gguf") ggufs.push_back(e.path());
      if (e.path().extension() == ".safetensors") has_safetensors = true;
    }
    if (fs::is_regular_file(p / "config.json", ec) && (has_safetensors || ggufs.size() != 1))
      return {ModelFormat::kHfFolder, p.string()};
    ATOM_CHECK(ggufs.size() == 1, kNotFound,
               "model directory {} holds {} .gguf files and no config.json; atom needs a "
               "Hugging Face checkpoint folder or exactly one .gguf (or pass the file itself)",
               p.string(), ggufs.size());
    return {ModelFormat::kGguf, ggufs[0].string()};
  }
  // "org/name[@revision]" that is not a local path: the HF cache, else a download from the Hub.
  if (!fs::exists(p, ec) && looks_like_hf_repo_id(model))
    return {ModelFormat::kHfFolder, resolve_hf_model(std::string(model))};
  ATOM_CHECK(fs::exists(p, ec), kNotFound, "model not found: {} (no such file or directory)",
             p.string());
  ATOM_CHECK(fs::is_regular_file(p, ec), kInvalidArgument, "model path {} is not a regular file",
             p.string());
  return {ModelFormat::kGguf, p.string()};
}

std::string resolve_model_path(std::string_view model) {
  ModelLocation loc = locate_model(model);
  ATOM_CHECK(loc.format == ModelFormat::kGguf, kUnsupported,
             "{} is a Hugging Face checkpoint folder; this command reads GGUF models only",
             loc.path);
  return std::move(loc.path);
}

}  // namespace atom
