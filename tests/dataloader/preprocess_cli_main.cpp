// Test driver: the `preprocess` subcommand of dcformer on its own (launch/cmd_preprocess.cpp with a
// minimal main), so the data tests can run the command line without the whole program.
#include <iostream>

#include "kernels/error.h"
#include "launch/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"dcformer (preprocess only; test driver)"};
  app.require_subcommand(1);
  dcf::CommandRunner run = dcf::add_preprocess_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : dcf::kExitBadInput;
  }
  try {
    return run();
  } catch (const dcf::DcfError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return e.exit_code();
  }
}
