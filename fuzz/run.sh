#!/usr/bin/env bash
# Run every fuzz target for a short time (default 30 s each): bash fuzz/run.sh [SECONDS]
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain the nightly-only
# flags it passes are enabled with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
    echo "== $target (${seconds}s)"
    cargo fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
