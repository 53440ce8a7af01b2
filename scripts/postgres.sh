#!/usr/bin/env bash
# A private PostgreSQL for the catalog's tests and a local grid: `postgres.sh up` installs
# PostgreSQL from Debian if missing, initialises a cluster under $SPAWNGRID_PG_DIR (default
# /var/cache/spawngrid/pg), starts it on 127.0.0.1:$SPAWNGRID_PG_PORT (default 55432), makes a
# `spawngrid` role and database and prints their URL. Idempotent: when it is running already
# `up` just prints the URL. `down` stops it, `status` says whether it runs, `url` prints the
# URL. $SPAWNGRID_PG_ADDR (set when the cluster is made) listens on that address too and lets its
# subnet in (scripts/grid.sh: the grid's bridge), and the URL names it.
# Run as root: the cluster runs as the `postgres` user (initdb refuses root).
set -euo pipefail
dir=${SPAWNGRID_PG_DIR:-/var/cache/spawngrid/pg}
port=${SPAWNGRID_PG_PORT:-55432}
addr=${SPAWNGRID_PG_ADDR:-127.0.0.1}
data=$dir/data
run=$dir/run
log=$dir/log/postgres.log

die() { echo "scripts/postgres.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (the cluster runs as the postgres user)"

# The newest Debian PostgreSQL's binaries (not whatever else is on PATH).
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

install() {
  [ -n "$(bindir)" ] && return
  echo "scripts/postgres.sh: installing postgresql" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed; check the network or mirror"
  apt-get install -y -qq postgresql >/dev/null || die "apt-get install postgresql failed"
  [ -n "$(bindir)" ] || die "postgresql installed but no /usr/lib/postgresql/*/bin"
}

as_pg() { runuser -u postgres -- "$@"; }

running() { [ -n "$(bindir)" ] && [ -f "$data/PG_VERSION" ] && as_pg "$(bindir)/pg_ctl" -D "$data" status >/dev/null 2>&1; }

url() {
  [ -f "$dir/password" ] || die "no cluster in $dir (run scripts/postgres.sh up)"
  echo "postgres://spawngrid:$(cat "$dir/password")@$(cat "$dir/addr" 2>/dev/null || echo 127.0.0.1):$(cat "$dir/port")/spawngrid"
}

up() {
  install
  local bin; bin=$(bindir)
  id postgres >/dev/null 2>&1 || die "no postgres user (reinstall the postgresql package)"
  if [ ! -f "$data/PG_VERSION" ]; then
    echo "scripts/postgres.sh: initialising a cluster in $data (port $port)" >&2
    mkdir -p "$dir"
    rm -rf "$data" "$run"
    mkdir -p "$data" "$run"
    chown postgres:postgres "$data" "$run"
    chmod 700 "$data"
    as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 || die "initdb failed; see $dir/initdb.log"
    cat >>"$data/postgresql.conf" <<EOF
# scripts/postgres.sh
listen_addresses = '$(printf '%s' "127.0.0.1,$addr" | sed 's/^127.0.0.1,127.0.0.1$/127.0.0.1/')'
port = $port
unix_socket_directories = '$run'
max_connections = 200
EOF
    echo "$port" >"$dir/port"
    echo "$addr" >"$dir/addr"
    [ "$addr" = 127.0.0.1 ] || echo "host all spawngrid samenet scram-sha-256" >>"$data/pg_hba.conf"
    (umask 077; head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$dir/password")
  fi
  port=$(cat "$dir/port")
  if ! running; then
    mkdir -p "$run" "$dir/log" && chown postgres:postgres "$run" "$dir/log"
    as_pg "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null ||
      die "PostgreSQL did not start; see $log"
  fi
  # The role and database (again, harmlessly, on every `up`: a failed first run is repaired).
  local psql=("$bin/psql" -h "$run" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -tA)
  as_pg "${psql[@]}" -v pw="$(cat "$dir/password")" >/dev/null <<'EOF' || die "creating the spawngrid role failed"
SELECT format('CREATE ROLE spawngrid LOGIN PASSWORD %L', :'pw')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'spawngrid') \gexec
SELECT format('ALTER ROLE spawngrid PASSWORD %L', :'pw') \gexec
SELECT 'CREATE DATABASE spawngrid OWNER spawngrid'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'spawngrid') \gexec
EOF
  url
}

down() {
  if running; then
    as_pg "$(bindir)/pg_ctl" -D "$data" -w -t 60 -m fast stop >/dev/null || die "pg_ctl stop failed"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running; then echo "running: $(url)"; else echo "stopped"; exit 3; fi ;;
  url) url ;;
  *) echo "usage: scripts/postgres.sh up|down|status|url" >&2; exit 2 ;;
esac
