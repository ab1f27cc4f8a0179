#!/usr/bin/env bash
# Checks (status) or starts (up) the local services Runnel's backend tests talk to, all on
# 127.0.0.1 only: PostgreSQL, Redis, RabbitMQ and NATS (JetStream), which the machine image
# provides, plus two this script installs on first use and caches outside the clone:
#   kafka  the Kafka-protocol broker tansu, built from crates.io with the group-coordinator
#          fixes of scripts/tansu-group-fix.py and the fetch fix of
#          scripts/tansu-fetch-fix.py (~9 minutes once), port 9092
#   sqs    moto's SQS/SNS server in a Python venv (pip, ~1 minute once), port 4566
# The same venv carries the plain Python clients the interoperability tests drive
# (scripts/python-requirements.txt). RUNNEL_TOOLS_DIR (default ~/.cache/runnel-tools)
# holds the tansu binary, the venv and the two servers' logs.
#
#   scripts/services.sh status   # prints each service's state; exit 1 if a required one is down
#   scripts/services.sh up       # starts whatever is down (idempotent), then reports as status
#
# RUNNEL_SERVICES_REQUIRED (space-separated names from: postgres redis rabbitmq nats) lists
# the services whose absence fails the run. Anything else that is down only gets a warning,
# so a broker a change does not need never blocks CI. Default: none required.
set -euo pipefail

SERVICES=(postgres redis rabbitmq nats kafka sqs)
SCRIPTS_DIR="$(cd "$(dirname "$0")" && pwd)"
TOOLS_DIR="${RUNNEL_TOOLS_DIR:-$HOME/.cache/runnel-tools}"
TANSU_VERSION=0.6.0
# tansu is built with the group-coordinator fixes of scripts/tansu-group-fix.py and the
# fetch fix of scripts/tansu-fetch-fix.py; a new fix gets a new name here, so every
# machine builds it once.
TANSU_FIX=fix4
TANSU_HOME="$TOOLS_DIR/tansu-$TANSU_VERSION-$TANSU_FIX"
TANSU_BIN="$TANSU_HOME/bin/tansu"
PY_VENV="$TOOLS_DIR/py-venv"
READY_WAIT_SECONDS="${RUNNEL_SERVICES_WAIT_SECONDS:-60}"
REQUIRED=" ${RUNNEL_SERVICES_REQUIRED:-} "

port_of() {
  case "$1" in
    postgres) echo 5432 ;;
    redis) echo 6379 ;;
    rabbitmq) echo 5672 ;;
    nats) echo 4222 ;;
    kafka) echo 9092 ;;
    sqs) echo 4566 ;;
  esac
}

# True when something accepts TCP connections on 127.0.0.1:<port>.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

is_up() {
  case "$1" in
    postgres)
      if command -v pg_isready >/dev/null; then
        pg_isready -q -h 127.0.0.1 -p 5432
      else
        port_open 5432
      fi
      ;;
    redis)
      if command -v redis-cli >/dev/null; then
        [ "$(timeout 2 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
      else
        port_open 6379
      fi
      ;;
    *) port_open "$(port_of "$1")" ;;
  esac
}

# The commands the machine image uses to start each service (docs: rust-svc machine kind).
start() {
  case "$1" in
    postgres)
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
      ;;
    redis)
      redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
      ;;
    rabbitmq)
      rabbitmq-server -detached
      ;;
    nats)
      start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
      ;;
    kafka)
      install_tansu
      # In-memory storage: a restart forgets every topic, which suits throwaway test topics.
      nohup "$TANSU_BIN" broker \
        --listener-url tcp://127.0.0.1:9092 \
        --advertised-listener-url tcp://127.0.0.1:9092 \
        --storage-engine memory://tansu/ >>"$TOOLS_DIR/tansu.log" 2>&1 </dev/null &
      ;;
    sqs)
      install_py_venv
      # moto's server with its FIFO receive made atomic (see scripts/moto-server.py).
      nohup "$PY_VENV/bin/python" "$SCRIPTS_DIR/moto-server.py" -H 127.0.0.1 -p 4566 \
        >>"$TOOLS_DIR/moto.log" 2>&1 </dev/null &
      ;;
  esac
}

