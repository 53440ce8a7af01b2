#!/usr/bin/env bash
# The first command of README.md: installs what Spawngrid needs, builds the binary and creates
# a local library with a base snapshot. Run as root. Idempotent: an existing `base` is kept.
#   SPAWNGRID_DATA   data directory (default /var/lib/spawngrid)
#   SPAWNGRID_MIRROR Debian mirror for the base snapshot (default http://deb.debian.org/debian)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/up.sh: run as root" >&2; exit 1; }
data=${SPAWNGRID_DATA:-/var/lib/spawngrid}

scripts/deps.sh run
echo "== building spawngrid" >&2
cargo build --release -p spawngrid
bin=$PWD/target/release/spawngrid
install -m 0755 "$bin" /usr/local/bin/spawngrid

if spawngrid lib --data "$data" log base >/dev/null 2>&1; then
  echo "base snapshot already in $data" >&2
else
  echo "== making the base snapshot" >&2
  if root=$(scripts/rootfs.sh debian); then
    note="debootstrap minbase bookworm"
  else
    echo "debootstrap failed or unavailable; building a busybox root instead" >&2
    root=$(scripts/rootfs.sh busybox)
    note="busybox root"
  fi
  spawngrid lib --data "$data" import base "$root" --note "$note"
fi
spawngrid lib --data "$data" stats
echo "ready: try 'spawngrid env --data $data spawn base' then 'spawngrid env --data $data cpu base'" >&2
