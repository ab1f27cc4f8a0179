#!/usr/bin/env bash
# The test command (README, CI): every test of the workspace.
#   1. doc tests: every public trait's rustdoc example compiles and runs (nextest cannot
#      run doc tests, so cargo test does);
#   2. everything else under cargo-nextest, whose summary line ends the output.
# Before them it installs the Node tools the AsyncAPI tests use (scripts/node-tools.sh).
# Extra arguments go to nextest, e.g. `scripts/test.sh -p runnel-cli`.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/runnel-target}"

# The AsyncAPI tests run the official parser (npm @asyncapi/parser) on Node: install it
# once, outside the clone (scripts/node-tools.sh; the tests also install it on demand).
# Without Node they say SKIPPED, or fail under RUNNEL_REQUIRE_SERVICES=1.
if command -v node >/dev/null && command -v npm >/dev/null; then
  scripts/node-tools.sh install >/dev/null
elif [ "${RUNNEL_REQUIRE_SERVICES:-}" = "1" ]; then
  echo "test.sh: node and npm are required (the AsyncAPI parser tests); install Node.js 18+" >&2
  exit 1
fi

cargo test --workspace --doc --quiet
cargo nextest run --workspace "$@"
