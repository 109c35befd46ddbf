// Export of a checkpoint's weights for the official DCFormer PyTorch modeling code
// (github.com/Caiyun-AI/DCFormer, pytorch/dcformer/modeling_dcformer.py, class DCFormer): one
// model.safetensors with that code's parameter names and PyTorch layouts (Linear weights as
// (out, in)), and a config.json for its DCFormerConfig. The name mapping is in docs/hf_export.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/model_spec.h"  // defines: ModelSpec

namespace dcf::ckpt {

struct ExportOptions {
  std::string dtype = "f32";  // "f32" or "bf16" (round to nearest even)
};

struct ExportedTensor {
  std::string name;
  std::vector<int64_t> shape;
};

struct ExportReport {
  std::vector<ExportedTensor> tensors;
  int64_t bytes = 0;  // of model.safetensors
};

// The official names and shapes for a model spec (InputError if the model cannot be expressed there:
// N*D != E, dyn_rank != 2, or a window pattern other than all-global, LG, LGLL, LGL6).
std::vector<ExportedTensor> hf_tensor_names(const ModelSpec& spec);

// Reads the parameters of checkpoint step_dir (model `spec`), writes out_dir/model.safetensors and
// out_dir/config.json (each through a temporary name and a rename).
ExportReport export_hf(const std::string& step_dir, const ModelSpec& spec, const std::string& out_dir,
                       const ExportOptions& opt = {});

}  // namespace dcf::ckpt
