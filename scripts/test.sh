#!/usr/bin/env bash
# Runs every test on a fresh Debian machine: installs and starts what is missing, runs the checks,
# and stops and deletes what it started. This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Builds are slow on two cores: reuse one target directory outside the clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cloudimg-target}"
export CLOUDIMG_CORPUS="${CLOUDIMG_CORPUS:-$root/../shared/corpus}"

say() { printf '\n== %s\n' "$*" >&2; }

need_apt=()
command -v djpeg >/dev/null && command -v jpegtran >/dev/null || need_apt+=(libjpeg-turbo-progs)
if ((${#need_apt[@]})); then
    say "installing ${need_apt[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null; }
fi

say "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "tests"
cargo test --workspace --all-targets --quiet
cargo test --workspace --doc --quiet

say "all tests passed"
