// The bytes of a weight file: memory-mapped (read-only, shared with the page cache) or, when
// mmap is disabled (ATOM_DISABLE_MMAP), read whole into memory. Shared by the GGUF and
// safetensors readers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <cstdlib>
#include <memory>
#include <string_view>

namespace atom {

class FileBytes {
 public:
  // Throws kNotFound naming `kind` ("model file", "safetensors file") when the path does not
  // exist, kInvalidArgument when it is not a regular file, kIo when the OS refuses.
  static FileBytes open(const std::string& path, bool use_mmap, std::string_view kind);

  FileBytes() = default;
  FileBytes(FileBytes&& other) noexcept;
  FileBytes& operator=(FileBytes&& other) noexcept;
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  ~FileBytes();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool mapped() const { return mapped_; }

 private:
  void release();

  const uint8_t* data_ = nullptr;  // mapped pages, or owned_
  size_t size_ = 0;
  bool mapped_ = false;
  // The contents when not mapped, 64-byte aligned like mapped pages, so tensor data keeps the
  // alignment the file format promises (GGUF: general.alignment, 32 by default).
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> owned_;
};

}  // namespace atom
