#!/usr/bin/env bash
# The test command (README.md, .ci/run): installs what the tests need, builds the test root
# filesystems once (cached), then runs format and lint checks and every test. Run as root:
# tests mount overlays, create device nodes and set security.* xattrs.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (tests mount overlays and make device nodes)" >&2; exit 1; }

scripts/deps.sh test
# scripts/fslist.py and the end-to-end tests (crates/spawngrid/tests) also need python3 and GNU tar
for tool in python3:python3 tar:tar; do
  command -v "${tool%%:*}" >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null
done

echo "== test root filesystems" >&2
SPAWNGRID_ROOTFS_BASE=$(scripts/rootfs.sh base)
SPAWNGRID_ROOTFS_MODIFIED=$(scripts/rootfs.sh modified)
export SPAWNGRID_ROOTFS_BASE SPAWNGRID_ROOTFS_MODIFIED

echo "== Garage (S3) test cluster" >&2
scripts/garage.sh install && scripts/garage.sh up >/dev/null
# crates/s3's tests read the cluster's env file; with REQUIRE_ENGINES they fail instead of skipping.
export SPAWNGRID_TEST_S3=${SPAWNGRID_GARAGE_DIR:-/var/cache/spawngrid/garage-test}/s3.env
echo "== PostgreSQL for the catalog's tests" >&2
# The catalog's conformance tests run against SQLite and this PostgreSQL; each test makes its
# own schema in the database. SPAWNGRID_REQUIRE_ENGINES=1 fails (not skips) a missing engine.
SPAWNGRID_TEST_POSTGRES=$(scripts/postgres.sh up)
export SPAWNGRID_TEST_POSTGRES SPAWNGRID_REQUIRE_ENGINES=1

echo "== cargo fmt / clippy" >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features spawngrid/faults -- -D warnings
echo "== cargo deny (licences, sources; deny.toml)" >&2
"${SPAWNGRID_CACHE:-/var/cache/spawngrid}/cargo-deny/bin/cargo-deny" check licenses bans sources
echo "== cargo doc" >&2
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "== cargo test" >&2
# The binary the tests run has the test-only crash points (tests/faults.rs; inert unless
# SPAWNGRID_FAULT names one): one build serves every test. scripts/up.sh builds without them.
cargo build --release -p spawngrid --features faults
cargo test --workspace --release --features spawngrid/faults
