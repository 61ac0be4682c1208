#include "atom/io/file_bytes.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "atom/core/error.h"

namespace atom {

FileBytes FileBytes::open(const std::string& path, bool use_mmap, std::string_view kind) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    ATOM_CHECK(err != ENOENT, kNotFound, "{} not found: {}", kind, path);
    throw_error(ErrorCode::kIo, "cannot open {}: {}", path, std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw_error(ErrorCode::kInvalidArgument, "{} is not a regular file", path);
  }
  FileBytes f;
  f.size_ = size_t(st.st_size);
  if (f.size_ == 0) {  // nothing to map; the reader reports the empty file
    ::close(fd);
    return f;
  }
  if (use_mmap) {
    void* p = ::mmap(nullptr, f.size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw_error(ErrorCode::kIo, "cannot mmap {}: {}", path, std::strerror(err));
    }
    f.data_ = static_cast<const uint8_t*>(p);
    f.mapped_ = true;
  } else {
    f.owned_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, (f.size_ + 63) / 64 * 64)));
    if (!f.owned_) {
      ::close(fd);
      throw_error(ErrorCode::kIo, "out of memory reading {} ({} bytes)", path, f.size_);
    }
    size_t got = 0;
    while (got < f.size_) {
      const ssize_t r = ::read(fd, f.owned_.get() + got, f.size_ - got);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        const int err = errno;
        ::close(fd);
        throw_error(ErrorCode::kIo, "cannot read {}: {}", path,
                    r == 0 ? "unexpected end of file" : std::strerror(err));
      }
      got += size_t(r);
    }
    f.data_ = f.owned_.get();
  }
  ::close(fd);
  return f;
}

FileBytes::FileBytes(FileBytes&& other) noexcept { *this = std::move(other); }

FileBytes& FileBytes::operator=(FileBytes&& other) noexcept {
  if (this != &other) {
    release();
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, false);
    owned_ = std::move(other.owned_);
    data_ = std::exchange(other.data_, nullptr);
  }
  return *this;
}

FileBytes::~FileBytes() { release(); }

void FileBytes::release() {
  if (mapped_ && data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
  mapped_ = false;
  owned_.reset();
}

}  // namespace atom
