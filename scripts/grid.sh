#!/usr/bin/env bash
# A local demo grid on one machine: a 3-node Garage cluster (the library, replication 3),
# PostgreSQL (the catalog) and 3 Spawngrid nodes, each in its own network namespace on a bridge.
#
#   scripts/grid.sh up        install what is missing, build, start everything, print how to log in
#   scripts/grid.sh down      stop the nodes (booming their envs), Garage, PostgreSQL; remove the network
#   scripts/grid.sh status    what runs, and each node's answer
#   scripts/grid.sh node-stop N | node-start N    stop (kill -9) or start node N, for fault tests
#
# Layout: bridge sggrid0 at 10.231.0.1/24 on the host (Garage's S3 and RPC and PostgreSQL listen
# there); node N runs in netns sg-nodeN at 10.231.0.1N (HTTPS 16998, SSH 16999), entered with
# `nsenter --net` only (its mounts and cgroups are the host's). State under $SPAWNGRID_GRID_DIR
# (default /var/lib/spawngrid-grid): garage/, pg/, nodeN/{config.toml,data,log,pid},
# admin-password. The base snapshot is a cached debootstrap (scripts/rootfs.sh debian), or a
# busybox root when that fails or SPAWNGRID_GRID_BASE=busybox. Nodes take a node silent for
# $SPAWNGRID_DOWN_AFTER (default 30s) for down; a user runs $SPAWNGRID_EXEC_MAX_PER_USER (default
# 16) execs and SSH sessions at once on a node, and $SPAWNGRID_PER_ADDRESS (default 256)
# connections are taken from one address. Run as root. `up` is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${SPAWNGRID_GRID_DIR:-/var/lib/spawngrid-grid}
BR=sggrid0
NET=10.231.0
NODES=(1 2 3)
BIN=${SPAWNGRID_BIN:-$PWD/target/release/spawngrid}
export SPAWNGRID_GARAGE_DIR=$DIR/garage SPAWNGRID_GARAGE_ADDR=$NET.1 SPAWNGRID_GARAGE_PORT=3950
export SPAWNGRID_PG_DIR=$DIR/pg SPAWNGRID_PG_ADDR=$NET.1 SPAWNGRID_PG_PORT=55433

