// A small tensor container for exchanging weights, inputs and results with the PyTorch reference
// (tests/reference/tensor_file.py is the Python twin). Layout:
//   bytes 0..7    magic "DCFTNSR1"
//   bytes 8..15   H, u64 little-endian: length of the JSON header
//   bytes 16..    H bytes of UTF-8 JSON:
//                 {"tensors":[{"name":..,"dtype":"f32"|"f64"|"i32","shape":[..],"offset":..,"nbytes":..}],
//                  "meta":{...free JSON...}}
//   bytes 16+H..  data section; "offset" counts bytes from its start. Data are little-endian, row-major.
// Header-only. Errors in a file are reported as dcf::InputError (a dcf::DcfError) naming the file.
#pragma once
#include <bit>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kernels/error.h"
#include "kernels/tensor.h"

namespace dcf {

static_assert(std::endian::native == std::endian::little, "tensor_file assumes a little-endian host");

inline constexpr char kTensorFileMagic[8] = {'D', 'C', 'F', 'T', 'N', 'S', 'R', '1'};

struct TensorFile {
  std::map<std::string, Tensor> tensors;
  nlohmann::json meta = nlohmann::json::object();
};

namespace tensor_file_detail {

inline const char* dtype_tag(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::i32: return "i32";
    default: return nullptr;
  }
}

inline bool parse_dtype(const std::string& s, DType* t) {
  if (s == "f32") *t = DType::f32;
  else if (s == "f64") *t = DType::f64;
  else if (s == "i32") *t = DType::i32;
  else return false;
  return true;
}

}  // namespace tensor_file_detail

// Writes tensors (any device; copied to the host) in the given order, data 64-byte aligned.
inline void write_tensor_file(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const nlohmann::json& meta = nlohmann::json::object()) {
  using namespace tensor_file_detail;
  nlohmann::json entries = nlohmann::json::array();
  std::vector<Tensor> host;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) throw DcfError("write_tensor_file " + path + ": tensor '" + name + "' is undefined");
    const char* tag = dtype_tag(t.dtype());
    if (!tag)
      throw DcfError("write_tensor_file " + path + ": tensor '" + name + "' has unsupported dtype " +
                     dtype_name(t.dtype()) + " (f32, f64, i32 only)");
    if (!names.insert(name).second) throw DcfError("write_tensor_file " + path + ": duplicate tensor name '" + name + "'");
    offset = (offset + 63) / 64 * 64;
    entries.push_back({{"name", name}, {"dtype", tag}, {"shape", t.shape()}, {"offset", offset}, {"nbytes", t.nbytes()}});
    offset += t.nbytes();
    host.push_back(t.to(Device::cpu()));
  }
  nlohmann::json header = {{"tensors", entries}, {"meta", meta.is_null() ? nlohmann::json::object() : meta}};
  const std::string js = header.dump();
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw DcfError("write_tensor_file: cannot open " + path + " for writing");
  f.write(kTensorFileMagic, 8);
  uint64_t h = js.size();
  f.write(reinterpret_cast<const char*>(&h), 8);
  f.write(js.data(), std::streamsize(js.size()));
  uint64_t pos = 0;
  static const char zeros[64] = {};
  for (size_t i = 0; i < host.size(); ++i) {
    uint64_t off = entries[i]["offset"].get<uint64_t>();
    f.write(zeros, std::streamsize(off - pos));
    f.write(static_cast<const char*>(host[i].raw()), std::streamsize(host[i].nbytes()));
    pos = off + host[i].nbytes();
  }
  if (!f) throw DcfError("write_tensor_file: write to " + path + " failed");
}

inline TensorFile read_tensor_file(const std::string& path) {
  using namespace tensor_file_detail;
  auto bad = [&](const std::string& why) { return InputError("tensor file " + path + ": " + why); };
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw bad("cannot open");
  const uint64_t size = uint64_t(f.tellg());
  f.seekg(0);
  if (size < 16) throw bad("too short (" + std::to_string(size) + " bytes) for the 16-byte preamble");
  char magic[8];
  uint64_t h = 0;
  f.read(magic, 8);
  f.read(reinterpret_cast<char*>(&h), 8);
  if (std::memcmp(magic, kTensorFileMagic, 8) != 0) throw bad("bad magic (not a DCFTNSR1 file)");
  if (h > size - 16) throw bad("header length " + std::to_string(h) + " exceeds the file size " + std::to_string(size));
  std::string js(h, '\0');
  f.read(js.data(), std::streamsize(h));
  if (!f) throw bad("cannot read the header");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(js);
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object() || !header.contains("tensors") || !header["tensors"].is_array())
    throw bad("header lacks a \"tensors\" array");
  const uint64_t data_start = 16 + h, data_size = size - data_start;
  TensorFile out;
  if (header.contains("meta")) out.meta = header["meta"];
  for (const auto& e : header["tensors"]) {
    std::string name;
    DType dt;
    Shape shape;
    uint64_t offset = 0, nbytes = 0;
    try {
      name = e.at("name").get<std::string>();
      if (!parse_dtype(e.at("dtype").get<std::string>(), &dt))
        throw bad("tensor '" + name + "' has unknown dtype " + e.at("dtype").dump());
      for (const auto& d : e.at("shape")) {
        int64_t v = d.get<int64_t>();
        if (v < 0) throw bad("tensor '" + name + "' has a negative dimension");
        shape.push_back(v);
      }
      offset = e.at("offset").get<uint64_t>();
      nbytes = e.at("nbytes").get<uint64_t>();
    } catch (const nlohmann::json::exception& ex) {
      throw bad("malformed tensor entry " + e.dump() + ": " + ex.what());
    }
    if (out.tensors.count(name)) throw bad("duplicate tensor name '" + name + "'");
    const uint64_t expect = uint64_t(shape_numel(shape)) * dtype_size(dt);
    if (nbytes != expect)
      throw bad("tensor '" + name + "': nbytes " + std::to_string(nbytes) + " does not match shape " +
                shape_str(shape) + " (" + std::to_string(expect) + " bytes)");
    if (offset > data_size || nbytes > data_size - offset)
      throw bad("tensor '" + name + "' [" + std::to_string(offset) + ", +" + std::to_string(nbytes) +
                ") lies outside the data section of " + std::to_string(data_size) + " bytes (truncated file?)");
    Tensor t = Tensor::empty(shape, dt);
    f.seekg(std::streamoff(data_start + offset));
    f.read(static_cast<char*>(t.raw()), std::streamsize(nbytes));
    if (!f) throw bad("cannot read the data of tensor '" + name + "'");
    out.tensors.emplace(name, std::move(t));
  }
  return out;
}

}  // namespace dcf
