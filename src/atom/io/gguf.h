// GGUF (v2/v3) reader: metadata key/values, tensor table, tensor data through mmap (or a full
// read when mmap is disabled). Every malformed input (bad magic, unknown version, truncated
// header or data, unknown value/tensor type, out-of-bounds offsets) throws atom::Error with the
// file name and what is wrong.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "atom/core/error.h"
#include "atom/core/ggml_types.h"
#include "atom/io/file_bytes.h"

namespace atom {

enum class GgufValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// One metadata value. Scalars are widened (integers to int64, floats to double); arrays keep
// their element type and are stored in the matching vector.
struct GgufValue {
  GgufValueType type = GgufValueType::kU8;
  GgufValueType elem_type = GgufValueType::kU8;  // arrays only
  int64_t i = 0;     // integer and bool scalars (u64 values above INT64_MAX are rejected)
  double f = 0.0;    // float scalars
  std::string s;     // string scalars
  std::vector<int64_t> ints;       // integer/bool arrays
  std::vector<double> floats;      // float arrays
  std::vector<std::string> strs;   // string arrays

  bool is_integer() const;
  bool is_float() const;
  bool is_array() const { return type == GgufValueType::kArray; }
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  // GGML order: dims[0] is the innermost (contiguous) dimension. A [rows, cols] matrix in
  // PyTorch terms has dims = {cols, rows}.
  std::vector<int64_t> dims;
  uint64_t offset = 0;  // relative to the data section
  size_t nbytes = 0;

  int64_t numel() const;
  int64_t cols() const { return dims.empty() ? 1 : dims[0]; }  // innermost
  int64_t rows() const { return numel() / cols(); }            // everything else
};

class GgufFile {
 public:
  // Opens and parses the header and tensor table; maps (or reads) the file.
  // use_mmap=false reads the whole file into memory instead (ATOM_DISABLE_MMAP).
  static std::unique_ptr<GgufFile> open(const std::string& path, bool use_mmap = true);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }

  // --- metadata ---
  bool has(std::string_view key) const { return find(key) != nullptr; }
  const GgufValue* find(std::string_view key) const;
  const std::vector<std::string>& keys() const { return key_order_; }
  // Typed getters throw kNotFound when the key is absent, kCorrupt when its type is wrong.
  std::string get_string(std::string_view key) const;
  int64_t get_int(std::string_view key) const;       // any integer type
  double get_float(std::string_view key) const;      // float or integer
  bool get_bool(std::string_view key) const;
  const std::vector<std::string>& get_string_array(std::string_view key) const;
  const std::vector<int64_t>& get_int_array(std::string_view key) const;
  const std::vector<double>& get_float_array(std::string_view key) const;
  // Getters with a default for absent keys (a present key of the wrong type still throws).
  std::string get_string_or(std::string_view key, std::string def) const;
  int64_t get_int_or(std::string_view key, int64_t def) const;
  double get_float_or(std::string_view key, double def) const;
  bool get_bool_or(std::string_view key, bool def) const;

  // --- tensors ---
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  const GgufTensorInfo& tensor(std::string_view name) const;  // throws kNotFound
  const uint8_t* tensor_data(const GgufTensorInfo& t) const { return data_ + t.offset; }

 private:
  GgufFile() = default;
  void parse();

  std::string path_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  const uint8_t* base_ = nullptr;  // whole file
  size_t size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the tensor data section
  FileBytes bytes_;                // owns base_
  std::unordered_map<std::string, GgufValue> kv_;
  std::vector<std::string> key_order_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace atom
