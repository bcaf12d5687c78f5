#!/bin/sh
# Runs fuzz targets one after another, each for FUZZ_SECONDS (default 20) from its committed
# seeds (fuzz/seeds/<target>, copied into the generated corpus fuzz/corpus/<target>) and its
# regressions. Exits non-zero on the first crash; libFuzzer leaves the input in
# fuzz/artifacts/<target>/. Needs the nightly toolchain and cargo-fuzz.
#
#   fuzz/run.sh                       every target, 20 s each
#   FUZZ_SECONDS=600 fuzz/run.sh sniff
set -eu
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-20}
targets=${*:-$(cargo +nightly fuzz list)}
cargo +nightly fuzz build
for target in $targets; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus"
    for dir in fuzz/seeds/$target fuzz/regressions/$target; do
        if [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then cp "$dir"/* "$corpus"/; fi
    done
    # The sniffer buffers up to 16 KiB + 5: longer inputs reach its cap.
    case $target in
    sniff) extra=-max_len=20000 ;;
    *) extra= ;;
    esac
    echo "fuzz: $target for ${seconds}s"
    cargo +nightly fuzz run "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 $extra
done
