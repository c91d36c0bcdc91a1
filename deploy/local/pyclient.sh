#!/usr/bin/env bash
# Puts openapi-python-client and standardwebhooks (PyPI, code nobody here wrote) in a virtualenv
# at target/tools/openapi-client: tests/tests/it/contract.rs generates a client from Pulse's
# OpenAPI document with the first and drives the API through it; tests/tests/it/webhooks.rs
# verifies each delivery's signature with the second. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/tools/openapi-client
if [ -x "$venv/bin/openapi-python-client" ] && "$venv/bin/python" -c 'import standardwebhooks' 2>/dev/null; then
  exit 0
fi
mkdir -p target/tools
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check 'openapi-python-client==0.29.1' \
  'standardwebhooks==1.1.0'
printf '[pyclient] %s\n' "$("$venv/bin/openapi-python-client" --version)"
