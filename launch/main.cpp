// dcformer: one executable, subcommands. Errors anywhere end in one printed line and a non-zero exit;
// under MPI a failing rank aborts the whole job (never a hang).
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "kernels/error.h"
#include "launch/commands.h"
#include "launch/mpi_env.h"

int main(int argc, char** argv) {
  CLI::App app{"dcformer: pretraining DCFormer (DCMHA) and Transformer++ language models"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all");
  dcf::CommandRunner train = dcf::add_train_command(app);
  dcf::CommandRunner preprocess = dcf::add_preprocess_command(app);
  dcf::CommandRunner bench = dcf::add_bench_command(app);
  dcf::CommandRunner ckpt = dcf::add_ckpt_command(app);
  dcf::CommandRunner eval = dcf::add_eval_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "dcformer: %s (see --help)\n", e.what());
    return dcf::kExitBadInput;
  }
  dcf::CommandRunner run;
  if (app.got_subcommand("train")) run = train;
  if (app.got_subcommand("preprocess")) run = preprocess;
  if (app.got_subcommand("bench")) run = bench;
  if (app.got_subcommand("ckpt")) run = ckpt;
  if (app.got_subcommand("eval")) run = eval;
  try {
    return run();
  } catch (const dcf::DcfError& e) {
    return dcf::report_fatal(e.what(), e.exit_code());
  } catch (const std::exception& e) {
    return dcf::report_fatal(e.what(), dcf::kExitFailure);
  }
}
