// Writes small safetensors files for tests: valid ones from named tensors, and broken ones from a
// hand-written header.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace atom::testing {

class SafetensorsWriter {
 public:
  // dtype as the format spells it ("F32", "BF16", ...); data is the raw little-endian bytes.
  void add(const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
           std::vector<uint8_t> data) {
    tensors_.push_back({name, dtype, std::move(shape), std::move(data)});
  }
  void add_f32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * sizeof(float));
    std::memcpy(b.data(), v.data(), b.size());
    add(name, "F32", std::move(shape), std::move(b));
  }
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  // Tensors are laid out back to back in the order added.
  std::string header() const {
    nlohmann::json h = nlohmann::json::object();
    uint64_t off = 0;
    for (const Tensor& t : tensors_) {
      h[t.name] = {
          {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.data.size()}}};
      off += t.data.size();
    }
    if (!metadata_.empty()) h["__metadata__"] = metadata_;
    return h.dump();
  }
  std::vector<uint8_t> data() const {
    std::vector<uint8_t> out;
    for (const Tensor& t : tensors_) out.insert(out.end(), t.data.begin(), t.data.end());
    return out;
  }
  void write(const std::string& path) const { write_raw(path, header(), data()); }

  // A file from a header string and data bytes. The header is space-padded to a multiple of 8
  // bytes, as the reference writer does. header_len overrides the length field (for broken
  // files); -1 writes the true length.
  static void write_raw(const std::string& path, std::string header,
                        const std::vector<uint8_t>& data, int64_t header_len = -1) {
    while (header.size() % 8 != 0) header.push_back(' ');
    const uint64_t len = header_len < 0 ? header.size() : uint64_t(header_len);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(&len), 8);
    out.write(header.data(), std::streamsize(header.size()));
    out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
  }

 private:
  struct Tensor {
    std::string name;
    std::string dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> data;
  };
  std::vector<Tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace atom::testing
