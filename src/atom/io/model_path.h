// Where a model named on the command line lives on disk, and in which format.
#pragma once

#include <string>
#include <string_view>

namespace atom {

// The default model: SmolLM2-135M-Instruct, Q4_1 GGUF, fetched by scripts/fetch-model.sh into
// envs::models_dir().
inline constexpr std::string_view kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";
std::string default_model_path();

enum class ModelFormat {
  kGguf,      // path: a .gguf file
  kHfFolder,  // path: a Hugging Face checkpoint folder (config.json, tokenizer files, weights)
};
struct ModelLocation {
  ModelFormat format = ModelFormat::kGguf;
  std::string path;
};

// `--model` value -> what to load. Empty means the default model. A file is GGUF. A directory
// with config.json is an HF checkpoint, unless it holds no *.safetensors but exactly one .gguf
// (a GGUF download that keeps the repo's config.json); any other directory must hold exactly
// one .gguf file. "org/name[@revision]" that is no local path is an HF repo id: found in the HF
// cache or downloaded from the Hub (io/hf_hub.h). Throws kNotFound with a hint (e.g. how to
// fetch the default model).
ModelLocation locate_model(std::string_view model);

// As locate_model, for callers that read GGUF only: an HF folder is kUnsupported.
std::string resolve_model_path(std::string_view model);

}  // namespace atom
