#!/usr/bin/env bash
# Makes sure PostgreSQL, RabbitMQ and Redis answer on their standard local ports.
# Starts each one that is not running, installing it from Debian's packages first when it is
# missing (needs root). Safe to run again: anything already running is left alone.
set -euo pipefail

log() { printf '[services] %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port name seconds
  for _ in $(seq 1 "$3"); do port_open "$1" && return 0; sleep 1; done
  log "$2 did not come up on port $1"; return 1
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  log "need root to run: $*"; return 1; fi; }
apt_updated=
install() { # package...
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

postgres() {
  if port_open 5432; then return 0; fi
  local fresh=
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then install postgresql; fresh=1; fi
  local version; version=$(ls /etc/postgresql | sort -V | tail -n1)
  if [ -n "$fresh" ]; then
    # A fresh local server: let the postgres user in over loopback without a password.
    sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' \
      "/etc/postgresql/$version/main/pg_hba.conf"
  fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 PostgreSQL 30
}

redis() {
  if port_open 6379; then return 0; fi
  command -v redis-server >/dev/null || install redis-server
  log "starting Redis (no persistence)"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/pulse.log
  wait_port 6379 Redis 20
}

rabbitmq() {
  if port_open 5672; then return 0; fi
  command -v rabbitmq-server >/dev/null || install rabbitmq-server
  log "starting RabbitMQ (takes a few seconds)"
  as_root rabbitmq-server -detached
  wait_port 5672 RabbitMQ 90
}

postgres
redis
rabbitmq
log "PostgreSQL :5432, Redis :6379, RabbitMQ :5672 are up"
