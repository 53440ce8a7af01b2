#!/usr/bin/env bash
# A 3-node Garage cluster on 127.0.0.1 for the S3 backend's tests (crates/s3).
#
#   scripts/garage.sh install           build Garage 2.5.0 once into /var/cache/spawngrid/garage
#   scripts/garage.sh up [DIR]          start the cluster (layout, key, bucket `spawngrid`), write
#                                       DIR/s3.env and print it; already up: print DIR/s3.env
#   scripts/garage.sh down [DIR]        stop all three nodes
#   scripts/garage.sh stop-node N [DIR] stop node N (1-3), for fault tests
#   scripts/garage.sh start-node N [DIR] start node N again
#   scripts/garage.sh pause-node N [DIR] freeze node N (SIGSTOP): a silent partition, for fault tests
#   scripts/garage.sh resume-node N [DIR] let node N run again (SIGCONT)
#   scripts/garage.sh status [DIR]      which nodes run, and Garage's own view
#
# DIR defaults to $SPAWNGRID_GARAGE_DIR or /var/cache/spawngrid/garage-test. Node N listens on
# 127.0.0.1 ports BASE+10N (S3 API), +1 (RPC), +3 (admin); BASE is $SPAWNGRID_GARAGE_PORT or
# 3900 (node 1: 3910, 3911, 3913); $SPAWNGRID_GARAGE_ADDR replaces 127.0.0.1 (scripts/grid.sh
# binds the cluster to its bridge). Replication factor 3, LMDB metadata. The tests talk to
# node 1, so fault tests stop node 2 or 3. s3.env holds AWS_ENDPOINT_URL, AWS_REGION,
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and SPAWNGRID_S3_BUCKET (`set -a; . DIR/s3.env`),
# and is readable by root only. Garage's data block size is 512 KiB ($SPAWNGRID_GARAGE_BLOCK_SIZE
# bytes, for benchmarks; it applies to objects written after the node starts with it).
set -euo pipefail

GARAGE_ROOT=/var/cache/spawngrid/garage
GARAGE=$GARAGE_ROOT/bin/garage
VERSION=2.5.0
BASE=${SPAWNGRID_GARAGE_PORT:-3900}
ADDR=${SPAWNGRID_GARAGE_ADDR:-127.0.0.1}
NODES=(1 2 3)
BLOCK_SIZE=${SPAWNGRID_GARAGE_BLOCK_SIZE:-524288}

die() { echo "scripts/garage.sh: $*" >&2; exit 1; }

[[ $BLOCK_SIZE =~ ^[1-9][0-9]*$ ]] ||
  die "SPAWNGRID_GARAGE_BLOCK_SIZE must be a number of bytes (e.g. 524288), not '$BLOCK_SIZE'"

install() {
  if [ -x "$GARAGE" ] && "$GARAGE" --version 2>/dev/null | grep -q "cargo:$VERSION "; then
    return
  fi
  command -v cargo >/dev/null || die "cargo not found; install Rust from https://rustup.rs"
  echo "scripts/garage.sh: building Garage $VERSION into $GARAGE_ROOT (once; 15-30 min)" >&2
  cargo install garage --version "$VERSION" --locked --no-default-features \
    --features bundled-libs,lmdb --root "$GARAGE_ROOT" ||
    die "cargo install garage $VERSION failed; check access to crates.io"
}

