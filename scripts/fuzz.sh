#!/usr/bin/env bash
# Fuzzes the parsers (the library's, the grid file's, the API's JSON bodies, cp's tar
# filter): `scripts/fuzz.sh [SECONDS] [TARGET...]` runs each target (default: all; see
# fuzz/Cargo.toml) for SECONDS (default 60) with cargo-fuzz (libFuzzer,
# AddressSanitizer) on the nightly toolchain. Seeds are the committed corpora in
# fuzz/corpus/TARGET; inputs the fuzzer finds go to fuzz/work/TARGET (not committed). A crash
# stops the run with its input in fuzz/artifacts/TARGET: fix the bug, then copy the input into
# fuzz/corpus/TARGET so the tests (`fuzz_corpora_replay`, `fuzz_corpus_replays`) keep it fixed.
# cargo-fuzz is built once and cached. Not part of scripts/test.sh (it needs nightly and time).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(tar_import layers tree_decode snapshot_decode pack_parse ndb api_json cp_filter)

root=${SPAWNGRID_CACHE:-/var/cache/spawngrid}/cargo-fuzz
if ! "$root/bin/cargo-fuzz" --version 2>/dev/null | grep -q "0.13.2"; then
  echo "scripts/fuzz.sh: building cargo-fuzz 0.13.2 into $root (once)" >&2
  cargo install -q cargo-fuzz --version 0.13.2 --locked --root "$root"
fi
export PATH="$root/bin:$PATH"
rustup toolchain list | grep -q '^nightly' ||
  { echo "scripts/fuzz.sh: needs the nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }

for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t"
  echo "== $t ($secs s)" >&2
  cargo +nightly fuzz run --release "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -max_len=65536 -rss_limit_mb=4096 -print_final_stats=1 2>&1 |
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|.*(ERROR|panicked|deadly))' || true
  if compgen -G "fuzz/artifacts/$t/*" >/dev/null; then
    echo "scripts/fuzz.sh: $t found a crash: fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "scripts/fuzz.sh: no crash in ${targets[*]} ($secs s each)" >&2
