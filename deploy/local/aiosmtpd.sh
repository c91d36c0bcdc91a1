#!/usr/bin/env bash
# Puts aiosmtpd (PyPI) in a virtualenv at target/tools/aiosmtpd, for the tests that send through
# a relay requiring STARTTLS or implicit TLS and AUTH (tests/tests/it/relay_tls.rs): a server
# nobody here wrote. Installs python3-venv from Debian when the venv module is missing. Safe to
# run again.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[aiosmtpd] %s\n' "$*"; }
venv=target/tools/aiosmtpd
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import aiosmtpd' 2>/dev/null; then exit 0; fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  log "need root to run: $*"; return 1; fi; }
mkdir -p target/tools
rm -rf "$venv"
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
  log "installing python3-venv"
  as_root apt-get update -qq
  as_root apt-get install -y -qq python3-venv >/dev/null
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check 'aiosmtpd>=1.4,<2'
log "$("$venv/bin/python" -c 'import aiosmtpd; print("aiosmtpd", aiosmtpd.__version__)')"
