#!/usr/bin/env bash
# The first command of README.md: installs what Spawngrid needs, builds and installs the binary,
# makes the base snapshot's root (a cached debootstrap of Debian bookworm, or a busybox root when
# that fails), then runs `spawngrid up`: data dir, admin user (password printed once), `base`,
# and the node serving HTTPS on 16998 and SSH on 16999 until Ctrl-C. Run as root. Idempotent.
#   SPAWNGRID_DATA            data directory (default /var/lib/spawngrid)
#   SPAWNGRID_MIRROR          Debian mirror for the base snapshot (default http://deb.debian.org/debian)
#   SPAWNGRID_ADMIN_PASSWORD  the admin's password (default: a random one, printed once)
#   Arguments are passed to `spawngrid up` (e.g. --no-serve, --listen 127.0.0.1:16998).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/up.sh: run as root" >&2; exit 1; }
data=${SPAWNGRID_DATA:-/var/lib/spawngrid}

scripts/deps.sh run
echo "== building spawngrid" >&2
cargo build --release -p spawngrid
install -m 0755 target/release/spawngrid /usr/local/bin/spawngrid

base=()
if ! spawngrid lib --data "$data" --owner admin log base >/dev/null 2>&1; then
  echo "== making the base snapshot's root" >&2
  if root=$(scripts/rootfs.sh debian); then
    base=(--base "$root")
  else
    echo "debootstrap failed or unavailable; spawngrid up makes a busybox root instead" >&2
    base=(--busybox)
  fi
fi
exec spawngrid up --data "$data" "${base[@]}" "$@"
