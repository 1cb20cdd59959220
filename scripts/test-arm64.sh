#!/usr/bin/env bash
# Graviton proven on this x86_64 machine (issue 12). Cross-builds the engine and the `cloudimg` CLI
# for aarch64-unknown-linux-gnu, statically (dynamically linked aarch64 binaries that start a thread
# hang under Debian 12's qemu-user 7.2; CRATES.md's toolchain notes), runs the engine's tests under
# qemu-user, then converts corpus/conformance/ with the x86_64 and the aarch64 `cloudimg convert`,
# JPEG and `--format png` output, and asserts byte-identical outputs, the same refusals and the
# same exit status.
#
# What it proves: the engine computes the same bytes on aarch64 as on x86_64 (its NEON kernels and
# its dependencies' aarch64 code included: `wide`, zune-jpeg, zune-png, memchr). What it cannot:
# speed (qemu translates every instruction); time a Graviton instance for that.
#
# Usage: scripts/test-arm64.sh [--quick]
#   (default) every engine test under qemu (unit and integration: about 10 minutes of qemu on this
#             2-core machine), the CLIs built --release (what the fleet runs);
#   --quick   what scripts/test.sh runs: the engine's unit tests under qemu (the property tests of
#             every SIMD kernel against its scalar reference, the NEON ones included), the CLIs
#             in the dev profile (engine and dependencies at opt-level 2; on x86_64 the binary
#             scripts/test.sh's tests already built, on aarch64 without the `send` feature), and
#             the same byte-for-byte comparison.
# Both modes also convert corpus/formats/made/ (WebP, AVIF, HEIC, GIF, BMP, TIFF) with both builds:
# dav1d and libde265 are cross-built from the crates' vendored sources (meson with the crate's
# aarch64 cross file; cmake), statically, about a minute more cold.
# Installs what is missing (root and apt: the arm64 architecture, Debian's rustc-web 1.96 with the
# aarch64 standard library, gcc-aarch64-linux-gnu, qemu-user-static), then builds with Debian's
# /usr/bin/cargo and /usr/bin/rustc (the rustup toolchain has no aarch64 standard library here).
# Environment: CARGO_TARGET_DIR is the x86_64 build (as in scripts/test.sh);
# CLOUDIMG_ARM64_TARGET_DIR the aarch64 one (default $HOME/.cache/cloudimg-target-aarch64);
# CLOUDIMG_CORPUS the corpus. Exit 0 when everything holds, 1 otherwise. Where the toolchain cannot
# be installed (not root, no apt), it skips loudly: `SKIPPED:` on stderr and a line in
# CLOUDIMG_SKIP_LOG, exit 0; under CI=true that is a failure (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cloudimg-target}"
export CLOUDIMG_CORPUS="${CLOUDIMG_CORPUS:-$root/../shared/corpus}"

say() { printf '\n== arm64: %s\n' "$*" >&2; }
fail() {
    printf 'arm64: FAILED: %s\n' "$*" >&2
    exit 1
}
skip() {
    printf 'SKIPPED: scripts/test-arm64.sh: %s\n' "$*" >&2
    if [[ -n "${CLOUDIMG_SKIP_LOG:-}" ]]; then
        printf 'scripts/test-arm64.sh: %s\n' "$*" >>"$CLOUDIMG_SKIP_LOG"
    fi
    [[ "${CI:-}" == true ]] && fail "skipping is a failure under CI=true"
    exit 0
}
minutes() { printf '%d min %02d s' $(($1 / 60)) $(($1 % 60)); }

# ---- toolchain ----------------------------------------------------------------------------------
# shellcheck source=scripts/arm64-env.sh
source scripts/arm64-env.sh
quick=false
case "${1:-}" in
--quick) quick=true ;;
"") ;;
*)
    echo "usage: scripts/test-arm64.sh [--quick]" >&2
    exit 2
    ;;
esac

started=$SECONDS
if ! why=$(arm_ensure_toolchain); then
    skip "$why"
fi
say "toolchain ready after $(minutes $((SECONDS - started)))"

# ---- the engine's tests under qemu --------------------------------------------------------------
# Unit and integration tests (the property tests of every SIMD kernel against its scalar reference
# included, the conformance sweep, the djpeg/jpegtran oracles: x86_64 tools the aarch64 test
# process starts through qemu's execve). Doc tests are API examples, run on x86_64 only.
step=$SECONDS
if $quick; then
    say "engine unit tests under qemu-aarch64"
    arm_cargo test -p cloudimg-engine --lib --quiet || fail "the engine's unit tests failed on aarch64"
