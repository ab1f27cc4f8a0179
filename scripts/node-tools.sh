#!/usr/bin/env bash
# Installs (once) and locates the Node tools Runnel's tests drive, outside the clone:
# the official AsyncAPI parser (npm @asyncapi/parser, pinned) under
# $RUNNEL_TOOLS_DIR/node-asyncapi-parser-<version> (default ~/.cache/runnel-tools).
#
#   scripts/node-tools.sh install   # npm install on first use (idempotent); prints the dir
#   scripts/node-tools.sh dir       # prints the dir if the install is complete, else exit 1
#
# Exit 3 when node or npm is missing (callers tell "no Node here" from a failed install).
set -euo pipefail

ASYNCAPI_PARSER_VERSION=3.6.6
TOOLS_DIR="${RUNNEL_TOOLS_DIR:-$HOME/.cache/runnel-tools}"
PREFIX="$TOOLS_DIR/node-asyncapi-parser-$ASYNCAPI_PARSER_VERSION"
# Written last: a half-finished install (killed npm) is never taken for a complete one.
MARKER="$PREFIX/.installed"

need_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node-tools: node and npm are needed (install Node.js 18 or newer)" >&2
    exit 3
  fi
}

case "${1:-}" in
  install)
    need_node
    if [ ! -f "$MARKER" ]; then
      mkdir -p "$PREFIX"
      echo "node-tools: installing @asyncapi/parser@$ASYNCAPI_PARSER_VERSION into $PREFIX (first run only)" >&2
      # flock: two test processes installing at once must not interleave in one prefix.
      (
        flock -w 600 9
        if [ ! -f "$MARKER" ]; then
          npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
            "@asyncapi/parser@$ASYNCAPI_PARSER_VERSION" >"$TOOLS_DIR/node-tools-install.log" 2>&1 || {
            echo "node-tools: npm install failed; see $TOOLS_DIR/node-tools-install.log" >&2
            exit 1
          }
          touch "$MARKER"
        fi
      ) 9>"$TOOLS_DIR/node-tools.lock"
    fi
    echo "$PREFIX"
    ;;
  dir)
    [ -f "$MARKER" ] || exit 1
    echo "$PREFIX"
    ;;
  *)
    echo "usage: $0 install|dir" >&2
    exit 2
    ;;
esac
