// `dcformer preprocess`: jsonl / jsonl.zst (the Pile's layout) -> Megatron .bin/.idx with the
// tokenizer of a Hugging Face tokenizer.json (or GPT-2's encoder.json + vocab.bpe). The work is in
// dataloader/preprocess.h; this file only maps the command line onto it.
#include <iostream>
#include <memory>

#include "dataloader/preprocess.h"
#include "launch/commands.h"

namespace dcf {

CommandRunner add_preprocess_command(CLI::App& app) {
  auto opt = std::make_shared<data::PreprocessOptions>();
  CLI::App* cmd = app.add_subcommand("preprocess", "Tokenize jsonl[.zst] documents into a Megatron .bin/.idx dataset");
  cmd->add_option("--input", opt->inputs, "Input files (.jsonl or .jsonl.zst), read in this order")->required()->expected(1, -1);
  cmd->add_option("--tokenizer", opt->tokenizer, "tokenizer.json, or a directory with encoder.json + vocab.bpe")->required();
  cmd->add_option("--output-prefix", opt->output_prefix, "Writes <prefix>.bin and <prefix>.idx")->required();
  cmd->add_option("--workers", opt->workers, "Tokenizer threads (0: one per hardware thread)")->check(integer_at_least(0));
  cmd->add_flag("--strict", opt->strict, "Stop at the first malformed line instead of skipping it");
  cmd->add_option("--json-key", opt->json_key, "JSON field holding the text")->capture_default_str();
  cmd->add_flag("!--no-eod", opt->append_eod, "Do not append the end-of-document token");
  cmd->add_option("--progress-interval", opt->progress_interval_s, "Seconds between progress lines (0: none)")
      ->capture_default_str()
      ->check(number_at_least(0));
  return [opt]() -> int {
    data::PreprocessSummary s = data::preprocess(*opt, std::cerr);
    std::cerr << "preprocess: wrote " << opt->output_prefix << ".bin/.idx: " << s.documents << " documents, "
              << s.tokens << " tokens (" << s.dtype << ") from " << s.lines << " lines in " << s.seconds << " s ("
              << (s.seconds > 0 ? static_cast<double>(s.input_bytes) / s.seconds / 1e6 : 0.0) << " MB/s input); skipped "
              << s.malformed_lines << " malformed lines and " << s.empty_documents << " empty texts\n";
    return 0;
  };
}

}  // namespace dcf