else
    say "engine tests under qemu-aarch64 (CLOUDIMG_CORPUS=$CLOUDIMG_CORPUS)"
    arm_cargo test -p cloudimg-engine --lib --tests --quiet || fail "the engine's tests failed on aarch64"
fi
say "engine tests: $(minutes $((SECONDS - step)))"

# ---- the CLI, both architectures ----------------------------------------------------------------
step=$SECONDS
# --quick builds the aarch64 CLI without the `send` feature (gRPC, tokio and the runtime crate):
# `convert` alone, the engine and the same conversion code, at a fraction of the cold build.
if $quick; then
    # shellcheck disable=SC2054 # `avif,heic` is one argument: cargo's feature list
    profile=() profile_dir=debug arm_features=(--no-default-features --features avif,heic)
else
    profile=(--release) profile_dir=release arm_features=()
fi
say "building cloudimg ($profile_dir) for x86_64 and aarch64"
cargo build --locked "${profile[@]}" --quiet -p cloudimg-client --bin cloudimg
arm_cargo build "${profile[@]}" "${arm_features[@]}" --quiet -p cloudimg-client --bin cloudimg
x86_bin="$CARGO_TARGET_DIR/$profile_dir/cloudimg"
arm_bin="$arm_target_dir/$arm_triple/$profile_dir/cloudimg"
aarch64-linux-gnu-readelf -h "$arm_bin" | grep -q 'Machine:.*AArch64' || fail "$arm_bin is not aarch64"
if aarch64-linux-gnu-readelf -l "$arm_bin" | grep -q INTERP; then
    fail "$arm_bin is dynamically linked (it would hang under qemu-user); expected +crt-static"
fi
say "builds: $(minutes $((SECONDS - step)))"

# ---- identical outputs --------------------------------------------------------------------------
step=$SECONDS
work=$(mktemp -d /tmp/cloudimg-arm64.XXXXXX)
trap 'rm -rf "$work"' EXIT
source_dir="$CLOUDIMG_CORPUS/conformance"
[[ -d "$source_dir" ]] || skip "corpus absent: no $source_dir (set CLOUDIMG_CORPUS)"
[[ -d "$CLOUDIMG_CORPUS/formats/made" ]] || skip "corpus absent: no $CLOUDIMG_CORPUS/formats/made"

# Runs one build's `convert` in its own directory with the same relative --out, so that what it
# prints can be compared line for line; the summary line's time is the one field that differs.
convert() { # arch label [args...]
    local dir="$work/$1-$2" status=0 run=("$x86_bin")
    [[ $1 == aarch64 ]] && run=(qemu-aarch64-static "$arm_bin")
    mkdir -p "$dir"
    (cd "$dir" && "${run[@]}" convert --out out -j 2 "${@:3}" "$source_dir" \
        >stdout 2>stderr) || status=$?
    echo "$status" >"$dir/status"
    sort "$dir/stdout" >"$dir/stdout.sorted"
    sed -E 's/ in [0-9.]+s/ in Ns/' "$dir/stderr" | sort >"$dir/stderr.sorted"
}

compare() { # label [convert args...]
    local label=$1 x="$work/x86_64-$1" a="$work/aarch64-$1"
    convert x86_64 "$@"
    convert aarch64 "$@"
    local outputs
    outputs=$(find "$x/out" -type f | wc -l)
    ((outputs > 0)) || fail "$label: the x86_64 build wrote no output at all"
    cmp -s "$x/status" "$a/status" \
        || fail "$label: exit status $(cat "$x/status") on x86_64, $(cat "$a/status") on aarch64"
    diff -u "$x/stderr.sorted" "$a/stderr.sorted" >&2 \
        || fail "$label: the refusals differ (above: x86_64 -, aarch64 +)"
    diff -u "$x/stdout.sorted" "$a/stdout.sorted" >&2 \
        || fail "$label: the converted files differ (above: x86_64 -, aarch64 +)"
    local differing
    differing=$(diff -rq "$x/out" "$a/out" || true)
    if [[ -n "$differing" ]]; then
        printf '%s\n' "$differing" | head -20 >&2
        fail "$label: $(printf '%s\n' "$differing" | wc -l) outputs differ between x86_64 and aarch64"
    fi
    say "$label: $outputs outputs byte-identical, $(grep -c '^error:' "$x/stderr" || true) refusals identical, exit status $(cat "$x/status") on both"
}

say "converting $source_dir with both builds"
compare jpeg
compare png --format png
source_dir="$CLOUDIMG_CORPUS/formats/made"
say "converting $source_dir (every input format) with both builds"
compare formats
say "conversions: $(minutes $((SECONDS - step)))"
say "aarch64 proven: tests pass under qemu, outputs identical ($(minutes $((SECONDS - started))) in all)"
