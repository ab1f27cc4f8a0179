#!/usr/bin/env bash
# Checks (status) or starts (up) the local services Runnel's backend tests talk to:
# PostgreSQL, Redis, RabbitMQ and NATS (JetStream), all on 127.0.0.1 only.
#
#   scripts/services.sh status   # prints each service's state; exit 1 if a required one is down
#   scripts/services.sh up       # starts whatever is down (idempotent), then reports as status
#
# RUNNEL_SERVICES_REQUIRED (space-separated names from: postgres redis rabbitmq nats) lists
# the services whose absence fails the run. Anything else that is down only gets a warning,
# so a broker a change does not need never blocks CI. Default: none required.
set -euo pipefail

SERVICES=(postgres redis rabbitmq nats)
READY_WAIT_SECONDS="${RUNNEL_SERVICES_WAIT_SECONDS:-60}"
REQUIRED=" ${RUNNEL_SERVICES_REQUIRED:-} "

port_of() {
  case "$1" in
    postgres) echo 5432 ;;
    redis) echo 6379 ;;
    rabbitmq) echo 5672 ;;
    nats) echo 4222 ;;
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
  esac
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
  local name
  for name in "${SERVICES[@]}"; do
    if is_up "$name"; then
      continue
    fi
    echo "services: starting $name"
    if ! start "$name" >/dev/null 2>&1; then
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
  up) up ;;
  status) report ;;
  *)
    echo "usage: $0 up|status" >&2
    exit 2
    ;;
esac
