#!/usr/bin/env bash
# The scale-out proof and benchmark (Runnel issue 16): `order-fulfillment run` processes on
# one PostgreSQL and one broker, all on loopback services that scripts/services.sh starts.
#   1. throughput of the whole flow (every service waits 5 ms per command): orders to
#      their final state per second with 1 process, then with 3, and the ratio;
#   2. the services' stage, handler-bound: processes run each service consumer one handler
#      at a time (--service-concurrency 1), each command waits 5 ms; N commands are
#      published at once onto a service's command topic and the replies counted:
#      commands/s with 1 process, then with 3, and the ratio (target >= 2.5x);
#   3. the kill: 3 processes under a steady load, the one running the order summaries
#      SIGKILLed mid-load; how long until what it held runs elsewhere (bound: 10 s).
# Every run gets a fresh PostgreSQL schema scaleout_<12 hex digits> (and, on NATS, its own
# subjects, streams and lease bucket, with lease_ttl=2s and partitions=6; on Kafka its own
# topic and group prefix, with partitions=6), checks every order (final exactly once, saga
# finished, payment ledger, read model against the event store) and drops its schema.
# Idempotent: runs again from scratch; a run killed half way leaves a scaleout_ schema that
# scripts/pg-clean-test-schemas.sh drops.
#
#   scripts/scale-out.sh [--bus nats|kafka] [--orders N] [--clients N] [--processes N]
#                        [--kill-orders N] [--no-throughput] [--no-kill] [--debug]
#                        [--stage-commands N (3000; 0 skips the stage run)]
#                        [--stage-service inventory|payments|shipping|all]
#                        [--stage-concurrency N (1)] [--nats-partitions N (6)]
#                        [--kafka-partitions N (6)]
#
# Environment: RUNNEL_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres),
# RUNNEL_TEST_NATS_URL (nats://127.0.0.1:4222), RUNNEL_TEST_KAFKA_BROKERS (127.0.0.1:9092),
# CARGO_TARGET_DIR (default ~/.cache/runnel-target). Builds in release mode unless --debug.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/runnel-target}"
PG="${RUNNEL_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
NATS="${RUNNEL_TEST_NATS_URL:-nats://127.0.0.1:4222}"
KAFKA="${RUNNEL_TEST_KAFKA_BROKERS:-127.0.0.1:9092}"

profile=release
bus=nats
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=debug ;;
    --bus) bus="$2"; args+=(--bus "$2"); shift ;;
    --orders|--clients|--processes|--kill-orders|--stage-commands|--stage-service|\
    --stage-concurrency|--nats-partitions|--kafka-partitions) args+=("$1" "$2"); shift ;;
    --no-throughput|--no-kill) args+=("$1") ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "scale-out: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# The services must already be up (scripts/services.sh up starts them).
case "$bus" in
  nats) port=${NATS##*:}; port=${port%%[/?]*} ;;
  kafka) port=${KAFKA##*:}; port=${port%%[,/?]*} ;;
  *) echo "scale-out: --bus is nats or kafka" >&2; exit 2 ;;
esac
for p in 5432 "$port"; do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "scale-out: nothing listens on 127.0.0.1:$p; run scripts/services.sh up" >&2
    exit 1
  fi
done

echo "scale-out: building order-fulfillment and the scale_out harness ($profile)"
build=(cargo build -p order-fulfillment --bin order-fulfillment --example scale_out)
[ "$profile" = release ] && build+=(--release)
"${build[@]}"

bin_dir="$CARGO_TARGET_DIR/$profile"
"$bin_dir/examples/scale_out" --bin "$bin_dir/order-fulfillment" \
  --pg "$PG" --nats "$NATS" --kafka "$KAFKA" "${args[@]}"
