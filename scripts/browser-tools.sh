#!/usr/bin/env bash
# Installs (once) and locates what the dashboard's browser test drives: Debian's Chromium
# and chromedriver (/usr/bin/chromium, /usr/bin/chromedriver) and the npm package
# playwright-core (pinned) under $RUNNEL_TOOLS_DIR/node-playwright-<version> (default
# ~/.cache/runnel-tools). playwright-core never downloads a browser of its own: the test
# launches /usr/bin/chromium through its executablePath.
#
#   scripts/browser-tools.sh install   # apt-get / npm install on first use (idempotent); prints the dir
#   scripts/browser-tools.sh dir       # prints the dir if everything is installed, else exit 1
#
# Exit 3 when node or npm is missing, or Chromium cannot be installed (not root, no apt):
# callers tell "no browser here" from a failed install.
set -euo pipefail

PLAYWRIGHT_CORE_VERSION=1.65.2
CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver
TOOLS_DIR="${RUNNEL_TOOLS_DIR:-$HOME/.cache/runnel-tools}"
PREFIX="$TOOLS_DIR/node-playwright-$PLAYWRIGHT_CORE_VERSION"
# Written last: a half-finished install (killed npm) is never taken for a complete one.
MARKER="$PREFIX/.installed"
LOG="$TOOLS_DIR/browser-tools-install.log"

need_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "browser-tools: node and npm are needed (install Node.js 18 or newer)" >&2
    exit 3
  fi
}

have_chromium() {
  [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ]
}

install_chromium() {
  have_chromium && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "browser-tools: $CHROMIUM or $CHROMEDRIVER is missing and apt-get cannot run here (needs root on Debian); install chromium chromium-driver" >&2
    exit 3
  fi
  echo "browser-tools: installing the Debian packages chromium chromium-driver (first run only)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # A stale package list names versions the mirror no longer has: update, then once more.
  if ! apt-get install -y -q --no-install-recommends chromium chromium-driver >>"$LOG" 2>&1; then
    apt-get update -q >>"$LOG" 2>&1 || true
    apt-get install -y -q --no-install-recommends chromium chromium-driver >>"$LOG" 2>&1 || {
      echo "browser-tools: apt-get install chromium chromium-driver failed; see $LOG" >&2
      exit 1
    }
  fi
  have_chromium || {
    echo "browser-tools: the packages installed but $CHROMIUM or $CHROMEDRIVER is still missing" >&2
    exit 1
  }
}

case "${1:-}" in
  install)
    need_node
    mkdir -p "$TOOLS_DIR"
    # flock: two test processes installing at once must not run apt or npm twice.
    (
      flock -w 900 9
      install_chromium
      if [ ! -f "$MARKER" ]; then
        mkdir -p "$PREFIX"
        echo "browser-tools: installing playwright-core@$PLAYWRIGHT_CORE_VERSION into $PREFIX (first run only)" >&2
        # playwright-core has no install script and fetches no browser.
        npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
          "playwright-core@$PLAYWRIGHT_CORE_VERSION" >>"$LOG" 2>&1 || {
          echo "browser-tools: npm install failed; see $LOG" >&2
          exit 1
        }
        touch "$MARKER"
      fi
    ) 9>"$TOOLS_DIR/browser-tools.lock"
    echo "$PREFIX"
    ;;
  dir)
    [ -f "$MARKER" ] && have_chromium || exit 1
    echo "$PREFIX"
    ;;
  chromium)
    echo "$CHROMIUM"
    ;;
  *)
    echo "usage: $0 install|dir|chromium" >&2
    exit 2
    ;;
esac
