// Loading and validating the job configuration (runtime/config.proto): textproto file, then
// --set section.field=value overrides, then checks. Every problem is one InputError naming the field
// or file (exit status 2), raised before any work starts.
#pragma once
#include <string>
#include <vector>

#include "model/model_spec.h"
#include "runtime/config.pb.h"

namespace dcf {

// Built-in defaults, overlaid by the file and then the overrides.
dcformer::Config default_config();
dcformer::Config load_config(const std::string& path, const std::vector<std::string>& overrides);
// Applies one "section.field=value" (repeated fields take a comma-separated list).
void apply_override(dcformer::Config& cfg, const std::string& assignment);
// Checks values that do not depend on the world size; world > 0 also checks the parallel layout.
void validate_config(const dcformer::Config& cfg, int world_size = 0);
ModelSpec model_spec_from_config(const dcformer::Config& cfg);
std::string config_to_text(const dcformer::Config& cfg);

}  // namespace dcf
