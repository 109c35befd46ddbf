// Bad configs and command lines: each exits with status 2 and one line naming the culprit, before any
// training starts (no metrics are written).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

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
        Case{"warmup_too_long", "--set schedule.warmup_steps=5000", "schedule.total_steps", ""}),
    [](const auto& info) { return info.param.name; });
