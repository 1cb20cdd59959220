# Sourced by scripts/test-arm64.sh and scripts/arm64-asm.sh: the aarch64 cross toolchain (CRATES.md's
# toolchain notes, verified on this machine kind) and `arm_cargo`, cargo for aarch64 with it.
#
# Debian 12's rustc-web (1.96) is the compiler with an aarch64 standard library here; rustup's
# toolchain has none. Binaries link statically: dynamically linked aarch64 binaries that start a
# thread hang under Debian 12's qemu-user 7.2, static ones run (cargo test included).

arm_triple=aarch64-unknown-linux-gnu
arm_target_dir="${CLOUDIMG_ARM64_TARGET_DIR:-$HOME/.cache/cloudimg-target-aarch64}"

arm_have_toolchain() {
    [[ -x /usr/bin/rustc && -x /usr/bin/cargo ]] \
        && [[ -d "$(/usr/bin/rustc --print sysroot)/lib/rustlib/$arm_triple/lib" ]] \
        && command -v aarch64-linux-gnu-gcc >/dev/null \
        && command -v aarch64-linux-gnu-g++ >/dev/null \
        && [[ -f /usr/aarch64-linux-gnu/lib/libc.a ]] \
        && command -v qemu-aarch64-static >/dev/null
}

# Installs the toolchain where it is missing. Prints why and returns 1 where it cannot (not root,
# no apt-get); exits on an apt failure (set -e).
arm_ensure_toolchain() {
    arm_have_toolchain && return 0
    if [[ $(id -u) != 0 ]]; then
        echo "the aarch64 toolchain is missing and installing it needs root"
        return 1
    fi
    if ! command -v apt-get >/dev/null; then
        echo "the aarch64 toolchain is missing and there is no apt-get"
        return 1
    fi
    printf '\n== arm64: installing the aarch64 toolchain (rustc-web, gcc/g++-aarch64-linux-gnu, qemu-user-static)\n' >&2
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        dpkg --add-architecture arm64
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web cargo-web \
        libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross \
        qemu-user-static \
        >/dev/null
    if ! arm_have_toolchain; then
        echo "the aarch64 toolchain is still incomplete after apt-get install"
        return 1
    fi
}

# `arm_cargo SUBCOMMAND ARGS...`: Debian's cargo and rustc (the rustup proxies earlier on PATH would
# pick a toolchain without the aarch64 standard library), the cross linker and C compilers (ring,
# dav1d, libde265; pkg-config allowed to cross, for the .pc file libde265's own build writes),
# qemu as the runner, static linking, the aarch64 target directory; no rustc wrapper (test.sh's
# clippy-driver belongs to the rustup toolchain, not to Debian's rustc).
arm_cargo() {
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
        RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc CARGO_TARGET_DIR="$arm_target_dir" \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
        CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
        CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++ \
        PKG_CONFIG_ALLOW_CROSS=1 \
        AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
        /usr/bin/cargo "$1" --locked --target "$arm_triple" "${@:2}"
}
