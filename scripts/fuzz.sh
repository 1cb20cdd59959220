#!/usr/bin/env bash
# Fuzzes the engine for a bounded time per target (default 60 s; FUZZ_SECONDS to change):
#   convert  the public entry point on arbitrary bytes
#   entropy  the entropy decoder, inside generated well-formed frames
# Uses the nightly toolchain with AddressSanitizer when it is installed, stable without a
# sanitizer otherwise (CRATES.md). Crashes land in engine/fuzz/artifacts/<target>/. Each one
# fixed is kept as a regression test that rebuilds the failing input in code (the fuzzer's
# inputs grow from corpus seeds, which are never copied into the repository): see
# engine/tests/strictness.rs.
set -euo pipefail
cd "$(dirname "$0")/../engine"
seconds="${FUZZ_SECONDS:-60}"
targets=("${@:-convert entropy}")
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if cargo +nightly --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz run)
else
    fuzz=(cargo fuzz run --sanitizer none)
fi
corpus_root="${CLOUDIMG_CORPUS:-$(pwd)/../../shared/corpus}"
for target in ${targets[*]}; do
    mkdir -p "fuzz/corpus/$target"
    seeds=()
    # Seed the whole-file target with real images (read in place, never copied into the repo).
    if [ "$target" = convert ] && [ -d "$corpus_root/conformance" ]; then
        seeds+=("$corpus_root/conformance" "$corpus_root/bad")
    fi
    echo "== fuzzing $target for ${seconds}s" >&2
    "${fuzz[@]}" "$target" "fuzz/corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$seconds" -max_len=262144 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
