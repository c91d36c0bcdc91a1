#!/usr/bin/env bash
# Puts Prometheus's promtool at target/tools/promtool, for the tests that check the alert rules
# and dashboard queries (tests/tests/deploy.rs). Uses a promtool already on PATH; otherwise
# unpacks it from Debian's prometheus package without installing the package (no server is
# started). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[promtool] %s\n' "$*"; }
dest=target/tools/promtool
mkdir -p target/tools
if [ -x "$dest" ]; then exit 0; fi
if command -v promtool >/dev/null; then ln -sf "$(command -v promtool)" "$dest"; exit 0; fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  log "need root to run: $*"; return 1; fi; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "fetching Debian's prometheus package for promtool"
if ! (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); then
  as_root apt-get update -qq
  (cd "$work" && apt-get download -qq prometheus >/dev/null)
fi
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
cp "$work/root/usr/bin/promtool" "$dest"
log "$("$dest" --version 2>&1 | head -n1)"
