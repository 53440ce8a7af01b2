#!/usr/bin/env bash
# Installs the Debian packages Spawngrid needs: `deps.sh run` for a node, `deps.sh test` adds
# what the tests and benchmarks use. Idempotent; installs only what is missing.
# iproute2 (`ip`) and nftables (`nft`) set up `nat` networking for envs (util-linux's
# `nsenter`, also used, is always installed).
set -euo pipefail
want=(ca-certificates zstd attr acl iproute2 nftables)
case "${1:-run}" in
  run) ;;
  test) want+=(debootstrap busybox-static python3-venv openssh-client openssh-sftp-server rsync chromium chromium-driver podman) ;;
  bench) want+=(debootstrap restic borgbackup) ;;
  *) echo "usage: scripts/deps.sh run|test|bench" >&2; exit 2 ;;
esac
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/deps.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || { echo "scripts/deps.sh: apt-get update failed; check the network or mirror" >&2; exit 1; }
  apt-get install -y -qq "${missing[@]}" >/dev/null || { echo "scripts/deps.sh: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi
# schemathesis (PyPI) fuzzes the node's API from its OpenAPI document in the tests.
if [ "${1:-run}" = test ]; then
  venv=${SPAWNGRID_CACHE:-/var/cache/spawngrid}/venv
  if ! "$venv/bin/st" --version 2>/dev/null | grep -q "4.32.5"; then
    echo "scripts/deps.sh: installing schemathesis 4.32.5 in $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==4.32.5" ||
      { echo "scripts/deps.sh: pip install schemathesis failed; check access to PyPI" >&2; exit 1; }
  fi
  # Selenium drives Chromium (chromedriver) through the web UI in tests/web.rs.
  if ! "$venv/bin/python" -c 'import selenium, sys; sys.exit(selenium.__version__ != "4.51.0")' 2>/dev/null; then
    echo "scripts/deps.sh: installing selenium 4.51.0 in $venv" >&2
    "$venv/bin/pip" install -q "selenium==4.51.0" ||
      { echo "scripts/deps.sh: pip install selenium failed; check access to PyPI" >&2; exit 1; }
  fi
fi
command -v cargo >/dev/null || { echo "scripts/deps.sh: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
# Garage (the S3 library's test cluster) and cargo-deny (licence and source policy, deny.toml)
# are built once with cargo and cached.
if [ "${1:-run}" = test ]; then
  "$(dirname "$0")/garage.sh" install
  deny=${SPAWNGRID_CACHE:-/var/cache/spawngrid}/cargo-deny
  if ! "$deny/bin/cargo-deny" --version 2>/dev/null | grep -q "0.20.2"; then
    echo "scripts/deps.sh: building cargo-deny 0.20.2 into $deny (once, a few minutes)" >&2
    cargo install -q cargo-deny --version 0.20.2 --locked --root "$deny" ||
      { echo "scripts/deps.sh: cargo install cargo-deny failed; check access to crates.io" >&2; exit 1; }
  fi
fi
