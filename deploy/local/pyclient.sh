#!/usr/bin/env bash
# Puts openapi-python-client (PyPI, code nobody here wrote) in a virtualenv at
# target/tools/openapi-client: tests/tests/it/contract.rs generates a client from Pulse's
# OpenAPI document with it and drives the API through that client. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/tools/openapi-client
if [ -x "$venv/bin/openapi-python-client" ]; then exit 0; fi
mkdir -p target/tools
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check 'openapi-python-client==0.29.1'
printf '[pyclient] %s\n' "$("$venv/bin/openapi-python-client" --version)"
