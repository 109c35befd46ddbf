// Subcommands of the dcformer executable. Each registers itself on the CLI11 app and runs when chosen;
// a subcommand returns the process exit status.
#pragma once
#include <CLI/CLI.hpp>
#include <exception>
#include <functional>
#include <sstream>
#include <string>
#include <type_traits>

namespace dcf {

// A subcommand's runner, set when its options are registered.
using CommandRunner = std::function<int()>;

// Checks of numeric options with a plain message ("--steps: must be an integer >= 1, got '-1'"): CLI11's
// own numeric ranges print their limits as doubles (1.797...e308 written out).
// Whether all of s is one number of type T (long long or double), into v.
template <class T>
bool parse_whole(const std::string& s, T& v) {
  size_t used = 0;
  try {
    if constexpr (std::is_same_v<T, long long>) v = std::stoll(s, &used);
    else v = std::stod(s, &used);
  } catch (const std::exception&) {
    return false;
  }
  return used != 0 && used == s.size();
}
inline CLI::Validator integer_at_least(long long lo) {
  return CLI::Validator(
      [lo](std::string& s) -> std::string {
        long long v = 0;
        if (!parse_whole(s, v) || v < lo) return "must be an integer >= " + std::to_string(lo) + ", got '" + s + "'";
        return {};
      },
      "INT>=" + std::to_string(lo));
}
// A number > lo (strict) or >= lo.
inline CLI::Validator number_bound(double lo, bool strict) {
  std::ostringstream lim;
  lim << (strict ? "> " : ">= ") << lo;
  return CLI::Validator(
      [lo, strict, l = lim.str()](std::string& s) -> std::string {
        double v = 0;
        if (!parse_whole(s, v) || !(strict ? v > lo : v >= lo)) return "must be a number " + l + ", got '" + s + "'";
        return {};
      },
      "NUMBER" + lim.str());
}
inline CLI::Validator number_above(double lo) { return number_bound(lo, true); }
inline CLI::Validator number_at_least(double lo) { return number_bound(lo, false); }

CommandRunner add_train_command(CLI::App& app);
CommandRunner add_preprocess_command(CLI::App& app);   // dataloader/ (tokenize jsonl[.zst] -> .bin/.idx)
CommandRunner add_bench_command(CLI::App& app);        // time steps: tokens/s, TFLOP/s, MFU, memory
CommandRunner add_ckpt_command(CLI::App& app);         // checkpoint/: ckpt info | verify | export-hf
CommandRunner add_eval_command(CLI::App& app);         // loss and perplexity of a checkpoint on data

}  // namespace dcf
