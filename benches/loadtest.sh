#!/usr/bin/env bash
# The end-to-end load harness (see BENCHMARKS.md): builds the release binary and the harness,
# raises the open-file limit for the idle-connection test, runs every load through direct,
# outrider and HAProxy paths, and prints a markdown report on stdout (progress on stderr).
#   benches/loadtest.sh [--quick] [--runs N] [--secs S] [--idle-conns N] [--rate R]
# HAProxy's column needs `apt-get install -y haproxy`; without it the column is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin outrider --example loadtest
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec timeout 1800 "$target/release/examples/loadtest" --outrider "$target/release/outrider" "$@"