# tansu from crates.io, built once into the tools directory (outside the clone): its two
# source crates are fetched from crates.io's download endpoint (static.crates.io, the one
# cargo itself downloads from; no prebuilt binary), scripts/tansu-group-fix.py fixes how its group
# coordinator drops a member that died without leaving, scripts/tansu-fetch-fix.py how
# its storage answers a fetch from inside a record batch (see those scripts for why), and
# the broker is built against the crate's own Cargo.lock.
install_tansu() {
  if [ -x "$TANSU_BIN" ]; then
    return 0
  fi
  mkdir -p "$TOOLS_DIR"
  echo "services: building tansu $TANSU_VERSION with scripts/tansu-group-fix.py (first run only, several minutes)" >&2
  local src="$TANSU_HOME/src" crate
  rm -rf "$src"
  mkdir -p "$src" "$TANSU_HOME/bin"
  for crate in tansu tansu-broker tansu-storage; do
    curl -fsSL --retry 3 "https://static.crates.io/crates/$crate/$crate-$TANSU_VERSION.crate" |
      tar xz -C "$src" || return 1
  done
  python3 "$SCRIPTS_DIR/tansu-group-fix.py" "$src/tansu-broker-$TANSU_VERSION" || return 1
  python3 "$SCRIPTS_DIR/tansu-fetch-fix.py" "$src/tansu-storage-$TANSU_VERSION" || return 1
  printf '\n[patch.crates-io]\ntansu-broker = { path = "../tansu-broker-%s" }\ntansu-storage = { path = "../tansu-storage-%s" }\n' \
    "$TANSU_VERSION" "$TANSU_VERSION" >>"$src/tansu-$TANSU_VERSION/Cargo.toml"
  CARGO_TARGET_DIR="$src/target" cargo build --release --features dynostore \
    --manifest-path "$src/tansu-$TANSU_VERSION/Cargo.toml" >"$TOOLS_DIR/tansu-install.log" 2>&1 ||
    return 1
  cp "$src/target/release/tansu" "$TANSU_BIN.tmp" && mv "$TANSU_BIN.tmp" "$TANSU_BIN" || return 1
  # The build tree is large and never needed again.
  rm -rf "$src"
}

# PIDs of tansu brokers this script started from another build (an older fix, or none):
# `up` stops them so the broker built here serves the tests. Only brokers whose binary
# lives in the tools directory are considered.
stale_tansu_pids() {
  local pid exe want
  want="$(readlink -f "$TANSU_BIN" 2>/dev/null || echo "$TANSU_BIN")"
  for pid in $(pgrep -x tansu || true); do
    # The link itself, not its target: a replaced binary reads "<path> (deleted)".
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    exe="${exe% (deleted)}"
    if [[ "$exe" == "$TOOLS_DIR"/tansu-* ]] && [ "$exe" != "$want" ]; then
      echo "$pid"
    fi
  done
}

# One venv with moto's server and the plain clients of the interoperability tests. It is
# rebuilt when the pinned requirements change.
install_py_venv() {
  local req="$SCRIPTS_DIR/python-requirements.txt"
  local stamp="$PY_VENV/.requirements"
  if [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    return 0
  fi
  mkdir -p "$TOOLS_DIR"
  echo "services: preparing the Python venv $PY_VENV (first run only)" >&2
  rm -rf "$PY_VENV"
  python3 -m venv "$PY_VENV"
  "$PY_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req" \
    >"$TOOLS_DIR/py-venv-install.log" 2>&1
  cp "$req" "$stamp"
}

wait_ready() {
  local name="$1" deadline=$((SECONDS + READY_WAIT_SECONDS))
  while ! is_up "$name"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      return 1
    fi
    sleep 1
  done
}

report() {
  local failed=0 name
  for name in "${SERVICES[@]}"; do
    if is_up "$name"; then
      echo "services: $name up (127.0.0.1:$(port_of "$name"))"
    elif [[ "$REQUIRED" == *" $name "* ]]; then
      echo "services: ERROR: $name is down and RUNNEL_SERVICES_REQUIRED needs it" >&2
      failed=1
    else
      echo "services: warning: $name is down (not required by this run)" >&2
    fi
  done
  return "$failed"
}

up() {
  local name pid
  for pid in $(stale_tansu_pids); do
    echo "services: stopping tansu pid $pid (another build than $TANSU_BIN)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
  done
  for name in "${SERVICES[@]}"; do
    if is_up "$name"; then
      continue
    fi
    echo "services: starting $name"
    if ! start "$name" >/dev/null; then
      echo "services: warning: the start command for $name failed" >&2
      continue
    fi
    if ! wait_ready "$name"; then
      echo "services: warning: $name did not come up within ${READY_WAIT_SECONDS}s" >&2
    fi
  done
  report
}

case "${1:-status}" in
  up)
    up
    # The interoperability tests need the venv even when moto was already running.
    install_py_venv
    ;;
  python) install_py_venv && echo "$PY_VENV/bin/python" ;;
  status) report ;;
  *)
    echo "usage: $0 up|status|python" >&2
    exit 2
    ;;
esac
