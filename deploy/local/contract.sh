#!/usr/bin/env bash
# Runs schemathesis (PyPI, code nobody here wrote) against the OpenAPI document of a Pulse
# started here on a scratch database, queue and Redis prefix: every check, in every phase, the
# stateful one following the document's links (create a sequence, then act on it). Exits
# non-zero on any failure. `make test` runs it with a fixed seed (CONTRACT_SEED) so a run is
# repeatable; `make contract` draws a new seed each time. Extra arguments go to `st run`.
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
# A real RSA key for the DKIM fields (deploy/local/contract_hooks.py says why).
mkdir -p target/contract
[ -s target/contract/dkim-rsa.pem ] || openssl genrsa -traditional -out target/contract/dkim-rsa.pem 1024 2>/dev/null
for _ in $(seq 50); do curl -sf "http://$addr/readyz" >/dev/null && break; sleep 0.2; done
log "schemathesis against http://$addr/openapi.json"
# Its cache goes where it runs: under target/, not into the checkout.
cd target/contract
seed=()
[ -n "${CONTRACT_SEED:-}" ] && seed=(--seed "$CONTRACT_SEED" --generation-deterministic)
# Every check but one: a deleted sequence stays readable, by design (`GET /v1/sequences/{id}`
# answers it with status DELETED; its versions, audit log and enrollments remain for audit,
# docs/control.md), so the check that a deleted resource answers 404 is left out.
PULSE_CONTRACT_RSA_KEY="$PWD/dkim-rsa.pem" SCHEMATHESIS_HOOKS=../../deploy/local/contract_hooks.py \
  "../../$venv/bin/st" --config-file ../../deploy/local/schemathesis.toml run "http://$addr/openapi.json" -H "Authorization: Bearer contract-key" \
  --checks all --exclude-checks use_after_free --max-examples "${MAX_EXAMPLES:-10}" --phases examples,coverage,fuzzing,stateful \
  --exclude-path-regex '/u/|/v1/inbound/(ses|sendgrid)' "${seed[@]}" "$@"
