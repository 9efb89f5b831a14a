#!/usr/bin/env bash
# Run the cargo-fuzz targets in fuzz/ (stanzawall_core::fuzzing entry points).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 30 s, every target
#
# New corpus entries go to a scratch directory; the committed corpora in fuzz/corpus/ are only
# read (merge good finds by hand with `cargo fuzz cmin`). A crash stops the run with a non-zero
# exit and leaves the input in fuzz/artifacts/TARGET/. Long campaigns: scripts/fuzz.sh 3600.
# cargo-fuzz needs nightly features; on a stable toolchain RUSTC_BOOTSTRAP=1 enables them.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(xml_stanzas xml_stream session s2s jid config websocket)

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd fuzz
cargo fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "== fuzz $t for ${seconds}s"
  if ! cargo fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
      -timeout=10 -print_final_stats=1 >"$scratch/$t.log" 2>&1; then
    grep -E 'panicked|SUMMARY|Test unit written' -A3 "$scratch/$t.log" >&2 || tail -20 "$scratch/$t.log" >&2
    echo "fuzz $t: crash, input in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added)' "$scratch/$t.log" || true
done
