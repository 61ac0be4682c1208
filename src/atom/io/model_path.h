// Where a model named on the command line lives on disk.
#pragma once

#include <string>
#include <string_view>

namespace atom {

// The default model: SmolLM2-135M-Instruct, Q4_1 GGUF, fetched by scripts/fetch-model.sh into
// envs::models_dir().
inline constexpr std::string_view kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";
std::string default_model_path();

// `--model` value -> a GGUF file path. Empty means the default model. A directory must hold
// exactly one .gguf file. Throws kNotFound with a hint (e.g. how to fetch the default model).
std::string resolve_model_path(std::string_view model);

}  // namespace atom
