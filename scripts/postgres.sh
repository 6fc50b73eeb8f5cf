#!/usr/bin/env bash
# A private PostgreSQL server for the tests, never the machine's own:
#   scripts/postgres.sh start DIR   makes a cluster in DIR (when new) and starts it; prints
#                                   its connection string (a superuser, database postgres)
#   scripts/postgres.sh stop DIR    stops it (fast shutdown)
# It listens on a Unix socket in DIR only (no TCP port to collide with), and runs as the
# `postgres` user when started by root (the server refuses to run as root). fsync is off: a
# crash of the server process loses nothing (the kernel holds the writes), which is what the
# tests' restarts exercise; commits stay synchronous. QRCASH_PG_FSYNC=on keeps fsync and
# full-page writes on, as production runs (the benchmarks use it). Predicate locks as
# docs/deployment.md recommends for the hub's SERIALIZABLE transactions: room for 512 per
# transaction, and 32 row locks on one page before they become one lock on the whole page
# (the default 2 makes a batch that reads three rows of a small table conflict with every
# write to that page).
#
# QRCASH_PG_TCP_PORT=N also listens on 127.0.0.1:N (and names port N in the string printed);
# QRCASH_PG_TLS_CERT and QRCASH_PG_TLS_KEY (PEM files) turn TLS on with that certificate
# (the hub's TLS tests).
set -euo pipefail

action="${1:?usage: postgres.sh start|stop DIR}"
dir="${2:?usage: postgres.sh start|stop DIR}"

bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$bindir" ]; then
  echo "postgres.sh: no PostgreSQL server binaries (scripts/install-deps.sh installs them)" >&2
  exit 1
fi

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

fsync="${QRCASH_PG_FSYNC:-off}"
case "$fsync" in on|off) ;; *) echo "postgres.sh: QRCASH_PG_FSYNC is on or off" >&2; exit 2 ;; esac

case "$action" in
  start)
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
    chmod 0700 "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
        --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    port="${QRCASH_PG_TCP_PORT:-5432}"
    listen=""
    if [ -n "${QRCASH_PG_TCP_PORT:-}" ]; then listen="127.0.0.1"; fi
    tls=""
    if [ -n "${QRCASH_PG_TLS_CERT:-}" ]; then
      install -m 0644 "$QRCASH_PG_TLS_CERT" "$dir/server.crt"
      install -m 0600 "${QRCASH_PG_TLS_KEY:?QRCASH_PG_TLS_KEY goes with QRCASH_PG_TLS_CERT}" "$dir/server.key"
      if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir/server.crt" "$dir/server.key"; fi
      tls="-c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key"
    fi
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-k $dir -p $port -c listen_addresses=$listen $tls -c fsync=$fsync -c full_page_writes=$fsync -c max_connections=200 -c max_pred_locks_per_transaction=512 -c max_pred_locks_per_page=32" \
      start >/dev/null || { tail -n 20 "$dir/server.log" >&2; exit 1; }
    echo "host=$dir port=$port user=postgres dbname=postgres"
    ;;
  stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
    ;;
  *)
    echo "usage: postgres.sh start|stop DIR" >&2
    exit 2
    ;;
esac
