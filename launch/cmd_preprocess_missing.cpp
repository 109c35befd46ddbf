// Registered when the data pipeline is not part of this build.
#include "launch/commands.h"
#include "kernels/error.h"

namespace dcf {
CommandRunner add_preprocess_command(CLI::App& app) {
  app.add_subcommand("preprocess", "tokenize jsonl[.zst] into .bin/.idx (not built in this configuration)");
  return []() -> int { throw InputError("preprocess: this build has no data pipeline"); };
}
}  // namespace dcf
