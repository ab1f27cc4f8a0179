#!/usr/bin/env bash
# Drops the throwaway schemas that PostgreSQL-backed tests and benchmarks create
# (t_<uuid>, cli_<uuid>, cli_dlq_<uuid>, e2e_<uuid>, qry_<uuid>, tproj_<uuid>, srv_<uuid>, bench_<uuid>, ...), so a machine that
# runs CI again and again does not accumulate thousands of them. Only names ending in a
# 32-hex-digit UUID are touched, or, for the saga and projection benchmarks' schemas and the
# scale-out harness's scaleout_<12 hex> (whose prefixes leave room for 12 within the
# 40-character limit), in 12 hex digits. Idempotent; a no-op when psql or the server is
# missing.
#
#   scripts/pg-clean-test-schemas.sh [DATABASE_URL]   (default: $RUNNEL_TEST_POSTGRES_URL)
set -euo pipefail

url="${1:-${RUNNEL_TEST_POSTGRES_URL:-}}"
if [ -z "$url" ] || ! command -v psql >/dev/null; then
  echo "pg-clean-test-schemas: no database URL or no psql; nothing to do"
  exit 0
fi

# One DROP per statement (each its own transaction): dropping thousands of schemas in one
# transaction runs out of lock slots.
pattern='^((t|cli|cli_dlq|cli_sg|cli_pj|cli_sp|e2e|saga|ful|demo|procs|proj|tproj|qry|srv|srvadm|strm|strmk|bench|bench_raw|bench_bus|bench_bus_raw|bench_saga|bench_saga_raw)_[0-9a-f]{32}|(bench_saga|bench_saga_raw|bench_saga_mem|bench_proj|bench_proj_mem|bench_http|scaleout)_[0-9a-f]{12})$'
if ! schemas=$(psql -X -At "$url" -c "SELECT nspname FROM pg_namespace WHERE nspname ~ '$pattern'"); then
  echo "pg-clean-test-schemas: cannot reach the server; nothing dropped"
  exit 0
fi
if [ -z "$schemas" ]; then
  echo "pg-clean-test-schemas: no test schemas to drop"
  exit 0
fi
count=$(printf '%s\n' "$schemas" | wc -l)
{
  echo "SET client_min_messages = warning;"
  printf '%s\n' "$schemas" | sed 's/.*/DROP SCHEMA IF EXISTS "&" CASCADE;/'
} | psql -q -X -v ON_ERROR_STOP=1 "$url" >/dev/null
echo "pg-clean-test-schemas: dropped $count test schemas"
