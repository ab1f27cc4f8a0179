#!/usr/bin/env bash
# The test command (README, CI): every test of the workspace.
#   1. doc tests: every public trait's rustdoc example compiles and runs (nextest cannot
#      run doc tests, so cargo test does);
#   2. everything else under cargo-nextest, whose summary line ends the output.
# Extra arguments go to nextest, e.g. `scripts/test.sh -p runnel-cli`.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/runnel-target}"

cargo test --workspace --doc --quiet
cargo nextest run --workspace "$@"
