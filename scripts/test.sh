#!/usr/bin/env bash
# Runs every test on a fresh Debian machine: installs and starts what is missing, runs the checks,
# and stops and deletes what it started. This is the README's test command; .ci/run calls it.
# CLOUDIMG_LONG=1 adds the long runs (the soak test: 2,000+ images through one worker).
#
# Services: RabbitMQ on 127.0.0.1:5672 (installed from apt and started only when nothing listens
# there; never stopped), and moto_server (moto[server]==5.2.1 from PyPI when missing) on a free
# loopback port as the S3 endpoint (started here, stopped on exit). Every run uses its own queue
# prefix, and the queues left behind are deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Builds are slow on two cores: reuse one target directory outside the clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cloudimg-target}"
export CLOUDIMG_CORPUS="${CLOUDIMG_CORPUS:-$root/../shared/corpus}"

say() { printf '\n== %s\n' "$*" >&2; }

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

need_apt=()
command -v djpeg >/dev/null && command -v jpegtran >/dev/null || need_apt+=(libjpeg-turbo-progs)
# The security tests: openssl makes a test CA; stunnel terminates TLS in front of RabbitMQ (amqps).
command -v openssl >/dev/null || need_apt+=(openssl)
command -v stunnel >/dev/null || need_apt+=(stunnel4)
# The formats test makes the TIFF cases the corpus lacks (CCITT group 3, palettes) with libtiff's
# tools and ImageMagick 6 (Debian's binary name: `convert` may be another program).
command -v tiffcp >/dev/null && command -v tiffmedian >/dev/null || need_apt+=(libtiff-tools)
command -v convert-im6.q16 >/dev/null || need_apt+=(imagemagick)
# AVIF and HEIC: the tools that build dav1d and libde265 from the crates' vendored sources.
# shellcheck source=scripts/build-deps.sh
source scripts/build-deps.sh
while read -r package; do need_apt+=("$package"); done < <(codec_build_packages)
# The formats test makes the AVIF and HEIC cases the corpus lacks (12-bit, 4:2:2, mirrored).
command -v avifenc >/dev/null || need_apt+=(libavif-bin)
command -v heif-enc >/dev/null || need_apt+=(libheif-examples)
if ((${#need_apt[@]})); then
    say "installing ${need_apt[*]}"
    apt_install "${need_apt[@]}"
fi

# ---- services -----------------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        port_open "$1" && return 0
        sleep 0.1
    done
    return 1
}

if ! port_open 5672; then
    if ! command -v rabbitmq-server >/dev/null; then
        say "installing rabbitmq-server"
        apt_install rabbitmq-server
    fi
    if ! wait_port 5672 5; then
        say "starting RabbitMQ"
        rabbitmq-server -detached || service rabbitmq-server start || true
    fi
    wait_port 5672 120 || { echo "RabbitMQ did not come up on 127.0.0.1:5672" >&2; exit 1; }
fi

if ! command -v moto_server >/dev/null \
    || [[ "$(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null)" != 5.2.1 ]]; then
    say "installing moto[server]==5.2.1"
    python3 -m pip install -q 'moto[server]==5.2.1'
    hash -r
fi

# The formats conformance test's reference is pinned Pillow (what the old system ran).
if [[ "$(python3 -c 'import PIL; print(PIL.__version__)' 2>/dev/null)" != 13.0.0 ]]; then
    say "installing pillow==13.0.0"
    python3 -m pip install -q 'pillow==13.0.0'
fi
# HEIC's reference: pillow-heif (the plugin the old system used for HEIC), pinned.
if [[ "$(python3 -c 'import pillow_heif; print(pillow_heif.__version__)' 2>/dev/null)" != 1.1.1 ]]; then
    say "installing pillow-heif==1.1.1"
    python3 -m pip install -q 'pillow-heif==1.1.1'
fi

run_dir=$(mktemp -d /tmp/cloudimg-test.XXXXXX)
moto_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Its own session, so cleanup stops the whole process group (wrappers such as pyenv shims included).
setsid moto_server -H 127.0.0.1 -p "$moto_port" >"$run_dir/moto.log" 2>&1 &
moto_pid=$!

export CLOUDIMG_TEST_QUEUE="cloudimg-test-$$-$RANDOM"
# Every test that skips appends "<test>: <reason>" here (the tests' skip helper; cargo captures a
# passing test's output, so a printed line alone would be lost). Counted at the end.
export CLOUDIMG_SKIP_LOG="$run_dir/skipped"
: >"$CLOUDIMG_SKIP_LOG"

cleanup() {
    local status=$?
    set +e
    kill -- "-$moto_pid" 2>/dev/null || kill "$moto_pid" 2>/dev/null
    wait "$moto_pid" 2>/dev/null
    if command -v rabbitmqctl >/dev/null; then
        { rabbitmqctl -q list_queues name 2>/dev/null | grep "^$CLOUDIMG_TEST_QUEUE" \
            | while read -r q; do rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done; } || true
    fi
    rm -rf "$run_dir"
    exit "$status"
}
trap cleanup EXIT INT TERM

wait_port "$moto_port" 60 || { cat "$run_dir/moto.log" >&2; echo "moto_server did not start" >&2; exit 1; }
export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
unset AMQP_URL RABBIT_HOST BUCKET_NAME CLOUDIMG_OUT_DIR CLOUDIMG_QUEUE CLOUDIMG_PRODUCER || true
say "services: RabbitMQ 127.0.0.1:5672, S3 (moto) $AWS_ENDPOINT_URL, queue prefix $CLOUDIMG_TEST_QUEUE"

# ---- checks -------------------------------------------------------------------------------------
say "format"
cargo fmt --all --check

# Clippy lints the workspace's crates as they are built for the tests (clippy-driver as the
# workspace's rustc wrapper, with `-D warnings`: what `cargo clippy --workspace --all-targets -- -D
# warnings` checks), instead of in a check-mode build of every dependency of its own, which was a
# third of a cold run. Exported, so test-arm64.sh's x86_64 `cloudimg` reuses these builds; its
# aarch64 cargo and the fuzz workspace's check run without it.
RUSTC_WORKSPACE_WRAPPER="$(rustc --print sysroot)/bin/clippy-driver"
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
say "build and lint (clippy, -D warnings)"
cargo test --workspace --all-targets --no-run --quiet

say "tests"
cargo test --workspace --all-targets --quiet
cargo test --workspace --doc --quiet

# rustdoc's own lints (broken intra-doc links) on the library crates people read the docs of. The
# shells' crates are left out: documenting them needs a check-mode build of tokio, tonic, lapin and
# the AWS SDK besides the test build above, about ten minutes of a cold run.
say "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet \
    -p cloudimg-engine -p cloudimg-reference -p cloudimg-hostile

# The fuzz targets are their own workspace (cargo-fuzz builds them with sanitizer flags): check
# that they still compile against the engine's API, without running them (scripts/fuzz.sh does).
say "fuzz targets compile"
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
    cargo check --quiet --manifest-path engine/fuzz/Cargo.toml --bins

# Graviton: the engine's unit tests (every SIMD kernel against its scalar reference, NEON included)
# under qemu-aarch64, and corpus/conformance/ converted by the x86_64 and the cross-built aarch64
# `cloudimg`, JPEG and PNG, asserted byte-identical. The full run (every engine test under qemu,
# release builds) is `scripts/test-arm64.sh` alone; docs/engine-speed.md has the minutes of both.
say "aarch64: cross-built, under qemu-user"
scripts/test-arm64.sh --quick

if [[ -f cloudformation/check.sh ]]; then
    say "cloudformation checks"
    bash cloudformation/check.sh
fi

# ---- skipped tests ------------------------------------------------------------------------------
skipped=$(wc -l <"$CLOUDIMG_SKIP_LOG")
if ((skipped)); then
    say "$skipped tests skipped:"
    sed 's/^/  SKIPPED: /' "$CLOUDIMG_SKIP_LOG" >&2
    say "all tests that ran passed; $skipped skipped (above)"
else
    say "all tests passed, none skipped"
fi
