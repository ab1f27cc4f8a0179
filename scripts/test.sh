#!/usr/bin/env bash
# The test command (README, CI): every test of the workspace.
#   1. doc tests: every public trait's rustdoc example compiles and runs (nextest cannot
#      run doc tests, so cargo test does);
#   2. everything else under cargo-nextest, whose summary line ends the output.
# Before them it installs the Node tools the AsyncAPI tests use (scripts/node-tools.sh)
# and the browser the dashboard test drives (scripts/browser-tools.sh).
# Extra arguments go to nextest, e.g. `scripts/test.sh -p runnel-cli`.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/runnel-target}"

# The AsyncAPI tests run the official parser (npm @asyncapi/parser) on Node: install it
# once, outside the clone (scripts/node-tools.sh; the tests also install it on demand).
# Without Node they say SKIPPED, or fail under RUNNEL_REQUIRE_SERVICES=1.
# The dashboard's browser test drives Debian's Chromium through playwright-core
# (scripts/browser-tools.sh: apt-get chromium chromium-driver, npm playwright-core, once).
# Required under RUNNEL_REQUIRE_SERVICES=1; elsewhere installed when it can be (the test
# then says SKIPPED).
if command -v node >/dev/null && command -v npm >/dev/null; then
  scripts/node-tools.sh install >/dev/null
  if [ "${RUNNEL_REQUIRE_SERVICES:-}" = "1" ]; then
    scripts/browser-tools.sh install >/dev/null
  else
    scripts/browser-tools.sh install >/dev/null ||
      echo "test.sh: Chromium or playwright-core could not be installed; the dashboard browser test will say SKIPPED" >&2
  fi
elif [ "${RUNNEL_REQUIRE_SERVICES:-}" = "1" ]; then
  echo "test.sh: node and npm are required (the AsyncAPI parser and dashboard browser tests); install Node.js 18+" >&2
  exit 1
fi

cargo test --workspace --doc --quiet
cargo nextest run --workspace "$@"
