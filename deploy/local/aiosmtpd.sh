#!/usr/bin/env bash
# Puts aiosmtpd and dkimpy (PyPI) in a virtualenv at target/tools/aiosmtpd: the relay requiring
# STARTTLS or implicit TLS and AUTH of tests/tests/it/relay.rs, and the DKIM verifier of
# tests/tests/it/dkim.rs, code nobody here wrote. The DKIM test makes its key with the openssl
# command, installed from Debian when missing, as is python3-venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[aiosmtpd] %s\n' "$*"; }
venv=target/tools/aiosmtpd
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  log "need root to run: $*"; return 1; fi; }
if ! command -v openssl >/dev/null; then
  log "installing openssl"
  as_root apt-get update -qq
  as_root apt-get install -y -qq openssl >/dev/null
fi
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import aiosmtpd, dkim' 2>/dev/null; then exit 0; fi
mkdir -p target/tools
rm -rf "$venv"
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
  log "installing python3-venv"
  as_root apt-get update -qq
  as_root apt-get install -y -qq python3-venv >/dev/null
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check 'aiosmtpd>=1.4,<2' 'dkimpy>=1.1,<2'
log "$("$venv/bin/python" -c 'import aiosmtpd, dkim; print("aiosmtpd", aiosmtpd.__version__, "and dkimpy")')"
