#!/usr/bin/env bash
# Makes sure Debian's Chromium and its WebDriver are installed, for the Hub's browser tests
# (tests/tests/hub_browser.rs). Installs chromium and chromium-driver when missing (needs root or
# sudo). Safe to run again.
set -euo pipefail

log() { printf '[browser] %s\n' "$*"; }
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  log "need root to install chromium and chromium-driver: $*"; return 1; fi; }
log "installing chromium and chromium-driver"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
log "$(chromium --version 2>/dev/null || true)"
