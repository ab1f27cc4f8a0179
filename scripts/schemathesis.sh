#!/usr/bin/env bash
# Runs schemathesis (PyPI, pinned below) with the arguments given, from a venv kept
# outside the clone: ${RUNNEL_TOOLS_DIR:-~/.cache/runnel-tools}/schemathesis-venv.
#
#   scripts/schemathesis.sh run http://127.0.0.1:7411/openapi.json -H "Authorization: Bearer $KEY"
#   scripts/schemathesis.sh --install-only      # prepare the venv, run nothing
#
# The venv is built on first use (about a minute) and rebuilt when the pinned version
# changes (a stamp file records what it holds). Concurrent invocations (tests run in
# parallel) take a lock while they check or build it, so none sees a half-built venv.
# Exit code 3: the venv could not be built (no network, no python3 -m venv); the log is
# in the tools directory.
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
TOOLS_DIR="${RUNNEL_TOOLS_DIR:-$HOME/.cache/runnel-tools}"
VENV="$TOOLS_DIR/schemathesis-venv"
STAMP="$VENV/.runnel-stamp"
WANT="schemathesis==$SCHEMATHESIS_VERSION"

install_venv() {
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    return 0
  fi
  echo "schemathesis.sh: preparing $VENV ($WANT; first run only)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV" &&
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$WANT" \
      >"$TOOLS_DIR/schemathesis-install.log" 2>&1 &&
    echo "$WANT" >"$STAMP"
}

mkdir -p "$TOOLS_DIR"
(
  flock -x 9
  if ! install_venv; then
    echo "schemathesis.sh: could not install $WANT; see $TOOLS_DIR/schemathesis-install.log" >&2
    rm -rf "$VENV"
    exit 3
  fi
) 9>"$TOOLS_DIR/schemathesis-venv.lock"

if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
exec "$VENV/bin/schemathesis" "$@"
