// Subcommands of the dcformer executable. Each registers itself on the CLI11 app and runs when chosen;
// a subcommand returns the process exit status.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace dcf {

// A subcommand's runner, set when its options are registered.
using CommandRunner = std::function<int()>;

CommandRunner add_train_command(CLI::App& app);
CommandRunner add_preprocess_command(CLI::App& app);   // dataloader/ (tokenize jsonl[.zst] -> .bin/.idx)
CommandRunner add_bench_command(CLI::App& app);        // time steps: tokens/s, TFLOP/s, MFU, memory
CommandRunner add_ckpt_command(CLI::App& app);         // checkpoint/: ckpt info | verify | export-hf
CommandRunner add_eval_command(CLI::App& app);         // loss and perplexity of a checkpoint on data

}  // namespace dcf
