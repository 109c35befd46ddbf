// Bad configs and command lines: each exits with status 2 and one line naming the culprit, before any
// training starts (no metrics are written).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <string>

#include "tests/e2e/run_util.h"

using dcf::test::run_command;
namespace fs = std::filesystem;

namespace {

struct Case {
  std::string name, args, expect;
  std::string file_text;  // when set, written to a config file passed as --config
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class CliErrors : public ::testing::TestWithParam<Case> {};

// A valid command (the tiny config, reading its own config file as byte tokens) plus the case's arguments.
std::string base_args(const fs::path& dir, const std::string& args) {
  std::string cfg = std::string(DCF_SOURCE_DIR) + "/configs/tiny_cpu.textproto";
  std::string s = std::string(DCF_BINARY) + " train";
  if (args.find("--config") == std::string::npos) s += " --config " + cfg;
  return s + " --set run.run_dir=" + (dir / "run").string() + " --set data.train_path=" + cfg + " " + args;
}

}  // namespace

TEST_P(CliErrors, ExitTwoWithMessage) {
  const Case& c = GetParam();
  fs::path dir = fs::temp_directory_path() / ("dcf_cli_" + c.name + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string cmd;
  if (!c.file_text.empty()) {
    std::ofstream(dir / "bad.textproto") << c.file_text;
    cmd = std::string(DCF_BINARY) + " train --config " + (dir / "bad.textproto").string() + " " + c.args;
  } else {
    cmd = base_args(dir, c.args);
  }
  auto r = run_command(cmd);
  EXPECT_EQ(r.status, 2) << cmd << "\n" << r.output;
  EXPECT_NE(r.output.find(c.expect), std::string::npos) << "expected '" << c.expect << "' in:\n" << r.output;
  // One line of error, nothing trained.
  EXPECT_LE(std::count(r.output.begin(), r.output.end(), '\n'), 2) << r.output;
  EXPECT_FALSE(fs::exists(dir / "run" / "metrics.jsonl"));
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Inputs, CliErrors,
    ::testing::Values(
        Case{"unknown_field_file", "", "no field named \"n_layer\"", "model { n_layer: 4 }"},
        Case{"wrong_type_file", "", "n_layers", "model { n_layers: \"four\" }"},
        Case{"unknown_section_set", "--set modle.n_layers=2", "unknown config section 'modle'", ""},
        Case{"unknown_field_set", "--set model.n_layer=2", "unknown field 'n_layer'", ""},
        Case{"wrong_type_set", "--set model.n_layers=two", "model.n_layers=two", ""},
        Case{"bad_enum_set", "--set model.kind=GPT", "model.kind=GPT", ""},
        Case{"impossible_value", "--set model.n_layers=0", "model.n_layers", ""},
        Case{"heads_not_divisible", "--set parallel.tp=3", "parallel.tp", ""},
        Case{"batch_not_divisible", "--set run.global_batch=15 --set parallel.micro_batches=2", "run.global_batch",
             ""},
        Case{"missing_config", "--config /nonexistent/cfg.textproto", "/nonexistent/cfg.textproto", ""},
        Case{"missing_data", "--set data.train_path=/nonexistent/tokens.bin", "/nonexistent/tokens.bin", ""},
        Case{"token_too_big", "--set data.format=TOKENS_U16 --set model.vocab_size=8", "does not fit model.vocab_size",
             ""},
        Case{"unknown_cli_option", "--frobnicate", "frobnicate", ""},
        Case{"warmup_too_long", "--set schedule.warmup_steps=5000", "schedule.total_steps", ""},
        Case{"bucket_zero", "--set parallel.grad_bucket_mb=0", "parallel.grad_bucket_mb: must be >= 1", ""},
        Case{"prefetch_negative", "--set data.prefetch=-1", "data.prefetch: must be >= 0", ""}),
    [](const auto& info) { return info.param.name; });

// Numeric options of the other subcommands: exit 2 with one line naming the option, its bound and the
// value given (not CLI11's range text with its limits written out as doubles), before any work starts.
struct OptionCase {
  std::string name, args, expect;
};
void PrintTo(const OptionCase& c, std::ostream* os) { *os << c.name; }
class SubcommandOptionErrors : public ::testing::TestWithParam<OptionCase> {};

TEST_P(SubcommandOptionErrors, ExitTwoWithOneLine) {
  const OptionCase& c = GetParam();
  const std::string cfg = std::string(DCF_SOURCE_DIR) + "/configs/tiny_cpu.textproto";
  std::string args = c.args;
  for (size_t at; (at = args.find("CFG")) != std::string::npos;) args.replace(at, 3, cfg);
  const std::string cmd = std::string(DCF_BINARY) + " " + args;
  auto r = run_command(cmd);
  EXPECT_EQ(r.status, 2) << cmd << "\n" << r.output;
  EXPECT_NE(r.output.find(c.expect), std::string::npos) << "expected '" << c.expect << "' in:\n" << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_EQ(r.output.find("179769"), std::string::npos) << r.output;
}

INSTANTIATE_TEST_SUITE_P(
    Inputs, SubcommandOptionErrors,
    ::testing::Values(
        OptionCase{"bench_steps_negative", "bench --config CFG --steps -1", "--steps: must be an integer >= 1, got '-1'"},
        OptionCase{"bench_steps_fraction", "bench --config CFG --steps 1.5", "--steps: must be an integer >= 1, got '1.5'"},
        OptionCase{"bench_warmup_word", "bench --config CFG --warmup x", "--warmup: must be an integer >= 0, got 'x'"},
        OptionCase{"bench_peak_negative", "bench --config CFG --peak-tflops -5",
                   "--peak-tflops: must be a number > 0, got '-5'"},
        OptionCase{"bench_breakdown_rank_negative", "bench --config CFG --breakdown --breakdown-rank -1",
                   "--breakdown-rank: must be an integer >= 0, got '-1'"},
        OptionCase{"preprocess_workers_negative", "preprocess --input a --tokenizer b --output-prefix c --workers -2",
                   "--workers: must be an integer >= 0, got '-2'"},
        OptionCase{"preprocess_progress_negative",
                   "preprocess --input a --tokenizer b --output-prefix c --progress-interval -1",
                   "--progress-interval: must be a number >= 0, got '-1'"}),
    [](const auto& info) { return info.param.name; });