port() { echo $((BASE + 10 * $1 + $2)); }   # port NODE OFFSET
g() { local n=$1; shift; "$GARAGE" -c "$DIR/node$n/garage.toml" "$@"; }
pid_of() { cat "$DIR/node$1/pid" 2>/dev/null || true; }
running() { local p; p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

configure_node() {
  local n=$1 d=$DIR/node$1
  mkdir -p "$d/meta" "$d/data"
  cat > "$d/garage.toml" <<EOF
# Node $n of the spawngrid test cluster (scripts/garage.sh).
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "lmdb"
lmdb_map_size = "4G"
replication_factor = 3
# Packs are zstd-compressed already.
compression_level = "none"
# Garage reads and BLAKE2-checks the whole block a ranged GET falls in: 512 KiB blocks halve
# that work for a lazy mount's 256 KiB reads, at ~0.1-0.2 s more per 200 MB save (bench/README.md).
block_size = $BLOCK_SIZE
rpc_bind_addr = "$ADDR:$(port "$n" 1)"
rpc_public_addr = "$ADDR:$(port "$n" 1)"
rpc_secret_file = "$DIR/rpc_secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "$ADDR:$(port "$n" 0)"

[admin]
api_bind_addr = "$ADDR:$(port "$n" 3)"
EOF
}

# Whether the S3 API of node N answers HTTP (any status: unauthenticated requests get 403).
s3_answers() {
  local reply
  reply=$(timeout 2 bash -c "exec 3<>/dev/tcp/$ADDR/$(port "$1" 0) &&
    printf 'GET / HTTP/1.0\r\nHost: $ADDR\r\n\r\n' >&3 && head -c 12 <&3" 2>/dev/null) || return 1
  [[ $reply == HTTP/1.* ]]
}

wait_for() {   # wait_for WHAT SECONDS COMMAND...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" && return 0; sleep 0.2; done
  die "$what: no answer after ${secs}s (logs: $DIR/node*/log)"
}

start_node() {
  local n=$1
  running "$n" && return 0
  [ -f "$DIR/node$n/garage.toml" ] || die "node $n is not set up in $DIR; run: scripts/garage.sh up $DIR"
  # setsid: the node outlives the shell (and test) that started it.
  RUST_LOG=${RUST_LOG:-garage=warn} setsid "$GARAGE" -c "$DIR/node$n/garage.toml" server \
    </dev/null >>"$DIR/node$n/log" 2>&1 &
  echo $! > "$DIR/node$n/pid"
  wait_for "node $n RPC" 30 g "$n" node id -q >/dev/null 2>&1
}

stop_node() {
  local n=$1 p
  running "$n" || { rm -f "$DIR/node$n/pid"; return 0; }
  p=$(pid_of "$n")
  kill "$p"
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$p" 2>/dev/null && kill -9 "$p"
  rm -f "$DIR/node$n/pid"
}

# Connects the nodes, applies a layout (one zone per node, 1 GB each), imports a key and
# creates the bucket; runs once per DIR (marker: DIR/configured).
configure_cluster() {
  local n id
  for n in 2 3; do g 1 node connect "$(g "$n" node id -q 2>/dev/null)" >/dev/null; done
  for n in "${NODES[@]}"; do
    id=$(g "$n" node id -q 2>/dev/null)
    g 1 layout assign -z "z$n" -c 1G "${id%@*}" >/dev/null
  done
  g 1 layout apply --version 1 >/dev/null
  local key_id secret
  key_id=GK$(hex 12)
  secret=$(hex 32)
  wait_for "key import" 30 g 1 key import --yes -n spawngrid-test "$key_id" "$secret" >/dev/null 2>&1
  g 1 bucket create spawngrid >/dev/null
  g 1 bucket allow --read --write --owner spawngrid --key spawngrid-test >/dev/null
  (umask 077; cat > "$DIR/s3.env" <<EOF
AWS_ENDPOINT_URL=http://$ADDR:$(port 1 0)
AWS_REGION=garage
AWS_ACCESS_KEY_ID=$key_id
AWS_SECRET_ACCESS_KEY=$secret
SPAWNGRID_S3_BUCKET=spawngrid
EOF
  )
  touch "$DIR/configured"
}

up() {
  [ -x "$GARAGE" ] || die "Garage is not installed; run: scripts/garage.sh install"
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  [ -s "$DIR/rpc_secret" ] || (umask 077; hex 32 > "$DIR/rpc_secret")
  local n
  for n in "${NODES[@]}"; do configure_node "$n"; start_node "$n"; done
  [ -f "$DIR/configured" ] || configure_cluster
  for n in "${NODES[@]}"; do wait_for "node $n S3 API" 30 s3_answers "$n"; done
  echo "# scripts/garage.sh: Garage cluster in $DIR; this is $DIR/s3.env" >&2
  cat "$DIR/s3.env"
}

status() {
  local n
  for n in "${NODES[@]}"; do
    if running "$n"; then
      echo "node $n: running (pid $(pid_of "$n")), S3 $ADDR:$(port "$n" 0), RPC $(port "$n" 1), admin $(port "$n" 3)"
    else
      echo "node $n: stopped"
    fi
  done
  for n in "${NODES[@]}"; do
    if running "$n"; then g "$n" status; return; fi
  done
}

node_arg() {
  [[ ${1:-} =~ ^[123]$ ]] || die "usage: scripts/garage.sh $cmd N [DIR] (N is 1, 2 or 3)"
}

cmd=${1:-}
case "$cmd" in
  install) install ;;
  up|down|status) DIR=${2:-${SPAWNGRID_GARAGE_DIR:-/var/cache/spawngrid/garage-test}} ;;&
  stop-node|start-node|pause-node|resume-node) node_arg "${2:-}"; DIR=${3:-${SPAWNGRID_GARAGE_DIR:-/var/cache/spawngrid/garage-test}} ;;&
  up) up ;;
  down) for n in "${NODES[@]}"; do stop_node "$n"; done ;;
  status) status ;;
  stop-node) stop_node "$2" ;;
  start-node) start_node "$2"; wait_for "node $2 S3 API" 30 s3_answers "$2" ;;
  pause-node) running "$2" || die "node $2 is not running"; kill -STOP "$(pid_of "$2")" ;;
  resume-node) running "$2" || die "node $2 is not running"; kill -CONT "$(pid_of "$2")" ;;
  *) echo "usage: scripts/garage.sh install | up [DIR] | down [DIR] | stop-node|start-node|pause-node|resume-node N [DIR] | status [DIR]" >&2; exit 2 ;;
esac
