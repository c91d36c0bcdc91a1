#!/usr/bin/env bash
# Restarts one local server, as a fault: `restart.sh postgres|rabbitmq|redis [down-seconds]`.
# Redis comes back empty (no persistence), like a production Redis without AOF. Used by the
# restart tests and the chaos suite; never run it against servers you care about.
set -euo pipefail
what=${1:?usage: restart.sh postgres|rabbitmq|redis [down-seconds]}
down=${2:-1}
here=$(dirname "$0")
case "$what" in
  postgres)
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main stop -m fast
    sleep "$down"
    ;;
  rabbitmq)
    rabbitmqctl -q stop_app >/dev/null
    sleep "$down"
    rabbitmqctl -q start_app >/dev/null
    ;;
  redis)
    redis-cli -h 127.0.0.1 shutdown nosave >/dev/null 2>&1 || true
    sleep "$down"
    ;;
  *) echo "unknown server: $what" >&2; exit 2 ;;
esac
"$here/services.sh" >/dev/null
