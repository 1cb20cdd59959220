#!/usr/bin/env bash
# The tools that build the AVIF and HEIC decoders from their crates' vendored C sources: meson,
# ninja and (on x86_64, for dav1d's assembly) nasm for dav1d (`libdav1d-sys`), cmake for libde265
# (`libde265-sys2`). Run, it installs the missing ones with apt (Debian; as root, else through
# sudo): the README's convert command runs it first. Sourced (scripts/test.sh), it only defines
# `codec_build_packages`.

# The Debian packages of the missing tools, one a line.
codec_build_packages() {
    command -v meson >/dev/null || echo meson
    command -v ninja >/dev/null || echo ninja-build
    [[ $(uname -m) != x86_64 ]] || command -v nasm >/dev/null || echo nasm
    command -v cmake >/dev/null || echo cmake
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    mapfile -t missing < <(codec_build_packages)
    ((${#missing[@]})) || exit 0
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    echo "installing ${missing[*]} (the AVIF and HEIC decoders' build tools)" >&2
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
