#!/usr/bin/env bash
# Run every fuzz target for a short time (default 30 s each): bash fuzz/run.sh [SECONDS]
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain the nightly-only
# flags it passes are enabled with RUSTC_BOOTSTRAP=1. Exits non-zero on the first crash,
# leaving the input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
export RUSTC_BOOTSTRAP=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
    echo "== fuzz $target (${seconds}s)"
    if ! cargo fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz target $target crashed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "Done [0-9]+ runs" "$log" || true
done
