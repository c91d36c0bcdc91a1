#!/usr/bin/env bash
# Removes what tests that crashed before cleaning up left behind: pulse_t_* databases and
# pulse.t.* queues. Each test cleans up after itself; this only catches the leftovers.
set -euo pipefail
admin=${PULSE_TEST_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
for db in $(psql "$admin" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'pulse\_t\_%'"); do
  psql "$admin" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
done
if command -v rabbitmqctl >/dev/null; then
  for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep '^pulse\.t\.' || true); do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
fi
