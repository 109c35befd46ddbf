#!/usr/bin/env bash
# The README's test command: install every dependency, fetch the built-in corpus, build, run ctest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/install_deps.sh"
bash "$root/scripts/setup_default_data.sh"
bash "$root/scripts/build.sh"
[ -s "$root/data/sotu/sotu_gpt2.bin" ] || bash "$root/scripts/make_default_corpus.sh" "$root/build/dcformer" "$root/data/sotu"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
cd "$root/build"
# ctest lists skipped tests (the GPU ones, without a GPU) after its summary: repeat the summary last.
set +e
ctest --output-on-failure --timeout 900 -j2 2>&1 | tee ctest-output.log
rc=${PIPESTATUS[0]}
grep -E "tests passed|tests failed" ctest-output.log | tail -n 1
exit "$rc"
