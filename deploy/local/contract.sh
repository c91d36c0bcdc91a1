#!/usr/bin/env bash
# Runs schemathesis (PyPI, code nobody here wrote) against the OpenAPI document of a Pulse
# started here on a scratch database, queue and Redis prefix, and prints its summary: the
# contract failures still open (docs/api.md). Not part of `make test` until it reports none.
# Safe to run again; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[contract] %s\n' "$*"; }
venv=target/tools/schemathesis
if ! [ -x "$venv/bin/st" ]; then
  mkdir -p target/tools
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'schemathesis==4.32.5'
fi
cargo build -q -p pulse
db=pulse_contract
addr=127.0.0.1:8097
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db"
PULSE_DATABASE_URL="postgres://postgres@127.0.0.1/$db" PULSE_API_KEY=contract-key \
  PULSE_HTTP_ADDR=$addr PULSE_QUEUE=contract.sends PULSE_REDIS_PREFIX=contract RUST_LOG=error \
  target/debug/pulse serve >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
for _ in $(seq 50); do curl -sf "http://$addr/readyz" >/dev/null && break; sleep 0.2; done
log "schemathesis against http://$addr/openapi.json"
# Its cache goes where it runs: under target/, not into the checkout.
mkdir -p target/contract
cd target/contract
"../../$venv/bin/st" run "http://$addr/openapi.json" -H "Authorization: Bearer contract-key" \
  --checks all --max-examples "${MAX_EXAMPLES:-10}" --phases examples,coverage,fuzzing \
  --exclude-path-regex '/u/|/v1/inbound/(ses|sendgrid)' "$@"