die() { echo "scripts/grid.sh: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }
[ "$(id -u)" = 0 ] || die "run as root (nodes make namespaces, mounts and cgroups)"

ns() { echo "sg-node$1"; }
addr() { echo "$NET.1$1"; }
node_dir() { echo "$DIR/node$1"; }
node_pid() { cat "$(node_dir "$1")/pid" 2>/dev/null || true; }
node_running() { local p; p=$(node_pid "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
answers() { timeout 1 bash -c "exec 3<>/dev/tcp/$(addr "$1")/16998" 2>/dev/null; }

net_up() {
  ip link show "$BR" >/dev/null 2>&1 || {
    ip link add "$BR" type bridge
    ip addr add "$NET.1/24" dev "$BR"
  }
  ip link set "$BR" up
  # ACK at once on the grid's network: with delayed ACKs, a third of Garage's requests stalled
  # ~40 ms (the delayed-ACK timer meeting a small write held back by Nagle's algorithm in its
  # request path); with quickack a 256 KiB ranged GET takes ~1 ms every time.
  ip route change local "$NET.1" dev "$BR" table local proto kernel scope host src "$NET.1" \
    quickack 1
  for n in "${NODES[@]}"; do
    ip netns list | grep -qw "$(ns "$n")" || ip netns add "$(ns "$n")"
    if ! ip link show "sgg$n" >/dev/null 2>&1; then
      ip link add "sgg$n" type veth peer name eth0 netns "$(ns "$n")"
      ip link set "sgg$n" master "$BR" up
      ip -n "$(ns "$n")" addr add "$(addr "$n")/24" dev eth0
      ip -n "$(ns "$n")" link set eth0 up
      ip -n "$(ns "$n")" link set lo up
      ip -n "$(ns "$n")" route add default via "$NET.1"
    fi
    ip -n "$(ns "$n")" route change "$NET.0/24" dev eth0 proto kernel scope link \
      src "$(addr "$n")" quickack 1
  done
}

net_down() {
  for n in "${NODES[@]}"; do
    ip link del "sgg$n" 2>/dev/null || true
    ip netns del "$(ns "$n")" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
}

# The node's configuration: its name, addresses, and the grid's store.
write_config() {
  local n=$1 d; d=$(node_dir "$1")
  # The envs' user namespaces must traverse the path to the data directory: 0755, while the
  # configuration (keys, passwords) is root's alone.
  mkdir -p "$d" && chmod 755 "$DIR" "$d"
  # shellcheck disable=SC1091
  (set -a; . "$DIR/garage/s3.env"; umask 077; cat > "$d/config.toml" <<EOF
# Node $n of the demo grid (scripts/grid.sh).
name = "node$n"
listen = "$(addr "$n"):16998"
public_host = "$(addr "$n")"
data = "$d/data"
labels = ["rack=r$n"]
down_after = "${SPAWNGRID_DOWN_AFTER:-30s}"

[exec]
max_per_user = ${SPAWNGRID_EXEC_MAX_PER_USER:-16}

[connections]
per_address = ${SPAWNGRID_PER_ADDRESS:-256}

[store]
library = "s3://$SPAWNGRID_S3_BUCKET/grid"
catalog = "$PG_URL"

[store.s3]
endpoint = "$AWS_ENDPOINT_URL"
region = "$AWS_REGION"
access_key_id = "$AWS_ACCESS_KEY_ID"
secret_access_key = "$AWS_SECRET_ACCESS_KEY"
allow_http = true
EOF
  )
}

node_start() {
  local n=$1 d; d=$(node_dir "$1")
  node_running "$n" && return
  mkdir -p "$d"
  nsenter --net="/run/netns/$(ns "$n")" setsid "$BIN" serve --config "$d/config.toml" \
    >"$d/log" 2>&1 </dev/null &
  echo $! >"$d/pid"
  for _ in $(seq 100); do
    answers "$n" && return
    node_running "$n" || die "node $n did not start; see $d/log"
    sleep 0.1
  done
  die "node $n does not answer on $(addr "$n"):16998; see $d/log"
}

node_stop() {   # node_stop N [SIGNAL]
  local p; p=$(node_pid "$1")
  [ -n "$p" ] || return 0
  kill "-${2:-TERM}" "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  rm -f "$(node_dir "$1")/pid"
}

base_args() {
  if [ "${SPAWNGRID_GRID_BASE:-}" != busybox ] && root=$(scripts/rootfs.sh debian 2>/dev/null); then
    echo "--base $root"
  else
    echo "--busybox"
  fi
}

up() {
  scripts/deps.sh run
  scripts/garage.sh install
  if [ -z "${SPAWNGRID_BIN:-}" ]; then
    say "building spawngrid"
    cargo build --release -p spawngrid
  fi
  [ -x "$BIN" ] || die "no spawngrid binary at $BIN"
  say "network: bridge $BR, namespaces sg-node1..3"
  net_up
  say "Garage (3 nodes, replication 3) on $NET.1"
  scripts/garage.sh up >/dev/null
  say "PostgreSQL on $NET.1:$SPAWNGRID_PG_PORT"
  PG_URL=$(scripts/postgres.sh up | tail -n 1)
  for n in "${NODES[@]}"; do write_config "$n"; done
  local pw_file=$DIR/admin-password
  [ -s "$pw_file" ] || (umask 077; head -c 12 /dev/urandom | base64 | tr '+/' '-_' >"$pw_file")
  if ! node_running 1; then
    say "node 1: admin user and the base snapshot"
    # shellcheck disable=SC2046
    nsenter --net="/run/netns/$(ns 1)" env SPAWNGRID_ADMIN_PASSWORD="$(cat "$pw_file")" \
      "$BIN" up --config "$(node_dir 1)/config.toml" --no-serve $(base_args) >&2
  fi
  for n in "${NODES[@]}"; do
    say "node $n at $(addr "$n")"
    node_start "$n"
  done
  cat <<EOF
The grid is up: nodes node1..node3 at $(addr 1), $(addr 2), $(addr 3) (HTTPS 16998, SSH 16999),
one library (Garage, s3://spawngrid/grid) and one catalog (PostgreSQL). Log in on any node:
  spawngrid login -h $(addr 1) -u admin      # password: $(cat "$pw_file")
  spawngrid spawn -h $(addr 2) admin/base    # any node spawns any name
Stop it with: scripts/grid.sh down
EOF
}

down() {
  for n in "${NODES[@]}"; do
    node_stop "$n"
    local data; data=$(node_dir "$n")/data
    [ -d "$data" ] || continue
    # Envs and snapshot mounts outlive a node by design; a demo grid's down takes them too.
    for env in $("$BIN" --json env --data "$data" ls 2>/dev/null |
        python3 -c 'import json,sys; [print(e["env"]) for e in json.load(sys.stdin)]' 2>/dev/null); do
      "$BIN" env --data "$data" boom "$env" >/dev/null 2>&1 || echo "could not boom $env of node $n" >&2
    done
    for root in "$data"/mounts/*/root; do
      [ -d "$root" ] || continue
      "$BIN" lib --data "$data" umount "$root" --lazy >/dev/null 2>&1 || true
    done
  done
  [ -d "$DIR/garage" ] && scripts/garage.sh down >/dev/null
  [ -d "$DIR/pg" ] && scripts/postgres.sh down
  net_down
  echo "scripts/grid.sh: down (state kept in $DIR; remove it for a fresh grid)" >&2
}

status() {
  for n in "${NODES[@]}"; do
    if node_running "$n"; then
      echo "node$n: running (pid $(node_pid "$n")) at https://$(addr "$n"):16998"
    else
      echo "node$n: stopped"
    fi
  done
  scripts/garage.sh status 2>/dev/null | grep "^node" || true
  scripts/postgres.sh status || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  node-stop) node_stop "${2:?node number}" KILL ;;
  node-start) PG_URL=$(scripts/postgres.sh url); node_start "${2:?node number}" ;;
  *) echo "usage: scripts/grid.sh up|down|status|node-stop N|node-start N" >&2; exit 2 ;;
esac
